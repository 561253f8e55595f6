"""POST/GET /webhooks/meta on the real PostgreSQL, with Meta's documented payloads (tests/fixtures/meta).

Projections are applied directly (tests.support.project_all), as in test_api.py.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inbox.config import DEV_META_APP_SECRET, DEV_META_VERIFY_TOKEN, Settings
from inbox.bootstrap import Container
from channels.meta.signature import signature
from tests.integration.test_dead_letters import store_unreadable_event
from tests.support import auth, execute, project_all, query

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "meta"
WA_ACCOUNT = "106540352242922"  # phone_number_id in the fixtures
PAGE = "104536785812345"
IG_ACCOUNT = "17841405822304914"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


# ---- plumbing ---------------------------------------------------------------------------------
def register(client: TestClient, admin: dict[str, str], channel: str, external_id: str,
             app_secret: str | None = None) -> None:
    body = {"channel": channel, "external_id": external_id, "name": f"{channel} {external_id}"}
    if app_secret:
        body["app_secret"] = app_secret
    r = client.post("/v1/channel-accounts", headers=admin, json=body)
    assert r.status_code == 201, r.text


@pytest.fixture
def accounts(client: TestClient, admin: dict[str, str]) -> None:
    """Every channel of the fixtures, registered for org1."""
    register(client, admin, "whatsapp_cloud", WA_ACCOUNT)
    register(client, admin, "facebook_messenger", PAGE)
    register(client, admin, "facebook_comment", PAGE)
    register(client, admin, "instagram", IG_ACCOUNT)
    register(client, admin, "instagram_comment", IG_ACCOUNT)


def raw(payload: dict[str, Any] | bytes, *, ascii_only: bool = True) -> bytes:
    if isinstance(payload, bytes):
        return payload
    return json.dumps(payload, ensure_ascii=ascii_only).encode()


def post(client: TestClient, payload: dict[str, Any] | bytes, *, secret: str = DEV_META_APP_SECRET,
         header: str | None = None, ascii_only: bool = True) -> Any:
    body = raw(payload, ascii_only=ascii_only)
    sig = header if header is not None else signature(secret, body)
    return client.post("/webhooks/meta", content=body,
                       headers={"content-type": "application/json", "X-Hub-Signature-256": sig})


def room_events(settings: Settings) -> int:
    return int(query(settings, "SELECT count(*) FROM inbox_events WHERE topic LIKE 'domain.room:Room.%%'")[0][0])


def history(client: TestClient, admin: dict[str, str], room_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/v1/rooms/{room_id}/messages", headers=admin)
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


# ---- handshake --------------------------------------------------------------------------------
def test_handshake_with_the_verify_token_echoes_the_bare_challenge(client: TestClient) -> None:
    r = client.get("/webhooks/meta", params={
        "hub.mode": "subscribe", "hub.verify_token": DEV_META_VERIFY_TOKEN, "hub.challenge": "1158201444"})
    assert r.status_code == 200
    assert r.text == "1158201444" and r.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("params", [
    {"hub.mode": "subscribe", "hub.verify_token": "meatyhamhock", "hub.challenge": "1158201444"},
    {"hub.mode": "unsubscribe", "hub.verify_token": DEV_META_VERIFY_TOKEN, "hub.challenge": "1158201444"},
    {"hub.mode": "subscribe", "hub.challenge": "1158201444"},
    {},
], ids=["wrong-token", "wrong-mode", "no-token", "nothing"])
def test_handshake_without_the_verify_token_is_forbidden(client: TestClient, params: dict[str, str]) -> None:
    assert client.get("/webhooks/meta", params=params).status_code == 403


# ---- signature --------------------------------------------------------------------------------
@pytest.mark.parametrize("header", [None, "", "sha1=abc", "sha256=" + "0" * 64], ids=["missing", "empty", "sha1", "wrong"])
def test_a_missing_or_wrong_signature_is_401_and_records_nothing(
    client: TestClient, db_settings: Settings, accounts: None, header: str | None
) -> None:
    body = raw(fixture("wa_text.json"))
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["X-Hub-Signature-256"] = header
    r = client.post("/webhooks/meta", content=body, headers=headers)
    assert r.status_code == 401 and r.json()["detail"]
    assert room_events(db_settings) == 0


def test_a_signature_over_other_bytes_is_refused(client: TestClient, db_settings: Settings, accounts: None) -> None:
    pretty = json.dumps(fixture("wa_text.json"), indent=2).encode()
    compact = json.dumps(fixture("wa_text.json")).encode()  # same JSON, different bytes
    r = post(client, compact, header=signature(DEV_META_APP_SECRET, pretty))
    assert r.status_code == 401
    assert post(client, pretty).status_code == 200
    assert room_events(db_settings) == 2


def test_a_signature_with_another_secret_is_refused(client: TestClient, db_settings: Settings, accounts: None) -> None:
    assert post(client, fixture("wa_text.json"), secret="not-the-app-secret").status_code == 401
    assert room_events(db_settings) == 0


def test_escaped_unicode_in_the_raw_body_verifies_and_is_recorded_decoded(
    client: TestClient, db_settings: Settings, admin: dict[str, str], accounts: None
) -> None:
    payload = fixture("wa_text.json")
    text = "Halo kak 😊, ukuran M masih ada? ñ — 你好"
    payload["entry"][0]["changes"][0]["value"]["messages"][0]["text"]["body"] = text
    payload["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"]["name"] = "Zoë Ñúñez"
    escaped = raw(payload, ascii_only=True)
    assert b"\\ud83d\\ude0a" in escaped  # Meta sends non-ASCII as \u escapes: sign exactly these bytes
    r = post(client, escaped)
    assert r.status_code == 200 and r.json()["recorded"] == 1
    # The same message as raw UTF-8 bytes (another signature, same message id): a duplicate.
    r = post(client, payload, ascii_only=False)
    assert r.status_code == 200 and r.json()["duplicates"] == 1
    project_all(db_settings)
    room = client.get("/v1/rooms", headers=admin).json()["items"][0]
    assert room["last_message"]["text"] == text and room["contact"]["name"] == "Zoë Ñúñez"


# ---- per-account app secrets ------------------------------------------------------------------
def test_an_account_with_its_own_app_secret_takes_only_posts_signed_with_it(
    client: TestClient, db_settings: Settings, admin: dict[str, str], container: Container
) -> None:
    register(client, admin, "whatsapp_cloud", WA_ACCOUNT, app_secret="tenant-app-secret")
    payload = fixture("wa_text.json")
    other_app = post(client, payload)  # signed with the global app's secret
    assert other_app.status_code == 200 and other_app.json()["other_app"] == 1 and other_app.json()["recorded"] == 0
    assert room_events(db_settings) == 0
    own = post(client, payload, secret="tenant-app-secret")
    assert own.status_code == 200 and own.json()["recorded"] == 1
    assert post(client, payload, secret="some-third-secret").status_code == 401
    assert 'inbox_webhook_facts_total{kind="message",outcome="other_app"} 1.0' in client.get("/metrics").text


# ---- every documented type --------------------------------------------------------------------
MESSAGE_FIXTURES = [
    # (fixture, channel, kind, text)
    ("wa_text.json", "whatsapp_cloud", "text", "Does it come in another color?"),
    ("wa_image.json", "whatsapp_cloud", "image", "This is how it looks now"),
    ("wa_video.json", "whatsapp_cloud", "video", "Unboxing video"),
    ("wa_audio.json", "whatsapp_cloud", "audio", ""),
    ("wa_document.json", "whatsapp_cloud", "document", "Invoice for order #3412"),
    ("wa_sticker.json", "whatsapp_cloud", "sticker", ""),
    ("wa_location.json", "whatsapp_cloud", "location", "Philz Coffee — 101 Forest Ave, Palo Alto, CA 94301"),
    ("wa_contacts.json", "whatsapp_cloud", "contacts", "Barbara J. Johnson"),
    ("wa_interactive_button_reply.json", "whatsapp_cloud", "interactive", "Change"),
    ("wa_interactive_list_reply.json", "whatsapp_cloud", "interactive", "Priority Mail Express"),
    ("wa_button.json", "whatsapp_cloud", "button", "Unsubscribe from Promos"),
    ("wa_reaction.json", "whatsapp_cloud", "reaction", "👍"),
    ("wa_reaction_removed.json", "whatsapp_cloud", "reaction", ""),
    ("wa_order.json", "whatsapp_cloud", "order", "Please deliver by Friday"),
    ("wa_system.json", "whatsapp_cloud", "system", "User Sheena Nelson changed from 16505551234 to 16505551235"),
    ("wa_unsupported.json", "whatsapp_cloud", "unsupported", ""),
    ("fb_messenger_text.json", "facebook_messenger", "text", "hello, world!"),
    ("fb_messenger_quick_reply.json", "facebook_messenger", "quick_reply", "Red"),
    ("fb_messenger_attachment.json", "facebook_messenger", "image", ""),
    ("ig_dm_text.json", "instagram", "text", "Halo, apakah ini ready?"),
    ("ig_dm_image.json", "instagram", "image", ""),
    ("ig_dm_share.json", "instagram", "share", ""),
    ("fb_feed_comment_add.json", "facebook_comment", "text", "Masih ada ukuran M?"),
    ("fb_feed_comment_reply.json", "facebook_comment", "text", "Warna hitam juga ya"),
    ("ig_comment.json", "instagram_comment", "text", "Berapa harganya kak?"),
    ("ig_comment_reply.json", "instagram_comment", "text", "Bisa COD?"),
]


@pytest.mark.parametrize(("name", "channel", "kind", "text"), MESSAGE_FIXTURES, ids=[f[0] for f in MESSAGE_FIXTURES])
def test_each_documented_message_type_is_recorded_once_with_its_channel_id_and_time(
    client: TestClient, db_settings: Settings, admin: dict[str, str], accounts: None,
    name: str, channel: str, kind: str, text: str,
) -> None:
    payload = fixture(name)
    first = post(client, payload)
    assert first.status_code == 200, first.text
    assert first.json()["recorded"] == 1 and first.json()["received"] == 1
    again = post(client, payload)  # Meta retries for up to 36 hours
    assert again.status_code == 200 and again.json() == {**first.json(), "recorded": 0, "duplicates": 1}
    project_all(db_settings)

    [room] = client.get("/v1/rooms", headers=admin).json()["items"]
    assert room["channel"] == channel
    assert room["awaiting_reply"] is True and room["status"] == "unassigned"
    [message] = history(client, admin, room["id"])
    assert (message["kind"], message["text"], message["direction"]) == (kind, text, "inbound")
    stored = query(db_settings, "SELECT channel_message_id, sent_at FROM messages")
    assert stored[0][0] == message["channel_message_id"] and stored[0][1] == datetime.fromisoformat(message["sent_at"])


def test_media_keeps_its_metadata_as_attachments(client: TestClient, db_settings: Settings, admin: dict[str, str],
                                                 accounts: None) -> None:
    post(client, fixture("wa_document.json"))
    post(client, fixture("wa_location.json"))
    project_all(db_settings)
    room_id = client.get("/v1/rooms", headers=admin).json()["items"][0]["id"]
    location, document = history(client, admin, room_id)
    assert document["attachments"] == [{
        "type": "document", "id": "1204889227766455", "mime_type": "application/pdf",
        "sha256": "ZdCnJOtXaN2jJgPG3IWc+Tbw4UDh/E8R7a1rGCg+oUc=", "filename": "lucky-shrub-invoice.pdf",
        "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1204889227766455&ext=1749510392",
    }]
    assert location["attachments"][0]["latitude"] == 37.44221496582


def test_contact_names_come_from_the_contacts_profile(client: TestClient, db_settings: Settings,
                                                      admin: dict[str, str], accounts: None) -> None:
    post(client, fixture("wa_text.json"))
    post(client, fixture("ig_comment.json"))
    project_all(db_settings)
    rooms = {r["channel"]: r for r in client.get("/v1/rooms", headers=admin).json()["items"]}
    assert rooms["whatsapp_cloud"]["contact"] == {
        "id": "16505551234", "name": "Sheena Nelson", "handle": None, "phone": "+16505551234"}
    assert rooms["instagram_comment"]["contact"]["handle"] == "ana.lucia"


# ---- statuses are facts, never messages -------------------------------------------------------
STATUS_FIXTURES = ["wa_status_sent.json", "wa_status_delivered.json", "wa_status_read.json", "wa_status_failed.json",
                   "wa_errors.json", "fb_messenger_delivery.json", "fb_messenger_read.json"]


def test_statuses_are_recorded_as_delivery_facts_and_never_open_rooms(
    client: TestClient, db_settings: Settings, accounts: None
) -> None:
    for name in STATUS_FIXTURES:
        r = post(client, fixture(name))
        assert r.status_code == 200 and r.json()["recorded"] == 1, (name, r.text)
    for name in STATUS_FIXTURES:  # redelivered
        assert post(client, fixture(name)).json()["duplicates"] == 1, name
    assert room_events(db_settings) == 0
    rows = query(db_settings, "SELECT channel, status, channel_message_id, errors FROM delivery_statuses ORDER BY occurred_at, status")
    assert len(rows) == len(STATUS_FIXTURES)
    statuses = sorted((r[0], r[1]) for r in rows)
    assert statuses == sorted([
        ("whatsapp_cloud", "sent"), ("whatsapp_cloud", "delivered"), ("whatsapp_cloud", "read"),
        ("whatsapp_cloud", "failed"), ("whatsapp_cloud", "error"), ("facebook_messenger", "delivered"),
        ("facebook_messenger", "read"),
    ])
    failed = next(r for r in rows if r[1] == "failed")
    assert failed[3][0]["code"] == 131047
    project_all(db_settings)
    assert query(db_settings, "SELECT count(*) FROM rooms")[0][0] == 0


# ---- batches: all or none ---------------------------------------------------------------------
def batched() -> dict[str, Any]:
    """Two WhatsApp entries (one with a message and a status in the same value), as Meta batches them."""
    text, image, status = fixture("wa_text.json"), fixture("wa_image.json"), fixture("wa_status_read.json")
    value = text["entry"][0]["changes"][0]["value"]
    value["statuses"] = status["entry"][0]["changes"][0]["value"]["statuses"]
    return {"object": "whatsapp_business_account", "entry": text["entry"] + image["entry"]}


def test_a_batched_post_records_every_entry(client: TestClient, db_settings: Settings, admin: dict[str, str],
                                            accounts: None) -> None:
    r = post(client, batched())
    assert r.status_code == 200 and r.json()["recorded"] == 3 and r.json()["received"] == 3
    project_all(db_settings)
    [room] = client.get("/v1/rooms", headers=admin).json()["items"]
    assert [m["kind"] for m in history(client, admin, room["id"])] == ["image", "text"]
    assert query(db_settings, "SELECT count(*) FROM delivery_statuses")[0][0] == 1


def test_a_batch_with_one_malformed_entry_records_nothing(client: TestClient, db_settings: Settings,
                                                          accounts: None) -> None:
    payload = batched()
    broken = fixture("wa_video.json")["entry"][0]
    del broken["changes"][0]["value"]["messages"][0]["timestamp"]
    payload["entry"].append(broken)
    r = post(client, payload)
    assert r.status_code == 400
    assert "entry[2].changes[0].value.messages[0].timestamp" in r.json()["detail"]
    assert room_events(db_settings) == 0
    assert query(db_settings, "SELECT count(*) FROM delivery_statuses")[0][0] == 0


def test_a_batch_with_a_fact_for_a_room_that_cannot_be_read_is_503_and_recorded_whole_once_mended(
    client: TestClient, db_settings: Settings, accounts: None,
) -> None:
    """All or none, also when a room's stored events cannot be read (tests/integration/test_unreadable_rooms.py):
    Meta retries the 503 and the retry is recorded once the row is mended."""
    assert post(client, fixture("wa_image.json")).status_code == 200
    [(room, version)] = query(db_settings, "SELECT originator_id::text, max(originator_version) + 1 FROM inbox_events"
                                           " WHERE topic LIKE 'domain.room:%%' GROUP BY originator_id")
    store_unreadable_event(db_settings, room, version)
    before = room_events(db_settings)

    r = post(client, batched())

    assert r.status_code == 503 and room in r.json()["detail"] and "Retry-After" in r.headers
    assert room_events(db_settings) == before
    assert query(db_settings, "SELECT count(*) FROM delivery_statuses")[0][0] == 0

    execute(db_settings, "DELETE FROM inbox_events WHERE originator_id = %s AND originator_version = %s", (room, version))
    r = post(client, batched())
    assert r.status_code == 200 and r.json()["recorded"] == 2  # the text and the status; the image is a duplicate


def test_a_thousand_entries_in_one_post(client: TestClient, db_settings: Settings, accounts: None) -> None:
    template = fixture("wa_text.json")["entry"][0]
    entries = []
    for i in range(1000):
        entry = json.loads(json.dumps(template))
        message = entry["changes"][0]["value"]["messages"][0]
        message["id"] = f"wamid.batch-{i}"
        message["from"] = entry["changes"][0]["value"]["contacts"][0]["wa_id"] = f"62811{i % 50:04d}"
        entries.append(entry)
    r = post(client, {"object": "whatsapp_business_account", "entry": entries})
    assert r.status_code == 200 and r.json()["recorded"] == 1000
    assert query(db_settings, "SELECT count(DISTINCT room_id) FROM inbound_dedup")[0][0] == 50


# ---- shape errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "malformed JSON"),
    (b"[]", "body: expected an object"),
    (b'{"object": "page"}', "entry: expected an array"),
    (b'{"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {}}]}]}',
     "entry[0].changes[0].value.metadata: expected an object"),
    (b'{"object": "page", "entry": [{"id": "1", "messaging": [{"sender": {"id": "2"}, "recipient": {"id": "1"}, "message": {"mid": "m"}}]}]}',
     "entry[0].messaging[0].timestamp: expected a unix timestamp"),
], ids=["not-json", "not-object", "no-entries", "no-metadata", "no-timestamp"])
def test_malformed_payloads_are_400_with_a_reason(client: TestClient, body: bytes, reason: str) -> None:
    r = post(client, body)
    assert r.status_code == 400 and reason in r.json()["detail"]


def test_bodies_over_the_limit_are_413(client: TestClient, db_settings: Settings) -> None:
    body = b'{"object": "page", "entry": [], "pad": "' + b"a" * (db_settings.max_body_bytes + 10) + b'"}'
    r = client.post("/webhooks/meta", content=body, headers={
        "content-type": "application/json", "X-Hub-Signature-256": signature(DEV_META_APP_SECRET, body)})
    assert r.status_code == 413


def test_other_objects_and_fields_are_acknowledged_and_ignored(client: TestClient, db_settings: Settings,
                                                               accounts: None) -> None:
    for name in ("fb_feed_status_post.json", "fb_feed_like.json"):
        r = post(client, fixture(name))
        assert r.status_code == 200 and r.json()["ignored"] == 1 and r.json()["recorded"] == 0
    r = post(client, {"object": "user", "entry": [{"id": "1", "changes": [{"field": "name"}]}]})
    assert r.status_code == 200 and r.json()["ignored"] == 1
    assert room_events(db_settings) == 0


# ---- unknown accounts -------------------------------------------------------------------------
def test_messages_for_unknown_accounts_are_acknowledged_logged_and_counted(
    client: TestClient, db_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        r = post(client, batched())
    assert r.status_code == 200 and r.json()["unknown_accounts"] == 3 and r.json()["recorded"] == 0
    assert any("unknown whatsapp_cloud account '106540352242922'" in m for m in caplog.messages)
    assert room_events(db_settings) == 0
    metrics = client.get("/metrics").text
    assert 'inbox_webhook_unknown_account_total{channel="whatsapp_cloud"} 3.0' in metrics


def test_comments_need_the_comment_channel_account_not_only_messenger(
    client: TestClient, db_settings: Settings, admin: dict[str, str]
) -> None:
    register(client, admin, "facebook_messenger", PAGE)  # the page, but only for Messenger
    assert post(client, fixture("fb_feed_comment_add.json")).json()["unknown_accounts"] == 1
    assert post(client, fixture("fb_messenger_text.json")).json()["recorded"] == 1


# ---- echoes -----------------------------------------------------------------------------------
def test_an_echo_is_the_business_own_message_and_never_assigns_the_room(
    client: TestClient, db_settings: Settings, admin: dict[str, str], accounts: None
) -> None:
    post(client, fixture("fb_messenger_text.json"))
    echo = post(client, fixture("fb_messenger_echo.json"))
    assert echo.json()["recorded"] == 1
    assert post(client, fixture("fb_messenger_echo.json")).json()["duplicates"] == 1
    project_all(db_settings)
    [room] = client.get("/v1/rooms", headers=admin).json()["items"]
    assert room["status"] == "unassigned" and room["assignee"] is None
    assert room["awaiting_reply"] is False and room["last_message"]["direction"] == "outbound"
    latest = history(client, admin, room["id"])[0]
    assert latest["direction"] == "outbound" and latest["sender"]["role"] == "channel"
    assert latest["sender"]["id"] == PAGE and latest["channel_message_id"] == "m_1457764197618:41d102a3e1ae206a40"
    counters = client.get("/v1/inbox/counters", headers=admin).json()
    assert counters["messages"] == 0 and counters["unassigned"] == 1


def test_an_instagram_echo_alone_opens_the_conversation_without_awaiting_a_reply(
    client: TestClient, db_settings: Settings, admin: dict[str, str], accounts: None
) -> None:
    assert post(client, fixture("ig_dm_echo.json")).json()["recorded"] == 1
    project_all(db_settings)
    [room] = client.get("/v1/rooms", headers=admin).json()["items"]
    assert room["channel"] == "instagram" and room["awaiting_reply"] is False
    assert client.get("/v1/inbox/counters", headers=admin).json()["messages"] == 0


# ---- edited and removed comments --------------------------------------------------------------
def test_edited_and_removed_comments_change_the_history_and_preview_once(
    client: TestClient, db_settings: Settings, admin: dict[str, str], accounts: None
) -> None:
    assert post(client, fixture("fb_feed_comment_add.json")).json()["recorded"] == 1
    assert post(client, fixture("fb_feed_comment_edited.json")).json()["recorded"] == 1
    assert post(client, fixture("fb_feed_comment_edited.json")).json()["duplicates"] == 1
    project_all(db_settings)
    [room] = client.get("/v1/rooms", params={"tab": "comments"}, headers=admin).json()["items"]
    assert room["last_message"]["text"] == "Masih ada ukuran L?"
    [comment] = history(client, admin, room["id"])
    assert comment["text"] == "Masih ada ukuran L?" and comment["edited_at"] and comment["removed"] is False

    assert post(client, fixture("fb_feed_comment_remove.json")).json()["recorded"] == 1
    assert post(client, fixture("fb_feed_comment_remove.json")).json()["duplicates"] == 1
    project_all(db_settings)
    room = client.get(f"/v1/rooms/{room['id']}", headers=admin).json()
    assert room["last_message"]["text"] == "" and room["status"] == "unassigned"
    [comment] = history(client, admin, room["id"])
    assert comment["removed"] is True and comment["removed_at"] and comment["text"] == "Masih ada ukuran L?"
    assert room_events(db_settings) == 4  # opened, received, edited, removed


def test_an_edit_of_a_comment_never_seen_records_the_comment(client: TestClient, db_settings: Settings,
                                                             admin: dict[str, str], accounts: None) -> None:
    assert post(client, fixture("fb_feed_comment_edited.json")).json()["recorded"] == 1
    assert post(client, fixture("fb_feed_comment_add.json")).json()["duplicates"] == 1
    assert post(client, fixture("fb_feed_comment_edited.json")).json()["duplicates"] == 1
    project_all(db_settings)
    [room] = client.get("/v1/rooms", headers=admin).json()["items"]
    assert [m["text"] for m in history(client, admin, room["id"])] == ["Masih ada ukuran L?"]


def test_removing_a_comment_never_seen_is_ignored(client: TestClient, db_settings: Settings, accounts: None) -> None:
    r = post(client, fixture("fb_feed_comment_remove.json"))
    assert r.status_code == 200 and r.json()["ignored"] == 1 and room_events(db_settings) == 0


# ---- end to end: signed webhook → badges ------------------------------------------------------
def test_signed_webhooks_reach_the_messages_and_comments_badges_with_the_channel_expiry(
    client: TestClient, db_settings: Settings, admin: dict[str, str], accounts: None
) -> None:
    now = int(time.time())
    fresh, old = fixture("wa_text.json"), fixture("fb_messenger_text.json")
    fresh["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(now - 3600)
    old["entry"][0]["messaging"][0]["timestamp"] = (now - 25 * 3600) * 1000  # Messenger: milliseconds
    batch = {"object": "page", "entry": old["entry"] + fixture("fb_feed_comment_add.json")["entry"]}
    assert post(client, fresh).status_code == 200
    assert post(client, batch).json()["recorded"] == 2
    assert post(client, fixture("ig_comment.json")).status_code == 200
    project_all(db_settings)

    counters = client.get("/v1/inbox/counters", headers=admin).json()
    assert counters["messages"] == 2 and counters["comments"] == 2 and counters["unassigned"] == 4
    rooms = {r["channel"]: r for r in client.get("/v1/rooms", headers=admin).json()["items"]}
    assert datetime.fromisoformat(rooms["whatsapp_cloud"]["expires_at"]) == datetime.fromtimestamp(now - 3600, UTC) + timedelta(hours=24)
    assert rooms["whatsapp_cloud"]["expired"] is False
    assert rooms["facebook_messenger"]["expired"] is True
    assert rooms["facebook_comment"]["expires_at"] is None and rooms["facebook_comment"]["expired"] is False

    agent = auth(db_settings, role="agent", user="agent1")
    reply = client.post(f"/v1/rooms/{rooms['whatsapp_cloud']['id']}/messages", headers=agent, json={"text": "Ada kak"})
    assert reply.status_code == 201
    project_all(db_settings)
    assert client.get("/v1/inbox/counters", headers=admin).json()["messages"] == 1
