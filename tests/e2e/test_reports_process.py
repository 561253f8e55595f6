"""`inbox reports` as a real process on the real broker: built from the topic alone, exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from psycopg import sql

from inbox.bootstrap import replay
from inbox.bootstrap import Container
from inbox.config import Settings
from tests.integration.history_helpers import ADMIN1, write_inbound, write_story
from tests.support import Pipeline, query, store_totals, wait_until

pytestmark = pytest.mark.e2e

TABLES = ("report_cycles", "report_counts", "report_backlog")


def report_totals(settings: Settings) -> tuple[int, int]:
    rows = query(settings, "SELECT count(*), coalesce(sum(version), 0) FROM report_rooms")
    return int(rows[0][0]), int(rows[0][1])


def tables(settings: Settings) -> tuple[list[tuple[object, ...]], ...]:
    return tuple(query(settings, f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4") for t in TABLES)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(settings, tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture
def rebuilt(settings: Settings) -> Iterator[Settings]:
    """A schema for the same reports rebuilt from the event store by `inbox replay --into`."""
    name = f"rep_{uuid.uuid4().hex[:8]}"
    yield replace(settings, db_schema=name)
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


async def publish_garbage(settings: Settings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(settings.events_topic, b"not an event", key=b"x", partition=0)
    finally:
        await producer.stop()


def test_reports_process_builds_the_reports_from_the_topic_exactly_once_across_a_crash(
    settings: Settings, pipeline: Pipeline, rebuilt: Settings
) -> None:
    container = Container.build(settings)
    try:
        write_story(container)
        account = container.accounts.register(ADMIN1, channel="whatsapp_cloud", external_id="pn-rep", name="R")
        pipeline.start("relay")
        pipeline.start("reports")
        wait_until(lambda: report_totals(settings) == store_totals(settings), timeout=120, interval=0.25,
                   what=f"reports to reach the store; log:\n{pipeline.log_tail('reports')}")
        asyncio.run(publish_garbage(settings))
        wait_until(lambda: query(settings, "SELECT count(*) FROM report_dead_letters")[0][0] == 1, timeout=60,
                   what="the unreadable message to be dead-lettered")
        before = report_totals(settings)
        write_inbound(container, account, 300, contacts=30, tag="crash")
        wait_until(lambda: report_totals(settings) != before, timeout=60, what="the reports to take new events")
        pipeline.kill("reports")  # SIGKILL, possibly mid-batch
        write_inbound(container, account, 200, contacts=30, tag="after")
        pipeline.start("reports")
        wait_until(lambda: report_totals(settings) == store_totals(settings), timeout=120, interval=0.25,
                   what=f"reports to catch up after the crash; log:\n{pipeline.log_tail('reports')}")
    finally:
        container.close()
    asyncio.run(replay(settings, into=rebuilt.db_schema))
    assert tables(settings) == tables(rebuilt)  # the topic's reports == a recount from the event store
    assert query(settings, "SELECT sum(messages_in) FROM report_counts")[0][0] == 7 + 500
