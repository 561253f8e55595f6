"""Hostile values through every write path on the real PostgreSQL: what the API accepts and what a
signed webhook records can be stored, encoded and projected (issue 7, item 1; limits in
domain/limits.py, docs/operations.md).

API: NUL, lone surrogates, 1 MB strings, year 1 / 9999, nesting 300 deep, reserved ids → 4xx.
Webhooks: the same values are recorded repaired (Meta would redeliver a refusal forever), the
projection writer applies the events, and a fact refused by a rule does not sink its POST.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inbox.entrypoints.api.app import create_api
from domain import limits
from inbox.adapters import wire
from inbox.config import DEV_META_APP_SECRET, Settings
from inbox.bootstrap import Container
from inbox.adapters.event_log import WireEventLog
from inbox.bootstrap import open_event_store
from channels.meta.signature import signature
from inbox.usecases.meta_webhooks import MAX_SIGNATURE_ACCOUNTS
from tests.support import project_all, query

pytestmark = pytest.mark.integration

ACCOUNT = "1234567890"
PAGE = "104536785812345"


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"next": [value]}
    return value


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    """The conftest's client, except that a server error is answered (a 500 is what these tests look for)."""
    with TestClient(create_api(container), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def accounts(client: TestClient, admin: dict[str, str]) -> None:
    for channel, external_id in (("whatsapp_cloud", ACCOUNT), ("facebook_messenger", PAGE)):
        r = client.post("/v1/channel-accounts", headers=admin,
                        json={"channel": channel, "external_id": external_id, "name": channel})
        assert r.status_code == 201, r.text


def send(client: TestClient, path: str, headers: dict[str, str], body: Any) -> Any:
    """POST `body` as JSON with \\u escapes, so lone surrogates travel as JSON allows them."""
    return client.post(path, headers={**headers, "content-type": "application/json"},
                       content=json.dumps(body, ensure_ascii=True).encode())


def inbound_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "channel": "whatsapp_cloud", "channel_account": ACCOUNT,
        "contact": {"id": "6281234567890", "name": "Budi", "phone": "+6281234567890"},
        "message": {"id": "wamid.1", "text": "Halo", "sent_at": datetime.now(UTC).isoformat()},
    }
    for path, value in changes.items():
        node = body
        *parents, last = path.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return body


def canary_flows(client: TestClient, settings: Settings, integration: dict[str, str], admin: dict[str, str]) -> None:
    """After the hostile requests, an ordinary message is accepted and becomes visible."""
    r = send(client, "/v1/inbound-messages", integration, inbound_body(**{"message.id": "canary", "message.text": "canary"}))
    assert r.status_code == 202, r.text
    project_all(settings)
    history = client.get(f"/v1/rooms/{r.json()['room_id']}/messages", headers=admin).json()["items"]
    assert any(m["text"] == "canary" for m in history)


HOSTILE_INBOUND = {
    "nul-text": ("message.text", "a\x00b"),
    "surrogate-text": ("message.text", "a\ud800b"),
    "surrogate-name": ("contact.name", "\udfff"),
    "nul-contact-id": ("contact.id", "62\x00"),
    "reserved-contact-dash": ("contact.id", "-"),
    "reserved-contact-star": ("contact.id", "*"),
    "control-message-id": ("message.id", "wamid\n1"),
    "long-text": ("message.text", "x" * (limits.MAX_TEXT + 1)),
    "long-name": ("contact.name", "n" * (limits.MAX_NAME + 1)),
    "long-phone": ("contact.phone", "1" * (limits.MAX_PHONE + 1)),
    "long-handle": ("contact.handle", "h" * (limits.MAX_HANDLE + 1)),
    "long-account": ("channel_account", "1" * (limits.MAX_ID + 1)),
    "year-1": ("message.sent_at", "0001-01-01T00:00:00Z"),
    "year-9999": ("message.sent_at", "9999-12-31T23:59:59Z"),
    "nested-300": ("message.text", deep(300)),
    "number-as-id": ("contact.id", 2**70),
}


@pytest.mark.parametrize(("field", "value"), HOSTILE_INBOUND.values(), ids=HOSTILE_INBOUND.keys())
def test_hostile_inbound_messages_are_refused_with_422_naming_the_field(
    client: TestClient, db_settings: Settings, integration: dict[str, str], admin: dict[str, str],
    accounts: None, field: str, value: Any,
) -> None:
    r = send(client, "/v1/inbound-messages", integration, inbound_body(**{field: value}))
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]
    canary_flows(client, db_settings, integration, admin)


