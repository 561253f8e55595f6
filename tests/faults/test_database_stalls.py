"""The ingest path under database faults: a long table lock, killed connections, a restarted server.

Every case: steady inbound load while the fault happens, then the sender's retries; a 202 is
recorded exactly once, a 503 is not recorded until retried, nothing else but 202/503 is answered
(a request without any answer is an unknown outcome: counted, then retried like a 503), every
message is recorded exactly once after the retries, and a canary comes out of the projections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from inbox.config import Settings
from inbox.adapters.postgres import conninfo
from inbox.adapters.embedded import EmbeddedPostgres
from tests.faults.conftest import INBOUND_TIMEOUT_S, fault_settings
from tests.faults.harness import own_postgres as harness_own_postgres
from tests.faults.harness import (
    Figures,
    Load,
    account,
    assert_retries_record_each_once,
    first_accepted_after,
    steady_load,
    store_message_ids,
    terminate_backends,
)
from tests.support import Pipeline

pytestmark = pytest.mark.faults

RATE = 30  # inbound requests a second


def assert_outcomes(p: Pipeline, load: Load, figures: Figures, fault_end: float, *, expect_503: bool = True) -> None:
    """The accounting every database case shares (see the module docstring)."""
    lost, duplicated = account(figures, load, p.settings)
    figures.recover_s = first_accepted_after(load, fault_end)
    answered = load.statuses()
    # Transport errors (no answer) are unknown outcomes: counted, printed, and retried below.
    statuses = {s for s in answered if isinstance(s, int)}
    assert statuses <= {202, 503}, f"only 202 or 503 may be answered: {answered}; api log:\n{p.log_tail('api')}"
    if expect_503:
        assert load.with_status(503), f"the fault should have been felt as 503s: {answered}"
    assert lost == [] and duplicated == []
    stored = store_message_ids(p.settings)
    assert [s.message_id for s in load.with_status(503) if stored[s.message_id]] == [], "a 503 was recorded"
    assert figures.recover_s is not None, f"no request was accepted after the fault: {answered}"

    assert_retries_record_each_once(p, load, figures)


def test_steady_load_without_a_fault_is_the_baseline(pipeline: Pipeline, figures: Callable[[str], Figures]) -> None:
    """The control case: the same load and accounting with nothing going wrong."""
    f = figures("0 no fault")
    load = asyncio.run(steady_load(pipeline, rate=RATE, seconds=3, tag="base"))
    assert_outcomes(pipeline, load, f, load.sent[0].at, expect_503=False)
    assert load.statuses() == {202: len(load.sent)}


def test_a_lock_on_the_events_table_longer_than_the_request_timeout(
    pipeline: Pipeline, figures: Callable[[str], Figures]
) -> None:
    f = figures("b lock table")
    hold_s = INBOUND_TIMEOUT_S * 2.5
    released: list[float] = []

    async def hold_lock() -> None:
        await asyncio.sleep(1.5)
        conn = await psycopg.AsyncConnection.connect(conninfo(pipeline.settings))
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE inbox_events IN ACCESS EXCLUSIVE MODE")
                await asyncio.sleep(hold_s)
            released.append(time.monotonic())
        finally:
            await conn.close()

    load = asyncio.run(steady_load(pipeline, rate=RATE, seconds=1.5 + hold_s + 3, tag="lock", fault=hold_lock))
    assert_outcomes(pipeline, load, f, released[0])


def test_terminated_database_connections_under_load(pipeline: Pipeline, figures: Callable[[str], Figures]) -> None:
    f = figures("c terminate backends")
    app_name = conninfo_to_dict(pipeline.settings.database_url or "")["application_name"]
    done: list[float] = []

    async def kill_connections() -> None:
        for _ in range(3):
            await asyncio.sleep(1.0)
            killed = await asyncio.to_thread(terminate_backends, pipeline.settings, str(app_name))
            assert killed > 0, "no application connection found to terminate"
        done.append(time.monotonic())

    load = asyncio.run(steady_load(pipeline, rate=RATE, seconds=6, tag="term", fault=kill_connections))
    assert_outcomes(pipeline, load, f, done[0], expect_503=False)


@pytest.fixture
def own_postgres(settings: Settings) -> Iterator[tuple[EmbeddedPostgres, Settings]]:
    """A PostgreSQL server of this test alone (restarting the shared one would break other sessions)."""
    with harness_own_postgres(settings, fault_settings) as pg_and_settings:
        yield pg_and_settings


def test_a_postgresql_restart_under_load(
    own_postgres: tuple[EmbeddedPostgres, Settings], figures: Callable[[str], Figures],
    pipeline_on: Callable[[Settings], Pipeline],
) -> None:
    f = figures("c restart postgresql")
    pg, own = own_postgres
    back: list[float] = []

    async def restart() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(pg.stop)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(pg.start)
        back.append(time.monotonic())

    p = pipeline_on(own)
    load = asyncio.run(steady_load(p, rate=RATE, seconds=8, tag="restart", fault=restart))
    assert_outcomes(p, load, f, back[0])
