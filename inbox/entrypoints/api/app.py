"""FastAPI application factory (nothing is created at import time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from inbox.entrypoints.api import errors
from inbox.entrypoints.api.fast_ingest import PATH as INGEST_PATH
from inbox.entrypoints.api.fast_ingest import FastIngest
from inbox.entrypoints.api.fast_path import error_responder
from inbox.entrypoints.api.fast_webhooks import PATH as WEBHOOKS_PATH
from inbox.entrypoints.api.fast_webhooks import FastWebhooks
from inbox.entrypoints.api.limits import BodySizeLimit
from inbox.entrypoints.api.observe import RequestMetrics
from inbox.entrypoints.api.routers import (
    channel_accounts, counters, health, inbound, reports, rooms, search, stream, webhooks,
)
from inbox.bootstrap import Container
from inbox.entrypoints.web import routes as web

# Sync endpoints (commands, queries) run in the thread pool; let many wait on PostgreSQL at once.
THREAD_TOKENS = 200


class InboxAPI(FastAPI):
    """The FastAPI application, with the hot ingest paths (the ingest API, Meta's webhooks)
    answered before its middleware and router."""

    fast_ingest: FastIngest | None = None
    fast_webhooks: FastWebhooks | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            if self.fast_ingest is not None and scope["path"] == INGEST_PATH:
                await self.fast_ingest(scope, receive, send)
                return
            if self.fast_webhooks is not None and scope["path"] == WEBHOOKS_PATH:
                await self.fast_webhooks(scope, receive, send)
                return
        if scope["type"] == "http" and scope["path"] == stream.PATH:
            scope[stream.SERVER_SEND] = send  # its events skip the middlewares' send wrappers (routers/stream.py)
        await super().__call__(scope, receive, send)

    async def regular(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request through FastAPI's middleware and router."""
        await super().__call__(scope, receive, send)


def create_api(container: Container) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREAD_TOKENS
        await container.start_stream_hub()
        try:
            yield
        finally:
            await container.stop_stream_hub()

    api = InboxAPI(
        title="Inbox API",
        version="1.0",
        description="Omnichannel customer-service inbox: commands, queries and ingestion (see SPEC §3).",
        lifespan=lifespan,
    )
    api.state.container = container
    errors.install(api)
    for module in (channel_accounts, inbound, rooms, counters, search, stream, webhooks, health, reports):
        api.include_router(module.router)
    api.include_router(web.router)  # the reference web UI at `/` (inbox/entrypoints/web)
    api.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")

    api.add_middleware(RequestMetrics, metrics=container.metrics)
    api.add_middleware(BodySizeLimit, max_bytes=container.settings.max_body_bytes)
    respond_to_error = error_responder(api.exception_handlers)
    api.fast_ingest = FastIngest(container, api.regular, respond_to_error)
    api.fast_webhooks = FastWebhooks(container, api.regular, respond_to_error)
    return api