def test_a_one_megabyte_inbound_message_is_refused_before_parsing(
    client: TestClient, integration: dict[str, str], accounts: None
) -> None:
    r = send(client, "/v1/inbound-messages", integration, inbound_body(**{"message.text": "x" * 1_100_000}))
    assert r.status_code == 413


@pytest.fixture
def room_id(client: TestClient, integration: dict[str, str], accounts: None) -> str:
    r = send(client, "/v1/inbound-messages", integration, inbound_body())
    assert r.status_code == 202, r.text
    return str(r.json()["room_id"])


HOSTILE_STAFF = {
    "reply-nul": ("messages", {"text": "a\x00b"}),
    "reply-surrogate": ("messages", {"text": "\ud800"}),
    "reply-too-long": ("messages", {"text": "x" * (limits.MAX_TEXT + 1)}),
    "reply-nested": ("messages", {"text": deep(300)}),
    "assign-dash": ("assign", {"agent_id": "-"}),
    "assign-star": ("assign", {"agent_id": "*"}),
    "assign-nul": ("assign", {"agent_id": "a\x00"}),
    "assign-surrogate": ("assign", {"agent_id": "\ud800"}),
    "assign-too-long": ("assign", {"agent_id": "a" * (limits.MAX_ID + 1)}),
    "assign-huge-version": ("assign", {"agent_id": "agent1", "expected_version": deep(300)}),
    "resolve-nested": ("resolve", {"expected_version": deep(300)}),
    "resolve-unknown-field": ("resolve", {"reason": "a\x00"}),
}


@pytest.mark.parametrize(("action", "body"), HOSTILE_STAFF.values(), ids=HOSTILE_STAFF.keys())
def test_hostile_staff_commands_are_refused_with_422(
    client: TestClient, db_settings: Settings, admin: dict[str, str], integration: dict[str, str],
    room_id: str, action: str, body: dict[str, Any],
) -> None:
    project_all(db_settings)
    version = client.get(f"/v1/rooms/{room_id}", headers=admin).json()["version"]
    r = send(client, f"/v1/rooms/{room_id}/{action}", admin, body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]
    project_all(db_settings)
    assert client.get(f"/v1/rooms/{room_id}", headers=admin).json()["version"] == version  # nothing recorded
    canary_flows(client, db_settings, integration, admin)


def test_resolve_expired_refuses_hostile_bodies(client: TestClient, admin: dict[str, str]) -> None:
    for body in ({"channels": ["whatsapp_cloud\x00"]}, {"channels": deep(300)}, {"include_unassigned": "\ud800"}):
        r = send(client, "/v1/rooms/resolve-expired", admin, body)
        assert r.status_code == 422, r.text


HOSTILE_ACCOUNTS = {
    "id-dash": {"external_id": "-"},
    "id-star": {"external_id": "*"},
    "id-nul": {"external_id": "12\x00"},
    "id-too-long": {"external_id": "1" * (limits.MAX_ID + 1)},
    "name-surrogate": {"name": "Sales \ud83d"},
    "name-too-long": {"name": "n" * (limits.MAX_NAME + 1)},
    "secret-nul": {"app_secret": "s\x00" * 20},
    "name-nested": {"name": deep(300)},
}


@pytest.mark.parametrize("changes", HOSTILE_ACCOUNTS.values(), ids=HOSTILE_ACCOUNTS.keys())
def test_hostile_channel_accounts_are_refused_with_422(
    client: TestClient, admin: dict[str, str], changes: dict[str, Any]
) -> None:
    body = {"channel": "instagram", "external_id": "17841405822304914", "name": "Sales", **changes}
    r = send(client, "/v1/channel-accounts", admin, body)
    assert r.status_code == 422, r.text
    assert next(iter(changes)) in r.json()["detail"]


# ---- webhooks: repaired, recorded, projectable ------------------------------------------------------
def signed(client: TestClient, payload: Any, *, secret: str = DEV_META_APP_SECRET) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=True).encode()
    return client.post("/webhooks/meta", content=body, headers={
        "content-type": "application/json", "X-Hub-Signature-256": signature(secret, body)})


def wa_message(mid: str, *, text: Any = "Halo", timestamp: Any = None, name: Any = "Budi",
               sender: Any = "6281234567890", **extra: Any) -> dict[str, Any]:
    m = {"from": sender, "id": mid, "timestamp": timestamp or str(int(datetime.now(UTC).timestamp())),
         "type": "text", "text": {"body": text}}
    m.update(extra)
    return m


