"""inbox.adapters.wire: domain events → the SPEC §4 downstream contract, and back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from domain.channels import Channel
from domain.room import Room
from domain.staff import Actor, Role
from inbox.adapters.wire import SCHEMA_VERSION, InvalidWireEvent, decode, encode, event_id, to_wire, upcast

ORG = "org-1"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
SUPERVISOR = Actor("spv-1", ORG, Role.SUPERVISOR, "Sam")
ENVELOPE = {"id", "type", "schema_version", "org_id", "room_id", "version", "occurred_at", "data"}
REQUIRED = sorted(ENVELOPE - {"schema_version"})


def room_events() -> tuple[Room, list[Any]]:
    """A room through every event type, with its domain events."""
    room = Room.open(
        org_id=ORG, channel=Channel.WHATSAPP_CLOUD, channel_account_id="account-1",
        channel_account="+62 811 000", contact_id="contact-1",
    )
    room.receive(channel_message_id="wamid.1", text="halo", sent_at=T0)
    room.reply(SUPERVISOR, message_id="out-1", text="hi", sent_at=T0)
    room.resolve(SUPERVISOR)
    room.receive(channel_message_id="wamid.2", text="again", sent_at=T0)
    return room, room.collect_events()


def wire_events() -> list[dict[str, Any]]:
    _, events = room_events()
    return [to_wire(e) for e in events]


def v0_resolved() -> dict[str, Any]:
    """A pre-release draft event: no schema_version, the reason was called `cause`."""
    return {
        "id": "e-1", "type": "RoomResolved", "org_id": ORG, "room_id": "4b0e7d5c-3f6a-4c1e-9a57-0d2b8e6f1a93", "version": 4,
        "occurred_at": T0.isoformat(), "data": {"cause": "expired", "resolved_by": "spv-1", "by_role": "supervisor"},
    }


# ---- to_wire --------------------------------------------------------------------------------
def test_wire_event_has_exactly_the_spec_envelope() -> None:
    for event in wire_events():
        assert set(event) == ENVELOPE


def test_wire_event_types_and_versions_follow_the_room() -> None:
    room, events = room_events()

    wired = [to_wire(e) for e in events]

    assert [(w["type"], w["version"]) for w in wired] == [
        ("RoomOpened", 1), ("MessageReceived", 2), ("RoomAssigned", 3), ("MessageSent", 4),
        ("RoomResolved", 5), ("RoomReopened", 6), ("MessageReceived", 7),
    ]
    assert {w["room_id"] for w in wired} == {str(room.id)}
    assert {w["org_id"] for w in wired} == {ORG}
    assert {w["schema_version"] for w in wired} == {SCHEMA_VERSION}


def test_wire_data_leaves_out_library_bookkeeping() -> None:
    for event in wire_events():
        assert not {"originator_id", "originator_version", "timestamp", "originator_topic"} & set(event["data"])


def test_wire_data_carries_the_event_fields_as_json_values() -> None:
    received = wire_events()[1]

    assert received["data"]["channel_message_id"] == "wamid.1"
    assert received["data"]["sent_at"] == T0.isoformat()
    assert datetime.fromisoformat(received["occurred_at"]).tzinfo is not None


def test_resolved_event_carries_reason() -> None:
    resolved = next(e for e in wire_events() if e["type"] == "RoomResolved")

    assert resolved["data"]["reason"] == "manual"


def test_same_event_gets_same_id() -> None:
    room, events = room_events()

    assert [to_wire(e)["id"] for e in events] == [to_wire(e)["id"] for e in events]
    assert to_wire(events[2])["id"] == event_id(room.id, 3)


def test_event_id_is_deterministic_and_differs_per_version() -> None:
    room, _ = room_events()

    assert event_id(room.id, 1) == event_id(room.id, 1) == event_id(str(room.id), 1)
    assert event_id(room.id, 1) != event_id(room.id, 2)


def test_all_ids_of_a_room_are_distinct() -> None:
    ids = [e["id"] for e in wire_events()]

    assert len(set(ids)) == len(ids)


# ---- encode / decode ------------------------------------------------------------------------
def test_json_round_trip() -> None:
    for event in wire_events():
        assert decode(encode(event)) == event


def test_decode_accepts_text_and_dicts() -> None:
    event = wire_events()[0]

    assert decode(encode(event).decode()) == event
    assert decode(event) == event


@pytest.mark.parametrize("raw", [b"not json", b"", b"{", b"\xff\xfe"], ids=["text", "empty", "truncated", "binary"])
def test_decode_rejects_non_json(raw: bytes) -> None:
    with pytest.raises(InvalidWireEvent):
        decode(raw)


@pytest.mark.parametrize("raw", [b"[]", b"42", b'"RoomOpened"', b"null"])
def test_decode_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(InvalidWireEvent):
        decode(raw)


@pytest.mark.parametrize(
    "change",
    [{"room_id": ["x"]}, {"room_id": "not-a-uuid"}, {"room_id": "4B0E7D5C3F6A4C1E9A570D2B8E6F1A93"},
     {"version": "3"}, {"version": True}, {"version": 0}, {"version": 2**63}, {"type": ["MessageSent"]},
     {"org_id": None}, {"occurred_at": 12}],
    ids=["room_id_list", "room_id_not_uuid", "room_id_not_canonical", "version_string", "version_bool",
         "version_zero", "version_overflow", "type_list", "org_id_null", "occurred_at_number"],
)
def test_decode_rejects_an_envelope_a_reader_could_not_key_or_sort_by(change: dict[str, object]) -> None:
    with pytest.raises(InvalidWireEvent):
        decode(encode(dict(wire_events()[0], **change)))


@pytest.mark.parametrize("field", REQUIRED)
def test_decode_rejects_missing_field(field: str) -> None:
    event = wire_events()[0]
    del event[field]

    with pytest.raises(InvalidWireEvent, match=field):
        decode(encode(event))


# ---- upcasting ------------------------------------------------------------------------------
def test_upcast_renames_v0_resolve_cause_to_reason() -> None:
    event = upcast(v0_resolved())

    assert event["schema_version"] == SCHEMA_VERSION == 1
    assert event["data"] == {"reason": "expired", "resolved_by": "spv-1", "by_role": "supervisor"}


def test_upcast_does_not_change_its_input() -> None:
    original = v0_resolved()

    upcast(original)

    assert original == v0_resolved()


def test_decode_upcasts_old_events() -> None:
    event = decode(encode(v0_resolved()))

    assert event["data"]["reason"] == "expired"
    assert "cause" not in event["data"]


def test_current_events_pass_upcast_unchanged() -> None:
    for event in wire_events():
        assert upcast(event) == event


def test_newer_schema_version_is_rejected() -> None:
    event = dict(wire_events()[0], schema_version=SCHEMA_VERSION + 1)

    with pytest.raises(InvalidWireEvent):
        decode(encode(event))


@pytest.mark.parametrize(
    "event",
    [
        dict(v0_resolved(), schema_version="1"),
        dict(v0_resolved(), schema_version=None),
        dict(v0_resolved(), data=None),
    ],
    ids=["schema_version_string", "schema_version_null", "v0_data_null"],
)
def test_decode_rejects_wrongly_typed_fields(event: dict[str, Any]) -> None:
    with pytest.raises(InvalidWireEvent):
        decode(encode(event))


def test_event_id_is_the_uuid5_of_room_and_version() -> None:
    from uuid import uuid4, uuid5

    from inbox.adapters.wire import EVENT_ID_NAMESPACE, event_id

    for version in (1, 2, 99, 2**62):
        room = uuid4()
        expected = str(uuid5(EVENT_ID_NAMESPACE, f"{room}:{version}"))
        assert event_id(room, version) == expected == event_id(str(room), version)


@pytest.mark.parametrize("odd", [b"not json", b"[1, 2]", b'{"a": 1}, {"b": 2}', b"", b"1]", b"null", b'"text"'])
def test_decode_batch_gives_each_message_the_verdict_decode_gives_it(odd: bytes) -> None:
    from inbox.adapters.wire import decode_batch

    good = [encode(e) for e in wire_events()]
    raws = [good[0], odd, *good[1:]]
    got = decode_batch(raws)

    assert len(got) == len(raws)
    for raw, verdict in zip(raws, got, strict=True):
        try:
            expected: object = decode(raw)
        except InvalidWireEvent as e:
            assert isinstance(verdict, InvalidWireEvent) and str(verdict) == str(e)
        else:
            assert verdict == expected
    assert decode_batch(good) == [decode(r) for r in good] and decode_batch([]) == []
