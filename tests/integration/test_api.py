"""The HTTP API on the real PostgreSQL (projections applied directly, without Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inbox.adapters.auth import mint_token
from inbox.config import Settings
from tests.support import auth, project_all

pytestmark = pytest.mark.integration


@pytest.fixture
def wa_account(client: TestClient, admin: dict[str, str]) -> dict[str, Any]:
    r = client.post("/v1/channel-accounts", headers=admin,
                    json={"channel": "whatsapp_cloud", "external_id": "1234567890", "name": "Sales"})
    assert r.status_code == 201, r.text
    return r.json()


def inbound(client: TestClient, headers: dict[str, str], *, contact: str = "6281234567890", mid: str = "wamid.1",
            text: str = "Halo", name: str | None = "Budi Santoso", at: datetime | None = None) -> Any:
    return client.post("/v1/inbound-messages", headers=headers, json={
        "channel": "whatsapp_cloud", "channel_account": "1234567890",
        "contact": {"id": contact, "name": name, "phone": f"+{contact}"},
        "message": {"id": mid, "text": text, "sent_at": (at or datetime.now(UTC)).isoformat()},
    })


# ---- auth and errors ----------------------------------------------------------------------------
def test_requests_without_a_valid_token_are_unauthorized(client: TestClient, db_settings: Settings) -> None:
    assert client.get("/v1/inbox/counters").status_code == 401
    bad = client.get("/v1/inbox/counters", headers={"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401 and "invalid token" in bad.json()["detail"]
    foreign = mint_token("another-secret-of-another-deployment-0123456789", org="org1", user="u", role="admin")
    assert client.get("/v1/inbox/counters", headers={"Authorization": f"Bearer {foreign}"}).status_code == 401
    expired = mint_token(db_settings.jwt_secret or "", org="org1", user="u", role="admin", ttl_s=-10)
    r = client.get("/v1/inbox/counters", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json() == {"detail": "token expired"}


def test_roles_not_allowed_get_forbidden(client: TestClient, db_settings: Settings, wa_account: dict[str, Any]) -> None:
    agent = auth(db_settings, role="agent", user="agent1")
    r = client.post("/v1/channel-accounts", headers=agent, json={"channel": "instagram", "external_id": "1", "name": "x"})
    assert r.status_code == 403
    assert inbound(client, agent).status_code == 403
    assert client.get("/v1/inbox/counters", headers=auth(db_settings, role="integration")).status_code == 403


def test_bad_bodies_get_422_with_a_readable_message(client: TestClient, admin: dict[str, str], integration: dict[str, str],
                                                    wa_account: dict[str, Any]) -> None:
    r = client.post("/v1/channel-accounts", headers=admin, json={"channel": "telegram", "external_id": "1", "name": "x"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], str) and "channel" in r.json()["detail"]
    naive = client.post("/v1/inbound-messages", headers=integration, json={
        "channel": "whatsapp_cloud", "channel_account": "1234567890", "contact": {"id": "62811"},
        "message": {"id": "m1", "text": "hi", "sent_at": "2026-01-01T10:00:00"},
    })
    assert naive.status_code == 422 and "sent_at" in naive.json()["detail"]
    broken = client.post("/v1/inbound-messages", headers={**integration, "content-type": "application/json"}, content=b"{nope")
    assert broken.status_code == 422


def test_unknown_channel_account_is_422(client: TestClient, integration: dict[str, str]) -> None:
    r = inbound(client, integration)
    assert r.status_code == 422 and "unknown whatsapp_cloud channel account" in r.json()["detail"]


def test_another_organizations_account_is_unknown_to_the_caller(client: TestClient, db_settings: Settings,
                                                                 wa_account: dict[str, Any]) -> None:
    r = inbound(client, auth(db_settings, role="integration", org="org2"))
    assert r.status_code == 422


def test_bodies_over_the_limit_get_413(client: TestClient, integration: dict[str, str], db_settings: Settings) -> None:
    huge = b'{"x": "' + b"a" * (db_settings.max_body_bytes + 10) + b'"}'
    r = client.post("/v1/inbound-messages", headers={**integration, "content-type": "application/json"}, content=huge)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_registering_an_account_twice_is_409(client: TestClient, admin: dict[str, str], wa_account: dict[str, Any]) -> None:
    r = client.post("/v1/channel-accounts", headers=admin,
                    json={"channel": "whatsapp_cloud", "external_id": "1234567890", "name": "Again"})
    assert r.status_code == 409


# ---- the inbox, through the projections -----------------------------------------------------
def test_inbound_message_shows_in_rooms_counters_and_history(client: TestClient, db_settings: Settings,
                                                             admin: dict[str, str], integration: dict[str, str],
                                                             wa_account: dict[str, Any]) -> None:
    at = datetime.now(UTC) - timedelta(minutes=5)
    accepted = inbound(client, integration, at=at)
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["duplicate"] is False and body["version"] == 2
    assert inbound(client, integration, at=at).json()["duplicate"] is True

    project_all(db_settings)

    counters = client.get("/v1/inbox/counters", headers=admin).json()
    assert counters["messages"] == 1 and counters["comments"] == 0 and counters["unassigned"] == 1
    assert counters["statuses"] == {"all": 1, "unassigned": 1, "assigned": 0, "resolved": 0}
    rooms = client.get("/v1/rooms", params={"tab": "messages", "status": "unassigned"}, headers=admin).json()
    assert rooms["next_cursor"] is None and len(rooms["items"]) == 1
    room = rooms["items"][0]
    assert room["id"] == body["room_id"] and room["awaiting_reply"] is True and room["expired"] is False
    assert room["contact"] == {"id": "6281234567890", "name": "Budi Santoso", "handle": None, "phone": "+6281234567890"}
    assert room["last_message"]["text"] == "Halo" and room["last_message"]["direction"] == "inbound"
    assert datetime.fromisoformat(room["expires_at"]) == at + timedelta(hours=24)
    history = client.get(f"/v1/rooms/{body['room_id']}/messages", headers=admin).json()
    assert [m["text"] for m in history["items"]] == ["Halo"] and history["next_before"] is None
    assert history["items"][0]["channel_message_id"] == "wamid.1"


def test_reply_assign_resolve_flow(client: TestClient, db_settings: Settings, admin: dict[str, str],
                                   integration: dict[str, str], wa_account: dict[str, Any]) -> None:
    room_id = inbound(client, integration).json()["room_id"]
    agent = auth(db_settings, role="agent", user="agent1")
    other_agent = auth(db_settings, role="agent", user="agent2")
    spv = auth(db_settings, role="supervisor", user="spv1")

    reply = client.post(f"/v1/rooms/{room_id}/messages", headers=agent, json={"text": "Halo kak, ada yang bisa dibantu?"})
    assert reply.status_code == 201 and reply.json()["version"] == 4 and reply.json()["message_id"]
    # The room is now agent1's: agent2 cannot see it, take it, or even learn it exists.
    assert client.post(f"/v1/rooms/{room_id}/assign", headers=other_agent, json={"agent_id": "agent2"}).status_code == 404
    conflict = client.post(f"/v1/rooms/{room_id}/assign", headers=spv, json={"agent_id": "agent2", "expected_version": 3})
    assert conflict.status_code == 409
    project_all(db_settings)

    assert client.get(f"/v1/rooms/{room_id}", headers=other_agent).status_code == 404
    mine = client.get("/v1/inbox/counters", headers=agent).json()
    assert mine["statuses"]["assigned"] == 1 and mine["messages"] == 0
    assert client.get("/v1/inbox/counters", headers=other_agent).json()["statuses"]["all"] == 0

    resolved = client.post(f"/v1/rooms/{room_id}/resolve", headers=agent)
    assert resolved.status_code == 200 and resolved.json() == {"room_id": room_id, "version": 5, "message_id": None}
    assert client.post(f"/v1/rooms/{room_id}/resolve", headers=spv).status_code == 409
    project_all(db_settings)
    assert client.get("/v1/inbox/counters", headers=admin).json()["statuses"] == {
        "all": 1, "unassigned": 0, "assigned": 0, "resolved": 1}


def test_room_of_another_organization_is_404(client: TestClient, db_settings: Settings, integration: dict[str, str],
                                             wa_account: dict[str, Any]) -> None:
    room_id = inbound(client, integration).json()["room_id"]
    project_all(db_settings)
    outsider = auth(db_settings, role="admin", org="org2")
    assert client.get(f"/v1/rooms/{room_id}", headers=outsider).status_code == 404
    assert client.get(f"/v1/rooms/{room_id}/messages", headers=outsider).status_code == 404
    assert client.post(f"/v1/rooms/{room_id}/resolve", headers=outsider).status_code == 404
    assert client.get("/v1/rooms/not-a-uuid", headers=outsider).status_code == 404


def test_rooms_and_history_paginate_with_opaque_cursors(client: TestClient, db_settings: Settings,
                                                        admin: dict[str, str], integration: dict[str, str],
                                                        wa_account: dict[str, Any]) -> None:
    for i in range(7):
        inbound(client, integration, contact=f"62811{i}", mid=f"room-{i}")
    for i in range(9):
        inbound(client, integration, contact="628110", mid=f"hist-{i}", text=f"line {i}")
    project_all(db_settings)

    seen, cursor = [], None
    while True:
        page = client.get("/v1/rooms", params={"limit": 3, **({"cursor": cursor} if cursor else {})}, headers=admin).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 7

    room_id = client.get("/v1/rooms", params={"limit": 1}, headers=admin).json()["items"][0]["id"]
    texts, before = [], None
    while True:
        page = client.get(f"/v1/rooms/{room_id}/messages", params={"limit": 4, **({"before": before} if before else {})},
                          headers=admin).json()
        texts += [m["text"] for m in page["items"]]
        before = page["next_before"]
        if not before:
            break
    assert texts == [f"line {i}" for i in reversed(range(9))] + ["Halo"]
    assert client.get("/v1/rooms", params={"cursor": "garbage!"}, headers=admin).status_code == 422


def test_operations_endpoints(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] is True  # no relay/workers here
    assert "inbox_http_request_seconds" in client.get("/metrics").text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/rooms", "/v1/inbox/counters", "/v1/inbound-messages", "/v1/channel-accounts"} <= set(paths)
