"""Replies reach the customer (issue 9): API reply → `inbox sender` → the stand-in Graph API → outcome
events on the room → history; signed status webhooks tick the reply delivered / read.

Real processes (api, relay, worker, sender), real PostgreSQL and broker, the stand-in Graph API on
loopback (tests/graph_standin) in place of Meta.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg.types.json import Jsonb

from inbox.adapters.secrets import generate_key
from inbox.config import Settings
from inbox.usecases.meta_webhooks import signature
from tests.graph_standin import GraphStandin, graph_standin  # noqa: F401  (fixture)
from tests.support import Pipeline, auth, execute, http_settings, query, wait_until

pytestmark = pytest.mark.e2e

WA, PAGE, IG = "106540352242922", "1000000001", "17841400000"
TOKEN = "EAAG-standin-token-1"


@pytest.fixture
def outbound(settings: Settings, tmp_path: Path, graph_standin: GraphStandin,  # noqa: F811
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    monkeypatch.setenv("INBOX_SENDER_BACKOFF_BASE_S", "0.05")
    monkeypatch.setenv("INBOX_SENDER_REAUTH_POLL_S", "0.2")
    s = replace(http_settings(settings), meta_graph_url=graph_standin.url, secret_key=generate_key())
    p = Pipeline(s, tmp_path)
    for role in ("worker", "relay", "api", "sender"):
        p.start(role)
    try:
        p.wait_for_api()
        yield p
    finally:
        p.stop_all()


def admin(p: Pipeline) -> dict[str, str]:
    return auth(p.settings, role="admin")


def agent(p: Pipeline) -> dict[str, str]:
    return auth(p.settings, role="agent", user="agent1")


def connect(p: Pipeline, standin: GraphStandin, channel: str, external_id: str, token: str = TOKEN,
            **fields: Any) -> dict[str, Any]:
    standin.grant(external_id, token, **fields)
    r = httpx.post(f"{p.base_url}/v1/channel-accounts", headers=admin(p), json={
        "channel": channel, "external_id": external_id, "name": f"{channel} account", "access_token": token})
    assert r.status_code == 201, r.text
    return r.json()


def inbound(p: Pipeline, channel: str, account: str, contact: str, mid: str, *, post_id: str | None = None,
            at: datetime | None = None) -> str:
    body: dict[str, Any] = {
        "channel": channel, "channel_account": account, "contact": {"id": contact},
        "message": {"id": mid, "text": "halo", "sent_at": (at or datetime.now(UTC)).isoformat()},
    }
    if post_id:
        body["post_id"] = post_id
    r = httpx.post(f"{p.base_url}/v1/inbound-messages", headers=auth(p.settings, role="integration", user="bridge"),
                   json=body)
    assert r.status_code == 202, r.text
    return r.json()["room_id"]


def reply(p: Pipeline, room_id: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{p.base_url}/v1/rooms/{room_id}/messages", headers={**agent(p), **(headers or {})},
                      json=body, timeout=30)


def delivery(p: Pipeline, room_id: str, message_id: str) -> tuple[dict[str, Any] | None, str | None]:
    r = httpx.get(f"{p.base_url}/v1/rooms/{room_id}/messages", headers=admin(p))
    if r.status_code != 200:
        return None, None
    found = next((m for m in r.json()["items"] if m["id"] == message_id), None)
    return (found["delivery"], found["channel_message_id"]) if found else (None, None)


def wait_status(p: Pipeline, room_id: str, message_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        d, _ = delivery(p, room_id, message_id)
        return d if d and d["status"] == status else None

    return wait_until(check, timeout=timeout, what=f"reply {message_id} {status}")


def post_webhook(p: Pipeline, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    r = httpx.post(f"{p.base_url}/webhooks/meta", content=body, headers={
        "content-type": "application/json",
        "X-Hub-Signature-256": signature(p.settings.meta_app_secret or "", body)})
    assert r.status_code == 200, r.text


def wa_status(wamid: str, status: str, recipient: str, at: int) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages",
            "value": {"messaging_product": "whatsapp",
                      "metadata": {"display_phone_number": "15550783881", "phone_number_id": WA},
                      "statuses": [{"id": wamid, "status": status, "timestamp": str(at), "recipient_id": recipient}]}}]}]}


def sends(standin: GraphStandin) -> list[Any]:
    return [r for r in standin.requests if r.method == "POST"]


# ---- per channel and reply kind ------------------------------------------------------------------
def test_whatsapp_text_reply_is_sent_then_delivered_then_read_never_backwards(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1 555")
    room = inbound(outbound, "whatsapp_cloud", WA, "16505551234", "wamid.in1")
    r = reply(outbound, room, {"text": "Pesanan Anda dikirim hari ini"})
    assert r.status_code == 201, r.text
    message_id = r.json()["message_id"]

    wait_status(outbound, room, message_id, "sent")
    [sent] = sends(graph_standin)
    assert sent.path == f"/v21.0/{WA}/messages"
    assert sent.token == TOKEN
    assert sent.json == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "16505551234",
        "biz_opaque_callback_data": message_id, "type": "text",
        "text": {"preview_url": False, "body": "Pesanan Anda dikirim hari ini"},
    }
    _, wamid = delivery(outbound, room, message_id)
    assert wamid and wamid.startswith("wamid.")

    now = int(time.time())
    post_webhook(outbound, wa_status(wamid, "delivered", "16505551234", now))
    wait_status(outbound, room, message_id, "delivered")
    post_webhook(outbound, wa_status(wamid, "read", "16505551234", now + 1))
    wait_status(outbound, room, message_id, "read")
    post_webhook(outbound, wa_status(wamid, "delivered", "16505551235", now + 2))  # late, other key: ignored
    post_webhook(outbound, wa_status(wamid, "sent", "16505551234", now + 3))
    time.sleep(0)  # nothing to wait for: the room refuses backwards statuses when recording them
    d, _ = delivery(outbound, room, message_id)
    assert d is not None and d["status"] == "read"
    room_json = httpx.get(f"{outbound.base_url}/v1/rooms/{room}", headers=admin(outbound)).json()
    assert room_json["last_message"]["delivery"]["status"] == "read"
    assert room_json["reply_window"]["free_form_until"] is not None


STANDIN_SAMPLES = Path(__file__).resolve().parents[1] / "graph_standin" / "fixtures"


def test_a_whatsapp_reply_to_a_customer_message_is_sent_as_metas_contextual_reply(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1 555")
    wamid = "wamid.HBgLMTY0NjcwNDM1OTUVAgASGBQzQTdCNTg5RjY1MEMyRjlGMjRGNgA="
    room = inbound(outbound, "whatsapp_cloud", WA, "16505551234", wamid)
    other_room = inbound(outbound, "whatsapp_cloud", WA, "16505550000", "wamid.other-room")
    unknown = reply(outbound, room, {"text": "x", "reply_to": "wamid.never-seen"})
    assert unknown.status_code == 422 and "not a message of this room" in unknown.json()["detail"]
    elsewhere = reply(outbound, room, {"text": "x", "reply_to": "wamid.other-room"})
    assert elsewhere.status_code == 422 and "another room" in elsewhere.json()["detail"]
    assert other_room != room

    r = reply(outbound, room, {"text": "You're welcome, Pablo!", "reply_to": wamid})
    assert r.status_code == 201, r.text
    message_id = r.json()["message_id"]
    wait_status(outbound, room, message_id, "sent")

    [sent] = sends(graph_standin)
    sample = json.loads((STANDIN_SAMPLES / "whatsapp_contextual_reply_request.json").read_text())
    assert sent.json == {**sample, "to": "16505551234", "biz_opaque_callback_data": message_id,
                         "text": {"preview_url": False, "body": "You're welcome, Pablo!"}}
    assert sent.json["context"] == {"message_id": wamid}
    items = httpx.get(f"{outbound.base_url}/v1/rooms/{room}/messages", headers=admin(outbound)).json()["items"]
    [answered] = [m for m in items if m["channel_message_id"] == wamid]
    [ours] = [m for m in items if m["id"] == message_id]
    assert ours["reply_to"] == {"message_id": answered["id"], "channel_message_id": wamid}
    # By our id of the message too (what history calls `id`).
    again = reply(outbound, room, {"text": "again", "reply_to": answered["id"]})
    assert again.status_code == 201, again.text
    wait_status(outbound, room, again.json()["message_id"], "sent")
    assert sends(graph_standin)[-1].json["context"] == {"message_id": wamid}


def test_a_messenger_reply_to_is_recorded_but_sent_without_one(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "facebook_messenger", PAGE, name="Acme Page")
    room = inbound(outbound, "facebook_messenger", PAGE, "psid-4", "m_in4")
    r = reply(outbound, room, {"text": "noted", "reply_to": "m_in4"})
    assert r.status_code == 201, r.text
    message_id = r.json()["message_id"]
    wait_status(outbound, room, message_id, "sent")
    [sent] = sends(graph_standin)
    assert sent.json == {"recipient": {"id": "psid-4"}, "messaging_type": "RESPONSE",
                         "message": {"text": "noted", "metadata": message_id}}
    items = httpx.get(f"{outbound.base_url}/v1/rooms/{room}/messages", headers=admin(outbound)).json()["items"]
    [ours] = [m for m in items if m["id"] == message_id]
    assert ours["reply_to"]["channel_message_id"] == "m_in4"


def test_whatsapp_template_outside_the_window_and_free_form_refused(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1 555")
    room = inbound(outbound, "whatsapp_cloud", WA, "628111", "wamid.old", at=datetime.now(UTC) - timedelta(days=2))
    refused = reply(outbound, room, {"text": "halo?"})
    assert refused.status_code == 409
    assert "template" in refused.json()["detail"]
    template = {"name": "order_update", "language": "id", "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "A-1"}]}]}
    r = reply(outbound, room, {"template": template})
    assert r.status_code == 201, r.text
    wait_status(outbound, room, r.json()["message_id"], "sent")
    [sent] = sends(graph_standin)
    assert sent.json["type"] == "template"
    assert sent.json["template"] == {"name": "order_update", "language": {"code": "id"},
                                     "components": template["components"]}
    assert reply(outbound, room, {"text": "x", "template": template}).status_code == 422


def test_messenger_instagram_and_comment_replies_use_their_documented_requests(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "facebook_messenger", PAGE, name="Acme Page")
    connect(outbound, graph_standin, "facebook_comment", PAGE, name="Acme Page")
    connect(outbound, graph_standin, "instagram", IG, username="acme")
    connect(outbound, graph_standin, "instagram_comment", IG, username="acme")
    cases = [
        (inbound(outbound, "facebook_messenger", PAGE, "psid-1", "m_in1"), f"/v21.0/{PAGE}/messages",
         {"recipient": {"id": "psid-1"}, "messaging_type": "RESPONSE", "message": {"text": "hi fb"}}, "hi fb"),
        (inbound(outbound, "instagram", IG, "igsid-1", "m_ig1"), f"/v21.0/{IG}/messages",
         {"recipient": {"id": "igsid-1"}, "messaging_type": "RESPONSE", "message": {"text": "hi ig"}}, "hi ig"),
        (inbound(outbound, "facebook_comment", PAGE, "user-9", "111_222", post_id="111"), "/v21.0/111_222/comments",
         {"message": "hi comment"}, "hi comment"),
        (inbound(outbound, "instagram_comment", IG, "user-8", "17870913679156914", post_id="p-1"),
         "/v21.0/17870913679156914/replies", {"message": "hi ig comment"}, "hi ig comment"),
    ]
    for room, path, expected, text in cases:
        r = reply(outbound, room, {"text": text})
        assert r.status_code == 201, r.text
        wait_status(outbound, room, r.json()["message_id"], "sent")
        [sent] = [s for s in sends(graph_standin) if s.path == path and text in json.dumps(s.json)]
        body = dict(sent.json)
        if "message" in body and isinstance(body["message"], dict):
            body["message"] = {k: v for k, v in body["message"].items() if k != "metadata"}
        assert body == expected
        _, channel_id = delivery(outbound, room, r.json()["message_id"])
        assert channel_id


def test_messenger_reply_between_24_hours_and_7_days_uses_the_human_agent_tag(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "facebook_messenger", PAGE, name="Acme Page")
    room = inbound(outbound, "facebook_messenger", PAGE, "psid-2", "m_in2", at=datetime.now(UTC) - timedelta(days=2))
    r = reply(outbound, room, {"text": "sorry for the wait"})
    assert r.status_code == 201, r.text
    wait_status(outbound, room, r.json()["message_id"], "sent")
    [sent] = sends(graph_standin)
    assert sent.json["messaging_type"] == "MESSAGE_TAG" and sent.json["tag"] == "HUMAN_AGENT"
    old = inbound(outbound, "facebook_messenger", PAGE, "psid-3", "m_in3", at=datetime.now(UTC) - timedelta(days=8))
    assert reply(outbound, old, {"text": "too late"}).status_code == 409


# ---- accounts ------------------------------------------------------------------------------------
def test_an_account_is_connected_only_with_a_token_that_reads_it(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    graph_standin.grant("someone-elses-page", "their-token", name="Not yours")
    r = httpx.post(f"{outbound.base_url}/v1/channel-accounts", headers=admin(outbound), json={
        "channel": "facebook_messenger", "external_id": "someone-elses-page", "name": "mine", "access_token": "mine"})
    assert r.status_code == 422, r.text
    account = connect(outbound, graph_standin, "facebook_messenger", PAGE, name="Acme Page")
    listed = httpx.get(f"{outbound.base_url}/v1/channel-accounts", headers=admin(outbound)).json()
    assert [(a["external_id"], a["has_access_token"], a["needs_reauth"]) for a in listed] == [(PAGE, True, False)]
    assert TOKEN not in json.dumps(listed)
    sealed = query(outbound.settings, "SELECT access_token_sealed FROM channel_account_credentials")[0][0]
    assert TOKEN not in sealed
    stored = query(outbound.settings, "SELECT convert_from(state, 'UTF8') FROM inbox_events")
    assert all(TOKEN not in row[0] for row in stored)
    assert httpx.get(f"{outbound.base_url}/v1/channel-accounts", headers=agent(outbound)).status_code == 403
    assert httpx.delete(f"{outbound.base_url}/v1/channel-accounts/{account['id']}",
                        headers=admin(outbound)).status_code == 204
    assert httpx.get(f"{outbound.base_url}/v1/channel-accounts", headers=admin(outbound)).json() == []


# ---- error classes -------------------------------------------------------------------------------
def test_rate_limits_and_temporary_errors_are_retried_until_sent(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1 555")
    room = inbound(outbound, "whatsapp_cloud", WA, "628222", "wamid.in2")
    graph_standin.fail_next(130429)
    graph_standin.fail_next(131000)
    graph_standin.server_error_next(502)
    r = reply(outbound, room, {"text": "retry me"})
    message_id = r.json()["message_id"]
    wait_status(outbound, room, message_id, "sent")
    assert len(sends(graph_standin)) == 4


def test_a_permanent_error_fails_the_reply_at_once_with_metas_reason(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1 555")
    room = inbound(outbound, "whatsapp_cloud", WA, "628333", "wamid.in3")
    graph_standin.fail_next(131026)
    r = reply(outbound, room, {"text": "undeliverable"})
    d = wait_status(outbound, room, r.json()["message_id"], "failed")
    assert d["error"]["code"] == 131026 and d["error"]["permanent"] is True and d["error"]["title"]
    assert len(sends(graph_standin)) == 1


def test_a_rejected_token_marks_the_account_needs_reauth_and_its_sends_wait_for_a_rotation(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    account = connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1")
    room = inbound(outbound, "whatsapp_cloud", WA, "628444", "wamid.in4")
    graph_standin.revoke(WA)  # Meta now refuses the token: code 190
    r = reply(outbound, room, {"text": "after reauth"})
    message_id = r.json()["message_id"]

    def flagged() -> bool:
        listed = httpx.get(f"{outbound.base_url}/v1/channel-accounts", headers=admin(outbound)).json()
        return bool(listed and listed[0]["needs_reauth"])

    wait_until(flagged, timeout=60, what="account needs_reauth")
    wait_status(outbound, room, message_id, "pending")  # waiting, not failed
    metrics = httpx.get(f"{outbound.base_url}/metrics").text
    assert "inbox_channel_accounts_needs_reauth 1.0" in metrics
    before = len(sends(graph_standin))
    time.sleep(1.0)  # the sender polls the account every 0.2 s here: no request while it needs re-auth
    assert len(sends(graph_standin)) == before

    graph_standin.grant(WA, "EAAG-new-token", verified_name="Acme", display_phone_number="+1")
    rotated = httpx.patch(f"{outbound.base_url}/v1/channel-accounts/{account['id']}", headers=admin(outbound),
                          json={"access_token": "EAAG-new-token"})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["needs_reauth"] is False
    wait_status(outbound, room, message_id, "sent")
    assert sends(graph_standin)[-1].token == "EAAG-new-token"
    assert "inbox_channel_accounts_needs_reauth 0.0" in httpx.get(f"{outbound.base_url}/metrics").text


# ---- idempotency ---------------------------------------------------------------------------------
def test_a_retried_reply_with_the_same_idempotency_key_is_recorded_and_sent_once(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1")
    room = inbound(outbound, "whatsapp_cloud", WA, "628555", "wamid.in5")
    first = reply(outbound, room, {"text": "once"}, {"Idempotency-Key": "k-1"})
    again = reply(outbound, room, {"text": "once"}, {"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["message_id"] == again.json()["message_id"]
    other = reply(outbound, room, {"text": "twice"}, {"Idempotency-Key": "k-2"})
    assert other.status_code == 201, other.text
    wait_status(outbound, room, other.json()["message_id"], "sent")
    wait_status(outbound, room, first.json()["message_id"], "sent")
    assert [s.json["text"]["body"] for s in sends(graph_standin)] == ["once", "twice"]


# ---- crashes -------------------------------------------------------------------------------------
def test_a_sender_killed_mid_stream_loses_no_reply(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1")
    rooms = [inbound(outbound, "whatsapp_cloud", WA, f"62899{i:03d}", f"wamid.k{i}") for i in range(20)]
    ids = []
    for round_ in range(3):
        for room in rooms:
            r = reply(outbound, room, {"text": f"r{round_} {room}"})
            assert r.status_code == 201, r.text
            ids.append((room, r.json()["message_id"]))
        if round_ == 0:
            wait_until(lambda: len(sends(graph_standin)) >= 5, timeout=60, what="some sends")
            outbound.kill("sender")  # SIGKILL mid-stream
    outbound.start("sender")
    for room, message_id in ids:
        wait_status(outbound, room, message_id, "sent", timeout=120)
    bodies = [s.json["biz_opaque_callback_data"] for s in sends(graph_standin)]
    duplicates = {b for b in bodies if bodies.count(b) > 1}
    assert set(bodies) == {m for _, m in ids}
    # Only replies in flight when the sender died (the documented window): at most one per room.
    assert len(duplicates) <= len(rooms)


# ---- unknown outcomes and echoes -----------------------------------------------------------------
@pytest.fixture
def short_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOX_SENDER_GRAPH_TIMEOUT_S", "1")


def test_a_timeout_after_the_request_left_is_unknown_until_a_status_webhook_settles_it(
    short_timeout: None, outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1")
    room = inbound(outbound, "whatsapp_cloud", WA, "628666", "wamid.in6")
    graph_standin.delay_next(3.0)  # answered after the sender's 1 s timeout
    message_id = reply(outbound, room, {"text": "did it go?"}).json()["message_id"]

    def unknown() -> bool:
        d, _ = delivery(outbound, room, message_id)
        return bool(d and d["error"] and "unknown" in d["error"]["title"])

    wait_until(unknown, timeout=60, what="outcome unknown")
    [sent] = sends(graph_standin)  # never resent on its own
    # Meta's status webhook names our message id (biz_opaque_callback_data): that settles it.
    payload = wa_status("wamid.settled-by-webhook", "delivered", "628666", int(time.time()))
    payload["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] = message_id
    post_webhook(outbound, payload)
    wait_status(outbound, room, message_id, "delivered")
    _, channel_id = delivery(outbound, room, message_id)
    assert channel_id == "wamid.settled-by-webhook"
    assert len(sends(graph_standin)) == 1


def test_metas_echo_of_our_messenger_reply_is_that_reply_not_a_second_message(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "facebook_messenger", PAGE, name="Acme Page")
    room = inbound(outbound, "facebook_messenger", PAGE, "psid-7", "m_in7")
    message_id = reply(outbound, room, {"text": "echo me"}).json()["message_id"]
    wait_status(outbound, room, message_id, "sent")
    _, mid = delivery(outbound, room, message_id)
    post_webhook(outbound, {"object": "page", "entry": [{"id": PAGE, "time": 1, "messaging": [{
        "sender": {"id": PAGE}, "recipient": {"id": "psid-7"}, "timestamp": int(time.time() * 1000),
        "message": {"is_echo": True, "app_id": 1, "metadata": message_id, "mid": mid, "text": "echo me"}}]}]})
    marker = inbound(outbound, "facebook_messenger", PAGE, "psid-7", "m_in8")  # projected after the echo
    assert marker == room

    def history() -> list[dict[str, Any]] | None:
        items = httpx.get(f"{outbound.base_url}/v1/rooms/{room}/messages", headers=admin(outbound)).json()["items"]
        return items if any(m["channel_message_id"] == "m_in8" for m in items) else None

    items = wait_until(history, timeout=60, what="the marker message projected")
    assert [m["direction"] for m in reversed(items)] == ["inbound", "outbound", "inbound"]


def messenger_echo(psid: str, mid: str, text: str, metadata: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"is_echo": True, "app_id": 1517776481860111, "mid": mid, "text": text}
    if metadata is not None:
        message["metadata"] = metadata
    return {"object": "page", "entry": [{"id": PAGE, "time": int(time.time() * 1000), "messaging": [{
        "sender": {"id": PAGE}, "recipient": {"id": psid}, "timestamp": int(time.time() * 1000),
        "message": message}]}]}


def room_event_types(p: Pipeline, room_id: str) -> list[str]:
    rows = query(p.settings, "SELECT topic FROM inbox_events WHERE originator_id = %s ORDER BY originator_version",
                 (room_id,))
    return [topic.rsplit(".", 1)[-1] for (topic,) in rows]


def test_metas_echo_that_overtakes_the_senders_record_is_still_that_reply_and_settles_it(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "facebook_messenger", PAGE, name="Acme Page")
    room = inbound(outbound, "facebook_messenger", PAGE, "psid-9", "m_in9")
    echoed: list[str] = []

    def echo_before_the_answer(request: Any, answer: Any) -> None:
        # Meta's echo webhook reaches us (and is recorded: the POST answers after its commit)
        # while the sender still waits for the Send API's answer.
        if request.path == f"/v21.0/{PAGE}/messages":
            sent = request.json["message"]
            post_webhook(outbound, messenger_echo("psid-9", answer["message_id"], sent["text"], sent.get("metadata")))
            echoed.append(answer["message_id"])

    graph_standin.before_answer(echo_before_the_answer)
    message_id = reply(outbound, room, {"text": "overtaken"}).json()["message_id"]
    wait_until(lambda: query(outbound.settings, "SELECT state FROM sender_sends WHERE message_id = %s",
                             (message_id,)) == [("accepted",)], timeout=60, what="the sender recorded Meta's answer")
    [mid] = echoed
    [sent] = sends(graph_standin)
    assert sent.json == {"recipient": {"id": "psid-9"}, "messaging_type": "RESPONSE",
                         "message": {"text": "overtaken", "metadata": message_id}}
    # One reply, settled by the echo; the sender's later answer recorded nothing more.
    types = room_event_types(outbound, room)
    assert types.count("MessageSent") == 1 and types.count("DeliveryStatusChanged") == 1
    assert "ReplyDeliveryAccepted" not in types
    d = wait_status(outbound, room, message_id, "sent")
    assert delivery(outbound, room, message_id)[1] == mid and d["status"] == "sent"
    post_webhook(outbound, {"object": "page", "entry": [{"id": PAGE, "time": 1, "messaging": [{
        "sender": {"id": "psid-9"}, "recipient": {"id": PAGE}, "timestamp": int(time.time() * 1000),
        "delivery": {"mids": [mid], "watermark": int(time.time() * 1000)}}]}]})
    wait_status(outbound, room, message_id, "delivered")
    post_webhook(outbound, messenger_echo("psid-9", mid, "overtaken", message_id))  # redelivered echo: nothing
    marker = inbound(outbound, "facebook_messenger", PAGE, "psid-9", "m_in10")
    assert marker == room

    def history() -> list[dict[str, Any]] | None:
        items = httpx.get(f"{outbound.base_url}/v1/rooms/{room}/messages", headers=admin(outbound)).json()["items"]
        return items if any(m["channel_message_id"] == "m_in10" for m in items) else None

    items = wait_until(history, timeout=60, what="the marker message projected")
    assert [m["direction"] for m in reversed(items)] == ["inbound", "outbound", "inbound"]
    assert delivery(outbound, room, message_id)[0]["status"] == "delivered"


def test_one_reply_that_cannot_be_handled_is_dead_lettered_and_the_others_still_go_out(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "whatsapp_cloud", WA, verified_name="Acme", display_phone_number="+1")
    room = inbound(outbound, "whatsapp_cloud", WA, "628777", "wamid.in7")
    execute(outbound.settings,  # a queued reply of a room that does not exist: the use case refuses it
            "INSERT INTO sender_sends (message_id, room_id, channel_account_id, payload, state)"
            " VALUES (gen_random_uuid(), gen_random_uuid(), '', '{\"kind\":\"text\",\"text\":\"x\",\"attachments\":[]}',"
            " 'pending')")
    message_id = reply(outbound, room, {"text": "still sent"}).json()["message_id"]
    wait_status(outbound, room, message_id, "sent")
    [(reason,)] = query(outbound.settings, "SELECT reason FROM sender_dead_letters")
    assert "NotFound" in reason or "not found" in reason
    r = httpx.delete(f"{outbound.base_url}/v1/channel-accounts/not-a-uuid", headers=admin(outbound))
    assert r.status_code == 404


# ---- Instagram: echoes carry nothing of ours, so one that overtakes the sender is parked -------------
def instagram_echo(igsid: str, mid: str, text: str) -> dict[str, Any]:
    """Meta's Instagram echo (tests/fixtures/meta/ig_dm_echo.json): no metadata."""
    now = int(time.time() * 1000)
    return {"object": "instagram", "entry": [{"time": now, "id": IG, "messaging": [{
        "sender": {"id": IG}, "recipient": {"id": igsid}, "timestamp": now,
        "message": {"mid": mid, "text": text, "is_echo": True}}]}]}


