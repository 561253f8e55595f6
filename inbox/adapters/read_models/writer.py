"""The thin writer: applies a batch of wire events to the read models in one transaction.

Idempotent on (room id, version): an event at or below the room's stored version changes
nothing. An event above version + 1 is a gap: it is recorded in `projection_gaps` and the
missing events are read back from the event store (the source of truth) before going on.
Counter changes commit in the same transaction as the room rows they follow from.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from inbox.adapters.postgres import is_transient
from inbox.adapters.wire import event_id
from projections.counters import deltas
from projections.rooms import MessageChange, MessageRow, RoomView, apply, message_change

log = logging.getLogger(__name__)

# Held shared by every batch, exclusively by `inbox replay` while it switches to the rebuilt read
# models and by `inbox dead-letters retry`; keyed by schema (`lock_projections`).
PROJECTION_LOCK = 0x1B0C5
# Held from a batch's first change-log row to its commit: positions are handed out in commit
# order, so a reader that sees position n committed has seen every position below it.
CHANGES_LOCK = 0x1B0C6

async def lock_projections(conn: AsyncConnection[Any], schema: str | None = None, *, exclusive: bool = False) -> None:
    """The projection lock of `schema` (default: the connection's current schema) for this transaction."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    key = "hashtext(current_schema())" if schema is None else "hashtext(%s)"
    await conn.execute(f"SELECT {function}(%s, {key})", (PROJECTION_LOCK,) if schema is None else (PROJECTION_LOCK, schema))


GapFiller = Callable[[str, int, int], Awaitable[list[dict[str, Any]]]]
"""(room_id, first_missing_version, last_missing_version) → those wire events, in order."""

_ROOM_COLUMNS = [f.name for f in fields(RoomView)]
_MESSAGE_COLUMNS = [f.name for f in fields(MessageRow)]

# Column types of the read models: every table is written with one statement per batch, rows
# passed column-wise as arrays and turned back into rows by unnest().
_ROOM_TYPES = {
    "id": "uuid", "channel_account_id": "uuid", "last_message_id": "uuid", "awaiting_reply": "boolean",
    "last_inbound_at": "timestamptz", "expires_at": "timestamptz", "last_message_at": "timestamptz",
    "opened_at": "timestamptz", "updated_at": "timestamptz", "version": "bigint", "last_message_delivery": "jsonb",
}
_MESSAGE_TYPES = {
    "id": "uuid", "room_id": "uuid", "seq": "bigint", "sent_at": "timestamptz", "recorded_at": "timestamptz",
    "attachments": "jsonb", "delivery_at": "timestamptz", "delivery_error": "jsonb", "reply_to": "jsonb",
}


def _unnest(columns: Sequence[str], types: dict[str, str]) -> str:
    return "unnest(" + ", ".join(f"%b::{types.get(c, 'text')}[]" for c in columns) + ")"


_UPSERT_ROOMS = (
    f"INSERT INTO rooms ({', '.join(_ROOM_COLUMNS)}) SELECT * FROM {_unnest(_ROOM_COLUMNS, _ROOM_TYPES)}"
    " ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _ROOM_COLUMNS if c != "id")
    + " WHERE rooms.version < EXCLUDED.version"
)
_INSERT_MESSAGES = (
    f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) SELECT * FROM {_unnest(_MESSAGE_COLUMNS, _MESSAGE_TYPES)}"
    " ON CONFLICT DO NOTHING"
)
# One row per message: a batch's changes of one message are merged first (`_merge_changes`), as
# an UPDATE applies at most one source row to a target row.
_CHANGE_MESSAGES = (
    "UPDATE messages m SET text = coalesce(c.text, m.text), edited_at = coalesce(c.edited_at, m.edited_at),"
    " removed_at = coalesce(c.removed_at, m.removed_at),"
    " channel_message_id = coalesce(c.channel_message_id, m.channel_message_id),"
    " delivery_status = coalesce(c.delivery_status, m.delivery_status),"
    " delivery_at = coalesce(c.delivery_at, m.delivery_at),"
    " delivery_error = CASE WHEN c.delivery_error IS NULL THEN m.delivery_error ELSE c.delivery_error::jsonb END"
    " FROM unnest(%b::uuid[], %b::text[], %b::timestamptz[], %b::timestamptz[], %b::text[], %b::text[],"
    " %b::timestamptz[], %b::text[]) AS c(id, text, edited_at, removed_at, channel_message_id, delivery_status,"
    " delivery_at, delivery_error) WHERE m.id = c.id"
)
_ADD_COUNTERS = (
    "INSERT INTO counters (org_id, tab, status, assignee, rooms, awaiting)"
    " SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[])"
    " ON CONFLICT (org_id, tab, status, assignee) DO UPDATE"
    " SET rooms = counters.rooms + EXCLUDED.rooms, awaiting = counters.awaiting + EXCLUDED.awaiting"
)
_INSERT_GAPS = (
    "INSERT INTO projection_gaps (room_id, expected_version, got_version, filled)"
    " SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::bigint[], %b::boolean[])"
    " ON CONFLICT DO NOTHING"
)
_INSERT_DEAD_LETTERS = (
    "INSERT INTO projection_dead_letters (event_id, reason, event, room_id, version, event_type)"
    " SELECT event_id, reason, event, room_id, version, event_type"
    " FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::text[], %b::bigint[], %b::text[])"
    " WITH ORDINALITY AS d(event_id, reason, event, room_id, version, event_type, n) ORDER BY n"
)
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
        """Apply a batch in one transaction of two round trips (pipeline mode): one locks and reads
        the batch's rooms, one writes every table, the change log and the doorbell, and commits.

        A round trip per statement (a dozen per batch) was most of a batch's time on a busy
        machine, and every event waits for the batch before it: the live stream's freshness.
        If the database refuses anything (or a value is refused before it is sent), the
        transaction rolls back and the batch is applied again statement by statement, each
        table under a savepoint (`apply_in_transaction`), so the culprit is dead-lettered with
        its reason and the rest recorded. Transient failures propagate: the caller retries.
        The pool's connections are in autocommit mode (BEGIN and COMMIT are sent as statements:
        `conn.transaction()` in a pipeline syncs twice more at its end).
        """
        async with self._pool.connection() as conn:
            try:
                async with conn.pipeline():
                    await conn.execute("BEGIN")
                    await lock_projections(conn)
                    stats = await apply_in_transaction(conn, events, self._fill_gap, isolate=False)
                    await conn.execute("COMMIT")
                return stats
            except Exception as e:
                await end_transaction(conn)
                if is_transient(e):
                    raise
                log.info("batch of %s events refused in one pipeline (%s: %s); applying it statement by statement",
                         len(events), type(e).__name__, _first_line(e))
            async with conn.transaction():
                await lock_projections(conn)
                return await apply_in_transaction(conn, events, self._fill_gap)


