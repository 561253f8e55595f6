"""Use case "record inbound channel facts": group commit of messages, echoes, edits, removals, statuses.

`InboundCommitter` commits concurrent callers' facts together in one transaction (group commit);
`BatchDecision` decides one batch of facts on fresh state. Every fact is checked once at the edge
(`validate_fact`) before it is queued (a caller that checked its facts one by one, `check_each`,
hands over the `CheckedFacts` and they are not checked again); the domain's own rules refuse the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError

from channels.facts import (
    DeliveryStatus,
    InboundMessage,
    MessageEdit,
    MessageRemoval,
    OutboundEcho,
    RecordableFact,
)
from domain.channels import Channel
from domain.errors import DomainError, InvalidCommand, NotFound
from domain.limits import MAX_ID, MAX_MESSAGE_ID, check_identifier, check_json, check_moment, check_text
from domain.room import SENT, Room, check_contact, check_content, room_id_for
from inbox.usecases.channel_accounts import AccountInfo
from inbox.usecases.echoes import park, should_park
from inbox.usecases.ports import DeadlinePassed, DedupKey, DeliveryStatusRecord, EventStore, ParkedEcho, RecordedFact
from inbox.usecases.results import FactOutcome, FactResult, HistoryUnreadable, InboundResult, Unavailable

__all__ = ["BatchDecision", "CheckedFacts", "InboundCommitter", "InboundMessage", "check_each", "validate_fact"]

log = logging.getLogger(__name__)

# How often a write that lost its connection is checked for having committed: a killed server
# leaves every pooled connection dead and each failed try drops one, so try past the pool's size.
# How long a write whose connection died (maybe during COMMIT) keeps asking the database whether it
# committed: long enough to span a server restart (seconds), well within the waiters' backstop, so
# a message recorded across a restart is answered 202, not a 503 its sender would retry. The
# committer has nothing else to do meanwhile: the database it writes to is not answering.
COMMIT_CHECK_S = 10.0
# After this many lost races (the rooms or dedup keys it read were written elsewhere before its
# write), a batch is decided under the store's write lock (`EventStore.exclusive`).
EXCLUSIVE_AFTER_LOST_RACES = 2


Items = Sequence[tuple[AccountInfo, RecordableFact]]


@dataclass(frozen=True)
class CheckedFacts:
    """Facts `validate_fact` accepted, as `check_each` returns them: queued without a second check."""

    items: tuple[tuple[AccountInfo, RecordableFact], ...]

    def __len__(self) -> int:
        return len(self.items)


def check_each(items: Items) -> tuple[CheckedFacts, list[tuple[AccountInfo, RecordableFact, DomainError]]]:
    """Check every fact on its own (`validate_fact`): the valid ones, to submit as a group, and the
    refused ones with the reason (for a caller that records the others, e.g. a webhook POST)."""
    valid: list[tuple[AccountInfo, RecordableFact]] = []
    refused: list[tuple[AccountInfo, RecordableFact, DomainError]] = []
    for account, fact in items:
        try:
            validate_fact(account, fact)
        except DomainError as e:
            refused.append((account, fact, e))
            continue
        valid.append((account, fact))
    return CheckedFacts(tuple(valid)), refused


@dataclass
class _Group:
    """One caller's facts: a group that is recorded entirely or not at all, and its waiter."""

    items: list[tuple[AccountInfo, RecordableFact]]
    future: Future[list[FactResult]]
    deadline: float = float("inf")  # time.monotonic() after which its waiter answers 503


class _GroupRejected(Exception):
    """A fact of a group was refused by the domain: the whole group fails, the batch goes on."""

    def __init__(self, group: _Group, error: DomainError) -> None:
        super().__init__(str(error))
        self.group = group
        self.error = error


_STOP = object()


