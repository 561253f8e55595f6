"""The open streams of (g), in a process of their own: `python -m bench.stream_readers` (bench/freshness.py runs it).

200 streams receiving every message of a 500 msg/s load are up to 100,000 SSE events a second:
in the load generator's process they would starve its sender (and its clock readings) of the
one event loop. Here each stream is a bare asyncio Protocol on uvloop (when installed) over a
real HTTP/1.1 GET /v1/stream, and an event costs a few byte searches: the `message` events whose
`channel_message_id` starts with the run's prefix are noted as (message number, arrival time on
CLOCK_MONOTONIC, the clock the sender stamps its 202s with).

Protocol with the parent, one line each way:
  stdin  ← {"host", "port", "tokens": [...], "prefix", "out"}   (JSON)
  stdout → `ready <streams>` once every stream has its first `counters` event
  stdin  ← `drain <expected deliveries> <timeout s>`
  stdout → `done <received>` after writing the arrivals to `out` (int64 numbers, then float64 times)
  stdin  ← any line or EOF: exit (the parent has read this process's CPU time)
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from array import array
from typing import Any

MARK = b"event: message\ndata: "
FIELD = b'"channel_message_id":"'


class Arrivals:
    def __init__(self, prefix: bytes, streams: int) -> None:
        self.prefix = prefix
        self.numbers = array("q")
        self.times = array("d")
        self.streams = streams
        self.started = 0
        self.ready = asyncio.Event()
        self.failed: list[str] = []


class StreamProtocol(asyncio.Protocol):
    def __init__(self, request: bytes, arrivals: Arrivals) -> None:
        self.request = request
        self.arrivals = arrivals
        self.buffer = b""
        self.head_done = False
        self.started = False
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.buffer + data
        if not self.head_done:
            at = buffer.find(b"\r\n\r\n")
            if at < 0:
                self.buffer = buffer
                return
            status = buffer.split(b"\r\n", 1)[0]
            if b" 200 " not in status:
                self.arrivals.failed.append(status.decode(errors="replace"))
                self.arrivals.ready.set()
                return
            self.head_done = True
            buffer = buffer[at + 4:]
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self.buffer = buffer
            return
        complete, self.buffer = buffer[:end], buffer[end + 2:]
        a = self.arrivals
        if not self.started and b"event: counters" in complete:
            self.started = True
            a.started += 1
            if a.started == a.streams:
                a.ready.set()
        # Chunked transfer framing sits between whole frames (one chunk per write); it never holds MARK.
        prefix, numbers, times = a.prefix, a.numbers, a.times
        at = complete.find(MARK)
        while at >= 0:
            start = complete.find(FIELD, at) + len(FIELD)
            stop = complete.find(b'"', start)
            mid = complete[start:stop]
            if mid.startswith(prefix):
                numbers.append(int(mid[len(prefix):]))
                times.append(now)
            at = complete.find(MARK, stop)


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config: dict[str, Any] = json.loads(await reader.readline())
    host, port, tokens = config["host"], int(config["port"]), config["tokens"]
    arrivals = Arrivals(config["prefix"].encode(), len(tokens))
    transports = []
    for token in tokens:
        request = (f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
        transport, _ = await loop.create_connection(lambda r=request: StreamProtocol(r, arrivals), host, port)
        transports.append(transport)
    await asyncio.wait_for(arrivals.ready.wait(), 120)
    await asyncio.sleep(0.5)  # every stream's first write has been read
    if arrivals.failed:
        print(f"failed {arrivals.failed[0]}", flush=True)
        return
    # No cyclic collection while the clock runs: a full one would hold every stream's reading (and
    # its arrival stamps) for tens of milliseconds. An event's bytes die by reference counting.
    gc.collect()
    gc.freeze()
    gc.disable()
    print(f"ready {len(tokens)}", flush=True)
    command = (await reader.readline()).split()
    if not command:  # the parent only wanted the streams open (memory), and is done
        for t in transports:
            t.close()
        return
    expected, timeout = int(command[1]), float(command[2])
    deadline = time.monotonic() + timeout
    while len(arrivals.numbers) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # anything late (duplicates would show here)
    for t in transports:
        t.close()
    with open(config["out"], "wb") as f:
        arrivals.numbers.tofile(f)
        arrivals.times.tofile(f)
    print(f"done {len(arrivals.numbers)}", flush=True)
    await reader.readline()  # the parent reads our CPU time before we exit


if __name__ == "__main__":
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(main())