async def end_transaction(conn: AsyncConnection[Any]) -> None:
    """Roll back what a failed pipeline left open (a BEGIN sent as a statement), if anything; a
    connection that is gone needs nothing (the pool replaces it)."""
    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        try:
            await conn.rollback()
        except psycopg.Error as e:
            log.info("rolling back after a failed pipeline failed too (%s: %s)", type(e).__name__, e)


async def apply_in_transaction(
    conn: AsyncConnection, events: Sequence[dict[str, Any]], fill_gap: GapFiller | None, *,
    log_changes: bool = True, known: dict[str, RoomView] | None = None, isolate: bool = True,
) -> BatchStats:
    """Apply a batch inside the caller's transaction; an event that cannot be stored is dead-lettered.

    The whole batch is written under a savepoint. If the database refuses it for a reason that
    is not transient (`is_transient`), the batch is written again room by room, and a refused
    room event by event, each under its own savepoint: the culprit is dead-lettered with the
    reason, its room's version still advances, and the room's later events are folded again
    without it. Transient errors propagate so the caller retries the batch.

    `isolate=False` (pipeline mode, `ProjectionWriter.apply_batch`): no savepoint; any refusal
    propagates and the caller applies the batch again with `isolate=True`.
    """
    stats = BatchStats(events=len(events))
    plans = await plan_batch(
        events, fill_gap, stats, known if known is not None else (lambda ids: _load_rooms(conn, ids)))

    if not isolate:
        await _write(conn, plans)
    else:
        try:
            async with conn.transaction():
                await _write(conn, plans)
        except Exception as e:
            if is_transient(e):
                raise
            log.warning("batch of %s events refused (%s: %s); isolating the culprit",
                        len(events), type(e).__name__, _first_line(e))
            for plan in plans:
                await _write_isolated(conn, plan)
    if log_changes:
        await record_changes(conn, plans)
    if known is not None:
        for plan in plans:
            if (t := plan.transition) is not None:
                known[plan.room_id] = t[1]

    steps = [s for p in plans for s in p.steps]
    stats.dead_letters = sum(1 for s in steps if s.dead_letter is not None)
    stats.applied = len(steps) - stats.dead_letters
    stats.rooms_changed = sum(1 for p in plans if p.transition is not None)
    return stats


