"""The use cases' event store in memory (`inbox.usecases.ports.EventStore`), for use-case tests.

Events live in the eventsourcing library's POPO persistence (plain Python objects); dedup keys and
delivery statuses in dicts. One lock makes a save atomic: a dedup key or an aggregate version
recorded meanwhile raises the library's `IntegrityError` and writes nothing, as on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError, OperationalError

from domain.errors import NotFound
from domain.room import Room
from inbox.adapters.eventstore import SNAPSHOT_INTERVAL, AggregateStore
from inbox.usecases.ports import BatchState, DedupKey, DeliveryStatusRecord, ParkedEcho, RecordedFact


class MemoryApplication(Application):
    """Rooms and channel accounts as events, in memory (the same name and snapshots as on PostgreSQL)."""

    name = "Inbox"
    snapshotting_intervals = {Room: SNAPSHOT_INTERVAL}


class MemoryEventStore(AggregateStore):
    def __init__(self) -> None:
        self.app = MemoryApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.dedup: dict[tuple[str, str], DedupKey] = {}
        self.statuses: dict[tuple[str, str], DeliveryStatusRecord] = {}
        self.parked: dict[tuple[str, str], ParkedEcho] = {}
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # parked_at of a parked echo
        self.writable = True  # False: `can_write` says no, `save` fails as a database that is down would
        self._lock = threading.RLock()

    def save(
        self, *aggregates: Any, dedup_keys: Sequence[DedupKey] = (),
        statuses: Sequence[DeliveryStatusRecord] = (), deadline: float | None = None,
        parked: Sequence[ParkedEcho] = (), unparked: Sequence[tuple[str, str]] = (),
    ) -> None:
        with self._lock:
            if not self.writable:
                raise OperationalError("the in-memory store is set unwritable")
            keys = [(k.channel_account_id, k.key) for k in dedup_keys]
            taken = [k for k in keys if k in self.dedup]
            if taken or len(set(keys)) < len(keys):
                raise IntegrityError(f"dedup keys recorded already: {taken or keys}")
            self.app.save(*aggregates)  # IntegrityError (nothing written) when a version was taken
            for k in dedup_keys:
                self.dedup[(k.channel_account_id, k.key)] = k
            for s in statuses:
                self.statuses.setdefault((s.channel_account_id, s.status_key), s)
            for p in parked:
                self.parked.setdefault((p.channel_account_id, p.channel_message_id),
                                       replace(p, parked_at=self.clock()))
            for key in unparked:
                self.parked.pop(key, None)

    def recorded_dedup_keys(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RecordedFact]:
        with self._lock:
            return {
                key: RecordedFact(k.room_id, k.message_id, k.room_version)
                for key in keys if (k := self.dedup.get(key)) is not None
            }

    def recorded_statuses(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        with self._lock:
            return {key for key in keys if key in self.statuses}

    def events_after(self, aggregate_id: UUID, version: int) -> Sequence[Any]:
        return list(self.app.events.get(aggregate_id, gt=version))

    def parked_echoes(self, limit: int) -> list[ParkedEcho]:
        with self._lock:
            return sorted(self.parked.values(), key=lambda p: p.parked_at or datetime.min.replace(tzinfo=UTC))[:limit]

    def cache(self, aggregates: Mapping[UUID, Any]) -> None:
        """No cache: every `get` folds the stored events."""

    def read_batch(
        self, dedup_keys: Iterable[tuple[str, str]], status_keys: Iterable[tuple[str, str]], room_ids: Iterable[UUID],
        *, trust_cache: bool = False,
    ) -> BatchState:
        return BatchState(self.recorded_dedup_keys(dedup_keys), self.recorded_statuses(status_keys),
                          self.rooms_for_update(room_ids))

    def rooms_for_update(self, room_ids: Iterable[UUID]) -> dict[UUID, Room]:
        rooms = {}
        for room_id in room_ids:
            try:
                rooms[room_id] = self.get(room_id)
            except NotFound:
                pass
        return rooms

    def can_write(self) -> bool:
        return self.writable

    @contextmanager
    def exclusive(self, deadline: float) -> Iterator[None]:
        """The lock every `save` takes, held for the whole block (re-entrant: the block's save takes it again)."""
        with self._lock:
            yield
