"""The Room aggregate's rules (SPEC §2) as given / when / then stories.

Given: a room built by earlier commands, its events already collected.
When: one command.
Then: the events it recorded (class names and versions) or the error it raised.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce
from uuid import UUID, uuid5

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from eventsourcing.application import Application
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent

from domain.channels import Channel
from domain.errors import InvalidCommand, NotAllowed
from domain.room import (
    ASSIGNED, RESOLVED, UNASSIGNED, EventWithoutOrg, Room, RoomIsResolved, inbound_message_id, uuid5_text,
)
from domain.staff import Actor, Role

ORG = "org-1"
OTHER_ORG = "org-2"
ACCOUNT_ID = "account-1"
CONTACT = "628111222333"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)

ADMIN = Actor("admin-1", ORG, Role.ADMIN, "Ada")
SUPERVISOR = Actor("spv-1", ORG, Role.SUPERVISOR, "Sam")
AGENT = Actor("agent-1", ORG, Role.AGENT, "Alice")
OTHER_AGENT = Actor("agent-2", ORG, Role.AGENT, "Bob")
INTEGRATION = Actor("integration-1", ORG, Role.INTEGRATION)


# ---- builders -------------------------------------------------------------------------------
def opened_room(channel: Channel = Channel.WHATSAPP_CLOUD, post_id: str | None = None) -> Room:
    """A room as the first inbound message leaves it: opened, one message, unassigned."""
    room = Room.open(
        org_id=ORG, channel=channel, channel_account_id=ACCOUNT_ID, channel_account="+62 811 000",
        contact_id=CONTACT, contact_name="Budi", post_id=post_id,
    )
    receive(room, "wamid.1")
    room.collect_events()
    return room


def assigned_room(assignee: Actor = AGENT) -> Room:
    room = opened_room()
    room.assign(SUPERVISOR, agent_id=assignee.user_id)
    room.collect_events()
    return room


def resolved_room(assignee: Actor = AGENT) -> Room:
    room = assigned_room(assignee)
    room.resolve(SUPERVISOR)
    room.collect_events()
    return room


def receive(room: Room, channel_message_id: str = "wamid.2", at: datetime = T0) -> str:
    return room.receive(channel_message_id=channel_message_id, text="Halo, pesanan saya?", sent_at=at)


def reply(room: Room, actor: Actor, text: str = "Hi, let me check.") -> None:
    room.reply(actor, message_id=f"out-{room.version + 1}", text=text, sent_at=T0 + timedelta(minutes=1))


def recorded(room: Room) -> list[tuple[str, int]]:
    """The (event class name, version) pairs the last command recorded."""
    return [(type(e).__name__, e.originator_version) for e in room.collect_events()]


# ---- opening --------------------------------------------------------------------------------
def test_first_inbound_message_opens_an_unassigned_room() -> None:
    room = Room.open(
        org_id=ORG, channel=Channel.WHATSAPP_CLOUD, channel_account_id=ACCOUNT_ID,
        channel_account="+62 811 000", contact_id=CONTACT,
    )
    receive(room, "wamid.1")

    assert recorded(room) == [("RoomOpened", 1), ("MessageReceived", 2)]
    assert room.status == UNASSIGNED
    assert room.assignee is None
    assert room.message_count == 1


def test_comment_room_requires_post_id() -> None:
    with pytest.raises(InvalidCommand):
        Room.open(
            org_id=ORG, channel=Channel.INSTAGRAM_COMMENT, channel_account_id=ACCOUNT_ID,
            channel_account="@shop", contact_id="ig-user",
        )


def test_direct_message_room_rejects_post_id() -> None:
    with pytest.raises(InvalidCommand):
        Room.open(
            org_id=ORG, channel=Channel.FACEBOOK_MESSENGER, channel_account_id=ACCOUNT_ID,
            channel_account="Shop page", contact_id="psid-1", post_id="post-1",
        )


def test_inbound_message_without_timezone_is_rejected() -> None:
    room = opened_room()

    with pytest.raises(InvalidCommand):
        room.receive(channel_message_id="wamid.2", text="hi", sent_at=datetime(2024, 5, 1, 9, 0))


# ---- identity -------------------------------------------------------------------------------
def test_the_same_org_account_and_contact_always_find_the_same_room() -> None:
    first, again = opened_room(), opened_room()

    assert first.id == again.id == Room.create_id(ORG, ACCOUNT_ID, CONTACT)
    assert first.id.version == 5  # derived from the names, not random


def test_room_id_differs_by_post() -> None:
    assert Room.create_id(ORG, ACCOUNT_ID, CONTACT, "post-1") != Room.create_id(ORG, ACCOUNT_ID, CONTACT, "post-2")
    assert Room.create_id(ORG, ACCOUNT_ID, CONTACT, "post-1") != Room.create_id(ORG, ACCOUNT_ID, CONTACT)


def test_room_id_differs_by_org() -> None:
    assert Room.create_id(ORG, ACCOUNT_ID, CONTACT) != Room.create_id(OTHER_ORG, ACCOUNT_ID, CONTACT)


def test_the_same_channel_message_always_gets_the_same_message_id() -> None:
    room, replayed = opened_room(), opened_room()

    message_id = receive(room, "wamid.2")

    assert message_id == receive(replayed, "wamid.2") == str(inbound_message_id(room.id, "wamid.2"))
    assert message_id != str(inbound_message_id(room.id, "wamid.3"))


@given(st.uuids(), st.text(st.characters(blacklist_categories=("Cs",))))
def test_message_ids_are_the_rfc_4122_name_based_uuids_of_the_room_and_the_channel_message(
    room_id: UUID, name: str
) -> None:
    assert uuid5_text(room_id, name) == str(uuid5(room_id, name))


# ---- replying -------------------------------------------------------------------------------
def test_reply_assigns_unassigned_room_to_replier() -> None:
    room = opened_room()

    reply(room, AGENT)

    assert recorded(room) == [("RoomAssigned", 3), ("MessageSent", 4)]
    assert room.status == ASSIGNED
    assert room.assignee == AGENT.user_id


def test_reply_to_own_room_only_sends_a_message() -> None:
    room = assigned_room(AGENT)

    reply(room, AGENT)

    assert recorded(room) == [("MessageSent", 4)]
    assert room.assignee == AGENT.user_id


def test_agent_cannot_reply_to_room_assigned_to_another_agent() -> None:
    room = assigned_room(OTHER_AGENT)

    with pytest.raises(NotAllowed):
        reply(room, AGENT)
    assert recorded(room) == []


def test_supervisor_reply_to_agents_room_keeps_the_assignee() -> None:
    room = assigned_room(AGENT)

    reply(room, SUPERVISOR)

    assert recorded(room) == [("MessageSent", 4)]
    assert room.assignee == AGENT.user_id


def test_empty_reply_is_rejected() -> None:
    room = opened_room()

    with pytest.raises(InvalidCommand):
        reply(room, AGENT, text="   ")


def test_staff_cannot_reply_to_resolved_room() -> None:
    room = resolved_room()

    with pytest.raises(RoomIsResolved):
        reply(room, SUPERVISOR)
    assert recorded(room) == []


# ---- assigning ------------------------------------------------------------------------------
def test_agent_can_take_unassigned_room_for_itself() -> None:
    room = opened_room()

    assert room.assign(AGENT, agent_id=AGENT.user_id) is True

    events = room.collect_events()
    assert [(type(e).__name__, e.originator_version) for e in events] == [("RoomAssigned", 3)]
    assert events[0].reason == "taken"
    assert room.assignee == AGENT.user_id


def test_agent_may_only_take_room_for_itself() -> None:
    room = opened_room()

    with pytest.raises(NotAllowed):
        room.assign(AGENT, agent_id=OTHER_AGENT.user_id)
    assert recorded(room) == []


def test_agent_cannot_take_room_assigned_to_another_agent() -> None:
    room = assigned_room(OTHER_AGENT)

    with pytest.raises(NotAllowed):
        room.assign(AGENT, agent_id=AGENT.user_id)
    assert room.assignee == OTHER_AGENT.user_id


@pytest.mark.parametrize("manager", [SUPERVISOR, ADMIN], ids=["supervisor", "admin"])
def test_supervisor_can_assign_anyone(manager: Actor) -> None:
    room = assigned_room(AGENT)

    assert room.assign(manager, agent_id=OTHER_AGENT.user_id) is True

    events = room.collect_events()
    assert [(type(e).__name__, e.originator_version) for e in events] == [("RoomAssigned", 4)]
    assert (events[0].previous_assignee, events[0].assignee) == (AGENT.user_id, OTHER_AGENT.user_id)
    assert events[0].reason == "assigned"
    assert room.assignee == OTHER_AGENT.user_id


def test_assigning_to_current_assignee_records_nothing() -> None:
    room = assigned_room(AGENT)

    assert room.assign(SUPERVISOR, agent_id=AGENT.user_id) is False
    assert room.assign(AGENT, agent_id=AGENT.user_id) is False
    assert recorded(room) == []
    assert room.version == 3


def test_assigning_resolved_room_is_a_conflict() -> None:
    room = resolved_room()

    with pytest.raises(RoomIsResolved):
        room.assign(SUPERVISOR, agent_id=OTHER_AGENT.user_id)


def test_assign_requires_agent_id() -> None:
    with pytest.raises(InvalidCommand):
        opened_room().assign(SUPERVISOR, agent_id="")


# ---- resolving ------------------------------------------------------------------------------
@pytest.mark.parametrize("resolver", [AGENT, SUPERVISOR, ADMIN], ids=["assignee", "supervisor", "admin"])
def test_only_assignee_supervisor_or_admin_can_resolve(resolver: Actor) -> None:
    room = assigned_room(AGENT)

    room.resolve(resolver)

    events = room.collect_events()
    assert [(type(e).__name__, e.originator_version) for e in events] == [("RoomResolved", 4)]
    assert (events[0].reason, events[0].resolved_by) == ("manual", resolver.user_id)
    assert room.status == RESOLVED


def test_other_agent_cannot_resolve() -> None:
    room = assigned_room(AGENT)

    with pytest.raises(NotAllowed):
        room.resolve(OTHER_AGENT)
    assert room.status == ASSIGNED


def test_agent_cannot_resolve_unassigned_room() -> None:
    with pytest.raises(NotAllowed):
        opened_room().resolve(AGENT)


def test_supervisor_can_resolve_unassigned_room() -> None:
    room = opened_room()

    room.resolve(SUPERVISOR)

    assert recorded(room) == [("RoomResolved", 3)]


def test_resolving_resolved_room_is_a_conflict() -> None:
    room = resolved_room(AGENT)

    with pytest.raises(RoomIsResolved):
        room.resolve(SUPERVISOR)
    with pytest.raises(RoomIsResolved):
        room.resolve(AGENT)
    assert recorded(room) == []


def test_expired_resolution_needs_supervisor_or_admin() -> None:
    room = assigned_room(AGENT)

    with pytest.raises(NotAllowed):
        room.resolve(AGENT, reason="expired")

    room.resolve(SUPERVISOR, reason="expired")
    events = room.collect_events()
    assert [type(e).__name__ for e in events] == ["RoomResolved"]
    assert events[0].reason == "expired"


def test_unknown_resolve_reason_is_rejected() -> None:
    with pytest.raises(InvalidCommand):
        assigned_room().resolve(SUPERVISOR, reason="bored")


# ---- reopening ------------------------------------------------------------------------------
def test_new_inbound_message_reopens_resolved_room_as_unassigned() -> None:
    room = resolved_room(AGENT)  # v1 opened, v2 message, v3 assigned, v4 resolved

    receive(room, "wamid.2")

    assert recorded(room) == [("RoomReopened", 5), ("MessageReceived", 6)]
    assert room.status == UNASSIGNED
    assert room.assignee is None
    assert room.message_count == 2
    assert room.version == 6


def test_inbound_message_on_open_room_does_not_reopen() -> None:
    room = assigned_room(AGENT)

    receive(room, "wamid.2")

    assert recorded(room) == [("MessageReceived", 4)]
    assert room.assignee == AGENT.user_id


# ---- integration role -----------------------------------------------------------------------
def test_integration_role_cannot_assign() -> None:
    with pytest.raises(NotAllowed):
        opened_room().assign(INTEGRATION, agent_id=AGENT.user_id)


def test_integration_role_cannot_reply() -> None:
    with pytest.raises(NotAllowed):
        reply(opened_room(), INTEGRATION)


def test_integration_role_cannot_resolve() -> None:
    with pytest.raises(NotAllowed):
        assigned_room().resolve(INTEGRATION)


# ---- awaiting reply -------------------------------------------------------------------------
def test_awaiting_reply_after_inbound_message() -> None:
    assert opened_room().awaiting_reply is True


def test_not_awaiting_reply_after_staff_reply() -> None:
    room = opened_room()

    reply(room, AGENT)

    assert room.awaiting_reply is False


def test_not_awaiting_reply_when_resolved() -> None:
    room = opened_room()  # latest message is inbound

    room.resolve(SUPERVISOR)

    assert room.awaiting_reply is False


def test_awaiting_reply_again_when_customer_writes_after_reply() -> None:
    room = opened_room()
    reply(room, AGENT)

    receive(room, "wamid.2")

    assert room.awaiting_reply is True


# ---- visibility -----------------------------------------------------------------------------
@pytest.mark.parametrize("manager", [ADMIN, SUPERVISOR], ids=["admin", "supervisor"])
def test_admin_and_supervisor_see_every_room_of_their_org(manager: Actor) -> None:
    assert opened_room().is_visible_to(manager)
    assert assigned_room(AGENT).is_visible_to(manager)
    assert resolved_room(AGENT).is_visible_to(manager)


def test_agent_sees_unassigned_rooms() -> None:
    assert opened_room().is_visible_to(AGENT)


def test_agent_sees_own_rooms() -> None:
    assert assigned_room(AGENT).is_visible_to(AGENT)
    assert resolved_room(AGENT).is_visible_to(AGENT)


def test_agent_never_sees_another_agents_room() -> None:
    assert not assigned_room(OTHER_AGENT).is_visible_to(AGENT)
    assert not resolved_room(OTHER_AGENT).is_visible_to(AGENT)


@pytest.mark.parametrize("role", [Role.ADMIN, Role.SUPERVISOR, Role.AGENT, Role.INTEGRATION])
def test_other_org_never_sees_the_room(role: Role) -> None:
    outsider = Actor("agent-1", OTHER_ORG, role)

    assert not opened_room().is_visible_to(outsider)


# ---- replay and snapshots -------------------------------------------------------------------
def full_story() -> tuple[Room, list]:
    """A room through every event type; returns the room and all of its events."""
    room = Room.open(
        org_id=ORG, channel=Channel.INSTAGRAM_COMMENT, channel_account_id=ACCOUNT_ID,
        channel_account="@shop", contact_id="ig-user", contact_handle="@budi", post_id="post-1",
    )
    receive(room, "c1")
    reply(room, AGENT)
    room.assign(SUPERVISOR, agent_id=OTHER_AGENT.user_id)
    room.resolve(OTHER_AGENT)
    receive(room, "c2", at=T0 + timedelta(hours=2))
    return room, room.collect_events()


def test_story_events_are_numbered_from_one() -> None:
    _, events = full_story()

    assert [(type(e).__name__, e.originator_version) for e in events] == [
        ("RoomOpened", 1),
        ("MessageReceived", 2),
        ("RoomAssigned", 3),
        ("MessageSent", 4),
        ("RoomAssigned", 5),
        ("RoomResolved", 6),
        ("RoomReopened", 7),
        ("MessageReceived", 8),
    ]


def test_replay_of_events_rebuilds_same_state() -> None:
    room, events = full_story()

    replayed = reduce(lambda aggregate, e: e.mutate(aggregate), events, None)

    assert replayed == room
    assert (replayed.status, replayed.assignee, replayed.version) == (UNASSIGNED, None, 8)
    assert replayed.message_count == 3
    assert replayed.last_inbound_at == T0 + timedelta(hours=2)


def test_snapshot_restores_equal_state() -> None:
    room, _ = full_story()

    restored = Snapshot.take(room).mutate(None)

    assert restored == room
    assert restored.version == room.version


def test_a_stored_event_without_org_id_is_refused_with_a_reason_not_read_without_an_org() -> None:
    app = Application()
    try:
        room = Room.open(
            org_id="org-1", channel=Channel.WHATSAPP_CLOUD, channel_account_id="acc", channel_account="1",
            contact_id="c",
        )
        room.receive(channel_message_id="m1", text="hi", sent_at=datetime(2026, 1, 5, tzinfo=UTC))
        stored = app.mapper.to_stored_event(room.collect_events()[-1])
        state = orjson.loads(stored.state)
        del state["org_id"]
        state["class_version"] = 2  # as stored before message events carried org_id
        unstamped = StoredEvent(stored.originator_id, stored.originator_version, stored.topic, orjson.dumps(state))

        with pytest.raises(EventWithoutOrg, match="inbox migrate"):
            app.mapper.to_domain_event(unstamped)
    finally:
        app.close()
