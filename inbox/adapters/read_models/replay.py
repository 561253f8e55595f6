"""Rebuild every projection from the event store, without a read outage.

The new read models are built beside the live ones, in the shadow schema `<schema>__replay`,
inside one transaction: the tables from the migration's own DDL (`schema.read_model_ddl`, plus
any CHECK constraint the live tables carry), the whole notification log read in large pages
(the next page is read while the current one is written), folded in memory by the workers' own
planning and written by binary COPY (`bulk.BulkLoad`; if the database refuses a COPY, that load
is rolled back and done again through the workers' `apply_in_transaction`, which isolates and
dead-letters what is refused), then the non-unique indexes built once over the loaded rows. Meanwhile the API reads the live tables and the
workers keep projecting into them.

The switch, still in that transaction: the projection lock of the live schema is taken
exclusively (running batches finish, new ones wait), the events stored since the load are
applied to the shadow (so it holds everything any worker has projected), the live tables are
moved aside and the shadow ones moved in (`ALTER TABLE ... SET SCHEMA`, under a short lock
timeout, retried), the old ones dropped, and one `reset` row is added to the change log. On
commit the workers continue against the new tables: the events they receive are either
already there (skipped as duplicates) or the next versions, so no gap and no duplicate. If the
replay fails or is killed before, the transaction rolls back: the live read models were never
touched.

One event never aborts it: a stored event that cannot be read, or that the read models cannot
take, is dead-lettered with the reason (`apply_in_transaction` isolates it under savepoints)
and the rebuild goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from inbox.adapters.event_log import LogPage, Unreadable, WireEventLog
from inbox.adapters.eventstore import EVENTS_TABLE
from inbox.adapters.postgres import conninfo
from inbox.adapters.read_models.bulk import BulkLoad, BulkRefused, OpenReader, dead_letter_unreadable, default_shares, unreadable_row
from inbox.adapters.read_models.changes import record_reset
from inbox.adapters.read_models.reports_writer import REPORT_TABLES, apply_reports
from inbox.adapters.read_models.writer import apply_in_transaction, lock_projections
from inbox.adapters.schema import migrate_read_models, read_model_ddl
from inbox.config import ConfigError, Settings
from projections.rooms import RoomView

log = logging.getLogger(__name__)

PROJECTION_TABLES = ("rooms", "messages", "counters", "projection_gaps", "projection_dead_letters")
# The tables a replay rebuilds and switches; the change log and positions stay where they are.
REBUILT_TABLES = PROJECTION_TABLES + REPORT_TABLES
REPLAY_LOCK = 0x1B0C7  # session lock, keyed by schema: one replay of a schema at a time
SHADOW_SUFFIX = "__replay"
OLD_SUFFIX = "__replaced"
SWITCH_LOCK_TIMEOUT = "2s"  # waiting longer would queue the API's reads behind the switch

Progress = Callable[[int, int, float], None]
Hook = Callable[[], Awaitable[None]]


@dataclass
class ReplayStats:
    events: int
    rooms: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def replay(
    settings: Settings, reader: WireEventLog, *, page_size: int = 20_000, progress: Progress | None = None,
    until: datetime | None = None, into: str | None = None, before_switch: Hook | None = None,
    open_reader: OpenReader | None = None, shares: int | None = None,
) -> ReplayStats:
    """Rebuild the projections (and the reports) from `reader` (opened and closed by the caller,
    inbox/bootstrap.py).

    `until`: only events with occurred_at <= until (the inbox as it stood then). Events of one
    room are in version order and their occurred_at grows with it, so each room stops at its last
    event up to then; the store is read in notification order to the end, since rooms interleave.
    `into`: write the read models into that schema (created and migrated) instead of the live
    ones; the live projections are neither locked nor touched.
    `before_switch`: awaited once the shadow is built, before the switch (tests hold it there).
    `open_reader`: opens another reader of the same store, in a worker process: with it the log is
    folded in `shares` of the rooms side by side (default: one per core for a large log, `bulk`).
    """
    if until is not None and into is None:
        # The live projections as of a past moment would stay there: the workers only add new events.
        raise ConfigError("--until needs --into SCHEMA: the live projections are always rebuilt to the end")
    started = time.perf_counter()
    if into is not None:
        return await _replay_into(settings, reader, into, page_size, progress, until, started, open_reader, shares)
    live = settings.db_schema
    async with await psycopg.AsyncConnection.connect(conninfo(settings), autocommit=True) as conn:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (REPLAY_LOCK, live))).fetchone()
        if not (row and row[0]):
            raise ConfigError(f"another `inbox replay` is rebuilding schema {live!r}")
        try:
            ext = await _extension_schema(conn)
            loader = _Loader(conn, settings, reader, page_size, progress, None, started, open_reader, shares)
            async with conn.transaction():
                shadow = live + SHADOW_SUFFIX
                await _create_shadow(conn, live, shadow, ext)
                position = await loader.load_first()
                log.info("replay: %s events loaded into %s in %.1fs", loader.events, shadow, time.perf_counter() - started)
                await _set_search_path(conn, shadow, ext)
                await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
                for statement in read_model_ddl()[1]:
                    began = time.perf_counter()
                    await conn.execute(statement)
                    log.info("replay: %.1fs: %s", time.perf_counter() - began, statement.split(" ON ")[0])
                if before_switch is not None:
                    await before_switch()
                position = await loader.load(position)  # what was stored meanwhile, workers still running
                await lock_projections(conn, live, exclusive=True)
                await loader.load(position)  # the last events: no worker projects until the commit
                await _switch(conn, live, shadow, ext)
                await record_reset(conn)
                rooms = await _count_rooms(conn)
                log.info("replay: switched to the rebuilt read models after %.1fs", time.perf_counter() - started)
        finally:
            if not conn.closed:
                await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (REPLAY_LOCK, live))
    return ReplayStats(events=loader.events, rooms=rooms, seconds=time.perf_counter() - started)


async def _replay_into(
    settings: Settings, reader: WireEventLog, into: str, page_size: int, progress: Progress | None,
    until: datetime | None, started: float, open_reader: OpenReader | None, shares: int | None,
) -> ReplayStats:
    """`--into SCHEMA`: a separate schema rebuilt in place (nothing reads it meanwhile)."""
    await asyncio.to_thread(check_target_schema, settings, into)
    target = replace(settings, db_schema=into)
    await asyncio.to_thread(migrate_read_models, target)
    async with await psycopg.AsyncConnection.connect(conninfo(target)) as conn:
        async with conn.transaction():
            await conn.execute(f"TRUNCATE {', '.join(REBUILT_TABLES)}")
            loader = _Loader(conn, target, reader, page_size, progress, until, started, open_reader, shares)
            await loader.load_first()
            rooms = await _count_rooms(conn)
    return ReplayStats(events=loader.events, rooms=rooms, seconds=time.perf_counter() - started)


class _Loader:
    """Reads the log from a position and applies it through the workers' writer, rooms in memory."""

    def __init__(
        self, conn: AsyncConnection[Any], settings: Settings, reader: WireEventLog, page_size: int,
        progress: Progress | None, until: datetime | None, started: float, open_reader: OpenReader | None,
        shares: int | None,
    ) -> None:
        self.conn, self.settings, self.reader, self.page_size = conn, settings, reader, page_size
        self.progress, self.until, self.started = progress, until, started
        self.open_reader, self.shares = open_reader, shares
        self.events = 0
        # Every room written so far when the loader is their only writer (None: read them from the table).
        self.known: dict[str, RoomView] | None = {}

    def _read(self, position: int) -> tuple[LogPage, int, list[Unreadable]]:
        unreadable: list[Unreadable] = []
        page, rows = self.reader.read(position, self.page_size, unreadable)
        return page, rows, unreadable

    async def load_first(self) -> int:
        """The whole log into the empty tables, in bulk (`BulkLoad`); if the database refuses a bulk
        write, that load is rolled back and the log loaded again through the writer, which isolates
        and dead-letters what is refused. Returns the last notification id read."""
        stop = await asyncio.to_thread(self.reader.max_notification_id)
        shares = self.shares if self.shares is not None else default_shares(stop)
        bulk = BulkLoad(self.conn, self.settings, self.reader, self.open_reader, shares=shares,
                        page_size=self.page_size, until=self.until)

        def on_page(position: int) -> None:
            if self.progress:
                elapsed = time.perf_counter() - self.started
                self.progress(position, stop, bulk.events / elapsed if elapsed else 0.0)

        try:
            async with self.conn.transaction():  # a savepoint: what the bulk load wrote goes if it is refused
                await bulk.run(stop, on_page)
        except BulkRefused as e:
            log.warning("replay: the database refused a bulk write (%s); loading again through the writer,"
                        " event by event where refused", e)
            self.events, self.known = 0, {}
            return await self.load(0)
        log.info("replay: %s events of %s rooms folded in %s share(s) and written", bulk.events, bulk.rooms,
                 bulk.shares)
        self.events = bulk.events
        self.known = None  # the rooms are in the table: the writer reads the few it needs from there
        on_page(stop)
        return stop

    async def load(self, position: int) -> int:
        """Apply everything stored after `position` through the writer; returns the last notification id read."""
        total = await asyncio.to_thread(self.reader.max_notification_id)
        pending = asyncio.ensure_future(asyncio.to_thread(self._read, position))
        try:
            while True:
                page, rows, unreadable = await pending
                if rows == 0:
                    return position
                pending = asyncio.ensure_future(asyncio.to_thread(self._read, page.last_id))  # read ahead
                await self._apply(page, unreadable)
                # The rooms kept so far stay: keep the cyclic collector from walking all of them again
                # on every full collection (refcounting still frees what is dropped).
                gc.freeze()
                position = page.last_id
                if self.progress:
                    elapsed = time.perf_counter() - self.started
                    self.progress(position, max(total, position), self.events / elapsed if elapsed else 0.0)
        finally:
            gc.unfreeze()
            if not pending.done():
                with contextlib.suppress(Exception):
                    await pending

    async def _apply(self, page: LogPage, unreadable: list[Unreadable]) -> None:
        for u in unreadable:  # a stored event that cannot be read does not abort the replay
            await dead_letter_unreadable(self.conn, *unreadable_row(u))
        batch = [e for _, e in page.events]
        if self.until is not None:
            batch = [e for e in batch if datetime.fromisoformat(e["occurred_at"]) <= self.until]
        if batch:
            # No change rows per room: one `reset` row tells every live stream to re-fetch.
            await apply_in_transaction(self.conn, batch, fill_gap=None, log_changes=False, known=self.known)
            await apply_reports(self.conn, batch)
        self.events += len(batch)


