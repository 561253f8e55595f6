"""Room: the delivery of staff replies (issue 9) — windows, templates, outcomes, statuses never backwards."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from domain.channels import Channel
from domain.errors import InvalidCommand
from domain.room import _STATE_CHANGED_IN_PLACE, Room, WindowClosed
from domain.staff import Actor, Role

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
AGENT = Actor("agent-1", "org-1", Role.AGENT)


def room(channel: Channel = Channel.WHATSAPP_CLOUD, *, last_inbound: datetime = T0) -> Room:
    r = Room.open(org_id="org-1", channel=channel, channel_account_id="acc", channel_account="pn", contact_id="c1",
                  post_id="post" if channel.is_comment else None)
    r.receive(channel_message_id="in-1", text="halo", sent_at=last_inbound)
    return r


def test_a_free_form_reply_after_the_whatsapp_window_is_refused_with_a_template_hint() -> None:
    r = room()
    with pytest.raises(WindowClosed, match="template"):
        r.reply(AGENT, message_id="m1", text="late", sent_at=T0 + timedelta(hours=24))


def test_a_whatsapp_template_is_accepted_at_any_time_and_recorded_as_a_template_message() -> None:
    r = room()
    r.reply(AGENT, message_id="m1", text=None, sent_at=T0 + timedelta(days=30),
            template={"name": "order_update", "language": "en_US", "components": []})
    sent = [e for e in r.collect_events() if isinstance(e, Room.MessageSent)][0]
    assert (sent.kind, sent.text) == ("template", "order_update")
    assert sent.attachments == [{"type": "template", "name": "order_update", "language": "en_US", "components": []}]


def test_templates_are_whatsapp_only_and_a_reply_is_text_xor_template() -> None:
    with pytest.raises(WindowClosed, match="WhatsApp"):
        room(Channel.FACEBOOK_MESSENGER).reply(AGENT, message_id="m1", text=None, sent_at=T0,
                                               template={"name": "x", "language": "en"})
    with pytest.raises(InvalidCommand):
        room().reply(AGENT, message_id="m1", text="a", sent_at=T0, template={"name": "x", "language": "en"})
    with pytest.raises(InvalidCommand, match="language"):
        room().reply(AGENT, message_id="m1", text=None, sent_at=T0, template={"name": "x"})


def test_messenger_allows_the_human_agent_window_up_to_7_days_then_refuses() -> None:
    r = room(Channel.FACEBOOK_MESSENGER)
    r.reply(AGENT, message_id="m1", text="tagged", sent_at=T0 + timedelta(days=6))
    with pytest.raises(WindowClosed, match="7-day"):
        r.reply(AGENT, message_id="m2", text="too late", sent_at=T0 + timedelta(days=7))


def test_comment_rooms_have_no_window() -> None:
    room(Channel.FACEBOOK_COMMENT).reply(AGENT, message_id="m1", text="hi", sent_at=T0 + timedelta(days=90))


def test_statuses_move_forward_only_and_failed_only_before_delivery() -> None:
    r = room()
    r.reply(AGENT, message_id="m1", text="hi", sent_at=T0)
    assert r.delivery_status("m1") == "pending"
    assert r.record_delivery_accepted(message_id="m1", channel_message_id="wamid.1", at=T0)
    assert not r.record_delivery_accepted(message_id="m1", channel_message_id="wamid.1", at=T0)  # recorded once
    assert r.record_delivery_status(channel_message_id="wamid.1", status="read", at=T0)
    for late in ("delivered", "sent", "failed", "read"):
        assert not r.record_delivery_status(channel_message_id="wamid.1", status=late, at=T0)
    assert r.delivery_status("m1") == "read"


def test_a_failed_reply_stays_failed_and_outcomes_name_only_staff_replies() -> None:
    r = room()
    r.reply(AGENT, message_id="m1", text="hi", sent_at=T0)
    assert r.record_delivery_failed(message_id="m1", code=131026, title="Message Undeliverable", permanent=True, at=T0)
    assert not r.record_delivery_accepted(message_id="m1", channel_message_id="wamid.1", at=T0)
    assert r.delivery_status("m1") == "failed"
    with pytest.raises(InvalidCommand):
        r.record_delivery_accepted(message_id="not-a-reply", channel_message_id="wamid.2", at=T0)
    assert not r.record_delivery_status(channel_message_id="wamid.unknown", status="read", at=T0)


def test_an_unknown_outcome_stays_pending_until_a_status_names_our_message() -> None:
    r = room()
    r.reply(AGENT, message_id="m1", text="hi", sent_at=T0)
    assert r.record_delivery_unknown(message_id="m1", reason="ReadTimeout", at=T0)
    assert r.delivery_status("m1") == "pending"
    assert r.record_delivery_status(channel_message_id="wamid.9", status="sent", at=T0, message_id="m1")
    assert r.message_for_channel_id("wamid.9") == "m1"


def test_delivery_state_survives_replay() -> None:
    r = room()
    r.reply(AGENT, message_id="m1", text="hi", sent_at=T0)
    r.record_delivery_accepted(message_id="m1", channel_message_id="wamid.1", at=T0)
    events = r.collect_events()
    replayed = None
    for e in events:
        replayed = e.mutate(replayed)
    assert replayed is not None
    assert replayed.delivery_status("m1") == "sent" and replayed.message_for_channel_id("wamid.1") == "m1"


# ---- copies (the write side lends a copy of a cached room to each attempt) --------------------------
def busy_room() -> Room:
    """A room whose every part of state is in use: messages, replies in each delivery state."""
    r = room()
    for i in range(3):
        r.reply(AGENT, message_id=f"m{i}", text=f"reply {i}", sent_at=T0 + timedelta(minutes=i))
        r.record_delivery_accepted(message_id=f"m{i}", channel_message_id=f"wamid.m{i}", at=T0 + timedelta(minutes=i))
    r.record_delivery_status(channel_message_id="wamid.m0", status="read", at=T0 + timedelta(minutes=5))
    r.collect_events()
    return r


def state_of(r: Room) -> dict[str, object]:
    return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in vars(r).items()}


def test_events_applied_to_a_copy_of_a_room_leave_the_room_as_it_was_and_the_reverse() -> None:
    original = busy_room()
    before = state_of(original)
    twin = copy.copy(original)
    assert state_of(twin) == before
    twin.receive(channel_message_id="in-2", text="lagi", sent_at=T0 + timedelta(minutes=6))
    twin.reply(AGENT, message_id="m9", text="ok", sent_at=T0 + timedelta(minutes=7))
    twin.record_delivery_accepted(message_id="m9", channel_message_id="wamid.m9", at=T0 + timedelta(minutes=7))
    twin.record_delivery_status(channel_message_id="wamid.m1", status="read", at=T0 + timedelta(minutes=8))
    twin.resolve(AGENT)
    assert state_of(original) == before
    assert original.collect_events() == []
    assert twin.message_count == before["message_count"] + 2 and twin.status == "resolved"
    twin_before = state_of(twin)
    original.receive(channel_message_id="in-3", text="x", sent_at=T0 + timedelta(minutes=9))
    assert state_of(twin) == twin_before


def test_every_container_in_a_rooms_state_is_one_a_copy_duplicates() -> None:
    """A new dict or list in the state must be copied by `Room.__copy__` too (or be replaced, never changed)."""
    r = busy_room()
    containers = {k for k, v in vars(r).items() if isinstance(v, dict | list | set)}
    assert containers == {*_STATE_CHANGED_IN_PLACE, "_pending_events"}
