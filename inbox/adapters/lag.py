"""How far the relay and the projections are behind the event store, and whether they are stuck.

What is measured, from what exists:
- relay lag (events) = the store's max notification id − the relay's position (`relay_position`).
  Notification ids can have gaps (a rolled-back insert consumes ids), so this is an upper bound;
  it is 0 exactly when everything is published.
- projection lag (events) = records on the events topic not yet committed by the projection
  workers' consumer group (end offsets − committed offsets). The relay publishes one record per
  event, so this counts events relayed but not yet projected; total staleness of the projections
  is relay lag + projection lag. Workers commit offsets every few seconds, so it trails a little.
- lag (seconds) = for how long the loop has been behind without advancing (its position
  unchanged), as observed by this API process between two probes; 0 when not behind or moving.
  Wire events carry no notification id and the store no timestamps, so "age of the oldest
  unapplied event" is not available without a schema change; this is what /readyz needs anyway:
  a loop is *stuck* when it has been behind and not moving for `stall_after_s`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from psycopg_pool import ConnectionPool

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class StoreLag:
    relay_events: int
    dead_letters: int
    relay_position: int


def store_lag(pool: ConnectionPool, topic: str) -> StoreLag:
    """The database part: cheap (max over the notification id index, one row, one count)."""
    with pool.connection(timeout=PROBE_TIMEOUT_S) as conn:
        row = conn.execute(
            "SELECT coalesce((SELECT max(notification_id) FROM inbox_events), 0),"
            " coalesce((SELECT notification_id FROM relay_position WHERE name = %s), 0),"
            " (SELECT count(*) FROM projection_dead_letters)",
            (topic,),
        ).fetchone()
    assert row is not None
    store_max, position, dead = (int(v) for v in row)
    return StoreLag(relay_events=max(store_max - position, 0), dead_letters=dead, relay_position=position)


async def consumer_lag(bootstrap: str, topic: str, group: str) -> tuple[int, int]:
    """(records not yet committed by `group`, sum of its committed offsets) on `topic`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                request_timeout_ms=int(PROBE_TIMEOUT_S * 1000))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(PROBE_TIMEOUT_S * 1000))
    try:  # started inside: a start that fails (broker down, probe timed out) still closes both
        await consumer.start()
        await admin.start()
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps) if tps else {}
        committed = await admin.list_consumer_group_offsets(group, partitions=tps) if tps else {}
        done = {tp: max(meta.offset, 0) for tp, meta in committed.items()}
        behind = sum(max(end - done.get(tp, 0), 0) for tp, end in ends.items())
        return behind, sum(done.values())
    finally:
        await admin.close()
        await consumer.stop()


class Progress:
    """Remembers when a loop's position last moved, to tell "behind and moving" from "stuck"."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._position: int | None = None
        self._behind = False
        self._since = time.monotonic()

    def behind_for(self, position: int, behind: int) -> float:
        """Seconds this loop has been seen behind at the same position (0 when caught up or moving).

        Counted from the first probe that saw it behind at that position, so a long quiet time
        between probes never passes for a stall.
        """
        now = time.monotonic()
        with self._lock:
            if position != self._position or not behind or not self._behind:
                self._position, self._since = position, now
            self._behind = behind > 0
            return 0.0 if behind == 0 else now - self._since


@dataclass
class LagTracker:
    relay: Progress
    projection: Progress

    @classmethod
    def create(cls) -> LagTracker:
        return cls(Progress(), Progress())
