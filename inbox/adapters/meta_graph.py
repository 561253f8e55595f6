"""Meta Graph API client: builds the exact request for each channel and reply kind, sends it, and
turns Meta's answer into a typed outcome the sender can act on without reading HTTP.

The access token travels only in the `Authorization` header (never in a URL, so neither our logs
nor httpx's request logs can carry it) and is never logged. Base URL and version come from the
caller (settings INBOX_META_GRAPH_URL / INBOX_META_GRAPH_VERSION once the sender is wired).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from domain.channels import Channel
from domain.outbound import (
    HUMAN_AGENT_TAG,
    ErrorClass,
    MessagingType,
    classify_meta_error,
    error_title,
)

log = logging.getLogger(__name__)

DEFAULT_GRAPH_URL = "https://graph.facebook.com"
DEFAULT_GRAPH_VERSION = "v21.0"

_VERSION_RE = re.compile(r"^v\d+\.\d+$")
_CODE_PREFIX_RE = re.compile(r"^\(#\d+\)\s*")


class InvalidReply(ValueError):
    """The reply cannot be expressed as a Graph request for its channel (a caller bug, not Meta's answer)."""


# --- what to send --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboundReply:
    """One staff reply, with the ids the channel needs.

    account_id: the WhatsApp phone-number id, or the Page id (Messenger, Instagram via its Page);
        unused for comment rooms.
    recipient_id: the customer's wa_id / PSID / IGSID; for comment rooms, the id of the customer's
        comment being answered (the latest one).
    """

    channel: Channel
    account_id: str
    recipient_id: str
    text: str | None = None
    template: Mapping[str, Any] | None = None  # WhatsApp only: {"name", "language", "components"}
    reply_to_message_id: str | None = None  # WhatsApp: context.message_id (the wamid answered)
    messaging_type: MessagingType | None = None  # Messenger/Instagram, from domain.outbound.decide_send
    tag: str | None = None
    # Our message id, echoed back by Meta so an `unknown` outcome can be reconciled: WhatsApp
    # `biz_opaque_callback_data` (returned in status webhooks), Messenger `message.metadata`
    # (returned in the message echo). Instagram and comments have no such field.
    correlation_id: str | None = None


@dataclass(frozen=True)
class GraphRequest:
    method: str
    path: str  # starts with /{version}/
    json: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)


def _check_version(version: str) -> None:
    if not _VERSION_RE.match(version):
        raise ValueError(f"Graph API version must look like 'v21.0', got {version!r}")


def build_send_request(reply: OutboundReply, version: str) -> GraphRequest:
    """The request Meta documents for this channel and reply kind (issue 9 item 2)."""
    _check_version(version)
    if reply.template is not None and reply.channel is not Channel.WHATSAPP_CLOUD:
        raise InvalidReply("templates can only be sent on WhatsApp")
    if reply.template is None and not (reply.text and reply.text.strip()):
        raise InvalidReply("a reply needs a text or a template")
    if reply.channel is Channel.WHATSAPP_CLOUD:
        return GraphRequest("POST", f"/{version}/{reply.account_id}/messages", _whatsapp_body(reply))
    if reply.channel in (Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM):
        return GraphRequest("POST", f"/{version}/{reply.account_id}/messages", _messenger_body(reply))
    if reply.channel is Channel.FACEBOOK_COMMENT:
        return GraphRequest("POST", f"/{version}/{reply.recipient_id}/comments", {"message": reply.text})
    if reply.channel is Channel.INSTAGRAM_COMMENT:
        return GraphRequest("POST", f"/{version}/{reply.recipient_id}/replies", {"message": reply.text})
    raise InvalidReply(f"no outbound request for channel {reply.channel}")


def _whatsapp_body(reply: OutboundReply) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": reply.recipient_id,
    }
    if reply.reply_to_message_id:
        body["context"] = {"message_id": reply.reply_to_message_id}
    if reply.correlation_id:
        body["biz_opaque_callback_data"] = reply.correlation_id
    if reply.template is not None:
        body["type"] = "template"
        body["template"] = _whatsapp_template(reply.template)
    else:
        body["type"] = "text"
        body["text"] = {"preview_url": False, "body": reply.text}
    return body


