"""The room and message-history read models as pure functions of wire events.

`apply(view, event)` expects the room's next event (version == view.version + 1); deciding
what to do with duplicates and gaps is the writer's job, so this stays a plain fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.channels import Channel
from projections.frozen import replace
from projections.text import phone_digits, search_name
from projections.times import as_datetime


@dataclass(frozen=True)
class RoomView:
    id: str
    org_id: str
    tab: str
    channel: str
    channel_account_id: str
    channel_account: str
    contact_id: str
    contact_name: str | None
    contact_phone: str | None
    contact_handle: str | None
    post_id: str | None
    status: str
    assignee: str | None
    awaiting_reply: bool
    last_inbound_at: datetime | None
    expires_at: datetime | None
    last_message_id: str | None
    last_message_direction: str | None
    last_message_text: str | None
    last_message_at: datetime | None
    opened_at: datetime
    updated_at: datetime  # recorded time of the latest message: the list order ("newest activity")
    version: int
    # Search columns (projections.text): folded name + handle, national phone digits.
    search_name: str | None = None
    phone_digits: str | None = None
    # Delivery of the last message when it is a staff reply: {"status", "at", "error"} (issue 9).
    last_message_delivery: dict[str, Any] | None = None


@dataclass(frozen=True)
class MessageRow:
    id: str
    room_id: str
    org_id: str
    seq: int
    direction: str
    text: str
    sent_at: datetime
    sender_id: str | None
    sender_name: str | None
    sender_role: str | None
    channel_message_id: str | None
    recorded_at: datetime | None = None  # when the event was recorded (occurred_at): orders activity
    kind: str = "text"  # text, image, reaction, ... (events before kinds existed: text)
    attachments: tuple[dict[str, Any], ...] = ()  # small metadata dicts about the content
    # Staff replies: pending → sent (Meta accepted it) → delivered → read, or failed (issue 9).
    delivery_status: str | None = None
    delivery_at: datetime | None = None
    delivery_error: dict[str, Any] | None = None
    # A staff reply answering a message of the room: {"message_id", "channel_message_id"}.
    reply_to: dict[str, str] | None = None


@dataclass(frozen=True)
class MessageChange:
    """An edit or removal of a message already in the history (applied after the batch's inserts)."""

    message_id: str
    text: str | None = None  # the new text of an edit
    edited_at: datetime | None = None
    removed_at: datetime | None = None
    channel_message_id: str | None = None  # Meta's id of a staff reply it accepted
    delivery_status: str | None = None
    delivery_at: datetime | None = None
    delivery_error: dict[str, Any] | None = None


# Delivery events → (status, time field) of the reply's history row.
DELIVERY_EVENTS = {
    "ReplyDeliveryAccepted": ("sent", "accepted_at"),
    "ReplyDeliveryFailed": ("failed", "failed_at"),
    "ReplyDeliveryUnknown": ("pending", "at"),
    "DeliveryStatusChanged": (None, "at"),
}


def delivery_json(status: str | None, at: datetime | str | None, error: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if status is None else {"status": status, "at": at, "error": error}


_CHANNELS = {c.value: c for c in Channel}  # a view's channel was a Channel when it opened (`_opened`)


class UnknownEvent(ValueError):
    """An event type this projection does not know; reported, never silently dropped."""


def apply(view: RoomView | None, event: dict[str, Any]) -> tuple[RoomView, MessageRow | None]:
    kind = event["type"]
    data = event["data"]
    at = as_datetime(event["occurred_at"])
    if kind == "RoomOpened":
        return _opened(event, data, at), None
    if view is None:
        raise ValueError(f"{kind} v{event['version']} for room {event['room_id']} before RoomOpened")
    # The two message events (most of a room's history) change the view with one copy each.
    if kind == "MessageReceived":
        sent_at = as_datetime(data["sent_at"])
        last_inbound = sent_at if view.last_inbound_at is None else max(view.last_inbound_at, sent_at)
        message = MessageRow(
            id=data["message_id"], room_id=view.id, org_id=view.org_id, seq=event["version"],
            direction="inbound", text=data["text"], sent_at=sent_at, sender_id=view.contact_id,
            sender_name=data.get("contact_name") or view.contact_name, sender_role="contact",
            channel_message_id=data["channel_message_id"], recorded_at=at,
            kind=data.get("kind") or "text", attachments=tuple(data.get("attachments") or ()),
        )
        renamed = bool(data.get("contact_name")) and data.get("contact_name") != view.contact_name
        view = replace(
            view,
            version=event["version"],
            contact_name=data.get("contact_name") or view.contact_name,
            last_inbound_at=last_inbound,
            expires_at=(_CHANNELS.get(view.channel) or Channel(view.channel)).window_closes_at(last_inbound),
            **_last_message(view, message),
        )
        if renamed:
            view = _with_search(view)
        return view, message
    if kind == "MessageSent":
        message = MessageRow(
            id=data["message_id"], room_id=view.id, org_id=view.org_id, seq=event["version"],
            direction="outbound", text=data["text"], sent_at=as_datetime(data["sent_at"]),
            sender_id=data["sender_id"], sender_name=data.get("sender_name"),
            sender_role=data["sender_role"], channel_message_id=data.get("channel_message_id"),
            recorded_at=at, kind=data.get("kind") or "text", attachments=tuple(data.get("attachments") or ()),
            delivery_status=None if data["sender_role"] == "channel" else "pending",
            reply_to=data.get("reply_to"),
        )
        return replace(view, version=event["version"], **_last_message(view, message)), message
    view = replace(view, version=event["version"])
    if kind in DELIVERY_EVENTS:
        change = message_change(event)
        assert change is not None
        if view.last_message_id == data["message_id"]:
            view = replace(view, last_message_delivery=_iso(
                delivery_json(change.delivery_status, change.delivery_at, change.delivery_error)))
        return view, None
    if kind == "RoomAssigned":
        return replace(view, status="assigned", assignee=data["assignee"]), None
    if kind == "RoomResolved":
        return replace(view, status="resolved", awaiting_reply=False), None
    if kind == "RoomReopened":
        return replace(view, status="unassigned", assignee=None, awaiting_reply=_awaiting(view, "unassigned")), None
    if kind in ("MessageEdited", "MessageRemoved"):
        # The history row changes (message_change); the preview follows if it shows that message.
        # Neither moves the room in the list nor changes its status or awaiting-reply.
        if view.last_message_id == data["message_id"]:
            view = replace(view, last_message_text=data["text"] if kind == "MessageEdited" else "")
        return view, None
    raise UnknownEvent(f"unknown event type {kind!r}")


def message_change(event: dict[str, Any]) -> MessageChange | None:
    """The change an event makes to an existing history row (edits and removals), if any."""
    data = event["data"]
    if event["type"] == "MessageEdited":
        return MessageChange(data["message_id"], text=data["text"], edited_at=as_datetime(data["edited_at"]))
    if event["type"] == "MessageRemoved":
        return MessageChange(data["message_id"], removed_at=as_datetime(data["removed_at"]))
    if event["type"] in DELIVERY_EVENTS:
        status, at_field = DELIVERY_EVENTS[event["type"]]
        if event["type"] == "ReplyDeliveryFailed":
            error: dict[str, Any] | None = {"code": data["code"], "title": data["title"], "permanent": data["permanent"]}
        elif event["type"] == "ReplyDeliveryUnknown":
            error = {"title": f"outcome unknown: {data['reason']}"}
        else:
            error = data.get("error")
        return MessageChange(
            data["message_id"], channel_message_id=data.get("channel_message_id"),
            delivery_status=status or data["status"], delivery_at=as_datetime(data[at_field]), delivery_error=error,
        )
    return None


def _opened(event: dict[str, Any], data: dict[str, Any], at: datetime) -> RoomView:
    channel = Channel(data["channel"])  # an unknown channel is a ValueError: the writer dead-letters it
    return _with_search(RoomView(
        id=event["room_id"], org_id=event["org_id"], tab=channel.tab, channel=channel.value,
        channel_account_id=data["channel_account_id"], channel_account=data["channel_account"],
        contact_id=data["contact_id"], contact_name=data.get("contact_name"),
        contact_phone=data.get("contact_phone"), contact_handle=data.get("contact_handle"),
        post_id=data.get("post_id"), status="unassigned", assignee=None, awaiting_reply=False,
        last_inbound_at=None, expires_at=None, last_message_id=None, last_message_direction=None,
        last_message_text=None, last_message_at=None, opened_at=at, updated_at=at,
        version=event["version"],
    ))


def _with_search(view: RoomView) -> RoomView:
    return replace(
        view,
        search_name=search_name(view.contact_name, view.contact_handle),
        phone_digits=phone_digits(view.channel, view.contact_id, view.contact_phone),
    )


def _last_message(view: RoomView, message: MessageRow) -> dict[str, Any]:
    """What a new message changes in its room's view (the fields of neither the message's
    version nor its contact). Only messages move a room in the list: assignments and
    resolutions keep its place."""
    return {
        "last_message_id": message.id, "last_message_direction": message.direction,
        "last_message_text": message.text, "last_message_at": message.sent_at,
        "last_message_delivery": delivery_json(message.delivery_status, None, None),
        "updated_at": max(view.updated_at, message.recorded_at or view.updated_at),
        "awaiting_reply": _awaiting_after(view.status, message.direction),
    }


def _awaiting(view: RoomView, status: str) -> bool:
    """SPEC §2: not resolved and the latest message is inbound."""
    return _awaiting_after(status, view.last_message_direction)


def _awaiting_after(status: str, last_direction: str | None) -> bool:
    return status != "resolved" and last_direction == "inbound"


def _iso(delivery: dict[str, Any] | None) -> dict[str, Any] | None:
    """The room row keeps the delivery as JSON: its time as an ISO string."""
    if delivery is not None and isinstance(delivery.get("at"), datetime):
        delivery = dict(delivery, at=delivery["at"].isoformat())
    return delivery
