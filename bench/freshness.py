"""(f) Live-update freshness: inbound 202 → `message` event received by open GET /v1/stream clients.

`streams` SSE clients (a quarter admins, the rest agents with their own ids: every one of them
sees new, unassigned rooms) stay open while inbound messages arrive at a steady `rate` for
`seconds`. For every (message, stream) pair the latency is the time from the 202 of the POST to
the `message` event naming it on that stream. The API's resident memory is read before and after
the streams open: the difference per stream is the memory one open stream costs.

The clients are raw asyncio connections that only look for `event: message` frames, so the load
generator stays cheap (it shares the cores with the system under test).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.ingest import RawHTTPConnection, message_body
from bench.stats import summary_ms

MARK = b"event: message\ndata: "


@dataclass
class FreshnessResult:
    streams: int
    rate: float
    seconds: float
    sent: int = 0
    errors: int = 0
    accepted_at: dict[str, float] = field(default_factory=dict)  # channel message id -> 202 time
    received: list[tuple[str, float]] = field(default_factory=list)  # (channel message id, arrival)
    rss_before_kb: int = 0
    rss_streams_kb: int = 0
    missing: int = 0
    send_seconds: float = 0.0

    def latencies(self) -> list[float]:
        return [t - self.accepted_at[m] for m, t in self.received if m in self.accepted_at]

    def summary(self) -> dict[str, Any]:
        per_stream_kb = (self.rss_streams_kb - self.rss_before_kb) / self.streams if self.streams else 0.0
        return {
            "streams": self.streams, "target_rate": self.rate, "sent": self.sent, "errors": self.errors,
            "achieved_rate": self.sent / self.send_seconds if self.send_seconds else 0.0,
            "deliveries": len(self.received), "missing_deliveries": self.missing,
            "latency": summary_ms(self.latencies()),
            "api_rss_before_mb": self.rss_before_kb / 1024, "api_rss_with_streams_mb": self.rss_streams_kb / 1024,
            "api_kb_per_stream": per_stream_kb,
        }


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _open_stream(host: str, port: int, token: str, result: FreshnessResult, ready: asyncio.Event,
                       counter: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"stream refused: {head[:200]!r}")
    buffer = b""
    started = False
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            now = time.perf_counter()
            buffer += chunk
            end = buffer.rfind(b"\n\n")
            if end < 0:
                continue
            complete, buffer = buffer[:end], buffer[end + 2:]
            if not started and b"event: counters" in complete:
                started = True
                counter[0] += 1
                if counter[0] == result.streams:
                    ready.set()
            # Chunked transfer framing lines may sit between frames; they never contain the mark.
            at = complete.find(MARK)
            while at >= 0:
                line_end = complete.find(b"\n", at + len(MARK))
                data = complete[at + len(MARK): line_end if line_end >= 0 else len(complete)]
                result.received.append((orjson.loads(data)["channel_message_id"], now))
                at = complete.find(MARK, at + len(MARK))
    finally:
        writer.close()


async def _send(base_url: str, token: str, result: FreshnessResult, tag: str, contacts: int, clients: int) -> None:
    url = httpx.URL(base_url)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conns = [RawHTTPConnection(url.host, url.port or 80, headers) for _ in range(clients)]
    total = int(result.rate * result.seconds)
    indexes = iter(range(total))
    t0 = time.perf_counter()

    async def worker(conn: RawHTTPConnection) -> None:
        for i in indexes:
            delay = t0 + i / result.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            mid = f"wamid.{tag}.f{i}"
            body = message_body(f"62899{i % contacts:07d}", mid, f"freshness probe {i}")
            try:
                code, _ = await conn.request("POST", "/v1/inbound-messages", body)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                code = 0
                await conn.close()
            if code == 202:
                result.accepted_at[mid] = time.perf_counter()
                result.sent += 1
            else:
                result.errors += 1

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        result.send_seconds = time.perf_counter() - t0
        await asyncio.gather(*(c.close() for c in conns))


async def _run(base_url: str, ingest_token: str, stream_tokens: list[str], api_pid: int, result: FreshnessResult,
               tag: str, contacts: int, clients: int, drain_timeout: float) -> None:
    url = httpx.URL(base_url)
    result.rss_before_kb = rss_kb(api_pid)
    ready = asyncio.Event()
    counter = [0]
    tasks = [asyncio.create_task(_open_stream(url.host, url.port or 80, t, result, ready, counter))
             for t in stream_tokens]
    try:
        await asyncio.wait_for(ready.wait(), 120)
        await asyncio.sleep(1.0)  # let the allocator settle before reading memory
        result.rss_streams_kb = rss_kb(api_pid)
        await _send(base_url, ingest_token, result, tag, contacts, clients)
        expected = result.sent * result.streams
        deadline = time.perf_counter() + drain_timeout
        while len(result.received) < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        result.missing = max(0, expected - len(result.received))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def freshness(
    base_url: str, ingest_token: str, stream_tokens: list[str], api_pid: int, *, rate: float, seconds: float,
    tag: str, contacts: int = 500, clients: int = 16, drain_timeout: float = 60.0,
) -> FreshnessResult:
    result = FreshnessResult(streams=len(stream_tokens), rate=rate, seconds=seconds)
    asyncio.run(_run(base_url, ingest_token, stream_tokens, api_pid, result, tag, contacts, clients, drain_timeout))
    return result