def parked(p: Pipeline) -> list[tuple[Any, ...]]:
    return query(p.settings, "SELECT channel_message_id FROM parked_echoes")


def test_an_instagram_echo_that_overtakes_the_senders_record_is_parked_then_dropped_as_that_reply(
    outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "instagram", IG, username="acme")
    room = inbound(outbound, "instagram", IG, "igsid-9", "m_ig_in9")
    parked_while_sending: list[list[tuple[Any, ...]]] = []

    def echo_before_the_answer(request: Any, answer: Any) -> None:
        if request.path == f"/v21.0/{IG}/messages":
            post_webhook(outbound, instagram_echo("igsid-9", answer["message_id"], request.json["message"]["text"]))
            parked_while_sending.append(parked(outbound))  # the POST answered: the echo is durable

    graph_standin.before_answer(echo_before_the_answer)
    message_id = reply(outbound, room, {"text": "overtaken on instagram"}).json()["message_id"]
    wait_status(outbound, room, message_id, "sent")
    _, mid = delivery(outbound, room, message_id)
    assert parked_while_sending == [[(mid,)]]
    wait_until(lambda: parked(outbound) == [], timeout=30, what="the sender's sweep to drop the parked echo")
    types = room_event_types(outbound, room)
    assert types.count("MessageSent") == 1 and types.count("ReplyDeliveryAccepted") == 1
    marker = inbound(outbound, "instagram", IG, "igsid-9", "m_ig_in10")
    assert marker == room

    def history() -> list[dict[str, Any]] | None:
        items = httpx.get(f"{outbound.base_url}/v1/rooms/{room}/messages", headers=admin(outbound)).json()["items"]
        return items if any(m["channel_message_id"] == "m_ig_in10" for m in items) else None

    items = wait_until(history, timeout=60, what="the marker message projected")
    assert [m["direction"] for m in reversed(items)] == ["inbound", "outbound", "inbound"]


