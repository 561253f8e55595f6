"""Fault injection on real processes (issue 7, item 8): fixtures, and the figures printed at session end.

Each case records a `Figures` line through the `figures` fixture; the line travels with the test's
teardown report (`user_properties`, so it also reaches the controller when pytest-xdist runs the
case in a worker) and tests/conftest.py prints them all in a "fault figures" section at session
end, so CI logs show them without `-s`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from inbox.config import Settings
from inbox.adapters.secrets import generate_key
from tests.faults.harness import FIGURES_PROPERTY, Figures, register_account
from tests.graph_standin.server import GraphStandin
from tests.support import Pipeline, free_test_port

# Short enough that a held lock outlasts it within a few seconds of test time.
INBOUND_TIMEOUT_S = 2.0


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Figures]]:
    """figures(case) -> a Figures that is printed at session end, filled in or not."""
    made: list[Figures] = []

    def make(case: str) -> Figures:
        f = Figures(case)
        made.append(f)
        return f

    yield make
    for f in made:
        request.node.user_properties.append((FIGURES_PROPERTY, f.line()))


def fault_settings(settings: Settings) -> Settings:
    """A free HTTP port, a short inbound timeout, and an application_name naming this test's connections."""
    params = conninfo_to_dict(settings.database_url or "")
    url = make_conninfo(**{**params, "application_name": f"inbox-{settings.db_schema}"})
    return replace(settings, http_port=free_test_port(), inbound_timeout_s=INBOUND_TIMEOUT_S, database_url=url)


def start_pipeline(p: Pipeline) -> Pipeline:
    """worker, relay and api processes; returns once the API answers and the test account exists.
    Stopped again when they do not come up, so a failed start leaves nothing running."""
    try:
        p.start("worker")
        p.start("relay")
        p.start("api")
        p.wait_for_api()
        register_account(p)
    except BaseException:
        p.stop_all()
        raise
    return p


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    # Channel-account tokens are checked with the Graph API: the stand-in answers (no token is granted).
    with GraphStandin() as graph:
        p = Pipeline(replace(fault_settings(settings), meta_graph_url=graph.url, secret_key=generate_key()), tmp_path)
        try:
            yield start_pipeline(p)
        finally:
            p.stop_all()


@pytest.fixture
def pipeline_on(tmp_path: Path) -> Iterator[Callable[[Settings], Pipeline]]:
    """pipeline_on(settings) -> a pipeline of those settings (a server of the test's own), started as
    `start_pipeline` does; its processes are stopped when the test ends."""
    started: list[Pipeline] = []

    def start(settings: Settings) -> Pipeline:
        p = Pipeline(settings, tmp_path)
        started.append(p)
        return start_pipeline(p)

    yield start
    for p in started:
        p.stop_all()
