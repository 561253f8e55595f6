"""Room rules for channel facts (echoes, edits, removals, kinds) and their projection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.channels import Channel
from domain.errors import InvalidCommand
from domain.room import CHANNEL_SENDER, RESOLVED, UNASSIGNED, Room, echo_message_id, inbound_message_id
from domain.staff import Actor, Role
from inbox.adapters.wire import to_wire
from projections.rooms import MessageChange, apply, message_change

ORG = "org-1"
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
SUPERVISOR = Actor("spv-1", ORG, Role.SUPERVISOR, "Sam")


def room(channel: Channel = Channel.FACEBOOK_MESSENGER) -> Room:
    r = Room.open(org_id=ORG, channel=channel, channel_account_id="acc-1", channel_account="page-1",
                  contact_id="psid-1", post_id="post-1" if channel.is_comment else None)
    r.receive(channel_message_id="m1", text="halo", sent_at=T0)
    return r


def fold(r: Room) -> tuple[object, list[object]]:
    view, rows = None, []
    for event in r.collect_events():
        wire = to_wire(event)
        view, message = apply(view, wire)
        rows += [x for x in (message, message_change(wire)) if x is not None]
    return view, rows


def test_an_echo_is_outbound_from_the_channel_and_assigns_nobody() -> None:
    r = room()
    message_id = r.record_echo(channel_message_id="m_out", text="thanks", sent_at=T0 + timedelta(minutes=1), sender_id="page-1")
    event = r.collect_events()[-1]
    assert type(event).__name__ == "MessageSent" and event.sender_role == CHANNEL_SENDER
    assert message_id == str(echo_message_id(r.id, "m_out"))
    assert r.status == UNASSIGNED and r.assignee is None and not r.awaiting_reply


def test_an_echo_does_not_reopen_a_resolved_room() -> None:
    r = room()
    r.resolve(SUPERVISOR)
    r.record_echo(channel_message_id="m_out", text="one more thing", sent_at=T0, sender_id="page-1")
    assert r.status == RESOLVED


def test_an_echo_needs_a_timezone_and_a_sender() -> None:
    with pytest.raises(InvalidCommand):
        room().record_echo(channel_message_id="m", text="x", sent_at=datetime(2024, 5, 1), sender_id="p")
    with pytest.raises(InvalidCommand):
        room().record_echo(channel_message_id="m", text="x", sent_at=T0, sender_id="")


def test_messages_carry_kind_and_attachments() -> None:
    r = room()
    r.receive(channel_message_id="m2", text="", sent_at=T0, kind="image", attachments=[{"type": "image", "id": "9"}])
    event = r.collect_events()[-1]
    assert (event.kind, event.attachments) == ("image", [{"type": "image", "id": "9"}])
    with pytest.raises(InvalidCommand):
        r.receive(channel_message_id="m3", text="", sent_at=T0, kind="")
    with pytest.raises(InvalidCommand):
        r.receive(channel_message_id="m3", text="", sent_at=T0, attachments=[{"type": "x"}] * 21)


def test_edit_and_removal_keep_status_and_awaiting_reply() -> None:
    r = room(Channel.FACEBOOK_COMMENT)
    mid = str(inbound_message_id(r.id, "m1"))
    r.edit_message(message_id=mid, channel_message_id="m1", text="halo kak", edited_at=T0 + timedelta(minutes=5))
    r.remove_message(message_id=mid, channel_message_id="m1", removed_at=T0 + timedelta(minutes=6))
    assert r.status == UNASSIGNED and r.awaiting_reply
    assert [type(e).__name__ for e in r.collect_events()][-2:] == ["MessageEdited", "MessageRemoved"]


def test_projection_edits_the_row_and_the_preview_of_the_last_message() -> None:
    r = room(Channel.FACEBOOK_COMMENT)
    mid = str(inbound_message_id(r.id, "m1"))
    r.edit_message(message_id=mid, channel_message_id="m1", text="halo kak", edited_at=T0 + timedelta(minutes=5))
    view, rows = fold(r)
    assert view.last_message_text == "halo kak" and view.awaiting_reply and view.version == 3
    assert rows[-1] == MessageChange(mid, text="halo kak", edited_at=T0 + timedelta(minutes=5))


def test_projection_of_a_removal_blanks_the_preview_only_if_it_is_the_last_message() -> None:
    r = room(Channel.FACEBOOK_COMMENT)
    first = str(inbound_message_id(r.id, "m1"))
    r.receive(channel_message_id="m2", text="masih ada?", sent_at=T0 + timedelta(minutes=1))
    r.remove_message(message_id=first, channel_message_id="m1", removed_at=T0 + timedelta(minutes=2))
    view, rows = fold(r)
    assert view.last_message_text == "masih ada?"
    assert rows[-1] == MessageChange(first, removed_at=T0 + timedelta(minutes=2))
    second = str(inbound_message_id(r.id, "m2"))
    r.remove_message(message_id=second, channel_message_id="m2", removed_at=T0 + timedelta(minutes=3))
    wire = to_wire(r.collect_events()[-1])
    after, _ = apply(view, wire)
    assert after.last_message_text == "" and after.last_message_id == second and after.awaiting_reply


def test_projection_reads_old_events_without_kind_as_text() -> None:
    r2 = Room.open(org_id=ORG, channel=Channel.WHATSAPP_CLOUD, channel_account_id="a", channel_account="1", contact_id="c")
    r2.receive(channel_message_id="w1", text="hi", sent_at=T0)
    opened, received = (to_wire(e) for e in r2.collect_events())
    received["data"] = {k: v for k, v in received["data"].items() if k not in ("kind", "attachments")}
    view, _ = apply(None, opened)
    _, message = apply(view, received)
    assert message is not None and (message.kind, message.attachments) == ("text", ())
