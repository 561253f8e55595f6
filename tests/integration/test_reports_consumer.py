"""The reports consumer (`inbox reports`) against a broker of its own that goes away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from inbox.adapters.embedded import EmbeddedBroker
from inbox.adapters.kafka import reports
from inbox.adapters.kafka.reports import ReportsConsumer
from inbox.adapters.kafka.relay import ensure_topic
from inbox.config import Settings
from tests.support import free_test_port, query

pytestmark = pytest.mark.integration


def beats(settings: Settings, worker_id: str) -> float:
    """Seconds since the epoch of the consumer's last heartbeat (0 before the first)."""
    rows = query(settings, "SELECT extract(epoch FROM beat_at) FROM worker_heartbeats WHERE worker_id = %s",
                 (worker_id,))
    return float(rows[0][0]) if rows else 0.0


def test_the_reports_consumer_keeps_running_while_the_broker_is_down(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its partition check runs while the broker is away (restarting) and fails: the consumer goes
    on (heartbeats included) and checks again, it does not exit."""
    monkeypatch.setattr(reports, "PARTITION_CHECK_S", 0.2)
    monkeypatch.setattr(reports, "PARTITION_RETRY_S", 0.2)
    broker = EmbeddedBroker(port=free_test_port(), log_path=tmp_path / "tansu.log").start()
    own = replace(settings, kafka_bootstrap=broker.bootstrap)

    async def run() -> None:
        await ensure_topic(broker.bootstrap, own.events_topic, own.topic_partitions)
        stop = asyncio.Event()
        consumer = ReportsConsumer(own, worker_id="reports-broker-down")
        task = asyncio.create_task(consumer.run(stop))
        try:
            await until(lambda: beats(own, consumer.worker_id) > 0, task, "a first heartbeat")
            await asyncio.to_thread(broker.stop)
            down = time.time()
            # Two heartbeats (2 s apart) after the broker went: about twenty failed checks between them.
            await until(lambda: beats(own, consumer.worker_id) > down + reports.HEARTBEAT_S, task,
                        "two heartbeats with the broker down")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)

    try:
        asyncio.run(run())
    finally:
        broker.stop()


async def until(check: Callable[[], bool], task: asyncio.Task[None], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert not task.done(), f"the consumer exited waiting for {what}: {task.exception()!r}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