def _whatsapp_template(template: Mapping[str, Any]) -> dict[str, Any]:
    name = template.get("name")
    language = template.get("language")
    if not isinstance(name, str) or not name:
        raise InvalidReply("a template needs a name")
    if isinstance(language, str) and language:
        language = {"code": language}
    if not isinstance(language, Mapping) or not language.get("code"):
        raise InvalidReply("a template needs a language code (e.g. 'en_US')")
    out: dict[str, Any] = {"name": name, "language": dict(language)}
    if template.get("components"):
        out["components"] = list(template["components"])
    return out


def _messenger_body(reply: OutboundReply) -> dict[str, Any]:
    if reply.messaging_type is None:
        raise InvalidReply("Messenger/Instagram replies need a messaging_type (RESPONSE or MESSAGE_TAG)")
    body: dict[str, Any] = {
        "recipient": {"id": reply.recipient_id},
        "messaging_type": str(reply.messaging_type),
        "message": {"text": reply.text},
    }
    if reply.messaging_type is MessagingType.MESSAGE_TAG:
        body["tag"] = reply.tag or HUMAN_AGENT_TAG
    if reply.correlation_id and reply.channel is Channel.FACEBOOK_MESSENGER:
        body["message"]["metadata"] = reply.correlation_id
    return body


# --- what came back ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    channel_message_id: str  # wamid / mid / comment id


@dataclass(frozen=True)
class Failed:
    code: int | None
    title: str
    permanent: bool = True
    subcode: int | None = None
    details: str | None = None
    fbtrace_id: str | None = None


@dataclass(frozen=True)
class RetryAfter:
    seconds: float | None  # Meta's Retry-After when given; None: use the sender's backoff
    reason: str
    code: int | None = None


@dataclass(frozen=True)
class Reauth:
    code: int
    title: str


@dataclass(frozen=True)
class Unknown:
    """The request left and no answer came back: Meta may have sent it. Reconcile before any resend."""

    reason: str


@dataclass(frozen=True)
class AccessGranted:
    object_id: str
    name: str | None
    fields: dict[str, Any]


SendOutcome = Accepted | Failed | RetryAfter | Reauth | Unknown
AccessOutcome = AccessGranted | Failed | RetryAfter | Reauth


@dataclass(frozen=True)
class _MetaError:
    http_status: int
    code: int | None
    subcode: int | None
    message: str
    details: str | None
    fbtrace_id: str | None
    retry_after: float | None


