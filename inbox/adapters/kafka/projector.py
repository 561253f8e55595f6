"""Faust worker: consumes `inbox.events` and keeps the PostgreSQL read models current.

The agent only consumes → delegates to the projection writer → acks. Events come in batches
(`take_ready`: what arrived during the previous transaction, no fixed window), each applied in
one transaction. Delivery is at-least-once and the writer is idempotent on (room id, version),
so redelivery after a crash or rebalance changes nothing.
Concurrency stays 1 per agent (faust-streaming #606); scale with partitions and workers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from psycopg_pool import AsyncConnectionPool

from inbox.config import Settings
from inbox.adapters.event_log import WireEventLog
from inbox.adapters.wire import InvalidWireEvent, decode, decode_batch
from inbox.adapters.read_models.changes import prune
from inbox.adapters.postgres import is_transient
from inbox.adapters.read_models.writer import BatchStats, ProjectionWriter
from inbox.adapters.kafka.faust_transport import LowLatencyApp, RawSchema, take_ready

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # then every 5 s until the database is back


OpenPool = Callable[[], Awaitable[AsyncConnectionPool]]


class ProjectorRuntime:
    """Connections of one worker process, opened on first use (never at import time) with the
    openers the bootstrap gives it: the pool needs the worker's event loop."""

    def __init__(
        self, settings: Settings, worker_id: str, *, open_pool: OpenPool, open_event_log: Callable[[], WireEventLog]
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self._open_pool = open_pool
        self._open_event_log = open_event_log
        self._pool: AsyncConnectionPool | None = None
        self._writer: ProjectionWriter | None = None
        self._event_log: WireEventLog | None = None
        self._lock = asyncio.Lock()
        self.batches = 0
        self.events = 0
        self._pruned_at = 0.0

    async def writer(self) -> ProjectionWriter:
        async with self._lock:
            if self._writer is None:
                self._pool = await self._open_pool()
                self._writer = ProjectionWriter(self._pool, fill_gap=self._fill_gap)
            return self._writer

    async def _fill_gap(self, room_id: str, first: int, last: int) -> list[dict[str, Any]]:
        if self._event_log is None:
            self._event_log = self._open_event_log()
        return await asyncio.to_thread(self._event_log.room_events, room_id, first, last)

    async def apply(self, raw_values: list[bytes]) -> BatchStats:
        """Apply one batch. The writer dead-letters what cannot be projected; only transient
        failures (database unreachable, restarting, timeouts) reach the retry loop here."""
        events, dead = [], []
        try:
            decoded = decode_batch(raw_values)
        except Exception:  # anything else an odd message provokes: find it one by one
            decoded = [_decode_one(raw) for raw in raw_values]
        for raw, event in zip(raw_values, decoded, strict=True):
            if isinstance(event, dict):
                events.append(event)
            else:
                dead.append((raw, event))
        writer = await self.writer()
        attempt = 0
        while True:
            try:
                if dead:
                    await self._dead_letter(dead)
                    dead = []
                stats = await writer.apply_batch(events)
                break
            except Exception as e:
                # Never drop a batch: the offsets are not acked until it is applied.
                backoff = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                log.warning(
                    "projection batch failed (attempt %s, %s): %s: %s; retrying in %ss",
                    attempt, "transient" if is_transient(e) else "unexpected", type(e).__name__, e, backoff,
                    exc_info=not is_transient(e),
                )
                await asyncio.sleep(backoff)
        self.batches += 1
        self.events += len(events)
        return stats

    async def _dead_letter(self, dead: list[tuple[bytes, object]]) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            for raw, reason in dead:
                log.error("dead-lettering unreadable message: %s", reason)
                await conn.execute(
                    "INSERT INTO projection_dead_letters (event_id, reason, event) VALUES (NULL, %s, %s)",
                    (str(reason).replace("\x00", "\\0"), raw),
                )

    async def heartbeat(self) -> None:
        await self.writer()
        assert self._pool is not None
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO worker_heartbeats (worker_id, kind, beat_at, events) VALUES (%s, 'projector', now(), %s)"
                " ON CONFLICT (worker_id) DO UPDATE SET beat_at = now(), events = EXCLUDED.events",
                (self.worker_id, self.events),
            )
        await self.prune_changes()

    async def prune_changes(self) -> None:
        """Keep the stream's change log to its retention window (every worker may; it is idempotent)."""
        retention = self.settings.stream_retention_s
        now = asyncio.get_running_loop().time()
        if now - self._pruned_at < min(60.0, retention / 4):
            return
        self._pruned_at = now
        assert self._pool is not None
        async with self._pool.connection() as conn:
            deleted = await prune(conn, retention)
        if deleted:
            log.info("pruned %s change-log rows older than %ss", deleted, retention)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._event_log is not None:
            self._event_log.close()


