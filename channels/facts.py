"""Channel-neutral facts: what a channel told us, ready for the write side.

A channel adapter (e.g. `channels.meta.parser`) turns a webhook payload into a list of these; the write
side (`inbox.usecases.ingest.InboundCommitter`) records them. `channel_account` is always the channel's
own external id of the business account (WhatsApp phone_number_id, Facebook page id, Instagram
account id); the write side resolves it to a registered channel account.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain.channels import Channel

Attachments = tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class InboundMessage:
    """A customer's message (or comment) to the business."""

    channel: Channel
    channel_account: str  # the channel's external id: phone_number_id, page id, IG account id
    contact_id: str
    channel_message_id: str
    text: str
    sent_at: datetime  # the channel's own timestamp, timezone-aware
    contact_name: str | None = None
    contact_phone: str | None = None
    contact_handle: str | None = None
    post_id: str | None = None  # comment channels: the post / media the comment is under
    kind: str = "text"  # text, image, video, audio, document, sticker, location, contacts, ...
    attachments: Attachments = ()  # small metadata dicts, never the media itself


@dataclass(frozen=True)
class OutboundEcho:
    """The business's own message, sent from the channel's tools (e.g. Messenger's `is_echo`)."""

    channel: Channel
    channel_account: str
    contact_id: str  # the customer the message went to
    channel_message_id: str
    text: str
    sent_at: datetime
    sender_id: str  # the page / account id that sent it
    kind: str = "text"
    attachments: Attachments = ()
    # Messenger's `message.metadata`: the custom string our sender put on the Send API request
    # (our message id), returned in the echo. Recognises an echo that arrives before the sender
    # recorded Meta's answer.
    correlation_id: str | None = None


@dataclass(frozen=True)
class MessageEdit:
    """The customer edited a message or comment they sent earlier."""

    channel: Channel
    channel_account: str
    contact_id: str
    channel_message_id: str
    text: str
    edited_at: datetime
    edit_key: str  # distinguishes this edit from other edits of the same message (redelivery-stable)
    post_id: str | None = None
    contact_name: str | None = None
    contact_handle: str | None = None


@dataclass(frozen=True)
class MessageRemoval:
    """The customer removed (deleted / unsent) a message or comment they sent earlier."""

    channel: Channel
    channel_account: str
    contact_id: str | None
    channel_message_id: str
    removed_at: datetime
    post_id: str | None = None


@dataclass(frozen=True)
class DeliveryStatus:
    """What happened to a message the business sent (sent / delivered / read / failed / error)."""

    channel: Channel
    channel_account: str
    status: str
    occurred_at: datetime
    status_key: str  # unique per account: the same fact delivered twice has the same key
    channel_message_id: str | None = None
    recipient_id: str | None = None
    errors: tuple[dict[str, Any], ...] = ()
    # Our message id, when the channel returns it (WhatsApp `biz_opaque_callback_data`): settles a
    # reply whose send outcome was unknown.
    correlation_id: str | None = None


@dataclass(frozen=True)
class Ignored:
    """Something in the payload we deliberately do not record, and why."""

    reason: str
    channel: Channel | None = None
    channel_account: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


Fact = InboundMessage | OutboundEcho | MessageEdit | MessageRemoval | DeliveryStatus | Ignored
RecordableFact = InboundMessage | OutboundEcho | MessageEdit | MessageRemoval | DeliveryStatus
