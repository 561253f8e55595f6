"""/readyz tells the truth about the loops behind the API, and /metrics shows their lag (real processes)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from inbox.config import Settings
from inbox.adapters.postgres import conninfo
from tests.support import Pipeline, auth, http_settings, wait_until

pytestmark = pytest.mark.e2e

STALL_AFTER_S = 3


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(replace(http_settings(settings), stall_after_s=STALL_AFTER_S), tmp_path)
    p.start("worker")
    p.start("relay")
    p.start("api")
    try:
        p.wait_for_api()
        r = httpx.post(f"{p.base_url}/v1/channel-accounts", headers=auth(p.settings, role="admin"),
                       json={"channel": "whatsapp_cloud", "external_id": "pn-health", "name": "Health"})
        assert r.status_code == 201, r.text
        yield p
    finally:
        p.stop_all()


def post(p: Pipeline, message_id: str) -> None:
    r = httpx.post(f"{p.base_url}/v1/inbound-messages", headers=auth(p.settings, role="integration", user="bridge"),
                   timeout=30, json={
                       "channel": "whatsapp_cloud", "channel_account": "pn-health",
                       "contact": {"id": "6281299999", "name": "Customer"},
                       "message": {"id": message_id, "text": "halo", "sent_at": datetime.now(UTC).isoformat()},
                   })
    assert r.status_code == 202, r.text


def readiness(p: Pipeline) -> tuple[int, dict[str, Any]]:
    r = p.http.get("/readyz")
    return r.status_code, r.json()["checks"]


def ready(p: Pipeline) -> bool:
    status, checks = readiness(p)
    if status != 200:
        p.last_checks = checks  # type: ignore[attr-defined]
    return status == 200


def wait_ready(p: Pipeline, what: str) -> None:
    try:
        wait_until(lambda: ready(p), timeout=120, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; checks: {getattr(p, 'last_checks', None)}") from None


def gauge(p: Pipeline, name: str) -> float:
    for line in p.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_readyz_is_503_while_the_relay_is_stopped_with_events_to_publish(pipeline: Pipeline) -> None:
    post(pipeline, "m.1")
    wait_ready(pipeline, "ready")
    pipeline.kill("relay")
    post(pipeline, "m.2")

    wait_until(lambda: readiness(pipeline)[1]["relay_moving"] is False, timeout=60, what="relay reported stuck")
    assert gauge(pipeline, "inbox_relay_lag_events") >= 1
    assert gauge(pipeline, "inbox_relay_lag_seconds") > 0

    pipeline.start("relay")
    wait_ready(pipeline, "ready again")
    assert gauge(pipeline, "inbox_relay_lag_events") == 0


def test_readyz_is_503_while_no_worker_projects_a_non_empty_lag(pipeline: Pipeline) -> None:
    post(pipeline, "m.1")
    wait_ready(pipeline, "ready")
    pipeline.kill("worker")
    post(pipeline, "m.2")

    wait_until(lambda: readiness(pipeline)[1]["projections_moving"] is False, timeout=60,
               what="projections reported stuck")
    assert readiness(pipeline)[0] == 503
    assert gauge(pipeline, "inbox_projection_lag_events") >= 1

    pipeline.start("worker")
    wait_ready(pipeline, "ready again")
    wait_until(lambda: gauge(pipeline, "inbox_projection_lag_events") == 0, timeout=60, what="no projection lag")


def test_metrics_export_lag_dead_letters_and_the_ingest_queue(pipeline: Pipeline) -> None:
    post(pipeline, "m.1")
    wait_ready(pipeline, "ready")
    for name in ("inbox_relay_lag_events", "inbox_relay_lag_seconds", "inbox_projection_lag_events",
                 "inbox_projection_lag_seconds", "inbox_projection_dead_letters", "inbox_inbound_queue"):
        assert gauge(pipeline, name) >= 0
    assert gauge(pipeline, "inbox_write_path_up") == 1


def test_readyz_is_503_without_database_error_text_while_the_database_does_not_answer(pipeline: Pipeline) -> None:
    with psycopg.connect(conninfo(pipeline.settings)) as conn:
        conn.execute("LOCK TABLE worker_heartbeats IN ACCESS EXCLUSIVE MODE")
        try:
            r = httpx.get(f"{pipeline.base_url}/readyz", timeout=60)
        finally:
            conn.rollback()
    assert r.status_code == 503
    assert r.json()["checks"]["database"] is False
    assert "statement" not in r.text and "timeout" not in r.text
