"""The relay against the real PostgreSQL and the real (Tansu) broker."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from domain.channels import Channel
from domain.staff import Actor, Role
from inbox.config import Settings
from inbox.bootstrap import Container
from inbox.usecases.channel_accounts import AccountInfo
from inbox.usecases.ingest import InboundMessage
from inbox.adapters.wire import event_id
from inbox import bootstrap
from inbox.adapters.kafka.relay import Relay
from tests.support import execute, query, read_topic_async

pytestmark = pytest.mark.integration

ADMIN = Actor("admin1", "org1", Role.ADMIN)
ENVELOPE = {"id", "type", "schema_version", "org_id", "room_id", "version", "occurred_at", "data"}


@asynccontextmanager
async def running_relay(settings: Settings) -> AsyncIterator[Relay]:
    with bootstrap.relay(settings) as relay:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(relay.run(stop, ready))
        await asyncio.wait_for(ready.wait(), 30)
        try:
            yield relay
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


async def caught_up(relay: Relay, settings: Settings, timeout: float = 20) -> None:
    target = query(settings, "SELECT coalesce(max(notification_id), 0) FROM inbox_events")[0][0]
    deadline = time.monotonic() + timeout
    while relay.position < target:
        assert time.monotonic() < deadline, f"relay stuck at {relay.position} < {target}"
        await asyncio.sleep(0.02)


def inbound(account: AccountInfo, contact: str, mid: str) -> InboundMessage:
    return InboundMessage(
        channel=Channel.WHATSAPP_CLOUD, channel_account=account.external_id, contact_id=contact,
        channel_message_id=mid, text=f"text {mid}", sent_at=datetime.now(UTC),
    )


@pytest.fixture
def container(settings: Settings):  # type: ignore[no-untyped-def]
    c = Container.build(settings)
    yield c
    c.close()


def test_every_room_event_is_published_in_order_with_the_contract_fields(settings: Settings, container: Container) -> None:
    account = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA")
    for i in range(60):
        result = container.inbound.submit(account, inbound(account, f"c{i % 6}", f"m{i}"))
    container.rooms.resolve(Actor("spv", "org1", Role.SUPERVISOR), result.room_id)

    async def scenario() -> list[tuple[bytes, dict[str, Any]]]:
        async with running_relay(settings) as relay:
            await caught_up(relay, settings)
        return await read_topic_async(settings, 60 + 6 + 1)

    records = asyncio.run(scenario())

    assert len(records) == 67  # channel-account events are not room events and stay off the topic
    per_room: dict[str, list[int]] = defaultdict(list)
    for key, event in records:
        assert set(event) == ENVELOPE
        assert key.decode() == event["room_id"]
        assert event["id"] == event_id(event["room_id"], event["version"])
        assert event["org_id"] == "org1" and event["schema_version"] == 1
        per_room[event["room_id"]].append(event["version"])
    assert all(versions == list(range(1, len(versions) + 1)) for versions in per_room.values())
    assert {e["type"] for _, e in records} == {"RoomOpened", "MessageReceived", "RoomResolved"}


def test_events_committed_while_the_relay_runs_are_published(settings: Settings, container: Container) -> None:
    """The relay wakes on NOTIFY (a 1 s poll is the fallback); how fast is measured in bench/."""
    account = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA")

    async def scenario() -> None:
        async with running_relay(settings) as relay:
            for i in range(5):
                await asyncio.to_thread(container.inbound.submit, account, inbound(account, "c1", f"m{i}"))
                await caught_up(relay, settings)

    asyncio.run(scenario())
    records = asyncio.run(read_topic_async(settings, 6))
    assert sorted(e["version"] for _, e in records) == list(range(1, 7))  # RoomOpened + five messages


def test_a_restarted_relay_resumes_from_its_recorded_position(settings: Settings, container: Container) -> None:
    account = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA")
    for i in range(10):
        container.inbound.submit(account, inbound(account, "c1", f"first-{i}"))

    async def scenario() -> tuple[int, int]:
        async with running_relay(settings) as relay:
            await caught_up(relay, settings)
        first_position = relay.position
        for i in range(10):
            await asyncio.to_thread(container.inbound.submit, account, inbound(account, "c1", f"second-{i}"))
        async with running_relay(settings) as again:
            await caught_up(again, settings)
        return first_position, again.published

    first_position, republished = asyncio.run(scenario())
    assert query(settings, "SELECT notification_id FROM relay_position")[0][0] > first_position
    assert republished == 10  # only what came after the recorded position
    records = asyncio.run(read_topic_async(settings, 21))
    assert sorted(e["version"] for _, e in records) == list(range(1, 22))


def test_a_fresh_broker_gets_every_event_again(settings: Settings, container: Container) -> None:
    """The embedded broker is memory-only: a restarted one has no topic, so the relay starts over."""
    account = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA")
    for i in range(8):
        container.inbound.submit(account, inbound(account, f"c{i % 2}", f"m{i}"))

    async def publish(s: Settings) -> int:
        async with running_relay(s) as relay:
            await caught_up(relay, s)
        return relay.published

    assert asyncio.run(publish(settings)) == 10
    # Same database, but the topic the relay finds is brand new (as after a broker restart).
    fresh = replace(settings, topic_prefix=settings.topic_prefix + "restarted.")
    assert asyncio.run(publish(fresh)) == 10
    assert len(asyncio.run(read_topic_async(fresh, 10))) == 10


# ---- one event never stops the relay; a broker that lost its data gets everything again -------
async def caught_up_to_store(relay: Relay, settings: Settings, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while relay.position < query(settings, "SELECT coalesce(max(notification_id), 0) FROM inbox_events")[0][0]:
        assert time.monotonic() < deadline, f"relay stuck at {relay.position}"
        await asyncio.sleep(0.05)


def test_an_event_the_broker_refuses_is_dead_lettered_and_the_relay_goes_on(
    settings: Settings, container: Container,
) -> None:
    account = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA")
    container.inbound.submit(account, inbound(account, "c1", "before"))
    big = replace(inbound(account, "c1", "big"), text="x" * 3000)
    container.inbound.submit(account, big)
    container.inbound.submit(account, inbound(account, "c1", "canary"))

    async def scenario() -> Relay:
        with bootstrap.relay(settings, max_request_size=2000) as relay:  # stands for the broker's message.max.bytes
            stop, ready = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(relay.run(stop, ready))
            await asyncio.wait_for(ready.wait(), 30)
            try:
                await caught_up_to_store(relay, settings)
            finally:
                stop.set()
                await asyncio.wait_for(task, 15)
            return relay

    relay = asyncio.run(scenario())
    records = asyncio.run(read_topic_async(settings, 3))

    assert relay.dead_letters == 1
    [(version, event_type, reason)] = query(settings, "SELECT version, event_type, reason FROM relay_dead_letters")
    assert (version, event_type) == (3, "MessageReceived") and "MessageSizeTooLarge" in reason
    assert sorted(e["version"] for _, e in records) == [1, 2, 4]  # the canary went out after it


@pytest.fixture
def own_broker(settings: Settings, tmp_path: Any) -> Any:
    """A Tansu broker of this test alone on a fixed port, so it can be restarted in place (memory only)."""
    from inbox.adapters.embedded import EmbeddedBroker

    broker = EmbeddedBroker(log_path=tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()


def restart(broker: Any) -> None:
    broker.stop()
    broker.start()


def store_and_topic_agree(settings: Settings) -> bool:
    stored = {(str(r[0]), r[1]) for r in query(
        settings, "SELECT originator_id, originator_version FROM inbox_events WHERE topic LIKE 'domain.room:%%'")}
    records = asyncio.run(read_topic_async(settings, len(stored), timeout=3))
    return {(e["room_id"], e["version"]) for _, e in records} == stored


@pytest.mark.parametrize("writes_after_restart", [True, False], ids=["busy", "idle"])
def test_a_broker_that_restarts_under_a_running_relay_gets_the_whole_store_again(
    settings: Settings, container: Container, own_broker: Any, writes_after_restart: bool,
) -> None:
    restart_under_a_running_relay(settings, container, own_broker, writes_after_restart)


def test_a_re_publication_is_counted_once_the_relay_is_back_at_the_start(
    settings: Settings, container: Container, own_broker: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Who waits for the count and then for the position (as the test above) never sees the old
    position after the count, however slowly the position is saved: the count came first, and a
    loaded CI run took the store as re-published before the relay had begun."""
    save = Relay._save_position

    async def slow_save(self: Relay, conn: Any, notification_id: int) -> None:
        await asyncio.sleep(0.5)  # a slow database: the event loop runs the other tasks meanwhile
        await save(self, conn, notification_id)

    monkeypatch.setattr(Relay, "_save_position", slow_save)
    restart_under_a_running_relay(settings, container, own_broker, writes_after_restart=False)


