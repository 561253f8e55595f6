"""The thin writer: applies a batch of wire events to the read models in one transaction.

Idempotent on (room id, version): an event at or below the room's stored version changes
nothing. An event above version + 1 is a gap: it is recorded in `projection_gaps` and the
missing events are read back from the event store (the source of truth) before going on.
Counter changes commit in the same transaction as the room rows they follow from.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from projections.counters import deltas
from psycopg.types.json import Jsonb

from projections.rooms import MessageChange, MessageRow, RoomView, UnknownEvent, apply, message_change

log = logging.getLogger(__name__)

# Held shared by every batch, exclusively by `inbox replay` while it rebuilds.
PROJECTION_LOCK = 0x1B0C5

GapFiller = Callable[[str, int, int], Awaitable[list[dict[str, Any]]]]
"""(room_id, first_missing_version, last_missing_version) → those wire events, in order."""

_ROOM_COLUMNS = [f.name for f in fields(RoomView)]
_MESSAGE_COLUMNS = [f.name for f in fields(MessageRow)]

_UPSERT_ROOM = (
    f"INSERT INTO rooms ({', '.join(_ROOM_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_ROOM_COLUMNS))})"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _ROOM_COLUMNS if c != "id")
    + " WHERE rooms.version < EXCLUDED.version"
)
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_MESSAGE_COLUMNS))})"
    " ON CONFLICT DO NOTHING"
)
_CHANGE_MESSAGE = (
    "UPDATE messages SET text = coalesce(%s, text), edited_at = coalesce(%s, edited_at),"
    " removed_at = coalesce(%s, removed_at) WHERE id = %s::uuid"
)
_ADD_COUNTER = (
    "INSERT INTO counters (org_id, tab, status, assignee, rooms, awaiting) VALUES (%s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (org_id, tab, status, assignee) DO UPDATE"
    " SET rooms = counters.rooms + EXCLUDED.rooms, awaiting = counters.awaiting + EXCLUDED.awaiting"
)
_INSERT_GAP = (
    "INSERT INTO projection_gaps (room_id, expected_version, got_version, filled) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)
_INSERT_DEAD_LETTER = "INSERT INTO projection_dead_letters (event_id, reason, event) VALUES (%s, %s, %s)"


@dataclass
class BatchStats:
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    gaps: int = 0
    unfilled_gaps: int = 0
    dead_letters: int = 0
    rooms_changed: int = 0
    gap_details: list[tuple[str, int, int, bool]] = field(default_factory=list)


class ProjectionWriter:
    def __init__(self, pool: AsyncConnectionPool, fill_gap: GapFiller | None = None) -> None:
        self._pool = pool
        self._fill_gap = fill_gap

    async def apply_batch(self, events: Sequence[dict[str, Any]]) -> BatchStats:
        async with self._pool.connection() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (PROJECTION_LOCK,))
                return await apply_in_transaction(conn, events, self._fill_gap)


async def apply_in_transaction(
    conn: AsyncConnection, events: Sequence[dict[str, Any]], fill_gap: GapFiller | None
) -> BatchStats:
    stats = BatchStats(events=len(events))
    by_room: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_room[event["room_id"]].append(event)
    room_ids = sorted(by_room)
    views = await _load_rooms(conn, room_ids)

    transitions: list[tuple[RoomView | None, RoomView]] = []
    messages: list[MessageRow | MessageChange] = []  # new history rows, and edits / removals of rows
    dead_letters: list[tuple[str, str, bytes]] = []
    for room_id in room_ids:
        before = views.get(room_id)
        view = before
        for event in sorted(by_room[room_id], key=lambda e: e["version"]):
            current = view.version if view else 0
            if event["version"] <= current:
                stats.duplicates += 1
                continue
            if event["version"] > current + 1:
                missing = await fill_gap(room_id, current + 1, event["version"] - 1) if fill_gap else []
                filled = [m["version"] for m in missing] == list(range(current + 1, event["version"]))
                stats.gaps += 1
                stats.gap_details.append((room_id, current + 1, event["version"], filled))
                if not filled:
                    stats.unfilled_gaps += 1
                    log.error(
                        "room %s: versions %s..%s missing and not recoverable; holding back v%s",
                        room_id, current + 1, event["version"] - 1, event["version"],
                    )
                    break
                log.warning("room %s: filled gap %s..%s from the event store", room_id, current + 1, event["version"] - 1)
                for m in missing:
                    view = _apply_one(view, m, messages, dead_letters, stats)
            view = _apply_one(view, event, messages, dead_letters, stats)
        if view is not None and view is not before:
            transitions.append((before, view))

    stats.rooms_changed = len(transitions)
    async with conn.cursor() as cur:
        if transitions:
            await cur.executemany(_UPSERT_ROOM, [_room_params(after) for _, after in transitions])
        rows = [_message_params(m) for m in messages if isinstance(m, MessageRow)]
        if rows:
            await cur.executemany(_INSERT_MESSAGE, rows)
        changes = [m for m in messages if isinstance(m, MessageChange)]
        if changes:  # after the inserts: an edit may follow its message in the same batch
            await cur.executemany(_CHANGE_MESSAGE, [(c.text, c.edited_at, c.removed_at, c.message_id) for c in changes])
        counter_rows = [(*key, d.rooms, d.awaiting) for key, d in deltas(transitions).items()]
        if counter_rows:
            await cur.executemany(_ADD_COUNTER, counter_rows)
        if stats.gap_details:
            await cur.executemany(_INSERT_GAP, stats.gap_details)
        if dead_letters:
            await cur.executemany(_INSERT_DEAD_LETTER, dead_letters)
    return stats


def _apply_one(
    view: RoomView | None,
    event: dict[str, Any],
    messages: list[MessageRow | MessageChange],
    dead_letters: list[tuple[str, str, bytes]],
    stats: BatchStats,
) -> RoomView | None:
    try:
        view, message = apply(view, event)
        change = message_change(event)
    except (UnknownEvent, KeyError, ValueError, TypeError) as e:
        # Dead-letter it with the reason; the room's version still advances, so the events
        # after it apply and nothing downstream stalls behind one unreadable event.
        log.error("dead-lettering event %s (%s v%s): %s", event.get("id"), event.get("type"), event.get("version"), e)
        dead_letters.append((str(event.get("id")), f"{type(e).__name__}: {e}", orjson.dumps(event)))
        stats.dead_letters += 1
        return replace(view, version=event["version"]) if view is not None else None
    stats.applied += 1
    if message is not None:
        messages.append(message)
    if change is not None:
        messages.append(change)
    return view


def _message_params(message: MessageRow) -> tuple[Any, ...]:
    # getattr, not dataclasses.asdict: asdict deep-copies every field (50x slower on replay).
    return tuple(
        Jsonb(list(message.attachments)) if c == "attachments" else getattr(message, c) for c in _MESSAGE_COLUMNS
    )


async def _load_rooms(conn: AsyncConnection, room_ids: list[str]) -> dict[str, RoomView]:
    if not room_ids:
        return {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {', '.join(_ROOM_COLUMNS)} FROM rooms WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE",
            (room_ids,),
        )
        rows = await cur.fetchall()
    return {str(r["id"]): row_to_view(r) for r in rows}


def row_to_view(row: dict[str, Any]) -> RoomView:
    values = dict(row)
    for key in ("id", "channel_account_id", "last_message_id"):
        if values[key] is not None:
            values[key] = str(values[key])
    return RoomView(**values)


def _room_params(view: RoomView) -> tuple[Any, ...]:
    return tuple(getattr(view, c) for c in _ROOM_COLUMNS)
