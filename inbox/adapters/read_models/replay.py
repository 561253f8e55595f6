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

from dataclasses import replace
from datetime import datetime

import psycopg
from psycopg import sql

from inbox.config import ConfigError, Settings
from inbox.adapters.postgres import conninfo
from inbox.adapters.schema import migrate_read_models
from inbox.adapters.event_log import Unreadable, WireEventLog
from inbox.adapters.wire import event_id
from inbox.adapters.eventstore import EVENTS_TABLE
from inbox.adapters.read_models.reports_writer import REPORT_TABLES, apply_reports
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


async def replay(
    settings: Settings, reader: WireEventLog, *, page_size: int = 5000, progress: Progress | None = None,
    until: datetime | None = None, into: str | None = None,
) -> ReplayStats:
    """Rebuild the projections (and the reports) from `reader` (opened and closed by the caller,
    inbox/bootstrap.py).

    `until`: only events with occurred_at <= until (the inbox as it stood then). Events of one
    room are in version order and their occurred_at grows with it, so each room stops at its last
    event up to then; the store is read in notification order to the end, since rooms interleave.
    `into`: write the read models into that schema (created and migrated) instead of the live
    ones; the live projections are neither locked nor touched.
    """
    if until is not None and into is None:
        # The live projections as of a past moment would stay there: the workers only add new events.
        raise ConfigError("--until needs --into SCHEMA: the live projections are always rebuilt to the end")
    started = time.perf_counter()
    events = 0
    target = settings
    if into is not None:
        await asyncio.to_thread(check_target_schema, settings, into)
        target = replace(settings, db_schema=into)
        await asyncio.to_thread(migrate_read_models, target)
    total = await asyncio.to_thread(reader.max_notification_id)
    async with await psycopg.AsyncConnection.connect(conninfo(target)) as conn:
        async with conn.transaction():
            if into is None:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (PROJECTION_LOCK,))
            await conn.execute(f"TRUNCATE {', '.join(PROJECTION_TABLES + REPORT_TABLES)}")
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
                batch = [e for _, e in page.events]
                if until is not None:
                    batch = [e for e in batch if datetime.fromisoformat(e["occurred_at"]) <= until]
                if batch:
                    # No change rows per room: one `reset` row below tells every live stream to re-fetch.
                    await apply_in_transaction(conn, batch, fill_gap=None, log_changes=False)
                    await apply_reports(conn, batch)
                events += len(batch)
                position = page.last_id
                if progress:
                    elapsed = time.perf_counter() - started
                    progress(position, max(total, position), events / elapsed if elapsed else 0.0)
            if into is None:
                await record_reset(conn)
            row = await (await conn.execute("SELECT count(*) FROM rooms")).fetchone()
            rooms = row[0] if row else 0
    return ReplayStats(events=events, rooms=rooms, seconds=time.perf_counter() - started)


def check_target_schema(settings: Settings, into: str) -> None:
    """Refuse a target that is the live schema or holds an event store: replay --into never touches those."""
    if into == settings.db_schema:
        raise ConfigError(f"--into {into!r} is the live schema; give a separate schema")
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL",
            (sql.Identifier(into, EVENTS_TABLE).as_string(conn),),
        ).fetchone()
    if row and row[0]:
        raise ConfigError(f"schema {into!r} holds an event store; --into needs a schema of its own")
