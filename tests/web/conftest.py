"""Fixtures of the web UI tests: the in-process Inbox of the integration tests."""

from __future__ import annotations

from tests.integration.conftest import inbox  # noqa: F401  (the same fixture, shared)
