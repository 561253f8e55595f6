"""(g) Live-update freshness: inbound 202 → `message` event received by open GET /v1/stream clients.

Setup: one message per contact creates `contacts` rooms; in the `mix` scenario most of them are
then assigned (POST /v1/rooms/{id}/assign) round-robin to the agents who hold streams, the rest
stay unassigned. Scenarios (each with its own `streams` fresh streams):

- `mix` (realistic): a tenth of the streams are admins/supervisors (they see every room), the
  rest agents (they see their own rooms and the unassigned ones); `ASSIGNED_SHARE` of the rooms are
  assigned, so a message is due on every stream (unassigned room) or on the managers' and one
  agent's (assigned room);
- `all` (worst case): every stream is an admin: every message is due on every stream.

While the streams are open, inbound messages arrive at a steady `rate` for `seconds` (open loop:
many keep-alive connections, each POST at its scheduled time). For every (message, stream that may
see it) pair the latency is the time from the POST's 202 to the `message` event naming it on that
stream, read by real HTTP clients in a separate process (bench/stream_readers.py) on the same
monotonic clock. Deliveries received are checked against those expected (per message, from the
room's assignee and each stream's role). The API's CPU over the send+drain window gives CPU per
inbound message and per delivered event; its resident memory before and after the streams open,
per stream, is the memory one open stream costs. The same-run baseline is the same inbound load
with one admin stream: the pipeline's own latency, and the API CPU without fan-out (a scenario's
extra CPU per extra delivery is the fan-out's cost).
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.ingest import RawHTTPConnection, message_body
from bench.stats import summary_ms

MANAGER_SHARE = 10  # one stream in MANAGER_SHARE is an admin or supervisor in `mix`
ASSIGNED_SHARE = 0.8  # of the rooms, assigned to agents in `mix`
SEND_CONNECTIONS = 128  # open loop: enough in-flight POSTs to hold the rate through slow answers


@dataclass(frozen=True)
class Viewer:
    role: str  # admin | supervisor | agent
    user: str

    @property
    def sees_all(self) -> bool:
        return self.role in ("admin", "supervisor")


def viewers(scenario: str, streams: int) -> list[Viewer]:
    if scenario == "all":
        return [Viewer("admin", f"bench-admin-{i}") for i in range(streams)]
    if scenario == "one":
        return [Viewer("admin", "bench-admin-0")]
    out = []
    for i in range(streams):
        if i % MANAGER_SHARE == 0:
            out.append(Viewer("admin" if i % (2 * MANAGER_SHARE) == 0 else "supervisor", f"bench-manager-{i}"))
        else:
            out.append(Viewer("agent", f"bench-agent-{i}"))
    return out


def describe_mix(scenario: str, vs: list[Viewer], rooms_assigned: int, rooms: int) -> str:
    managers = sum(v.sees_all for v in vs)
    agents = len(vs) - managers
    if scenario == "all":
        return f"{len(vs)} admins (every stream sees every message: the worst case)"
    if scenario == "one":
        return "1 admin stream"
    due_unassigned, due_assigned = len(vs), managers + 1
    share = rooms_assigned / rooms if rooms else 0.0
    return (f"{managers} admins/supervisors (see every room) + {agents} agents (their rooms + unassigned);"
            f" {rooms_assigned} of {rooms} rooms assigned round-robin to the agents: a message is due on"
            f" {due_unassigned} streams (unassigned room) or {due_assigned} (assigned),"
            f" {share * due_assigned + (1 - share) * due_unassigned:.1f} on average")


@dataclass
class FreshnessResult:
    scenario: str
    streams: int
    rate: float
    seconds: float
    mix: str = ""
    sent: int = 0
    errors: int = 0
    send_seconds: float = 0.0
    accepted_at: dict[int, float] = field(default_factory=dict)  # message number -> 202 time (monotonic)
    accepted_wall: dict[int, float] = field(default_factory=dict)  # message number -> 202 time (epoch)
    logged: list[float] = field(default_factory=list)  # 202 → its change-log row (the worker's transaction start)
    answered: list[float] = field(default_factory=list)  # POST sent → its 202 (the API's own lag)
    due: dict[int, int] = field(default_factory=dict)  # message number -> streams that may see it
    latencies: list[float] = field(default_factory=list)
    expected: int = 0
    received: int = 0
    missing: int = 0
    extra: int = 0
    rss_before_kb: int = 0
    rss_streams_kb: int = 0
    cpu: dict[str, Any] = field(default_factory=dict)  # cores_by_group etc. over send + drain
    window_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        per_stream_kb = (self.rss_streams_kb - self.rss_before_kb) / self.streams if self.streams else 0.0
        api_cores = [v for k, v in self.cpu.get("cores_by_group", {}).items() if k.startswith("api")]  # api, api2
        api_cpu_s = sum(api_cores) * self.window_s if api_cores else math.nan
        lat = summary_ms(self.latencies)
        return {
            "scenario": self.scenario, "mix": self.mix, "streams": self.streams, "target_rate": self.rate,
            "sent": self.sent, "errors": self.errors,
            "achieved_rate": self.sent / self.send_seconds if self.send_seconds else 0.0,
            "deliveries_expected": self.expected, "deliveries": self.received,
            "missing_deliveries": self.missing, "extra_deliveries": self.extra,
            "latency": lat, "to_change_log": summary_ms(self.logged), "post_to_202": summary_ms(self.answered),
            "api_rss_before_mb": self.rss_before_kb / 1024, "api_rss_with_streams_mb": self.rss_streams_kb / 1024,
            "api_kb_per_stream": per_stream_kb,
            "api_cpu_s": api_cpu_s,
            "api_cpu_ms_per_message": 1000 * api_cpu_s / self.sent if self.sent else math.nan,
            "api_cpu_us_per_delivery": 1e6 * api_cpu_s / self.received if self.received else math.nan,
            "cpu": self.cpu,
        }


def rss_kb(pids: list[int]) -> int:
    """Resident memory of `pids` together (the API processes), KB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def contact(i: int) -> str:
    return f"62899{i:07d}"


