"""Resolve all expired: rooms the query saw expired are resolved unless they changed since."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from domain.errors import NotAllowed
from domain.room import RESOLVED
from inbox.adapters.memory_store import MemoryEventStore
from inbox.usecases.channel_accounts import AccountInfo
from inbox.usecases.expiry import ExpiredRooms
from inbox.usecases.ingest import InboundCommitter
from tests.usecases.conftest import AGENT_A, SUPERVISOR, message

OLD = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)  # the 24 h reply window closed long ago


class SeenByTheQuery:
    """The room projection's answer, frozen when `see` is called (the projection lags the store)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def see(self, store: MemoryEventStore, *room_ids: str) -> None:
        self.rows = [
            {"id": room_id, "version": store.get(UUID(room_id)).version, "expires_at": OLD + timedelta(days=1, seconds=i)}
            for i, room_id in enumerate(room_ids)
        ]

    def __call__(
        self, org_id: str, *, channels: Sequence[str], statuses: Sequence[str], cutoff: datetime,
        after: tuple[datetime, str] | None, limit: int,
    ) -> list[dict[str, Any]]:
        rows = [r for r in self.rows if after is None or (r["expires_at"], r["id"]) > after]
        return rows[:limit]


@pytest.fixture
def query() -> SeenByTheQuery:
    return SeenByTheQuery()


def old_message(n: int, contact: str) -> Any:
    return message(n, contact=contact, sent_at=OLD + timedelta(seconds=n))


def test_expired_rooms_the_query_saw_are_resolved_as_expired(
    store: MemoryEventStore, committer: InboundCommitter, account: AccountInfo, query: SeenByTheQuery
) -> None:
    rooms = [committer.submit(account, old_message(n, f"6281{n}")).room_id for n in range(3)]
    query.see(store, *rooms)

    result = ExpiredRooms(store, query, chunk_size=2).resolve_expired(SUPERVISOR, include_unassigned=True)

    assert (result.resolved, result.skipped) == (3, 0)
    assert all(store.get(UUID(r)).status == RESOLVED for r in rooms)


def test_a_room_that_changed_after_the_query_saw_it_is_skipped(
    store: MemoryEventStore, committer: InboundCommitter, account: AccountInfo, query: SeenByTheQuery
) -> None:
    changed, unchanged = (committer.submit(account, old_message(n, f"6281{n}")).room_id for n in range(2))
    query.see(store, changed, unchanged)
    committer.submit(account, old_message(5, "62810"))  # late, still expired: but not the room the query saw

    result = ExpiredRooms(store, query).resolve_expired(SUPERVISOR, include_unassigned=True)

    assert (result.resolved, result.skipped) == (1, 1)
    assert store.get(UUID(changed)).status != RESOLVED and store.get(UUID(unchanged)).status == RESOLVED


def test_a_room_no_longer_expired_is_skipped(
    store: MemoryEventStore, committer: InboundCommitter, account: AccountInfo, query: SeenByTheQuery
) -> None:
    room_id = committer.submit(account, message(1)).room_id  # the window is still open
    query.see(store, room_id)

    result = ExpiredRooms(store, query).resolve_expired(SUPERVISOR, include_unassigned=True)

    assert (result.resolved, result.skipped) == (0, 1)


def test_agents_may_not_resolve_expired_rooms(store: MemoryEventStore, query: SeenByTheQuery) -> None:
    with pytest.raises(NotAllowed):
        ExpiredRooms(store, query).resolve_expired(AGENT_A)
