"""Resolve all expired on 10,000 rooms through a real `inbox api` process, while it keeps serving.

The rooms are written through the real write path (Room aggregates saved with app.save, many per
transaction) and projected with project_all; then one supervisor resolves them all with one
request while other clients read the inbox and customers keep writing. The bulk resolve works in
short chunked transactions on a request thread, so the other requests keep being answered (how
fast they are meanwhile is a figure for bench/, not an assertion here).

A scale test: it runs with INBOX_TEST_SCALE=1 (`.ci/run` sets it), not in the default command.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from inbox.config import Settings
from tests.support import Pipeline, auth, http_settings, project_all, query, running, write_expired_rooms

pytestmark = [pytest.mark.e2e, pytest.mark.scale]

ROOMS = 10_000
ORG = "org1"


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    write_expired_rooms(settings, ORG, ROOMS, account="pn-scale", phone_prefix="62812")
    project_all(settings)
    with running(http_settings(settings), tmp_path, "api") as p:
        yield p


def test_ten_thousand_expired_rooms_resolve_while_the_api_keeps_answering(api: Pipeline) -> None:
    spv = auth(api.settings, role="supervisor", user="spv1")
    admin = auth(api.settings, role="admin", user="admin1")
    bridge = auth(api.settings, role="integration", user="bridge")
    assert query(api.settings, "SELECT count(*) FROM rooms WHERE expires_at < now() AND status = 'assigned'") == [(ROOMS,)]
    result: dict[str, object] = {}

    def bulk_resolve() -> None:
        with httpx.Client(base_url=api.base_url, timeout=600) as c:
            result["response"] = c.post("/v1/rooms/resolve-expired", headers=spv, json={"channels": ["whatsapp_cloud"]})

    worker = threading.Thread(target=bulk_resolve)
    answered_while_resolving = 0
    with httpx.Client(base_url=api.base_url, timeout=30) as c:
        worker.start()
        i = 0
        while worker.is_alive():
            i += 1
            assert c.get("/v1/inbox/counters", headers=admin).status_code == 200
            assert c.get("/v1/rooms", headers=admin, params={"tab": "messages", "limit": 50}).status_code == 200
            r = c.post("/v1/inbound-messages", headers=bridge, json={
                "channel": "whatsapp_cloud", "channel_account": "pn-scale", "contact": {"id": f"62899{i:07d}"},
                "message": {"id": f"during.{i}", "text": "halo", "sent_at": datetime.now(UTC).isoformat()},
            })
            assert r.status_code == 202, r.text
            answered_while_resolving += 1
            time.sleep(0.02)
        worker.join(timeout=30)

    response = result["response"]
    assert isinstance(response, httpx.Response) and response.status_code == 200, response
    assert response.json() == {"resolved": ROOMS, "skipped": 0, "unreadable": []}
    assert answered_while_resolving > 0
    # Every room got its RoomResolved with reason "expired"; a repeat resolves nothing.
    [(resolved_events,)] = query(
        api.settings,
        "SELECT count(*) FROM inbox_events WHERE topic LIKE 'domain.room:Room.RoomResolved%%'"
        " AND convert_from(state, 'UTF8')::jsonb ->> 'reason' = 'expired'",
    )
    assert resolved_events == ROOMS
    project_all(api.settings)
    again = httpx.post(f"{api.base_url}/v1/rooms/resolve-expired", headers=spv, json={}, timeout=60)
    assert again.json() == {"resolved": 0, "skipped": 0, "unreadable": []}
