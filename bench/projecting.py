"""(f) Projection worker from a pre-filled topic: one `inbox worker` catching up on a backlog.

Every room event of the run's event store is produced (store order, key = room id, as the relay
does) to a fresh topic; then one real worker process starts on a fresh schema and projects the
backlog. Its rate is measured from the first projected event to the last (startup excluded), and
its CPU (psutil) over the same window. Baseline: the raw aiokafka consume rate of the same run.
"""

from __future__ import annotations

import asyncio
import os
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


class PerEvent:
    """Rates of a catch-up: `events` projected in `seconds`, using `cpu_s` of the workers' CPU."""

    events: int
    seconds: float
    cpu_s: float | None

    @property
    def events_per_s(self) -> float:
        return rate(self.events, self.seconds)

    @property
    def cpu_ms_per_event(self) -> float | None:
        return 1000 * self.cpu_s / self.events if self.cpu_s is not None and self.events else None


@dataclass
class WorkerCatchUp(PerEvent):
    events: int
    rooms: int
    seconds: float
    cpu_s: float | None
    postgres_cpu_s: float | None

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


# ---- scale-out: k workers of one consumer group on a pre-filled topic ------------------------
@dataclass
class ParallelCatchUp(PerEvent):
    workers: int
    partitions: int
    events: int  # the backlog measured (after the probe)
    probe_events: int
    seconds: float  # from the first send of the backlog to the last event projected
    produce_seconds: float  # of which producing the backlog took this long (the workers ran meanwhile)
    cpu_s: float | None  # every worker process together
    postgres_cpu_s: float | None
    per_worker_events: list[int]  # events each worker applied in all (heartbeats): both had partitions?
    machine_busy_cores: float | None
    other_cores: float | None  # processes outside the benchmark (and outside its PostgreSQL) meanwhile

    def as_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "partitions": self.partitions, "events": self.events,
                "probe_events": self.probe_events, "seconds": self.seconds, "produce_seconds": self.produce_seconds,
                "events_per_s": self.events_per_s, "worker_cpu_s": self.cpu_s,
                "worker_cpu_ms_per_event": self.cpu_ms_per_event, "postgres_cpu_s": self.postgres_cpu_s,
                "per_worker_events": self.per_worker_events, "machine_busy_cores": self.machine_busy_cores,
                "other_cores": self.other_cores}


def parallel_catch_up(infra: Infra, *, workers: int, timeout: float = 600) -> ParallelCatchUp:
    """`workers` real `inbox worker` processes (one consumer group) projecting the run's event store.

    Partition assignment is settled before the clock starts: the workers start on a topic holding
    only a probe (the first 2 % of the events, at least 500), and the clock starts once the probe is
    projected and every worker's heartbeat shows events applied (each holds partitions). Then the
    rest is produced (store order, key = room id, as the relay does) while they run, and the clock
    stops when the projections hold every event: events/s of the backlog until the lag is 0.
    """
    events = store_events(infra)
    stem = f"{infra.name}_w{workers}"
    settings = replace(
        infra.settings, db_schema=stem, topic_prefix=f"{infra.name}.w{workers}.", worker_group=f"{stem}-projections",
    )
    migrate(settings)
    shadow = replace(infra, settings=settings)
    bootstrap, topic, partitions = settings.kafka_bootstrap or "", settings.events_topic, settings.topic_partitions
    probe_n = min(len(events), max(500, len(events) // 50))
    probe, backlog = events[:probe_n], events[probe_n:]
    pipeline = Pipeline(shadow)
    names = ["worker"] + [f"worker{i}" for i in range(2, workers + 1)]
    cpu = CpuMeter(lambda: {"worker": [p for n in names if (p := pipeline.pid(n))], "postgres": _postgres(infra),
                            "bench": [os.getpid()]})
    try:
        asyncio.run(prefill(bootstrap, topic, partitions, probe))
        with shadow.connect() as conn:
            for name in names:
                pipeline.start("worker", name=name)
            pipeline.wait_until(lambda: _projected(conn) >= len(probe), timeout=timeout, what="the probe to be projected")
            pipeline.wait_until(lambda: len(_applied(conn)) >= workers, timeout=60, interval=0.2,
                                what=f"{workers} workers with partitions (heartbeats showing applied events)")
            cpu.start()
            t0 = time.perf_counter()
            asyncio.run(prefill(bootstrap, topic, partitions, backlog))
            produced = time.perf_counter() - t0
            pipeline.wait_until(lambda: _projected(conn) >= len(events), timeout=timeout, interval=0.02,
                                what=f"{workers} worker(s) to project {len(events)} events")
            seconds = time.perf_counter() - t0
            usage = cpu.stop()
            pipeline.wait_until(lambda: sum(_applied(conn).values()) >= len(events), timeout=10, interval=0.2,
                                what="the workers' last heartbeats")
            split = sorted(_applied(conn).values(), reverse=True)
    finally:
        pipeline.stop_all()
        with psycopg.connect(infra.settings.database_url or "", autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db_schema)))
    return ParallelCatchUp(
        workers=workers, partitions=partitions, events=len(backlog), probe_events=len(probe), seconds=seconds,
        produce_seconds=produced, cpu_s=usage.by_group.get("worker") if usage else None,
        postgres_cpu_s=usage.by_group.get("postgres") if usage else None, per_worker_events=split,
        machine_busy_cores=usage.machine_busy_s / usage.wall_s if usage and usage.wall_s else None,
        other_cores=usage.other_s / usage.wall_s if usage and usage.wall_s else None,
    )


def _applied(conn: psycopg.Connection) -> dict[str, int]:
    """Events applied per projection worker that has applied any (its latest heartbeat)."""
    rows = conn.execute("SELECT worker_id, events FROM worker_heartbeats WHERE kind = 'projector' AND events > 0")
    return {r[0]: int(r[1]) for r in rows.fetchall()}
