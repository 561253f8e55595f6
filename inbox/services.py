"""Use cases of the write side: load → decide (domain) → save → return primitives.

Inbound messages go through `InboundCommitter`, which commits concurrent messages together in
one PostgreSQL transaction (group commit). Staff commands use optimistic concurrency: a
command that raced with another staff command on the same room gets `Conflict` (HTTP 409).
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from domain.channel_account import ChannelAccount, channel_account_id_for
from domain.channels import Channel
from domain.errors import AlreadyExists, Conflict, DomainError, InvalidCommand, NotAllowed, NotFound
from domain.room import Room, room_id_for
from domain.staff import Actor, Role
from inbox.eventstore import InboxApplication

log = logging.getLogger(__name__)

T = TypeVar("T")

# Events a customer (not staff) causes: a staff command that raced only with these is re-decided.
_CUSTOMER_EVENTS = (Room.MessageReceived, Room.RoomReopened)


# ---- commands and results -------------------------------------------------------------------
@dataclass(frozen=True)
class InboundMessage:
    channel: Channel
    channel_account: str  # the channel's external id: phone_number_id, page id, IG account id
    contact_id: str
    channel_message_id: str
    text: str
    sent_at: datetime
    contact_name: str | None = None
    contact_phone: str | None = None
    contact_handle: str | None = None
    post_id: str | None = None


@dataclass(frozen=True)
class InboundResult:
    room_id: str
    version: int
    message_id: str
    duplicate: bool


@dataclass(frozen=True)
class AccountInfo:
    id: str
    org_id: str
    channel: Channel
    external_id: str
    name: str
    app_secret: str | None


@dataclass(frozen=True)
class CommandResult:
    room_id: str
    version: int
    message_id: str | None = None


# ---- channel accounts -----------------------------------------------------------------------
class ChannelAccounts:
    """Registers accounts and finds them by the channel's external id (cached: accounts are immutable)."""

    def __init__(self, app: InboxApplication) -> None:
        self._app = app
        self._cache: dict[UUID, AccountInfo] = {}
        self._lock = threading.Lock()

    def register(
        self, actor: Actor, *, channel: str, external_id: str, name: str, app_secret: str | None = None
    ) -> AccountInfo:
        if actor.role != Role.ADMIN:
            raise NotAllowed("only admins register channel accounts")
        account = ChannelAccount.register(
            org_id=actor.org_id, channel=Channel.parse(channel), external_id=external_id, name=name,
            app_secret=app_secret,
        )
        try:
            self._app.save(account)
        except IntegrityError:
            raise AlreadyExists(
                f"{channel} account {external_id!r} is already registered"
            ) from None
        return self._info(account)

    def find(self, channel: Channel, external_id: str) -> AccountInfo | None:
        account_id = channel_account_id_for(channel.value, external_id)
        with self._lock:
            cached = self._cache.get(account_id)
        if cached is not None:
            return cached
        try:
            account: ChannelAccount = self._app.repository.get(account_id)
        except AggregateNotFoundError:
            return None
        info = self._info(account)
        with self._lock:
            self._cache[account_id] = info
        return info

    @staticmethod
    def _info(account: ChannelAccount) -> AccountInfo:
        return AccountInfo(
            id=str(account.id), org_id=account.org_id, channel=Channel(account.channel),
            external_id=account.external_id, name=account.name, app_secret=account.app_secret,
        )


# ---- inbound messages: group commit ---------------------------------------------------------
@dataclass
class _Pending:
    account: AccountInfo
    message: InboundMessage
    future: Future[InboundResult]


_STOP = object()


class InboundCommitter:
    """Records inbound messages; concurrent callers share one transaction.

    One thread drains the queue and commits everything waiting as one `app.save(...)`, so a
    burst of N messages costs one transaction instead of N. Messages for the same room are
    applied in arrival order to the same aggregate, so per-room ordering holds. A batch that
    loses an optimistic-concurrency race (another process wrote one of its rooms, or recorded
    one of its channel message ids) is re-decided from fresh state: inbound messages never
    fail for concurrency.
    """

    def __init__(self, app: InboxApplication, *, max_batch: int = 256, max_attempts: int = 10) -> None:
        self._app = app
        self._max_batch = max_batch
        self._max_attempts = max_attempts
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="inbound-committer", daemon=True)
        self._thread.start()
        self.batches = 0
        self.messages = 0

    def submit(self, account: AccountInfo, message: InboundMessage, timeout: float = 30.0) -> InboundResult:
        _validate_inbound(account, message)
        future: Future[InboundResult] = Future()
        self._queue.put(_Pending(account, message, future))
        return future.result(timeout=timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Pending]) -> None:
        for attempt in range(1, self._max_attempts + 1):
            try:
                results = self._record(batch)
            except IntegrityError as e:
                log.info("inbound batch of %s lost a race (attempt %s): %s", len(batch), attempt, e)
                continue
            except Exception as e:
                if len(batch) > 1:
                    # Isolate the culprit: every other message still gets recorded.
                    for pending in batch:
                        self._commit([pending])
                    return
                log.exception("inbound message failed")
                batch[0].future.set_exception(e)
                return
            self.batches += 1
            self.messages += len(batch)
            for pending, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
            return
        for pending in batch:
            pending.future.set_exception(Conflict("could not record the message after repeated conflicts"))

    def _record(self, batch: Sequence[_Pending]) -> list[InboundResult | BaseException]:
        seen = _recorded_already(self._app, batch)
        rooms: dict[UUID, Room] = {}
        dedup_keys: list[tuple[str, str, str, str, int]] = []
        results: list[InboundResult | BaseException] = []
        for pending in batch:
            account, msg = pending.account, pending.message
            key = (account.id, msg.channel_message_id)
            if key in seen:
                room_id, message_id, version = seen[key]
                results.append(InboundResult(room_id, version, message_id, duplicate=True))
                continue
            room_id = room_id_for(account.org_id, account.id, msg.contact_id, msg.post_id)
            try:
                room = rooms.get(room_id) or _load_or_open(self._app, room_id, account, msg)
                message_id = room.receive(
                    channel_message_id=msg.channel_message_id, text=msg.text, sent_at=msg.sent_at,
                    contact_name=msg.contact_name,
                )
            except DomainError as e:
                results.append(e)
                continue
            rooms[room_id] = room
            seen[key] = (str(room_id), message_id, room.version)
            dedup_keys.append((account.id, msg.channel_message_id, str(room_id), message_id, room.version))
            results.append(InboundResult(str(room_id), room.version, message_id, duplicate=False))
        if rooms:
            self._app.save(*rooms.values(), dedup_keys=dedup_keys)
        return results