# ---- setup: the rooms and who they are assigned to ------------------------------------------
async def _setup_rooms(base_url: str, ingest_token: str, admin_token: str, tag: str, contacts: int,
                       agents: list[str]) -> dict[int, str | None]:
    """One message per contact; then ASSIGNED_SHARE of the rooms assigned round-robin to `agents`."""
    url = httpx.URL(base_url)
    ingest = [RawHTTPConnection(url.host, url.port or 80, {"Authorization": f"Bearer {ingest_token}",
                                                         "Content-Type": "application/json"}) for _ in range(16)]
    staff = [RawHTTPConnection(url.host, url.port or 80, {"Authorization": f"Bearer {admin_token}",
                                                        "Content-Type": "application/json"}) for _ in range(8)]
    room_ids: dict[int, str] = {}

    async def create(conn: RawHTTPConnection, todo: Any) -> None:
        for i in todo:
            code, body = await conn.request("POST", "/v1/inbound-messages",
                                            message_body(contact(i), f"wamid.{tag}.setup{i}", "hello"))
            if code != 202:
                raise RuntimeError(f"setup message answered {code}: {body[:200]!r}")
            room_ids[i] = orjson.loads(body)["room_id"]

    todo = iter(range(contacts))
    await asyncio.gather(*(create(c, todo) for c in ingest))
    assignee: dict[int, str | None] = {i: None for i in range(contacts)}
    if agents:
        for n, i in enumerate(i for i in range(contacts) if (i % 10) < ASSIGNED_SHARE * 10):
            assignee[i] = agents[n % len(agents)]

    async def assign(conn: RawHTTPConnection, todo: Any) -> None:
        for i in todo:
            body = orjson.dumps({"agent_id": assignee[i]})
            for _ in range(50):  # the room may not be projected yet: 404 until it is
                code, answer = await conn.request("POST", f"/v1/rooms/{room_ids[i]}/assign", body)
                if code != 404:
                    break
                await asyncio.sleep(0.1)
            if code != 200:
                raise RuntimeError(f"assigning a setup room answered {code}: {answer[:200]!r}")

    todo = iter([i for i in range(contacts) if assignee[i] is not None])
    try:
        await asyncio.gather(*(assign(c, todo) for c in staff))
    finally:
        await asyncio.gather(*(c.close() for c in ingest + staff))
    return assignee


def setup_rooms(base_url: str, ingest_token: str, admin_token: str, *, tag: str, contacts: int,
                agents: list[str], wait_assigned: Callable[[int], None]) -> dict[int, str | None]:
    assignee = asyncio.run(_setup_rooms(base_url, ingest_token, admin_token, tag, contacts, agents))
    wait_assigned(sum(a is not None for a in assignee.values()))
    return assignee


# ---- one scenario ---------------------------------------------------------------------------
async def _send(base_url: str, token: str, result: FreshnessResult, tag: str, contacts: int) -> None:
    url = httpx.URL(base_url)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conns = [RawHTTPConnection(url.host, url.port or 80, headers) for _ in range(SEND_CONNECTIONS)]
    await asyncio.gather(*(c.request("GET", "/healthz") for c in conns))  # connected before the clock starts
    total = int(result.rate * result.seconds)
    bodies = [message_body(contact(i % contacts), f"wamid.{tag}.f{i}", f"freshness probe {i}") for i in range(total)]
    indexes = iter(range(total))
    t0 = time.monotonic()

    async def worker(conn: RawHTTPConnection) -> None:
        for i in indexes:
            delay = t0 + i / result.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at = time.monotonic()
            try:
                code, _ = await conn.request("POST", "/v1/inbound-messages", bodies[i])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                code = 0
                await conn.close()
            if code == 202:
                result.accepted_at[i] = time.monotonic()
                result.answered.append(result.accepted_at[i] - sent_at)
                result.accepted_wall[i] = time.time()
                result.sent += 1
            else:
                result.errors += 1

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        result.send_seconds = time.monotonic() - t0
        await asyncio.gather(*(c.close() for c in conns))


