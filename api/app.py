"""FastAPI application factory (nothing is created at import time)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request, Response

from api import errors
from api.limits import BodySizeLimit
from api.routers import channel_accounts, health, inbound, inbox, rooms
from inbox.container import Container

# Sync endpoints wait on the group committer; give them room to queue up concurrently.
THREAD_TOKENS = 200


def create_app(container: Container) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREAD_TOKENS
        yield

    app = FastAPI(
        title="Inbox API",
        version="1.0",
        description="Omnichannel customer-service inbox: commands, queries and ingestion (see SPEC §3).",
        lifespan=lifespan,
    )
    app.state.container = container
    errors.install(app)
    for module in (channel_accounts, inbound, rooms, inbox, health):
        app.include_router(module.router)

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        container.metrics.requests.labels(
            request.method, getattr(route, "path", "unmatched"), str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response

    app.add_middleware(BodySizeLimit, max_bytes=container.settings.max_body_bytes)
    return app
