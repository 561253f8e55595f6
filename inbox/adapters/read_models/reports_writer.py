"""The reports' thin writer: applies wire events to the report tables inside the caller's transaction.

Idempotent on (room id, version) like the main projections: `report_rooms` keeps each room's
fold state and version; an event at or below it changes nothing. The reports are built from the
topic alone, so a version gap cannot be filled from the event store: the later event is applied
(the fold only needs order) and the gap is logged. An event the fold refuses is dead-lettered in
`report_dead_letters` with the reason and the room's version moves past it; if the database
refuses the batch for a reason that is not transient, it is written again event by event under
savepoints and what is refused is dead-lettered. Transient errors propagate (the caller retries).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection

from inbox.adapters.postgres import is_transient
from inbox.adapters.read_models.writer import dead_letter_row, wire_id
from projections.reports import COUNT_FIELDS, BacklogChange, Count, Cycle, ReportRoom, apply

log = logging.getLogger(__name__)

REPORT_TABLES = ("report_rooms", "report_cycles", "report_counts", "report_backlog", "report_dead_letters")

_CYCLE_COLUMNS = [f for f in Cycle.__dataclass_fields__]
_COUNT_INDEX = {name: i for i, name in enumerate(COUNT_FIELDS)}
_UPSERT_CYCLE = (
    f"INSERT INTO report_cycles ({', '.join(_CYCLE_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_CYCLE_COLUMNS))})"
    " ON CONFLICT (room_id, cycle) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _CYCLE_COLUMNS if c not in ("room_id", "cycle"))
)
_ADD_COUNTS = (
    f"INSERT INTO report_counts (org_id, day, channel, agent, {', '.join(COUNT_FIELDS)})"
    f" VALUES (%s, %s, %s, %s, {', '.join(['%s'] * len(COUNT_FIELDS))})"
    " ON CONFLICT (org_id, day, channel, agent) DO UPDATE SET "
    + ", ".join(f"{c} = report_counts.{c} + EXCLUDED.{c}" for c in COUNT_FIELDS)
)
_INSERT_BACKLOG = (
    "INSERT INTO report_backlog (org_id, at, room_id, version, delta) VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)
_UPSERT_ROOM = (
    "INSERT INTO report_rooms (room_id, version, state) VALUES (%s, %s, %s::jsonb)"
    " ON CONFLICT (room_id) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state"
    " WHERE report_rooms.version < EXCLUDED.version"
)
_INSERT_DEAD_LETTER = (
    "INSERT INTO report_dead_letters (event_id, reason, event, room_id, version, event_type)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)


@dataclass
class ReportStats:
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    gaps: int = 0
    dead_letters: int = 0


@dataclass
class _Step:
    event: dict[str, Any]
    before: ReportRoom | None
    after: ReportRoom | None
    counts: tuple[Count, ...] = ()
    backlog: BacklogChange | None = None
    cycle: Cycle | None = None
    dead_letter: tuple[Any, ...] | None = None


@dataclass
class _Rows:
    rooms: dict[str, ReportRoom] = field(default_factory=dict)
    cycles: dict[tuple[str, int], Cycle] = field(default_factory=dict)
    counts: dict[tuple[Any, ...], list[int]] = field(default_factory=dict)
    backlog: list[BacklogChange] = field(default_factory=list)
    dead_letters: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, step: _Step) -> None:
        if step.after is not None:
            self.rooms[step.after.room_id] = step.after
        if step.cycle is not None:
            self.cycles[(step.cycle.room_id, step.cycle.cycle)] = step.cycle
        for c in step.counts:
            row = self.counts.setdefault((c.org_id, c.day, c.channel, c.agent), [0] * len(COUNT_FIELDS))
            row[_COUNT_INDEX[c.field]] += 1
        if step.backlog is not None:
            self.backlog.append(step.backlog)
        if step.dead_letter is not None:
            self.dead_letters.append(step.dead_letter)


async def apply_reports(conn: AsyncConnection, events: Sequence[dict[str, Any]]) -> ReportStats:
    stats = ReportStats(events=len(events))
    steps = plan_reports(events, await _load(conn, sorted({str(e["room_id"]) for e in events})), stats)
    try:
        async with conn.transaction():
            rows = _Rows()
            for s in steps:
                rows.add(s)
            await _write(conn, rows)
    except Exception as e:
        if is_transient(e):
            raise
        log.warning("reports: batch refused (%s: %s); writing event by event", type(e).__name__, e)
        steps = await _write_one_by_one(conn, steps)
    stats.dead_letters = sum(1 for s in steps if s.dead_letter is not None)
    stats.applied = len(steps) - stats.dead_letters
    return stats


def plan_reports(events: Sequence[dict[str, Any]], states: dict[str, ReportRoom], stats: ReportStats) -> list[_Step]:
    """Fold each room's events from its state in `states`, in version order: duplicates skipped,
    gaps logged and applied over. One `_Step` per event applied; nothing is written."""
    by_room: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_room[str(event["room_id"])].append(event)
    steps: list[_Step] = []
    for room_id in sorted(by_room):
        state = states.get(room_id)
        current = state.version if state else 0
        for event in sorted(by_room[room_id], key=lambda e: e["version"]):
            if event["version"] <= current:
                stats.duplicates += 1
                continue
            if event["version"] > current + 1:
                stats.gaps += 1
                log.warning("reports: room %s versions %s..%s never arrived; applying v%s",
                            room_id, current + 1, event["version"] - 1, event["version"])
            step = _step(state, event)
            steps.append(step)
            state = step.after
            current = event["version"]
    return steps


def _step(state: ReportRoom | None, event: dict[str, Any]) -> _Step:
    try:
        after, changes = apply(state, event)
    except Exception as e:
        return _refused(state, event, e)
    return _Step(event, state, after, changes.counts, changes.backlog, changes.cycle)


def _refused(state: ReportRoom | None, event: dict[str, Any], error: BaseException) -> _Step:
    log.error("reports: dead-lettering event %s (%s v%s): %s: %s", wire_id(event), event.get("type"),
              event.get("version"), type(error).__name__, next(iter(str(error).splitlines()), ""))
    after = replace(state, version=event["version"]) if state is not None else None
    return _Step(event, state, after, dead_letter=dead_letter_row(event, f"{type(error).__name__}: {error}"))


async def _write_one_by_one(conn: AsyncConnection, steps: list[_Step]) -> list[_Step]:
    """Each event under its own savepoint; a refused one is dead-lettered and the rest of its room
    is folded again without it (from the state before it), like the main writer does."""
    done: list[_Step] = []
    pending = list(steps)
    while pending:
        step = pending.pop(0)
        rows = _Rows()
        rows.add(step)
        try:
            async with conn.transaction():
                await _write(conn, rows)
            done.append(step)
            continue
        except Exception as e:
            if is_transient(e):
                raise
            refused = _refused(step.before, step.event, e)
        rows = _Rows()
        rows.add(refused)
        async with conn.transaction():
            await _write(conn, rows)
        done.append(refused)
        room = str(step.event["room_id"])
        state = refused.after
        refolded = []
        for s in pending:
            if str(s.event["room_id"]) == room:
                s = _step(state, s.event)
                state = s.after
            refolded.append(s)
        pending = refolded
    return done


async def _write(conn: AsyncConnection, rows: _Rows) -> None:
    async with conn.cursor() as cur:
        if rows.rooms:
            await cur.executemany(
                _UPSERT_ROOM, [(r.room_id, r.version, state_text(r)) for r in rows.rooms.values()]
            )
        if rows.cycles:
            await cur.executemany(
                _UPSERT_CYCLE, [tuple(getattr(c, k) for k in _CYCLE_COLUMNS) for c in rows.cycles.values()]
            )
        if rows.counts:
            await cur.executemany(_ADD_COUNTS, [(*k, *v) for k, v in sorted(rows.counts.items())])
        if rows.backlog:
            await cur.executemany(
                _INSERT_BACKLOG, [(b.org_id, b.at, b.room_id, b.version, b.delta) for b in rows.backlog]
            )
        if rows.dead_letters:
            await cur.executemany(_INSERT_DEAD_LETTER, rows.dead_letters)


async def _load(conn: AsyncConnection, room_ids: list[str]) -> dict[str, ReportRoom]:
    if not room_ids:
        return {}
    cur = await conn.execute(
        "SELECT room_id, state FROM report_rooms WHERE room_id = ANY(%s) ORDER BY room_id FOR UPDATE", (room_ids,)
    )
    return {r[0]: state_from_json(r[1]) for r in await cur.fetchall()}


def state_json(state: ReportRoom) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(state))  # datetimes as ISO-8601 text


def state_text(state: ReportRoom) -> str:
    """`state_json` as JSON text: orjson walks the dataclasses itself (dataclasses.asdict deep-copies
    every state, a third of a replay's report CPU)."""
    return orjson.dumps(state).decode()


def state_from_json(value: dict[str, Any]) -> ReportRoom:
    c = dict(value["cycle"])
    for k in ("started_at", "inbound_at", "first_response_at", "resolved_at"):
        if c.get(k) is not None:
            c[k] = datetime.fromisoformat(c[k])
    return ReportRoom(**{**value, "cycle": Cycle(**c)})
