"""(a) HTTP ingest throughput and projection throughput; (b) accepted → counter-visible latency."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import psycopg

from bench.infra import Infra
from bench.stats import rate, summary_ms
from inbox.adapters.postgres import conninfo

ORG = "bench-org"
CHANNEL = "whatsapp_cloud"
ACCOUNT = "100200300400500"  # a Meta phone_number_id


def message_body(contact: str, message_id: str, text: str, *, name: str | None = None) -> bytes:
    return orjson.dumps({
        "channel": CHANNEL,
        "channel_account": ACCOUNT,
        "contact": {"id": contact, "name": name or f"Customer {contact}", "phone": f"+{contact}"},
        "message": {"id": message_id, "text": text, "sent_at": datetime.now(UTC).isoformat()},
    })


def register_account(base_url: str, admin_token: str) -> dict[str, Any]:
    r = httpx.post(
        f"{base_url}/v1/channel-accounts",
        json={"channel": CHANNEL, "external_id": ACCOUNT, "name": "Bench WhatsApp number"},
        headers={"Authorization": f"Bearer {admin_token}"}, timeout=30,
    )
    if r.status_code != 201:
        raise RuntimeError(f"registering the channel account answered {r.status_code}: {r.text}")
    return r.json()  # type: ignore[no-any-return]


# ---- progress of the pipeline, read from PostgreSQL -----------------------------------------
def room_event_total(infra: Infra) -> tuple[int, int]:
    """(rooms, room events) according to the event store (what the projections must reach)."""
    with infra.connect() as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(v), 0) FROM (SELECT max(originator_version) AS v FROM inbox_events"
            " WHERE topic LIKE 'domain.room:Room.%%' GROUP BY originator_id) t"
        ).fetchone()
    assert row
    return int(row[0]), int(row[1])


def projected_total(conn: psycopg.Connection) -> tuple[int, int]:
    row = conn.execute("SELECT count(*), coalesce(sum(version), 0) FROM rooms").fetchone()
    assert row
    return int(row[0]), int(row[1])


class ProgressMonitor(threading.Thread):
    """Samples (t, projected room events, relay position, max notification id) every `interval` s."""

    def __init__(self, infra: Infra, interval: float = 0.05) -> None:
        super().__init__(name="bench-progress", daemon=True)
        self.infra = infra
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []
        self._stop_evt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(conninfo(self.infra.settings), autocommit=True) as conn:
                while not self._stop_evt.is_set():
                    t = time.perf_counter()
                    row = conn.execute(
                        "SELECT (SELECT coalesce(sum(version), 0) FROM rooms),"
                        " coalesce((SELECT max(notification_id) FROM relay_position), 0),"
                        " coalesce((SELECT max(notification_id) FROM inbox_events), 0)"
                    ).fetchone()
                    assert row
                    self.samples.append((t, int(row[0]), int(row[1]), int(row[2])))
                    self._stop_evt.wait(self.interval)
        except BaseException as e:
            self.error = e

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(5)

    def first_time(self, predicate: Any) -> float | None:
        for s in self.samples:
            if predicate(s):
                return s[0]
        return None


# ---- (a) the burst --------------------------------------------------------------------------
@dataclass
class IngestResult:
    messages: int
    clients: int
    contacts: int
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    first_accepted: float = 0.0
    last_accepted: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def note(self, status: str, sent: float, answered: float) -> None:
        """One request's outcome: a 202 counts with its latency, anything else as an error."""
        if status != "202":
            self.errors[status] = self.errors.get(status, 0) + 1
            return
        self.ok += 1
        self.latencies.append(answered - sent)
        self.first_accepted = self.first_accepted or answered
        self.last_accepted = max(self.last_accepted, answered)

    @property
    def seconds(self) -> float:
        return self.last_accepted - self.started

    @property
    def msg_per_s(self) -> float:
        return rate(self.ok, self.seconds)


async def _burst(
    base_url: str, token: str, bodies: list[bytes], clients: int, result: IngestResult
) -> None:
    """`clients` keep-alive connections, one AsyncClient each.

    One client per connection on purpose: httpcore's pool scans every connection for every
    request state change, which costs more CPU than the requests themselves at 32 connections
    (measured: ~7 ms of client CPU per request with one shared 32-connection client).
    """
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    http = [httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60, verify=False)
            for _ in range(clients)]
    try:
        # Open the keep-alive connections before the clock starts.
        await asyncio.gather(*(c.get("/healthz") for c in http))
        next_index = iter(range(len(bodies)))

        async def worker(client: httpx.AsyncClient) -> None:
            for i in next_index:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/inbound-messages", content=bodies[i])
                    status = str(r.status_code)
                except httpx.HTTPError as e:
                    status = type(e).__name__
                result.note(status, t0, time.perf_counter())

        result.started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in http))
        result.first_accepted = result.first_accepted or result.started
    finally:
        await asyncio.gather(*(c.aclose() for c in http))


