"""Schemathesis against the real API's /openapi.json with an admin token: no response is a 5xx.

The schema has no OpenAPI links; the stateful phase runs on the links Schemathesis infers (ids in
responses, Location headers). The run is bounded (examples per operation and a time budget).
Afterwards a canary message must still come out of the projections.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.harness import Figures, canary
from tests.support import Pipeline, token

pytestmark = pytest.mark.faults

MAX_EXAMPLES = 15
MAX_TIME_S = 40


def test_schemathesis_finds_no_server_error_and_the_canary_still_flows(
    pipeline: Pipeline, tmp_path: Path, figures: Callable[[str], Figures]
) -> None:
    f = figures("f schemathesis")
    har = tmp_path / "schemathesis.har"
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{pipeline.base_url}/openapi.json",
         "--header", f"Authorization: Bearer {token(pipeline.settings)}",
         # An endless event stream is no request/response to fuzz (tests/e2e/test_stream.py covers it).
         "--exclude-path", "/v1/stream",
         "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing,stateful",
         "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_TIME_S), "--seed", "7", "--workers", "1",
         # /readyz answers 503 by contract while a loop is behind (the fuzzing load makes it so);
         # every other operation must never answer 5xx.
         "--exclude-path", "/readyz",
         "--request-timeout", "30", "--no-shrink", "--report", "har", "--report-har-path", str(har)],
        capture_output=True, text=True, timeout=MAX_TIME_S * 3,
    )
    (tmp_path / "schemathesis.out").write_text(run.stdout + run.stderr)
    assert har.exists(), f"schemathesis wrote no report:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    statuses = Counter(e["response"]["status"] for e in json.loads(har.read_text())["log"]["entries"])
    f.requests = sum(statuses.values())
    f.accepted = sum(n for s, n in statuses.items() if 200 <= s < 300)
    f.other = Counter({s: n for s, n in statuses.items() if not 200 <= s < 300})
    server_errors = {s: n for s, n in statuses.items() if s >= 500 or s == 0}
    assert server_errors == {}, f"schemathesis output:\n{run.stdout[-6000:]}\napi log:\n{pipeline.log_tail('api', 20)}"
    assert f.requests > 0
    f.recover_s = canary(pipeline)