async def plan_batch(
    events: Sequence[dict[str, Any]], fill_gap: GapFiller | None, stats: BatchStats,
    views: dict[str, RoomView] | Callable[[list[str]], Awaitable[dict[str, RoomView]]],
) -> list[_RoomPlan]:
    """Fold a batch room by room from `views` (the rooms as they are, or a loader of them): each
    room's events in version order, duplicates skipped, gaps filled by `fill_gap` or recorded (the
    room held back), one `_Step` per event. Counts go to `stats`; nothing is written."""
    by_room: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_room[event["room_id"]].append(event)
    room_ids = sorted(by_room)
    if callable(views):
        views = await views(room_ids)

    plans: list[_RoomPlan] = []
    for room_id in room_ids:
        plan = _RoomPlan(room_id, views.get(room_id))
        current = plan.before.version if plan.before else 0
        for event in sorted(by_room[room_id], key=lambda e: e["version"]):
            if event["version"] <= current:
                stats.duplicates += 1
                continue
            if event["version"] > current + 1:
                missing = await _missing(fill_gap, room_id, current + 1, event["version"] - 1)
                filled = [m["version"] for m in missing] == list(range(current + 1, event["version"]))
                stats.gaps += 1
                stats.gap_details.append((room_id, current + 1, event["version"], filled))
                plan.gaps.append((room_id, current + 1, event["version"], filled))
                if not filled:
                    stats.unfilled_gaps += 1
                    log.error(
                        "room %s: versions %s..%s missing and not recoverable; holding back v%s",
                        room_id, current + 1, event["version"] - 1, event["version"],
                    )
                    break
                log.warning("room %s: filled gap %s..%s from the event store", room_id, current + 1, event["version"] - 1)
                plan.events.extend(missing)
            plan.events.append(event)
            current = event["version"]
        plan.steps = _fold(plan.before, plan.events)
        plans.append(plan)
    return plans


# message_ids travel as array literals ('{id,id}'), one per row: unnest() would flatten an array of arrays.
_INSERT_CHANGES = (
    "INSERT INTO room_changes (kind, org_id, room_id, version, existed_before, assignee_before, assignee_after,"
    " message_ids) SELECT 'room', org_id, room_id, version, existed_before, assignee_before, assignee_after,"
    " message_ids::uuid[] FROM unnest(%b::text[], %b::uuid[], %b::bigint[], %b::boolean[], %b::text[], %b::text[],"
    " %b::text[]) WITH ORDINALITY AS c(org_id, room_id, version, existed_before, assignee_before, assignee_after,"
    " message_ids, n) ORDER BY n"
)
# The doorbell: rings on commit for every stream listener of this schema; payload = last position.
NOTIFY_LAST_CHANGE = (
    "SELECT pg_notify('inbox_changes:' || current_schema(),"
    " currval(pg_get_serial_sequence('room_changes', 'position'))::text)"
)


async def record_changes(conn: AsyncConnection, plans: Sequence[_RoomPlan]) -> None:
    """One change-log row per room that changed, and the doorbell, in the caller's transaction.

    A re-applied (duplicate) event changes no room, so it writes no row: the log is as
    idempotent as the read models. The row names the messages added or changed, so the stream
    renders them from the same snapshot as the room (`read_models.changes`).
    """
    rows = []
    for plan in plans:
        if (t := plan.transition) is None:
            continue
        before, after = t
        ids = [r.id if isinstance(r, MessageRow) else r.message_id for s in plan.steps for r in s.rows]
        rows.append((after.org_id, after.id, after.version, before is not None,
                     before.assignee if before else None, after.assignee, "{" + ",".join(dict.fromkeys(ids)) + "}"))
    if not rows:
        return
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGES_LOCK,))
    async with conn.cursor() as cur:
        await cur.execute(_INSERT_CHANGES, _binary(_columns(rows, 7)))
    await conn.execute(NOTIFY_LAST_CHANGE)


@dataclass
class _Step:
    """One event of a room folded: the views around it, the rows it writes, or why it was refused."""

    event: dict[str, Any]
    before: RoomView | None
    after: RoomView | None
    rows: list[MessageRow | MessageChange]
    dead_letter: tuple[Any, ...] | None = None


@dataclass
class _RoomPlan:
    room_id: str
    before: RoomView | None
    events: list[dict[str, Any]] = field(default_factory=list)  # in version order, gaps filled
    gaps: list[tuple[str, int, int, bool]] = field(default_factory=list)
    steps: list[_Step] = field(default_factory=list)

    @property
    def transition(self) -> tuple[RoomView | None, RoomView] | None:
        after = self.steps[-1].after if self.steps else self.before
        return (self.before, after) if after is not None and after is not self.before else None