class InboundCommitter:
    """Records inbound channel facts; concurrent callers share one transaction.

    One thread drains the queue and commits everything waiting as one `store.save(...)`, so a
    burst of N messages costs one transaction instead of N. Each caller's submission is a group
    (`submit` is a group of one; a webhook POST is a group of all its facts): a group is recorded
    entirely or not at all. Messages for the same room are applied in arrival order to the same
    aggregate, so per-room ordering holds. A batch that loses an optimistic-concurrency race
    (another process wrote one of its rooms, or recorded one of its dedup keys) is re-decided from
    fresh state: inbound messages never fail for concurrency.

    Stalls (database locked, slow or gone) end in `Unavailable` (HTTP 503 + Retry-After), and
    only when the group was certainly not recorded, so the sender's retry records it once:
    - a waiter whose deadline passes cancels its future; that succeeds only while the group is
      not yet claimed by a transaction, and the committer drops cancelled groups before writing;
    - a claimed group's transaction runs with a statement timeout derived from the oldest
      waiter's deadline (`write_deadline`), so its waiter gets the committer's verdict soon after;
      the waiter only has a generous backstop of its own.
    The one window left: COMMIT sent, connection lost before its answer. That group is answered
    503 although it may be recorded; the retry is then answered "duplicate" by the dedup keys.
    The thread never dies: an unexpected error fails its batch (logged) and the loop goes on.
    """

    def __init__(
        self, store: EventStore, *, max_batch: int = 256, max_attempts: int = 10,
        max_queue: int = 5000, timeout: float = 10.0, backstop: float = 30.0,
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_attempts = max_attempts
        self._max_queue = max_queue
        self._timeout = timeout
        self._backstop = backstop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0  # facts waiting in the queue (bounded by max_queue)
        self._queued_lock = threading.Lock()
        self.batches = 0
        self._optimism = 1.0  # moving share of optimistic first attempts that were not refused
        # Health: when the last commit attempt succeeded / failed for an infrastructure reason.
        self.last_success: float | None = None
        self.last_failure: float | None = None
        self._thread = threading.Thread(target=self._run, name="inbound-committer", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._queued

    def can_commit(self) -> bool:
        """False while the last commit attempt failed (database down, locked, slow) and none succeeded since."""
        return self._thread.is_alive() and (self.last_failure is None or (self.last_success or 0) > self.last_failure)

    def probe(self) -> bool:
        """Could a write commit now? Asks the store (2 s at most), writes nothing.

        For /readyz after a failure: without traffic no commit attempt would ever say "recovered".
        """
        if not self._store.can_write():
            return False
        if self._thread.is_alive():
            self.last_success = time.monotonic()
        return self._thread.is_alive()

    def submit(self, account: AccountInfo, message: InboundMessage, timeout: float | None = None) -> InboundResult:
        [result] = self.submit_group([(account, message)], timeout=timeout)
        assert result.room_id is not None and result.version is not None and result.message_id is not None
        return InboundResult(result.room_id, result.version, result.message_id, duplicate=result.outcome is FactOutcome.DUPLICATE)

    def submit_group(self, items: Items | CheckedFacts, timeout: float | None = None) -> list[FactResult]:
        """Record every fact or none (one result per fact, in order); returns after the commit.

        Every fact is validated first (unless they come as `CheckedFacts`): if one is invalid,
        `InvalidCommand` is raised and nothing is written. `Unavailable` when the group could not be recorded in time (it was not).
        """
        if not items:
            return []
        timeout = self._timeout if timeout is None else timeout
        future = self._enqueue(items, timeout)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            self.last_failure = time.monotonic()  # not recorded in time: the write path is not healthy
            if future.cancel():
                raise Unavailable("the message store is not answering in time; retry later") from None
        try:
            return future.result(timeout=self._backstop)
        except FutureTimeout:
            log.error("inbound group got no verdict %ss after its deadline", self._backstop)
            raise Unavailable("the message store is not answering in time; retry later") from None

    async def submit_group_async(self, items: Items | CheckedFacts, timeout: float | None = None) -> list[FactResult]:
        """`submit_group` for an event loop: waits for the commit without holding a thread.

        The committer's future wakes one loop future (no task, shield or wrapped future per call:
        those were a large part of a request's CPU); a cancelled request leaves its group to the
        committer, as a shielded wait would.
        """
        if not items:
            return []
        timeout = self._timeout if timeout is None else timeout
        future = self._enqueue(items, timeout)
        if not await _until_done(future, timeout):
            self.last_failure = time.monotonic()  # not recorded in time: the write path is not healthy
            if future.cancel():  # not claimed by a transaction: certainly not recorded
                raise Unavailable("the message store is not answering in time; retry later") from None
            if not await _until_done(future, self._backstop):
                log.error("inbound group got no verdict %ss after its deadline", self._backstop)
                raise Unavailable("the message store is not answering in time; retry later") from None
        return future.result()

    async def submit_async(
        self, account: AccountInfo, message: InboundMessage, timeout: float | None = None
    ) -> InboundResult:
        """`submit` for an event loop: waits for the commit without holding a thread."""
        [result] = await self.submit_group_async([(account, message)], timeout)
        assert result.room_id is not None and result.version is not None and result.message_id is not None
        return InboundResult(result.room_id, result.version, result.message_id, duplicate=result.outcome is FactOutcome.DUPLICATE)

    def _enqueue(self, items: Items | CheckedFacts, timeout: float) -> Future[list[FactResult]]:
        if isinstance(items, CheckedFacts):
            items = items.items
        else:
            for account, fact in items:
                validate_fact(account, fact)
        with self._queued_lock:
            if self._queued + len(items) > self._max_queue:
                raise Unavailable("too many messages waiting to be recorded; retry later")
            self._queued += len(items)
        future: Future[list[FactResult]] = Future()
        self._queue.put(_Group(list(items), future, time.monotonic() + timeout))
        return future

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _take(self, item: _Group) -> _Group:
        with self._queued_lock:
            self._queued -= len(item.items)
        return item

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [self._take(item)]
            size = len(item.items)
            stop = False
            while size < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(self._take(nxt))
                size += len(nxt.items)
            try:
                self._commit([p for p in batch if not p.future.cancelled()])
            except Exception as e:  # the loop must survive anything; its batch gets the error
                log.exception("inbound committer: batch of %s failed unexpectedly", len(batch))
                for pending in batch:
                    _settle(pending.future, error=e)
            if stop:
                return

    def _commit(self, batch: list[_Group]) -> None:
        attempt = 0
        # The first attempt trusts the cached rooms (see BatchDecision) while that mostly works:
        # with another process writing the same rooms, a refused attempt costs a write; then only
        # every 16th batch tries again.
        optimistic = self._optimism > 0.5 or self.batches % 16 == 0
        exclusive = False
        while batch and attempt < self._max_attempts:
            attempt += 1
            try:
                results = self._record(batch, optimistic=optimistic, exclusive=exclusive)
            except _Abandoned as abandoned:
                batch = abandoned.claimed  # waiters gave up before the write: drop them, re-decide
                attempt -= 1
                continue
            except _GroupRejected as rejected:
                _settle(rejected.group.future, error=rejected.error)
                batch = [p for p in batch if p is not rejected.group]
                attempt -= 1  # a refused group is not a lost race
                continue
            except IntegrityError as e:
                if optimistic:
                    # A cached room was written elsewhere meanwhile, or a message was a redelivery:
                    # decide again on state read from the store (not a lost race).
                    log.debug("inbound batch of %s: optimistic attempt refused: %s", len(batch), e)
                    self._optimism *= 0.9
                    optimistic = False
                    attempt -= 1
                    continue
                log.info("inbound batch of %s lost a race (attempt %s): %s", len(batch), attempt, e)
                # Another process keeps writing these rooms (e.g. two API processes, few busy rooms):
                # deciding again may lose again, and again. From the second lost race on, the batch
                # is decided under the store's write lock: nobody writes between its read and its write.
                exclusive = attempt >= EXCLUSIVE_AFTER_LOST_RACES
                continue
            except (DeadlinePassed, OperationalError, InterfaceError) as e:
                # The database is locked, slow or gone: the transaction did not commit (or, if the
                # connection died during COMMIT, the dedup keys answer the retry as a duplicate).
                self.last_failure = time.monotonic()
                log.warning("inbound batch of %s not recorded, database unavailable: %s", len(batch), e)
                for pending in batch:
                    _settle(pending.future, error=Unavailable("the message store is unavailable; retry later"))
                return
            except Exception as e:
                if len(batch) > 1:
                    # Isolate the culprit: every other group still gets recorded.
                    for pending in batch:
                        self._commit([pending])
                    return
                if isinstance(e, HistoryUnreadable):  # the store's data, not a bug here: no traceback
                    log.error("inbound group not recorded: %s", e)
                else:
                    log.exception("inbound group failed")
                _settle(batch[0].future, error=e)
                return
            self.last_success = time.monotonic()
            self.batches += 1
            if optimistic:
                self._optimism = 0.9 * self._optimism + 0.1
            with _wakes_deferred():
                for pending, result in zip(batch, results, strict=True):
                    _settle(pending.future, result=result)
            return
        # Not recorded, and not for a reason of its own: the sender retries (the retry is recorded once).
        log.warning("inbound batch of %s not recorded after %s attempts", len(batch), attempt)
        for pending in batch:
            _settle(pending.future, error=Unavailable("could not record the message after repeated conflicts; retry later"))

    def _record(
        self, batch: Sequence[_Group], *, optimistic: bool = False, exclusive: bool = False
    ) -> list[list[FactResult]]:
        """Decide the batch and write it; `exclusive`: both under the store's write lock."""
        deadline = min(p.deadline for p in batch)
        writing: BatchDecision | None = None
        try:
            with self._store.exclusive(deadline) if exclusive else contextlib.nullcontext():
                decision = BatchDecision(
                    self._store, [fact for group in batch for fact in group.items], optimistic=optimistic)
                out: list[list[FactResult]] = []
                for pending in batch:
                    try:
                        out.append([decision.decide(account, fact) for account, fact in pending.items])
                    except DomainError as e:
                        raise _GroupRejected(pending, e) from e
                # Claim every group for this transaction: from here on its waiter cannot give up, and a
                # group whose waiter already gave up is never written.
                claimed = [p for p in batch if p.future.running() or p.future.set_running_or_notify_cancel()]
                if len(claimed) < len(batch):
                    raise _Abandoned(claimed)
                if decision.rooms or decision.dedup_keys or decision.statuses or decision.parked:
                    writing = decision
                    self._store.save(*decision.rooms.values(), dedup_keys=decision.dedup_keys,
                                     statuses=decision.statuses, parked=decision.parked, deadline=deadline)
        except (OperationalError, InterfaceError, DeadlinePassed):
            # The connection died, maybe during COMMIT (a retry that then ran out of time says so
            # too: only a lost connection is retried): ask what was recorded. (Before the save,
            # nothing was written.)
            if writing is None or not self._committed_anyway(writing):
                raise
            log.warning("the connection died during COMMIT but the batch of %s was recorded", len(batch))
        # Hand the rooms back to the store's cache: the next batch reads only what is newer than them.
        # (After a failure they are not: the next attempt reads them afresh.)
        self._store.cache(decision.owned_rooms())
        return out

    def _committed_anyway(self, decision: BatchDecision) -> bool:
        """Whether a write whose connection died (maybe during COMMIT) committed after all.

        The batch's dedup and status keys are written in the same transaction as its events, so
        they tell: all there → committed (answer 202, not a 503 the sender would retry); none →
        not. If the database cannot even be asked, the answer is 503 and the one window remains
        where a message answered 503 was recorded: its retry is then answered as a duplicate.
        """
        give_up = time.monotonic() + COMMIT_CHECK_S
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._all_keys_recorded(decision)
            except Exception as e:  # still unreachable: the outcome stays unknown, answered 503
                log.info("could not tell whether the batch committed (attempt %s): %s", attempt, e)
                if time.monotonic() >= give_up:
                    break
                time.sleep(0.01 if attempt < 25 else 0.2)
        log.warning("could not tell whether a batch of %s facts committed: answered 503", len(decision.dedup_keys))
        return False

    def _all_keys_recorded(self, decision: BatchDecision) -> bool:
        if decision.dedup_keys:
            keys = [(k.channel_account_id, k.key) for k in decision.dedup_keys]
            found = self._store.recorded_dedup_keys(keys)
            return all(
                (k.channel_account_id, k.key) in found
                and found[(k.channel_account_id, k.key)].room_version == k.room_version
                for k in decision.dedup_keys
            )
        statuses = [(s.channel_account_id, s.status_key) for s in decision.statuses]
        return bool(statuses) and set(statuses) <= self._store.recorded_statuses(statuses)


class _Abandoned(Exception):
    """Some waiters gave up before their group was written: re-decide the batch without them."""

    def __init__(self, claimed: list[_Group]) -> None:
        super().__init__(f"{len(claimed)} groups left")
        self.claimed = claimed


async def _until_done(future: Future[Any], timeout: float) -> bool:
    """Wait on the running loop until `future` (settled by another thread) is done or `timeout` passes."""
    if future.done():
        return True
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    def wake_from_thread(_: Future[Any]) -> None:
        deferred: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] | None = getattr(_deferred, "wakes", None)
        if deferred is not None:  # settled by a committer settling its whole batch: woken with the others
            deferred.append((loop, wake))
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(wake)

    future.add_done_callback(wake_from_thread)
    timer = loop.call_later(timeout, wake)
    try:
        await woken
    finally:
        timer.cancel()
    return future.done()


_deferred = threading.local()


@contextlib.contextmanager
def _wakes_deferred() -> Iterator[None]:
    """Wake the event loops waiting on the futures settled in this block (by this thread) once
    per loop, at the block's end, instead of once per future.

    A wake-up per waiter wrote to the loop's self-pipe once per message: each write released the
    GIL to the woken loop while the committer still had the rest of its batch to settle, so the
    next batch started later. Woken together, a batch costs one wake-up per loop.
    """
    _deferred.wakes = wakes = []
    try:
        yield
    finally:
        _deferred.wakes = None
        by_loop: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}
        for loop, wake in wakes:
            by_loop.setdefault(loop, []).append(wake)
        for loop, woken in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(_wake_all, woken)


