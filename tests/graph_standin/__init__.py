"""Stand-in Graph API for tests (see README.md); import the `graph_standin` fixture from here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.graph_standin.server import GraphStandin, running_standin

__all__ = ["GraphStandin", "graph_standin"]


@pytest.fixture
def graph_standin() -> Iterator[GraphStandin]:
    yield from running_standin()
