"""The read models keep a reply's delivery: on its history row (message_change) and on the room's last message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.channels import Channel
from domain.room import Room
from domain.staff import Actor, Role
from inbox.adapters.wire import to_wire
from projections.rooms import apply, message_change

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def test_a_reply_is_pending_then_carries_metas_id_and_each_status() -> None:
    r = Room.open(org_id="o", channel=Channel.WHATSAPP_CLOUD, channel_account_id="a", channel_account="pn",
                  contact_id="c")
    r.receive(channel_message_id="in", text="halo", sent_at=T0)
    r.reply(Actor("u", "o", Role.AGENT), message_id="m1", text="hi", sent_at=T0)
    r.record_delivery_accepted(message_id="m1", channel_message_id="wamid.1", at=T0 + timedelta(seconds=1))
    r.record_delivery_status(channel_message_id="wamid.1", status="read", at=T0 + timedelta(minutes=1))
    view = None
    rows = []
    for e in r.collect_events():
        view, row = apply(view, to_wire(e))
        rows.append(row or message_change(to_wire(e)))
    sent_row = next(x for x in rows if getattr(x, "id", None) == "m1")
    assert sent_row.delivery_status == "pending"
    accepted, read = rows[-2], rows[-1]
    assert (accepted.channel_message_id, accepted.delivery_status) == ("wamid.1", "sent")
    assert read.delivery_status == "read"
    assert view is not None and view.last_message_delivery == {
        "status": "read", "at": (T0 + timedelta(minutes=1)).isoformat(), "error": None}
