"""The projection worker's Kafka consumer against the real (Tansu) broker: where it goes back to
when Faust drops records it fetched during a rebalance."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from inbox.config import Settings
from inbox.adapters.kafka.faust_transport import _ConsumerThread, seek_to_committed_or_reset
from inbox.adapters.kafka.projector import ProjectorRuntime, create_faust_app
from inbox.adapters.kafka.relay import ensure_topic

pytestmark = pytest.mark.integration

RECORDS = {0: 5, 1: 3}  # partition -> records on it


@asynccontextmanager
async def read_everything(settings: Settings) -> AsyncIterator[tuple[AIOKafkaConsumer, list[TopicPartition]]]:
    """A topic with RECORDS, and a consumer of a fresh group that has read all of it and committed nothing."""
    topic = f"{settings.topic_prefix}seek.{uuid.uuid4().hex[:6]}"
    await ensure_topic(settings.kafka_bootstrap or "", topic, len(RECORDS))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for partition, n in RECORDS.items():
            for i in range(n):
                await producer.send_and_wait(topic, f"{partition}-{i}".encode(), partition=partition)
    finally:
        await producer.stop()
    tps = [TopicPartition(topic, p) for p in RECORDS]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=f"{topic}-group",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(tps)
        assert await read(consumer, sum(RECORDS.values())) == {
            p: list(range(n)) for p, n in RECORDS.items()}
        yield consumer, tps
    finally:
        await consumer.stop()


async def read(consumer: AIOKafkaConsumer, n: int, timeout: float = 20) -> dict[int, list[int]]:
    """Offsets of the next `n` records, by partition."""
    out: dict[int, list[int]] = {}
    deadline = time.monotonic() + timeout
    while sum(map(len, out.values())) < n:
        assert time.monotonic() < deadline, f"read {out}, expected {n} records"
        for tp, records in (await consumer.getmany(timeout_ms=200)).items():
            out.setdefault(tp.partition, []).extend(r.offset for r in records)
    return out


def test_a_partition_without_a_committed_offset_goes_back_to_the_beginning(settings: Settings) -> None:
    """Faust drops what it fetched while its flow was stopped and seeks back to the committed
    offsets to read it again; a partition the group never committed must be read again from the
    beginning (auto_offset_reset=earliest), not left after the records just dropped."""

    async def run() -> None:
        async with read_everything(settings) as (consumer, (p0, p1)):
            await consumer.commit({p1: 1})
            assert await seek_to_committed_or_reset(consumer, "earliest") == {p0: None, p1: 1}
            assert await read(consumer, RECORDS[0] + RECORDS[1] - 1) == {0: [0, 1, 2, 3, 4], 1: [1, 2]}

            # Without it (aiokafka's own seek): the uncommitted partition stays at its end.
            await consumer.commit({p1: 2})
            await consumer.seek_to_committed()
            assert await read(consumer, 1) == {1: [2]}
            assert await consumer.position(p0) == RECORDS[0]

    asyncio.run(run())


def test_with_auto_offset_reset_latest_a_partition_without_a_committed_offset_goes_to_its_end(
    settings: Settings,
) -> None:
    async def run() -> None:
        async with read_everything(settings) as (consumer, (p0, p1)):
            consumer.seek(p0, 2)
            consumer.seek(p1, 0)
            assert await seek_to_committed_or_reset(consumer, "latest") == {p0: None, p1: None}
            assert [await consumer.position(tp) for tp in (p0, p1)] == [RECORDS[0], RECORDS[1]]

    asyncio.run(run())


def test_the_worker_consumer_seeks_back_with_it(settings: Settings, tmp_path: Path) -> None:
    """The projection worker's Faust consumer uses the seek above (Faust calls
    `seek_to_committed` on its consumer thread after dropping records)."""
    settings = replace(settings, data_dir=tmp_path)
    runtime = ProjectorRuntime(settings, "w", open_pool=None, open_event_log=None)  # type: ignore[arg-type]
    app = create_faust_app(settings, runtime)
    thread = app.consumer._thread  # type: ignore[attr-defined]
    assert isinstance(thread, _ConsumerThread)
    assert app.conf.consumer_auto_offset_reset == "earliest"
