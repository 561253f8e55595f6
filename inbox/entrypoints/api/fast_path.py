"""What the API's hot paths share when they answer a request in front of FastAPI (`fast_ingest`,
`fast_webhooks`): reading the body within the size limit, handing a request they do not decide to
the regular route with its body, answering an error as the application's exception handlers would,
and recording the request as the `RequestMetrics` middleware would."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from inbox.adapters.metrics import Metrics

ASGIHandler = Callable[[Scope, Receive, Send], Awaitable[None]]
ErrorResponder = Callable[[Scope, Exception], Awaitable[Any]]


@dataclass(frozen=True)
class ReadBody:
    """A request's body as far as it was read."""

    body: bytes
    more: bool = False  # the client has more to send (a body read only up to the size limit)


async def body_within_limit(
    scope: Scope, receive: Receive, send: Send, max_bytes: int, fallback: ASGIHandler
) -> ReadBody | None:
    """The whole body; None once nothing is left to answer: a body over the limit was handed to
    `fallback` (the regular route, whose size limit answers 413), or the client went away."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            await fallback(scope, receive, send)
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            read = ReadBody(b"".join(chunks), bool(message.get("more_body", False)))
            await fallback(scope, replay(read, receive), send)
            return None
        if not message.get("more_body", False):
            return ReadBody(b"".join(chunks))


def replay(read: ReadBody, receive: Receive) -> Receive:
    """A `receive` that first gives back the body already read, then reads on."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": read.body, "more_body": read.more}
        return await receive()

    return again


async def send_json(send: Send, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json"),
    ]})
    await send({"type": "http.response.body", "body": payload})


def observe(metrics: Metrics, method: str, route: str, status: int, started: float) -> None:
    """The request's latency, labelled as `RequestMetrics` labels the routes FastAPI answers."""
    metrics.requests.labels(method, route, str(status)).observe(time.perf_counter() - started)


def error_responder(exception_handlers: dict[Any, Callable[..., Any]]) -> ErrorResponder:
    """Answer an exception as the application's exception handlers would (most specific class first)."""

    async def respond(scope: Scope, exc: Exception) -> Any:
        for kind in type(exc).__mro__:
            handler = exception_handlers.get(kind)
            if handler is not None:
                return await handler(Request(scope), exc)
        raise exc

    return respond
