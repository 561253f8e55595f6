"""Processes and the broker dying under load: kill -9 of the API, a broker restart under a running relay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from inbox.config import Settings
from inbox.adapters.embedded import EmbeddedBroker
from tests.faults.conftest import fault_settings
from tests.faults.harness import (
    Figures,
    account,
    assert_every_accepted_is_projected_once,
    assert_retries_record_each_once,
    canary,
    first_accepted_after,
    steady_load,
)
from tests.support import Pipeline, free_test_port, query, wait_until

pytestmark = pytest.mark.faults

RATE = 30


def test_kill_9_of_the_api_mid_load_loses_no_accepted_message(
    pipeline: Pipeline, figures: Callable[[str], Figures]
) -> None:
    f = figures("d kill -9 api")
    back: list[float] = []

    async def kill_api() -> None:
        await asyncio.sleep(2.0)
        pipeline.kill("api")  # SIGKILL: no shutdown, in-flight requests get no answer
        pipeline.start("api")
        await asyncio.to_thread(pipeline.wait_for_api)
        back.append(time.monotonic())

    load = asyncio.run(steady_load(pipeline, rate=RATE, seconds=8, tag="kill", fault=kill_api))
    lost, duplicated = account(f, load, pipeline.settings)
    f.recover_s = first_accepted_after(load, back[0])
    server_errors = {k: v for k, v in load.statuses().items() if isinstance(k, int) and k >= 500 and k != 503}
    assert server_errors == {}, f"api log:\n{pipeline.log_tail('api')}"
    assert lost == [] and duplicated == []

    # The in-flight ones (no answer): recorded or not, a retry records them once.
    assert_retries_record_each_once(pipeline, load, f)


@pytest.fixture
def own_broker(settings: Settings, tmp_path: Path) -> Iterator[tuple[EmbeddedBroker, Settings]]:
    """A broker of this test alone, on a fixed port it can be restarted on."""
    broker = EmbeddedBroker(port=free_test_port(), log_path=tmp_path / "tansu.log").start()
    try:
        yield broker, fault_settings(replace(settings, kafka_bootstrap=broker.bootstrap))
    finally:
        broker.stop()


def test_a_broker_restart_under_a_running_relay_leaves_projections_complete(
    own_broker: tuple[EmbeddedBroker, Settings], figures: Callable[[str], Figures],
    pipeline_on: Callable[[Settings], Pipeline],
) -> None:
    f = figures("e restart broker")
    broker, own = own_broker
    back: list[float] = []

    def published() -> int:
        return int(query(p.settings, "SELECT coalesce(max(notification_id), 0) FROM relay_position")[0][0])

    async def restart_broker() -> None:
        # The worker is down while the broker loses its memory, and at least 20 events were
        # published after it died: they exist nowhere but in the event store, so the relay has to
        # notice the lost topic data and re-publish.
        await asyncio.sleep(1.0)
        p.kill("worker")
        seen_by_worker = int(query(p.settings, "SELECT coalesce(max(notification_id), 0) FROM inbox_events")[0][0])
        await asyncio.to_thread(wait_until, lambda: published() >= seen_by_worker + 20, timeout=30,
                                what="the relay to publish 20 events the worker never saw")
        await asyncio.to_thread(broker.stop)  # memory only: the topic's data is gone
        await asyncio.to_thread(broker.start)
        back.append(time.monotonic())
        p.start("worker")

    p = pipeline_on(own)
    load = asyncio.run(steady_load(p, rate=RATE, seconds=8, tag="broker", fault=restart_broker))
    lost, duplicated = account(f, load, p.settings)
    assert load.statuses() == {202: len(load.sent)}, "the API does not depend on the broker"
    assert lost == [] and duplicated == []
    started = time.monotonic()
    assert_every_accepted_is_projected_once(p, load, timeout=60)
    f.recover_s = time.monotonic() - started
    p.wait_until_projected(timeout=30)
    canary(p)