async def _missing(fill_gap: GapFiller | None, room_id: str, first: int, last: int) -> list[dict[str, Any]]:
    if fill_gap is None:
        return []
    try:
        return await fill_gap(room_id, first, last)
    except Exception as e:
        if is_transient(e):
            raise
        log.exception("room %s: reading versions %s..%s from the event store failed", room_id, first, last)
        return []


def _fold(view: RoomView | None, events: Sequence[dict[str, Any]]) -> list[_Step]:
    steps = []
    for event in events:
        step = _apply_one(view, event)
        steps.append(step)
        view = step.after
    return steps


def _apply_one(view: RoomView | None, event: dict[str, Any]) -> _Step:
    try:
        after, message = apply(view, event)
        change = message_change(event)
    except Exception as e:
        # Dead-letter it with the reason; the room's version still advances, so the events
        # after it apply and nothing downstream stalls behind one unreadable event.
        return _refused(view, event, e)
    return _Step(event, view, after, [r for r in (message, change) if r is not None])


def _refused(view: RoomView | None, event: dict[str, Any], error: BaseException) -> _Step:
    log.error("dead-lettering event %s (%s v%s): %s: %s",  # first line: the details may quote message text
              wire_id(event), event.get("type"), event.get("version"), type(error).__name__, _first_line(error))
    after = replace(view, version=event["version"]) if view is not None else None
    return _Step(event, view, after, [], dead_letter_row(event, f"{type(error).__name__}: {error}"))


def wire_id(event: dict[str, Any]) -> Any:
    """The event's "id", computed (`wire.event_id`) when a folding reader left it out (`event_log._lean_wire`)."""
    if "id" in event:
        return event["id"]
    room_id, version = event.get("room_id"), event.get("version")
    return event_id(room_id, version) if isinstance(room_id, str) and type(version) is int else None


def dead_letter_row(event: dict[str, Any], reason: str) -> tuple[Any, ...]:
    """A row of `projection_dead_letters` (event_id, reason, event, room_id, version, event_type) for a decoded event (text without NUL, so it always stores)."""
    if "id" not in event and (id_ := wire_id(event)) is not None:
        event = {"id": id_, **event}  # stored as the wire event it is
    try:
        raw = orjson.dumps(event)
    except Exception:
        raw = repr(event).encode()
    version = event.get("version")
    return (
        _clean(event.get("id")), _clean(reason), raw, _clean(event.get("room_id")),
        version if isinstance(version, int) and not isinstance(version, bool) and 0 <= version < 2**63 else None,
        _clean(event.get("type")),
    )


def _first_line(error: BaseException) -> str:
    return next(iter(str(error).splitlines()), "")


def _clean(value: Any) -> str | None:
    return None if value is None else str(value).replace("\x00", "\\0")


async def _write(conn: AsyncConnection, plans: Sequence[_RoomPlan]) -> None:
    transitions = [t for p in plans if (t := p.transition) is not None]
    steps = [s for p in plans for s in p.steps]
    await _write_rows(
        conn, transitions, [r for s in steps for r in s.rows], [g for p in plans for g in p.gaps],
        [s.dead_letter for s in steps if s.dead_letter is not None],
    )


async def _write_isolated(conn: AsyncConnection, plan: _RoomPlan) -> None:
    """Write one room alone; if refused, event by event, dead-lettering what the database refuses."""
    try:
        async with conn.transaction():
            await _write(conn, [plan])
        return
    except Exception as e:
        if is_transient(e):
            raise
    await _write_rows(conn, [], [], plan.gaps, [])
    steps: list[_Step] = []
    pending = list(plan.steps)
    while pending:
        step = pending.pop(0)
        try:
            async with conn.transaction():
                transition = [(step.before, step.after)] if step.after is not None else []
                await _write_rows(conn, transition, step.rows, [], [step.dead_letter] if step.dead_letter else [])
            steps.append(step)
            continue
        except Exception as e:
            if is_transient(e):
                raise
            step = _refused(step.before, step.event, e)
        async with conn.transaction():
            transition = [(step.before, step.after)] if step.after is not None else []
            await _write_rows(conn, transition, [], [], [step.dead_letter])
        steps.append(step)
        pending = _fold(step.after, [s.event for s in pending])  # the rest, without the refused event
    plan.steps = steps