async def _extension_schema(conn: AsyncConnection[Any]) -> str | None:
    row = await (await conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
    )).fetchone()
    return str(row[0]) if row else None


async def _set_search_path(conn: AsyncConnection[Any], schema: str, ext: str | None) -> None:
    names = [schema] + ([ext] if ext and ext != schema else [])
    await conn.execute(
        "SELECT set_config('search_path', %s, true)",
        (", ".join(sql.Identifier(n).as_string(conn) for n in names),),
    )


async def _create_shadow(conn: AsyncConnection[Any], live: str, shadow: str, ext: str | None) -> None:
    """The read-model tables in `shadow`, as a migration makes them, without their non-unique indexes.

    CHECK constraints added to the live tables by hand are carried over: whatever the live read
    models refuse, the rebuilt ones refuse (and dead-letter) too.
    """
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shadow)))
    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(shadow)))
    await _set_search_path(conn, shadow, ext)
    for statement in read_model_ddl()[0]:
        await conn.execute(statement)
    cur = await conn.execute(
        "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k"
        " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = ANY(%s) AND k.contype = 'c' AND NOT EXISTS ("
        "  SELECT 1 FROM pg_constraint s JOIN pg_class sc ON sc.oid = s.conrelid"
        "  JOIN pg_namespace sn ON sn.oid = sc.relnamespace"
        "  WHERE sn.nspname = %s AND sc.relname = c.relname AND s.conname = k.conname)",
        (live, list(REBUILT_TABLES), shadow),
    )
    for table, name, definition in await cur.fetchall():
        await conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            sql.Identifier(shadow, table), sql.Identifier(name), sql.SQL(definition)))