def restart_under_a_running_relay(
    settings: Settings, container: Container, own_broker: Any, writes_after_restart: bool,
) -> None:
    settings = replace(settings, kafka_bootstrap=own_broker.bootstrap)
    account = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA")
    for i in range(12):
        container.inbound.submit(account, inbound(account, f"c{i % 3}", f"m{i}"))

    async def scenario() -> Relay:
        async with running_relay(settings) as relay:
            await caught_up_to_store(relay, settings)
            await asyncio.to_thread(restart, own_broker)  # the topic and everything on it are gone
            if writes_after_restart:
                for i in range(6):
                    await asyncio.to_thread(container.inbound.submit, account, inbound(account, f"c{i % 3}", f"n{i}"))
            deadline = time.monotonic() + 90
            while relay.republished_after_loss == 0:
                assert time.monotonic() < deadline, "the relay did not notice the broker lost its data"
                await asyncio.sleep(0.1)
            await caught_up_to_store(relay, settings, timeout=90)
        return relay

    asyncio.run(scenario())

    assert store_and_topic_agree(settings)


def test_a_stored_event_that_cannot_be_read_is_dead_lettered_and_the_relay_goes_on(
    settings: Settings, container: Container,
) -> None:
    account = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA")
    room = str(container.inbound.submit(account, inbound(account, "c1", "before")).room_id)
    execute(settings, "INSERT INTO inbox_events (originator_id, originator_version, topic, state)"
                      " VALUES (%s, 3, 'domain.room:Room.MessageReceived', %s)", (room, b"\xffnot json"))
    container.inbound.submit(account, inbound(account, "c2", "canary"))

    async def scenario() -> None:
        async with running_relay(settings) as relay:
            await caught_up_to_store(relay, settings)

    asyncio.run(scenario())
    records = asyncio.run(read_topic_async(settings, 4))

    assert query(settings, "SELECT room_id, version FROM relay_dead_letters") == [(room, 3)]
    assert sorted((e["room_id"] == room, e["version"]) for _, e in records) == [(False, 1), (False, 2), (True, 1), (True, 2)]
