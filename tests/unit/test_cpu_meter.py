"""The bench's CPU accounting (bench/procs.py `CpuMeter`) counts a process that ends inside the
window for its group, not as CPU of processes outside the benchmark: PostgreSQL backends of
connections closed during a phase made the bench call its own figures disturbed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.procs import CpuMeter

pytest.importorskip("psutil")

# Burns `before` CPU seconds, says "ready", waits for a line, burns `after`, and ends.
BURNER = """
import sys, time
def burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass
burn(float(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
burn(float(sys.argv[2]))
"""

# Runs the burner, passes "ready" and "go" through, waits for the burner (reaping it), says "done",
# and lives on until its stdin closes.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
child.stdout.readline()
print("ready", flush=True)
sys.stdin.readline()
child.stdin.write(b"go\\n")
child.stdin.flush()
child.wait()
print("done", flush=True)
sys.stdin.readline()
"""


def test_a_child_that_ends_inside_the_window_counts_for_its_group_with_only_the_cpu_it_used_then() -> None:
    before, after = 0.6, 0.4
    parent = subprocess.Popen([sys.executable, "-c", PARENT, BURNER, str(before), str(after)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert parent.stdin is not None and parent.stdout is not None
    try:
        assert parent.stdout.readline() == b"ready\n"  # the burner used `before` already
        meter = CpuMeter(lambda: {"parent": [parent.pid]})
        meter.start()
        parent.stdin.write(b"go\n")
        parent.stdin.flush()
        assert parent.stdout.readline() == b"done\n"  # the burner used `after` and ended
        usage = meter.stop()
    finally:
        parent.stdin.close()
        parent.wait(timeout=30)

    assert usage is not None
    # The burner's `after`, plus a little of the parent's own; not its `before`.
    assert after <= usage.by_group["parent"] < after + 0.5 * before
