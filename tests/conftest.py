"""Session-wide real parts: one PostgreSQL and one broker; each test gets its own schema and topic prefix.

PostgreSQL: INBOX_TEST_DATABASE_URL or INBOX_DATABASE_URL when set (CI: the machine's server),
otherwise an embedded PostgreSQL in a temporary directory (under pytest-xdist, one for the whole
run, started by the controller). Broker: INBOX_KAFKA_BOOTSTRAP when
set, otherwise a Tansu broker started for the session. Tests marked `scale` run only with
INBOX_TEST_SCALE=1.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from inbox.config import DEV_JWT_SECRET, DEV_META_APP_SECRET, DEV_META_VERIFY_TOKEN, Settings
from inbox.adapters.schema import migrate
from tests.faults.harness import FIGURES_PROPERTY
from inbox.adapters.secrets import generate_key


# Lines the fault cases report (tests/faults), collected in this process — the controller's under
# pytest-xdist — and printed at session end.
_fault_figures: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _fault_figures.extend(value for name, value in report.user_properties if name == FIGURES_PROPERTY)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _fault_figures:
        terminalreporter.section("fault figures")
        for line in _fault_figures:
            terminalreporter.write_line(line)


# Tests that run real processes for many seconds (most of the suite's wall time).
_LONG = ("tests/e2e/", "tests/faults/", "tests/web/", "tests/integration/test_consumer_example.py",
         "tests/integration/test_counters_property.py", "tests/integration/test_relay.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scale tests take minutes on embedded PostgreSQL: opt in with INBOX_TEST_SCALE=1 (`.ci/run` does).

    Under pytest-xdist (`worksteal` hands each worker a contiguous share of this list), the long
    tests are dealt out first, one share to each worker, and the short ones follow: a long test
    starting last would otherwise keep the whole run waiting on one worker.
    """
    if os.environ.get("INBOX_TEST_SCALE") != "1":
        skip = pytest.mark.skip(reason="scale test: set INBOX_TEST_SCALE=1 to run it")
        for item in items:
            if "scale" in item.keywords:
                item.add_marker(skip)
    workers = config.getoption("numprocesses", None) if config.pluginmanager.has_plugin("xdist") else None
    if not isinstance(workers, int) or workers < 2:
        return
    root = str(config.rootpath) + "/"
    long = [i for i in items if str(i.path).removeprefix(root).startswith(_LONG)]
    short = [i for i in items if not str(i.path).removeprefix(root).startswith(_LONG)]
    share = -(-len(short) // workers)
    items[:] = [i for k in range(workers) for i in long[k::workers] + short[k * share:(k + 1) * share]]


def _xdist_controller(config: pytest.Config) -> bool:
    if not config.pluginmanager.has_plugin("xdist") or hasattr(config, "workerinput"):
        return False
    workers = config.getoption("numprocesses", None)
    return bool(workers) and workers != "0"


_SHARED_PG = pytest.StashKey[Any]()


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist without a given server: one embedded PostgreSQL for the whole run, started by
    the controller before the workers (they inherit its URL), instead of one initdb per worker."""
    if not _xdist_controller(config) or os.environ.get("INBOX_TEST_DATABASE_URL") or os.environ.get("INBOX_DATABASE_URL"):
        return
    from inbox.adapters.embedded import EmbeddedPostgres

    base = Path(tempfile.mkdtemp(prefix="inbox-test-pg-"))
    pg = EmbeddedPostgres(base / "data").start()
    # Every worker's processes connect to it at once (its default is 100 connections).
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_connections = 600")
    pg.stop()
    pg.start()
    config.stash[_SHARED_PG] = (pg, base)
    os.environ["INBOX_TEST_DATABASE_URL"] = pg.url


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = config.stash.get(_SHARED_PG, None)
    if shared is not None:
        pg, base = shared
        os.environ.pop("INBOX_TEST_DATABASE_URL", None)
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("INBOX_TEST_DATABASE_URL") or os.environ.get("INBOX_DATABASE_URL")
    if url:
        yield url
        return
    from inbox.adapters.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")) / "data").start()
    try:
        yield pg.url
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("INBOX_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    from inbox.adapters.embedded import EmbeddedBroker

    broker = EmbeddedBroker(log_path=Path(tmp_path_factory.mktemp("broker")) / "tansu.log").start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def _drop_schema(database_url: str, schema: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def db_settings(database_url: str) -> Iterator[Settings]:
    """Settings for a fresh, migrated schema of this test alone (no broker)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    settings = Settings(
        database_url=database_url,
        db_schema=name,
        topic_prefix=f"{name}.",
        jwt_secret=DEV_JWT_SECRET,
        meta_app_secret=DEV_META_APP_SECRET,
        meta_verify_token=DEV_META_VERIFY_TOKEN,
        db_pool_size=8,
        worker_group=f"{name}-projections",
        # The least a Kafka broker accepts by default (10 s in production). A worker's group join
        # waits at the Tansu broker for about half of it, and a killed worker's partitions move
        # after all of it: every worker start and kill in the tests is seconds shorter.
        worker_session_timeout_s=6.0,
        secret_key=generate_key(),  # seals channel-account secrets (as `inbox dev` makes one)
    )
    migrate(settings)
    yield settings
    _drop_schema(database_url, name)


@pytest.fixture
def settings(db_settings: Settings, kafka_bootstrap: str) -> Settings:
    """Settings with the session broker; topics are isolated by this test's prefix."""
    return replace(db_settings, kafka_bootstrap=kafka_bootstrap)