class RawHTTPConnection:
    """A minimal HTTP/1.1 keep-alive client connection (asyncio streams, Content-Length bodies only).

    The load generator shares 2 cores with the system under test, so it should be cheap: per
    request this costs a fraction of httpx's CPU (measured here: ~0.2 ms vs 1.3-1.8 ms per request).
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self._writer is None or self._writer.is_closing():
            await self.connect()
        assert self._reader is not None and self._writer is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}{extra}Content-Length: {len(body)}\r\n\r\n".encode()
        self._writer.write(head + body)
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked responses are not supported by the bench client")
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await self._reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None


async def _burst_raw(
    base_url: str, token: str, bodies: list[bytes], clients: int, result: IngestResult, *, contacts: int = 0,
) -> None:
    """`contacts` > 0: each contact's messages go over one connection (connection c sends the
    messages of contacts c, c + clients, ...), so with several API processes behind the port each
    room is written by one process (the affinity a load balancer could give by contact or account)."""
    url = httpx.URL(base_url)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conns = [RawHTTPConnection(url.host, url.port or 80, headers) for _ in range(clients)]
    try:
        await asyncio.gather(*(c.request("GET", "/healthz") for c in conns))
        shared = iter(range(len(bodies)))
        own = [iter([i for i in range(len(bodies)) if (i % contacts) % clients == c]) for c in range(clients)] \
            if contacts else None

        async def worker(conn: RawHTTPConnection, c: int) -> None:
            for i in own[c] if own is not None else shared:
                t0 = time.perf_counter()
                try:
                    code, _ = await conn.request("POST", "/v1/inbound-messages", bodies[i])
                    status = str(code)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    status = type(e).__name__
                    await conn.close()
                result.note(status, t0, time.perf_counter())

        result.started = time.perf_counter()
        await asyncio.gather(*(worker(conn, c) for c, conn in enumerate(conns)))
        result.first_accepted = result.first_accepted or result.started
    finally:
        await asyncio.gather(*(c.close() for c in conns))


def post_bodies(
    base_url: str, path: str, bodies: list[bytes], *, clients: int, headers: dict[str, str] | None = None,
) -> tuple[dict[int | str, int], float, list[float]]:
    """POST every body once over `clients` keep-alive connections: (count per status, seconds, latencies)."""
    url = httpx.URL(base_url)
    fixed = {"Content-Type": "application/json", **(headers or {})}
    statuses: dict[int | str, int] = {}
    latencies: list[float] = []

    async def run() -> float:
        conns = [RawHTTPConnection(url.host, url.port or 80, fixed) for _ in range(clients)]
        try:
            await asyncio.gather(*(c.request("GET", "/healthz") for c in conns))
            next_index = iter(range(len(bodies)))

            async def worker(conn: RawHTTPConnection) -> None:
                for i in next_index:
                    t0 = time.perf_counter()
                    try:
                        code: int | str = (await conn.request("POST", path, bodies[i]))[0]
                    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                        code = type(e).__name__
                        await conn.close()
                    latencies.append(time.perf_counter() - t0)
                    statuses[code] = statuses.get(code, 0) + 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(c) for c in conns))
            return time.perf_counter() - t0
        finally:
            await asyncio.gather(*(c.close() for c in conns))

    seconds = asyncio.run(run())
    return statuses, seconds, latencies


def message_bodies(messages: int, contacts: int, tag: str) -> list[bytes]:
    """The burst's bodies: `messages` messages round-robin over `contacts` contacts, unique ids."""
    return [
        message_body(f"62812{i % contacts:07d}", f"wamid.{tag}.{i}", f"Hello, I have a question about my order #{i}")
        for i in range(messages)
    ]


