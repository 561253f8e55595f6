"""The relay: event store notification log → Kafka `inbox.events`, in order, at least once.

Position is stored in PostgreSQL after the broker acknowledged every event up to it, so a
relay killed at any moment re-sends from its last recorded position. It wakes on the event
store's NOTIFY (sent in the inserting transaction), so events go out within milliseconds of
commit; a 1 s poll is only the fallback. Only one relay publishes at a time (advisory lock);
a second one waits as a hot standby.

The embedded broker keeps nothing across restarts: if the topic is missing or empty while the
position says events were published, the relay starts again from the beginning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from inbox.config import Settings
from inbox.db import conninfo
from inbox.event_log import WireEventLog
from inbox.eventstore import EVENTS_TABLE, InboxApplication
from inbox.wire import encode

log = logging.getLogger(__name__)

RELAY_LOCK = 0x1B0C6
POLL_FALLBACK_S = 1.0
HEARTBEAT_S = 2.0


async def ensure_topic(bootstrap: str, topic: str, partitions: int) -> bool:
    """Create the topic if it does not exist; returns True when it was created now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = await admin.list_topics()
        if topic in existing:
            return False
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        await admin.close()


async def topic_end_offsets(bootstrap: str, topic: str) -> int:
    """Sum of the topic's end offsets (0 for a fresh or restarted in-memory broker)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


class Relay:
    def __init__(self, settings: Settings, *, page_size: int = 2000) -> None:
        self._settings = settings
        self._name = settings.events_topic  # one position per topic the store is published to
        self._page_size = page_size
        self.published = 0
        self.position = 0

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        settings = self._settings
        assert settings.kafka_bootstrap
        app = InboxApplication.from_settings(settings)
        reader = WireEventLog(app)
        lock_conn = await psycopg.AsyncConnection.connect(conninfo(settings), autocommit=True)
        listen_conn = await psycopg.AsyncConnection.connect(conninfo(settings), autocommit=True)
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=False,  # Tansu has no InitProducerId; ordering comes from 1 in-flight batch per partition
            linger_ms=1,
            max_batch_size=256 * 1024,
            request_timeout_ms=30000,
        )
        try:
            await self._wait_for_lock(lock_conn, stop)
            if stop.is_set():
                return
            await listen_conn.execute(f'LISTEN "{EVENTS_TABLE}"')
            await producer.start()
            created = await ensure_topic(settings.kafka_bootstrap, settings.events_topic, settings.topic_partitions)
            self.position = await self._start_position(lock_conn, created)
            log.info("relay publishing to %s from notification %s", settings.events_topic, self.position)
            if ready is not None:
                ready.set()
            last_beat = 0.0
            while not stop.is_set():
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    await self._heartbeat(lock_conn)
                    last_beat = time.monotonic()
                page, rows = await asyncio.to_thread(reader.read, self.position, self._page_size)
                if page.events:
                    await self._publish(producer, page.events)
                if page.last_id > self.position:
                    await self._save_position(lock_conn, page.last_id)
                if rows < self._page_size:
                    await self._wait_for_commit(listen_conn)
        finally:
            await producer.stop()
            await listen_conn.close()
            await lock_conn.close()
            app.close()

    async def _wait_for_lock(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        waiting_logged = False
        while not stop.is_set():
            row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))).fetchone()
            if row and row[0]:
                return
            if not waiting_logged:
                log.info("another relay is publishing; standing by")
                waiting_logged = True
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def _start_position(self, conn: psycopg.AsyncConnection[Any], created: bool) -> int:
        row = await (
            await conn.execute("SELECT notification_id FROM relay_position WHERE name = %s", (self._name,))
        ).fetchone()
        position = row[0] if row else 0
        if position and (created or await topic_end_offsets(self._settings.kafka_bootstrap or '', self._settings.events_topic) == 0):
            log.warning(
                "topic %s is new or empty but %s events were published before: re-publishing from the start",
                self._settings.events_topic, position,
            )
            position = 0
            await self._save_position(conn, 0)
        return position

    async def _publish(self, producer: AIOKafkaProducer, events: list[tuple[int, dict[str, Any]]]) -> None:
        topic = self._settings.events_topic
        futures = [
            await producer.send(topic, value=encode(event), key=event["room_id"].encode())
            for _, event in events
        ]
        await asyncio.gather(*futures)  # every event acknowledged before the position moves
        self.published += len(events)

    async def _save_position(self, conn: psycopg.AsyncConnection[Any], notification_id: int) -> None:
        await conn.execute(
            "INSERT INTO relay_position (name, notification_id, updated_at) VALUES (%s, %s, now())"
            " ON CONFLICT (name) DO UPDATE SET notification_id = EXCLUDED.notification_id, updated_at = now()",
            (self._name, notification_id),
        )
        self.position = notification_id

    async def _heartbeat(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(
            "INSERT INTO worker_heartbeats (worker_id, kind, beat_at, events) VALUES (%s, 'relay', now(), %s)"
            " ON CONFLICT (worker_id) DO UPDATE SET beat_at = now(), events = EXCLUDED.events",
            (f"relay:{self._name}", self.published),
        )

    @staticmethod
    async def _wait_for_commit(conn: psycopg.AsyncConnection[Any]) -> None:
        async for _ in conn.notifies(timeout=POLL_FALLBACK_S, stop_after=1):
            break
