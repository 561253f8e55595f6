"""Use case "Resolve all expired" (SPEC §3 `POST /v1/rooms/resolve-expired`).

Finds the expired rooms with a query on the room projection (never a scan of the event store),
in chunks, and resolves each with reason `expired` — but only if the room has not changed since
the query saw it: the projection's version is the expected version, so a room that received a
new inbound message (or any other event) meanwhile is skipped, never resolved. Each chunk's
rooms are saved in one short transaction; if that transaction loses a race, the chunk is redone
one room at a time so one changed room does not hold back the others. A room whose recorded
events cannot be read (`HistoryUnreadable`) is left as it is and named in the answer; the chunk's
other rooms are then read one at a time and resolved. Repeating the call resolves nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from domain.channels import Channel
from domain.errors import DomainError, NotFound
from domain.room import ASSIGNED, UNASSIGNED, Room, check_may_resolve_expired
from domain.staff import Actor
from inbox.usecases.ports import EventStore
from inbox.usecases.results import HistoryUnreadable

log = logging.getLogger(__name__)

CHUNK_SIZE = 500


class ExpiredRoomFinder(Protocol):
    """One chunk of expired, not resolved rooms in (expires_at, id) order (InboxQueries.expired_rooms)."""

    def __call__(
        self, org_id: str, *, channels: Sequence[str], statuses: Sequence[str], cutoff: datetime,
        after: tuple[datetime, str] | None, limit: int,
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ResolveExpiredResult:
    resolved: int
    skipped: int  # expired per the projection, but changed since (or no longer expired): left alone
    seconds: float
    unreadable: list[str] = field(default_factory=list)  # rooms whose events cannot be read: left alone


class ExpiredRooms:
    def __init__(
        self,
        store: EventStore,
        find: ExpiredRoomFinder,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._store = store
        self._find = find
        self._clock = clock
        self._chunk_size = chunk_size

    def resolve_expired(
        self, actor: Actor, *, channels: Sequence[str] = (), include_unassigned: bool = False
    ) -> ResolveExpiredResult:
        """Resolve every room of `channels` (all direct-message channels when empty) that is expired
        and assigned (and unassigned too when asked), as of now."""
        check_may_resolve_expired(actor)
        parsed = [Channel.parse(c) for c in channels] or list(Channel)
        expiring = sorted({c.value for c in parsed if c.reply_window is not None})  # comments never expire
        statuses = [ASSIGNED, UNASSIGNED] if include_unassigned else [ASSIGNED]
        started = time.perf_counter()
        cutoff = self._clock()
        found = resolved = 0
        unreadable: list[str] = []
        after: tuple[datetime, str] | None = None
        while expiring:
            chunk = self._find(
                actor.org_id, channels=expiring, statuses=statuses, cutoff=cutoff, after=after,
                limit=self._chunk_size,
            )
            if not chunk:
                break
            after = (chunk[-1]["expires_at"], str(chunk[-1]["id"]))
            found += len(chunk)
            seen = [(str(c["id"]), int(c["version"])) for c in chunk]
            resolved += self._resolve_chunk(actor, cutoff, seen, unreadable)
        skipped = found - resolved - len(unreadable)
        result = ResolveExpiredResult(resolved, skipped, time.perf_counter() - started, unreadable)
        log.info(
            "org %s: resolved %s expired rooms (%s skipped as changed, %s unreadable) in %.2fs",
            actor.org_id, result.resolved, result.skipped, len(unreadable), result.seconds,
        )
        return result

    def _resolve_chunk(
        self, actor: Actor, cutoff: datetime, seen: list[tuple[str, int]], unreadable: list[str]
    ) -> int:
        """Resolves what it can of one chunk; returns how many, adds the rooms it cannot read to `unreadable`."""
        try:
            loaded = self._store.rooms_for_update(UUID(room_id) for room_id, _ in seen)
        except HistoryUnreadable as e:
            log.error("a chunk of %s expired rooms holds an unreadable room (%s); resolving one at a time",
                      len(seen), e)
            return self._resolve_one_by_one(actor, cutoff, seen, unreadable)
        rooms = [
            room for room_id, version in seen
            if (room := self._decide(actor, cutoff, room_id, version, loaded.get(UUID(room_id))))
        ]
        if not rooms:
            return 0
        try:
            self._store.save(*rooms)
        except IntegrityError:
            log.info("a chunk of %s expired rooms raced with other writes; resolving one at a time", len(rooms))
        else:
            # Recorded state now, for the committer's next batch of these rooms: the read cached
            # them as they were, and a stale cached room costs the next inbound batch a re-decision.
            self._store.cache({room.id: room for room in rooms})
            return len(rooms)
        return self._resolve_one_by_one(actor, cutoff, seen, unreadable)

    def _resolve_one_by_one(
        self, actor: Actor, cutoff: datetime, seen: list[tuple[str, int]], unreadable: list[str]
    ) -> int:
        done = 0
        for room_id, version in seen:
            try:
                room = self._decide(actor, cutoff, room_id, version)
            except HistoryUnreadable as e:
                log.error("expired room left as it is: %s", e)
                unreadable.append(room_id)
                continue
            if room is None:
                continue
            try:
                self._store.save(room)
            except IntegrityError:
                continue  # changed between load and save: it is not the room the query saw
            self._store.cache({room.id: room})
            done += 1
        return done

    def _decide(
        self, actor: Actor, cutoff: datetime, room_id: str, expected_version: int, loaded: Room | None = None
    ) -> Room | None:
        """The room, resolved as expired in memory, if it is still exactly what the query saw."""
        try:
            room: Room = loaded or self._store.get(UUID(room_id))
        except NotFound:
            return None
        if room.version != expected_version or not room.is_visible_to(actor) or not room.is_expired(cutoff):
            return None
        try:
            room.resolve(actor, reason="expired")
        except DomainError as e:
            log.warning("expired room %s not resolved: %s", room_id, e)
            return None
        return room