def _validate_inbound(account: AccountInfo, msg: InboundMessage) -> None:
    if account.channel != msg.channel:
        raise InvalidCommand(
            f"channel account {account.external_id!r} is a {account.channel.value} account, not {msg.channel.value}"
        )
    if not msg.contact_id:
        raise InvalidCommand("contact id is required")
    if not msg.channel_message_id:
        raise InvalidCommand("message id is required")
    if msg.sent_at.tzinfo is None:
        raise InvalidCommand("message sent_at must carry a timezone")
    if msg.channel.is_comment and not msg.post_id:
        raise InvalidCommand(f"{msg.channel.value} messages need a post_id")
    if not msg.channel.is_comment and msg.post_id:
        raise InvalidCommand(f"{msg.channel.value} is a direct-message channel; post_id is not allowed")


def _recorded_already(
    app: InboxApplication, batch: Sequence[_Pending]
) -> dict[tuple[str, str], tuple[str, str, int]]:
    keys = list({(p.account.id, p.message.channel_message_id) for p in batch})
    with app.connection() as conn:
        rows = conn.execute(
            "SELECT d.channel_account_id::text AS a, d.channel_message_id AS m, d.room_id::text AS r,"
            " d.message_id::text AS mid, d.room_version AS v"
            f" FROM {app.table('inbound_dedup')} d JOIN unnest(%s::uuid[], %s::text[]) AS k(a, m)"
            " ON d.channel_account_id = k.a AND d.channel_message_id = k.m",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
    return {(r["a"], r["m"]): (r["r"], r["mid"], r["v"]) for r in rows}


def _load_or_open(app: InboxApplication, room_id: UUID, account: AccountInfo, msg: InboundMessage) -> Room:
    try:
        return app.repository.get(room_id)
    except AggregateNotFoundError:
        return Room.open(
            org_id=account.org_id, channel=msg.channel, channel_account_id=account.id,
            channel_account=account.external_id, contact_id=msg.contact_id,
            contact_name=msg.contact_name, contact_phone=msg.contact_phone,
            contact_handle=msg.contact_handle, post_id=msg.post_id,
        )


# ---- staff commands -------------------------------------------------------------------------
class RoomCommands:
    """Assign, reply, resolve: optimistic concurrency against other staff commands."""

    def __init__(self, app: InboxApplication, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._app = app
        self._clock = clock

    def assign(self, actor: Actor, room_id: str, *, agent_id: str, expected_version: int | None = None) -> CommandResult:
        def decide(room: Room) -> None:
            room.assign(actor, agent_id=agent_id)

        return self._execute(actor, room_id, expected_version, decide)

    def reply(self, actor: Actor, room_id: str, *, text: str, expected_version: int | None = None) -> CommandResult:
        message_id = str(uuid.uuid4())

        def decide(room: Room) -> str:
            room.reply(actor, message_id=message_id, text=text, sent_at=self._clock())
            return message_id

        return self._execute(actor, room_id, expected_version, decide)

    def resolve(
        self, actor: Actor, room_id: str, *, reason: str = "manual", expected_version: int | None = None
    ) -> CommandResult:
        return self._execute(actor, room_id, expected_version, lambda room: room.resolve(actor, reason=reason))

    def _execute(
        self, actor: Actor, room_id: str, expected_version: int | None, decide: Callable[[Room], str | None]
    ) -> CommandResult:
        room = self._load_visible(actor, room_id)
        if expected_version is not None and room.version != expected_version:
            raise Conflict(f"room is at version {room.version}, not {expected_version}; reload and retry")
        for _ in range(5):
            decided_at = room.version
            message_id = decide(room)
            try:
                self._app.save(room)
            except IntegrityError:
                room = self._load_visible(actor, room_id)
                if expected_version is not None or not self._only_customer_events_since(room.id, decided_at):
                    raise Conflict("the room was changed by another command; reload and retry") from None
                continue  # only the customer wrote meanwhile: decide again on fresh state
            return CommandResult(room_id=str(room.id), version=room.version, message_id=message_id)
        raise Conflict("the room is changing too fast; retry")

    def _only_customer_events_since(self, room_id: UUID, version: int) -> bool:
        events = self._app.events.get(room_id, gt=version)
        return all(isinstance(e, _CUSTOMER_EVENTS) for e in events)

    def _load_visible(self, actor: Actor, room_id: str) -> Room:
        try:
            rid = UUID(room_id)
            room: Room = self._app.repository.get(rid)
        except (ValueError, AggregateNotFoundError):
            raise NotFound("room not found") from None
        if not isinstance(room, Room) or not room.is_visible_to(actor):
            raise NotFound("room not found")
        return room

