"""examples/consumer runs against the real broker: the real events of a story written through the
write side, plus a duplicate, a gap and invalid messages produced next to them; its summary counts
each one."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from inbox.config import Settings
from inbox.bootstrap import Container
from inbox.adapters.event_log import WireEventLog
from inbox.bootstrap import open_event_store
from inbox.adapters.wire import encode, event_id
from inbox.adapters.kafka.relay import ensure_topic
from tests.integration.history_helpers import Story, write_story

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "consumer" / "consumer.py"


def publish_story(settings: Settings) -> tuple[Story, list[dict[str, Any]]]:
    """Write the story through the write side and publish its wire events as the relay does
    (same encoding, key = room id, store order). Not through the relay itself: its advisory lock
    is database-wide, so test runs of other schemas in the same database can hold it for long."""
    container = Container.build(settings)
    try:
        story = write_story(container)
    finally:
        container.close()
    app = open_event_store(settings)
    try:
        page, _ = WireEventLog(app).read(0, 10_000)
    finally:
        app.close()
    events = [e for _, e in page.events]
    asyncio.run(ensure_topic(str(settings.kafka_bootstrap), settings.events_topic, settings.topic_partitions))
    asyncio.run(produce(settings, [(e["room_id"].encode(), encode(e)) for e in events]))
    return story, events


async def produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(settings.events_topic, value, key=key)
    finally:
        await producer.stop()


def run_example(settings: Settings, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap", str(settings.kafka_bootstrap), "--topic", settings.events_topic,
         "--schemas", str(ROOT / "docs" / "events"), "--json", *args],
        capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def test_the_example_consumer_counts_duplicates_gaps_and_invalid_events(settings: Settings) -> None:
    story, published = publish_story(settings)
    c5 = [e for e in published if e["room_id"] == story.rooms["c5"]]  # org2's room: versions 1, 2
    assert [e["version"] for e in sorted(c5, key=lambda e: e["version"])] == [1, 2]
    opened, received = sorted(c5, key=lambda e: e["version"])
    key = story.rooms["c5"].encode()
    # Version 4 of c5 while its last is 2: a valid event after a gap (version 3 is missing).
    jumped = {**received, "id": event_id(story.rooms["c5"], 4), "version": 4,
              "data": {**received["data"], "channel_message_id": "c5-m9", "text": "where is it?"}}
    bad_shape = {**opened, "data": {**opened["data"], "channel": "carrier-pigeon"}}  # not in the enum
    asyncio.run(produce(settings, [
        (key, encode(received)),    # the same (room, version) again: a duplicate
        (key, encode(jumped)),      # a gap
        (key, encode(bad_shape)),   # invalid against RoomOpened.json
        (key, b"{not json"),        # invalid: not JSON
    ]))

    summary = run_example(settings, "--stop-after", str(len(published) + 4))

    assert summary == {
        "messages": 19 + 4,
        "applied": 19 + 1,
        "by_type": {"MessageReceived": 7 + 1, "MessageSent": 2, "RoomAssigned": 3, "RoomOpened": 6, "RoomResolved": 1},
        "rooms": 6,
        "duplicates": 1,
        "gaps": 1,
        "missing": 1,
        "late": 0,
        "invalid": 2,
        "unknown_types": 0,
    }


def test_the_example_consumer_accepts_an_old_schema_version_by_upcasting_it(settings: Settings) -> None:
    story, published = publish_story(settings)
    c3 = sorted((e for e in published if e["room_id"] == story.rooms["c3"]), key=lambda e: e["version"])
    resolved = c3[-1]
    assert resolved["type"] == "RoomResolved"
    # A version-0 draft of the next RoomResolved: no schema_version, `cause` instead of `reason`.
    old = {k: v for k, v in resolved.items() if k != "schema_version"}
    old.update(version=resolved["version"] + 1, id=event_id(resolved["room_id"], resolved["version"] + 1),
               data={**{k: v for k, v in resolved["data"].items() if k != "reason"}, "cause": "expired"})
    asyncio.run(produce(settings, [(story.rooms["c3"].encode(), orjson.dumps(old))]))

    summary = run_example(settings, "--stop-after", str(len(published) + 1))

    assert (summary["applied"], summary["invalid"], summary["by_type"]["RoomResolved"]) == (20, 0, 2)


def test_in_a_consumer_group_the_example_resumes_after_its_committed_offsets(settings: Settings) -> None:
    story, published = publish_story(settings)
    # A group's join waits at the Tansu broker for about half the member's session timeout (librdkafka's
    # default 45 s: ~23 s per run); 6 s is the shortest a Kafka broker accepts (group.min.session.timeout.ms).
    group = ("--group", f"{settings.topic_prefix}example", "-X", "session.timeout.ms=6000")
    first = run_example(settings, *group, "--stop-after", str(len(published)))
    c5_received = max((e for e in published if e["room_id"] == story.rooms["c5"]), key=lambda e: e["version"])
    newer = {**c5_received, "id": event_id(story.rooms["c5"], 3), "version": 3,
             "data": {**c5_received["data"], "channel_message_id": "c5-m2", "text": "hello again"}}
    asyncio.run(produce(settings, [(story.rooms["c5"].encode(), encode(newer))]))

    second = run_example(settings, *group, "--stop-after", "1")

    assert (first["messages"], first["applied"]) == (19, 19)
    # Only the new event, read after the group's committed offsets. This run's in-memory state starts
    # empty, so room c5 first shows up at version 3: the "gap" a consumer sees when it does not keep its
    # per-room versions with its data (docs/consumers.md).
    assert (second["messages"], second["by_type"], second["gaps"]) == (1, {"MessageReceived": 1}, 1)
