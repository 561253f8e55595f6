"""The relay: event store notification log → Kafka `inbox.events`, in order, at least once.

Position is stored in PostgreSQL after the broker acknowledged every event up to it, so a
relay killed at any moment re-sends from its last recorded position. It wakes on the event
store's NOTIFY (sent in the inserting transaction), so events go out within milliseconds of
commit; a 1 s poll is only the fallback. Only one relay publishes at a time (advisory lock);
a second one waits as a hot standby.

The embedded broker keeps nothing across restarts: if the topic is missing or empty while the
position says events were published, the relay starts again from the beginning. It also watches
for that while it runs: an acknowledged offset below one acknowledged before on the same
partition, or (every few seconds) a vanished topic or end offsets that went backwards, mean the
broker lost data, and the relay re-publishes the store from the start.

One event never stops the relay: one that cannot be read from the store or encoded, or that the
broker refuses for itself (too large, corrupt), is recorded in `relay_dead_letters` with the
reason and skipped.
Anything else (broker unreachable, timeouts, leader changes) is retried with back-off, never
skipped: the position only moves once every event up to it is acknowledged or dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka import errors as kafka_errors
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import RecordMetadata, TopicPartition

from inbox.config import Settings
from inbox.adapters.postgres import conninfo
from inbox.adapters.event_log import Unreadable, WireEventLog
from inbox.adapters.postgres import is_transient
from inbox.adapters.eventstore import EVENTS_TABLE
from inbox.adapters.wire import encode, event_id

log = logging.getLogger(__name__)

RELAY_LOCK = 0x1B0C6
POLL_FALLBACK_S = 1.0
HEARTBEAT_S = 2.0
TOPIC_CHECK_S = 3.0  # how often a running relay checks that the broker still holds what it published
RETRY_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)

# The broker refuses this one record (not the broker's state): dead-letter it and go on.
RECORD_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordTooLargeError,
    kafka_errors.CorruptRecordException, kafka_errors.InvalidTimestampError,
)


class TopicLost(RuntimeError):
    """The broker no longer holds what the relay published (e.g. an in-memory broker restarted)."""


async def partition_end_offsets(bootstrap: str, topic: str) -> dict[int, int] | None:
    """End offset per partition of the topic; None when the topic does not exist."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return None
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def ensure_topic(bootstrap: str, topic: str, partitions: int) -> bool:
    """Create the topic if it does not exist; returns True when it was created now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
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
    try:
        await consumer.start()
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        await consumer.stop()


class Relay:
    def __init__(
        self, settings: Settings, event_log: WireEventLog, *, page_size: int = 2000, max_request_size: int = 1_048_576
    ) -> None:
        """The caller (inbox/bootstrap.py) owns `event_log` and closes it after `run`."""
        self._settings = settings
        self._event_log = event_log
        self._name = settings.events_topic  # one position per topic the store is published to
        self._page_size = page_size
        self.published = 0
        self.position = 0
        self.dead_letters = 0
        self.republished_after_loss = 0  # times the topic was found to have lost data while running
        self._acked: dict[int, int] = {}  # partition -> highest offset the broker acknowledged
        self._ends: dict[int, int] = {}  # partition -> end offset at the last topic check
        self._max_request_size = max_request_size  # largest record the producer sends (Kafka's default)

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Publish until `stop`. Losing the database (a restart, a killed connection) is never fatal:
        the relay reconnects with backoff, takes the lock again and resumes from its recorded
        position (at least once: what it published after that position is published again)."""
        attempt = 0
        while not stop.is_set():
            try:
                await self._run_connected(stop, ready)
                return
            except Exception as e:
                if not is_transient(e):
                    raise
                backoff = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("relay lost the database (%s: %s); reconnecting in %ss", type(e).__name__, e, backoff)
                await _sleep_unless_stopped(stop, backoff)

    async def _run_connected(self, stop: asyncio.Event, ready: asyncio.Event | None) -> None:
        settings = self._settings
        assert settings.kafka_bootstrap
        reader = self._event_log
        lock_conn = await psycopg.AsyncConnection.connect(conninfo(settings), autocommit=True)
        try:
            listen_conn = await psycopg.AsyncConnection.connect(conninfo(settings), autocommit=True)
        except BaseException:
            await lock_conn.close()
            raise
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=False,  # Tansu has no InitProducerId; ordering comes from 1 in-flight batch per partition
            linger_ms=1,
            max_batch_size=256 * 1024,
            request_timeout_ms=30000,
            max_request_size=self._max_request_size,
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
            last_beat = last_check = 0.0
            attempt = 0
            while not stop.is_set():
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    await self._heartbeat(lock_conn)
                    last_beat = time.monotonic()
                try:
                    if time.monotonic() - last_check >= TOPIC_CHECK_S:
                        await self._check_topic()
                        last_check = time.monotonic()
                    unreadable: list[Unreadable] = []
                    page, rows = await asyncio.to_thread(reader.read, self.position, self._page_size, unreadable)
                    for u in unreadable:
                        await self._dead_letter(lock_conn, u.notification_id, {
                            "id": event_id(u.room_id, u.version), "room_id": u.room_id, "version": u.version,
                            "type": u.topic.rsplit(".", 1)[-1],
                        }, u.error)
                    if page.events:
                        await self._publish(producer, lock_conn, page.events)
                    attempt = 0
                except TopicLost as e:
                    try:
                        await self._start_over(lock_conn, str(e))
                    except Exception as again:
                        if not is_transient_kafka(again):
                            raise
                        log.warning("re-creating the topic failed: %s; retrying", again)
                        await _sleep_unless_stopped(stop, RETRY_BACKOFF_S[-1])
                    continue
                except Exception as e:
                    if not is_transient_kafka(e):
                        raise
                    backoff = RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)]
                    attempt += 1
                    log.warning("publishing failed (attempt %s): %s: %s; retrying in %ss",
                                attempt, type(e).__name__, e, backoff)
                    await _sleep_unless_stopped(stop, backoff)
                    continue
                if page.last_id > self.position:
                    await self._save_position(lock_conn, page.last_id)
                if rows < self._page_size:
                    await self._wait_for_commit(listen_conn)
        finally:
            await producer.stop()
            await listen_conn.close()
            await lock_conn.close()

    async def _wait_for_lock(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        waiting_logged = False
        while not stop.is_set():
            # Keyed by schema too: the relays of another Inbox schema in the same database are not standbys.
            row = await (await conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))", (RELAY_LOCK,)
            )).fetchone()
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

    async def _publish(
        self, producer: AIOKafkaProducer, conn: psycopg.AsyncConnection[Any], events: list[tuple[int, dict[str, Any]]]
    ) -> None:
        """Send a page; every event is acknowledged or dead-lettered before the position moves.

        A record the broker refuses may sink the batch it travelled in, so every refused event is
        sent again on its own, in order, and only what is refused on its own is dead-lettered.
        (A re-sent event can then follow a later event of its room that was acknowledged in the
        first round; the workers fill such a gap from the event store.)
        """
        topic = self._settings.events_topic
        futures: list[asyncio.Future[RecordMetadata] | BaseException] = []
        for _, event in events:
            try:
                futures.append(await producer.send(topic, value=encode(event), key=event["room_id"].encode()))
            except Exception as e:
                if is_transient_kafka(e):
                    raise
                futures.append(e)
        results = await asyncio.gather(*(f for f in futures if isinstance(f, asyncio.Future)), return_exceptions=True)
        it = iter(results)
        outcomes = [f if isinstance(f, BaseException) else next(it) for f in futures]
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and is_transient_kafka(outcome):
                raise outcome
        for outcome in outcomes:
            if isinstance(outcome, RecordMetadata):
                self._acknowledged(outcome)
        for (notification_id, event), outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                try:
                    self._acknowledged(await producer.send_and_wait(
                        topic, value=encode(event), key=event["room_id"].encode()))
                except Exception as e:
                    if is_transient_kafka(e):
                        raise
                    await self._dead_letter(conn, notification_id, event, e)
        self.published += len(events)

    def _acknowledged(self, md: RecordMetadata) -> None:
        if md.offset < self._acked.get(md.partition, -1):
            raise TopicLost(
                f"partition {md.partition} acknowledged offset {md.offset} after {self._acked[md.partition]}"
            )
        self._acked[md.partition] = md.offset

    async def _check_topic(self) -> None:
        """Raise TopicLost when the topic vanished or its end offsets went backwards.

        End offsets are compared with the previous check's, not with the acknowledged offsets:
        Tansu reports a partition's end as the last batch's base offset + 1, so it can lag the
        acknowledged offsets without anything being lost. A partition that had acknowledged
        records and now ends at 0 has lost them whatever the broker.
        """
        if not self._acked:
            return
        ends = await partition_end_offsets(self._settings.kafka_bootstrap or "", self._settings.events_topic)
        if ends is None:
            raise TopicLost("the topic no longer exists")
        for partition, end in ends.items():
            if end < self._ends.get(partition, 0) or (end == 0 and partition in self._acked):
                raise TopicLost(f"partition {partition} ends at {end}, it ended at {self._ends.get(partition, 0)}")
        self._ends = ends

    async def _start_over(self, conn: psycopg.AsyncConnection[Any], why: str) -> None:
        settings = self._settings
        log.warning("topic %s lost data (%s): re-publishing from the start", settings.events_topic, why)
        await ensure_topic(settings.kafka_bootstrap or "", settings.events_topic, settings.topic_partitions)
        self._acked, self._ends = {}, {}
        await self._save_position(conn, 0)
        # Counted once the position is back at the start: whoever sees the count (the tests, an
        # operator) and then the position must not see the old end and take the store as re-published.
        self.republished_after_loss += 1

    async def _dead_letter(
        self, conn: psycopg.AsyncConnection[Any], notification_id: int, event: dict[str, Any], error: BaseException
    ) -> None:
        reason = f"{type(error).__name__}: {error}".replace("\x00", "\\0")
        log.error("relay: not publishing event %s (%s v%s, notification %s): %s",
                  event.get("id"), event.get("type"), event.get("version"), notification_id, reason)
        await conn.execute(
            "INSERT INTO relay_dead_letters (topic, notification_id, event_id, room_id, version, event_type, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (topic, notification_id) DO UPDATE SET reason = EXCLUDED.reason, recorded_at = now()",
            (self._settings.events_topic, notification_id, event.get("id"), event.get("room_id"),
             event.get("version"), event.get("type"), reason),
        )
        self.dead_letters += 1

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


def is_transient_kafka(error: BaseException) -> bool:
    """Anything but a refusal of the record itself or a failure to encode it: retry, never skip."""
    if isinstance(error, RECORD_ERRORS):
        return False
    return isinstance(error, (kafka_errors.KafkaError, OSError, TimeoutError, asyncio.TimeoutError))


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
