"""Staff commands on a room (assign, reply, resolve) on the in-memory event store."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import pytest

from domain.errors import Conflict, NotFound
from domain.room import ASSIGNED, RESOLVED, Room
from domain.staff import Actor, Role
from inbox.adapters.memory_store import MemoryEventStore
from inbox.usecases.channel_accounts import AccountInfo
from inbox.usecases.ingest import InboundCommitter
from inbox.usecases.room_commands import RoomCommands
from tests.usecases.conftest import AGENT_A, SUPERVISOR, message


@pytest.fixture
def room_id(committer: InboundCommitter, account: AccountInfo) -> str:
    return committer.submit(account, message(1)).room_id


def test_a_reply_to_an_unassigned_room_assigns_it_to_the_replying_agent(
    rooms: RoomCommands, room_id: str, store: MemoryEventStore
) -> None:
    result = rooms.reply(AGENT_A, room_id, text="Halo, ada yang bisa dibantu?")

    room = store.get(UUID(room_id))
    assert (room.status, room.assignee, room.version) == (ASSIGNED, "agent-a", result.version)
    assert result.message_id is not None


def test_a_supervisor_assigns_a_room_to_an_agent(rooms: RoomCommands, room_id: str, store: MemoryEventStore) -> None:
    result = rooms.assign(SUPERVISOR, room_id, agent_id="agent-b")

    assert store.get(UUID(room_id)).assignee == "agent-b" and result.version == 3


def test_resolving_a_room_closes_it(rooms: RoomCommands, room_id: str, store: MemoryEventStore) -> None:
    rooms.resolve(SUPERVISOR, room_id)

    assert store.get(UUID(room_id)).status == RESOLVED


def test_a_room_of_another_org_or_no_room_at_all_is_not_found(rooms: RoomCommands, room_id: str) -> None:
    with pytest.raises(NotFound):
        rooms.assign(Actor("spv9", "org9", Role.SUPERVISOR), room_id, agent_id="agent-a")
    with pytest.raises(NotFound):
        rooms.assign(SUPERVISOR, "not-a-uuid", agent_id="agent-a")
    with pytest.raises(NotFound):
        rooms.assign(SUPERVISOR, "00000000-0000-0000-0000-000000000000", agent_id="agent-a")


def test_a_command_expecting_an_older_version_is_a_conflict(rooms: RoomCommands, room_id: str) -> None:
    rooms.assign(SUPERVISOR, room_id, agent_id="agent-a")

    with pytest.raises(Conflict, match="version 3, not 2"):
        rooms.assign(SUPERVISOR, room_id, agent_id="agent-b", expected_version=2)


def test_two_staff_commands_racing_on_one_room_one_wins_the_other_conflicts(
    rooms: RoomCommands, room_id: str, store: MemoryEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    both_decided = threading.Barrier(2)
    real_save = store.save

    def save_after_both_decided(*aggregates: Any, **kwargs: Any) -> None:
        both_decided.wait(timeout=5)
        real_save(*aggregates, **kwargs)

    monkeypatch.setattr(store, "save", save_after_both_decided)

    def attempt(agent: str) -> str:
        try:
            rooms.assign(SUPERVISOR, room_id, agent_id=agent)
            return "ok"
        except Conflict:
            return "conflict"

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(attempt, ["agent-a", "agent-b"])) == ["conflict", "ok"]


def test_a_staff_command_that_raced_only_a_customer_message_is_decided_again(
    rooms: RoomCommands, room_id: str, store: MemoryEventStore, committer: InboundCommitter,
    account: AccountInfo, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_save = store.save
    raced: list[bool] = []

    def customer_writes_first(*aggregates: Any, **kwargs: Any) -> None:
        if not raced and any(isinstance(a, Room) for a in aggregates) and "dedup_keys" not in kwargs:
            raced.append(True)
            committer.submit(account, message(2))
        real_save(*aggregates, **kwargs)

    monkeypatch.setattr(store, "save", customer_writes_first)

    result = rooms.reply(AGENT_A, room_id, text="Halo")

    room = store.get(UUID(room_id))
    assert raced and room.version == result.version == 5  # opened, msg 1, msg 2, assigned, sent
    assert room.assignee == "agent-a"


def test_a_staff_command_with_an_expected_version_that_raced_a_customer_is_a_conflict(
    rooms: RoomCommands, room_id: str, store: MemoryEventStore, committer: InboundCommitter,
    account: AccountInfo, monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_save = store.save

    def customer_writes_first(*aggregates: Any, **kwargs: Any) -> None:
        if "dedup_keys" not in kwargs:
            monkeypatch.setattr(store, "save", real_save)
            committer.submit(account, message(2))
        real_save(*aggregates, **kwargs)

    monkeypatch.setattr(store, "save", customer_writes_first)

    with pytest.raises(Conflict):
        rooms.assign(SUPERVISOR, room_id, agent_id="agent-b", expected_version=2)
    assert store.get(UUID(room_id)).assignee is None



def test_a_reply_racing_only_with_a_delivery_outcome_is_decided_again(
    rooms: RoomCommands, room_id: str, store: MemoryEventStore
) -> None:
    """The sender records outcomes on the room while agents reply: that is no staff conflict."""
    from datetime import UTC, datetime

    from inbox.usecases.delivery import Deliveries

    first = rooms.reply(AGENT_A, room_id, text="one")
    raced = []

    def clock() -> datetime:  # called while deciding: the sender records an outcome meanwhile
        if not raced:
            raced.append(Deliveries(store).accepted(room_id, first.message_id or "", "wamid.out-1"))
        return datetime.now(UTC)

    second = RoomCommands(store, clock=clock).reply(AGENT_A, room_id, text="two")

    assert raced == [True]
    room = store.get(UUID(room_id))
    assert room.delivery_status(first.message_id) == "sent" and room.delivery_status(second.message_id) == "pending"
