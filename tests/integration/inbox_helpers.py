"""Driving the Inbox through its HTTP API in-process (projections applied with project_all)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from inbox.entrypoints.api.app import create_api
from inbox.config import Settings
from inbox.bootstrap import Container
from tests.support import auth, project_all

ACCOUNTS = {  # channel -> external id of the org's account on it
    "whatsapp_cloud": "wa-1",
    "instagram": "ig-1",
    "facebook_messenger": "fb-1",
    "instagram_comment": "igc-1",
    "facebook_comment": "fbc-1",
}
COMMENT_CHANNELS = {"instagram_comment", "facebook_comment"}

NOW = datetime.now(UTC)
OLD = NOW - timedelta(hours=30)  # outside the 24 h window


@dataclass
class Inbox:
    client: TestClient
    settings: Settings
    container: Container
    org: str = "org1"
    accounts: dict[str, str] = field(default_factory=lambda: dict(ACCOUNTS))  # external ids are global
    _mids: int = field(default=0)

    def headers(self, role: str = "admin", user: str = "admin1", org: str | None = None) -> dict[str, str]:
        return auth(self.settings, role=role, user=user, org=org or self.org)

    @property
    def admin(self) -> dict[str, str]:
        return self.headers("admin", "admin1")

    def register_all(self) -> None:
        for channel, external_id in self.accounts.items():
            r = self.client.post("/v1/channel-accounts", headers=self.admin,
                                 json={"channel": channel, "external_id": external_id, "name": channel})
            assert r.status_code == 201, r.text

    def inbound(self, channel: str, contact: str, *, text: str = "halo", at: datetime | None = None,
                name: str | None = None, phone: str | None = None, handle: str | None = None,
                post: str | None = None, mid: str | None = None) -> dict[str, Any]:
        self._mids += 1
        body: dict[str, Any] = {
            "channel": channel, "channel_account": self.accounts[channel],
            "contact": {"id": contact, "name": name, "phone": phone, "handle": handle},
            "message": {"id": mid or f"mid-{self._mids}", "text": text,
                        "sent_at": (at or datetime.now(UTC)).isoformat()},
        }
        if channel in COMMENT_CHANNELS:
            body["post_id"] = post or "post-1"
        r = self.client.post("/v1/inbound-messages", headers=self.headers("integration", "bridge"), json=body)
        assert r.status_code == 202, r.text
        return r.json()  # type: ignore[no-any-return]

    def project(self) -> None:
        project_all(self.settings)

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        r = self.client.get(path, headers=headers or self.admin, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, headers: dict[str, str] | None = None, json: Any = None) -> Any:
        return self.client.post(path, headers=headers or self.admin, json=json)

    def counters(self, headers: dict[str, str] | None = None) -> dict[str, Any]:
        return self.get("/v1/inbox/counters", headers)  # type: ignore[no-any-return]

    def rooms(self, headers: dict[str, str] | None = None, **params: Any) -> list[dict[str, Any]]:
        """Every room of the list, following the cursor to the end."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.get("/v1/rooms", headers, **params, **({"cursor": cursor} if cursor else {}))
            items += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return items

    def room_ids(self, headers: dict[str, str] | None = None, **params: Any) -> list[str]:
        return [r["id"] for r in self.rooms(headers, **params)]

    def search(self, q: str, headers: dict[str, str] | None = None, **params: Any) -> list[dict[str, Any]]:
        return self.get("/v1/search", headers, q=q, **params)["items"]  # type: ignore[no-any-return]


@contextmanager
def running_inbox(settings: Settings) -> Iterator[Inbox]:
    container = Container.build(settings)
    try:
        with TestClient(create_api(container)) as client:
            inbox = Inbox(client, settings, container)
            inbox.register_all()
            yield inbox
    finally:
        container.close()


def agent(inbox: Inbox, user: str = "agent1") -> dict[str, str]:
    return inbox.headers("agent", user)


def spv(inbox: Inbox) -> dict[str, str]:
    return inbox.headers("supervisor", "spv1")


def statuses(inbox: Inbox, headers: dict[str, str] | None = None, **params: Any) -> dict[str, set[str]]:
    return {s: set(inbox.room_ids(headers, status=s, **params)) for s in ("all", "unassigned", "assigned", "resolved")}