@pytest.fixture
def short_echo_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOX_ECHO_HOLD_S", "1")


def test_a_parked_instagram_echo_that_matches_no_reply_is_recorded_after_the_hold(
    short_echo_hold: None, outbound: Pipeline, graph_standin: GraphStandin  # noqa: F811
) -> None:
    connect(outbound, graph_standin, "instagram", IG, username="acme")
    room = inbound(outbound, "instagram", IG, "igsid-8", "m_ig_in8")
    graph_standin.revoke(IG)  # the reply waits for a new token: in flight all along
    message_id = reply(outbound, room, {"text": "waiting for a token"}).json()["message_id"]
    # Ahead of it in the sweep's order, a parked echo its room refuses (a blank message kind): it is
    # dropped with an error in the log and must not hold the next one back.
    execute(outbound.settings,
            "INSERT INTO parked_echoes (channel_account_id, channel_message_id, room_id, fact, parked_at)"
            " VALUES (gen_random_uuid(), 'm_refused', %s, %s, now() - interval '1 hour')",
            (room, Jsonb({"channel": "instagram", "channel_account": IG, "contact_id": "igsid-8",
                          "channel_message_id": "m_refused", "text": "x", "sent_at": "2026-11-26T00:00:00+00:00",
                          "sender_id": IG, "kind": " ", "attachments": []})))
    post_webhook(outbound, instagram_echo("igsid-8", "m_from_the_app", "sent from the Instagram app"))
    wait_until(lambda: parked(outbound) == [], timeout=30, what="both parked echoes decided after the 1 s hold")
    assert "parked echo m_refused of room" in outbound.log_tail("sender", 200)
    types = room_event_types(outbound, room)
    assert types.count("MessageSent") == 2  # the reply, and the business's own message from the app

    def history() -> list[dict[str, Any]] | None:
        r = httpx.get(f"{outbound.base_url}/v1/rooms/{room}/messages", headers=admin(outbound))
        items = r.json()["items"] if r.status_code == 200 else []
        return items if any(m["channel_message_id"] == "m_from_the_app" for m in items) else None

    items = wait_until(history, timeout=60, what="the echo in history")
    [echoed] = [m for m in items if m["channel_message_id"] == "m_from_the_app"]
    assert echoed["text"] == "sent from the Instagram app" and echoed["direction"] == "outbound"
    assert delivery(outbound, room, message_id)[0]["status"] == "pending"  # the reply still waits
    post_webhook(outbound, instagram_echo("igsid-8", "m_from_the_app", "sent from the Instagram app"))
    assert room_event_types(outbound, room).count("MessageSent") == 2  # redelivered: recorded once
