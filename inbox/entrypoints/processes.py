"""Child processes of the system (`python -m inbox.entrypoints.cli <role>`): start, watch, stop.

The one process supervisor: `inbox dev` runs relay, worker and API with it, and the end-to-end
tests (tests/support.py) and the benchmark (bench/procs.py) drive the same real processes
through it, with their own extras on top.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

STOP_GRACE_S = 10.0  # how long a process gets to stop after SIGTERM before it is killed


class Process:
    """One running role. With its own session, signals go to its whole process group."""

    def __init__(self, name: str, role: str, popen: subprocess.Popen[bytes], log_path: Path | None,
                 own_session: bool) -> None:
        self.name = name
        self.role = role
        self.popen = popen
        self.log_path = log_path
        self._own_session = own_session

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if not self.alive():
            return
        try:
            if self._own_session:
                os.killpg(self.popen.pid, sig)  # its own session: the group id is its pid
            else:
                self.popen.send_signal(sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> bool:
        """True when it exited within `timeout` seconds."""
        try:
            self.popen.wait(max(0.1, timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE_S) -> bool:
        """Send `sig`, wait up to `grace` seconds, then SIGKILL; True when it stopped by itself."""
        self.send(sig)
        if self.wait(grace):
            return True
        self.send(signal.SIGKILL)
        self.popen.wait(10)
        return False

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start(role: str, env: Mapping[str, str], *, name: str | None = None, log_path: Path | None = None,
          own_session: bool = True) -> Process:
    """Start `inbox <role>` with `env`; its output goes to `log_path` (appended) or this terminal."""
    out = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - the child holds it
    try:
        popen = subprocess.Popen(
            [sys.executable, "-m", "inbox.entrypoints.cli", role], env=dict(env),
            stdout=out, stderr=subprocess.STDOUT if out is not None else None, start_new_session=own_session,
        )
    finally:
        if out is not None:
            out.close()  # the child has its own descriptor
    return Process(name or role, role, popen, log_path, own_session)


class Processes:
    """A set of named child processes sharing one environment (and a log directory, if given)."""

    def __init__(self, env: Mapping[str, str], *, log_dir: Path | None = None, own_session: bool = True) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.own_session = own_session
        self.running: dict[str, Process] = {}

    def start(self, name: str, role: str | None = None, env: Mapping[str, str] | None = None) -> Process:
        log_path = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        proc = start(role or name, {**self.env, **(env or {})}, name=name, log_path=log_path,
                     own_session=self.own_session)
        self.running[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL, grace: float = STOP_GRACE_S) -> None:
        """Send `sig` to one process (SIGKILL after `grace` seconds) and forget it."""
        self.running.pop(name).stop(sig, grace)

    def stop_all(self, grace: float = STOP_GRACE_S) -> list[str]:
        """SIGTERM every process, SIGKILL what is left after `grace`; returns the names that had to be killed."""
        for proc in self.running.values():
            proc.send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        killed = []
        for name, proc in self.running.items():
            if not proc.wait(deadline - time.monotonic()):
                killed.append(name)
                proc.stop(signal.SIGKILL, 10)
        self.running.clear()
        return killed

    def first_dead(self) -> Process | None:
        return next((p for p in self.running.values() if not p.alive()), None)

    def pid(self, name: str) -> int | None:
        proc = self.running.get(name)
        return proc.pid if proc else None

    def log_tail(self, name: str, lines: int = 40) -> str:
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
