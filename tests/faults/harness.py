"""Fault-suite helpers: steady inbound load, accounting against the event store and projections, the canary.

The processes themselves are tests.support.Pipeline's; this module only drives and counts.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
from eventsourcing.persistence import StoredEvent

from inbox.adapters.embedded import EmbeddedPostgres
from inbox.adapters.schema import migrate
from inbox.config import Settings
from inbox.bootstrap import open_event_store
from tests.support import Pipeline, auth, query, wait_until

ACCOUNT = "pn-faults"
TIMEOUT_STATUS = "timeout"  # the client gave up: the outcome is unknown, like a dropped connection


# The name under which a case's figure line travels in its test report (tests/conftest.py prints them).
FIGURES_PROPERTY = "fault_figures"


@dataclass
class Sent:
    """One inbound request: its channel message id, when it went out, and how it was answered."""

    message_id: str
    at: float
    status: int | str = "pending"


@dataclass
class Load:
    sent: list[Sent] = field(default_factory=list)

    def with_status(self, status: int | str) -> list[Sent]:
        return [s for s in self.sent if s.status == status]

    def statuses(self) -> Counter[int | str]:
        return Counter(s.status for s in self.sent)

    def transport_errors(self) -> list[Sent]:
        """No answer at all (connection reset, refused, timed out): the outcome is unknown."""
        return [s for s in self.sent if isinstance(s.status, str)]

    def unanswered(self) -> list[Sent]:
        """Neither accepted nor refused: 503s and requests whose answer never came."""
        return [s for s in self.sent if s.status != 202]


def register_account(p: Pipeline, external_id: str = ACCOUNT) -> None:
    r = httpx.post(f"{p.base_url}/v1/channel-accounts", headers=auth(p.settings), timeout=30,
                   json={"channel": "whatsapp_cloud", "external_id": external_id, "name": "Faults"})
    assert r.status_code == 201, r.text


def inbound_body(message_id: str, *, contact: str, text: str | None = None) -> dict[str, object]:
    return {
        "channel": "whatsapp_cloud", "channel_account": ACCOUNT,
        "contact": {"id": contact, "name": f"Customer {contact}"},
        "message": {"id": message_id, "text": text or f"pesan {message_id}", "sent_at": datetime.now(UTC).isoformat()},
    }


async def _post(client: httpx.AsyncClient, sent: Sent, contacts: int, index: int) -> None:
    try:
        r = await client.post("/v1/inbound-messages", json=inbound_body(sent.message_id, contact=f"62811{index % contacts:05d}"))
        sent.status = r.status_code
    except httpx.TimeoutException:
        sent.status = TIMEOUT_STATUS
    except httpx.TransportError as e:
        sent.status = f"error:{type(e).__name__}"


async def steady_load(
    p: Pipeline, *, rate: float, seconds: float, tag: str, contacts: int = 25,
    fault: Callable[[], Awaitable[None]] | None = None, request_timeout: float | None = None,
) -> Load:
    """Post `rate` inbound messages a second for `seconds` (bounded: rate*seconds requests in all).

    `fault`, when given, runs concurrently (it is awaited before returning). Requests are not
    retried here; `resend` does that afterwards, like a sender would.
    """
    headers = auth(p.settings, role="integration", user="bridge")
    timeout = request_timeout or p.settings.inbound_timeout_s + 10
    load = Load()
    async with httpx.AsyncClient(base_url=p.base_url, headers=headers, timeout=timeout,
                                 # idle connections closed before uvicorn's 5 s keep-alive closes them under us
                                 limits=httpx.Limits(max_connections=200, keepalive_expiry=2)) as client:
        fault_task = asyncio.create_task(fault()) if fault else None
        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))  # pacing, not waiting on a state
            sent = Sent(f"{tag}.{i}", time.monotonic())
            load.sent.append(sent)
            tasks.append(asyncio.create_task(_post(client, sent, contacts, i)))
        await asyncio.gather(*tasks)
        if fault_task:
            await fault_task
    return load


def resend(p: Pipeline, sends: list[Sent], *, timeout: float = 60) -> None:
    """A sender's retries: post every message again until it is accepted (202), within `timeout`."""
    headers = auth(p.settings, role="integration", user="bridge")
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=p.base_url, headers=headers, timeout=p.settings.inbound_timeout_s + 10) as c:
        for i, s in enumerate(sends):
            while True:
                try:
                    r = c.post("/v1/inbound-messages", json=inbound_body(s.message_id, contact=f"62811{i % 25:05d}"))
                    if r.status_code == 202:
                        break
                    assert r.status_code == 503, f"resend of {s.message_id}: {r.status_code} {r.text}"
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"{s.message_id} still not accepted after {timeout}s"
                time.sleep(0.2)


def first_accepted_after(load: Load, t: float) -> float | None:
    """Seconds from `t` until the first request sent after `t` that was accepted."""
    after = [s.at for s in load.sent if s.at >= t and s.status == 202]
    return (min(after) - t) if after else None


