"""GET /v1/stream across a PostgreSQL restart, on real processes: the API's listening connection and
its pools all die with the server; a stream opened before stays open and receives every message
written before and after (the listener reconnects and catches up from the change log); one opened
while the server is down is refused with 503 and Retry-After."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inbox.adapters.embedded import EmbeddedPostgres
from inbox.config import Settings
from tests.e2e.sse import Event, StreamReader
from tests.faults.conftest import fault_settings, start_pipeline
from tests.faults.harness import inbound_body, own_postgres
from tests.support import Pipeline, auth, wait_until

pytestmark = pytest.mark.faults


@pytest.fixture
def restartable(settings: Settings) -> Iterator[tuple[EmbeddedPostgres, Settings]]:
    with own_postgres(settings, fault_settings) as pg_and_settings:
        yield pg_and_settings


def post_until_accepted(p: Pipeline, message_id: str, text: str, timeout: float = 60) -> None:
    """A sender's retries: the API answers 503 while its pools reconnect after the restart."""
    headers = auth(p.settings, role="integration", user="bridge")

    def accepted() -> bool:
        try:
            r = httpx.post(f"{p.base_url}/v1/inbound-messages", headers=headers, timeout=10,
                           json=inbound_body(message_id, contact=f"62812{message_id[-2:]}", text=text))
        except httpx.TransportError:
            return False
        assert r.status_code in (202, 503), r.text
        return r.status_code == 202

    wait_until(accepted, timeout=timeout, interval=0.2, what=f"{message_id} to be accepted")


def texts(events: list[Event]) -> list[str]:
    return [e.data["text"] for e in events if e.name == "message"]


def test_an_open_stream_misses_nothing_across_a_postgresql_restart(
    restartable: tuple[EmbeddedPostgres, Settings], tmp_path: Path
) -> None:
    pg, own = restartable
    p = start_pipeline(Pipeline(own, tmp_path))
    try:
        headers = auth(p.settings, role="admin")
        reader = StreamReader(p.base_url, headers)
        reader.wait_started()
        before = [f"before {n:02d}" for n in range(5)]
        after = [f"after {n:02d}" for n in range(5)]
        for n, text in enumerate(before):
            post_until_accepted(p, f"b.{n:02d}", text)
        reader.wait_for(lambda events: set(before) <= set(texts(events)) or None, what="the messages before the restart")

        pg.stop()
        # A stream opened meanwhile is refused at once, with a retry hint, not started and left hanging.
        with httpx.stream("GET", f"{p.base_url}/v1/stream", headers=headers, timeout=30) as refused:
            assert refused.status_code == 503 and refused.headers.get("Retry-After"), refused.status_code
        pg.start()
        for n, text in enumerate(after):
            post_until_accepted(p, f"a.{n:02d}", text)

        reader.wait_for(lambda events: set(after) <= set(texts(events)) or None, timeout=60,
                        what="the messages after the restart on the same open stream")
        assert sorted(set(texts(reader.snapshot()))) == sorted(before + after)
        assert not reader.named("reset"), "a reset instead of the changes"
    finally:
        p.stop_all()
