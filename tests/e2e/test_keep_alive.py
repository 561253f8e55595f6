"""An idle keep-alive connection stays open for INBOX_HTTP_KEEP_ALIVE_S (75 s by default), not
uvicorn's 5 s: a proxy in front (AWS ALB, nginx: 60 s idle) reuses its connections, and a server
that closes one the proxy is reusing at that moment drops that request (real `inbox api` process)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from inbox.config import Settings
from tests.support import Pipeline, http_settings

pytestmark = pytest.mark.e2e

UVICORN_DEFAULT_S = 5


@pytest.fixture
def api(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    p = Pipeline(replace(http_settings(settings), http_keep_alive_s=request.param), tmp_path)
    p.start("api")
    try:
        p.wait_for_api()
        yield p
    finally:
        p.stop_all()


def healthz(conn: socket.socket) -> bytes:
    """One GET /healthz on the open connection; the answer's bytes (b"" when the server closed it)."""
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: inbox\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


@pytest.mark.parametrize("api", [75], indirect=True)
def test_a_connection_idle_longer_than_uvicorns_default_still_takes_requests(api: Pipeline) -> None:
    with socket.create_connection(("127.0.0.1", api.settings.http_port), timeout=10) as conn:
        assert healthz(conn).startswith(b"HTTP/1.1 200")
        time.sleep(UVICORN_DEFAULT_S + 1.5)  # idle: what is under test is the time itself

        assert healthz(conn).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("api", [1], indirect=True)
def test_the_server_closes_a_connection_idle_past_its_keep_alive(api: Pipeline) -> None:
    with socket.create_connection(("127.0.0.1", api.settings.http_port), timeout=10) as conn:
        assert healthz(conn).startswith(b"HTTP/1.1 200")
        started = time.monotonic()

        assert conn.recv(1) == b""  # the server's close, well before the socket's 10 s timeout

        assert time.monotonic() - started < UVICORN_DEFAULT_S