# ---- accounting -----------------------------------------------------------------------------
def store_message_ids(settings: Settings) -> Counter[str]:
    """Channel message ids of the MessageReceived events in the event store, with multiplicity."""
    app = open_event_store(settings)
    try:
        with app.connection() as conn:
            rows = conn.execute(
                f"SELECT originator_id, originator_version, topic, state FROM {app.table('inbox_events')}"
                " WHERE topic LIKE %s", ("%MessageReceived",)
            ).fetchall()
        return Counter(
            app.decode(StoredEvent(r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
                       ).channel_message_id
            for r in rows
        )
    finally:
        app.close()


def projected_message_ids(settings: Settings) -> Counter[str]:
    rows = query(settings, "SELECT channel_message_id FROM messages WHERE direction = 'inbound'")
    return Counter(r[0] for r in rows)


@dataclass
class Figures:
    """What one fault case prints at the end of the session (tests/faults/conftest.py)."""

    case: str
    requests: int = 0
    accepted: int = 0
    refused_503: int = 0
    recorded: int = 0
    lost: int = 0
    duplicates: int = 0
    recover_s: float | None = None
    other: Counter[int | str] = field(default_factory=Counter)

    def line(self) -> str:
        rec = "n/a" if self.recover_s is None else f"{self.recover_s:.1f}"
        others = ", ".join(f"{k}:{v}" for k, v in sorted(self.other.items(), key=str)) or "-"
        return (f"{self.case}: requests={self.requests} 202={self.accepted} 503={self.refused_503}"
                f" recorded={self.recorded} lost={self.lost} duplicates={self.duplicates}"
                f" recover_s={rec} other={others}")


def account(figures: Figures, load: Load, settings: Settings) -> tuple[list[str], list[str]]:
    """Fill the figures from the store; returns (lost ids, duplicated ids) over the accepted requests."""
    stored = store_message_ids(settings)
    accepted = [s.message_id for s in load.with_status(202)]
    figures.requests = len(load.sent)
    figures.accepted = len(accepted)
    figures.refused_503 = len(load.with_status(503))
    figures.other = Counter({k: v for k, v in load.statuses().items() if k not in (202, 503)})
    figures.recorded = sum(1 for s in load.sent if stored[s.message_id])
    lost = [m for m in accepted if stored[m] == 0]
    dup = [s.message_id for s in load.sent if stored[s.message_id] > 1]
    figures.lost, figures.duplicates = len(lost), len(dup)
    return lost, dup


def assert_every_accepted_is_projected_once(p: Pipeline, load: Load, timeout: float = 90) -> None:
    """Each message answered 202 appears exactly once in the projections' message history."""
    want = {s.message_id for s in load.with_status(202)}

    def seen() -> bool:
        projected = projected_message_ids(p.settings)
        return want <= set(projected)

    wait_until(seen, timeout=timeout, interval=0.5,
               what=f"all {len(want)} accepted messages in the projections;"
                    f" worker log:\n{p.log_tail('worker')}\nrelay log:\n{p.log_tail('relay')}")
    projected = projected_message_ids(p.settings)
    assert [m for m in want if projected[m] != 1] == []


def canary(p: Pipeline, timeout: float = 60) -> float:
    """One fresh inbound message must become visible through GET /v1/rooms/{id}; returns the seconds it took."""
    mid = f"canary.{uuid.uuid4().hex[:8]}"
    text = f"canary {mid}"
    start = time.monotonic()
    headers = auth(p.settings, role="integration", user="bridge")

    def post() -> httpx.Response | None:
        try:
            r = httpx.post(f"{p.base_url}/v1/inbound-messages", headers=headers, timeout=30,
                           json=inbound_body(mid, contact=f"canary-{mid}", text=text))
            return r if r.status_code == 202 else None
        except httpx.TransportError:
            return None

    accepted = wait_until(post, timeout=timeout, interval=0.5, what="the canary to be accepted (202)")
    room_id = accepted.json()["room_id"]
    admin = auth(p.settings)

    def visible() -> bool:
        r = p.http.get(f"/v1/rooms/{room_id}", headers=admin, timeout=10)
        return r.status_code == 200 and (r.json().get("last_message") or {}).get("text") == text

    wait_until(visible, timeout=timeout, interval=0.25,
               what=f"the canary in GET /v1/rooms/{room_id}; worker log:\n{p.log_tail('worker')}")
    return time.monotonic() - start


def assert_retries_record_each_once(p: Pipeline, load: Load, figures: Figures) -> None:
    """The sender retries every request not answered 202 (its 503s and unknown outcomes): then each
    message is recorded exactly once (`figures.recorded`) and every 202 projected once, and a
    canary comes out of the projections."""
    resend(p, load.unanswered())
    after = store_message_ids(p.settings)
    assert [s.message_id for s in load.sent if after[s.message_id] != 1] == [], "after the retries: once each"
    figures.recorded = sum(1 for s in load.sent if after[s.message_id])
    assert_every_accepted_is_projected_once(p, load)
    canary(p)


def terminate_backends(settings: Settings, application_name: str) -> int:
    """pg_terminate_backend on every connection of the application (by its application_name)."""
    with psycopg.connect(settings.database_url or "", autocommit=True, application_name="faults-killer") as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return len(rows)


@contextmanager
def own_postgres(
    settings: Settings, adjust: Callable[[Settings], Settings],
) -> Iterator[tuple[EmbeddedPostgres, Settings]]:
    """A PostgreSQL server of this test alone, migrated, with `adjust(settings pointed at it)` (a
    case that restarts the server must not break the other tests sharing the session's one)."""
    # Not under tmp_path: as root, the library runs pg_ctl as another user, which must reach the directory.
    base = Path(tempfile.mkdtemp(prefix="inbox-faults-pg-"))
    base.chmod(0o755)
    pg = EmbeddedPostgres(base / "pg").start()
    try:
        own = adjust(replace(settings, database_url=pg.url))
        migrate(own)
        yield pg, own
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
