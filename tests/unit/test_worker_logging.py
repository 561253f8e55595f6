"""The projection worker logs at the level it is given: Faust's terminal spinner does not turn the
root logger to DEBUG (which made every library's debug call build a record nobody printed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Builds the worker as `inbox worker` does and sets up its logging as the worker does when it
# starts (nothing connects: the app is only built). In a child process: logging is global.
PROBE = """
import logging
import sys
from dataclasses import replace
from pathlib import Path
from inbox.config import Settings
from inbox.adapters.kafka.projector import ProjectorRuntime, build_worker, create_faust_app

settings = Settings.from_env()
settings = replace(settings, kafka_bootstrap="127.0.0.1:9", data_dir=Path(sys.argv[2]))
runtime = ProjectorRuntime(settings, "probe", open_pool=None, open_event_log=None)
worker = build_worker(create_faust_app(settings, runtime), loglevel=sys.argv[1])
worker._setup_logging()
answer = (logging.getLevelName(logging.getLogger().getEffectiveLevel()),
          logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG))
sys.__stdout__.write(" ".join(map(str, answer)))  # the worker redirects sys.stdout into its logs
"""


@pytest.mark.parametrize("level", ["warning", "info"])
def test_the_worker_logs_at_its_level_and_builds_no_debug_records(level: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, level, str(tmp_path)], check=False, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [level.upper(), "False"]
