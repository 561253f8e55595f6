"""`inbox replay` killed (SIGKILL) in the middle of its load, its two fold processes running: the
live read models are as they were, nothing of the replay stays behind (fold processes, shadow
schema, its lock), and the next replay rebuilds the same projections."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.dataset import build
from inbox.adapters.read_models.replay import REPLAY_LOCK
from inbox.bootstrap import replay
from inbox.config import Settings
from tests.integration.test_projections import all_events, apply, snapshot
from tests.support import counters_table, query, recount, wait_until

pytestmark = pytest.mark.integration

ROOMS, MESSAGES = 150, 1500

# The replay as `inbox replay` runs it, folding in two processes (a log this small would be folded
# in a thread), held at its first page's progress report, in the middle of the load: its
# transaction is open, the shadow tables hold a page, both fold processes are folding or blocked
# handing over their next page.
HELD_MID_LOAD = """
import asyncio, sys, time
from inbox.adapters.read_models.replay import REPLAY_LOCK
from inbox.bootstrap import replay
from inbox.config import Settings

def hold(done, total, rate):
    sys.__stdout__.write("loading\\n")
    sys.__stdout__.flush()
    time.sleep(3600)

asyncio.run(replay(Settings.from_env(), page_size=10, shares=2, progress=hold))
"""


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may be reaped late)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's first line of output, or what it wrote on stderr if none came in time."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line or not line[0]:
        proc.kill()
        raise AssertionError(f"the replay never reached its load: {proc.communicate(timeout=10)[1][-3000:]}")
    return line[0]


def test_a_replay_killed_mid_load_leaves_the_live_read_models_and_nothing_behind(
    db_settings: Settings,
) -> None:
    # ~1,800 events: each fold process has ~90 pages, ~300 KB to hand over, more than a pipe holds (64 KB).
    build(db_settings, ROOMS, MESSAGES)
    events = all_events(db_settings)
    apply(db_settings, [events[i:i + 500] for i in range(0, len(events), 500)])
    live = snapshot(db_settings)
    shadow = db_settings.db_schema + "__replay"

    proc = subprocess.Popen(
        [sys.executable, "-c", HELD_MID_LOAD], env={**os.environ, **db_settings.to_env()},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert first_line(proc, timeout=60) == "loading\n"
        folds = [pid for pid in children(proc.pid)
                 if "spawn_main" in (Path("/proc") / str(pid) / "cmdline").read_text(errors="replace")]
        assert [running(pid) for pid in folds] == [True, True]
        # Its session holds the schema's replay lock (a session of ours would get it otherwise).
        assert query(db_settings, "SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                     (REPLAY_LOCK, db_settings.db_schema)) == [(False,)]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for pipe in (proc.stdout, proc.stderr):  # not read to their end: a fold process left behind holds them
            if pipe:
                pipe.close()

    wait_until(lambda: not any(running(pid) for pid in folds), timeout=30, what="the fold processes to end")
    assert snapshot(db_settings) == live
    assert query(db_settings, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (shadow,))[0][0] == 0
    assert query(db_settings, "SELECT count(*) FROM room_changes WHERE kind = 'reset'")[0][0] == 0

    # The lock went with the killed process's session: the next replay runs, and rebuilds the same.
    wait_until(lambda: _replay_or_none(db_settings), timeout=30, what="a replay to be allowed again")
    assert snapshot(db_settings) == live
    assert counters_table(db_settings) == recount(db_settings)
    assert query(db_settings, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (shadow,))[0][0] == 0


def _replay_or_none(settings: Settings) -> bool:
    from inbox.config import ConfigError

    try:
        asyncio.run(replay(settings))
    except ConfigError:  # the killed session's lock is not released yet
        return False
    return True
