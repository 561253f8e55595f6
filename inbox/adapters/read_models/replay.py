"""Drop and rebuild every projection from the event store.

One event never aborts it: a stored event that cannot be read, or that the read models cannot
take, is dead-lettered with the reason (`apply_in_transaction` isolates it under savepoints) and
the rebuild goes on.

Runs in one transaction holding the projection lock exclusively: live workers wait, then
carry on idempotently (their events are either already in the rebuilt state or next in line).
The TRUNCATE makes API reads of the projections wait until the rebuild commits; they never see
a half-built state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from inbox.config import Settings
from inbox.adapters.postgres import conninfo
from inbox.adapters.event_log import Unreadable, WireEventLog
from inbox.adapters.wire import event_id
from inbox.adapters.eventstore import InboxApplication
from inbox.adapters.read_models.changes import record_reset
from inbox.adapters.read_models.writer import PROJECTION_LOCK, apply_in_transaction

log = logging.getLogger(__name__)

PROJECTION_TABLES = ("rooms", "messages", "counters", "projection_gaps", "projection_dead_letters")

Progress = Callable[[int, int, float], None]


@dataclass
class ReplayStats:
    events: int
    rooms: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def replay(settings: Settings, *, page_size: int = 5000, progress: Progress | None = None) -> ReplayStats:
    app = InboxApplication.from_settings(settings)
    reader = WireEventLog(app)
    started = time.perf_counter()
    events = 0
    try:
        total = await asyncio.to_thread(reader.max_notification_id)
        async with await psycopg.AsyncConnection.connect(conninfo(settings)) as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PROJECTION_LOCK,))
                await conn.execute(f"TRUNCATE {', '.join(PROJECTION_TABLES)}")
                position = 0
                while True:
                    unreadable: list[Unreadable] = []
                    page, rows = await asyncio.to_thread(reader.read, position, page_size, unreadable)
                    if rows == 0:
                        break
                    for u in unreadable:  # a stored event that cannot be read does not abort the replay
                        log.error("replay: dead-lettering unreadable stored event %s v%s: %s", u.room_id, u.version,
                                  u.reason.splitlines()[0])
                        await conn.execute(
                            "INSERT INTO projection_dead_letters (event_id, reason, event, room_id, version, event_type)"
                            " VALUES (%s, %s, %s, %s, %s, %s)",
                            (event_id(u.room_id, u.version), u.reason, u.state, u.room_id, u.version,
                             u.topic.rsplit(".", 1)[-1]),
                        )
                    if page.events:
                        # No change rows per room: one `reset` row below tells every live stream to re-fetch.
                        await apply_in_transaction(conn, [e for _, e in page.events], fill_gap=None,
                                                   log_changes=False)
                    events += len(page.events)
                    position = page.last_id
                    if progress:
                        elapsed = time.perf_counter() - started
                        progress(position, max(total, position), events / elapsed if elapsed else 0.0)
                await record_reset(conn)
                row = await (await conn.execute("SELECT count(*) FROM rooms")).fetchone()
                rooms = row[0] if row else 0
    finally:
        app.close()
    return ReplayStats(events=events, rooms=rooms, seconds=time.perf_counter() - started)
