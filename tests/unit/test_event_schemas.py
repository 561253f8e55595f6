"""docs/events/*.json (the published SPEC §4 contract) must match what inbox.adapters.wire really emits.

Every event is built with the real domain code and serialized with the real wire code (directly,
after a round trip through the event store's mapper, and as the bytes the relay publishes), then
validated with Draft 2020-12 against the envelope and its type's schema. The data schemas are
closed (`additionalProperties: false`, every field required), so adding, removing or renaming a
field in domain/room.py without updating docs/events fails here.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from domain.channel_account import channel_account_id_for
from domain.channels import Channel
from domain.room import Room, inbound_message_id
from domain.staff import Actor, Role
from inbox.adapters.wire import EVENT_TYPE_NAMES, SCHEMA_VERSION, decode, encode, to_wire, upcast

DOCS = Path(__file__).resolve().parents[2] / "docs"
EVENTS_DIR = DOCS / "events"
ORG = "org-schema"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


# ---- schemas --------------------------------------------------------------------------------
def _load_schemas() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(EVENTS_DIR.glob("*.json"))}


SCHEMAS = _load_schemas()
REGISTRY: Registry = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in SCHEMAS.values()
)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(SCHEMAS[name], registry=REGISTRY)


def errors(name: str, event: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(event)]


# ---- events, built with the real code -------------------------------------------------------
def _direct_message_room() -> list[Any]:
    """Every event type, nullable fields mostly null."""
    account = str(channel_account_id_for("whatsapp_cloud", "1065403"))
    room = Room.open(
        org_id=ORG, channel=Channel.WHATSAPP_CLOUD, channel_account_id=account,
        channel_account="1065403", contact_id="6281234567890",
    )
    room.receive(channel_message_id="wamid.1", text="halo", sent_at=T0)
    agent = Actor("agent-1", ORG, Role.AGENT)  # no name
    reply_id = str(uuid.uuid4())
    room.reply(agent, message_id=reply_id, text="hi", sent_at=T0 + timedelta(minutes=1))  # assigned: replied
    room.record_delivery_accepted(message_id=reply_id, channel_message_id="wamid.out1", at=T0 + timedelta(minutes=1))
    room.record_delivery_status(channel_message_id="wamid.out1", status="read", at=T0 + timedelta(minutes=2))
    failed_id, unknown_id = str(uuid.uuid4()), str(uuid.uuid4())
    room.reply(agent, message_id=failed_id, text="no", sent_at=T0 + timedelta(minutes=3))
    room.record_delivery_failed(message_id=failed_id, code=131026, title="Message Undeliverable", permanent=True,
                                at=T0 + timedelta(minutes=3))
    room.reply(agent, template={"name": "order_update", "language": "en_US", "components": []},
               message_id=unknown_id, text=None, sent_at=T0 + timedelta(minutes=4))
    room.record_delivery_unknown(message_id=unknown_id, reason="ReadTimeout after the request was sent",
                                 at=T0 + timedelta(minutes=4))
    room.record_delivery_status(channel_message_id="wamid.out3", status="failed", at=T0 + timedelta(minutes=5),
                                error={"code": 131047, "title": "Re-engagement message"}, message_id=unknown_id)
    room.resolve(agent)  # manual, by the assignee
    room.receive(channel_message_id="wamid.2", text="", sent_at=T0 + timedelta(days=1))  # reopened
    room.receive(  # a media message with its metadata
        channel_message_id="wamid.3", text="this one", sent_at=T0 + timedelta(days=1, minutes=1), kind="image",
        attachments=[{"type": "image", "id": "1003383421387256", "mime_type": "image/jpeg", "sha256": "x"}],
    )
    room.record_echo(  # the business's own message, echoed by the channel
        channel_message_id="m_echo.1", text="", sent_at=T0 + timedelta(days=1, minutes=2), sender_id="1065403",
        kind="image", attachments=[{"type": "image", "url": "https://example.invalid/a.jpg"}],
    )
    return room.collect_events()


def _comment_room() -> list[Any]:
    """The other variants: names/handles set, post_id set, taken / assigned, resolved as expired."""
    account = str(channel_account_id_for("instagram_comment", "17841400000"))
    room = Room.open(
        org_id=ORG, channel=Channel.INSTAGRAM_COMMENT, channel_account_id=account,
        channel_account="17841400000", contact_id="igsid-9", contact_name="Ana Lúcia",
        contact_phone="+62 811 000", contact_handle="ana.lucia", post_id="post-42",
    )
    room.receive(
        channel_message_id="c-1", text="berapa harganya?", sent_at=datetime(2024, 5, 1, 16, 0, 0, 123456, tzinfo=UTC),
        contact_name="Ana L.",
    )
    room.assign(Actor("agent-2", ORG, Role.AGENT, "Budi"), agent_id="agent-2")  # taken
    supervisor = Actor("spv-1", ORG, Role.SUPERVISOR, "Sam")
    room.assign(supervisor, agent_id="agent-3")  # assigned, with a previous assignee
    room.reply(supervisor, message_id=str(uuid.uuid4()), text="Rp 50.000", sent_at=T0)
    room.resolve(Actor("admin-1", ORG, Role.ADMIN), reason="expired")
    message_id = str(inbound_message_id(room.id, "c-1"))
    room.edit_message(message_id=message_id, channel_message_id="c-1", text="berapa harga ukuran L?",
                      edited_at=T0 + timedelta(hours=8))
    room.remove_message(message_id=message_id, channel_message_id="c-1", removed_at=T0 + timedelta(hours=9))
    return room.collect_events()


def domain_events() -> list[Any]:
    return _direct_message_room() + _comment_room()


def wire_events() -> list[dict[str, Any]]:
    return [to_wire(e) for e in domain_events()]


def stored_wire_events() -> list[dict[str, Any]]:
    """As the relay sees them: through the event store's mapper (transcoding), then to JSON bytes."""
    from eventsourcing.application import Application

    app = Application()
    try:
        restored = [app.mapper.to_domain_event(app.mapper.to_stored_event(e)) for e in domain_events()]
    finally:
        app.close()
    return [orjson.loads(encode(to_wire(e))) for e in restored]


