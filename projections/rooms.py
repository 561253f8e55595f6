"""The room and message-history read models as pure functions of wire events.

`apply(view, event)` expects the room's next event (version == view.version + 1); deciding
what to do with duplicates and gaps is the writer's job, so this stays a plain fold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

COMMENT_CHANNELS = frozenset({"instagram_comment", "facebook_comment"})
REPLY_WINDOW = timedelta(hours=24)


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
    updated_at: datetime
    version: int


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


class UnknownEvent(ValueError):
    """An event type this projection does not know; reported, never silently dropped."""


def apply(view: RoomView | None, event: dict[str, Any]) -> tuple[RoomView, MessageRow | None]:
    kind = event["type"]
    data = event["data"]
    at = _ts(event["occurred_at"])
    if kind == "RoomOpened":
        return _opened(event, data, at), None
    if view is None:
        raise ValueError(f"{kind} v{event['version']} for room {event['room_id']} before RoomOpened")
    view = replace(view, version=event["version"], updated_at=max(view.updated_at, at))
    if kind == "MessageReceived":
        sent_at = _ts(data["sent_at"])
        last_inbound = sent_at if view.last_inbound_at is None else max(view.last_inbound_at, sent_at)
        message = MessageRow(
            id=data["message_id"], room_id=view.id, org_id=view.org_id, seq=event["version"],
            direction="inbound", text=data["text"], sent_at=sent_at, sender_id=view.contact_id,
            sender_name=data.get("contact_name") or view.contact_name, sender_role="contact",
            channel_message_id=data["channel_message_id"],
        )
        view = replace(
            view,
            contact_name=data.get("contact_name") or view.contact_name,
            last_inbound_at=last_inbound,
            expires_at=None if view.channel in COMMENT_CHANNELS else last_inbound + REPLY_WINDOW,
        )
        return _with_last_message(view, message), message
    if kind == "MessageSent":
        message = MessageRow(
            id=data["message_id"], room_id=view.id, org_id=view.org_id, seq=event["version"],
            direction="outbound", text=data["text"], sent_at=_ts(data["sent_at"]),
            sender_id=data["sender_id"], sender_name=data.get("sender_name"),
            sender_role=data["sender_role"], channel_message_id=data.get("channel_message_id"),
        )
        return _with_last_message(view, message), message
    if kind == "RoomAssigned":
        return replace(view, status="assigned", assignee=data["assignee"]), None
    if kind == "RoomResolved":
        return replace(view, status="resolved", awaiting_reply=False), None
    if kind == "RoomReopened":
        return replace(view, status="unassigned", assignee=None, awaiting_reply=_awaiting(view, "unassigned")), None
    raise UnknownEvent(f"unknown event type {kind!r}")


def _opened(event: dict[str, Any], data: dict[str, Any], at: datetime) -> RoomView:
    channel = data["channel"]
    return RoomView(
        id=event["room_id"], org_id=event["org_id"],
        tab="comments" if channel in COMMENT_CHANNELS else "messages", channel=channel,
        channel_account_id=data["channel_account_id"], channel_account=data["channel_account"],
        contact_id=data["contact_id"], contact_name=data.get("contact_name"),
        contact_phone=data.get("contact_phone"), contact_handle=data.get("contact_handle"),
        post_id=data.get("post_id"), status="unassigned", assignee=None, awaiting_reply=False,
        last_inbound_at=None, expires_at=None, last_message_id=None, last_message_direction=None,
        last_message_text=None, last_message_at=None, opened_at=at, updated_at=at,
        version=event["version"],
    )


def _with_last_message(view: RoomView, message: MessageRow) -> RoomView:
    view = replace(
        view,
        last_message_id=message.id, last_message_direction=message.direction,
        last_message_text=message.text, last_message_at=message.sent_at,
    )
    return replace(view, awaiting_reply=_awaiting(view, view.status))


def _awaiting(view: RoomView, status: str) -> bool:
    """SPEC §2: not resolved and the latest message is inbound."""
    return status != "resolved" and view.last_message_direction == "inbound"


def _ts(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
