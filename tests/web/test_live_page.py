"""The page follows the live stream's contract (counters, room, room_hidden, message, reset; resume
with Last-Event-ID), in Chromium, against a scripted `/v1/stream` of the contract.

The stream here is a stand-in served by a small app of the real web routes (the real stream is
issue 10's and is exercised by the browser story once both are merged): each test event is sent
exactly as the contract describes it, so what is checked is the page's side of the contract.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.staticfiles import StaticFiles

from domain.staff import Actor, Role
from inbox.adapters.read_models.queries import InboxQueries
from inbox.bootstrap import Container
from inbox.config import Settings
from inbox.entrypoints.api import errors
from inbox.entrypoints.api.deps import ViewerDep
from inbox.entrypoints.api.routers import channel_accounts, inbound
from inbox.entrypoints.web import routes as web
from tests.support import auth, free_test_port, project_all, token, wait_until
from tests.web.browser import chromium, expect

pytestmark = pytest.mark.integration

DROP = object()  # tells the stream to end the connection (the browser then reconnects)


class ScriptedStream:
    """GET /v1/stream answering with the events a test puts in, and remembering each connection."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.connections: list[dict[str, Any]] = []
        self.position = 0

    def send(self, event: str, data: Any, *, with_id: bool = True) -> None:
        if with_id:
            self.position += 1
        self.events.put((event, data, self.position if with_id else None))

    async def serve(self, request: Request, viewer: ViewerDep) -> StreamingResponse:
        self.connections.append({"user": viewer.user_id, "last_event_id": request.headers.get("last-event-id")})

        async def body() -> AsyncIterator[bytes]:
            yield b"retry: 200\n\n"
            while True:
                try:
                    item = self.events.get_nowait()
                except queue.Empty:
                    await asyncio.sleep(0.05)
                    continue
                if item is DROP:
                    return
                event, data, position = item
                head = f"id: {position}\n" if position is not None else ""
                yield f"{head}event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()

        return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


def project_in_thread(settings: Settings) -> None:
    """project_all runs its own event loop; Playwright's sync API already runs one in this thread."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            project_all(settings)
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    if failure:
        raise failure[0]


@pytest.fixture
def served(db_settings: Settings) -> Iterator[tuple[str, ScriptedStream, Container]]:
    container = Container.build(db_settings)
    stream = ScriptedStream()
    app = FastAPI()
    app.state.container = container
    errors.install(app)
    for module in (channel_accounts, inbound):
        app.include_router(module.router)
    app.include_router(web.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    app.add_api_route("/v1/stream", stream.serve, methods=["GET"])
    port = free_test_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, what="the test server")
        yield f"http://127.0.0.1:{port}", stream, container
    finally:
        server.should_exit = True
        thread.join(10)
        container.close()


def test_the_page_follows_the_stream_and_resumes_with_last_event_id(served: Any, db_settings: Settings) -> None:
    base_url, stream, container = served
    http = httpx.Client(base_url=base_url, timeout=30)
    admin = auth(db_settings, role="admin", user="admin1")
    assert http.post("/v1/channel-accounts", headers=admin,
                     json={"channel": "whatsapp_cloud", "external_id": "pn-live", "name": "WA"}).status_code == 201

    with chromium() as browser:
        page = browser.new_context(base_url=base_url).new_page()
        page_errors: list[str] = []
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        page.goto("/session/new")
        page.get_by_label("Access token").fill(token(db_settings, role="supervisor", user="spv1"))
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#live")).to_have_text("live")
        assert stream.connections == [{"user": "spv1", "last_event_id": None}]  # the cookie authenticated it

        # A customer writes: `counters` moves badges and title, `room` brings the room into the list.
        r = http.post("/v1/inbound-messages", headers=auth(db_settings, role="integration", user="bridge"),
                      json={"channel": "whatsapp_cloud", "channel_account": "pn-live",
                            "contact": {"id": "628111", "name": "Lina Live"},
                            "message": {"id": "wamid.1", "text": "are you there?",
                                        "sent_at": datetime.now(UTC).isoformat()}})
        assert r.status_code == 202, r.text
        room_id = r.json()["room_id"]
        project_in_thread(db_settings)
        actor = Actor(user_id="spv1", org_id="org1", role=Role.SUPERVISOR, name=None)
        queries = InboxQueries(container.read_pool)
        stream.send("counters", queries.counters(actor))
        expect(page).to_have_title("(1) Inbox")
        expect(page.locator("#badge-messages")).to_have_text("1")
        expect(page.locator("#count-unassigned")).to_have_text("1")
        stream.send("room", queries.room(actor, room_id))
        expect(page.locator(f"#room-{room_id}")).to_contain_text("Lina Live")

        # `message` events of the open room are added to (or replace in) its history.
        page.locator(f"#room-{room_id} a").focus()
        page.keyboard.press("Enter")  # keyboard only
        expect(page.get_by_role("heading", name="Lina Live")).to_be_visible()
        [first] = queries.messages(actor, room_id, limit=5, before=None)["items"]
        pushed = {**first, "id": "00000000-0000-4000-8000-000000000002", "seq": first["seq"] + 1,
                  "text": "hello? <b>still here</b>", "sent_at": datetime.now(UTC).isoformat()}
        stream.send("message", pushed)
        expect(page.locator("#history li.msg").last).to_contain_text("hello? <b>still here</b>")  # as text
        stream.send("message", {**pushed, "removed": True, "removed_at": datetime.now(UTC).isoformat()})
        expect(page.locator("#msg-" + pushed["id"])).to_have_class(re.compile(r"\bremoved\b"))
        expect(page.locator("#history li.msg")).to_have_count(2)

        # `room_hidden`: gone from the list and from the room pane.
        stream.send("room_hidden", {"id": room_id, "version": 2})
        expect(page.locator(f"#room-{room_id}")).to_have_count(0)
        expect(page.locator("#room")).to_contain_text("no longer in your inbox")

        # The connection drops: EventSource comes back by itself with Last-Event-ID.
        last = stream.position
        stream.events.put(DROP)
        wait_until(lambda: len(stream.connections) == 2, timeout=30, what="the page to reconnect")
        assert stream.connections[1] == {"user": "spv1", "last_event_id": str(last)}

        # `reset`: the page re-fetches everything (the room is back in the list).
        stream.send("reset", {"reason": "too far behind", "position": stream.position}, with_id=False)
        expect(page.locator(f"#room-{room_id}")).to_contain_text("Lina Live")
        assert page_errors == []
    http.close()