def _ids(events: list[dict[str, Any]]) -> list[str]:
    return [f"{i}-{e['type']}-v{e['version']}" for i, e in enumerate(events)]


# ---- the schema files themselves ------------------------------------------------------------
def test_one_schema_file_per_event_type_plus_the_envelope() -> None:
    assert set(SCHEMAS) == EVENT_TYPE_NAMES | {"envelope"}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_files_are_valid_draft_2020_12(name: str) -> None:
    schema = SCHEMAS[name]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.json")
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", sorted(EVENT_TYPE_NAMES))
def test_event_schemas_describe_the_current_schema_version(name: str) -> None:
    props = SCHEMAS[name]["properties"]
    assert props["type"] == {"const": name}
    assert props["schema_version"] == {"const": SCHEMA_VERSION}
    assert SCHEMAS[name]["allOf"] == [{"$ref": "envelope.json"}]


# ---- real events against the schemas --------------------------------------------------------
def test_samples_cover_every_event_type() -> None:
    assert {e["type"] for e in wire_events()} == EVENT_TYPE_NAMES


@pytest.mark.parametrize("event", wire_events(), ids=_ids(wire_events()))
def test_wire_events_match_their_schema(event: dict[str, Any]) -> None:
    assert errors("envelope", event) == []
    assert errors(event["type"], event) == []


@pytest.mark.parametrize("event", stored_wire_events(), ids=_ids(stored_wire_events()))
def test_events_read_back_from_the_store_and_encoded_match_their_schema(event: dict[str, Any]) -> None:
    assert errors(event["type"], event) == []
    assert errors(event["type"], decode(encode(event))) == []


@pytest.mark.parametrize("name", sorted(EVENT_TYPE_NAMES))
def test_data_schema_lists_exactly_the_fields_to_wire_emits(name: str) -> None:
    data_schema = SCHEMAS[name]["properties"]["data"]
    emitted = [set(e["data"]) for e in wire_events() if e["type"] == name]
    assert emitted
    for fields in emitted:
        assert fields == set(data_schema["properties"]) == set(data_schema["required"])
    assert data_schema["additionalProperties"] is False