def wa_payload(*messages: dict[str, Any], name: Any = "Budi", sender: str = "6281234567890") -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"phone_number_id": ACCOUNT},
        "contacts": [{"profile": {"name": name}, "wa_id": sender}], "messages": list(messages)}}]}]}


def stored_events_are_encodable_and_projectable(settings: Settings) -> list[dict[str, Any]]:
    """Every stored room event goes through the relay's wire encode/decode, and the projection
    writer applies them all."""
    app = open_event_store(settings)
    try:
        page, _ = WireEventLog(app).read(0, 10_000)
        events = [wire.decode(wire.encode(e)) for _, e in page.events]
    finally:
        app.close()
    project_all(settings)
    return events


def test_a_signed_webhook_with_hostile_values_is_recorded_repaired_and_projected(
    client: TestClient, db_settings: Settings, admin: dict[str, str], accounts: None
) -> None:
    payload = wa_payload(
        wa_message("wamid.nul", text="a\x00b\ud800c"),
        wa_message("wamid.big", text="x" * 1_000_000),
        wa_message("wamid.future", timestamp="253402300799000"),  # 9999-12-31, in ms
        wa_message("wamid.past", timestamp=-62135596800),  # year 1
        wa_message("wamid.huge-ts", timestamp=10**40),
        name="Bu\x00di \udc00",
    )
    r = signed(client, payload)
    assert r.status_code == 200, r.text
    assert r.json()["recorded"] == 5 and r.json()["repaired"] == 5 and r.json()["refused"] == 0
    metrics = client.get("/metrics").text
    assert 'inbox_webhook_repaired_values_total{field="text",reason="unstorable_characters"} 1.0' in metrics
    assert 'inbox_webhook_repaired_values_total{field="sent_at",reason="time_out_of_range"} 3.0' in metrics

    events = stored_events_are_encodable_and_projectable(db_settings)
    received = {e["data"]["channel_message_id"]: e["data"] for e in events if e["type"] == "MessageReceived"}
    assert received["wamid.nul"]["text"] == "a\ufffdb\ufffdc"
    assert len(received["wamid.big"]["text"]) == limits.MAX_TEXT
    assert received["wamid.future"]["attachments"] == [
        {"type": "original_timestamp", "field": "sent_at", "value": "9999-12-31T23:59:59+00:00"}]
    for mid in ("wamid.future", "wamid.past", "wamid.huge-ts"):
        assert datetime.fromisoformat(received[mid]["sent_at"]).year == datetime.now(UTC).year
    [room] = client.get("/v1/rooms", headers=admin).json()["items"]
    assert room["contact"]["name"] == "Bu\ufffddi \ufffd"
    history = client.get(f"/v1/rooms/{room['id']}/messages", headers=admin, params={"limit": 10}).json()["items"]
    assert len(history) == 5


def test_free_form_channel_objects_are_recorded_as_bounded_json(
    client: TestClient, db_settings: Settings, admin: dict[str, str], accounts: None
) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    hostile = {"deep": deep(300), "big": 2**70, "neg": -(2**65), "s": "\x00" + "y" * 1_000}
    payload = {"object": "page", "entry": [{"id": PAGE, "time": now_ms, "messaging": [
        {"sender": {"id": "6677"}, "recipient": {"id": PAGE}, "timestamp": now_ms,
         "postback": {"title": "Buy", "payload": hostile, "mid": "m_postback"}},
        {"sender": {"id": "6677"}, "recipient": {"id": PAGE}, "timestamp": now_ms,
         "message": {"mid": "m_qr", "text": "ok", "quick_reply": {"payload": hostile}}},
    ]}]}
    r = signed(client, payload)
    assert r.status_code == 200 and r.json()["recorded"] == 2, r.text
    events = stored_events_are_encodable_and_projectable(db_settings)
    for event in events:
        for attachment in event["data"].get("attachments", []):
            assert limits.bounded_json(attachment) == (attachment, False)
    postback = next(e for e in events if e["type"] == "MessageReceived" and e["data"]["kind"] == "postback")
    assert float(postback["data"]["attachments"][0]["payload"]["big"]) == float(2**70)
    rows = query(db_settings, "SELECT attachments FROM messages WHERE channel_message_id = 'm_postback'")
    assert rows[0][0][0]["payload"]["s"].startswith("\ufffd")


