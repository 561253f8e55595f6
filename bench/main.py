"""`python -m bench`: run every phase and print the figures (see bench/__init__.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.baselines import insert_baseline, kafka_baseline, kafka_latency, trivial_http_baseline
from bench.commands import command_bench
from bench.expiry import resolve_expired_under_load, write_expired_rooms
from bench.freshness import describe_mix, memory_per_stream, run_scenario, setup_rooms, viewers
from bench.infra import Infra, infrastructure
from bench.ingest import (
    ORG,
    ProgressMonitor,
    event_store_transactions,
    ingest_burst,
    message_bodies,
    projected_total,
    register_account,
    room_event_total,
    summarize_visibility,
    visibility_latency,
)
from bench.procs import CpuMeter, Pipeline, profiled, standard_groups
from bench.projecting import parallel_catch_up, worker_catch_up
from bench.replaying import run_replay
from bench.stats import fmt_ms, rate, summary_ms
from inbox.adapters.auth import mint_token


@dataclass
class Sizes:
    messages: int
    clients: int
    contacts: int
    warmup: int
    samples: int
    small_room: int
    large_room: int
    commands: int
    cold_loads: int
    inserts_single: int
    inserts_concurrent: int
    kafka_messages: int
    expired_rooms: int

    @classmethod
    def resolve(cls, args: argparse.Namespace) -> Sizes:
        quick = args.quick
        messages = args.messages or (1000 if quick else 20_000)
        return cls(
            messages=messages,
            clients=args.clients,
            contacts=args.contacts or min(messages, 200 if quick else 2000),
            warmup=64 if quick else 200,
            samples=args.samples or (20 if quick else 200),
            small_room=10,
            large_room=args.large_room or (1000 if quick else 10_000),
            commands=args.commands or (40 if quick else 200),
            cold_loads=5 if quick else 20,
            inserts_single=300 if quick else 3000,
            inserts_concurrent=max(args.clients * 20, 640) if quick else max(args.clients * 200, 6400),
            kafka_messages=args.kafka_messages or (10_000 if quick else 100_000),
            expired_rooms=args.expired_rooms or (1000 if quick else 10_000),
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--messages", type=int, help="inbound messages in the ingest burst (default 20000; quick 1000)")
    p.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients / DB connections (default 32)")
    p.add_argument("--contacts", type=int, help="distinct contacts (rooms) in the burst (default 2000; quick 200)")
    p.add_argument("--samples", type=int, help="accepted→visible latency samples (default 200; quick 20)")
    p.add_argument("--large-room", type=int, help="events in the large room (default 10000; quick 1000)")
    p.add_argument("--commands", type=int, help="staff commands timed per room (default 200; quick 40)")
    p.add_argument("--kafka-messages", type=int, help="messages for the raw Kafka baseline (default 100000; quick 10000)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="load generator: a minimal asyncio HTTP/1.1 keep-alive client (default; ~7x less CPU"
                        " per request) or httpx.AsyncClient (one per connection)")
    p.add_argument("--counter-read", choices=("sql", "http"), default="sql",
                   help="how (b) reads the counter: the counters table (default) or GET /v1/inbox/counters")
    p.add_argument("--expired-rooms", type=int, help="rooms for (e) resolve all expired (default 10000; quick 1000)")
    p.add_argument("--freshness", action="store_true",
                   help="also run (g): inbound 202 → event on open GET /v1/stream clients, and API memory per stream")
    p.add_argument("--freshness-only", action="store_true", help="run only (g) (implies --freshness)")
    p.add_argument("--streams", type=int, help="(g) open streams (default 200; quick 50)")
    p.add_argument("--stream-rate", type=float, help="(g) inbound messages per second (default 500; quick 100)")
    p.add_argument("--stream-seconds", type=float, help="(g) seconds of steady inbound load (default 20; quick 5)")
    p.add_argument("--stream-mix", choices=("mix", "all", "both"), default="both",
                   help="(g) who holds the streams: mix = a tenth admins/supervisors, the rest agents with 80%% of"
                        " the rooms assigned to them (realistic); all = every stream an admin (worst case: every"
                        " message on every stream); both (default)")
    p.add_argument("--only", choices=("ingest", "projections"),
                   help="ingest: only the trivial-endpoint baseline and (a) through `inbox api` (no relay,"
                        " worker or other phases): API CPU per message and msg/s vs the baseline;"
                        " projections: the raw Kafka baseline, a data set of --messages over --contacts rooms"
                        " built through the real domain (bench.dataset), then (f) one worker catching up on it"
                        " and (c) replay, compared with what the worker projected")
    p.add_argument("--api-processes", type=int, choices=(1, 2), default=1,
                   help="2: after (a), start a second `inbox api` on the same port (SO_REUSEPORT) and run"
                        " the burst again over new connections; both figures are printed. With (g): its"
                        " scenarios run with two API processes sharing the streams and the POSTs (memory"
                        " per stream is measured before the second one starts)")
    p.add_argument("--scale-out", action="store_true",
                   help="only the scale-out comparison (s): ingest through 1 then 2 `inbox api` processes (relay"
                        " running, no worker), 2 APIs on 20 shared rooms, then 1 then 2 `inbox worker` processes"
                        " catching up on the run's events on a topic of INBOX_TOPIC_PARTITIONS partitions;"
                        " printed side by side with ratios")
    p.add_argument("--profile", type=Path,
                   help="with --only ingest: record the API process with py-spy during the single-process burst;"
                        " with (g): during its first scenario"
                        " (raw collapsed stacks to this path; py-spy must be on PATH or next to python)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (< 60 s)")
    p.add_argument("--json", type=Path, help="also write every figure as JSON to this path")
    p.add_argument("--keep-logs", action="store_true", help="keep the work directory (process logs) at the end")
    return p.parse_args(argv)


def say(text: str = "") -> None:
    print(text, flush=True)


DISTURBED: list[str] = []


def warn_if_disturbed(usage: object, phase: str) -> None:
    """Say so when processes that are not part of the benchmark used real CPU meanwhile."""
    if usage is None:
        return
    d = usage.as_dict()  # type: ignore[attr-defined]
    other = d["cores_by_group"].get("other", 0.0)
    if other > 0.25:
        say(f"  WARNING: unrelated processes used {other:.2f} cores meanwhile; these figures are disturbed")
        DISTURBED.append(f"{phase}: {other:.2f} cores")


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


# ---- phases ---------------------------------------------------------------------------------
def run_baselines(infra: Infra, sizes: Sizes, out: dict[str, Any]) -> None:
    say("== baselines (raw PostgreSQL and Kafka clients, same servers) ==")
    cpu = CpuMeter(standard_groups(infra, None))
    cpu.start()
    one = insert_baseline(infra, transactions=sizes.inserts_single, connections=1)
    say(f"  PG single-row INSERT+COMMIT, 1 connection:  {one.tx_per_s:,.0f} tx/s  ({fmt_ms(one.latency)})")
    many = insert_baseline(infra, transactions=sizes.inserts_concurrent, connections=sizes.clients)
    say(f"  PG single-row INSERT+COMMIT, {sizes.clients} connections: {many.tx_per_s:,.0f} tx/s  ({fmt_ms(many.latency)})")
    temp = insert_baseline(infra, transactions=sizes.inserts_single, connections=1, temp=True)
    say(f"  (info) same into a TEMP table (no WAL flush at commit), 1 connection: {temp.tx_per_s:,.0f} tx/s")
    kafka = asyncio.run(kafka_baseline(infra, messages=sizes.kafka_messages))
    say(
        f"  Kafka: produced {kafka.messages:,} x {kafka.value_bytes} B values in {kafka.produce_seconds:.2f}s"
        f" ({kafka.produce_per_s:,.0f} msg/s, acks=all); consumed them (manual assignment, {kafka.partitions}"
        f" partitions) in {kafka.consume_seconds:.2f}s = {kafka.consume_per_s:,.0f} msg/s"
    )
    latency = asyncio.run(kafka_latency(infra, samples=min(sizes.samples, 100)))
    say(f"  Kafka produce (acks=all) → idle consumer has it: {fmt_ms(latency)}")
    usage = cpu.stop()
    if usage:
        say(f"  CPU: {usage.describe()}")
        warn_if_disturbed(usage, "baselines")
    out["baselines"] = {
        "pg_insert_1conn": one.as_dict(), "pg_insert_concurrent": many.as_dict(), "pg_insert_temp_1conn": temp.as_dict(),
        "kafka": kafka.as_dict(), "kafka_produce_to_consume": latency,
    }


def run_http_baseline(sizes: Sizes, tag: str, out: dict[str, Any]) -> None:
    say(
        f"== baseline: a trivial FastAPI endpoint parsing the same JSON bodies ({sizes.messages:,} POSTs,"
        f" {sizes.clients} keep-alive connections, same uvicorn settings) =="
    )
    b = trivial_http_baseline(
        "/v1/inbound-messages", message_bodies(sizes.messages, sizes.contacts, f"{tag}t"), clients=sizes.clients,
    )
    per = b.cpu_ms_per_request
    say(
        f"  {b.requests:,} POSTs in {b.seconds:.2f}s = {b.req_per_s:,.0f} req/s; {fmt_ms(b.latency)};"
        f" server CPU {'n/a' if per is None else f'{per:.3f} ms'} per request"
    )
    out.setdefault("baselines", {})["trivial_http"] = b.as_dict()


def run_ingest_api(
    infra: Infra, pipeline: Pipeline, sizes: Sizes, ingest_token: str, tag: str, client: str, key: str,
    out: dict[str, Any], *, affinity: bool = False,
) -> None:
    """A burst through the running `inbox api` process(es): msg/s and API CPU per message (no projection wait)."""
    apis = [name for name in pipeline.processes.running if name.startswith("api")]
    say(
        f"== ({key}) ingest through {len(apis)} `inbox api` process(es): {sizes.messages:,} messages over"
        f" {sizes.contacts:,} contacts, {sizes.clients} keep-alive connections"
        f"{', each contact on one connection (room affinity)' if affinity else ''} =="
    )
    with infra.connect() as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM inbox_events").fetchone()
    nid0 = int(row[0]) if row else 0
    cpu = CpuMeter(standard_groups(infra, pipeline))
    threads0 = _thread_cpu(pipeline.pid("api"))
    cpu.start()
    res = ingest_burst(pipeline.base_url, ingest_token, messages=sizes.messages, clients=sizes.clients,
                       contacts=sizes.contacts, tag=tag, client=client, affinity=affinity)
    usage = cpu.stop()
    threads = _thread_cpu(pipeline.pid("api"))
    store_events, store_txs = event_store_transactions(infra, nid0)
    http = summary_ms(res.latencies)
    say(
        f"  accepted {res.ok:,} of {res.messages:,} in {res.seconds:.2f}s = {res.msg_per_s:,.0f} msg/s"
        + (f"; errors {res.errors}" if res.errors else "")
    )
    say(f"  HTTP latency: {fmt_ms(http)}")
    say(f"  event store: {store_events:,} events in {store_txs:,} transactions")
    api_ms = math.nan
    by_api: dict[str, float] = {}
    if usage:
        say(f"  CPU: {usage.describe()}")
        warn_if_disturbed(usage, f"({key}) ingest")
        by_api = {name: usage.by_group.get(name, 0.0) for name in apis}
        api_ms = 1000 * sum(by_api.values()) / res.ok if res.ok else math.nan
        say(f"  API CPU per message: {api_ms:.3f} ms ({', '.join(f'{n} {v:.2f}s' for n, v in by_api.items())})")
        if threads and res.ok:
            used = sorted(((v - threads0.get(t, 0.0), t) for t, v in threads.items()), reverse=True)
            main_tid = pipeline.pid("api")
            say("  `api` CPU per message by thread: " + ", ".join(
                f"{'event loop' if t == main_tid else f'thread {t}'} {1000 * v / res.ok:.3f} ms" for v, t in used[:3]))
    out[key] = {
        "api_processes": len(apis), "affinity": affinity, "messages": res.messages, "accepted": res.ok, "errors": res.errors,
        "clients": res.clients, "contacts": res.contacts, "seconds": res.seconds, "msg_per_s": res.msg_per_s,
        "http_latency": http, "event_store_events": store_events, "event_store_transactions": store_txs,
        "api_cpu_ms_per_message": api_ms, "api_cpu_s": by_api, "cpu": usage.as_dict() if usage else None,
    }


def _thread_cpu(pid: int | None) -> dict[int, float]:
    """CPU seconds of each thread of a process (empty without psutil)."""
    try:
        import psutil

        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except Exception:  # no psutil, process gone: no per-thread figures
        return {}


def start_second_api(pipeline: Pipeline) -> None:
    say("== starting a second `inbox api` on the same port (SO_REUSEPORT) ==")
    pipeline.start("api", name="api2")
    pid = pipeline.pid("api2")
    # /healthz may be answered by either process: wait until the second one listens.
    pipeline.wait_until(lambda: _listening(pid), timeout=60, what="the second API to listen", interval=0.2)


def _listening(pid: int | None) -> bool:
    try:
        import psutil
    except ImportError:
        time.sleep(5)
        return True
    try:
        return any(c.status == psutil.CONN_LISTEN for c in psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.Error:
        return False


def start_pipeline(infra: Infra, pipeline: Pipeline, out: dict[str, Any]) -> None:
    say("== starting the pipeline: worker, relay, api ==")
    t0 = time.perf_counter()
    pipeline.start("worker")
    pipeline.wait_until(lambda: "projector" in pipeline.heartbeat_kinds(), timeout=90, what="worker heartbeat")
    t_worker = time.perf_counter() - t0
    pipeline.start("relay")
    pipeline.wait_until(lambda: "relay" in pipeline.heartbeat_kinds(), timeout=60, what="relay heartbeat")
    pipeline.start("api")
    pipeline.wait_until(pipeline.api_up, timeout=60, what="API /healthz", interval=0.2)
    say(f"  worker heartbeat after {t_worker:.1f}s; relay and API up after {time.perf_counter() - t0:.1f}s")
    out["startup_s"] = time.perf_counter() - t0


def wait_projected(infra: Infra, pipeline: Pipeline, *, timeout: float, what: str) -> None:
    with infra.connect() as conn:
        pipeline.wait_until(
            lambda: projected_total(conn) == room_event_total(infra), timeout=timeout, interval=0.1, what=what
        )


def run_ingest(
    infra: Infra, pipeline: Pipeline, sizes: Sizes, ingest_token: str, tag: str, client: str, out: dict[str, Any]
) -> None:
    say(
        f"== (a) ingest: {sizes.messages:,} messages over {sizes.contacts:,} contacts,"
        f" {sizes.clients} concurrent keep-alive connections ({client} client) =="
    )
    _, base_events = room_event_total(infra)
    with infra.connect() as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM inbox_events").fetchone()
    nid0 = int(row[0]) if row else 0
    monitor = ProgressMonitor(infra, interval=0.05)
    monitor.start()
    cpu = CpuMeter(standard_groups(infra, pipeline))
    cpu.start()
    res = ingest_burst(
        pipeline.base_url, ingest_token, messages=sizes.messages, clients=sizes.clients, contacts=sizes.contacts,
        tag=tag, client=client,
    )
    cpu_burst = cpu.stop()
    cpu.start()
    burst_end = time.perf_counter()
    _, target = room_event_total(infra)
    with infra.connect() as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM inbox_events").fetchone()
    nid_end = int(row[0]) if row else 0
    try:
        pipeline.wait_until(
            lambda: bool(monitor.samples) and monitor.samples[-1][1] >= target, timeout=900, interval=0.05,
            what=f"projections to reach {target} room events",
        )
    finally:
        monitor.stop()
    cpu_drain = cpu.stop()
    if monitor.error:
        raise monitor.error
    t_caught = monitor.first_time(lambda s: s[1] >= target) or time.perf_counter()
    t_relay = monitor.first_time(lambda s: s[2] >= nid_end) or t_caught
    events = target - base_events
    store_events, store_txs = event_store_transactions(infra, nid0)
    http = summary_ms(res.latencies)
    projection_s = t_caught - res.first_accepted
    relay_s = t_relay - res.first_accepted
    say(
        f"  accepted {res.ok:,} of {res.messages:,} in {res.seconds:.2f}s = {res.msg_per_s:,.0f} msg/s"
        + (f"; errors {res.errors}" if res.errors else "")
    )
    say(f"  HTTP latency: {fmt_ms(http)}")
    say(
        f"  event store: {store_events:,} events in {store_txs:,} transactions"
        f" (group commit: {res.ok / store_txs if store_txs else math.nan:.1f} messages per transaction)"
    )
    say(
        f"  relay: all {events:,} room events published {relay_s:.2f}s after the first 202"
        f" ({rate(events, relay_s):,.0f} events/s)"
    )
    say(
        f"  projections: caught up {projection_s:.2f}s after the first 202 = {rate(events, projection_s):,.0f} events/s"
        f" ({t_caught - res.last_accepted:+.2f}s after the last 202; progress sampled every 50 ms)"
    )
    if t_caught - res.last_accepted < 1.0:
        say("    (the worker kept up with ingest, so this rate is bounded by the ingest rate, not by the worker)")
    per_message: dict[str, float] = {}
    if cpu_burst:
        say(f"  CPU during the burst: {cpu_burst.describe()}")
        warn_if_disturbed(cpu_burst, "(a) ingest burst")
        drain = cpu_drain.by_group if cpu_drain else {}
        for group, count in (("api", res.ok), ("bench", res.ok), ("postgres", res.ok), ("relay", events),
                             ("worker", events)):
            seconds = cpu_burst.by_group.get(group, 0.0) + drain.get(group, 0.0)
            per_message[group] = 1000 * seconds / count if count else math.nan
        say(
            f"  CPU per message: api {per_message['api']:.2f} ms, load generator {per_message['bench']:.2f} ms,"
            f" postgres {per_message['postgres']:.2f} ms; per room event: relay {per_message['relay']:.2f} ms,"
            f" worker {per_message['worker']:.2f} ms"
        )
    if cpu_drain and cpu_drain.wall_s > 0.5:
        say(f"  CPU while draining after the burst ({cpu_drain.wall_s:.1f}s): {cpu_drain.describe()}")
    out["ingest"] = {
        "messages": res.messages, "accepted": res.ok, "errors": res.errors, "clients": res.clients,
        "contacts": res.contacts, "client": client, "seconds": res.seconds, "msg_per_s": res.msg_per_s, "http_latency": http,
        "event_store_events": store_events, "event_store_transactions": store_txs,
        "messages_per_transaction": res.ok / store_txs if store_txs else None,
        "room_events": events, "relay_seconds": relay_s, "relay_events_per_s": rate(events, relay_s),
        "projection_seconds": projection_s, "projection_events_per_s": rate(events, projection_s),
        "projection_lag_after_burst_s": t_caught - res.last_accepted,
        "burst_end_to_caught_up_s": t_caught - burst_end,
        "cpu_burst": cpu_burst.as_dict() if cpu_burst else None,
        "cpu_ms_per_message": per_message,
        "cpu_drain": cpu_drain.as_dict() if cpu_drain else None,
    }


def run_visibility(
    infra: Infra, pipeline: Pipeline, sizes: Sizes, ingest_token: str, admin_token: str, tag: str, read: str,
    out: dict[str, Any],
) -> None:
    how = "the counters table (SQL, one round trip)" if read == "sql" else "GET /v1/inbox/counters"
    say(f"== (b) accepted → counter-visible: {sizes.samples} new contacts, one at a time, polling {how} ==")
    cpu = CpuMeter(standard_groups(infra, pipeline))
    cpu.start()
    v = visibility_latency(
        infra, pipeline.base_url, ingest_token, admin_token, samples=sizes.samples, tag=tag, read=read,
    )
    usage = cpu.stop()
    s = summarize_visibility(v)
    say(f"  202 → unassigned counter +1: {fmt_ms(s['visible'])}")
    say(f"  202 → relay position covers the event: {fmt_ms(s['published'])}")
    say(f"  single POST (idle system): {fmt_ms(s['accept'])}")
    say(
        f"  poll period: mean {s['poll_period']['mean_ms']:.2f} ms, p50 {s['poll_period']['p50_ms']:.2f} ms"
        f" (sleep 2 ms + read){'; TIMEOUTS: ' + str(v.timeouts) if v.timeouts else ''}"
    )
    if usage:
        say(f"  CPU: {usage.describe()}")
        warn_if_disturbed(usage, "(b) visibility")
    out["visibility"] = s


def run_freshness_phase(
    infra: Infra, pipeline: Pipeline, args: argparse.Namespace, ingest_token: str, tag: str, out: dict[str, Any]
) -> None:
    streams = args.streams or (50 if args.quick else 200)
    rate_ = args.stream_rate or (100.0 if args.quick else 500.0)
    seconds = args.stream_seconds or (5.0 if args.quick else 20.0)
    contacts = 500
    scenarios = ["mix", "all"] if args.stream_mix == "both" else [args.stream_mix]
    say(f"== (g) live-update freshness: {streams} open streams, {rate_:,.0f} inbound msg/s for {seconds:.0f}s,"
        f" {contacts} rooms; scenarios: {', '.join(scenarios)} ==")
    secret = infra.settings.jwt_secret
    assert secret
    def api_pids() -> list[int]:  # api, and api2 with --api-processes 2
        return [pid for name in list(pipeline.processes.running) if name.startswith("api")
                and (pid := pipeline.pid(name)) is not None]

    admin = mint_token(secret, org=ORG, user="bench-setup-admin", role="admin")
    mix = viewers("mix", streams)
    agents = [v.user for v in mix if not v.sees_all]

    def wait_assigned(n: int) -> None:
        def done() -> bool:
            with infra.connect() as conn:
                row = conn.execute("SELECT count(*) FROM rooms WHERE assignee LIKE 'bench-agent-%'").fetchone()
            return bool(row and row[0] >= n)
        pipeline.wait_until(done, timeout=180, what=f"{n} assigned rooms to be projected", interval=0.2)

    # Memory first, on idle streams, before the setup and the load grow the heap (its free space
    # would then absorb new streams and hide their cost).
    before_kb, with_kb = memory_per_stream(
        pipeline.base_url, [mint_token(secret, org=ORG, user=v.user, role=v.role) for v in mix], api_pids())
    memory = {"streams": streams, "api_rss_before_mb": before_kb / 1024, "api_rss_with_streams_mb": with_kb / 1024,
              "api_kb_per_stream": (with_kb - before_kb) / streams}
    say(f"  API memory: {memory['api_rss_before_mb']:.1f} MB before, {memory['api_rss_with_streams_mb']:.1f} MB with"
        f" {streams} idle open streams = {memory['api_kb_per_stream']:.1f} KB per open stream (RSS delta / streams)")
    t0 = time.perf_counter()
    assignee = setup_rooms(pipeline.base_url, ingest_token, admin, tag=f"{tag}s", contacts=contacts,
                           agents=agents if "mix" in scenarios else [], wait_assigned=wait_assigned)
    assigned = sum(a is not None for a in assignee.values())
    say(f"  setup: {contacts} rooms, {assigned} assigned, in {time.perf_counter() - t0:.1f}s")
    if args.api_processes == 2 and pipeline.pid("api2") is None:
        start_second_api(pipeline)  # after the memory figure: one process's cost per stream
    pids = api_pids()
    say(f"  {len(pids)} API process(es) share the port: streams and POSTs go to either (the kernel picks)")

    def logged_at(prefix: str) -> dict[int, float]:
        with infra.connect() as conn:
            rows = conn.execute(
                "SELECT m.channel_message_id, extract(epoch FROM min(c.created_at)) FROM room_changes c"
                " JOIN messages m ON m.id = ANY(c.message_ids) WHERE m.channel_message_id LIKE %s"
                " GROUP BY m.channel_message_id", (prefix + "%",)).fetchall()
        return {int(mid[len(prefix):]): float(at) for mid, at in rows}

    def meter(readers_pid: int) -> CpuMeter:
        groups = standard_groups(infra, pipeline)
        return CpuMeter(lambda: {**groups(), "readers": [readers_pid]})

    def one(scenario: str, n: int, rate: float, secs: float, run_tag: str) -> dict[str, Any]:
        vs = viewers(scenario, n)
        tokens = [mint_token(secret, org=ORG, user=v.user, role=v.role) for v in vs]
        r = run_scenario(pipeline.base_url, ingest_token, tokens, [v.sees_all for v in vs], assignee,
                         [v.user for v in vs], pids, scenario=scenario,
                         mix=describe_mix(scenario, vs, assigned if scenario != "all" else 0, contacts),
                         rate=rate, seconds=secs, tag=run_tag, meter=meter, logged_at=logged_at)
        return r.summary()

    # Same-run baseline: the same inbound load with one stream: the pipeline's own latency, and the
    # API CPU without fan-out (the scenarios' extra CPU over it, per extra delivery, is the fan-out's).
    base = one("one", 1, rate_, seconds, f"{tag}b")
    say(f"  baseline, 1 admin stream, {base['achieved_rate']:,.0f} msg/s: 202 → message event"
        f" {fmt_latency(base['latency'])}; API CPU {base['api_cpu_ms_per_message']:.3f} ms per inbound message")
    results: dict[str, Any] = {"baseline": base, "memory": memory, "api_processes": len(pids)}
    for scenario in scenarios:
        with profiled(pids[0], args.profile if scenario == scenarios[0] else None):
            s = one(scenario, streams, rate_, seconds, f"{tag}{scenario}")
        results[scenario] = s
        say(f"  -- {scenario}: {s['mix']}")
        say(f"  sent {s['sent']:,} messages at {s['achieved_rate']:,.0f} msg/s (asked {rate_:,.0f})"
            + (f"; errors {s['errors']}" if s["errors"] else ""))
        say(f"  deliveries: {s['deliveries']:,} received of {s['deliveries_expected']:,} expected"
            + (f"; MISSING {s['missing_deliveries']:,}" if s["missing_deliveries"] else "")
            + (f"; UNEXPECTED {s['extra_deliveries']:,}" if s["extra_deliveries"] else ""))
        say(f"  202 → message event on a stream: {fmt_latency(s['latency'])};"
            f" p99 ÷ baseline p50 = {ratio(s['latency']['p99_ms'], base['latency']['p50_ms']):.1f}x"
            f" (target p99 < 100 ms)")
        say(f"  POST → 202: {fmt_latency(s['post_to_202'])}")
        say(f"  202 → its change-log row's transaction start (negative: the 202 left the API after the worker"
            f" began projecting it): {fmt_latency(s['to_change_log'])}")
        # NaN when the scenario delivers no more per message than the baseline (e.g. --streams 1)
        extra = s["deliveries"] / s["sent"] - base["deliveries"] / base["sent"] if s["sent"] and base["sent"] else 0.0
        s["api_fanout_us_per_delivery"] = 1e6 * (
            s["api_cpu_s"] / s["sent"] - base["api_cpu_s"] / base["sent"]) / extra if extra else math.nan
        say(f"  API CPU: {s['api_cpu_s']:.2f} s = {s['api_cpu_ms_per_message']:.3f} ms per inbound message"
            f" ({base['api_cpu_ms_per_message']:.3f} with one stream), {s['api_cpu_us_per_delivery']:.1f} µs per"
            f" delivered event; fan-out alone: {s['api_fanout_us_per_delivery']:.1f} µs per extra delivered event")
        if s["cpu"]:
            cores = s["cpu"]["cores_by_group"]
            say("  CPU: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cores.items(), key=lambda kv: -kv[1]))
                + f" (cores; machine {s['cpu']['machine_busy_pct']:.0f}% busy)")
            if cores.get("other", 0.0) > 0.25:
                say(f"  WARNING: unrelated processes used {cores['other']:.2f} cores meanwhile; these figures are disturbed")
                DISTURBED.append(f"(g) freshness {scenario}: {cores['other']:.2f} cores")
    out["freshness"] = results


def fmt_latency(s: dict[str, float]) -> str:
    return (f"p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms"
            f" (n={s['n']:,})")


def run_replay_phase(infra: Infra, pipeline: Pipeline, out: dict[str, Any]) -> None:
    say("== (c) replay ==")
    wait_projected(infra, pipeline, timeout=300, what="projections to catch up before replay")
    cpu = CpuMeter(standard_groups(infra, pipeline))
    cpu.start()
    r = run_replay(infra)
    usage = cpu.stop()
    verdict = "OK" if r.ok else "MISMATCH"
    per = r.cpu_ms_per_event
    say(
        f"  replayed {r.stats.events:,} events into {r.stats.rooms:,} rooms in {r.stats.seconds:.2f}s"
        f" = {r.stats.events_per_s:,.0f} events/s; replay CPU {'n/a' if per is None else f'{per:.3f} ms'} per event"
        f" (baseline: the same log read raw, no decoding, {r.store_read_rows_per_s or 0:,.0f} rows/s)"
    )
    say(
        f"  replayed projections vs live: {verdict} ({r.rooms:,} rooms rows, {r.counter_rows} non-zero counter rows,"
        f" {r.messages:,} messages compared)"
    )
    for d in r.differences:
        say(f"    {d}")
    if usage:
        say(f"  CPU: {usage.describe()}")
        warn_if_disturbed(usage, "(c) replay")
    out["replay"] = r.as_dict()


def run_worker_phase(infra: Infra, out: dict[str, Any], keep: Any = None) -> None:
    say("== (f) one projection worker catching up on a pre-filled topic (the run's whole event store) ==")
    w = worker_catch_up(infra, keep=keep)
    per = w.cpu_ms_per_event
    say(
        f"  projected {w.events:,} events into {w.rooms:,} rooms in {w.seconds:.2f}s = {w.events_per_s:,.0f} events/s;"
        f" worker CPU {'n/a' if per is None else f'{per:.3f} ms'} per event"
        f"{'' if w.postgres_cpu_s is None else f'; PostgreSQL {w.postgres_cpu_s / w.seconds:.2f} cores'}"
    )
    out["worker_catch_up"] = w.as_dict()


def run_expiry_phase(infra: Infra, pipeline: Pipeline, sizes: Sizes, ingest_token: str, out: dict[str, Any]) -> None:
    say(f"== (e) resolve all expired on {sizes.expired_rooms:,} rooms while one client reads and writes ==")
    write_expired_rooms(infra, ORG, sizes.expired_rooms)
    wait_projected(infra, pipeline, timeout=600, what="the expired rooms to be projected")
    assert infra.settings.jwt_secret
    tokens = {role: mint_token(infra.settings.jwt_secret, org=ORG, user=f"bench-{role}", role=role)
              for role in ("supervisor", "admin")}
    cpu = CpuMeter(standard_groups(infra, pipeline))
    cpu.start()
    f = resolve_expired_under_load(pipeline.base_url, rooms=sizes.expired_rooms, spv_token=tokens["supervisor"],
                                   admin_token=tokens["admin"], ingest_token=ingest_token)
    usage = cpu.stop()
    e = f.as_dict()
    say(f"  answer {f.answer} after {f.seconds:.1f}s = {e['rooms_per_s']:,.0f} rooms/s")
    say(f"  reads meanwhile: {fmt_ms(e['reads'])}")
    say(f"  inbound POSTs meanwhile: {fmt_ms(e['writes'])}")
    if usage:
        say(f"  CPU: {usage.describe()}")
        warn_if_disturbed(usage, "(e) resolve expired")
    out["expiry"] = e


def run_command_phase(infra: Infra, sizes: Sizes, out: dict[str, Any]) -> None:
    say(
        f"== (d) staff commands in-process (RoomCommands), rooms of {sizes.small_room} and {sizes.large_room:,} events;"
        " pipeline processes stopped =="
    )
    cpu = CpuMeter(standard_groups(infra, None))
    cpu.start()
    figs = command_bench(
        infra, small_events=sizes.small_room, large_events=sizes.large_room, commands_per_room=sizes.commands,
        cold_repeats=sizes.cold_loads, progress=say,
    )
    usage = cpu.stop()
    for label, f in figs.items():
        say(
            f"  {label} room ({f.build.events:,} events → {f.version_after:,} after the commands):"
            f" {f.command_count} assign/reply: {fmt_ms(f.commands)}"
        )
        say(f"    cold load, new InboxApplication, at v{f.build.events:,}: {fmt_ms(f.cold_before)}")
        say(f"    cold load, new InboxApplication, at v{f.version_after:,}: {fmt_ms(f.cold_after)}")
        say(f"    cache-miss load on a warm application at v{f.build.events:,}: {fmt_ms(f.reconstruct_before)}")
        say(f"    cache-miss load on a warm application at v{f.version_after:,}: {fmt_ms(f.reconstruct_after)}")
        say(
            f"    for comparison, reading + folding all {f.version_after:,} events without a snapshot:"
            f" p50 {f.full_fold['p50_ms']:.1f} ms   (snapshots: {f.snapshots}, latest at v{f.latest_snapshot})"
        )
    if usage:
        say(f"  CPU: {usage.describe()}")
        warn_if_disturbed(usage, "(d) commands")
    out["commands"] = {label: f.as_dict() for label, f in figs.items()}


# ---- summary --------------------------------------------------------------------------------
def summary_rows(out: dict[str, Any], sizes: Sizes) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []

    def add(label: str, value: float | str | None, unit: str, fmt: str = ",.0f") -> None:
        if value is None:
            text = "-"
        elif isinstance(value, str):
            text = value
        elif math.isnan(value):
            text = "n/a"
        else:
            text = format(value, fmt)
        rows.append((label, text, unit))

    b = out.get("baselines", {})
    if b and "pg_insert_concurrent" in b:
        add("baseline: PG single-row INSERT+COMMIT, 1 conn", b["pg_insert_1conn"]["tx_per_s"], "tx/s")
        add(f"baseline: PG single-row INSERT+COMMIT, {sizes.clients} conns", b["pg_insert_concurrent"]["tx_per_s"], "tx/s")
        add("baseline: Kafka raw produce (acks=all)", b["kafka"]["produce_msg_per_s"], "msg/s")
        add("baseline: Kafka raw consume (aiokafka)", b["kafka"]["consume_msg_per_s"], "msg/s")
        add("baseline: Kafka produce → consume latency p50", b["kafka_produce_to_consume"]["p50_ms"], "ms", ".1f")
    if b and "pg_insert_concurrent" not in b and "kafka" in b:  # --only projections, --scale-out
        add("baseline: Kafka raw consume (aiokafka)", b["kafka"]["consume_msg_per_s"], "msg/s")
        if "pg_insert_1conn" in b:
            add("baseline: PG single-row INSERT+COMMIT, 1 conn", b["pg_insert_1conn"]["tx_per_s"], "tx/s")
    t = b.get("trivial_http") if b else None
    if t:
        add("baseline: trivial FastAPI endpoint, same bodies", t["req_per_s"], "req/s")
        add("baseline: trivial FastAPI endpoint CPU per request", t["server_cpu_ms_per_request"], "ms", ".3f")
    for key in ("ingest_api", "ingest_api2"):
        i = out.get(key)
        if i:
            add(f"({key}) ingest, {i['api_processes']} API process(es)", i["msg_per_s"], "msg/s")
            add(f"({key}) API CPU per message (target ≤ 0.6)", i["api_cpu_ms_per_message"], "ms", ".3f")
    for k, what in ((1, "1 API"), (2, "2 APIs")):
        i = out.get(f"scale_ingest_{k}")
        if i:
            add(f"(s) ingest, {what} (relay running, no worker)", i["msg_per_s"], "msg/s")
            add(f"(s) API CPU per message, {what}", i["api_cpu_ms_per_message"], "ms", ".3f")
    i = out.get("scale_ingest_2_affinity")
    if i:
        add("(s) ingest, 2 APIs, room affinity", i["msg_per_s"], "msg/s")
        add("(s) API CPU per message, 2 APIs, room affinity", i["api_cpu_ms_per_message"], "ms", ".3f")
    i = out.get("scale_ingest_2_shared")
    if i:
        add(f"(s) 2 APIs on {i['contacts']} shared rooms: messages not accepted", i["messages"] - i["accepted"], "",
            ".0f")
    for k in (1, 2):
        w = out.get(f"scale_projection_{k}")
        if w:
            add(f"(s) {k} worker(s) on {w['partitions']} partitions, until lag 0", w["events_per_s"], "events/s")
            add(f"(s) worker CPU per event, {k} worker(s)", w["worker_cpu_ms_per_event"], "ms", ".3f")
    a = out.get("ingest")
    if a:
        add("(a) ingest through HTTP", a["msg_per_s"], "msg/s")
        add("(a) ingest HTTP latency p50", a["http_latency"]["p50_ms"], "ms", ".1f")
        add("(a) ingest HTTP latency p99", a["http_latency"]["p99_ms"], "ms", ".1f")
        add("(a) group commit", a["messages_per_transaction"], "msg/tx", ".1f")
        add("(a) projection throughput during the burst", a["projection_events_per_s"], "events/s")
        add("(a) projection lag after the last 202", a["projection_lag_after_burst_s"], "s", ".2f")
        cpu = (a.get("cpu_burst") or {}).get("cores_by_group", {})
        if cpu:
            add("(a) CPU during the burst: api process", cpu.get("api"), "cores", ".2f")
            add("(a) CPU during the burst: load generator", cpu.get("bench"), "cores", ".2f")
            add("(a) CPU during the burst: unrelated processes", cpu.get("other"), "cores", ".2f")
        per = a.get("cpu_ms_per_message") or {}
        if per:
            add("(a) API CPU per ingested message", per.get("api"), "ms", ".2f")
            add("(a) worker CPU per projected event", per.get("worker"), "ms", ".2f")
    v = out.get("visibility")
    if v:
        add(f"(b) 202 → counter visible p50 ({v['read']} poll)", v["visible"]["p50_ms"], "ms", ".1f")
        add(f"(b) 202 → counter visible p99 ({v['read']} poll)", v["visible"]["p99_ms"], "ms", ".1f")
        add("(b) poll period (resolution)", v["poll_period"]["mean_ms"], "ms", ".1f")
    r = out.get("replay")
    if r:
        add("(c) replay (target ≥ 50,000 on ≥ 1 M events)", r["events_per_s"], "events/s")
        add("(c) replay CPU per event", r.get("replay_cpu_ms_per_event"), "ms", ".3f")
        add("(c) baseline: event store read raw, no decoding", r.get("store_read_rows_per_s"), "rows/s")
        add("(c) replayed == live projections", "OK" if r["equal_to_live"] else "MISMATCH", "")
    w = out.get("worker_catch_up")
    if w:
        add("(f) one worker, pre-filled topic", w["events_per_s"], "events/s")
        add("(f) worker CPU per event (target ≤ 0.1)", w["worker_cpu_ms_per_event"], "ms", ".3f")
    c = out.get("commands")
    if c:
        for label in ("small", "large"):
            f = c[label]
            n = f["build"]["events"]
            add(f"(d) command p50, room of {n:,} events", f["commands"]["p50_ms"], "ms", ".2f")
            add(f"(d) command p99, room of {n:,} events", f["commands"]["p99_ms"], "ms", ".2f")
        for label in ("small", "large"):
            f = c[label]
            n = f["build"]["events"]
            add(f"(d) cold load p50 (new app), room of {n:,} events", f["cold_load_before_commands"]["p50_ms"], "ms", ".2f")
        for label in ("small", "large"):
            f = c[label]
            n = f["build"]["events"]
            add(f"(d) cache-miss load p50 (warm app), {n:,} events", f["reconstruct_before_commands"]["p50_ms"], "ms", ".2f")
    e = out.get("expiry")
    if e:
        add(f"(e) resolve all expired, {e['rooms']:,} rooms", e["rooms_per_s"], "rooms/s")
        add("(e) reads during it p99", e["reads"]["p99_ms"], "ms", ".1f")
        add("(e) inbound POSTs during it p99", e["writes"]["p99_ms"], "ms", ".1f")
    fr = out.get("freshness")
    if fr:
        add("(g) baseline: 202 → event p50, 1 stream, same load", fr["baseline"]["latency"]["p50_ms"], "ms", ".1f")
        add("(g) baseline: 202 → event p99, 1 stream, same load", fr["baseline"]["latency"]["p99_ms"], "ms", ".1f")
        add("(g) baseline: API CPU per inbound message, 1 stream", fr["baseline"]["api_cpu_ms_per_message"], "ms",
            ".3f")
        add(f"(g) API memory per open stream ({fr['memory']['streams']} idle)", fr["memory"]["api_kb_per_stream"],
            "KB", ".1f")
        for scenario in ("mix", "all"):
            f = fr.get(scenario)
            if not f:
                continue
            what = f"{scenario}, {f['streams']} streams, {f['achieved_rate']:.0f} msg/s"
            add(f"(g) 202 → stream event p50 ({what})", f["latency"]["p50_ms"], "ms", ".1f")
            add(f"(g) 202 → stream event p99 ({what})", f["latency"]["p99_ms"], "ms", ".1f")
            add(f"(g) deliveries missing ({scenario})", f["missing_deliveries"], "", ".0f")
            add(f"(g) API CPU per inbound message ({scenario})", f["api_cpu_ms_per_message"], "ms", ".3f")
            add(f"(g) API CPU per delivered event ({scenario})", f["api_cpu_us_per_delivery"], "µs", ".1f")
            add(f"(g) API fan-out CPU per extra delivery ({scenario})", f["api_fanout_us_per_delivery"], "µs", ".1f")
    ratios = out.get("ratios", {})
    for key, (label, _) in RATIO_LABELS.items():
        if key in ratios:
            add(label, ratios[key], "x", ".3f")
    return rows


RATIO_LABELS = {
    "ingest_vs_trivial_http": ("ratio: (a) ingest msg/s ÷ trivial FastAPI req/s (target ≥ 0.35)", None),
    "ingest_api_vs_trivial_http": ("ratio: (ingest_api) msg/s ÷ trivial FastAPI req/s (target ≥ 0.35)", None),
    "ingest_api2_vs_trivial_http": ("ratio: (ingest_api2) 2 APIs msg/s ÷ trivial FastAPI req/s", None),
    "ingest_api2_vs_ingest_api": ("ratio: 2 API processes ÷ 1 API process, msg/s", None),
    "ingest_vs_insert_1conn": ("ratio: ingest msg/s ÷ PG insert tx/s (1 conn)", None),
    "ingest_vs_insert_concurrent": ("ratio: ingest msg/s ÷ PG insert tx/s (C conns)", None),
    "projection_vs_consume": ("ratio: projection events/s ÷ raw consume msg/s", None),
    "replay_vs_consume": ("ratio: replay events/s ÷ raw consume msg/s", None),
    "replay_vs_store_read": ("ratio: replay events/s ÷ raw event-store read rows/s", None),
    "worker_catch_up_vs_consume": ("ratio: (f) one worker events/s ÷ raw consume msg/s", None),
    "scale_ingest_2_vs_1": ("ratio: (s) ingest msg/s, 2 APIs ÷ 1 API", None),
    "scale_ingest_1_vs_trivial_http": ("ratio: (s) ingest msg/s, 1 API ÷ trivial FastAPI req/s", None),
    "scale_projection_2_vs_1": ("ratio: (s) projection events/s, 2 workers ÷ 1 worker", None),
    "scale_projection_1_vs_consume": ("ratio: (s) 1 worker events/s ÷ raw consume msg/s", None),
}


def compute_ratios(out: dict[str, Any]) -> None:
    b, a, r = out.get("baselines"), out.get("ingest"), out.get("replay")
    ratios: dict[str, float] = {}
    t = (b or {}).get("trivial_http")
    if t and a:
        ratios["ingest_vs_trivial_http"] = ratio(a["msg_per_s"], t["req_per_s"])
    for key in ("ingest_api", "ingest_api2"):
        if t and out.get(key):
            ratios[f"{key}_vs_trivial_http"] = ratio(out[key]["msg_per_s"], t["req_per_s"])
    single = out.get("ingest_api") or a
    if single and out.get("ingest_api2"):
        ratios["ingest_api2_vs_ingest_api"] = ratio(out["ingest_api2"]["msg_per_s"], single["msg_per_s"])
    if b and a and "pg_insert_concurrent" in b:
        ratios["ingest_vs_insert_1conn"] = ratio(a["msg_per_s"], b["pg_insert_1conn"]["tx_per_s"])
        ratios["ingest_vs_insert_concurrent"] = ratio(a["msg_per_s"], b["pg_insert_concurrent"]["tx_per_s"])
        ratios["projection_vs_consume"] = ratio(a["projection_events_per_s"], b["kafka"]["consume_msg_per_s"])
    s1, s2 = out.get("scale_ingest_1"), out.get("scale_ingest_2")
    if s1 and s2:
        ratios["scale_ingest_2_vs_1"] = ratio(s2["msg_per_s"], s1["msg_per_s"])
    if s1 and t:
        ratios["scale_ingest_1_vs_trivial_http"] = ratio(s1["msg_per_s"], t["req_per_s"])
    w1, w2 = out.get("scale_projection_1"), out.get("scale_projection_2")
    if w1 and w2:
        ratios["scale_projection_2_vs_1"] = ratio(w2["events_per_s"], w1["events_per_s"])
    if w1 and b and "kafka" in b:
        ratios["scale_projection_1_vs_consume"] = ratio(w1["events_per_s"], b["kafka"]["consume_msg_per_s"])
    w = out.get("worker_catch_up")
    b = b if b and "kafka" in b else None
    if b and w:
        ratios["worker_catch_up_vs_consume"] = ratio(w["events_per_s"], b["kafka"]["consume_msg_per_s"])
    if b and r:
        ratios["replay_vs_consume"] = ratio(r["events_per_s"], b["kafka"]["consume_msg_per_s"])
    if r and r.get("store_read_rows_per_s"):
        ratios["replay_vs_store_read"] = ratio(r["events_per_s"], r["store_read_rows_per_s"])
    out["ratios"] = ratios


def print_summary(out: dict[str, Any], sizes: Sizes) -> None:
    rows = summary_rows(out, sizes)
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    say()
    say("== summary ==")
    say(out["environment"]["line"])
    say(f"{'metric':<{width}}  {'value':>{vwidth}}  unit")
    say(f"{'-' * width}  {'-' * vwidth}  --------")
    for label, value, unit in rows:
        say(f"{label:<{width}}  {value:>{vwidth}}  {unit}")
    if out.get("disturbed"):
        say("NOTE: processes outside the benchmark used CPU during " + "; ".join(out["disturbed"]))


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def _clean_nans(o: Any) -> Any:
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {str(k): _clean_nans(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean_nans(v) for v in o]
    return o


# ---- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.resolve(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    tag = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {"sizes": vars(sizes), "quick": args.quick, "client": args.client}
    failed = False
    with infrastructure(keep_workdir=args.keep_logs) as infra:
        line = (
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, PostgreSQL {infra.server_version}"
            f" ({infra.database}), broker: {infra.broker}; schema {infra.name}"
        )
        out["environment"] = {
            "line": line, "cpus": os.cpu_count(), "python": platform.python_version(),
            "postgres": infra.server_version, "database": infra.database, "broker": infra.broker,
            "schema": infra.name,
        }
        say(f"Inbox benchmark{' (quick)' if args.quick else ''}: {line}")
        settings = infra.settings
        assert settings.jwt_secret
        admin_token = mint_token(settings.jwt_secret, org=ORG, user="bench-admin", role="admin")
        ingest_token = mint_token(settings.jwt_secret, org=ORG, user="bench-integration", role="integration")
        try:
            if args.scale_out:
                run_scale_out(infra, sizes, args, ingest_token, admin_token, tag, out)
            elif args.only == "ingest":
                run_ingest_only(infra, sizes, args, ingest_token, admin_token, tag, out)
            elif args.only == "projections":
                run_projections_only(infra, sizes, out)
            else:
                run_everything(infra, sizes, args, ingest_token, admin_token, tag, out)
        except Exception:
            failed = True
            traceback.print_exc()
    compute_ratios(out)
    out["disturbed"] = DISTURBED
    out["total_seconds"] = time.perf_counter() - started
    if "environment" in out:
        print_summary(out, sizes)
    say(f"total {out['total_seconds']:.0f}s{' (FAILED: see above)' if failed else ''}")
    if args.json:
        args.json.write_text(json.dumps(_clean_nans(out), indent=2, default=_json_default))
        say(f"figures written to {args.json}")
    return 1 if failed else 0


def run_projections_only(infra: Infra, sizes: Sizes, out: dict[str, Any]) -> None:
    """`--only projections`: (f) and (c) on a data set built through the domain, against raw consume."""
    from bench.dataset import build
    from bench.replaying import ProjectionImage, image

    say("== baseline (raw Kafka client, same broker) ==")
    kafka = asyncio.run(kafka_baseline(infra, messages=sizes.kafka_messages))
    say(f"  Kafka: consumed {kafka.messages:,} messages = {kafka.consume_per_s:,.0f} msg/s")
    out["baselines"] = {"kafka": kafka.as_dict()}
    say(f"== data set: {sizes.messages:,} messages over {sizes.contacts:,} rooms through the domain ==")
    built = build(infra.settings, sizes.contacts, sizes.messages)
    say(f"  {built.events:,} events in {built.seconds:.0f}s")
    worker_image: list[ProjectionImage] = []
    run_worker_phase(infra, out, keep=lambda catch_up: worker_image.append(image(catch_up)))
    say("== (c) replay, compared with what the worker projected ==")
    r = run_replay(infra, live=worker_image[0] if worker_image else None)
    per = r.cpu_ms_per_event
    say(
        f"  replayed {r.stats.events:,} events into {r.stats.rooms:,} rooms in {r.stats.seconds:.2f}s"
        f" = {r.stats.events_per_s:,.0f} events/s; replay CPU {'n/a' if per is None else f'{per:.3f} ms'} per event"
        f" (baseline: the same log read raw, no decoding, {r.store_read_rows_per_s or 0:,.0f} rows/s)"
    )
    say(f"  replayed projections vs the worker's: {'OK' if r.ok else 'MISMATCH'}")
    for d in r.differences:
        say(f"    {d}")
    out["replay"] = r.as_dict()


def run_ingest_only(
    infra: Infra, sizes: Sizes, args: argparse.Namespace, ingest_token: str, admin_token: str, tag: str,
    out: dict[str, Any],
) -> None:
    """`--only ingest`: the trivial-endpoint baseline, then bursts through `inbox api` alone (1, then 2 processes)."""
    run_http_baseline(sizes, tag, out)
    pipeline = Pipeline(infra)
    try:
        pipeline.start("api")
        pipeline.wait_until(pipeline.api_up, timeout=60, what="API /healthz", interval=0.2)
        register_account(pipeline.base_url, admin_token)
        ingest_burst(pipeline.base_url, ingest_token, messages=sizes.warmup * 5, clients=sizes.clients,
                     contacts=sizes.contacts, tag=f"{tag}w", client=args.client)
        with profiled(pipeline.pid("api"), args.profile):
            run_ingest_api(infra, pipeline, sizes, ingest_token, tag, args.client, "ingest_api", out)
        if args.api_processes == 2:
            start_second_api(pipeline)
            run_ingest_api(infra, pipeline, sizes, ingest_token, f"{tag}b", args.client, "ingest_api2", out)
    except BaseException:
        for role in list(pipeline.processes.running):
            sys.stderr.write(f"---- last lines of `inbox {role}` ----\n{pipeline.log_tail(role)}\n")
        raise
    finally:
        pipeline.stop_all()


SHARED_ROOMS = 20


def run_scale_out(
    infra: Infra, sizes: Sizes, args: argparse.Namespace, ingest_token: str, admin_token: str, tag: str,
    out: dict[str, Any],
) -> None:
    """`--scale-out`: (s) 1 API + 1 worker beside 2 APIs + 2 workers, each part measured on its own.

    Ingest: bursts through `inbox api` with the relay running (publishing as it would) and no
    worker, so the projection's CPU does not blur the API's; first one process, then a second on
    the same port (SO_REUSEPORT, the kernel spreads the new connections), then the two on a few
    shared rooms (every message must be answered 202). Projection: the run's whole event store,
    produced to a fresh topic of the same partition count, caught up by 1, then 2 workers.
    """
    partitions = infra.settings.topic_partitions
    say(f"== (s) scale-out: 1 API + 1 worker, then 2 APIs + 2 workers; events topic of {partitions} partitions ==")
    run_http_baseline(sizes, tag, out)
    say("== baselines: raw Kafka consume (aiokafka, same broker); single-row INSERT+COMMIT, 1 connection ==")
    kafka = asyncio.run(kafka_baseline(infra, messages=sizes.kafka_messages))
    say(f"  consumed {kafka.messages:,} messages ({kafka.partitions} partitions) = {kafka.consume_per_s:,.0f} msg/s")
    one = insert_baseline(infra, transactions=sizes.inserts_single, connections=1)
    say(f"  PG single-row INSERT+COMMIT, 1 connection: {one.tx_per_s:,.0f} tx/s ({fmt_ms(one.latency)}): the most"
        " transactions per second that one lock held from insert to commit lets through")
    out.setdefault("baselines", {}).update(kafka=kafka.as_dict(), pg_insert_1conn=one.as_dict())
    pipeline = Pipeline(infra)
    try:
        pipeline.start("relay")
        pipeline.wait_until(lambda: "relay" in pipeline.heartbeat_kinds(), timeout=60, what="relay heartbeat")
        pipeline.start("api")
        pipeline.wait_until(pipeline.api_up, timeout=60, what="API /healthz", interval=0.2)
        register_account(pipeline.base_url, admin_token)
        ingest_burst(pipeline.base_url, ingest_token, messages=sizes.warmup * 5, clients=sizes.clients,
                     contacts=sizes.contacts, tag=f"{tag}w", client=args.client)
        run_ingest_api(infra, pipeline, sizes, ingest_token, f"{tag}a", args.client, "scale_ingest_1", out)
        start_second_api(pipeline)
        # The second process looks the account up on its first requests (then it is cached). With
        # room affinity first: a process that keeps finding its cached rooms written by the other
        # stops trusting its cache for a while (InboundCommitter._optimism), which would blur it.
        affinity = args.client == "raw"
        ingest_burst(pipeline.base_url, ingest_token, messages=sizes.warmup * 5, clients=sizes.clients,
                     contacts=sizes.contacts, tag=f"{tag}v", client=args.client, affinity=affinity)
        if affinity:
            run_ingest_api(infra, pipeline, sizes, ingest_token, f"{tag}d", args.client, "scale_ingest_2_affinity",
                           out, affinity=True)
        run_ingest_api(infra, pipeline, sizes, ingest_token, f"{tag}b", args.client, "scale_ingest_2", out)
        shared = replace(sizes, contacts=SHARED_ROOMS, messages=min(sizes.messages, 5000))
        run_ingest_api(infra, pipeline, shared, ingest_token, f"{tag}c", args.client, "scale_ingest_2_shared", out)
    except BaseException:
        for role in list(pipeline.processes.running):
            sys.stderr.write(f"---- last lines of `inbox {role}` ----\n{pipeline.log_tail(role)}\n")
        raise
    finally:
        pipeline.stop_all()
    for workers in (1, 2):
        say(f"== (s) {workers} projection worker(s), one consumer group, catching up on the run's event store"
            f" ({partitions} partitions) ==")
        w = parallel_catch_up(infra, workers=workers)
        per = w.cpu_ms_per_event
        say(
            f"  projected {w.events:,} events in {w.seconds:.2f}s = {w.events_per_s:,.0f} events/s (after a probe of"
            f" {w.probe_events:,}; producing the backlog took {w.produce_seconds:.2f}s of it); worker CPU"
            f" {'n/a' if per is None else f'{per:.3f} ms'} per event; events applied per worker {w.per_worker_events}"
            + ("" if w.machine_busy_cores is None else f"; machine {w.machine_busy_cores:.2f} cores busy")
        )
        if w.other_cores is not None and w.other_cores > 0.25:
            say(f"  WARNING: unrelated processes used {w.other_cores:.2f} cores meanwhile; these figures are disturbed")
            DISTURBED.append(f"(s) {workers} worker(s): {w.other_cores:.2f} cores")
        out[f"scale_projection_{workers}"] = w.as_dict()
    print_scale_out(out)


def print_scale_out(out: dict[str, Any]) -> None:
    one, two = out.get("scale_ingest_1"), out.get("scale_ingest_2")
    p1, p2 = out.get("scale_projection_1"), out.get("scale_projection_2")
    if not (one and two and p1 and p2):
        return
    rows = [
        ("ingest msg/s (one message per POST)", one["msg_per_s"], two["msg_per_s"], ",.0f"),
        ("API CPU per message, ms (all API processes)", one["api_cpu_ms_per_message"],
         two["api_cpu_ms_per_message"], ".3f"),
        ("messages per event-store transaction", _per_tx(one), _per_tx(two), ".1f"),
        ("relay CPU per message, ms (during the burst)", _relay_ms(one), _relay_ms(two), ".3f"),
        ("projection events/s until lag 0", p1["events_per_s"], p2["events_per_s"], ",.0f"),
        ("worker CPU per event, ms (all workers)", p1["worker_cpu_ms_per_event"], p2["worker_cpu_ms_per_event"],
         ".3f"),
    ]
    say()
    say(f"== (s) side by side ({p1['partitions']} partitions; same run, same machine) ==")
    say(f"  {'':<46}{'1 API + 1 worker':>18}{'2 APIs + 2 workers':>20}{'ratio':>8}")
    for label, a, b, fmt in rows:
        say(f"  {label:<46}{_fmt(a, fmt):>18}{_fmt(b, fmt):>20}{_fmt(ratio(b, a) if a and b else math.nan, '.2f'):>8}")
    sticky = out.get("scale_ingest_2_affinity")
    if sticky:
        say(f"  2 APIs, each room's messages over one connection (so one process): {sticky['msg_per_s']:,.0f} msg/s"
            f" ({ratio(sticky['msg_per_s'], one['msg_per_s']):.2f}x 1 API), API CPU"
            f" {sticky['api_cpu_ms_per_message']:.3f} ms per message, {_per_tx(sticky):.1f} messages per transaction")
    shared = out.get("scale_ingest_2_shared")
    if shared:
        say(f"  2 APIs on {shared['contacts']} shared rooms: {shared['accepted']:,} of {shared['messages']:,} accepted,"
            f" errors {shared['errors'] or 'none'}, {shared['msg_per_s']:,.0f} msg/s")


def _relay_ms(i: dict[str, Any]) -> float:
    cpu = i.get("cpu") or {}
    cores = cpu.get("cores_by_group", {}).get("relay")
    return 1000 * cores * cpu["wall_s"] / i["accepted"] if cores is not None and i["accepted"] else math.nan


def _per_tx(i: dict[str, Any]) -> float:
    return i["accepted"] / i["event_store_transactions"] if i["event_store_transactions"] else math.nan


def _fmt(v: float | None, fmt: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def run_everything(
    infra: Infra, sizes: Sizes, args: argparse.Namespace, ingest_token: str, admin_token: str, tag: str,
    out: dict[str, Any],
) -> None:
    if not args.freshness_only:
        run_baselines(infra, sizes, out)
        run_http_baseline(sizes, tag, out)
    pipeline = Pipeline(infra)
    try:
        start_pipeline(infra, pipeline, out)
        register_account(pipeline.base_url, admin_token)
        # Warm-up through the whole pipeline: proves the consumer group has its partitions.
        t0 = time.perf_counter()
        ingest_burst(pipeline.base_url, ingest_token, messages=sizes.warmup, clients=sizes.clients,
                     contacts=sizes.warmup // 2, tag=f"{tag}w", client=args.client)
        wait_projected(infra, pipeline, timeout=180, what="warm-up messages to be projected")
        say(f"  warm-up: {sizes.warmup} messages through the whole pipeline in {time.perf_counter() - t0:.1f}s")
        if not args.freshness_only:
            run_ingest(infra, pipeline, sizes, ingest_token, tag, args.client, out)
            if args.api_processes == 2:
                start_second_api(pipeline)
                run_ingest_api(infra, pipeline, sizes, ingest_token, f"{tag}b", args.client, "ingest_api2", out)
            run_visibility(infra, pipeline, sizes, ingest_token, admin_token, tag, args.counter_read, out)
            run_replay_phase(infra, pipeline, out)
            run_expiry_phase(infra, pipeline, sizes, ingest_token, out)
        if args.freshness or args.freshness_only:
            run_freshness_phase(infra, pipeline, args, ingest_token, tag, out)
    except BaseException:
        for role in list(pipeline.processes.running):
            sys.stderr.write(f"---- last lines of `inbox {role}` ----\n{pipeline.log_tail(role)}\n")
        raise
    finally:
        t0 = time.perf_counter()
        pipeline.stop_all()
        say(f"  (pipeline processes stopped in {time.perf_counter() - t0:.1f}s)")
    if not args.freshness_only:
        run_worker_phase(infra, out)
        run_command_phase(infra, sizes, out)