@pytest.mark.parametrize("name", sorted(EVENT_TYPE_NAMES))
def test_nullable_fields_are_typed_string_or_null(name: str) -> None:
    props = SCHEMAS[name]["properties"]["data"]["properties"]
    events = [e for e in wire_events() if e["type"] == name]
    for field, spec in props.items():
        if any(e["data"][field] is None for e in events):
            assert isinstance(spec["type"], list) and spec["type"][-1] == "null", field


def test_schemas_reject_drift() -> None:
    event = next(e for e in wire_events() if e["type"] == "MessageReceived")
    extra = dict(event, data={**event["data"], "new_field": "x"})
    missing = dict(event, data={k: v for k, v in event["data"].items() if k != "sent_at"})
    wrong_type = dict(event, type="RoomOpened")
    naive_time = dict(event, data={**event["data"], "sent_at": "2024-05-01T09:00:00"})
    for bad in (extra, missing, naive_time):
        assert errors("MessageReceived", bad)
    assert errors("RoomOpened", wrong_type)
    assert errors("envelope", dict(event, extra=1))
    assert errors("envelope", {k: v for k, v in event.items() if k != "id"})


def test_upcast_old_events_match_the_current_schema() -> None:
    resolved = next(e for e in wire_events() if e["type"] == "RoomResolved")
    v0 = {k: v for k, v in resolved.items() if k != "schema_version"}
    v0["data"] = {("cause" if k == "reason" else k): v for k, v in resolved["data"].items()}

    assert errors("RoomResolved", v0)
    assert errors("RoomResolved", upcast(v0)) == []


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_examples_in_the_schemas_are_valid(name: str) -> None:
    examples = SCHEMAS[name].get("examples", [])
    assert examples
    for example in examples:
        assert errors(name, example) == []
        assert errors(example["type"], example) == []


# ---- the AsyncAPI document points at these files --------------------------------------------
def test_asyncapi_references_every_event_schema() -> None:
    text = (DOCS / "asyncapi.yaml").read_text()
    refs = set(re.findall(r"\$ref['\"]?:\s*['\"]?(\./events/[A-Za-z]+\.json)", text))
    assert {Path(r).stem for r in refs} == EVENT_TYPE_NAMES
    for ref in refs:
        assert (DOCS / ref).is_file(), ref


def test_asyncapi_document_lists_every_event_type_on_the_channel() -> None:
    yaml = pytest.importorskip("yaml")  # PyYAML: only this structural check needs it
    doc = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["channels"]["inboxEvents"]["messages"]) == EVENT_TYPE_NAMES
    assert set(doc["components"]["messages"]) == EVENT_TYPE_NAMES


# ---- events recorded before messages had a kind and attachments -----------------------------
def test_stored_v1_message_events_load_with_kind_text_and_no_attachments() -> None:
    from eventsourcing.application import Application

    app = Application()
    try:
        events = [e for e in _direct_message_room() if type(e).__name__ in ("MessageReceived", "MessageSent")]
        for domain_event in events:
            stored = app.mapper.to_stored_event(domain_event)
            state = orjson.loads(stored.state)
            for key in ("kind", "attachments", "class_version"):
                state.pop(key, None)  # as written before `kind` and `attachments` existed
            old = type(stored)(stored.originator_id, stored.originator_version, stored.topic, orjson.dumps(state))
            restored = app.mapper.to_domain_event(old)
            assert (restored.kind, restored.attachments) == ("text", [])
            wire = to_wire(restored)
            assert errors(wire["type"], wire) == []
    finally:
        app.close()


def test_published_events_without_kind_are_upcast_to_the_current_schema() -> None:
    for event in wire_events():
        if event["type"] not in ("MessageReceived", "MessageSent"):
            continue
        old = dict(event, data={k: v for k, v in event["data"].items() if k not in ("kind", "attachments")})
        assert errors(event["type"], old)
        upcast_event = decode(encode(old))
        assert errors(event["type"], upcast_event) == []
        assert upcast_event["data"]["kind"] == "text" and upcast_event["data"]["attachments"] == []