def test_a_fact_refused_by_a_rule_does_not_sink_the_other_facts_of_its_post(
    client: TestClient, db_settings: Settings, admin: dict[str, str], accounts: None
) -> None:
    cards = [{"name": {"formatted_name": f"C{i}"}, "phones": [{"phone": str(i)}]} for i in range(21)]
    too_many = wa_message("wamid.cards", type="contacts", contacts=cards)
    too_long_id = wa_message("wamid." + "x" * (limits.MAX_MESSAGE_ID + 1))
    payload = wa_payload(wa_message("wamid.ok1"), too_many, too_long_id, wa_message("wamid.ok2"))
    r = signed(client, payload)
    assert r.status_code == 200, r.text
    assert r.json()["recorded"] == 2 and r.json()["refused"] == 2
    assert 'inbox_webhook_facts_total{kind="message",outcome="refused"} 2.0' in client.get("/metrics").text
    again = signed(client, payload)  # Meta's redelivery: the valid ones are duplicates, nothing fails
    assert again.status_code == 200 and again.json()["duplicates"] == 2 and again.json()["refused"] == 2
    events = stored_events_are_encodable_and_projectable(db_settings)
    assert sorted(e["data"]["channel_message_id"] for e in events if e["type"] == "MessageReceived") == [
        "wamid.ok1", "wamid.ok2"]


HOSTILE_SHAPES: dict[str, Any] = {
    "list-body": [1, 2],
    "null-body": None,
    "number-body": 7,
    "entry-null": {"object": "page", "entry": None},
    "entry-dict": {"object": "page", "entry": {}},
    "entry-of-nulls": {"object": "page", "entry": [None, None]},
    "object-number": {"object": 5, "entry": []},
    "id-number": {"object": "page", "entry": [{"id": 104536785812345, "messaging": []}]},
    "id-huge-number": {"object": "page", "entry": [{"id": 10**40, "messaging": []}]},
    "messaging-dict": {"object": "page", "entry": [{"id": PAGE, "messaging": {}}]},
    "messaging-nulls": {"object": "page", "entry": [{"id": PAGE, "messaging": [None]}]},
    "sender-list": {"object": "page", "entry": [{"id": PAGE, "messaging": [{"sender": [], "recipient": {}}]}]},
    "message-null": {"object": "page", "entry": [{"id": PAGE, "messaging": [
        {"sender": {"id": "1"}, "recipient": {"id": PAGE}, "timestamp": 1, "message": None}]}]},
    "timestamp-object": {"object": "page", "entry": [{"id": PAGE, "messaging": [
        {"sender": {"id": "1"}, "recipient": {"id": PAGE}, "timestamp": {}, "message": {"mid": "m", "text": "t"}}]}]},
    "attachments-strings": {"object": "page", "entry": [{"id": PAGE, "messaging": [
        {"sender": {"id": "1"}, "recipient": {"id": PAGE}, "timestamp": 1700000000000,
         "message": {"mid": "m", "attachments": ["x", 1]}}]}]},
    "wa-contacts-weird": wa_payload(wa_message("w1", type="contacts", contacts=[
        {"name": {"formatted_name": ["not", "a", "string"]}, "phones": 5}])),
    "wa-errors-number": wa_payload(wa_message("w2", type="unsupported", errors=7)),
    "wa-huge-digit-timestamp": wa_payload(wa_message("w3", timestamp="9" * 5000)),
    "wa-status-nested-errors": {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages",
        "value": {"metadata": {"phone_number_id": ACCOUNT}, "statuses": [
            {"id": "s", "status": "failed", "timestamp": "1700000000", "errors": [{"code": deep(300), "n": 2**80}]}],
            "errors": [{"code": 10**30}]}}]}]},
    "huge-array": {"object": "page", "entry": [{"id": PAGE, "messaging": [None] * 100_000}]},
    "many-entries": {"object": "page", "entry": [{"id": str(i), "messaging": []} for i in range(20_000)]},
}


@pytest.mark.parametrize("payload", HOSTILE_SHAPES.values(), ids=HOSTILE_SHAPES.keys())
def test_no_shape_of_signed_json_gets_a_server_error(
    client: TestClient, db_settings: Settings, admin: dict[str, str], integration: dict[str, str],
    accounts: None, payload: Any,
) -> None:
    r = signed(client, payload)
    assert r.status_code in (200, 400), r.text
    assert r.json()["detail"] if r.status_code == 400 else "received" in r.json()
    stored_events_are_encodable_and_projectable(db_settings)
    canary_flows(client, db_settings, integration, admin)


def test_unparseable_signed_json_is_400(client: TestClient) -> None:
    for body in (b"{", b"\xff\xfe", b"[" * 5000, b'{"object": NaN}'):
        r = signed(client, body)
        assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]


