"""The same request through one of the API's fast paths and through FastAPI's route, to compare the answers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from inbox.bootstrap import Container
from inbox.config import Settings
from inbox.entrypoints.api.app import InboxAPI, create_api
from tests.support import auth


class FastAndRegular:
    """One application; `fast` posts to `path` through the fast path held in the attribute `attr`
    of the application (`fast_ingest`, `fast_webhooks`), `regular` with it switched off."""

    def __init__(self, api: InboxAPI, client: TestClient, attr: str, path: str) -> None:
        self.api = api
        self.client = client
        self.attr = attr
        self.path = path
        self.handler = getattr(api, attr)
        assert self.handler is not None
        self.handed_over = 0  # requests the fast path handed to FastAPI's route
        fallback = self.handler.fallback

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            self.handed_over += 1
            await fallback(scope, receive, send)

        self.handler.fallback = counted

    def fast(self, **kwargs: Any) -> Any:
        setattr(self.api, self.attr, self.handler)
        return self.client.post(self.path, **kwargs)

    def regular(self, **kwargs: Any) -> Any:
        setattr(self.api, self.attr, None)
        try:
            return self.client.post(self.path, **kwargs)
        finally:
            setattr(self.api, self.attr, self.handler)


@contextmanager
def fast_and_regular(settings: Settings, attr: str, path: str, whatsapp_account: str) -> Iterator[FastAndRegular]:
    """An application on `settings` with one WhatsApp account registered (not yet looked up)."""
    container = Container.build(settings)
    api = create_api(container)
    assert isinstance(api, InboxAPI)
    try:
        with TestClient(api) as client:
            r = client.post("/v1/channel-accounts", headers=auth(settings, role="admin", user="admin1"),
                            json={"channel": "whatsapp_cloud", "external_id": whatsapp_account, "name": "Sales"})
            assert r.status_code == 201, r.text
            yield FastAndRegular(api, client, attr, path)
    finally:
        container.close()
