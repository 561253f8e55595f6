"""Outbound rules: what staff may send on a channel now, and what Meta's error codes mean for a send.

Pure data and functions, no I/O: the API (to refuse a reply before it is recorded), the room's JSON
(`reply_window`) and the sender process (to pick `messaging_type`, and to decide retry / fail /
re-auth after Meta answers) all read these, so each rule has one home.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from domain.channels import Channel

# Messenger/Instagram: a human agent may answer with the HUMAN_AGENT tag up to 7 days after the
# customer's last message (Meta's "Human Agent" message tag policy).
HUMAN_AGENT_WINDOW = timedelta(days=7)

TEMPLATE_NEEDED = "the 24-hour customer-service window has closed: a template is needed"
WINDOW_CLOSED = (
    "the 7-day human-agent window has closed: the customer must write first (a template is needed)"
)
TEMPLATE_WHATSAPP_ONLY = "templates can only be sent on WhatsApp"
NO_CUSTOMER_MESSAGE = "the customer has not written yet: a template is needed"


class ReplyKind(StrEnum):
    FREE_FORM = "free_form"  # a text reply
    TEMPLATE = "template"  # a WhatsApp message template


class MessagingType(StrEnum):
    """Messenger/Instagram `messaging_type`; WhatsApp and comments have none."""

    RESPONSE = "RESPONSE"
    MESSAGE_TAG = "MESSAGE_TAG"


HUMAN_AGENT_TAG = "HUMAN_AGENT"
# The window of a direct-message room the customer never wrote in: closed since the epoch.
NEVER_OPEN = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ReplyWindow:
    """Until when each kind of reply is allowed; None means no limit (comments, templates).

    `human_agent_until` only exists on Messenger/Instagram.
    """

    free_form_until: datetime | None
    human_agent_until: datetime | None

    def to_json(self) -> dict[str, str | None]:
        return {
            "free_form_until": self.free_form_until.isoformat() if self.free_form_until else None,
            "human_agent_until": self.human_agent_until.isoformat() if self.human_agent_until else None,
        }


@dataclass(frozen=True)
class SendDecision:
    allowed: bool
    messaging_type: MessagingType | None = None
    tag: str | None = None
    reason: str | None = None  # why not, in words an agent understands


def _uses_message_tags(channel: Channel) -> bool:
    return channel in (Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM)


def reply_window(channel: Channel, last_inbound_at: datetime | None) -> ReplyWindow:
    """The room's reply window, from the customer's last message (SPEC: `reply_window` in the room's JSON)."""
    window = channel.reply_window
    if window is None:  # comment rooms: a public reply is always possible
        return ReplyWindow(free_form_until=None, human_agent_until=None)
    if last_inbound_at is None:
        # A direct-message room the customer never wrote in: every window closed long ago.
        closed = NEVER_OPEN
        return ReplyWindow(free_form_until=closed, human_agent_until=closed if _uses_message_tags(channel) else None)
    human_agent_until = last_inbound_at + HUMAN_AGENT_WINDOW if _uses_message_tags(channel) else None
    return ReplyWindow(free_form_until=last_inbound_at + window, human_agent_until=human_agent_until)


def decide_send(
    channel: Channel, last_inbound_at: datetime | None, now: datetime, kind: ReplyKind = ReplyKind.FREE_FORM
) -> SendDecision:
    """May staff send this kind of reply now, and as which messaging type?

    A window's end is exclusive: at exactly 24 h the free-form window has closed (as Room.window_expired).
    """
    if kind is ReplyKind.TEMPLATE:
        if channel is Channel.WHATSAPP_CLOUD:
            return SendDecision(allowed=True)
        return SendDecision(allowed=False, reason=TEMPLATE_WHATSAPP_ONLY)
    if channel.is_comment:
        return SendDecision(allowed=True)
    if last_inbound_at is None:
        return SendDecision(allowed=False, reason=NO_CUSTOMER_MESSAGE)
    window = reply_window(channel, last_inbound_at)
    if window.free_form_until is not None and now < window.free_form_until:
        if _uses_message_tags(channel):
            return SendDecision(allowed=True, messaging_type=MessagingType.RESPONSE)
        return SendDecision(allowed=True)
    if window.human_agent_until is not None and now < window.human_agent_until:
        return SendDecision(allowed=True, messaging_type=MessagingType.MESSAGE_TAG, tag=HUMAN_AGENT_TAG)
    if _uses_message_tags(channel):
        return SendDecision(allowed=False, reason=WINDOW_CLOSED)
    return SendDecision(allowed=False, reason=TEMPLATE_NEEDED)


# --- Meta's answers -------------------------------------------------------------------------------


class ErrorClass(StrEnum):
    RETRY = "retry"  # nothing was sent: try again after a backoff
    PERMANENT = "permanent"  # fail the message now, with Meta's reason
    REAUTH = "reauth"  # the token is no longer valid: the account needs re-authorisation, sends wait
    UNKNOWN = "unknown"  # the request may or may not have been acted on: reconcile before any resend


@dataclass(frozen=True)
class ErrorRule:
    code: int
    error_class: ErrorClass
    title: str


# Issue 9 item 4: Meta's error codes (Graph API and WhatsApp Cloud API "error codes" pages).
META_ERRORS: dict[int, ErrorRule] = {
    rule.code: rule
    for rule in (
        # Rate limits: nothing was sent.
        ErrorRule(130429, ErrorClass.RETRY, "Rate limit hit"),
        ErrorRule(131056, ErrorClass.RETRY, "(Business Account, Consumer Account) pair rate limit hit"),
        ErrorRule(4, ErrorClass.RETRY, "API Too Many Calls"),
        ErrorRule(80007, ErrorClass.RETRY, "Rate limit issues"),
        ErrorRule(613, ErrorClass.RETRY, "Calls to this API have exceeded the rate limit"),
        # Temporary errors: nothing was sent.
        ErrorRule(1, ErrorClass.RETRY, "API Unknown"),
        ErrorRule(2, ErrorClass.RETRY, "API Service"),
        ErrorRule(131000, ErrorClass.RETRY, "Something went wrong"),
        ErrorRule(131016, ErrorClass.RETRY, "Service unavailable"),
        # Permanent: retrying cannot help.
        ErrorRule(131047, ErrorClass.PERMANENT, "Re-engagement message"),
        ErrorRule(131026, ErrorClass.PERMANENT, "Message Undeliverable"),
        ErrorRule(100, ErrorClass.PERMANENT, "Invalid parameter"),
        ErrorRule(368, ErrorClass.PERMANENT, "Temporarily blocked for policies violations"),
        ErrorRule(551, ErrorClass.PERMANENT, "This person isn't available right now"),
        ErrorRule(10, ErrorClass.PERMANENT, "Permission denied (outside of the allowed window)"),
        # The token is expired, revoked or invalid.
        ErrorRule(190, ErrorClass.REAUTH, "Access token has expired"),
    )
}

# Failures without a Meta error code.
CONNECTION_REFUSED = ErrorClass.RETRY  # the request never left
TIMEOUT_AFTER_REQUEST_SENT = ErrorClass.UNKNOWN  # Meta may have acted on it


def classify_meta_error(code: int | None, http_status: int) -> ErrorClass:
    """The class of an error answer: Meta's code decides; without a known code, 5xx and 429 retry.

    An unknown code on a 4xx fails permanently: a retry could double-send nothing, but it would
    loop forever on a request Meta will never accept.
    """
    if code is not None and code in META_ERRORS:
        return META_ERRORS[code].error_class
    if http_status >= 500 or http_status == 429:
        return ErrorClass.RETRY
    return ErrorClass.PERMANENT


def error_title(code: int | None, fallback: str) -> str:
    rule = META_ERRORS.get(code) if code is not None else None
    return rule.title if rule else fallback


def backoff_delay(attempt: int, *, base_s: float = 1.0, cap_s: float = 300.0) -> float:
    """Exponential backoff for the `attempt`-th retry (1-based): base, 2*base, 4*base... capped.

    Deterministic; the sender adds its own jitter so many rooms do not retry in lock-step.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    return min(cap_s, base_s * (2 ** (attempt - 1)))
