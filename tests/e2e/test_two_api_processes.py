"""Two real `inbox api` processes recording inbound messages for the same rooms at once.

Each process decides on its own copy of a room and both write under the event store's table lock,
so one keeps finding that the other wrote the room first. Inbound messages must still never fail
for that: every message is answered 202 (no 409, no 5xx) and recorded exactly once, in one
unbroken run of versions per room.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from inbox.config import Settings
from tests.support import Pipeline, auth, http_settings, query

pytestmark = pytest.mark.e2e

ACCOUNT = "pn-shared"
ROOMS = 3  # few rooms: nearly every batch of one process writes a room the other just wrote
CONNECTIONS_PER_API = 16
MESSAGES = 1200


@pytest.fixture
def two_apis(settings: Settings, tmp_path: Path) -> Iterator[tuple[Pipeline, Pipeline]]:
    """Two API processes on their own ports, same database; the account registered and known to both."""
    pipelines: list[Pipeline] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            p = Pipeline(http_settings(settings), tmp_path / name)
            pipelines.append(p)
            p.start("api")
        for p in pipelines:
            p.wait_for_api()
        first, second = pipelines
        r = httpx.post(f"{first.base_url}/v1/channel-accounts", headers=auth(first.settings, role="admin"),
                       json={"channel": "whatsapp_cloud", "external_id": ACCOUNT, "name": "Shared"})
        assert r.status_code == 201, r.text
        yield first, second
    finally:
        for p in pipelines:
            p.stop_all()


def body(message_id: str, contact: str) -> dict[str, object]:
    return {
        "channel": "whatsapp_cloud", "channel_account": ACCOUNT, "contact": {"id": contact, "name": "Customer"},
        "message": {"id": message_id, "text": f"text of {message_id}", "sent_at": datetime.now(UTC).isoformat()},
    }


async def send_all(apis: tuple[Pipeline, Pipeline], message_ids: list[str]) -> dict[str, int]:
    """Every message POSTed once over keep-alive connections spread evenly over both processes."""
    headers = auth(apis[0].settings, role="integration", user="bridge")
    clients = [httpx.AsyncClient(base_url=p.base_url, headers=headers, timeout=120)
               for p in apis for _ in range(CONNECTIONS_PER_API)]
    todo = iter(enumerate(message_ids))
    answers: dict[str, int] = {}

    async def connection(client: httpx.AsyncClient) -> None:
        for i, message_id in todo:
            r = await client.post("/v1/inbound-messages", json=body(message_id, f"62813{i % ROOMS:05d}"))
            answers[message_id] = r.status_code

    try:
        await asyncio.gather(*(connection(c) for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return answers


def test_inbound_messages_to_shared_rooms_through_two_api_processes_are_each_recorded_once(
    two_apis: tuple[Pipeline, Pipeline],
) -> None:
    settings = two_apis[0].settings
    message_ids = [f"m.shared.{i}" for i in range(MESSAGES)]

    answers = asyncio.run(send_all(two_apis, message_ids))

    assert Counter(answers.values()) == {202: MESSAGES}
    recorded = [r[0] for r in query(settings, "SELECT channel_message_id FROM inbound_dedup")]
    assert sorted(recorded) == sorted(message_ids)
    received = query(settings, "SELECT count(*) FROM inbox_events WHERE topic LIKE '%%MessageReceived'")[0][0]
    assert received == MESSAGES
    runs = query(settings, "SELECT count(*), min(originator_version), max(originator_version) FROM inbox_events"
                           " WHERE topic LIKE 'domain.room:%%' GROUP BY originator_id")
    assert len(runs) == ROOMS
    assert all((low, high) == (1, count) for count, low, high in runs)