def _parse_error(response: httpx.Response) -> _MetaError:
    code = subcode = None
    message = f"HTTP {response.status_code}"
    details = fbtrace_id = None
    try:
        payload = response.json()
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), int) else None
        subcode = error.get("error_subcode") if isinstance(error.get("error_subcode"), int) else None
        if isinstance(error.get("message"), str):
            message = _CODE_PREFIX_RE.sub("", error["message"]) or message
        data = error.get("error_data")
        if isinstance(data, dict) and isinstance(data.get("details"), str):
            details = data["details"]
        fbtrace_id = error.get("fbtrace_id") if isinstance(error.get("fbtrace_id"), str) else None
    return _MetaError(
        http_status=response.status_code,
        code=code,
        subcode=subcode,
        message=message,
        details=details,
        fbtrace_id=fbtrace_id,
        retry_after=_retry_after(response.headers.get("retry-after")),
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; the sender's backoff will do


def _error_outcome(error: _MetaError) -> Failed | RetryAfter | Reauth:
    kind = classify_meta_error(error.code, error.http_status)
    if kind is ErrorClass.REAUTH:
        return Reauth(code=error.code or 190, title=error.message)
    if kind is ErrorClass.RETRY:
        return RetryAfter(seconds=error.retry_after, reason=error.message, code=error.code)
    return Failed(
        code=error.code,
        title=error.message or error_title(error.code, f"HTTP {error.http_status}"),
        permanent=True,
        subcode=error.subcode,
        details=error.details,
        fbtrace_id=error.fbtrace_id,
    )


def _channel_message_id(channel: Channel, payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return None
    if channel is Channel.WHATSAPP_CLOUD:
        messages = payload.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            value = messages[0].get("id")
            return value if isinstance(value, str) and value else None
        return None
    key = "message_id" if channel in (Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM) else "id"
    value = payload.get(key)
    return value if isinstance(value, str) and value else None


def access_fields(channel: Channel | None) -> tuple[str, ...]:
    """Fields to read for the account-connection proof: each node type has its own (asking a Page
    field of a WhatsApp phone number is an error 100)."""
    if channel is Channel.WHATSAPP_CLOUD:
        return ("id", "verified_name", "display_phone_number")
    if channel in (Channel.INSTAGRAM, Channel.INSTAGRAM_COMMENT):
        return ("id", "username")
    return ("id", "name")


# --- the client ----------------------------------------------------------------------------------


class MetaGraphClient:
    """One per process; share it across sends (it pools connections)."""

    def __init__(
        self,
        base_url: str,
        version: str,
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        _check_version(version)
        self.base_url = base_url.rstrip("/")
        self.version = version
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> MetaGraphClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, reply: OutboundReply, token: str) -> SendOutcome:
        request = build_send_request(reply, self.version)
        try:
            response = await self._request(request, token)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
            # Nothing left this process: sending again cannot double-send.
            log.warning("graph %s %s: not sent (%s), will retry", request.method, request.path, type(exc).__name__)
            return RetryAfter(seconds=None, reason=f"connection failed: {type(exc).__name__}")
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            # The request (or part of it) left: Meta may have acted on it.
            log.warning(
                "graph %s %s: outcome unknown (%s after the request was sent)",
                request.method,
                request.path,
                type(exc).__name__,
            )
            return Unknown(reason=f"{type(exc).__name__} after the request was sent")
        if response.is_success:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            message_id = _channel_message_id(reply.channel, payload)
            if message_id is None:
                log.warning("graph %s %s: %s without a message id", request.method, request.path, response.status_code)
                return Unknown(reason=f"HTTP {response.status_code} without a message id")
            return Accepted(channel_message_id=message_id)
        error = _parse_error(response)
        outcome = _error_outcome(error)
        log.warning(
            "graph %s %s: HTTP %s code=%s subcode=%s (%s) fbtrace_id=%s -> %s",
            request.method,
            request.path,
            error.http_status,
            error.code,
            error.subcode,
            error.message,
            error.fbtrace_id,
            type(outcome).__name__,
        )
        return outcome

    async def check_access(self, object_id: str, token: str, channel: Channel | None = None) -> AccessOutcome:
        """Can `token` read `object_id` (phone number, Page, Instagram account)? The proof of control
        asked before an account is connected. A read is safe to repeat, so a timeout is a retry."""
        fields = access_fields(channel)
        request = GraphRequest("GET", f"/{self.version}/{object_id}", params={"fields": ",".join(fields)})
        try:
            response = await self._request(request, token)
        except httpx.HTTPError as exc:
            log.warning("graph GET %s: %s, will retry", request.path, type(exc).__name__)
            return RetryAfter(seconds=None, reason=f"{type(exc).__name__} while checking access")
        if response.is_success:
            try:
                payload = response.json()
            except ValueError:
                payload = None
            if isinstance(payload, dict) and payload.get("id") == object_id:
                name = payload.get("name") or payload.get("verified_name") or payload.get("username")
                return AccessGranted(object_id=object_id, name=name if isinstance(name, str) else None, fields=payload)
            return Failed(code=None, title="Graph answered for another object", permanent=True)
        error = _parse_error(response)
        outcome = _error_outcome(error)
        log.info(
            "graph GET %s: HTTP %s code=%s subcode=%s (%s) -> %s",
            request.path,
            error.http_status,
            error.code,
            error.subcode,
            error.message,
            type(outcome).__name__,
        )
        return outcome

    async def _request(self, request: GraphRequest, token: str) -> httpx.Response:
        return await self._http.request(
            request.method,
            self.base_url + request.path,
            json=request.json,
            params=request.params or None,
            headers={"Authorization": f"Bearer {token}"},
        )
