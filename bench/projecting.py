"""(f) Projection worker from a pre-filled topic: one `inbox worker` catching up on a backlog.

Every room event of the run's event store is produced (store order, key = room id, as the relay
does) to a fresh topic; then one real worker process starts on a fresh schema and projects the
backlog. Its rate is measured from the first projected event to the last (startup excluded), and
its CPU (psutil) over the same window. Baseline: the raw aiokafka consume rate of the same run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg import sql

from bench.infra import Infra
from bench.procs import CpuMeter, Pipeline
from bench.stats import rate
from inbox.adapters.event_log import WireEventLog
from inbox.adapters.eventstore import InboxApplication
from inbox.adapters.kafka.relay import ensure_topic
from inbox.adapters.schema import migrate
from inbox.adapters.wire import encode

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None  # type: ignore[assignment]


@dataclass
class WorkerCatchUp:
    events: int
    rooms: int
    seconds: float
    cpu_s: float | None
    postgres_cpu_s: float | None

    @property
    def events_per_s(self) -> float:
        return rate(self.events, self.seconds)

    @property
    def cpu_ms_per_event(self) -> float | None:
        return 1000 * self.cpu_s / self.events if self.cpu_s is not None and self.events else None

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "rooms": self.rooms, "seconds": self.seconds,
                "events_per_s": self.events_per_s, "worker_cpu_s": self.cpu_s,
                "worker_cpu_ms_per_event": self.cpu_ms_per_event, "postgres_cpu_s": self.postgres_cpu_s}


def store_events(infra: Infra) -> list[dict[str, Any]]:
    app = InboxApplication.from_settings(infra.settings)
    try:
        log = WireEventLog(app)
        out: list[dict[str, Any]] = []
        position = 0
        while True:
            page, rows = log.read(position, 10_000)
            if rows == 0:
                return out
            out.extend(e for _, e in page.events)
            position = page.last_id
    finally:
        app.close()


async def prefill(bootstrap: str, topic: str, partitions: int, events: list[dict[str, Any]]) -> None:
    await ensure_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5,
                                max_batch_size=256 * 1024, request_timeout_ms=60000)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=encode(e), key=e["room_id"].encode()) for e in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def worker_catch_up(
    infra: Infra, *, timeout: float = 600, batch_size: int | None = None, keep: Callable[[Infra], None] | None = None,
) -> WorkerCatchUp:
    """`keep(catch-up infra)` is called once the backlog is projected, before its schema is dropped."""
    events = store_events(infra)
    settings = replace(
        infra.settings, db_schema=f"{infra.name}_catchup", topic_prefix=f"{infra.name}.catchup.",
        worker_group=f"{infra.name}-catchup", worker_batch_size=batch_size or infra.settings.worker_batch_size,
    )
    migrate(settings)
    shadow = replace(infra, settings=settings)
    try:
        asyncio.run(prefill(settings.kafka_bootstrap or "", settings.events_topic, settings.topic_partitions, events))
        target = sum(1 for _ in events)
        pipeline = Pipeline(shadow)
        cpu = CpuMeter(lambda: {"worker": [p] if (p := pipeline.pid("worker")) else [],
                                "postgres": _postgres(infra)})
        try:
            with shadow.connect() as conn:
                pipeline.start("worker")
                count = 0
                deadline = time.monotonic() + timeout
                while count == 0:  # startup and partition assignment are not part of the rate
                    pipeline.check_alive()
                    count = _projected(conn)
                    if time.monotonic() > deadline:
                        raise TimeoutError("the catch-up worker projected nothing")
                    time.sleep(0.02)
                cpu.start()
                first, t0 = count, time.perf_counter()
                while count < target:
                    pipeline.check_alive()
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the catch-up worker projected {count} of {target} events")
                    time.sleep(0.02)
                    count = _projected(conn)
                seconds = time.perf_counter() - t0
                usage = cpu.stop()
                rooms = conn.execute("SELECT count(*) FROM rooms").fetchone()
        finally:
            pipeline.stop_all()
        if keep is not None:
            keep(shadow)
        return WorkerCatchUp(
            events=target - first, rooms=int(rooms[0]) if rooms else 0, seconds=seconds,
            cpu_s=usage.by_group.get("worker") if usage else None,
            postgres_cpu_s=usage.by_group.get("postgres") if usage else None,
        )
    finally:
        with psycopg.connect(infra.settings.database_url or "", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db_schema)))


def _projected(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(sum(version), 0) FROM rooms").fetchone()
    return int(row[0]) if row else 0


def _postgres(infra: Infra) -> list[int]:
    from bench.procs import postgres_pids

    return postgres_pids(infra)
