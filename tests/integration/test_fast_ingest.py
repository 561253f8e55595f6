"""`POST /v1/inbound-messages` answered in front of FastAPI (inbox/entrypoints/api/fast_ingest.py):
the same answers as the FastAPI route for every request, good or bad."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from inbox.adapters.auth import mint_token
from inbox.config import Settings
from tests.integration.fast_paths import FastAndRegular, fast_and_regular
from tests.support import auth

pytestmark = pytest.mark.integration


@pytest.fixture
def apps(db_settings: Settings) -> Iterator[FastAndRegular]:
    with fast_and_regular(db_settings, "fast_ingest", "/v1/inbound-messages", "1234567890") as apps:
        yield apps


def body(mid: str, **changes: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "channel": "whatsapp_cloud", "channel_account": "1234567890",
        "contact": {"id": "6281234567890", "name": "Budi", "phone": "+6281234567890"},
        "message": {"id": mid, "text": "Halo", "sent_at": datetime.now(UTC).isoformat()},
    }
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = b
        for p in parents:
            node = node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return b


def requests(settings: Settings) -> list[tuple[str, dict[str, str], bytes]]:
    secret = settings.jwt_secret or ""
    integration = auth(settings, role="integration", user="bridge")
    j = {**integration, "Content-Type": "application/json"}
    other_org = {"Authorization": f"Bearer {mint_token(secret, org='org2', user='u', role='integration')}",
                 "Content-Type": "application/json"}
    expired = {"Authorization": f"Bearer {mint_token(secret, org='org1', user='u', role='admin', ttl_s=-10)}"}
    naive = datetime.now().replace(tzinfo=None).isoformat()
    far = (datetime.now(UTC) + timedelta(days=3)).isoformat()

    def dump(b: dict[str, Any]) -> bytes:
        return orjson.dumps(b)

    return [
        ("no token", {"Content-Type": "application/json"}, dump(body("a1"))),
        ("not bearer", {"Authorization": "Basic abc", "Content-Type": "application/json"}, dump(body("a2"))),
        ("bad token", {"Authorization": "Bearer nope"}, dump(body("a3"))),
        ("expired", expired, dump(body("a4"))),
        ("agent", auth(settings, role="agent", user="agent1"), dump(body("a5"))),
        ("not json", j, b"{not json"),
        ("empty", j, b""),
        ("a list", j, b"[1, 2]"),
        ("text/plain", {**integration, "Content-Type": "text/plain"}, dump(body("a6"))),
        ("missing field", j, dump(body("a7", **{"message.text": ...}))),
        ("extra field", j, dump(body("a8", extra=1))),
        ("bad channel", j, dump(body("a9", channel="telegram"))),
        ("naive time", j, dump(body("a10", **{"message.sent_at": naive}))),
        ("future time", j, dump(body("a11", **{"message.sent_at": far}))),
        ("NUL in text", j, dump(body("a12", **{"message.text": "a\u0000b"}))),
        ("long id", j, dump(body("x" * 5000))),
        ("unknown account", j, dump(body("a13", channel_account="999"))),
        ("account of another org", other_org, dump(body("a14"))),
        ("post_id on a DM channel", j, dump(body("a15", post_id="p1"))),
        ("too large", j, dump(body("a16", **{"message.text": "x" * (settings.max_body_bytes + 10)}))),
    ]


def test_every_refusal_is_the_routes_own(apps: FastAndRegular, db_settings: Settings) -> None:
    for name, headers, content in requests(db_settings):
        a = apps.fast(headers=headers, content=content)
        b = apps.regular(headers=headers, content=content)
        assert a.status_code >= 400, name
        assert (a.status_code, a.json(), a.headers.get("www-authenticate")) == (
            b.status_code, b.json(), b.headers.get("www-authenticate")), name


def test_accepted_and_duplicate_answers_are_the_routes_own(
    apps: FastAndRegular, db_settings: Settings
) -> None:
    headers = auth(db_settings, role="integration", user="bridge")
    observed = apps.api.state.container.metrics.requests.labels("POST", "/v1/inbound-messages", "202")
    before = observed._sum.get()  # noqa: SLF001 - the histogram's running sum of seconds
    first = apps.fast(headers=headers, json=body("ok1"))
    # The account was registered, not yet looked up: the route looks it up (and caches it) the first time.
    apps.handed_over = 0
    assert first.status_code == 202 and first.json()["duplicate"] is False
    assert observed._sum.get() > before  # noqa: SLF001 - recorded in the request metrics
    again = apps.regular(headers=headers, json=body("ok1"))
    assert again.status_code == 202 and again.json() == {**first.json(), "duplicate": True}
    assert apps.fast(headers=headers, json=body("ok1")).json() == again.json()
    second = apps.fast(headers=headers, json=body("ok2"))
    assert second.status_code == 202 and second.json()["version"] == first.json()["version"] + 1
    assert set(second.json()) == {"room_id", "version", "message_id", "duplicate"}
    assert apps.handed_over == 0


def test_an_unavailable_store_is_a_503_with_retry_after(
    apps: FastAndRegular, db_settings: Settings
) -> None:
    container = apps.api.state.container
    headers = auth(db_settings, role="integration", user="bridge")
    assert apps.fast(headers=headers, json=body("w1")).status_code == 202  # account cached

    def full(*_: Any, **__: Any) -> Any:
        from inbox.usecases.results import Unavailable

        raise Unavailable("too many messages waiting to be recorded; retry later")

    container.inbound._enqueue = full  # noqa: SLF001 - a full queue, as `_enqueue` reports it
    a = apps.fast(headers=headers, json=body("w2"))
    b = apps.regular(headers=headers, json=body("w2"))
    assert a.status_code == b.status_code == 503
    assert a.json() == b.json() and a.headers["retry-after"] == b.headers["retry-after"]
