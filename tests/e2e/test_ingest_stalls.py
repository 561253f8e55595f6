"""The ingest path under database stalls, on a real `inbox api` process and real PostgreSQL.

A held table lock, a full queue or killed connections end in 503 + Retry-After (never 500),
service comes back by itself, and the answers are exact: every 202 is recorded once, no 503'd
message is recorded (so the sender's retry records it once).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from inbox.config import Settings
from inbox.adapters.postgres import conninfo
from tests.support import Pipeline, auth, http_settings, query, wait_until

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT_S = 2


def start_api(settings: Settings, tmp_path: Path, **overrides: Any) -> Pipeline:
    p = Pipeline(replace(http_settings(settings), inbound_timeout_s=REQUEST_TIMEOUT_S, **overrides), tmp_path)
    p.start("api")
    try:
        p.wait_for_api()
        r = httpx.post(f"{p.base_url}/v1/channel-accounts", headers=auth(p.settings, role="admin"),
                       json={"channel": "whatsapp_cloud", "external_id": "pn-stall", "name": "Stalls"})
        assert r.status_code == 201, r.text
        # Warm: the account is now cached, so during a stall requests reach the group commit.
        assert post(p, "m.warm-up").status_code == 202
    except BaseException:
        p.stop_all()  # the caller's finally never runs when this fails
        raise
    return p


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    p = start_api(settings, tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def post(p: Pipeline, message_id: str, *, contact: str = "6281200001") -> httpx.Response:
    with httpx.Client(base_url=p.base_url, timeout=120) as c:
        return c.post("/v1/inbound-messages", headers=auth(p.settings, role="integration", user="bridge"), json={
            "channel": "whatsapp_cloud", "channel_account": "pn-stall",
            "contact": {"id": contact, "name": "Customer"},
            "message": {"id": message_id, "text": f"text of {message_id}", "sent_at": datetime.now(UTC).isoformat()},
        })


@contextmanager
def events_table_locked(settings: Settings) -> Iterator[None]:
    """Another session holds ACCESS EXCLUSIVE on the events table until the block ends."""
    with psycopg.connect(conninfo(settings)) as conn:
        conn.execute("LOCK TABLE inbox_events IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


def recorded_ids(settings: Settings) -> list[str]:
    return [r[0] for r in query(settings, "SELECT channel_message_id FROM inbound_dedup")]


def received_events(settings: Settings) -> int:
    return int(query(settings, "SELECT count(*) FROM inbox_events WHERE topic LIKE '%%MessageReceived'")[0][0])


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    assert "detail" in r.json()


class Burst:
    """What a `burst` of senders got: each message's answer (202 or a well-formed 503) by message id."""

    def __init__(self, p: Pipeline) -> None:
        self.outcomes: dict[str, int] = {}
        self._p = p
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def count(self, status: int | None = None) -> int:
        """Answers so far (with `status`: only those)."""
        with self._lock:
            return sum(1 for s in self.outcomes.values() if status is None or s == status)

    def _send(self, worker: int) -> None:
        i = 0
        while not self._stop.is_set():
            message_id = f"m.{worker}.{i}"
            r = post(self._p, message_id, contact=f"62812{worker:05d}")
            assert r.status_code in (202, 503), r.text
            if r.status_code == 503:
                assert_unavailable(r)
            with self._lock:
                self.outcomes[message_id] = r.status_code
            i += 1


@contextmanager
def burst(p: Pipeline, workers: int) -> Iterator[Burst]:
    """`workers` threads, one contact each, post message after message until the block ends; then
    each sender's failure (an answer other than 202 or a well-formed 503) is raised."""
    b = Burst(p)
    with ThreadPoolExecutor(workers) as pool:
        senders = [pool.submit(b._send, w) for w in range(workers)]
        try:
            yield b
        finally:
            b._stop.set()
        for s in senders:
            s.result()


def assert_exact(settings: Settings, outcomes: dict[str, int]) -> None:
    """Every 202 recorded once, no 503 recorded."""
    recorded = recorded_ids(settings)
    assert len(recorded) == len(set(recorded)) == received_events(settings)
    accepted = {m for m, status in outcomes.items() if status == 202}
    refused = {m for m, status in outcomes.items() if status == 503}
    assert accepted <= set(recorded), f"lost: {sorted(accepted - set(recorded))}"
    assert not refused & set(recorded), f"503 but recorded: {sorted(refused & set(recorded))}"


def test_inbound_recovers_after_the_events_table_was_locked_longer_than_the_request_timeout(api: Pipeline) -> None:
    with events_table_locked(api.settings), ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, api, "m.during-lock")
        answer = first.result(timeout=90)  # the lock is held until the first message is answered
    assert_unavailable(answer)

    later = post(api, "m.after-lock")

    assert later.status_code == 202, later.text
    assert_exact(api.settings, {"m.during-lock": 503, "m.after-lock": 202})


def test_inbound_burst_during_a_held_lock_gets_only_202_or_503_and_every_202_is_recorded_once(api: Pipeline) -> None:
    with burst(api, workers=8) as senders:
        wait_until(lambda: senders.count(202) >= 8, timeout=60, what="202s before the lock")
        with events_table_locked(api.settings):
            wait_until(lambda: senders.count(503) >= 8, timeout=60, what="503s while the lock is held")
        accepted_before = senders.count(202)
        wait_until(lambda: senders.count(202) >= accepted_before + 16, timeout=60, what="202s after the lock")

    assert_exact(api.settings, senders.outcomes)


