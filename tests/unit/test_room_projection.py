"""projections.rooms.apply as a fold over wire events.

The wire events come from the real Room aggregate through inbox.adapters.wire.to_wire, so these tests
exercise the actual contract between the write side and the read model.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.channels import Channel
from domain.room import Room
from domain.staff import Actor, Role
from inbox.adapters.wire import to_wire
from projections.rooms import MessageRow, RoomView, UnknownEvent, apply

ORG = "org-1"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
AGENT = Actor("agent-1", ORG, Role.AGENT, "Alice")
SUPERVISOR = Actor("spv-1", ORG, Role.SUPERVISOR, "Sam")

DIRECT_CHANNELS = [Channel.WHATSAPP_CLOUD, Channel.INSTAGRAM, Channel.FACEBOOK_MESSENGER]
COMMENT_CHANNELS = [Channel.INSTAGRAM_COMMENT, Channel.FACEBOOK_COMMENT]


# ---- builders -------------------------------------------------------------------------------
def new_room(channel: Channel = Channel.WHATSAPP_CLOUD) -> Room:
    return Room.open(
        org_id=ORG, channel=channel, channel_account_id="account-1", channel_account="Shop",
        contact_id="contact-1", contact_name="Budi", contact_handle="@budi",
        post_id="post-1" if channel.is_comment else None,
    )


def receive(room: Room, n: int, at: datetime = T0, contact_name: str | None = None) -> str:
    return room.receive(channel_message_id=f"in-{n}", text=f"question {n}", sent_at=at, contact_name=contact_name)


def reply(room: Room, actor: Actor = AGENT, at: datetime = T0 + timedelta(minutes=5)) -> None:
    room.reply(actor, message_id=f"out-{room.version + 1}", text="answer", sent_at=at)


def wire(room: Room) -> list[dict[str, Any]]:
    return [to_wire(e) for e in room.collect_events()]


def fold(events: list[dict[str, Any]], view: RoomView | None = None) -> tuple[RoomView, list[MessageRow]]:
    messages = []
    for event in events:
        view, message = apply(view, event)
        if message is not None:
            messages.append(message)
    assert view is not None
    return view, messages


def project(room: Room) -> tuple[RoomView, list[MessageRow]]:
    return fold(wire(room))


# ---- tests ----------------------------------------------------------------------------------
def test_opened_room_is_unassigned_and_not_awaiting_reply() -> None:
    view, messages = project(new_room())

    assert (view.status, view.assignee, view.awaiting_reply) == ("unassigned", None, False)
    assert (view.org_id, view.tab, view.channel, view.version) == (ORG, "messages", "whatsapp_cloud", 1)
    assert (view.contact_name, view.contact_handle) == ("Budi", "@budi")
    assert view.last_message_id is None
    assert messages == []


def test_comment_room_lands_in_comments_tab() -> None:
    view, _ = project(new_room(Channel.FACEBOOK_COMMENT))

    assert (view.tab, view.post_id) == ("comments", "post-1")


def test_inbound_message_makes_room_await_reply() -> None:
    room = new_room()
    message_id = receive(room, 1)

    view, _ = project(room)

    assert view.awaiting_reply is True
    assert view.status == "unassigned"
    assert (view.last_message_id, view.last_message_direction) == (message_id, "inbound")
    assert (view.last_message_text, view.last_message_at) == ("question 1", T0)
    assert view.last_inbound_at == T0
    assert view.version == 2


def test_inbound_message_row() -> None:
    room = new_room()
    message_id = receive(room, 1)

    _, [row] = project(room)

    assert (row.id, row.room_id, row.org_id) == (message_id, str(room.id), ORG)
    assert (row.direction, row.seq, row.text, row.sent_at) == ("inbound", 2, "question 1", T0)
    assert (row.sender_id, row.sender_name, row.sender_role) == ("contact-1", "Budi", "contact")
    assert row.channel_message_id == "in-1"


def test_inbound_message_updates_contact_name() -> None:
    room = new_room()
    receive(room, 1, contact_name="Budi Santoso")

    view, [row] = project(room)

    assert view.contact_name == row.sender_name == "Budi Santoso"


@pytest.mark.parametrize("channel", DIRECT_CHANNELS, ids=str)
def test_direct_message_room_expires_24h_after_channel_timestamp(channel: Channel) -> None:
    room = new_room(channel)
    receive(room, 1, at=T0)

    view, _ = project(room)

    assert view.expires_at == T0 + timedelta(hours=24)


@pytest.mark.parametrize("channel", COMMENT_CHANNELS, ids=str)
def test_comment_room_never_expires(channel: Channel) -> None:
    room = new_room(channel)
    receive(room, 1)

    view, _ = project(room)

    assert view.expires_at is None


def test_expiry_follows_latest_inbound_message() -> None:
    room = new_room()
    receive(room, 1, at=T0)
    receive(room, 2, at=T0 + timedelta(hours=3))

    view, _ = project(room)

    assert view.last_inbound_at == T0 + timedelta(hours=3)
    assert view.expires_at == T0 + timedelta(hours=27)


def test_late_delivered_older_message_does_not_move_expiry_back() -> None:
    room = new_room()
    receive(room, 2, at=T0 + timedelta(hours=3))
    receive(room, 1, at=T0)

    view, _ = project(room)

    assert view.last_inbound_at == T0 + timedelta(hours=3)
    assert view.expires_at == T0 + timedelta(hours=27)


def test_reply_assigns_room_and_stops_awaiting() -> None:
    room = new_room()
    receive(room, 1)
    reply(room, AGENT, at=T0 + timedelta(minutes=5))

    view, _ = project(room)

    assert (view.status, view.assignee, view.awaiting_reply) == ("assigned", "agent-1", False)
    assert (view.last_message_direction, view.last_message_text) == ("outbound", "answer")
    assert view.last_message_at == T0 + timedelta(minutes=5)
    assert view.last_inbound_at == T0
    assert view.version == 4


def test_outbound_message_row() -> None:
    room = new_room()
    receive(room, 1)
    reply(room, AGENT, at=T0 + timedelta(minutes=5))

    _, [_, row] = project(room)

    assert (row.id, row.direction, row.seq) == ("out-3", "outbound", 4)
    assert (row.sender_id, row.sender_name, row.sender_role) == ("agent-1", "Alice", "agent")
    assert (row.text, row.sent_at, row.channel_message_id) == ("answer", T0 + timedelta(minutes=5), None)


def test_message_seq_is_the_event_version() -> None:
    room = new_room()
    receive(room, 1)
    reply(room)
    receive(room, 2)
    events = wire(room)

    _, rows = fold(events)

    message_versions = [e["version"] for e in events if e["type"] in ("MessageReceived", "MessageSent")]
    assert [r.seq for r in rows] == message_versions == [2, 4, 5]
    assert [r.direction for r in rows] == ["inbound", "outbound", "inbound"]


def test_assignment_keeps_room_awaiting_reply() -> None:
    room = new_room()
    receive(room, 1)
    room.assign(SUPERVISOR, agent_id="agent-2")

    view, _ = project(room)

    assert (view.status, view.assignee, view.awaiting_reply) == ("assigned", "agent-2", True)


def test_resolved_room_is_not_awaiting_reply() -> None:
    room = new_room()
    receive(room, 1)
    room.assign(SUPERVISOR, agent_id="agent-1")
    room.resolve(SUPERVISOR)

    view, _ = project(room)

    assert (view.status, view.assignee, view.awaiting_reply) == ("resolved", "agent-1", False)
    assert view.version == 4


def test_reopened_room_becomes_unassigned_and_awaits_reply() -> None:
    room = new_room()
    receive(room, 1)
    reply(room, AGENT)
    room.resolve(AGENT)
    receive(room, 2, at=T0 + timedelta(days=2))

    view, rows = project(room)

    assert (view.status, view.assignee, view.awaiting_reply) == ("unassigned", None, True)
    assert view.version == 7
    assert view.last_inbound_at == T0 + timedelta(days=2)
    assert [r.seq for r in rows] == [2, 4, 7]


def test_fold_can_continue_from_an_existing_view() -> None:
    room = new_room()
    receive(room, 1)
    view, _ = project(room)
    reply(room)

    view, [row] = fold(wire(room), view)

    assert (view.version, view.awaiting_reply, row.seq) == (4, False, 4)


def test_updated_at_is_time_of_latest_event() -> None:
    room = new_room()
    receive(room, 1)
    events = wire(room)

    view, _ = fold(events)

    assert view.opened_at == datetime.fromisoformat(events[0]["occurred_at"])
    assert view.updated_at == datetime.fromisoformat(events[-1]["occurred_at"])


def test_unknown_event_type_is_reported() -> None:
    room = new_room()
    receive(room, 1)
    opened, received = wire(room)
    view, _ = fold([opened])

    with pytest.raises(UnknownEvent):
        apply(view, dict(received, type="RoomArchived"))


def test_event_before_room_opened_is_rejected() -> None:
    room = new_room()
    receive(room, 1)
    _, received = wire(room)

    with pytest.raises(ValueError):
        apply(None, received)
