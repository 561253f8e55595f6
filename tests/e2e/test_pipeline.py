"""End to end through real processes: HTTP in → PostgreSQL → relay → Kafka → Faust → projections → HTTP out."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from inbox.config import Settings
from tests.support import (
    Pipeline,
    auth,
    counters_table,
    http_settings,
    projection_totals,
    query,
    read_topic,
    recount,
    running,
    store_totals,
    wait_until,
)

pytestmark = pytest.mark.e2e

ENVELOPE = {"id", "type", "schema_version", "org_id", "room_id", "version", "occurred_at", "data"}


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    with running(http_settings(settings), tmp_path, "worker", "relay", "api") as p:
        yield p


def register_account(p: Pipeline) -> None:
    r = httpx.post(f"{p.base_url}/v1/channel-accounts", headers=auth(p.settings, role="admin"),
                   json={"channel": "whatsapp_cloud", "external_id": "pn-e2e", "name": "E2E"})
    assert r.status_code == 201, r.text


def send_burst(p: Pipeline, n: int, *, contacts: int = 40, tag: str = "m") -> list[dict[str, Any]]:
    headers = auth(p.settings, role="integration", user="bridge")

    def one(c: httpx.Client, i: int) -> dict[str, Any]:
        r = c.post("/v1/inbound-messages", headers=headers, json={
            "channel": "whatsapp_cloud", "channel_account": "pn-e2e",
            "contact": {"id": f"62812{i % contacts:05d}", "name": f"Customer {i % contacts}"},
            "message": {"id": f"{tag}.{i}", "text": f"pesan {i}", "sent_at": datetime.now(UTC).isoformat()},
        })
        assert r.status_code == 202, r.text
        return r.json()

    # 16 concurrent callers, each with a client of its own for all its requests (a client per
    # request would spend more CPU building its TLS context, ~30 ms, than the request takes; one
    # client shared by the threads failed a run with "Bad file descriptor": httpcore's pool closed
    # a connection another thread was reading).
    local = threading.local()
    clients: list[httpx.Client] = []

    def client() -> httpx.Client:
        if (c := getattr(local, "client", None)) is None:
            c = local.client = httpx.Client(base_url=p.base_url, timeout=30)
            clients.append(c)
        return c

    try:
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda i: one(client(), i), range(n)))
    finally:
        for c in clients:
            c.close()


def assert_projections_exact(p: Pipeline) -> None:
    p.wait_until_projected()
    assert counters_table(p.settings) == recount(p.settings)
    assert query(p.settings, "SELECT count(*) FROM messages")[0][0] == query(
        p.settings, "SELECT count(*) FROM inbox_events WHERE topic LIKE '%%MessageReceived' OR topic LIKE '%%MessageSent'"
    )[0][0]


def test_http_in_kafka_and_projections_out(pipeline: Pipeline) -> None:
    register_account(pipeline)
    accepted = send_burst(pipeline, 120, contacts=12)
    admin = auth(pipeline.settings, role="admin")
    agent = auth(pipeline.settings, role="agent", user="agent-7")
    room_id = accepted[0]["room_id"]
    reply = httpx.post(f"{pipeline.base_url}/v1/rooms/{room_id}/messages", headers=agent, json={"text": "Siap, kami bantu"})
    assert reply.status_code == 201

    def counters() -> dict[str, Any]:
        return pipeline.http.get("/v1/inbox/counters", headers=admin).json()

    seen = wait_until(lambda: (c := counters())["statuses"]["all"] == 12 and c["statuses"]["assigned"] == 1 and c,
                      timeout=90, what="counters over HTTP")
    assert seen["messages"] == 11 and seen["unassigned"] == 11
    room = httpx.get(f"{pipeline.base_url}/v1/rooms/{room_id}", headers=admin).json()
    assert room["assignee"] == "agent-7" and room["awaiting_reply"] is False
    assert room["last_message"]["text"] == "Siap, kami bantu"
    assert_projections_exact(pipeline)
    wait_until(lambda: pipeline.http.get("/readyz").status_code == 200, timeout=30, what="/readyz")

    # Downstream view: a plain aiokafka consumer sees the SPEC §4 contract, in order per room.
    records = read_topic(pipeline.settings, 120 + 12 + 2)
    per_room: dict[str, list[int]] = defaultdict(list)
    for key, event in records:
        assert set(event) == ENVELOPE and key.decode() == event["room_id"]
        per_room[event["room_id"]].append(event["version"])
    assert len(per_room) == 12
    assert all(v == list(range(1, len(v) + 1)) for v in per_room.values())


def test_killing_the_worker_mid_stream_loses_nothing(pipeline: Pipeline) -> None:
    register_account(pipeline)
    send_burst(pipeline, 150, tag="before")
    wait_until(lambda: projection_totals(pipeline.settings)[1] > 0, timeout=90, what="the worker to start projecting")

    with ThreadPoolExecutor(1) as bg:
        burst = bg.submit(send_burst, pipeline, 300, tag="during")
        wait_until(lambda: projection_totals(pipeline.settings)[1] > store_totals(pipeline.settings)[1] // 3,
                   timeout=60, what="some progress")
        pipeline.kill("worker")
        burst.result(timeout=300)
    pipeline.start("worker")

    assert_projections_exact(pipeline)
    assert projection_totals(pipeline.settings) == store_totals(pipeline.settings)


def test_killing_the_relay_mid_stream_loses_nothing(pipeline: Pipeline) -> None:
    register_account(pipeline)
    with ThreadPoolExecutor(1) as bg:
        burst = bg.submit(send_burst, pipeline, 400, tag="r")
        wait_until(lambda: query(pipeline.settings, "SELECT coalesce(max(notification_id), 0) FROM relay_position")[0][0] > 0,
                   timeout=60, what="the relay to publish something")
        pipeline.kill("relay")
        burst.result(timeout=300)
    pipeline.start("relay")

    assert_projections_exact(pipeline)
    rooms, versions = store_totals(pipeline.settings)
    records = read_topic(pipeline.settings, versions)
    assert {(e["room_id"], e["version"]) for _, e in records} == {
        (str(r), v) for r, v in query(
            pipeline.settings,
            "SELECT originator_id, originator_version FROM inbox_events WHERE topic LIKE 'domain.room:%%'")
    }


def test_two_workers_produce_the_same_projections_as_one(settings: Settings, tmp_path: Path) -> None:
    p = Pipeline(http_settings(settings), tmp_path)
    p.start("worker-1", "worker")
    p.start("worker-2", "worker")
    p.start("relay")
    p.start("api")
    try:
        p.wait_for_api()
        wait_until(lambda: query(p.settings, "SELECT count(*) FROM worker_heartbeats WHERE kind = 'projector'")[0][0] == 2,
                   timeout=60, what="two workers")
        register_account(p)
        send_burst(p, 400, contacts=80)
        assert_projections_exact(p)
        live = (query(p.settings, "SELECT * FROM rooms ORDER BY id"), counters_table(p.settings))
        # Both workers took part: the topic's partitions were split between them.
        wait_until(lambda: all(n > 0 for (n,) in query(
            p.settings, "SELECT events FROM worker_heartbeats WHERE kind = 'projector'")), timeout=15,
            what="both workers to report events")
    finally:
        p.stop_all()

    from inbox.bootstrap import replay

    asyncio.run(replay(p.settings))  # one sequential writer over the same events
    assert (query(p.settings, "SELECT * FROM rooms ORDER BY id"), counters_table(p.settings)) == live
