"""Use case "deliver staff replies": what to send for a reply, and its outcome recorded on the room.

The sender process (inbox/adapters/outbound/sender.py) does the I/O; this decides on the room's
state (is the reply still pending? which recipient, which messaging type now?) and records every
outcome as a room event, so history, downstream consumers and replay all see it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from domain.channels import Channel
from domain.errors import Conflict, NotFound
from domain.outbound import ReplyKind, decide_send
from domain.room import PENDING, TEMPLATE_KIND, Room
from inbox.usecases.echoes import echo_key
from inbox.usecases.ports import DedupKey, EventStore

log = logging.getLogger(__name__)

# Channels whose webhooks echo the business's own messages (`is_echo`).
ECHOING_CHANNELS = frozenset({Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM})


@dataclass(frozen=True)
class SendPlan:
    """One reply, ready for the Graph API (the adapter builds the request from it)."""

    room_id: str
    message_id: str
    channel_account_id: str
    channel: Channel
    account_external_id: str  # phone-number id / Page id
    recipient_id: str  # wa_id / PSID / IGSID, or the customer's latest comment id
    text: str | None
    template: dict[str, Any] | None
    messaging_type: str | None
    tag: str | None
    # WhatsApp: the wamid the reply quotes (`context.message_id`). Meta documents no reply-to for
    # the Messenger/Instagram Send API nor for comment replies: there the reply goes without it.
    reply_to_channel_message_id: str | None = None


@dataclass(frozen=True)
class Settled:
    """Nothing to send: the reply's delivery is settled already (accepted, failed, a status came)."""

    status: str


@dataclass(frozen=True)
class Refused:
    """The window closed before the reply could be sent: recorded as failed."""

    reason: str


class Deliveries:
    def __init__(self, store: EventStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._clock = clock

    def plan(self, room_id: str, message_id: str, *, kind: str, text: str,
             attachments: list[dict[str, Any]], reply_to: dict[str, Any] | None = None) -> SendPlan | Settled | Refused:
        room = self._room(room_id)
        status = room.delivery_status(message_id)
        if status is None:
            raise NotFound(f"message {message_id} is not a staff reply of room {room_id}")
        if status != PENDING:
            return Settled(status)
        channel = Channel(room.channel)
        template = _template(attachments) if kind == TEMPLATE_KIND else None
        decision = decide_send(channel, room.last_inbound_at, self._clock(),
                               ReplyKind.TEMPLATE if template is not None else ReplyKind.FREE_FORM)
        if not decision.allowed:
            reason = decision.reason or "this reply cannot be sent now"
            self.failed(room_id, message_id, code=None, title=reason, permanent=True)
            return Refused(reason)
        recipient = room.last_inbound_channel_message_id if channel.is_comment else room.contact_id
        if not recipient:
            self.failed(room_id, message_id, code=None, title="no customer comment to answer", permanent=True)
            return Refused("no customer comment to answer")
        return SendPlan(
            room_id=room_id, message_id=message_id, channel_account_id=room.channel_account_id, channel=channel,
            account_external_id=room.channel_account, recipient_id=recipient,
            text=None if template is not None else text, template=template,
            messaging_type=decision.messaging_type.value if decision.messaging_type else None, tag=decision.tag,
            reply_to_channel_message_id=(
                reply_to.get("channel_message_id") if reply_to and channel is Channel.WHATSAPP_CLOUD else None
            ),
        )

    def accepted(self, room_id: str, message_id: str, channel_message_id: str) -> bool:
        """Meta accepted the reply. On channels that echo our messages, the echo's dedup key is
        recorded with it, pointing at the reply: an echo arriving whenever (even after the room
        forgot a reply settled long ago, domain.room.MAX_SETTLED_DELIVERIES) is that reply."""
        return self._record(room_id, lambda room: room.record_delivery_accepted(
            message_id=message_id, channel_message_id=channel_message_id, at=self._clock()),
            echo_of=(message_id, channel_message_id))

    def failed(self, room_id: str, message_id: str, *, code: int | None, title: str, permanent: bool) -> bool:
        return self._record(room_id, lambda room: room.record_delivery_failed(
            message_id=message_id, code=code, title=title[:256] or "failed", permanent=permanent, at=self._clock()))

    def unknown(self, room_id: str, message_id: str, reason: str) -> bool:
        return self._record(room_id, lambda room: room.record_delivery_unknown(
            message_id=message_id, reason=reason[:256] or "unknown", at=self._clock()))

    def _record(self, room_id: str, decide: Callable[[Room], bool],
                echo_of: tuple[str, str] | None = None) -> bool:
        """Decide on fresh state and save; a race with any other writer is decided again."""
        for _ in range(10):
            room = self._room(room_id)
            if not decide(room):
                return False
            keys = self._echo_keys(room, echo_of) if echo_of else []
            try:
                self._store.save(room, dedup_keys=keys)
            except IntegrityError:
                continue
            return True
        raise Conflict(f"room {room_id} is changing too fast to record a delivery outcome")

    def _echo_keys(self, room: Room, echo_of: tuple[str, str]) -> list[DedupKey]:
        message_id, channel_message_id = echo_of
        if Channel(room.channel) not in ECHOING_CHANNELS:
            return []
        key = (room.channel_account_id, echo_key(channel_message_id))
        if self._store.recorded_dedup_keys([key]):
            return []  # the echo came first (and named this reply, or was recorded as it)
        return [DedupKey(key[0], key[1], str(room.id), message_id, room.version)]

    def _room(self, room_id: str) -> Room:
        room = self._store.get(UUID(room_id))
        if not isinstance(room, Room):
            raise NotFound(f"room {room_id} not found")
        return room


def _template(attachments: list[dict[str, Any]]) -> dict[str, Any]:
    found = next((a for a in attachments if a.get("type") == TEMPLATE_KIND), None)
    if found is None:
        raise ValueError("a template reply without its template")
    return {"name": found["name"], "language": found["language"], "components": found.get("components") or []}