async def _write_rows(
    conn: AsyncConnection,
    transitions: Sequence[tuple[RoomView | None, RoomView]],
    messages: Sequence[MessageRow | MessageChange],
    gaps: Sequence[tuple[str, int, int, bool]],
    dead_letters: Sequence[tuple[Any, ...]],
) -> None:
    """One statement per table, whatever the number of rows (rooms are distinct: one transition each)."""
    async with conn.cursor() as cur:
        if transitions:
            await cur.execute(_UPSERT_ROOMS, _binary(_room_columns([after for _, after in transitions])))
        rows = [m for m in messages if isinstance(m, MessageRow)]
        if rows:
            await cur.execute(_INSERT_MESSAGES, _binary(_message_columns(rows)))
        changes = [m for m in messages if isinstance(m, MessageChange)]
        if changes:  # after the inserts: an edit may follow its message in the same batch
            await cur.execute(_CHANGE_MESSAGES, _binary(_change_columns(_merge_changes(changes))))
        counter_rows = [(*key, d.rooms, d.awaiting) for key, d in deltas(transitions).items()]
        if counter_rows:  # in sorted key order (`deltas`): writers lock counter rows in one order
            await cur.execute(_ADD_COUNTERS, _binary(_columns(counter_rows, 6)))
        if gaps:
            await cur.execute(_INSERT_GAPS, _binary(_columns(gaps, 4)))
        if dead_letters:
            await cur.execute(_INSERT_DEAD_LETTERS, _binary(_columns(dead_letters, 6)))


def _binary(columns: list[list[Any]]) -> list[list[Any]]:
    """Rows go to the server as binary arrays (10x less CPU than text arrays). Like psycopg's text
    dumper, refuse a NUL in a string on the client, with its message, so a dead letter says why
    (the server's binary input would only say "invalid byte sequence")."""
    for column in columns:
        strings = [v for v in column if type(v) is str]
        if strings and "\x00" in "".join(strings):
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return columns


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _json(value: Any) -> str | None:
    """JSON text for a jsonb column (stdlib json for what orjson refuses, e.g. integers over 64 bits)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value)


def _room_columns(views: Sequence[RoomView]) -> list[list[Any]]:
    out = [[getattr(v, c) for v in views] for c in _ROOM_COLUMNS]
    out[_ROOM_COLUMNS.index("last_message_delivery")] = [_json(v.last_message_delivery) for v in views]
    return out


def _message_columns(rows: Sequence[MessageRow]) -> list[list[Any]]:
    # getattr, not dataclasses.asdict: asdict deep-copies every field (50x slower on replay).
    out = [[getattr(m, c) for m in rows] for c in _MESSAGE_COLUMNS]
    out[_MESSAGE_COLUMNS.index("attachments")] = [_json(list(m.attachments)) for m in rows]
    out[_MESSAGE_COLUMNS.index("delivery_error")] = [_json(m.delivery_error) for m in rows]
    out[_MESSAGE_COLUMNS.index("reply_to")] = [_json(m.reply_to) for m in rows]
    return out


def _merge_changes(changes: Sequence[MessageChange]) -> list[tuple[Any, ...]]:
    """The changes of a batch, one per message, as if applied one after the other.

    Each change keeps a field as it is where it has None (`coalesce`); a delivery change sets
    the error (JSON, possibly `null`) with its status.
    """
    merged: dict[str, list[Any]] = {}
    for c in changes:
        error = None if c.delivery_status is None else orjson.dumps(c.delivery_error).decode()
        values = [c.text, c.edited_at, c.removed_at, c.channel_message_id, c.delivery_status, c.delivery_at, error]
        if (row := merged.get(c.message_id)) is None:
            merged[c.message_id] = values
        else:
            for i, v in enumerate(values):
                if v is not None:
                    row[i] = v
    return [(message_id, *values) for message_id, values in merged.items()]


def _change_columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return _columns(rows, 8)


# The rooms' columns in RoomView's field order, ids as text (the views hold them as str): a row
# is the view's arguments, without a dict or UUID objects per row.
_SELECT_ROOMS = (
    "SELECT " + ", ".join(f"{c}::text AS {c}" if _ROOM_TYPES.get(c) == "uuid" else c for c in _ROOM_COLUMNS)
    + " FROM rooms WHERE rooms.id = ANY(%s::uuid[]) ORDER BY rooms.id FOR UPDATE"  # locked in uuid order, as before
)


async def _load_rooms(conn: AsyncConnection, room_ids: list[str]) -> dict[str, RoomView]:
    if not room_ids:
        return {}
    async with conn.cursor() as cur:
        await cur.execute(_SELECT_ROOMS, (room_ids,))
        rows = await cur.fetchall()
    return {row[0]: RoomView(*row) for row in rows}