# ---- unsigned POSTs: bounded work, never a 500 --------------------------------------------------------
@pytest.mark.parametrize("payload", [*HOSTILE_SHAPES.values(), b"{", b"\xff"], ids=[*HOSTILE_SHAPES, "broken", "binary"])
def test_a_post_whose_signature_does_not_verify_is_401_whatever_its_shape(
    client: TestClient, db_settings: Settings, accounts: None, payload: Any
) -> None:
    r = signed(client, payload, secret="not-the-app-secret")
    assert r.status_code == 401, r.text
    assert int(query(db_settings, "SELECT count(*) FROM inbox_events WHERE topic LIKE 'domain.room:%%'")[0][0]) == 0


def test_a_forged_post_naming_many_accounts_looks_up_a_bounded_number_and_caches_the_misses(
    client: TestClient, container: Container
) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    entries = [{"id": f"page{i}", "messaging": [{"sender": {"id": "1"}, "recipient": {"id": f"page{i}"},
                "timestamp": now_ms, "message": {"mid": f"m{i}", "text": "t"}}]} for i in range(2_000)]
    r = signed(client, {"object": "page", "entry": entries}, secret="forged")
    assert r.status_code == 401
    missing = container.accounts._missing  # the negative cache: every look-up made is in it
    assert len(missing) == MAX_SIGNATURE_ACCOUNTS
    before = dict(missing)
    assert signed(client, {"object": "page", "entry": entries}, secret="forged").status_code == 401
    assert container.accounts._missing == before  # the second forgery was answered from the cache


def test_an_account_registered_after_a_forged_post_named_it_is_found_at_once(
    client: TestClient, admin: dict[str, str]
) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    payload = {"object": "page", "entry": [{"id": "777", "messaging": [{"sender": {"id": "1"}, "recipient": {"id": "777"},
               "timestamp": now_ms, "message": {"mid": "m.777", "text": "t"}}]}]}
    assert signed(client, payload, secret="own-secret-of-page-777-0123456789").status_code == 401  # a miss, cached
    r = client.post("/v1/channel-accounts", headers=admin, json={
        "channel": "facebook_messenger", "external_id": "777", "name": "Page 777",
        "app_secret": "own-secret-of-page-777-0123456789"})
    assert r.status_code == 201, r.text
    r = signed(client, payload, secret="own-secret-of-page-777-0123456789")
    assert r.status_code == 200 and r.json()["recorded"] == 1, r.text


@pytest.mark.parametrize("url", ["/v1/search?q=a%00b", "/v1/rooms?assignee=a%00", "/v1/search?by=conversation&q=%00x"])
def test_nul_in_a_query_string_is_422_not_a_database_error(client: TestClient, admin: dict[str, str], url: str) -> None:
    r = client.get(url, headers=admin)
    assert r.status_code == 422 and "NUL" in r.json()["detail"], r.text


def test_signed_mutations_of_every_documented_payload_are_recorded_or_400_and_stay_projectable(
    client: TestClient, db_settings: Settings, admin: dict[str, str], integration: dict[str, str]
) -> None:
    """A seeded fuzz through the real endpoint and store: any value anywhere in Meta's documented
    payloads (tests/fixtures/meta), for registered accounts, never gets a 500."""
    import random
    from pathlib import Path

    from tests.unit.test_sanitize import _paths, _replace

    for channel, external_id in (("whatsapp_cloud", "106540352242922"), ("whatsapp_cloud", ACCOUNT), ("facebook_messenger", PAGE),
                                 ("facebook_comment", PAGE), ("instagram", "17841405822304914"),
                                 ("instagram_comment", "17841405822304914")):
        r = client.post("/v1/channel-accounts", headers=admin,
                        json={"channel": channel, "external_id": external_id, "name": channel})
        assert r.status_code == 201, r.text
    fixtures = [json.loads(p.read_text()) for p in sorted((Path(__file__).parents[1] / "fixtures" / "meta").glob("*.json"))]
    leaves: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "-", "*", "a\x00b", "\ud800", "x" * 70_000, [], {},
                         [None], {"id": None}, deep(300), "9" * 400, 10**30, "253402300799000"]
    rng = random.Random(7)
    statuses: dict[int, int] = {}
    for _ in range(150):
        payload = rng.choice(fixtures)
        for _ in range(rng.randint(1, 3)):
            payload = _replace(payload, rng.choice(_paths(payload)), rng.choice(leaves))
        r = signed(client, payload)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400), (r.status_code, r.text, payload)
    assert statuses.get(200, 0) > 30, statuses  # most mutations still carry recordable facts
    stored_events_are_encodable_and_projectable(db_settings)
    canary_flows(client, db_settings, integration, admin)
