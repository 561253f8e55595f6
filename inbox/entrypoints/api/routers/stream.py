"""GET /v1/stream: live updates as Server-Sent Events (docs/live-updates.md, SSE_CONTRACT).

A plain ASGI response rather than sse-starlette or FastAPI's SSE helpers: the stream must be
ended from outside its generator — a slow client whose socket no longer drains (its send is
blocked, so the generator never runs again) and a server shutting down (uvicorn waits for open
responses before the lifespan ends) — and that needs a task group of our own around the sender.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from inbox.adapters.live import ChangeHub, Feed
from inbox.entrypoints.api.deps import ContainerDep, ViewerDep

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["stream"])
PATH = "/v1/stream"

# The scope key under which the application puts the server's `send` of a GET /v1/stream (app.InboxAPI).
SERVER_SEND = "inbox.server_send"

# After `reset` for a slow client, the server waits this long for the socket to take it, then drops the connection.
SLOW_CLIENT_GRACE_S = 5.0

_DESCRIPTION = """Server-Sent Events for the signed-in viewer (`text/event-stream`); see docs/live-updates.md.

Events (`event:` name, `data:` JSON):
- `counters`: the JSON of `GET /v1/inbox/counters` for this viewer, at the event's position;
- `room`: a room list item (`RoomOut`) of a room the viewer sees that changed;
- `room_hidden`: `{"id", "version"}` of a room the viewer saw and no longer sees;
- `message`: a history item (`MessageOut`) added or changed in a room the viewer sees;
- `reset`: `{"reason", "position"}`: re-fetch everything (resume point too old, the client was too
  slow, or the read models were rebuilt).

`id:` is a position in the change log; send the last one back as `Last-Event-ID` to resume.
Several events of one position (a room's messages, then the room) carry the id on the last one
only. `: hb` comment lines are heartbeats; `retry: 2000` comes first.
"""


class EventStream(Response):
    media_type = "text/event-stream"

    def __init__(self, feed: Feed, hub: ChangeHub, heartbeat_s: float) -> None:
        self.status_code = 200
        self.background = None
        self.feed = feed
        self.hub = hub
        self.heartbeat_s = heartbeat_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.server_send: Send | None = scope.get(SERVER_SEND)
        try:
            async with anyio.create_task_group() as tg:

                async def then_stop(fn: object) -> None:
                    await fn()  # type: ignore[operator]
                    tg.cancel_scope.cancel()

                tg.start_soon(then_stop, lambda: self._send_events(send))
                tg.start_soon(then_stop, lambda: self._until_disconnect(receive))
                tg.start_soon(then_stop, self._until_ended)
        finally:
            self.feed.close()

    async def _send_events(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]})
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        # The body's sends go to the server's own `send`, around the middleware chain: each middleware
        # wraps `send` only to note the response's start (status, started), which went through it
        # above, and the events of 200 streams are most of this process's sends (docs/live-updates.md).
        send = self.server_send or send
        events: AsyncIterator[bytes | None] = self.feed.events(self.heartbeat_s)
        async for frames in events:
            await send({"type": "http.response.body", "body": b": hb\n\n" if frames is None else frames,
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _until_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _until_ended(self) -> None:
        """A stream told to end (slow client, shutdown) whose sender does not finish: drop it."""
        await self.feed.sub.ended.wait()
        await anyio.sleep(SLOW_CLIENT_GRACE_S if self.feed.sub.overflowed.is_set() else 0.5)


@router.get(
    PATH.removeprefix(router.prefix),
    summary="Live updates (Server-Sent Events)",
    response_model=None,
    description=_DESCRIPTION,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                     "description": "an endless event stream"}},
)
async def stream(
    viewer: ViewerDep,
    container: ContainerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    hub = container.stream_hub
    if hub is None:
        raise HTTPException(503, "live updates are not running in this process", headers={"Retry-After": "5"})
    last: int | None = None
    if last_event_id not in (None, ""):
        try:
            last = int(last_event_id)
        except ValueError:
            raise HTTPException(400, "Last-Event-ID must be a position (an integer)") from None
        if last < 0:
            raise HTTPException(400, "Last-Event-ID must be a position (an integer >= 0)")
    feed = Feed(hub, viewer, last)
    try:
        await feed.start()
    except BaseException:
        feed.close()
        raise
    return EventStream(feed, hub, container.settings.stream_heartbeat_s)
