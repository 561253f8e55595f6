"""Dead letters of the projections: list them, count them (for /metrics), re-apply them after a fix.

Re-applying works per room and from the event store, the source of truth: the room's message
rows are deleted, its row is set back to version 0 and every event of the room is folded again
through the same writer the workers use (`apply_in_transaction`). Setting the version to 0
rather than deleting the row keeps the counter deltas exact (the old row is the "before" view)
and, since `RoomOpened` starts the fold afresh, the result equals a fresh projection of the room.
A dead letter whose event now applies is marked resolved (kept, with `resolved_at`); one that
still fails stays unresolved with the new reason. This runs under the projection lock held
exclusively (like `inbox replay`), so workers pause for those few rooms and then carry on
idempotently.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from inbox.config import Settings
from inbox.adapters.postgres import conninfo
from inbox.adapters.event_log import WireEventLog
from inbox.adapters.wire import decode
from inbox.adapters.read_models.writer import apply_in_transaction, lock_projections

log = logging.getLogger(__name__)

UNRESOLVED_COUNT_SQL = "SELECT count(*) FROM projection_dead_letters WHERE resolved_at IS NULL"
RELAY_COUNT_SQL = "SELECT count(*) FROM relay_dead_letters"


def unresolved_count(conn: psycopg.Connection[Any]) -> int:
    """Projection dead letters not resolved yet (export it as a gauge in /metrics)."""
    row = conn.execute(UNRESOLVED_COUNT_SQL).fetchone()
    return int(row[0]) if row else 0


def relay_dead_letter_count(conn: psycopg.Connection[Any]) -> int:
    """Events the relay could not publish (export it as a gauge in /metrics)."""
    row = conn.execute(RELAY_COUNT_SQL).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class DeadLetter:
    id: int
    room_id: str | None
    version: int | None
    event_type: str | None
    reason: str
    recorded_at: datetime
    resolved_at: datetime | None


@dataclass
class RetryResult:
    rooms: int = 0  # rooms re-projected from the event store
    resolved: int = 0  # dead letters whose event now applies
    still_failing: int = 0


def list_dead_letters(settings: Settings, *, include_resolved: bool = False, limit: int = 100) -> list[DeadLetter]:
    with psycopg.connect(conninfo(settings)) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, room_id, version, event_type, reason, recorded_at, resolved_at FROM projection_dead_letters"
            + ("" if include_resolved else " WHERE resolved_at IS NULL")
            + " ORDER BY id LIMIT %s",
            (limit,),
        )
        return [DeadLetter(**r) for r in cur.fetchall()]


def list_relay_dead_letters(settings: Settings, *, limit: int = 100) -> list[dict[str, Any]]:
    with psycopg.connect(conninfo(settings)) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, notification_id, room_id, version, event_type, reason, recorded_at FROM relay_dead_letters"
            " ORDER BY id LIMIT %s",
            (limit,),
        )
        return cur.fetchall()


async def retry(settings: Settings, reader: WireEventLog, ids: list[int] | None = None) -> RetryResult:
    """Re-apply the given unresolved dead letters (all of them when `ids` is None) from `reader`
    (opened and closed by the caller, inbox/bootstrap.py)."""
    result = RetryResult()
    async with await psycopg.AsyncConnection.connect(conninfo(settings)) as conn:
        async with conn.transaction():
            await lock_projections(conn, exclusive=True)
            rooms = await _rooms_to_retry(conn, ids)
            for room_id in rooms:
                events = await asyncio.to_thread(reader.room_events, room_id, 1, 2**62)
                resolved, failing = await _reproject_room(conn, room_id, events)
                result.rooms += 1
                result.resolved += resolved
                result.still_failing += failing
    return result


async def _rooms_to_retry(conn: psycopg.AsyncConnection[Any], ids: list[int] | None) -> list[str]:
    """The rooms of the chosen dead letters; a row stored before it had a room is decoded again."""
    cur = await conn.execute(
        "SELECT id, room_id, event FROM projection_dead_letters WHERE resolved_at IS NULL"
        + ("" if ids is None else " AND id = ANY(%s)") + " ORDER BY id FOR UPDATE",
        () if ids is None else (ids,),
    )
    rooms: set[str] = set()
    for row_id, room_id, raw in await cur.fetchall():
        if room_id is None:
            try:
                event = decode(bytes(raw))
            except Exception as e:
                log.warning("dead letter %s is still unreadable: %s", row_id, e)
                continue
            room_id = event["room_id"]
            await conn.execute(
                "UPDATE projection_dead_letters SET room_id = %s, version = %s, event_type = %s WHERE id = %s",
                (room_id, event["version"], event["type"], row_id),
            )
        rooms.add(room_id)
    return sorted(rooms)


async def _reproject_room(
    conn: psycopg.AsyncConnection[Any], room_id: str, events: list[dict[str, Any]]
) -> tuple[int, int]:
    """Fold every event of the room again; reconcile its dead letters. Returns (resolved, still failing)."""
    mark_row = await (await conn.execute("SELECT coalesce(max(id), 0) FROM projection_dead_letters")).fetchone()
    mark = mark_row[0] if mark_row else 0
    if events:
        await conn.execute("DELETE FROM messages WHERE room_id = %s::uuid", (room_id,))
        await conn.execute("UPDATE rooms SET version = 0 WHERE id = %s::uuid", (room_id,))
        await apply_in_transaction(conn, events, fill_gap=None)
    stored = [e["version"] for e in events]
    failing_now = [r[0] for r in await (await conn.execute(
        "SELECT version FROM projection_dead_letters WHERE id > %s AND room_id = %s", (mark, room_id)
    )).fetchall()]
    # Still failing: keep the old row (its id), with the new reason; drop the duplicate just made.
    await conn.execute(
        "UPDATE projection_dead_letters o SET reason = n.reason, retried_at = now()"
        " FROM projection_dead_letters n"
        " WHERE n.id > %(mark)s AND n.room_id = %(room)s AND o.id <= %(mark)s AND o.room_id = %(room)s"
        " AND o.resolved_at IS NULL AND o.version = n.version",
        {"mark": mark, "room": room_id},
    )
    await conn.execute(
        "DELETE FROM projection_dead_letters n WHERE n.id > %(mark)s AND n.room_id = %(room)s AND EXISTS ("
        " SELECT 1 FROM projection_dead_letters o WHERE o.id <= %(mark)s AND o.room_id = %(room)s"
        " AND o.resolved_at IS NULL AND o.version = n.version)",
        {"mark": mark, "room": room_id},
    )
    await conn.execute(
        "UPDATE projection_dead_letters SET retried_at = now(),"
        " reason = 'not in the event store, cannot be re-applied (was: ' || reason || ')'"
        " WHERE id <= %(mark)s AND room_id = %(room)s AND resolved_at IS NULL"
        " AND NOT (version = ANY(%(stored)s)) AND reason NOT LIKE 'not in the event store%%'",
        {"mark": mark, "room": room_id, "stored": stored},
    )
    resolved = await conn.execute(
        "UPDATE projection_dead_letters o SET resolved_at = now(), retried_at = now()"
        " WHERE o.id <= %(mark)s AND o.room_id = %(room)s AND o.resolved_at IS NULL"
        " AND o.version = ANY(%(stored)s) AND NOT (o.version = ANY(%(failing)s))",
        {"mark": mark, "room": room_id, "stored": stored, "failing": failing_now},
    )
    failing = await (await conn.execute(
        "SELECT count(*) FROM projection_dead_letters WHERE room_id = %s AND resolved_at IS NULL", (room_id,)
    )).fetchone()
    return resolved.rowcount, int(failing[0]) if failing else 0
