"""What the use cases need from the outside world, as ports (`typing.Protocol`).

The use cases depend on these, never on an adapter: `inbox.adapters.eventstore.EventStore` is the
PostgreSQL implementation, `inbox.adapters.memory_store.MemoryEventStore` the in-memory one the
use-case tests run on. A save that lost an optimistic-concurrency race (an aggregate's version or
a dedup key recorded meanwhile) raises `eventsourcing.persistence.IntegrityError` and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from domain.room import Room


@dataclass(frozen=True)
class DedupKey:
    """One inbound fact recorded once: `key` is the channel message id of a message, or a prefixed key
    ("echo:…", "edit:…:…", "remove:…") of the other facts; it points at what recording it did."""

    channel_account_id: str
    key: str
    room_id: str
    message_id: str
    room_version: int


@dataclass
class BatchState:
    """What deciding a batch of inbound facts reads (`EventStore.read_batch`)."""

    recorded: dict[tuple[str, str], RecordedFact]  # of the dedup keys asked for, the recorded ones
    statuses: set[tuple[str, str]]  # of the status keys asked for, the recorded ones
    rooms: dict[UUID, Room]  # of the rooms asked for, the existing ones (as `rooms_for_update` gives them)


@dataclass(frozen=True)
class RecordedFact:
    """What an already recorded dedup key points at."""

    room_id: str
    message_id: str
    room_version: int


@dataclass(frozen=True)
class DeliveryStatusRecord:
    """A channel's delivery status of one of the business's messages (sent/delivered/read/failed)."""

    channel_account_id: str
    status_key: str
    channel: str
    status: str
    channel_message_id: str | None
    recipient_id: str | None
    occurred_at: datetime
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ParkedEcho:
    """An echo of the business's own message whose mid no reply of its room knows yet, set aside
    (Instagram echoes carry no id of ours: it may be the echo of a reply the sender is still
    recording). `fact` is the echo as `channels.facts.OutboundEcho` fields (JSON-able)."""

    channel_account_id: str
    channel_message_id: str
    room_id: str
    fact: dict[str, Any]
    parked_at: datetime | None = None  # set by the store


class DeadlinePassed(Exception):
    """A write with a deadline was not attempted (again): its deadline has passed. Nothing was written."""


class EventStore(Protocol):
    """Aggregates (rooms, channel accounts) stored as events, with the inbound dedup keys and delivery
    statuses written in the same transaction as the events."""

    def get(self, aggregate_id: UUID) -> Any:
        """The aggregate; `domain.errors.NotFound` when there is none, `results.HistoryUnreadable` when a
        room's stored events cannot be decoded (every read of rooms below says so the same way)."""

    def save(
        self, *aggregates: Any, dedup_keys: Sequence[DedupKey] = (),
        statuses: Sequence[DeliveryStatusRecord] = (), deadline: float | None = None,
        parked: Sequence[ParkedEcho] = (), unparked: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Save every aggregate's new events, the dedup keys and the statuses atomically; with them,
        park echoes (`parked`; one parked already is kept) and drop parked ones (`unparked`:
        (channel account id, channel message id) pairs).

        IntegrityError (nothing written) when an aggregate or a dedup key was written meanwhile; a
        status recorded before is skipped. `deadline` (a `time.monotonic()` value) bounds the write:
        past it, `DeadlinePassed` or the store's OperationalError, and nothing was written.
        """

    def recorded_dedup_keys(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RecordedFact]:
        """Of these (channel account id, key) pairs, the ones recorded already."""

    def recorded_statuses(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Of these (channel account id, status key) pairs, the ones recorded already."""

    def events_after(self, aggregate_id: UUID, version: int) -> Sequence[Any]:
        """The aggregate's events with a version above `version`, in order."""

    def cache(self, aggregates: Mapping[UUID, Any]) -> None:
        """Keep these just-saved rooms for `rooms_for_update` (a no-op without a cache); the caller
        must not change them afterwards."""

    def read_batch(
        self, dedup_keys: Iterable[tuple[str, str]], status_keys: Iterable[tuple[str, str]], room_ids: Iterable[UUID],
        *, trust_cache: bool = False,
    ) -> BatchState:
        """`recorded_dedup_keys`, `recorded_statuses` and `rooms_for_update` at once (one round trip).

        `trust_cache`: cached rooms are given as they are, not checked against the store (a room
        written elsewhere since then makes `save` raise IntegrityError)."""

    def rooms_for_update(self, room_ids: Iterable[UUID]) -> dict[UUID, Room]:
        """The current state of several rooms at once, for a batch of writes; ids of rooms that do not
        exist are left out. The caller owns the objects (it may change them; saving them hands them
        back with `cache`). Up to date when read; a write by someone else after that makes `save`
        raise IntegrityError."""

    def parked_echoes(self, limit: int) -> list[ParkedEcho]:
        """The oldest parked echoes, at most `limit`."""

    def can_write(self) -> bool:
        """Could a write commit now? Writes nothing, takes a couple of seconds at most."""

    def exclusive(self, deadline: float) -> AbstractContextManager[None]:
        """While the block runs, nobody else writes aggregates: this thread's reads are current and
        its one `save` in the block cannot lose a race for an aggregate's version.

        For a batch that keeps losing races to another process (the store's write lock, taken before
        the reads instead of at the write). Holding it stops every other writer, so keep the block
        short. Waiting for it ends at `deadline` (a `time.monotonic()` value) with the store's
        OperationalError, nothing written; a block that does not `save` writes nothing.
        """


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class LabelledCounter(Protocol):
    def labels(self, *values: str) -> Counter: ...


class WebhookMetrics(Protocol):
    """The counters the webhook use case keeps (`inbox.adapters.metrics.Metrics` has them)."""

    webhook_unknown_accounts: LabelledCounter
    webhook_facts: LabelledCounter
    webhook_rejected: LabelledCounter
    webhook_repairs: LabelledCounter


# ---- outbound delivery (issue 9) ----------------------------------------------------------------
@dataclass(frozen=True)
class AccountCredentials:
    """What an admin sees of a connected account: never the token itself."""

    account_id: str
    org_id: str
    channel: str
    external_id: str
    name: str
    has_access_token: bool
    needs_reauth: bool
    reauth_reason: str | None
    has_app_secret: bool = False


class Credentials(Protocol):
    """Channel-account secrets (access token, app secret), sealed at rest by the adapter; never in
    events, logs, answers or on the topic."""

    def record(self, account_id: str, *, org_id: str, channel: str, external_id: str, name: str,
               access_token: str | None, app_secret: str | None = None) -> None:
        """Create or update the account's row; a given token replaces the old one and clears
        needs_reauth; a given app secret replaces the old one. None keeps what is there."""

    def register(self, account_id: str, *, org_id: str, channel: str, external_id: str, name: str,
                 access_token: str | None, app_secret: str | None) -> None:
        """The whole row of an account being registered, written BEFORE its Registered event (so a
        failure in between leaves no account without its secrets); a row there already (a
        registration that failed after it) is overwritten. Only under `exclusive(account_id)`."""

    def exclusive(self, account_id: str) -> AbstractContextManager[None]:
        """Registrations of one account id one at a time, across processes."""

    def app_secret(self, account_id: str) -> str | None:
        """The account's own Meta app secret (webhook signatures), or None: the global app's."""

    def access_token(self, account_id: str) -> str | None:
        """The plaintext token for a send, or None (none given, disconnected)."""

    def mark_needs_reauth(self, account_id: str, reason: str) -> None: ...

    def needs_reauth(self, account_id: str) -> bool: ...

    def list(self, org_id: str) -> list[AccountCredentials]: ...

    def get(self, account_id: str) -> AccountCredentials | None: ...

    def disconnect(self, account_id: str) -> None:
        """Forget the token; sends of the account fail as disconnected."""


@dataclass(frozen=True)
class AccessCheck:
    granted: bool
    retry: bool = False  # Meta could not be asked (rate limit, down): try again later
    reason: str | None = None


class AccessChecker(Protocol):
    def check(self, channel: str, external_id: str, access_token: str) -> AccessCheck:
        """Can this token read the phone number / Page / Instagram account? (a GET on the object id)"""