def _wake_all(wakes: list[Callable[[], None]]) -> None:
    for wake in wakes:
        wake()


def _settle(future: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    """Give a waiter its outcome unless it has one already (a waiter that gave up cancelled it)."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        log.info("inbound waiter gave up before its outcome arrived")


class BatchDecision:
    """One attempt at a batch: decides every fact on fresh state and collects what to write.

    A dedup key per fact makes it recorded once however often it is delivered: the channel
    message id for a message, prefixed keys for an echo, an edit or a removal.
    """

    def __init__(
        self, store: EventStore, facts: Sequence[tuple[AccountInfo, RecordableFact]], *, optimistic: bool = False
    ) -> None:
        self.store = store
        # Everything the batch reads, at once: its dedup keys, its status keys and the rooms it may
        # write (not a query per fact). Only an edit or removal of a recorded message needs a
        # second read, for the room the dedup key names.
        #
        # `optimistic`, for a batch of inbound messages only: no dedup keys are read and the rooms
        # this process wrote last are taken from its cache as they are (only the others are read),
        # so a batch of known rooms is written without a read. The store's keys catch what that
        # misses: a redelivered message violates its dedup key, a room written elsewhere meanwhile
        # the events' version key; the save then fails with IntegrityError and the caller decides
        # again, not optimistically. (Statuses, echoes, edits and removals are decided on what is
        # recorded, so their batches are always read.)
        room_ids = _rooms_to_read(facts)
        self.optimistic = optimistic and all(isinstance(fact, InboundMessage) for _, fact in facts)
        state = store.read_batch(
            () if self.optimistic else {(account.id, key) for account, fact in facts for key in _dedup_lookups(fact)},
            {(account.id, fact.status_key) for account, fact in facts if isinstance(fact, DeliveryStatus)},
            room_ids, trust_cache=self.optimistic,
        )
        self.seen: dict[tuple[str, str], RecordedFact] = state.recorded
        self.known_statuses = state.statuses
        self._loaded = state.rooms
        self._prefetched = set(room_ids)
        originals = {UUID(original.room_id) for account, fact in facts if isinstance(fact, MessageEdit | MessageRemoval)
                     and (original := self.seen.get((account.id, fact.channel_message_id))) is not None}
        if originals - self._prefetched:
            self._loaded.update(store.rooms_for_update(originals - self._prefetched))
            self._prefetched |= originals
        self.rooms: dict[UUID, Room] = {}
        self.dedup_keys: list[DedupKey] = []
        self.statuses: list[DeliveryStatusRecord] = []
        self.parked: list[ParkedEcho] = []

    def owned_rooms(self) -> dict[UUID, Room]:
        """Every room this decision read or opened (to hand back to the store's cache once saved)."""
        return {**self._loaded, **self.rooms}

    def _load(self, room_id: UUID) -> Room | None:
        """A room as the batch read it (None: it does not exist); one it did not read, from the store."""
        if room_id in self._loaded:
            return self._loaded[room_id]
        if room_id in self._prefetched:
            return None
        try:
            room: Room = self.store.get(room_id)
        except NotFound:
            return None
        return room

    def decide(self, account: AccountInfo, fact: RecordableFact) -> FactResult:
        if isinstance(fact, InboundMessage):
            return self._message(account, fact, key=fact.channel_message_id)
        if isinstance(fact, OutboundEcho):
            return self._echo(account, fact)
        if isinstance(fact, MessageEdit):
            return self._edit(account, fact)
        if isinstance(fact, MessageRemoval):
            return self._removal(account, fact)
        return self._status(account, fact)

    def _message(self, account: AccountInfo, msg: InboundMessage, *, key: str, also: str | None = None) -> FactResult:
        if (account.id, key) in self.seen:
            return self._duplicate(account, key)
        room = self._room(account, msg.channel, msg.contact_id, msg.post_id, contact_name=msg.contact_name,
                          contact_phone=msg.contact_phone, contact_handle=msg.contact_handle)
        message_id = room.receive(
            channel_message_id=msg.channel_message_id, text=msg.text, sent_at=msg.sent_at,
            contact_name=msg.contact_name, kind=msg.kind, attachments=msg.attachments,
        )
        room_id = self._remember(account, key, room, message_id)
        if also is not None:
            self._remember(account, also, room, message_id)
        return FactResult(FactOutcome.RECORDED, room_id, room.version, message_id)

    def _echo(self, account: AccountInfo, echo: OutboundEcho) -> FactResult:
        key = f"echo:{echo.channel_message_id}"
        if (account.id, key) in self.seen:
            return self._duplicate(account, key)
        room = self._room(account, echo.channel, echo.contact_id, None)
        ours = room.message_for_channel_id(echo.channel_message_id)
        if ours is None and echo.correlation_id and room.delivery_status(echo.correlation_id) is not None:
            # The echo names one of our staff replies in its metadata (the sender put our message
            # id there) and overtook the sender's record of Meta's answer: that reply, now sent
            # with this mid. The sender's later ReplyDeliveryAccepted with the same mid records
            # nothing; a reply already further along (delivered, read, failed) keeps its status.
            ours = echo.correlation_id
            room.record_delivery_status(
                channel_message_id=echo.channel_message_id, status=SENT, at=echo.sent_at, message_id=ours,
            )
        if ours is not None:
            # Meta's echo of a reply the sender delivered (its mid or our message id is recorded
            # on the reply): that message, not a second one.
            self._remember(account, key, room, ours)
            return FactResult(FactOutcome.DUPLICATE, str(room.id), room.version, ours)
        if should_park(room, echo):
            # Maybe the echo of a reply whose answer the sender has not recorded yet: decided
            # later (inbox/usecases/echoes.py), kept durably until then.
            self.parked.append(park(account.id, room, echo))
            return FactResult(FactOutcome.PARKED, str(room.id), room.version)
        message_id = room.record_echo(
            channel_message_id=echo.channel_message_id, text=echo.text, sent_at=echo.sent_at,
            sender_id=echo.sender_id, kind=echo.kind, attachments=echo.attachments,
        )
        self._remember(account, key, room, message_id)
        return FactResult(FactOutcome.RECORDED, str(room.id), room.version, message_id)

    def _edit(self, account: AccountInfo, edit: MessageEdit) -> FactResult:
        key = f"edit:{edit.channel_message_id}:{edit.edit_key}"
        if (account.id, key) in self.seen:
            return self._duplicate(account, key)
        original = self.seen.get((account.id, edit.channel_message_id))
        if original is None:
            # Never recorded (sent before the account was connected, or the "add" was lost):
            # the edited text is the message as the customer left it.
            msg = InboundMessage(
                channel=edit.channel, channel_account=edit.channel_account, contact_id=edit.contact_id,
                channel_message_id=edit.channel_message_id, text=edit.text, sent_at=edit.edited_at,
                contact_name=edit.contact_name, contact_handle=edit.contact_handle, post_id=edit.post_id,
            )
            return self._message(account, msg, key=edit.channel_message_id, also=key)
        room = self._existing_room(original.room_id)
        room.edit_message(message_id=original.message_id, channel_message_id=edit.channel_message_id,
                          text=edit.text, edited_at=edit.edited_at)
        self._remember(account, key, room, original.message_id)
        return FactResult(FactOutcome.RECORDED, str(room.id), room.version, original.message_id)

    def _removal(self, account: AccountInfo, removal: MessageRemoval) -> FactResult:
        key = f"remove:{removal.channel_message_id}"
        if (account.id, key) in self.seen:
            return self._duplicate(account, key)
        original = self.seen.get((account.id, removal.channel_message_id))
        if original is None:
            return FactResult(FactOutcome.IGNORED, reason="the removed message was never recorded")
        room = self._existing_room(original.room_id)
        room.remove_message(message_id=original.message_id, channel_message_id=removal.channel_message_id,
                            removed_at=removal.removed_at)
        self._remember(account, key, room, original.message_id)
        return FactResult(FactOutcome.RECORDED, str(room.id), room.version, original.message_id)

    def _status(self, account: AccountInfo, status: DeliveryStatus) -> FactResult:
        key = (account.id, status.status_key)
        if key in self.known_statuses:
            return FactResult(FactOutcome.DUPLICATE)
        self.known_statuses.add(key)
        self.statuses.append(DeliveryStatusRecord(
            channel_account_id=account.id, status_key=status.status_key, channel=status.channel.value,
            status=status.status, channel_message_id=status.channel_message_id,
            recipient_id=status.recipient_id, occurred_at=status.occurred_at,
            errors=[dict(e) for e in status.errors],
        ))
        self._status_on_room(account, status)
        return FactResult(FactOutcome.RECORDED)

    def _status_on_room(self, account: AccountInfo, status: DeliveryStatus) -> None:
        """A status of a reply we sent becomes a DeliveryStatusChanged on its room (issue 9)."""
        if status.status not in ("sent", "delivered", "read", "failed") or not status.channel_message_id:
            return
        if not status.recipient_id or status.channel.is_comment:
            return
        room_id = room_id_for(account.org_id, account.id, status.recipient_id, None)
        room = self.rooms.get(room_id) or self._load(room_id)
        if room is None:
            return  # a message the business sent before this account was connected
        if room.message_for_channel_id(status.channel_message_id) is None and status.correlation_id is None:
            return
        error = dict(status.errors[0]) if status.errors else None
        if room.record_delivery_status(
            channel_message_id=status.channel_message_id, status=status.status, at=status.occurred_at, error=error,
            message_id=status.correlation_id,
        ):
            self.rooms[room_id] = room

    # ---- helpers
    def _duplicate(self, account: AccountInfo, key: str) -> FactResult:
        recorded = self.seen[(account.id, key)]
        return FactResult(FactOutcome.DUPLICATE, recorded.room_id, recorded.room_version, recorded.message_id)

    def _remember(self, account: AccountInfo, key: str, room: Room, message_id: str) -> str:
        """Record the fact's dedup key; returns the room's id as text."""
        room_id = str(room.id)
        self.seen[(account.id, key)] = RecordedFact(room_id, message_id, room.version)
        self.dedup_keys.append(DedupKey(account.id, key, room_id, message_id, room.version))
        return room_id

    def _room(
        self, account: AccountInfo, channel: Channel, contact_id: str, post_id: str | None, **contact: str | None
    ) -> Room:
        room_id = room_id_for(account.org_id, account.id, contact_id, post_id)
        room = self.rooms.get(room_id) or self._load(room_id)
        if room is None:
            room = Room.open(
                org_id=account.org_id, channel=channel, channel_account_id=account.id,
                channel_account=account.external_id, contact_id=contact_id, post_id=post_id, **contact,
            )
        self.rooms[room_id] = room
        return room

    def _existing_room(self, room_id: str) -> Room:
        rid = UUID(room_id)
        room = self.rooms.get(rid) or self._load(rid)
        if room is None:
            raise NotFound(f"aggregate {rid} not found")
        self.rooms[rid] = room
        return room


def validate_fact(account: AccountInfo, fact: RecordableFact) -> None:
    """The one edge check of an inbound fact, before it is queued: every rule deciding it would
    check (the limits of `domain.limits`, the room's content rules), on the fact alone, so one bad
    fact is refused up front (`InvalidCommand`) instead of failing its whole batch."""
    if account.channel != fact.channel:
        raise InvalidCommand(
            f"channel account {account.external_id!r} is a {account.channel.value} account, not {fact.channel.value}"
        )
    if isinstance(fact, DeliveryStatus):
        if not fact.status or not fact.status_key:
            raise InvalidCommand("a delivery status needs a status and a key")
        _check_aware(fact.occurred_at, "occurred_at")
        check_text(fact.status, "status", MAX_ID)
        check_text(fact.status_key, "status key", MAX_MESSAGE_ID)
        for value, name in ((fact.channel_message_id, "message id"), (fact.recipient_id, "recipient id")):
            if value is not None:
                check_text(value, name, MAX_MESSAGE_ID)
        for error in fact.errors:
            check_json(error, "error")
        return
    if isinstance(fact, InboundMessage) and not fact.contact_id:
        raise InvalidCommand("contact id is required")
    if not fact.channel_message_id:
        raise InvalidCommand("message id is required")
    check_identifier(fact.channel_message_id, "message id", MAX_MESSAGE_ID)
    if fact.contact_id is not None and not isinstance(fact, InboundMessage):
        check_identifier(fact.contact_id, "contact id")
    if isinstance(fact, InboundMessage):
        _check_aware(fact.sent_at, "sent_at")
        check_contact(fact.contact_id, fact.contact_name, fact.contact_phone, fact.contact_handle)
        check_text(fact.text, "text")
        check_content(fact.kind, fact.attachments)
        _check_post(fact.channel, fact.post_id, "messages")
    elif isinstance(fact, OutboundEcho):
        if not fact.contact_id or not fact.sender_id:
            raise InvalidCommand("an echo needs the contact and the sender")
        if fact.channel.is_comment:
            raise InvalidCommand(f"{fact.channel.value} has no message echoes")
        _check_aware(fact.sent_at, "sent_at")
        check_identifier(fact.sender_id, "sender id")
        check_text(fact.text, "text")
        check_content(fact.kind, fact.attachments)
    elif isinstance(fact, MessageEdit):
        _check_aware(fact.edited_at, "edited_at")
        if not fact.contact_id or not fact.edit_key:
            raise InvalidCommand("an edit needs the contact and an edit key")
        check_contact(fact.contact_id, fact.contact_name, None, fact.contact_handle)
        check_text(fact.text, "text")
        check_text(fact.edit_key, "edit key", MAX_MESSAGE_ID)
        _check_post(fact.channel, fact.post_id, "edits")
    else:
        _check_aware(fact.removed_at, "removed_at")


def _check_aware(at: datetime, name: str) -> None:
    if at.tzinfo is None:
        raise InvalidCommand(f"{name} must carry a timezone")
    check_moment(at, name, datetime.now(UTC))


def _check_post(channel: Channel, post_id: str | None, what: str) -> None:
    if post_id is not None:
        check_identifier(post_id, "post_id")
    if channel.is_comment and not post_id:
        raise InvalidCommand(f"{channel.value} {what} need a post_id")
    if not channel.is_comment and post_id:
        raise InvalidCommand(f"{channel.value} is a direct-message channel; post_id is not allowed")


def _rooms_to_read(facts: Sequence[tuple[AccountInfo, RecordableFact]]) -> list[UUID]:
    """The rooms a batch's facts name by their contact (an edit or removal of a recorded message
    names its room through the dedup key instead: read after those)."""
    ids: list[UUID] = []
    for account, fact in facts:
        if isinstance(fact, DeliveryStatus):
            if fact.channel_message_id and fact.recipient_id and not fact.channel.is_comment:
                ids.append(room_id_for(account.org_id, account.id, fact.recipient_id, None))
        elif isinstance(fact, InboundMessage | MessageEdit) and fact.contact_id:
            ids.append(room_id_for(account.org_id, account.id, fact.contact_id, fact.post_id))
        elif isinstance(fact, OutboundEcho) and fact.contact_id:
            ids.append(room_id_for(account.org_id, account.id, fact.contact_id, None))
    return ids


def _dedup_lookups(fact: RecordableFact) -> list[str]:
    """The `inbound_dedup` keys deciding this fact needs to know about."""
    if isinstance(fact, InboundMessage):
        return [fact.channel_message_id]
    if isinstance(fact, OutboundEcho):
        return [f"echo:{fact.channel_message_id}"]
    if isinstance(fact, MessageEdit):
        return [fact.channel_message_id, f"edit:{fact.channel_message_id}:{fact.edit_key}"]
    if isinstance(fact, MessageRemoval):
        return [fact.channel_message_id, f"remove:{fact.channel_message_id}"]
    return []
