"""Request and response bodies (field names are the SPEC §3 contract)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from domain import limits
from domain.errors import InvalidCommand

from inbox.config import MIN_APP_SECRET_CHARS

ChannelName = Literal["whatsapp_cloud", "instagram", "facebook_messenger", "instagram_comment", "facebook_comment"]


def _rule(check: Callable[..., Any], *args: Any) -> AfterValidator:
    """A domain check (domain/limits.py) as a pydantic validator: its refusal becomes a 422."""

    def validate(value: Any) -> Any:
        if value is None:
            return value
        try:
            check(value, "value", *args)
        except InvalidCommand as e:
            raise ValueError(str(e).removeprefix("value ")) from None
        return value

    return AfterValidator(validate)


def _moment(value: datetime) -> datetime:
    try:
        return limits.check_moment(value, "value", datetime.now(UTC))
    except InvalidCommand as e:
        raise ValueError(str(e).removeprefix("value ")) from None


# Field types carrying the domain's limits: the error names the field, e.g. "message.text: ...".
Text = Annotated[str, Field(max_length=limits.MAX_TEXT), _rule(limits.check_text, limits.MAX_TEXT)]
Name = Annotated[str, Field(max_length=limits.MAX_NAME), _rule(limits.check_text, limits.MAX_NAME)]
Id = Annotated[str, Field(min_length=1, max_length=limits.MAX_ID), _rule(limits.check_identifier, limits.MAX_ID)]
MessageId = Annotated[
    str, Field(min_length=1, max_length=limits.MAX_MESSAGE_ID),
    _rule(limits.check_identifier, limits.MAX_MESSAGE_ID),
]
Phone = Annotated[str, Field(max_length=limits.MAX_PHONE), _rule(limits.check_text, limits.MAX_PHONE)]
Handle = Annotated[str, Field(max_length=limits.MAX_HANDLE), _rule(limits.check_text, limits.MAX_HANDLE)]
Secret = Annotated[str, Field(max_length=limits.MAX_SECRET), _rule(limits.check_text, limits.MAX_SECRET)]
Moment = Annotated[AwareDatetime, AfterValidator(_moment)]
# Query-string text (search words, filters): PostgreSQL cannot take NUL in a parameter either.
QueryText = Annotated[str, _rule(limits.check_text, limits.MAX_TEXT)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# ---- requests -------------------------------------------------------------------------------
# Meta's tokens are printable ASCII; anything else could not even travel in an Authorization header.
AccessToken = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[\x21-\x7e]+$")]


class RegisterChannelAccount(Body):
    channel: ChannelName
    external_id: Id
    name: Annotated[Name, Field(min_length=1)]
    app_secret: Annotated[Secret, Field(min_length=MIN_APP_SECRET_CHARS)] | None = None
    # The WhatsApp system-user token, or the Page token (Messenger, Instagram, comments): checked
    # with the Graph API before the account is recorded; sealed at rest; never returned.
    access_token: AccessToken | None = None


class RotateChannelAccount(Body):
    """At least one of the two: a new access token (checked with the Graph API first) and/or a new
    app secret (webhooks signed with the old one are refused from then on)."""

    access_token: AccessToken | None = None
    app_secret: Annotated[Secret, Field(min_length=MIN_APP_SECRET_CHARS)] | None = None


class InboundContact(Body):
    id: Id
    name: Name | None = None
    phone: Phone | None = None
    handle: Handle | None = None


class InboundMessageBody(Body):
    id: MessageId
    text: Text
    sent_at: Moment


class RecordInboundMessage(Body):
    channel: ChannelName
    channel_account: Id
    contact: InboundContact
    message: InboundMessageBody
    post_id: Id | None = None


class AssignRoom(Body):
    agent_id: Id
    expected_version: int | None = Field(default=None, ge=1)


class TemplateRef(Body):
    """A WhatsApp message template: sendable at any time (outside the 24-hour window too)."""

    name: Annotated[Name, Field(min_length=1)]
    language: Annotated[str, Field(min_length=1, max_length=64)] | dict[str, Any]
    components: list[dict[str, Any]] = []


class SendReply(Body):
    text: Annotated[Text, Field(min_length=1)] | None = None
    template: TemplateRef | None = None
    expected_version: int | None = Field(default=None, ge=1)
    # The message of this room's history the reply answers: its `id` or its `channel_message_id`
    # (an inbound message, or a staff reply that reached the channel). WhatsApp quotes it.
    reply_to: MessageId | None = None

    @model_validator(mode="after")
    def _text_xor_template(self) -> SendReply:
        if (self.text is None) == (self.template is None):
            raise ValueError("a reply has either a text or a template")
        return self


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
    has_access_token: bool = False
    needs_reauth: bool = False


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
    delivery: dict[str, Any] | None = None  # staff replies: {"status", "at", "error"}


class ReplyWindowOut(BaseModel):
    free_form_until: datetime | None
    human_agent_until: datetime | None


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
    reply_window: ReplyWindowOut | None = None  # what staff can send now (None: no limit)
    updated_at: datetime
    version: int


class RoomPage(BaseModel):
    items: list[RoomOut]
    next_cursor: str | None


class ExpiredResolved(BaseModel):
    resolved: int
    skipped: int = Field(description="expired rooms left alone because they changed after the query saw them")
    unreadable: list[str] = Field(
        description="expired rooms left alone because their recorded events cannot be read (a corrupt or unknown"
                    " stored event; logged for the operators): resolved by a repeat once mended")


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
    # Staff replies: {"status": pending|sent|delivered|read|failed, "at", "error"}; else null.
    delivery: dict[str, Any] | None = None
    # The message a staff reply answers: {"message_id", "channel_message_id"}; else null.
    reply_to: dict[str, str] | None = None


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


# ---- reports (issue 13) ----------------------------------------------------------------------
class Percentiles(BaseModel):
    p50: float | None
    p90: float | None


class ResponseTimesItem(BaseModel):
    key: str
    rooms: int
    first_response_s: Percentiles
    resolution_s: Percentiles
    messages_in: int
    messages_out: int


class ResponseTimesReport(BaseModel):
    items: list[ResponseTimesItem]


class BacklogPoint(BaseModel):
    at: datetime
    unassigned: int


class BacklogReport(BaseModel):
    items: list[BacklogPoint]
