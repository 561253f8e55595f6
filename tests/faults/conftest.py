"""Fault injection on real processes (issue 7, item 8): fixtures, and the figures printed at session end.

Each case records a `Figures` line through the `figures` fixture; `pytest_terminal_summary` prints
them all in a "fault figures" section, so CI logs show them without `-s`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from inbox.config import Settings
from inbox.adapters.embedded import free_port
from inbox.adapters.secrets import generate_key
from tests.faults.harness import Figures, register_account
from tests.graph_standin.server import GraphStandin
from tests.support import Pipeline

FIGURES = pytest.StashKey[list[Figures]]()

# Short enough that a held lock outlasts it within a few seconds of test time.
INBOUND_TIMEOUT_S = 2.0


def pytest_configure(config: pytest.Config) -> None:
    config.stash[FIGURES] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("fault figures")
        for f in figures:
            terminalreporter.write_line(f.line())


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], Figures]:
    """figures(case) -> a Figures that is printed at session end, filled in or not."""

    def make(case: str) -> Figures:
        f = Figures(case)
        request.config.stash[FIGURES].append(f)
        return f

    return make


def fault_settings(settings: Settings) -> Settings:
    """A free HTTP port, a short inbound timeout, and an application_name naming this test's connections."""
    params = conninfo_to_dict(settings.database_url or "")
    url = make_conninfo(**{**params, "application_name": f"inbox-{settings.db_schema}"})
    return replace(settings, http_port=free_port(), inbound_timeout_s=INBOUND_TIMEOUT_S, database_url=url)


def start_pipeline(p: Pipeline) -> Pipeline:
    """worker, relay and api processes; returns once the API answers and the test account exists."""
    p.start("worker")
    p.start("relay")
    p.start("api")
    p.wait_for_api()
    register_account(p)
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
