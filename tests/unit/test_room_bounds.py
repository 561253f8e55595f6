"""Room: the state every room carries (snapshots, the per-process cache) is bounded.

The latest MAX_REPLY_TARGETS inbound ids, and of the staff replies the latest
MAX_SETTLED_DELIVERIES settled for good (read, failed; accepted on comment channels) plus every
one still pending, sent or delivered. Events and decisions are unchanged: no later status could
change a forgotten reply.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from domain.channels import Channel
from domain.room import MAX_REPLY_TARGETS, MAX_SETTLED_DELIVERIES, Room
from domain.staff import Actor, Role
from inbox.adapters.memory_store import MemoryEventStore

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
AGENT = Actor("agent-1", "org-1", Role.AGENT)


def room(channel: Channel = Channel.WHATSAPP_CLOUD) -> Room:
    r = Room.open(org_id="org-1", channel=channel, channel_account_id="acc", channel_account="pn", contact_id="c1",
                  post_id="post" if channel.is_comment else None)
    r.receive(channel_message_id="in-0", text="halo", sent_at=T0)
    return r


def replied(r: Room, n: int, *, read: bool = True, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        mid = f"m{i}"
        r.reply(AGENT, message_id=mid, text="ok", sent_at=T0 + timedelta(seconds=i))
        assert r.record_delivery_accepted(message_id=mid, channel_message_id=f"wamid.{i}", at=T0)
        if read:
            assert r.record_delivery_status(channel_message_id=f"wamid.{i}", status="read", at=T0)
        ids.append(mid)
    return ids


def test_a_room_keeps_the_latest_inbound_ids_only() -> None:
    r = room()
    for i in range(1, MAX_REPLY_TARGETS + 50):
        r.receive(channel_message_id=f"in-{i}", text="x", sent_at=T0 + timedelta(seconds=i))
    assert len(r.inbound_ids) == MAX_REPLY_TARGETS
    assert list(r.inbound_ids.values())[-1] == f"in-{MAX_REPLY_TARGETS + 49}"
    assert "in-0" not in r.inbound_ids.values()


def test_replies_read_long_ago_are_forgotten_and_a_late_status_for_them_records_nothing_as_before() -> None:
    r = room()
    pending = "waiting"
    r.reply(AGENT, message_id=pending, text="queued", sent_at=T0)
    ids = replied(r, MAX_SETTLED_DELIVERIES + 20)
    assert len(r.settled_deliveries) == MAX_SETTLED_DELIVERIES
    assert len(r.deliveries) == MAX_SETTLED_DELIVERIES + 1  # the pending one is kept, however old
    assert r.delivery_status(pending) == "pending" and r.has_reply_in_flight()
    assert len(r.delivery_ids) == MAX_SETTLED_DELIVERIES
    assert r.delivery_status(ids[0]) is None and r.message_for_channel_id("wamid.0") is None
    assert r.delivery_status(ids[-1]) == "read"
    # A status for a forgotten reply: nothing, as for a read one (nothing moves after read).
    before = len(r.collect_events())
    assert r.record_delivery_status(channel_message_id="wamid.0", status="delivered", at=T0) is False
    assert r.record_delivery_status(channel_message_id="wamid.0", status="failed", at=T0) is False
    assert r.collect_events() == [] and before > 0
    # The pending reply still takes its outcome.
    assert r.record_delivery_accepted(message_id=pending, channel_message_id="wamid.late", at=T0)


def test_replies_sent_or_delivered_are_all_kept_a_later_read_needs_them() -> None:
    r = room()
    ids = replied(r, MAX_SETTLED_DELIVERIES + 10, read=False)
    assert len(r.deliveries) == MAX_SETTLED_DELIVERIES + 10 and r.settled_deliveries == {}
    assert r.record_delivery_status(channel_message_id="wamid.0", status="read", at=T0)
    assert r.delivery_status(ids[0]) == "read"


def test_comment_replies_are_settled_once_accepted_they_get_no_statuses() -> None:
    r = room(Channel.FACEBOOK_COMMENT)
    replied(r, MAX_SETTLED_DELIVERIES + 5, read=False)
    assert len(r.deliveries) == len(r.delivery_ids) == MAX_SETTLED_DELIVERIES


def test_failed_replies_are_settled_and_bounded_too() -> None:
    r = room()
    for i in range(MAX_SETTLED_DELIVERIES + 3):
        r.reply(AGENT, message_id=f"f{i}", text="x", sent_at=T0)
        assert r.record_delivery_failed(message_id=f"f{i}", code=131026, title="undeliverable", permanent=True, at=T0)
    assert len(r.deliveries) == MAX_SETTLED_DELIVERIES and r.delivery_status("f0") is None


def test_the_bounded_state_is_the_same_folded_from_the_events_and_from_a_snapshot() -> None:
    store = MemoryEventStore()
    r = room()
    replied(r, MAX_SETTLED_DELIVERIES + 30)  # > the snapshot interval: loaded from a snapshot
    store.save(r)
    loaded: Room = store.get(r.id)
    for field in ("deliveries", "delivery_ids", "settled_deliveries", "inbound_ids"):
        assert getattr(loaded, field) == getattr(r, field), field
    folded = Room.__new__(Room)
    for event in store.app.events.get(UUID(str(r.id))):
        folded = event.mutate(None if event.originator_version == 1 else folded)
    assert folded.deliveries == r.deliveries and folded.settled_deliveries == r.settled_deliveries


def test_a_snapshot_of_before_the_bound_upcasts_with_its_settled_replies() -> None:
    state: dict[str, Any] = {"channel": "whatsapp_cloud", "deliveries": {"a": "read", "b": "sent", "c": "failed"}}
    Room.upcast_v2_v3(state)
    assert state["settled_deliveries"] == {"a": None, "c": None}
    comment: dict[str, Any] = {"channel": "facebook_comment", "deliveries": {"a": "sent", "b": "pending"}}
    Room.upcast_v2_v3(comment)
    assert comment["settled_deliveries"] == {"a": None}
