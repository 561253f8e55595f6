"""The sender and the reports consumer under infrastructure faults (issue 9 follow-up).

`inbox api|relay|worker|sender|reports` run against the stand-in Graph API while staff replies
stream in; meanwhile the database connections of the sender and the reports consumer are
terminated, PostgreSQL itself is restarted, or the broker is restarted (losing the topic: the
embedded Tansu keeps nothing). Afterwards every reply reached the stand-in exactly once (the
documented duplicate window — a sender killed between the request and its record — is not hit
by these faults), every reply is `sent` on its room, the reports equal a recount from the event
store, and neither process exited.

Figures: `requests` replies posted, `202` the ones answered 201, `recorded` the ones the stand-in
received, `lost` the ones it never received, `duplicates` the ones it received more than once,
`recover_s` seconds from the end of the fault until every reply was sent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from inbox.adapters.embedded import EmbeddedBroker, EmbeddedPostgres
from inbox.adapters.secrets import generate_key
from inbox.bootstrap import replay
from inbox.config import Settings
from tests.faults.conftest import fault_settings
from tests.faults.harness import own_postgres as harness_own_postgres
from tests.faults.harness import Figures, terminate_backends
from tests.graph_standin.server import GraphStandin
from tests.support import Pipeline, auth, free_test_port, query, store_totals, wait_until

pytestmark = pytest.mark.faults

WA = "106540352242922"
TOKEN = "EAAG-faults-token"
ROOMS = 30  # 2 replies each: within the per-recipient pacing burst, so recover_s is not pacing
REPLIES_PER_S = 10
REPORT_TABLES = ("report_cycles", "report_counts", "report_backlog")


class Outbound:
    """The five processes; the sender's and the reports consumer's database connections carry their
    own application_name, so a test can terminate just those."""

    def __init__(self, settings: Settings, tmp_path: Path, graph: GraphStandin) -> None:
        self.graph = graph
        self.core = Pipeline(replace(settings, meta_graph_url=graph.url), tmp_path)
        params = conninfo_to_dict(settings.database_url or "")
        self.out_app = f"inbox-{settings.db_schema}-out"
        self.out_url = make_conninfo(**{**params, "application_name": self.out_app})

    @property
    def settings(self) -> Settings:
        return self.core.settings

    def start(self) -> None:
        for role in ("worker", "relay", "api"):
            self.core.start(role)
        for role in ("sender", "reports"):
            self.core.processes.start(role, env={"INBOX_DATABASE_URL": self.out_url})
        self.core.wait_for_api()

    def stop(self) -> None:
        self.core.stop_all()

    def still_running(self) -> dict[str, int | None]:
        """Exit codes of the sender and reports processes (None: still running)."""
        return {name: self.core.processes.running[name].returncode for name in ("sender", "reports")}

    def connect(self) -> None:
        self.graph.grant(WA, TOKEN, verified_name="Acme", display_phone_number="+1 555")
        r = httpx.post(f"{self.core.base_url}/v1/channel-accounts", headers=auth(self.settings), timeout=30, json={
            "channel": "whatsapp_cloud", "external_id": WA, "name": "Faults", "access_token": TOKEN})
        assert r.status_code == 201, r.text

    def rooms(self, n: int) -> list[str]:
        headers = auth(self.settings, role="integration", user="bridge")
        out = []
        for i in range(n):
            r = self.core.http.post("/v1/inbound-messages", headers=headers, json={
                "channel": "whatsapp_cloud", "channel_account": WA, "contact": {"id": f"62877{i:05d}"},
                "message": {"id": f"wamid.of.{uuid.uuid4().hex[:8]}", "text": "halo",
                                                                 "sent_at": datetime.now(UTC).isoformat()}})
            assert r.status_code == 202, r.text
            out.append(r.json()["room_id"])
        return out


@pytest.fixture
def graph() -> Iterator[GraphStandin]:
    with GraphStandin() as g:
        yield g


def _settings(settings: Settings) -> Settings:
    return replace(fault_settings(settings), secret_key=generate_key())


async def reply_stream(o: Outbound, rooms: list[str], *, seconds: float, tag: str,
                       fault: Callable[[], Awaitable[None]] | None = None) -> list[tuple[str, str | int]]:
    """REPLIES_PER_S staff replies a second, round robin over the rooms (bounded); returns (room, message id
    or the status of a refused post). The API's database is not faulted here, so every post is answered."""
    headers = auth(o.settings, role="agent", user="agent1")
    out: list[tuple[str, str | int]] = []
    async with httpx.AsyncClient(base_url=o.core.base_url, headers=headers, timeout=30) as client:
        fault_task = asyncio.create_task(fault()) if fault else None
        start = time.monotonic()
        for i in range(int(REPLIES_PER_S * seconds)):
            await asyncio.sleep(max(0.0, start + i / REPLIES_PER_S - time.monotonic()))
            room = rooms[i % len(rooms)]
            r = await client.post(f"/v1/rooms/{room}/messages", json={"text": f"reply {i}"},
                                  headers={"Idempotency-Key": f"{tag}-{i}"})
            out.append((room, r.json()["message_id"] if r.status_code == 201 else r.status_code))
        if fault_task:
            await fault_task
    return out