def test_a_full_ingest_queue_answers_503_without_waiting_for_the_database(settings: Settings, tmp_path: Path) -> None:
    p = start_api(settings, tmp_path, inbound_queue_max=3)
    try:
        with events_table_locked(p.settings), ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda i: post(p, f"m.q{i}", contact=f"628{i:05d}"), range(12)))
        for r in answers:
            assert_unavailable(r)
        assert sum("too many" in r.json()["detail"] for r in answers) >= 3

        assert post(p, "m.after").status_code == 202
        assert_exact(p.settings, {f"m.q{i}": 503 for i in range(12)} | {"m.after": 202})
    finally:
        p.stop_all()


def test_terminated_database_connections_answer_503_and_service_recovers(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_name = f"inbox-api-{settings.db_schema}"
    monkeypatch.setenv("PGAPPNAME", app_name)  # only the API's connections carry this name
    p = Pipeline(replace(http_settings(settings), inbound_timeout_s=REQUEST_TIMEOUT_S), tmp_path)
    p.start("api")
    monkeypatch.delenv("PGAPPNAME")

    def terminate() -> int:
        rows = query(settings, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                     (app_name,))
        return len(rows)

    try:
        p.wait_for_api()
        r = httpx.post(f"{p.base_url}/v1/channel-accounts", headers=auth(p.settings, role="admin"),
                       json={"channel": "whatsapp_cloud", "external_id": "pn-stall", "name": "Stalls"})
        assert r.status_code == 201, r.text
        with burst(p, workers=6) as senders:
            for _ in range(3):
                seen = senders.count()
                assert terminate() > 0
                wait_until(lambda: senders.count() >= seen + 12, timeout=60, what="answers after terminating")  # noqa: B023
        outcomes = senders.outcomes
        wait_until(lambda: post(p, f"m.canary.{len(outcomes)}").status_code == 202, timeout=30, what="a 202 again")
        assert 202 in outcomes.values()
        assert set(outcomes.values()) <= {202, 503}
        assert_exact(settings, outcomes)
    finally:
        p.stop_all()


def test_queries_answer_503_with_retry_after_while_the_database_is_locked(api: Pipeline) -> None:
    """Read queries are bounded by the read pool's statement timeout."""
    with psycopg.connect(conninfo(api.settings)) as conn:
        conn.execute("LOCK TABLE rooms IN ACCESS EXCLUSIVE MODE")
        try:
            r = httpx.get(f"{api.base_url}/v1/rooms", headers=auth(api.settings, role="admin"), timeout=60)
        finally:
            conn.rollback()
    assert_unavailable(r)
    assert httpx.get(f"{api.base_url}/v1/rooms", headers=auth(api.settings, role="admin"), timeout=60).status_code == 200


def test_readyz_reports_the_write_path_down_while_commits_fail_and_up_again_without_traffic(api: Pipeline) -> None:
    def write_path() -> bool:
        return bool(httpx.get(f"{api.base_url}/readyz", timeout=60).json()["checks"]["write_path"])

    with events_table_locked(api.settings):
        assert_unavailable(post(api, "m.during-lock"))
        assert write_path() is False

    wait_until(write_path, timeout=30, what="write path reported up again")


def test_a_webhook_during_a_held_lock_gets_503_with_retry_after_and_its_redelivery_is_recorded_once(
    api: Pipeline,
) -> None:
    import json

    from channels.meta.signature import signature

    r = httpx.post(f"{api.base_url}/v1/channel-accounts", headers=auth(api.settings, role="admin"),
                   json={"channel": "whatsapp_cloud", "external_id": "106540352242922", "name": "WA"})
    assert r.status_code == 201, r.text
    payload = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "meta" / "wa_audio.json").read_text())
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]

    def deliver(message_id: str) -> httpx.Response:
        message["id"] = message_id
        body = json.dumps(payload).encode()
        assert api.settings.meta_app_secret
        return httpx.post(f"{api.base_url}/webhooks/meta", content=body, timeout=120, headers={
            "content-type": "application/json", "X-Hub-Signature-256": signature(api.settings.meta_app_secret, body),
        })

    assert deliver("wamid.warm-up").status_code == 200  # the account is cached from now on
    with events_table_locked(api.settings):
        assert_unavailable(deliver("wamid.during-lock"))
    assert deliver("wamid.during-lock").status_code == 200  # Meta's redelivery

    assert recorded_ids(api.settings).count("wamid.during-lock") == 1


def test_an_exhausted_read_pool_answers_503_with_retry_after(settings: Settings, tmp_path: Path) -> None:
    p = start_api(settings, tmp_path, db_pool_size=1, read_statement_timeout_ms=60_000)
    admin = auth(p.settings, role="admin")
    try:
        with psycopg.connect(conninfo(p.settings)) as conn, ThreadPoolExecutor(3) as pool:
            conn.execute("LOCK TABLE rooms IN ACCESS EXCLUSIVE MODE")
            try:  # one request holds the only read connection (waiting for the lock), the others wait for it
                answers = [pool.submit(httpx.get, f"{p.base_url}/v1/rooms", headers=admin, timeout=120)
                           for _ in range(3)]
                waited = wait_until(lambda: [a.result() for a in answers if a.done()] if sum(
                    a.done() for a in answers) >= 2 else None, timeout=60, what="two answers while the pool is busy")
            finally:
                conn.rollback()
            for r in waited:
                assert_unavailable(r)
            assert sorted(a.result().status_code for a in answers) == [200, 503, 503]
    finally:
        p.stop_all()