def ingest_burst(
    base_url: str, token: str, *, messages: int, clients: int, contacts: int, tag: str, client: str = "raw",
    affinity: bool = False,
) -> IngestResult:
    """POST `messages` inbound messages round-robin over `contacts` contacts with `clients` concurrent clients.

    `affinity` (raw client): each contact's messages over one connection (see `_burst_raw`)."""
    bodies = message_bodies(messages, contacts, tag)
    result = IngestResult(messages=messages, clients=clients, contacts=contacts)
    if client == "raw":
        asyncio.run(_burst_raw(base_url, token, bodies, clients, result, contacts=contacts if affinity else 0))
    else:
        asyncio.run(_burst(base_url, token, bodies, clients, result))
    return result


def event_store_transactions(infra: Infra, after_notification_id: int) -> tuple[int, int]:
    """(events, distinct writing transactions) in the event store after a notification id."""
    with infra.connect() as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT xmin::text) FROM inbox_events WHERE notification_id > %s",
            (after_notification_id,),
        ).fetchone()
    assert row
    return int(row[0]), int(row[1])


# ---- (b) accepted → visible -----------------------------------------------------------------
@dataclass
class VisibilityResult:
    samples: int
    read: str
    visible: list[float] = field(default_factory=list)  # 202 → counter shows it
    published: list[float] = field(default_factory=list)  # 202 → relay position covers it
    accept: list[float] = field(default_factory=list)  # HTTP latency of the single POST
    poll_periods: list[float] = field(default_factory=list)
    timeouts: int = 0


def visibility_latency(
    infra: Infra, base_url: str, ingest_token: str, admin_token: str, *, samples: int, tag: str,
    poll_s: float = 0.002, gap_s: float = 0.02, read: str = "sql", timeout_s: float = 30.0,
) -> VisibilityResult:
    """One new contact per sample: the org's unassigned counter must go up by exactly one.

    read="sql": poll the counters table directly (one round trip, the same row GET /v1/inbox/counters
    sums); read="http": poll GET /v1/inbox/counters through the API.
    """
    result = VisibilityResult(samples=samples, read=read)
    unassigned_sql = (
        "SELECT coalesce((SELECT sum(rooms) FROM counters WHERE org_id = %s AND status = 'unassigned'"
        " AND assignee = '*'), 0),"
        " coalesce((SELECT max(notification_id) FROM relay_position), 0)"
    )
    post_headers = {"Authorization": f"Bearer {ingest_token}", "Content-Type": "application/json"}
    get_headers = {"Authorization": f"Bearer {admin_token}"}
    with psycopg.connect(conninfo(infra.settings), autocommit=True) as conn, httpx.Client(
        base_url=base_url, timeout=30
    ) as client:
        def poll() -> tuple[int, int]:
            row = conn.execute(unassigned_sql, (ORG,), prepare=True).fetchone()
            assert row
            if read == "http":
                counters = client.get("/v1/inbox/counters", headers=get_headers).json()
                return int(counters["unassigned"]), int(row[1])
            return int(row[0]), int(row[1])

        client.get("/healthz")
        for j in range(samples):
            before, _ = poll()
            body = message_body(f"lat-{tag}-{j}", f"wamid.{tag}.lat.{j}", "Is anyone there?")
            t0 = time.perf_counter()
            r = client.post("/v1/inbound-messages", content=body, headers=post_headers)
            accepted = time.perf_counter()
            if r.status_code != 202:
                raise RuntimeError(f"inbound message answered {r.status_code}: {r.text}")
            result.accept.append(accepted - t0)
            nid_row = conn.execute("SELECT max(notification_id) FROM inbox_events").fetchone()
            nid = int(nid_row[0]) if nid_row and nid_row[0] is not None else 0
            published_at: float | None = None
            last_poll = time.perf_counter()
            while True:
                count, relay_pos = poll()
                now = time.perf_counter()
                result.poll_periods.append(now - last_poll)
                last_poll = now
                if published_at is None and relay_pos >= nid:
                    published_at = now
                if count >= before + 1:
                    result.visible.append(now - accepted)
                    result.published.append((published_at or now) - accepted)
                    break
                if now - accepted > timeout_s:
                    result.timeouts += 1
                    break
                time.sleep(poll_s)
            time.sleep(gap_s)
    return result


def summarize_visibility(v: VisibilityResult) -> dict[str, Any]:
    return {
        "samples": v.samples, "read": v.read, "timeouts": v.timeouts,
        "visible": summary_ms(v.visible), "published": summary_ms(v.published), "accept": summary_ms(v.accept),
        "poll_period": summary_ms(v.poll_periods),
    }
