"""Fixtures shared by the integration tests: the composition root on a fresh schema, the API in
process over it (TestClient), the usual callers' headers, and the Inbox driven through HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from inbox.bootstrap import Container
from inbox.config import Settings
from inbox.entrypoints.api.app import create_api
from tests.integration.inbox_helpers import Inbox, running_inbox
from tests.support import auth


@pytest.fixture
def inbox(db_settings: Settings) -> Iterator[Inbox]:
    with running_inbox(db_settings) as i:
        yield i


@pytest.fixture
def container(db_settings: Settings) -> Iterator[Container]:
    """Every process's parts (use cases, stores, pools) on this test's schema; closed after the test."""
    c = Container.build(db_settings)
    yield c
    c.close()


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    """The HTTP API in process, over `container` (a server error is raised in the test)."""
    with TestClient(create_api(container)) as c:
        yield c


@pytest.fixture
def admin(db_settings: Settings) -> dict[str, str]:
    return auth(db_settings, role="admin", user="admin1")


@pytest.fixture
def integration(db_settings: Settings) -> dict[str, str]:
    return auth(db_settings, role="integration", user="meta-bridge")
