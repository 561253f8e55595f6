"""Request and response bodies (field names are the SPEC §3 contract)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from inbox.config import MIN_APP_SECRET_CHARS

ChannelName = Literal["whatsapp_cloud", "instagram", "facebook_messenger", "instagram_comment", "facebook_comment"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# ---- requests -------------------------------------------------------------------------------
class RegisterChannelAccount(Body):
    channel: ChannelName
    external_id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=200)
    app_secret: str | None = Field(default=None, min_length=MIN_APP_SECRET_CHARS, max_length=256)


class InboundContact(Body):
    id: str = Field(min_length=1, max_length=256)
    name: str | None = Field(default=None, max_length=256)
    phone: str | None = Field(default=None, max_length=64)
    handle: str | None = Field(default=None, max_length=256)


class InboundMessageBody(Body):
    id: str = Field(min_length=1, max_length=512)
    text: str = Field(max_length=65_536)
    sent_at: AwareDatetime


class RecordInboundMessage(Body):
    channel: ChannelName
    channel_account: str = Field(min_length=1, max_length=128)
    contact: InboundContact
    message: InboundMessageBody
    post_id: str | None = Field(default=None, min_length=1, max_length=256)


class AssignRoom(Body):
    agent_id: str = Field(min_length=1, max_length=256)
    expected_version: int | None = Field(default=None, ge=1)


class SendReply(Body):
    text: str = Field(min_length=1, max_length=65_536)
    expected_version: int | None = Field(default=None, ge=1)


class ResolveRoom(Body):
    expected_version: int | None = Field(default=None, ge=1)


class ResolveExpired(Body):
    channels: list[ChannelName] = Field(
        default_factory=list, max_length=10,
        description="channels whose expired rooms to resolve; empty = every direct-message channel",
    )
    include_unassigned: bool = False


# ---- responses ------------------------------------------------------------------------------
class ChannelAccountOut(BaseModel):
    id: str
    channel: str
    external_id: str
    name: str
    has_app_secret: bool


class InboundAccepted(BaseModel):
    room_id: str
    version: int
    message_id: str
    duplicate: bool


class CommandAccepted(BaseModel):
    room_id: str
    version: int
    message_id: str | None = None


class Contact(BaseModel):
    id: str
    name: str | None
    handle: str | None
    phone: str | None


class LastMessage(BaseModel):
    id: str
    direction: Literal["inbound", "outbound"]
    text: str
    at: datetime


class RoomOut(BaseModel):
    id: str
    tab: Literal["messages", "comments"]
    channel: str
    channel_account: str
    contact: Contact
    post_id: str | None
    status: Literal["unassigned", "assigned", "resolved"]
    assignee: str | None
    awaiting_reply: bool
    expired: bool
    expires_at: datetime | None
    last_message: LastMessage | None
    last_inbound_at: datetime | None
    updated_at: datetime
    version: int


class RoomPage(BaseModel):
    items: list[RoomOut]
    next_cursor: str | None


class ExpiredResolved(BaseModel):
    resolved: int
    skipped: int = Field(description="expired rooms left alone because they changed after the query saw them")


class SearchMatch(BaseModel):
    message_id: str
    snippet: str = Field(description="HTML-escaped message text around the match, matches in <mark>…</mark>")


class SearchHit(RoomOut):
    match: SearchMatch | None = None


class SearchPage(BaseModel):
    items: list[SearchHit]
    next_cursor: str | None


class Sender(BaseModel):
    id: str | None
    name: str | None
    role: str | None


class MessageOut(BaseModel):
    id: str
    room_id: str
    direction: Literal["inbound", "outbound"]
    text: str
    sent_at: datetime
    sender: Sender
    channel_message_id: str | None
    seq: int
    kind: str = "text"  # text, image, video, audio, document, sticker, location, contacts, reaction, ...
    attachments: list[dict[str, Any]] = []  # metadata of the content (media ids, coordinates, ...)
    edited_at: datetime | None = None
    removed: bool = False  # the customer removed it; its text stays visible to staff
    removed_at: datetime | None = None


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_before: str | None


class StatusCounts(BaseModel):
    all: int
    unassigned: int
    assigned: int
    resolved: int


class TabCounts(BaseModel):
    awaiting_reply: int
    statuses: StatusCounts


class Counters(BaseModel):
    messages: int
    comments: int
    unassigned: int
    statuses: StatusCounts
    tabs: dict[str, TabCounts]


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Any]
