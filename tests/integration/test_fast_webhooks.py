"""`POST /webhooks/meta` answered in front of FastAPI (inbox/entrypoints/api/fast_webhooks.py):
the same answers as the FastAPI route for every request, good or bad."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from channels.meta.signature import signature
from inbox.config import DEV_META_APP_SECRET, Settings
from tests.integration.fast_paths import FastAndRegular, fast_and_regular
from tests.integration.test_webhooks import FIXTURES, WA_ACCOUNT

pytestmark = pytest.mark.integration
PATH = "/webhooks/meta"


@pytest.fixture
def apps(db_settings: Settings) -> Iterator[FastAndRegular]:
    with fast_and_regular(db_settings, "fast_webhooks", PATH, WA_ACCOUNT) as apps:
        yield apps


def text_message(mid: str) -> bytes:
    body = json.loads((FIXTURES / "wa_text.json").read_text())
    body["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = mid
    return json.dumps(body).encode()


def signed(body: bytes, secret: str = DEV_META_APP_SECRET) -> dict[str, str]:
    return {"content-type": "application/json", "X-Hub-Signature-256": signature(secret, body)}


def refusals(settings: Settings) -> list[tuple[str, bytes, dict[str, str]]]:
    ok = text_message("wamid.r1")
    too_large = b'{"object": "page", "entry": [], "pad": "' + b"a" * (settings.max_body_bytes + 10) + b'"}'
    return [
        ("no signature", ok, {"content-type": "application/json"}),
        ("not sha256", ok, {"X-Hub-Signature-256": "sha1=abc"}),
        ("another secret", ok, signed(ok, "not-the-app-secret")),
        ("other bytes", ok, signed(ok + b" ")),
        ("not json", b"{not json", signed(b"{not json")),
        ("not an object", b"[]", signed(b"[]")),
        ("no entries", b'{"object": "page"}', signed(b'{"object": "page"}')),
        ("too large", too_large, signed(too_large)),
    ]


def test_every_refusal_is_the_routes_own(apps: FastAndRegular, db_settings: Settings) -> None:
    for name, content, headers in refusals(db_settings):
        a = apps.fast(content=content, headers=headers)
        b = apps.regular(content=content, headers=headers)
        assert a.status_code in (400, 401, 413), name
        assert (a.status_code, a.json()) == (b.status_code, b.json()), name
    assert apps.handed_over == 1  # only the body over the size limit: its 413 is the size limit's


def test_recorded_duplicate_and_unknown_account_answers_are_the_routes_own(apps: FastAndRegular) -> None:
    metrics = apps.api.state.container.metrics
    observed = metrics.requests.labels("POST", PATH, "200")
    before = observed._sum.get()  # noqa: SLF001 - the histogram's running sum of seconds
    body = text_message("wamid.ok1")

    first = apps.fast(content=body, headers=signed(body))

    assert first.status_code == 200 and first.json()["recorded"] == 1
    assert observed._sum.get() > before  # noqa: SLF001 - recorded in the request metrics
    again = apps.regular(content=body, headers=signed(body))
    assert again.status_code == 200 and again.json() == {**first.json(), "recorded": 0, "duplicates": 1}
    assert apps.fast(content=body, headers=signed(body)).json() == again.json()
    unknown = body.replace(WA_ACCOUNT.encode(), b"999999999")
    a = apps.fast(content=unknown, headers=signed(unknown))
    b = apps.regular(content=unknown, headers=signed(unknown))
    assert a.status_code == b.status_code == 200 and a.json() == b.json() and a.json()["unknown_accounts"] == 1
    assert apps.handed_over == 0


def test_an_unavailable_store_and_a_slow_commit_are_503_with_retry_after(apps: FastAndRegular) -> None:
    inbound = apps.api.state.container.inbound
    body = text_message("wamid.w1")
    assert apps.fast(content=body, headers=signed(body)).status_code == 200  # the account is cached

    def full(*_: Any, **__: Any) -> Any:
        from inbox.usecases.results import Unavailable

        raise Unavailable("too many messages waiting to be recorded; retry later")

    def slow(*_: Any, **__: Any) -> Any:
        raise TimeoutError

    for broken in (full, slow):
        inbound.submit_group_async = broken  # what the committer reports when full, or past its timeout
        body = text_message(f"wamid.{broken.__name__}")
        a = apps.fast(content=body, headers=signed(body))
        b = apps.regular(content=body, headers=signed(body))
        assert a.status_code == b.status_code == 503, broken.__name__
        assert a.json() == b.json() and a.headers["retry-after"] == b.headers["retry-after"], broken.__name__
