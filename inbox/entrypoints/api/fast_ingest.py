"""`POST /v1/inbound-messages` without FastAPI's per-request machinery, for the usual request.

The ingest endpoint is the API's hot path (one request per customer message). Routed through
FastAPI, most of its CPU goes to the layers around the handler: the middleware stack, the router,
dependency resolution, the response model. This ASGI handler runs in front of them
(`InboxAPI.__call__`) and does the same work for a well-formed request from a known caller: read
the body (within the size limit), check the bearer token and role, validate the body with the
same pydantic model, find the channel account in the process's cache, submit it to the group
commit, answer 202 with the same JSON.

Anything else, it does not decide itself: a missing or bad token, a wrong role, a body that does
not parse or validate, an unsupported content type, an oversized body, an account this process
has not seen yet are all handed, with the body read so far, to the regular FastAPI route, so every
refusal (401, 403, 413, 422 and their messages) is exactly the route's. An error raised while
recording (503 + Retry-After, 409, 422 from the edge check) is answered by the application's own
exception handlers. Request metrics are recorded as the `RequestMetrics` middleware would.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from domain.channels import Channel
from domain.staff import Role
from inbox.adapters.auth import InvalidToken, verify_token
from inbox.bootstrap import Container
from inbox.entrypoints.api.fast_path import (
    ASGIHandler, ErrorResponder, body_within_limit, observe, replay, send_json,
)
from inbox.entrypoints.api.schemas import RecordInboundMessage
from inbox.usecases.ingest import InboundMessage

PATH = "/v1/inbound-messages"
ROUTE = PATH  # the route label of the request metrics (the route's path)
_INGESTING = (Role.INTEGRATION, Role.ADMIN)


class FastIngest:
    def __init__(self, container: Container, fallback: ASGIHandler, respond_to_error: ErrorResponder) -> None:
        self.container = container
        self.fallback = fallback
        self.respond_to_error = respond_to_error
        settings = container.settings
        assert settings.jwt_secret
        self._secret = settings.jwt_secret
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._max_bytes = settings.max_body_bytes
        self._timeout = settings.inbound_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        read = await body_within_limit(scope, receive, send, self._max_bytes, self.fallback)
        if read is None:
            return
        request = self._parse(scope["headers"], read.body)
        if request is None:
            await self.fallback(scope, replay(read, receive), send)
            return
        account, msg = request
        status = 500
        try:
            result = await self.container.inbound.submit_async(account, msg, timeout=self._timeout)
        except Exception as e:
            response = await self.respond_to_error(scope, e)
            status = response.status_code
            await response(scope, receive, send)
        else:
            self.container.metrics.inbound_messages.labels("duplicate" if result.duplicate else "recorded").inc()
            status = 202
            await send_json(send, 202, orjson.dumps({
                "room_id": result.room_id, "version": result.version,
                "message_id": result.message_id, "duplicate": result.duplicate,
            }))
        finally:
            observe(self.container.metrics, "POST", ROUTE, status, started)

    def _parse(self, headers: list[tuple[bytes, bytes]], body: bytes) -> Any:
        """(account, message) for a request the route would accept as is; None for anything else."""
        authorization = content_type = None
        for name, value in headers:
            if name == b"authorization":
                authorization = value
            elif name == b"content-type":
                content_type = value
        if authorization is None or not _is_json(content_type) or not body:
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            actor = verify_token(self._secret, token, issuer=self._issuer, audience=self._audience)
        except InvalidToken:
            return None
        if actor.role not in _INGESTING:
            return None
        try:
            data = RecordInboundMessage.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            return None
        channel = Channel(data.channel)
        account = self.container.accounts.find_cached(channel, data.channel_account)
        if account is None or account.org_id != actor.org_id:
            return None  # the route looks it up in the database, or refuses it
        return account, InboundMessage(
            channel=channel, channel_account=data.channel_account, contact_id=data.contact.id,
            channel_message_id=data.message.id, text=data.message.text, sent_at=data.message.sent_at,
            contact_name=data.contact.name, contact_phone=data.contact.phone, contact_handle=data.contact.handle,
            post_id=data.post_id,
        )


def _is_json(content_type: bytes | None) -> bool:
    """The content types FastAPI parses as JSON (none at all, application/json, application/*+json)."""
    if content_type is None:
        return True
    kind = content_type.split(b";", 1)[0].strip().lower()
    return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))