async def _switch(conn: AsyncConnection[Any], live: str, shadow: str, ext: str | None) -> None:
    """Move the live tables aside and the shadow ones in; drop the old ones.

    The live tables are locked first, all at once, in the order the API reads them, under a short
    lock timeout; a read holding one of them makes the attempt give up (rolled back to a
    savepoint) and try again, rather than queue every other read behind the switch.
    """
    old = live + OLD_SUFFIX
    attempt = 0
    while True:
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{SWITCH_LOCK_TIMEOUT}'")
                await conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(live, t) for t in REBUILT_TABLES)))
            break
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as e:
            attempt += 1
            log.warning("replay: switching waits for readers of the live tables (attempt %s: %s)", attempt,
                        type(e).__name__)
            await asyncio.sleep(min(0.1 * attempt, 1.0))
    await conn.execute("SET LOCAL lock_timeout = 0")
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(old)))
    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(old)))
    for table in REBUILT_TABLES:
        await conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier(live, table), sql.Identifier(old)))
        await conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier(shadow, table), sql.Identifier(live)))
    await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(old)))
    await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(shadow)))
    await _set_search_path(conn, live, ext)


async def _count_rooms(conn: AsyncConnection[Any]) -> int:
    row = await (await conn.execute("SELECT count(*) FROM rooms")).fetchone()
    return int(row[0]) if row else 0


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