def _decode_one(raw: bytes) -> dict[str, Any] | InvalidWireEvent | str:
    try:
        return decode(raw)
    except Exception as e:  # InvalidWireEvent, or anything else an odd message provokes
        return e if isinstance(e, InvalidWireEvent) else f"{type(e).__name__}: {e}"


def create_faust_app(settings: Settings, runtime: ProjectorRuntime) -> faust.App:
    """The Faust app of one worker: one agent applying batches through `runtime`, one heartbeat timer."""
    assert settings.kafka_bootstrap, "INBOX_KAFKA_BOOTSTRAP is required"
    datadir = settings.data_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    faust_app = LowLatencyApp(
        settings.worker_group,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
        store="memory://",
        processing_guarantee="at_least_once",
        topic_disable_leader=True,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=str(datadir),
        producer_acks=-1,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_rebalance_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.worker_session_timeout_s / 10),
        # A topic that vanished and came back (a broker that lost it; the relay re-creates and
        # re-publishes it) is seen within seconds, not after the client's default five minutes.
        consumer_metadata_max_age_ms=5_000,
        # At most a batch per poll: the stream's buffer pauses a partition when 80 % full, and only
        # what one poll already returned lands beyond that. Unbounded, a catch-up's polls (up to
        # 1 MB a partition) filled the buffer, and then every message waited for a free slot (a
        # task race each: a fifth of the library's CPU per message).
        broker_max_poll_records=settings.worker_batch_size,
    )
    topic = faust_app.topic(settings.events_topic, schema=RawSchema(), partitions=settings.topic_partitions)

    @faust_app.agent(topic, concurrency=1)
    async def project(stream: faust.StreamT[bytes]) -> None:
        async for values in take_ready(stream, settings.worker_batch_size):
            await runtime.apply(list(values))

    async def beat() -> None:
        # An exception here would crash the whole Faust app (a restarted PostgreSQL did exactly
        # that): a missed beat is only a missed beat, the next tick tries again.
        try:
            await runtime.heartbeat()
        except Exception as e:
            log.warning("worker heartbeat failed (%s: %s); next try in %ss", type(e).__name__, e, HEARTBEAT_S)

    # Faust starts tasks and timers once the worker has joined the group and is ready; a timer's
    # first tick comes an interval later, so the first beat is a task: /readyz sees a new worker at once.
    faust_app.task(beat)
    faust_app.timer(interval=HEARTBEAT_S)(beat)

    return faust_app


def build_worker(faust_app: faust.App, loglevel: str = "info") -> faust.Worker:
    """The Faust worker that runs `faust_app`, without Faust's terminal spinner.

    At WARNING and above, Faust keeps its spinner and, to turn it on every log record, sets the
    root logger to DEBUG: every debug call of aiokafka, Faust and mode (several per Kafka request)
    then built a record that the handlers threw away: 3.8 % of a worker's Python CPU during the
    bench's ingest burst (py-spy), at INBOX_LOG_LEVEL=WARNING, which `inbox dev` and the bench set.
    A service has no terminal.
    """
    worker = faust.Worker(faust_app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    return worker


def run_worker(faust_app: faust.App, loglevel: str = "info", *, built: Callable[[], None] | None = None) -> None:
    """Run the app until stopped; `built` is called once the worker is built, before it starts."""
    worker = build_worker(faust_app, loglevel)
    if built is not None:
        built()
    worker.execute_from_commandline()
