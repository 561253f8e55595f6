"""Fixtures shared by the integration tests that drive the Inbox through its HTTP API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inbox.config import Settings
from tests.integration.inbox_helpers import Inbox, running_inbox


@pytest.fixture
def inbox(db_settings: Settings) -> Iterator[Inbox]:
    with running_inbox(db_settings) as i:
        yield i