class Readers:
    """The stream readers' process (bench/stream_readers.py)."""

    def __init__(self, base_url: str, tokens: list[str], prefix: str) -> None:
        url = httpx.URL(base_url)
        fd, self.out = tempfile.mkstemp(prefix="inbox-bench-arrivals-")
        os.close(fd)
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.stream_readers"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"host": url.host, "port": url.port or 80, "tokens": tokens,
                                          "prefix": prefix, "out": self.out}) + "\n")
        self.proc.stdin.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"the stream readers did not start: {line.strip() or self.proc.wait()}")

    def drain(self, expected: int, timeout: float) -> tuple[array, array]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"drain {expected} {timeout}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line.startswith("done"):
            raise RuntimeError(f"the stream readers failed: {line.strip() or self.proc.wait()}")
        count = int(line.split()[1])
        numbers, times = array("q"), array("d")
        with open(self.out, "rb") as f:
            numbers.fromfile(f, count)
            times.fromfile(f, count)
        return numbers, times

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()  # tells it to exit
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        Path(self.out).unlink(missing_ok=True)


def memory_per_stream(base_url: str, tokens: list[str], api_pids: list[int]) -> tuple[int, int]:
    """API RSS (KB) before and with `tokens` idle streams open (before any other load of (g))."""
    before = rss_kb(api_pids)
    readers = Readers(base_url, tokens, "-")
    try:
        readers.wait_ready()
        time.sleep(1.0)  # let the allocator settle before reading memory
        return before, rss_kb(api_pids)
    finally:
        readers.close()


def run_scenario(
    base_url: str, ingest_token: str, tokens: list[str], sees_all: list[bool], assignee: dict[int, str | None],
    users: list[str], api_pids: list[int], *, scenario: str, mix: str, rate: float, seconds: float, tag: str,
    meter: Callable[[int], Any], logged_at: Callable[[str], dict[int, float]], drain_timeout: float = 60.0,
) -> FreshnessResult:
    """`tokens[k]` is a stream of user `users[k]` (sees every room when `sees_all[k]`).

    `logged_at(prefix)`: message number -> epoch time of the change-log row that carries it.
    """
    result = FreshnessResult(scenario=scenario, streams=len(tokens), rate=rate, seconds=seconds, mix=mix)
    contacts = len(assignee)
    managers = sum(sees_all)
    agents_streaming = Counter(u for u, a in zip(users, sees_all) if not a)
    result.rss_before_kb = rss_kb(api_pids)
    readers = Readers(base_url, tokens, f"wamid.{tag}.f")
    try:
        readers.wait_ready()
        time.sleep(1.0)  # let the allocator settle before reading memory
        result.rss_streams_kb = rss_kb(api_pids)
        cpu = meter(readers.pid)
        cpu.start()
        t0 = time.monotonic()
        # No cyclic collection in the sender while it stamps 202s: a full one over this process's
        # objects would stamp a burst of them late (and the latencies short).
        gc.collect()
        gc.disable()
        try:
            asyncio.run(_send(base_url, ingest_token, result, tag, contacts))
        finally:
            gc.enable()
        for i in result.accepted_at:
            owner = assignee[i % contacts]
            result.due[i] = len(tokens) if owner is None else managers + agents_streaming.get(owner, 0)
        result.expected = sum(result.due.values())
        numbers, times = readers.drain(result.expected, drain_timeout)
        usage = cpu.stop()
        result.window_s = time.monotonic() - t0
        if usage is not None:
            result.cpu = usage.as_dict()
    finally:
        readers.close()
    got: Counter[int] = Counter()
    accepted = result.accepted_at
    for n, t in zip(numbers, times):
        got[n] += 1
        if n in accepted:
            result.latencies.append(t - accepted[n])
    for i, at in logged_at(f"wamid.{tag}.f").items():
        if i in result.accepted_wall:
            result.logged.append(at - result.accepted_wall[i])
    result.received = len(numbers)
    result.missing = sum(max(0, due - got.get(i, 0)) for i, due in result.due.items())
    result.extra = sum(max(0, c - result.due.get(i, 0)) for i, c in got.items())
    return result