def sent_ids(graph: GraphStandin) -> Counter[str]:
    return Counter(r.json.get("biz_opaque_callback_data") for r in graph.requests
                   if r.method == "POST" and isinstance(r.json, dict))


def delivery_statuses(settings: Settings, ids: list[str]) -> dict[str, str]:
    rows = query(settings, "SELECT message_id::text, state FROM sender_sends WHERE message_id = ANY(%s::uuid[])",
                 (ids,))
    return dict(rows)


def report_totals(settings: Settings) -> tuple[int, int]:
    rows = query(settings, "SELECT count(*), coalesce(sum(version), 0) FROM report_rooms")
    return int(rows[0][0]), int(rows[0][1])


def report_tables(settings: Settings) -> tuple[list[tuple[object, ...]], ...]:
    return tuple(query(settings, f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4") for t in REPORT_TABLES)


def assert_delivered_once_and_reported(o: Outbound, replies: list[tuple[str, str | int]], f: Figures,
                                       fault_end: float) -> None:
    """Every reply sent exactly once, `accepted` on the queue and `sent` on the room; reports == a recount."""
    ids = [m for _, m in replies if isinstance(m, str)]
    f.requests, f.accepted = len(replies), len(ids)
    f.other = Counter(m for _, m in replies if not isinstance(m, str))
    assert len(ids) == len(replies), f"every reply is recorded (the API is not faulted): {f.other}"

    def all_accepted() -> bool:
        states = delivery_statuses(o.settings, ids)
        return len(states) == len(ids) and set(states.values()) == {"accepted"}

    try:
        wait_until(all_accepted, timeout=120, interval=0.25, what="every reply accepted by the stand-in")
    except AssertionError as e:
        states = Counter(delivery_statuses(o.settings, ids).values())
        raise AssertionError(f"{e}\nqueue states: {states}\nsender log:\n{o.core.log_tail('sender')}") from None
    finally:
        counts = sent_ids(o.graph)
        f.recorded = sum(1 for m in ids if counts[m])
        f.lost = sum(1 for m in ids if not counts[m])
        f.duplicates = sum(1 for m in ids if counts[m] > 1)
        f.recover_s = time.monotonic() - fault_end
    assert f.lost == 0 and f.duplicates == 0, (
        f"sender log:\n{o.core.log_tail('sender')}\nstates: {Counter(delivery_statuses(o.settings, ids).values())}")
    dead = query(o.settings, "SELECT reason FROM sender_dead_letters")
    assert dead == [], f"a database fault dead-lettered a reply: {dead}"
    assert o.still_running() == {"sender": None, "reports": None}, "the processes stay up and reconnect"

    o.core.wait_until_projected(timeout=120)
    wait_until(lambda: report_totals(o.settings) == store_totals(o.settings), timeout=120, interval=0.25,
               what=f"reports to reach the store; log:\n{o.core.log_tail('reports')}")
    # Every reply is `sent` on its room (ReplyDeliveryAccepted recorded once).
    accepted = query(o.settings, "SELECT count(*) FROM inbox_events WHERE topic LIKE %s",
                     ("%ReplyDeliveryAccepted",))[0][0]
    assert accepted == len(ids)
    assert report_tables(o.settings) == recount(o.settings)


def recount(settings: Settings) -> tuple[list[tuple[object, ...]], ...]:
    """The reports rebuilt from the event store (`inbox replay --into` another schema)."""
    name = f"rep_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(replay(settings, into=name))
        return report_tables(replace(settings, db_schema=name))
    finally:
        with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def test_terminated_connections_of_the_sender_and_the_reports_consumer(
    settings: Settings, tmp_path: Path, graph: GraphStandin, figures: Callable[[str], Figures]
) -> None:
    f = figures("g terminate sender+reports backends")
    o = Outbound(_settings(settings), tmp_path, graph)
    done: list[float] = []

    async def kill_connections() -> None:
        for _ in range(4):
            await asyncio.sleep(1.0)
            killed = await asyncio.to_thread(terminate_backends, o.settings, o.out_app)
            assert killed > 0, "no sender/reports connection found to terminate"
        done.append(time.monotonic())

    try:
        o.start()
        o.connect()
        rooms = o.rooms(ROOMS)
        replies = asyncio.run(reply_stream(o, rooms, seconds=6, tag="term", fault=kill_connections))
        assert_delivered_once_and_reported(o, replies, f, done[0])
    finally:
        o.stop()


@pytest.fixture
def own_postgres(settings: Settings) -> Iterator[tuple[EmbeddedPostgres, Settings]]:
    """A PostgreSQL server of this test alone (restarting the shared one would break other sessions)."""
    with harness_own_postgres(settings, _settings) as pg_and_settings:
        yield pg_and_settings


def test_a_postgresql_restart_under_the_sender_and_the_reports_consumer(
    own_postgres: tuple[EmbeddedPostgres, Settings], tmp_path: Path, graph: GraphStandin,
    figures: Callable[[str], Figures]
) -> None:
    f = figures("g restart postgresql (sender+reports)")
    pg, own = own_postgres
    o = Outbound(own, tmp_path, graph)
    back: list[float] = []

    async def restart() -> None:
        await asyncio.sleep(2.0)
        await asyncio.to_thread(pg.stop)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(pg.start)
        back.append(time.monotonic())

    try:
        o.start()
        o.connect()
        rooms = o.rooms(ROOMS)
        # The API is down with the database: replies are posted before and after the restart.
        before = asyncio.run(reply_stream(o, rooms, seconds=2, tag="before"))
        asyncio.run(restart())
        o.core.wait_for_api()
        after = asyncio.run(_retrying_stream(o, rooms, seconds=3, tag="after"))
        assert_delivered_once_and_reported(o, before + after, f, back[0])
    finally:
        o.stop()


async def _retrying_stream(o: Outbound, rooms: list[str], *, seconds: float, tag: str) -> list[tuple[str, str | int]]:
    """Like reply_stream, once the API answers again after the restart (its pool reconnects)."""
    headers = auth(o.settings, role="agent", user="agent1")
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=o.core.base_url, headers=headers, timeout=30) as client:
        while True:
            r = await client.get(f"/v1/rooms/{rooms[0]}")
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, f"the API did not come back: {r.status_code}"
            await asyncio.sleep(0.25)
    return await reply_stream(o, rooms, seconds=seconds, tag=tag)


@pytest.fixture
def own_broker(settings: Settings, tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, Settings]]:
    broker = EmbeddedBroker(port=free_test_port(), log_path=tmp_path / "tansu.log").start()
    try:
        yield broker, _settings(replace(settings, kafka_bootstrap=broker.bootstrap))
    finally:
        broker.stop()


def test_a_broker_restart_under_the_sender_and_the_reports_consumer(
    own_broker: tuple[EmbeddedBroker, Settings], tmp_path: Path, graph: GraphStandin,
    figures: Callable[[str], Figures]
) -> None:
    f = figures("g restart broker (sender+reports)")
    broker, own = own_broker
    o = Outbound(own, tmp_path, graph)
    back: list[float] = []

    async def restart_broker() -> None:
        await asyncio.sleep(2.0)
        await asyncio.to_thread(broker.stop)  # memory only: the topic's data is gone
        await asyncio.to_thread(broker.start)
        back.append(time.monotonic())

    try:
        o.start()
        o.connect()
        rooms = o.rooms(ROOMS)
        replies = asyncio.run(reply_stream(o, rooms, seconds=6, tag="broker", fault=restart_broker))
        assert_delivered_once_and_reported(o, replies, f, back[0])
    finally:
        o.stop()
