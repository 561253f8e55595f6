"""`inbox reports`: the service-report projection, a consumer of the events topic and nothing else.

It is the template for downstream teams: it reads only `inbox.events` (never the event store)
and keeps its own position. Partitions are assigned manually (no consumer-group join: Tansu takes
20-30 s per join and rebalance) and each partition's next offset is stored in `report_offsets` in
the SAME PostgreSQL transaction as the report rows that batch produced. So the effect is exactly
once: a crash before the commit loses both the rows and the position (the batch is read again),
a crash after it keeps both; broker-side commits could not give that, since a commit to Kafka
and a commit to PostgreSQL can never be one atomic step. The writer is idempotent on
(room id, version) as well, which covers `inbox replay` rebuilding the tables under it.

One process per schema: a second one would only wait (each batch locks its partition's offset
row and skips records below the stored offset), which keeps two of them from double counting.
A message that is not an Inbox event, or an event the fold refuses, is dead-lettered in
`report_dead_letters` with the reason; the loop goes on. Database failures are retried with
back-off, never skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from psycopg_pool import AsyncConnectionPool

from inbox.adapters.postgres import async_pool
from inbox.adapters.read_models.reports_writer import ReportStats, apply_reports
from inbox.adapters.postgres import is_transient
from inbox.adapters.read_models.writer import lock_projections
from inbox.adapters.wire import InvalidWireEvent, decode
from inbox.config import Settings

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
PARTITION_CHECK_S = 10.0
PARTITION_RETRY_S = 1.0
BATCH = 500
RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class ReportsConsumer:
    def __init__(self, settings: Settings, worker_id: str | None = None) -> None:
        assert settings.kafka_bootstrap, "INBOX_KAFKA_BOOTSTRAP is required"
        self.settings = settings
        self.topic = settings.events_topic
        self.worker_id = worker_id or f"reports-{socket.gethostname()}-{os.getpid()}"
        self.events = 0
        self._pool: AsyncConnectionPool | None = None
        self._stop: asyncio.Event | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._pool = await async_pool(self.settings, min_size=1, max_size=2)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False, group_id=None,
            auto_offset_reset="earliest",
        )
        assigned: set[TopicPartition] = set()
        next_check = next_beat = 0.0
        try:
            await consumer.start()  # inside: a failed start still stops the consumer and closes the pool
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_check:
                    try:
                        assigned = await self._assign(consumer, assigned)
                        next_check = now + PARTITION_CHECK_S
                    except KafkaError as e:  # the broker is away (restarting): keep reading what we have
                        log.warning("reports: partition check failed (%s: %s); next try in %ss",
                                    type(e).__name__, e, PARTITION_RETRY_S)
                        next_check = now + PARTITION_RETRY_S
                if now >= next_beat:
                    await self._retrying(self._heartbeat)
                    next_beat = now + HEARTBEAT_S
                if not assigned:
                    await _wait(stop, 0.5)
                    continue
                batches = await consumer.getmany(timeout_ms=500, max_records=BATCH)
                for tp, records in sorted(batches.items()):
                    await self._retrying(lambda tp=tp, records=records: self.apply(tp, records))
        finally:
            await consumer.stop()
            await self._pool.close()

    async def _assign(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> set[TopicPartition]:
        """Take every partition of the topic (again when it grows), each from its stored offset."""
        # Fresh metadata of the whole cluster: the topic may appear (the relay creates it) or grow.
        # `consumer.topics()` would not do: it leaves the consumer's own metadata, which tracks only
        # assigned topics, as it was, so a topic created after start was never seen.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(self.topic) or set()
        tps = {TopicPartition(self.topic, p) for p in partitions}
        if not tps or tps == assigned:
            return assigned
        consumer.assign(sorted(tps))
        stored = await self._retrying(self._stored_offsets)
        for tp in sorted(tps):
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        log.info("reports: reading %s partitions of %s from %s", len(tps), self.topic, stored)
        return tps

    async def _stored_offsets(self) -> dict[int, int]:
        assert self._pool is not None
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT partition, next_offset FROM report_offsets WHERE topic = %s", (self.topic,))
            return {int(p): int(o) for p, o in await cur.fetchall()}

    async def apply(self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]) -> ReportStats:
        """One partition's batch and its next offset in one transaction."""
        assert self._pool is not None
        async with self._pool.connection() as conn, conn.transaction():
            await lock_projections(conn)  # replay switches the tables
            await conn.execute(
                "INSERT INTO report_offsets (topic, partition, next_offset) VALUES (%s, %s, 0)"
                " ON CONFLICT DO NOTHING", (tp.topic, tp.partition),
            )
            cur = await conn.execute(
                "SELECT next_offset FROM report_offsets WHERE topic = %s AND partition = %s FOR UPDATE",
                (tp.topic, tp.partition),
            )
            row = await cur.fetchone()
            start = int(row[0]) if row else 0
            events, dead = [], []
            for r in records:
                if r.offset < start:
                    continue  # already counted (another process, or a replayed fetch)
                try:
                    events.append(decode(r.value))
                except Exception as e:  # InvalidWireEvent, or anything an odd message provokes
                    reason = str(e) if isinstance(e, InvalidWireEvent) else f"{type(e).__name__}: {e}"
                    dead.append((reason.replace("\x00", "\\0"), r.value or b""))
            for reason, raw in dead:
                log.error("reports: dead-lettering unreadable message on %s: %s", tp, reason)
                await conn.execute("INSERT INTO report_dead_letters (reason, event) VALUES (%s, %s)", (reason, raw))
            stats = await apply_reports(conn, events)
            await conn.execute(
                "UPDATE report_offsets SET next_offset = %s, updated_at = now() WHERE topic = %s AND partition = %s",
                (max(start, records[-1].offset + 1), tp.topic, tp.partition),
            )
        self.events += len(events)
        return stats

    async def _heartbeat(self) -> None:
        assert self._pool is not None
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO worker_heartbeats (worker_id, kind, beat_at, events) VALUES (%s, 'reports', now(), %s)"
                " ON CONFLICT (worker_id) DO UPDATE SET beat_at = now(), events = EXCLUDED.events",
                (self.worker_id, self.events),
            )

    async def _retrying(self, step: Any) -> Any:
        """Run `step` until it succeeds: a batch is never dropped (its offset is not stored until then)."""
        attempt = 0
        while True:
            try:
                return await step()
            except Exception as e:
                if self._stop is not None and self._stop.is_set():
                    raise  # shutting down: the batch's offset is not stored, it is read again next time
                backoff = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("reports: %s failed (attempt %s, %s): %s: %s; retrying in %ss",
                            getattr(step, "__name__", "batch"), attempt,
                            "transient" if is_transient(e) else "unexpected", type(e).__name__, e, backoff,
                            exc_info=not is_transient(e))
                if self._stop is not None:
                    await _wait(self._stop, backoff)
                else:
                    await asyncio.sleep(backoff)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
