"""domain/limits.py: what a stored value may be, and how channel values are repaired to fit."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from eventsourcing.application import Application
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import limits
from domain.channels import Channel
from domain.errors import InvalidCommand
from domain.room import Room
from inbox.adapters import wire

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"next": [value]}
    return value


# ---- checks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["a\x00b", "\ud800", "x\udfffy"], ids=["nul", "lone-high", "lone-low"])
def test_text_with_nul_or_a_lone_surrogate_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidCommand, match="reply text must not contain NUL"):
        limits.check_text(text, "reply text")


def test_text_longer_than_its_limit_is_refused_and_emoji_are_fine() -> None:
    assert limits.check_text("😊" * 10, "text", 10)
    with pytest.raises(InvalidCommand, match="longer than 10"):
        limits.check_text("x" * 11, "text", 10)


@pytest.mark.parametrize("value", ["-", "*", "", "  ", "a\nb", "a\x00", "x" * (limits.MAX_ID + 1)])
def test_reserved_empty_control_or_overlong_values_are_not_ids(value: str) -> None:
    with pytest.raises(InvalidCommand, match="agent_id"):
        limits.check_identifier(value, "agent_id")


def test_ids_may_contain_dashes_and_stars_inside() -> None:
    assert limits.check_identifier("agent-*-1", "agent_id") == "agent-*-1"


@pytest.mark.parametrize("at", [
    datetime(1, 1, 1, tzinfo=UTC), datetime(1999, 12, 31, 23, 59, tzinfo=UTC), NOW + timedelta(days=1, seconds=1),
    datetime(9999, 12, 31, tzinfo=UTC),
], ids=["year-1", "before-2000", "over-a-day-ahead", "year-9999"])
def test_timestamps_outside_2000_to_a_day_ahead_are_refused(at: datetime) -> None:
    with pytest.raises(InvalidCommand, match="sent_at must lie between 2000-01-01"):
        limits.check_moment(at, "sent_at", NOW)


def test_timestamps_inside_the_range_are_accepted() -> None:
    for at in (limits.EARLIEST, NOW, NOW + timedelta(hours=23)):
        assert limits.check_moment(at, "sent_at", NOW) == at


# ---- repairs ----------------------------------------------------------------------------------
def test_clean_text_replaces_unstorable_characters_and_truncates() -> None:
    assert limits.clean_text("a\x00b\ud800") == ("a\ufffdb\ufffd", ["unstorable_characters"])
    assert limits.clean_text("abcdef", 3) == ("abc", ["truncated"])
    assert limits.clean_text("fine") == ("fine", [])


HOSTILE: dict[str, Any] = {
    "nesting-300": deep(300),
    "1mb-string": {"payload": "x" * 1_000_000},
    "huge-ints": {"big": 2**64 + 1, "small": -(2**70), "enormous": 10**5000},
    "non-finite": {"nan": math.nan, "inf": math.inf, "ninf": -math.inf},
    "nul-and-surrogates": {"a\x00": "b\ud800", "list": ["\x00", "\udc00"]},
    "tuples-and-odd-keys": {1: (1, 2), None: {"x": datetime(2020, 1, 1, tzinfo=UTC)}},
    "huge-array": {"items": list(range(200_000))},
}


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_bounded_json_makes_any_value_encodable_by_every_encoder_and_reports_it(value: Any) -> None:
    clean, changed = limits.bounded_json(value)
    assert changed
    encoded = orjson.dumps(clean)  # the relay's encoder
    assert len(encoded) < 2 * limits.MAX_JSON_BYTES
    stored = json.dumps(clean, ensure_ascii=False, allow_nan=False).encode("utf-8")  # the event store's
    assert orjson.loads(encoded) == json.loads(stored) == clean
    assert b"\\u0000" not in encoded
    assert limits.bounded_json(clean) == (clean, False)  # repaired once, valid for good


def test_bounded_json_leaves_ordinary_metadata_alone() -> None:
    attachment = {"type": "location", "latitude": -6.2, "longitude": 106.8, "name": "Monas", "ok": True, "n": None}
    assert limits.bounded_json(attachment) == (attachment, False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_bounded_json_of_anything_round_trips_through_orjson_and_json_alike(value: Any) -> None:
    clean, _ = limits.bounded_json(value)
    encoded = orjson.dumps(clean)
    assert orjson.loads(encoded) == clean
    assert json.loads(json.dumps(clean, allow_nan=False)) == clean
    assert limits.bounded_json(clean) == (clean, False)


# ---- the stored event and the wire event agree -------------------------------------------------
def test_stored_event_json_and_wire_json_agree_for_repaired_values() -> None:
    """What the event store's transcoder writes and what the relay publishes carry the same data."""
    attachments = [limits.bounded_json(v)[0] for v in HOSTILE.values()][:limits.MAX_ATTACHMENTS]
    text, _ = limits.clean_text("hi\x00 \ud800 there" + "x" * 100_000)
    room = Room.open(org_id="org1", channel=Channel.WHATSAPP_CLOUD,
                     channel_account_id="acc", channel_account="123", contact_id="628123")
    room.receive(channel_message_id="wamid.1", text=text, sent_at=NOW, kind="text", attachments=attachments)
    app = Application()  # the library's default transcoder, as the PostgreSQL store uses it
    for event in room.collect_events():
        stored = app.mapper.to_stored_event(event)
        restored = app.mapper.to_domain_event(stored)
        published = wire.decode(wire.encode(wire.to_wire(restored)))
        original = wire.to_wire(event)
        assert published["data"] == orjson.loads(orjson.dumps(original["data"]))
        if isinstance(event, Room.MessageReceived):
            assert published["data"]["attachments"] == attachments
            assert published["data"]["text"] == text and len(text) == limits.MAX_TEXT


def test_the_room_refuses_values_it_could_not_store() -> None:
    from domain.staff import Actor, Role

    room = Room.open(org_id="org1", channel=Channel.WHATSAPP_CLOUD, channel_account_id="acc",
                     channel_account="123", contact_id="628123")
    with pytest.raises(InvalidCommand, match="text must not contain NUL"):
        room.receive(channel_message_id="m1", text="a\x00", sent_at=NOW)
    with pytest.raises(InvalidCommand, match="attachment must be JSON"):
        room.receive(channel_message_id="m1", text="a", sent_at=NOW, attachments=[{"n": math.nan}])
    admin = Actor(user_id="admin1", org_id="org1", role=Role.ADMIN)
    for reserved in ("-", "*"):
        with pytest.raises(InvalidCommand, match="reserved"):
            room.assign(admin, agent_id=reserved)
    with pytest.raises(InvalidCommand, match="contact id is required"):
        Room.open(org_id="org1", channel=Channel.WHATSAPP_CLOUD, channel_account_id="acc",
                  channel_account="123", contact_id="")
