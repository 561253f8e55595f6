"""`inbox sender`: delivers staff replies to Meta, a downstream consumer of our own events topic.

Two loops in one process, around one durable queue (table `sender_sends`):

- **intake** reads `{prefix}inbox.events` and, for every staff `MessageSent` (not channel echoes),
  inserts a `pending` row; the row and the partition's next offset (`sender_offsets`) commit in one
  transaction, so a reply is queued exactly once however often the sender restarts. Partitions are
  assigned manually with offsets kept in PostgreSQL: a Kafka group join on Tansu takes 20-30 s per
  (re)start, one sender per deployment is enough (sends are paced per account anyway), and the
  offsets then commit atomically with the queue rows.
- **dispatch** takes due rows in order, room by room: asks the use case what to send
  (`Deliveries.plan`: still pending? which recipient, which messaging type now?), waits for a
  token that works (an account marked `needs_reauth` after Meta's code 190 holds its sends, they do
  not fail), paces per account and per recipient, marks the row `in_flight` (committed) **before**
  the HTTP call, sends, and records the outcome on the room through the use case.

**The one duplicate window.** A sender killed after the request left and before the outcome was
stored finds the row `in_flight` on restart and sends it again: Meta takes no idempotency key, so
that window (one HTTP call, at most the client timeout) cannot be closed on our side. A row whose
reply the room already shows as accepted / failed / delivered (a status webhook, an echo) is not
resent. A timeout after the request left is recorded as `ReplyDeliveryUnknown` and never resent
automatically: status/echo webhooks settle it.

**Database faults** (a terminated connection, a restarting server) never dead-letter a reply:
before the request leaves, the row is left as it is and taken again later; after it left, the
outcome is recorded with back-off until the database takes it, so such faults never open the
duplicate window above.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from psycopg_pool import AsyncConnectionPool

from domain.channels import Channel
from domain.outbound import MessagingType, backoff_delay
from domain.room import CHANNEL_SENDER
from inbox.adapters.meta_graph import (
    Accepted,
    Failed,
    InvalidReply,
    MetaGraphClient,
    OutboundReply,
    Reauth,
    RetryAfter,
    Unknown,
)
from inbox.adapters.postgres import is_transient
from inbox.adapters.outbound.credentials import PostgresCredentials
from inbox.adapters.wire import InvalidWireEvent, decode
from inbox.usecases.delivery import Deliveries, Refused, SendPlan, Settled
from inbox.usecases.echoes import ParkedEchoes
from inbox.usecases.pacing import Pacer

log = logging.getLogger(__name__)

RATE_LIMIT_ACCOUNT = {130429, 4, 80007, 613}
RATE_LIMIT_PAIR = 131056
TOKEN_CACHE_S = 1.0
TRANSIENT_PAUSE_S = 0.5  # a room whose reply met a database failure is taken again after this
RECORD_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)  # retrying an outcome's record until the database takes it


@dataclass(frozen=True)
class SenderOptions:
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    max_attempts: int = 12
    reauth_poll_s: float = 2.0
    concurrency: int = 32
    batch: int = 200
    echo_sweep_s: float = 0.5  # how often parked echoes are decided again (inbox/usecases/echoes.py)
    echo_hold_s: float = 30.0  # how long a parked echo waits for the reply it may be the echo of


@dataclass
class _Row:
    seq: int
    message_id: str
    room_id: str
    account_id: str
    payload: dict[str, Any]
    state: str
    attempts: int


class Sender:
    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        pool: AsyncConnectionPool,
        deliveries: Deliveries,
        credentials: PostgresCredentials,
        client: MetaGraphClient,
        pacer: Pacer | None = None,
        options: SenderOptions = SenderOptions(),
        echoes: ParkedEchoes | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._pool = pool
        self._deliveries = deliveries
        self._credentials = credentials
        self._client = client
        self._pacer = pacer or Pacer()
        self._options = options
        self._echoes = echoes
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tokens: dict[str, tuple[str | None, float]] = {}
        self.sent = 0

    async def run(self, stop: asyncio.Event) -> None:
        # The use cases and the credentials are synchronous (threads): enough threads for the
        # concurrent rooms, not the default handful of a small machine.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(self._options.concurrency, thread_name_prefix="sender"))
        intake = asyncio.create_task(self._intake(stop), name="sender-intake")
        dispatch = asyncio.create_task(self._dispatch(stop), name="sender-dispatch")
        tasks = [intake, dispatch]
        if self._echoes is not None:
            tasks.append(asyncio.create_task(self._sweep_echoes(stop), name="sender-echoes"))
        try:
            await stop.wait()
        finally:
            self._stopping.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- parked echoes ----------------------------------------------------------------------
    async def _sweep_echoes(self, stop: asyncio.Event) -> None:
        """Parked Instagram echoes decided again (dropped when the sender recorded their reply,
        recorded as the business's own message after the hold): here because the sender runs
        anyway, and what the API parked survives the API."""
        assert self._echoes is not None
        while not stop.is_set():
            try:
                tally = await asyncio.to_thread(self._echoes.sweep)
                if tally["dropped"] or tally["recorded"]:
                    log.info("parked echoes: %s", tally)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("sweeping parked echoes failed (%s: %s); again in %ss", type(e).__name__, e,
                            self._options.echo_sweep_s, exc_info=not is_transient(e))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._options.echo_sweep_s)
            except TimeoutError:
                pass

    # ---- intake ---------------------------------------------------------------------------
    async def _intake(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._consume(stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sender intake failed; reconnecting in 2 s")
                await asyncio.sleep(2)

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, group_id=None,
            auto_offset_reset="earliest", fetch_max_wait_ms=100,
        )
        try:
            await consumer.start()  # inside: a start that fails (broker down) still stops the consumer
            partitions: set[int] | None = None
            while not partitions and not stop.is_set():
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(self._topic)
                if not partitions:
                    await asyncio.sleep(1)  # the relay creates the topic
            tps = [TopicPartition(self._topic, p) for p in sorted(partitions or ())]
            consumer.assign(tps)
            stored = await self._offsets()
            for tp in tps:
                if tp.partition in stored:
                    consumer.seek(tp, stored[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            log.info("sender reading %s partitions of %s", len(tps), self._topic)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                for tp, records in batches.items():
                    await self._enqueue(tp.partition, records)
                if batches:
                    self._wake.set()
        finally:
            await consumer.stop()

    async def _offsets(self) -> dict[int, int]:
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT partition, next_offset FROM sender_offsets WHERE topic = %s", (self._topic,))).fetchall()
        return {p: o for p, o in rows}

    async def _enqueue(self, partition: int, records: Sequence[Any]) -> None:
        rows: list[tuple[Any, ...]] = []
        dead: list[tuple[Any, ...]] = []
        for record in records:
            try:
                event = decode(record.value)
                data = event["data"]
                if event["type"] != "MessageSent" or data.get("sender_role") == CHANNEL_SENDER:
                    continue
                payload = {"kind": data.get("kind") or "text", "text": data["text"],
                           "attachments": data.get("attachments") or [], "reply_to": data.get("reply_to")}
                rows.append((data["message_id"], event["room_id"], "", orjson.dumps(payload).decode()))
            except (InvalidWireEvent, KeyError, TypeError, ValueError) as e:
                dead.append((None, None, None, f"unreadable event at {self._topic}/{partition}@{record.offset}: {e}"))
        async with self._pool.connection() as conn, conn.transaction():
            if rows:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO sender_sends (message_id, room_id, channel_account_id, payload, state)"
                        " VALUES (%s, %s, %s, %s::jsonb, 'pending') ON CONFLICT (message_id) DO NOTHING", rows,
                    )
            if dead:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO sender_dead_letters (event_id, room_id, message_id, reason) VALUES (%s, %s, %s, %s)",
                        dead,
                    )
            await conn.execute(
                "INSERT INTO sender_offsets (topic, partition, next_offset) VALUES (%s, %s, %s)"
                " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                (self._topic, partition, records[-1].offset + 1),
            )

    # ---- dispatch -------------------------------------------------------------------------
    async def _dispatch(self, stop: asyncio.Event) -> None:
        limit = asyncio.Semaphore(self._options.concurrency)
        while not stop.is_set():
            try:
                rows = await self._due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sender: reading due replies failed; retrying in 1 s")
                await asyncio.sleep(1)
                continue
            if not rows:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=0.2)
                except TimeoutError:
                    pass
                continue
            by_room: OrderedDict[str, list[_Row]] = OrderedDict()
            for row in rows:
                by_room.setdefault(row.room_id, []).append(row)
            try:
                await asyncio.gather(*(self._room(rows, limit) for rows in by_room.values()))
            except asyncio.CancelledError:
                raise
            except Exception:  # never ends the loop: the rows are still in the queue
                log.exception("sender: a round of dispatch failed; retrying in 1 s")
                await asyncio.sleep(1)

    async def _due(self) -> list[_Row]:
        async with self._pool.connection() as conn:
            found = await (await conn.execute(
                "SELECT seq, message_id::text, room_id::text, channel_account_id, payload, state, attempts"
                " FROM sender_sends WHERE state IN ('pending', 'in_flight') AND next_attempt_at <= now()"
                " ORDER BY seq LIMIT %s", (self._options.batch,),
            )).fetchall()
        return [_Row(*r) for r in found]

    async def _room(self, rows: list[_Row], limit: asyncio.Semaphore) -> None:
        """One room's replies in order: a reply that must wait holds the later ones back."""
        for row in rows:
            async with limit:
                try:
                    done = await self._one(row)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    if is_transient(e):
                        # The database's fault, not the reply's: the row is untouched (still pending,
                        # or in_flight before any request left) and is taken again on a later round.
                        log.warning("sender: reply %s of room %s waits, the database failed: %s: %s",
                                    row.message_id, row.room_id, type(e).__name__, e)
                        await asyncio.sleep(TRANSIENT_PAUSE_S)
                        return
                    log.exception("sender: reply %s of room %s dead-lettered", row.message_id, row.room_id)
                    await self._dead(row, f"{type(e).__name__}: {e}")
                    done = True
            if not done:
                return

    async def _one(self, row: _Row) -> bool:
        """Handle one due reply; False when it waits (later replies of its room wait too)."""
        payload = row.payload
        plan = await asyncio.to_thread(
            self._deliveries.plan, row.room_id, row.message_id, kind=payload["kind"], text=payload["text"],
            attachments=payload["attachments"], reply_to=payload.get("reply_to"),
        )
        if isinstance(plan, Settled):
            await self._set(row, "settled", error=f"already {plan.status}")
            return True
        if isinstance(plan, Refused):
            await self._set(row, "failed", error=plan.reason)
            return True
        account = plan.channel_account_id
        token = await self._token(account)
        if token is None:
            await self._later(row, self._options.reauth_poll_s, "waiting for a working access token")
            return False
        booked, at = self._pacer.reserve(account, plan.recipient_id, time.monotonic())
        if not booked:
            await self._later(row, max(0.0, at - time.monotonic()), "paced")
            return False
        if at > time.monotonic():
            await asyncio.sleep(at - time.monotonic())
        await self._set(row, "in_flight", attempts=row.attempts + 1)
        try:
            outcome: Any = await self._client.send(_reply(plan), token)
        except InvalidReply as e:
            outcome = e
        # From here the request has left: its outcome is recorded whatever the database does
        # meanwhile (retried until it is), or a row left in_flight would be sent a second time.
        return await self._recorded(row, plan, outcome)

    async def _recorded(self, row: _Row, plan: SendPlan, outcome: Any) -> bool:
        attempt = 0
        while True:
            try:
                if isinstance(outcome, InvalidReply):
                    await asyncio.to_thread(self._deliveries.failed, row.room_id, row.message_id,
                                            code=None, title=str(outcome), permanent=True)
                    await self._set(row, "failed", error=str(outcome))
                    return True
                return await self._outcome(row, plan, outcome)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not is_transient(e) or self._stopping.is_set():
                    raise  # stopping: the row stays in_flight (the documented window)
                delay = RECORD_BACKOFF_S[min(attempt, len(RECORD_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("sender: recording the outcome of reply %s failed (attempt %s): %s: %s;"
                            " retrying in %ss", row.message_id, attempt, type(e).__name__, e, delay)
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                except TimeoutError:
                    pass

    async def _token(self, account_id: str) -> str | None:
        """The account's working token, cached for a second (a rotation is seen within that)."""
        cached = self._tokens.get(account_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        token = await asyncio.to_thread(self._credentials.sendable_token, account_id)
        self._tokens[account_id] = (token, now + TOKEN_CACHE_S)
        return token

    async def _outcome(self, row: _Row, plan: SendPlan, outcome: Any) -> bool:
        if isinstance(outcome, Accepted):
            await asyncio.to_thread(self._deliveries.accepted, row.room_id, row.message_id, outcome.channel_message_id)
            await self._set(row, "accepted", channel_message_id=outcome.channel_message_id)
            self.sent += 1
            return True
        if isinstance(outcome, Failed):
            await asyncio.to_thread(self._deliveries.failed, row.room_id, row.message_id,
                                    code=outcome.code, title=outcome.title, permanent=outcome.permanent)
            await self._set(row, "failed", error=f"{outcome.code}: {outcome.title}")
            return True
        if isinstance(outcome, Unknown):
            await asyncio.to_thread(self._deliveries.unknown, row.room_id, row.message_id, outcome.reason)
            await self._set(row, "unknown", error=outcome.reason)
            return True
        if isinstance(outcome, Reauth):
            await asyncio.to_thread(self._credentials.mark_needs_reauth, plan.channel_account_id,
                                    f"{outcome.code}: {outcome.title}")
            self._tokens.pop(plan.channel_account_id, None)
            await self._later(row, self._options.reauth_poll_s, "the access token was rejected (190)")
            return False
        assert isinstance(outcome, RetryAfter)
        attempts = row.attempts + 1
        if attempts >= self._options.max_attempts:
            title = f"gave up after {attempts} attempts: {outcome.reason}"
            await asyncio.to_thread(self._deliveries.failed, row.room_id, row.message_id,
                                    code=outcome.code, title=title, permanent=False)
            await self._set(row, "failed", error=title)
            return True
        delay = max(outcome.seconds or 0.0, backoff_delay(
            attempts, base_s=self._options.backoff_base_s, cap_s=self._options.backoff_cap_s))
        delay *= random.uniform(1.0, 1.25)  # jitter: rooms do not retry in lock-step
        now = time.monotonic()
        if outcome.code in RATE_LIMIT_ACCOUNT:
            self._pacer.hold_account(plan.channel_account_id, now + delay)
        elif outcome.code == RATE_LIMIT_PAIR:
            self._pacer.hold_recipient(plan.channel_account_id, plan.recipient_id, now + delay, now)
        await self._later(row, delay, f"retry: {outcome.reason}")
        return False

    # ---- the queue rows -------------------------------------------------------------------
    async def _set(self, row: _Row, state: str, *, error: str | None = None, attempts: int | None = None,
                   channel_message_id: str | None = None) -> None:
        if attempts is not None:
            row.attempts = attempts
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE sender_sends SET state = %s, attempts = %s, last_error = coalesce(%s, last_error),"
                " channel_message_id = coalesce(%s, channel_message_id), updated_at = now() WHERE message_id = %s",
                (state, row.attempts, error, channel_message_id, row.message_id),
            )

    async def _later(self, row: _Row, delay_s: float, why: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE sender_sends SET state = 'pending', last_error = %s, attempts = %s,"
                " next_attempt_at = now() + make_interval(secs => %s), updated_at = now() WHERE message_id = %s",
                (why, row.attempts, delay_s, row.message_id),
            )

    async def _dead(self, row: _Row, reason: str) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO sender_dead_letters (room_id, message_id, reason) VALUES (%s, %s, %s)",
                (row.room_id, row.message_id, reason[:2000]),
            )
            await conn.execute(
                "UPDATE sender_sends SET state = 'dead', last_error = %s, updated_at = now() WHERE message_id = %s",
                (reason[:2000], row.message_id),
            )


def _reply(plan: SendPlan) -> OutboundReply:
    return OutboundReply(
        channel=plan.channel, account_id=plan.account_external_id, recipient_id=plan.recipient_id,
        text=plan.text, template=plan.template, reply_to_message_id=plan.reply_to_channel_message_id,
        messaging_type=MessagingType(plan.messaging_type) if plan.messaging_type else None, tag=plan.tag,
        correlation_id=plan.message_id if plan.channel in (Channel.WHATSAPP_CLOUD, Channel.FACEBOOK_MESSENGER) else None,
    )
