"""The write side against the real PostgreSQL: group commit, dedup, optimistic concurrency, snapshots."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError

from domain.channels import Channel
from domain.errors import AlreadyExists, Conflict, NotAllowed, NotFound
from domain.room import Room
from domain.staff import Actor, Role
from inbox.config import Settings
from inbox.adapters.eventstore import EVENTS_TABLE, EventStore
from inbox.bootstrap import Container
from inbox.usecases.channel_accounts import AccountInfo
from inbox.usecases.ingest import InboundMessage
from tests.integration.locks import commits_held
from tests.support import query

pytestmark = pytest.mark.integration

ADMIN = Actor("admin1", "org1", Role.ADMIN)
SPV = Actor("spv1", "org1", Role.SUPERVISOR)
AGENT_A = Actor("agent-a", "org1", Role.AGENT)
AGENT_B = Actor("agent-b", "org1", Role.AGENT)


@pytest.fixture
def account(container: Container) -> AccountInfo:
    return container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="Sales WA")


def message(contact: str, mid: str, text: str = "halo") -> InboundMessage:
    return InboundMessage(
        channel=Channel.WHATSAPP_CLOUD, channel_account="pn-1", contact_id=contact, channel_message_id=mid,
        text=text, sent_at=datetime.now(UTC), contact_name=f"Contact {contact}",
    )


def test_registering_the_same_channel_account_twice_is_a_conflict(container: Container, account: AccountInfo) -> None:
    with pytest.raises(AlreadyExists):
        container.accounts.register(
            Actor("x", "org2", Role.ADMIN), channel="whatsapp_cloud", external_id="pn-1", name="again"
        )


def test_only_admins_register_channel_accounts(container: Container) -> None:
    with pytest.raises(NotAllowed):
        container.accounts.register(SPV, channel="instagram", external_id="ig-1", name="IG")


def test_concurrent_inbound_messages_keep_per_room_order(container: Container, account: AccountInfo) -> None:
    contacts = [f"62812{i:04d}" for i in range(20)]
    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(lambda i: container.inbound.submit(account, message(contacts[i % 20], f"wamid.{i}", f"m{i}")), range(400)))

    assert len({r.message_id for r in results}) == 400
    assert not any(r.duplicate for r in results)
    # Every room's versions are 1..n with no holes, and notification ids follow versions.
    rows = query(
        container.settings,
        "SELECT originator_id, array_agg(originator_version ORDER BY notification_id) FROM inbox_events"
        " WHERE topic LIKE 'domain.room:%%' GROUP BY originator_id",
    )
    assert len(rows) == 20
    for _, versions in rows:
        assert versions == list(range(1, len(versions) + 1))
    assert sum(len(v) for _, v in rows) == 400 + 20  # messages + one RoomOpened per room


def test_inbound_messages_queued_behind_a_commit_share_transactions(
    container: Container, account: AccountInfo, db_settings: Settings
) -> None:
    async def four_hundred_messages() -> None:
        with commits_held(db_settings):
            tasks = [
                asyncio.ensure_future(container.inbound.submit_async(account, message(f"62813{i % 20:04d}", f"wamid.{i}")))
                for i in range(400)
            ]
            await asyncio.sleep(0)  # each task has run up to its wait: all 400 messages are queued
        await asyncio.gather(*tasks)

    before = container.inbound.batches
    asyncio.run(four_hundred_messages())

    # The commit that was waiting for the lock, then the queue in batches of at most 256.
    assert container.inbound.batches - before <= 3


def test_the_same_channel_message_is_recorded_once(container: Container, account: AccountInfo) -> None:
    first = container.inbound.submit(account, message("628111", "wamid.same"))
    again = container.inbound.submit(account, message("628111", "wamid.same", text="redelivered"))

    assert not first.duplicate and again.duplicate
    assert (again.room_id, again.message_id, again.version) == (first.room_id, first.message_id, first.version)
    assert query(container.settings, "SELECT count(*) FROM inbox_events WHERE topic LIKE '%%MessageReceived'")[0][0] == 1


def test_duplicates_racing_in_two_processes_are_recorded_once(db_settings: Settings, account: AccountInfo) -> None:
    other = Container.build(db_settings)  # a second API process: its own pools, cache and committer
    try:
        mine = Container.build(db_settings)
        try:
            barrier = threading.Barrier(2)

            def send(c: Container) -> bool:
                barrier.wait(timeout=30)
                return c.inbound.submit(account, message("628222", "wamid.race")).duplicate

            with ThreadPoolExecutor(2) as pool:
                outcomes = sorted(pool.map(send, [mine, other]))
        finally:
            mine.close()
    finally:
        other.close()
    assert outcomes == [False, True]
    assert query(db_settings, "SELECT count(*) FROM inbound_dedup")[0][0] == 1


def test_inbound_messages_from_two_processes_to_one_room_never_fail(db_settings: Settings, account: AccountInfo) -> None:
    a, b = Container.build(db_settings), Container.build(db_settings)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(
                lambda i: (a if i % 2 else b).inbound.submit(account, message("628333", f"wamid.p{i}")), range(60)
            ))
    finally:
        a.close()
        b.close()
    assert sorted(r.version for r in results) == list(range(2, 62))


def test_two_concurrent_assigns_one_wins_the_other_conflicts(db_settings: Settings, account: AccountInfo) -> None:
    a, b = Container.build(db_settings), Container.build(db_settings)
    try:
        room_id = a.inbound.submit(account, message("628444", "wamid.1")).room_id
        # Both processes have loaded the room at the same version before either decides.
        room_a, room_b = a.event_store.repository.get(room_id), b.event_store.repository.get(room_id)
        room_a.assign(SPV, agent_id="agent-a")
        room_b.assign(SPV, agent_id="agent-b")
        a.event_store.save(room_a)
        with pytest.raises(Exception) as lost:
            b.event_store.save(room_b)
        assert "IntegrityError" in type(lost.value).__name__
        # Through the service the loser gets Conflict (HTTP 409), never a silent overwrite.
        with pytest.raises(Conflict):
            b.rooms.assign(SPV, room_id, agent_id="agent-b", expected_version=room_b.version - 1)
        assert b.event_store.repository.get(room_id).assignee == "agent-a"
    finally:
        a.close()
        b.close()


def test_racing_staff_commands_through_the_service_yield_one_conflict(container: Container, account: AccountInfo) -> None:
    room_id = container.inbound.submit(account, message("628555", "wamid.1")).room_id
    barrier = threading.Barrier(2)
    original_save = container.event_store.save

    def save_after_both_decided(*objs: object, **kw: object) -> object:
        barrier.wait(timeout=5)  # both commands decided on the same version
        return original_save(*objs, **kw)

    container.event_store.save = save_after_both_decided  # type: ignore[method-assign]

    def attempt(agent: str) -> str:
        try:
            container.rooms.assign(SPV, room_id, agent_id=agent)
            return "ok"
        except Conflict:
            return "409"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(attempt, ["agent-a", "agent-b"]))
    assert outcomes == ["409", "ok"]


def test_staff_command_that_only_raced_a_customer_message_is_redecided(container: Container, account: AccountInfo) -> None:
    room_id = container.inbound.submit(account, message("628666", "wamid.1")).room_id
    original_save = container.event_store.save
    raced = {"done": False}

    def customer_writes_first(*objs: object, **kw: object) -> object:
        if not raced["done"] and any(isinstance(o, Room) for o in objs):
            raced["done"] = True
            container.inbound.submit(account, message("628666", "wamid.2"))
        return original_save(*objs, **kw)

    container.event_store.save = customer_writes_first  # type: ignore[method-assign]
    result = container.rooms.reply(AGENT_A, room_id, text="Halo, ada yang bisa dibantu?")

    room = container.event_store.repository.get(room_id)
    assert raced["done"] and room.version == result.version == 5  # opened, msg1, msg2, assigned, sent
    assert room.assignee == "agent-a"


def test_expected_version_mismatch_is_a_conflict(container: Container, account: AccountInfo) -> None:
    result = container.inbound.submit(account, message("628777", "wamid.1"))
    with pytest.raises(Conflict):
        container.rooms.resolve(SPV, result.room_id, expected_version=result.version - 1)
    assert container.rooms.resolve(SPV, result.room_id, expected_version=result.version).version == result.version + 1


def test_rooms_of_another_organization_are_not_found(container: Container, account: AccountInfo) -> None:
    room_id = container.inbound.submit(account, message("628888", "wamid.1")).room_id
    outsider = Actor("spv9", "org9", Role.SUPERVISOR)
    with pytest.raises(NotFound):
        container.rooms.assign(outsider, room_id, agent_id="x")
    with pytest.raises(NotFound):
        container.rooms.resolve(outsider, "not-a-uuid")


def test_agent_cannot_act_on_a_room_assigned_to_another_agent(container: Container, account: AccountInfo) -> None:
    room_id = container.inbound.submit(account, message("628999", "wamid.1")).room_id
    container.rooms.assign(AGENT_A, room_id, agent_id="agent-a")
    with pytest.raises(NotFound):  # invisible to agent B, so no existence leak
        container.rooms.reply(AGENT_B, room_id, text="hi")


def test_long_room_history_is_loaded_from_a_snapshot(db_settings: Settings, container: Container, account: AccountInfo) -> None:
    for i in range(120):
        container.inbound.submit(account, message("62800", f"wamid.s{i}"))
    room_id = container.inbound.submit(account, message("62800", "wamid.last")).room_id

    snapshots = query(db_settings, "SELECT max(originator_version) FROM inbox_snapshots WHERE originator_id = %s", (room_id,))
    assert snapshots[0][0] == 100  # taken every 50 events

    cold = Container.build(db_settings)  # no aggregate cache
    try:
        room = cold.event_store.repository.get(room_id)
        assert room.version == 122 and room.message_count == 121
        assert room == container.event_store.repository.get(room_id)
    finally:
        cold.close()


def test_a_snapshot_is_the_state_the_rooms_events_fold_to_at_its_version(
    db_settings: Settings, container: Container, account: AccountInfo
) -> None:
    """Snapshots are taken from the room just saved: the same state, key for key, as the library's
    own snapshot of the room folded from its stored events (whatever commands led there)."""
    room_id = container.inbound.submit(account, message("62801", "wamid.f0")).room_id
    for i in range(1, 120):
        if i % 30 == 10:
            container.rooms.assign(SPV, room_id, agent_id=f"agent-{i}")
        elif i % 30 == 20:
            container.rooms.resolve(SPV, room_id)
        elif i % 30 == 25:
            container.rooms.reply(SPV, room_id, text=f"reply {i}")
        else:
            container.inbound.submit(account, message("62801", f"wamid.f{i}", f"text {i} ✓"))
    app = container.event_store
    stored = query(db_settings, "SELECT originator_version, state FROM inbox_snapshots WHERE originator_id = %s"
                   " ORDER BY originator_version", (UUID(room_id),))
    assert [version for version, _ in stored] == [50, 100]
    for version, state in stored:
        room = None
        for event in app.events.get(UUID(room_id), lte=version):
            room = event.mutate(room)
        folded = app.mapper.to_stored_event(Room.Snapshot.take(room)).state
        ours, theirs = (app.mapper.transcoder.decode(bytes(s)) for s in (state, folded))
        ours.pop("timestamp"), theirs.pop("timestamp")
        assert list(ours.items()) == list(theirs.items())


def test_a_save_that_carries_a_room_across_the_snapshot_interval_snapshots_it_as_saved(
    db_settings: Settings, container: Container, account: AccountInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several events of one room in one save (a batch of webhooks) can step over the multiple
    of the interval: the room is snapshotted as saved, at its own version, not read back from
    the store at the multiple (a query, a fold and a transaction per snapshot in the committer)."""
    room_id = UUID(container.inbound.submit(account, message("62802", "wamid.c0")).room_id)
    for i in range(1, 48):
        container.inbound.submit(account, message("62802", f"wamid.c{i}"))
    app = container.event_store
    room = app.repository.get(room_id)
    assert room.version == 49
    for i in range(48, 51):
        room.receive(channel_message_id=f"wamid.c{i}", text=f"text {i}", sent_at=datetime.now(UTC))

    def read_back(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the snapshot was read back from the store")

    monkeypatch.setattr(app, "take_snapshot", read_back)
    app.save(room)

    stored = query(db_settings, "SELECT originator_version, state FROM inbox_snapshots WHERE originator_id = %s",
                   (room_id,))
    assert [version for version, _ in stored] == [52]
    folded = None
    for event in app.events.get(room_id):
        folded = event.mutate(folded)
    ours, theirs = (app.mapper.transcoder.decode(bytes(s)) for s in (
        stored[0][1], app.mapper.to_stored_event(Room.Snapshot.take(folded)).state))
    ours.pop("timestamp"), theirs.pop("timestamp")
    assert ours == theirs


def test_a_cached_room_written_meanwhile_elsewhere_is_brought_up_to_date(
    db_settings: Settings, container: Container, account: AccountInfo
) -> None:
    """The ingest's room cache is only a starting point: another process's message and a staff
    command written since are folded in before the next message is decided on the room."""
    first = container.inbound.submit(account, message("628777", "wamid.c1"))  # the room is now cached here
    other = Container.build(db_settings)  # a second API process
    try:
        other.inbound.submit(account, message("628777", "wamid.c2"))
        other.rooms.assign(SPV, first.room_id, agent_id="agent-a")
    finally:
        other.close()
    third = container.inbound.submit(account, message("628777", "wamid.c3"))
    assert third.version == 5  # opened, c1, c2, assigned, c3: no conflict, no lost event
    room = container.event_store.repository.get(first.room_id)
    assert room.message_count == 3 and room.assignee == "agent-a"


def test_rooms_for_update_reads_snapshots_and_later_events_like_the_repository(
    db_settings: Settings, container: Container, account: AccountInfo
) -> None:
    ids = [container.inbound.submit(account, message(contact, f"wamid.{contact}.{i}")).room_id
           for contact, count in (("628881", 73), ("628882", 3)) for i in range(count)]
    long_room, short_room = UUID(ids[0]), UUID(ids[-1])
    unknown = UUID(int=7)
    cold = Container.build(db_settings)  # nothing cached: the long room starts from its snapshot at 50
    try:
        rooms = EventStore(cold.event_store).rooms_for_update([long_room, short_room, unknown])
        assert set(rooms) == {long_room, short_room}
        for room_id, room in rooms.items():
            assert room == container.event_store.repository.get(room_id)
        assert rooms[long_room].version == 74 and rooms[short_room].version == 4
    finally:
        cold.close()


@pytest.mark.parametrize("handed_back", [True, False], ids=["cached-after-a-save", "cached-as-read"])
def test_a_save_that_lost_a_race_leaves_the_cached_room_as_it_was_lent(
    db_settings: Settings, container: Container, account: AccountInfo, handed_back: bool
) -> None:
    """The store lends a copy of the room it keeps: what an attempt decided on it and failed to
    save is not in the room the next attempt gets, and what was written meanwhile is."""
    room_id = UUID(container.inbound.submit(account, message("628999", "wamid.l1")).room_id)
    store = EventStore(container.event_store)
    read = store.rooms_for_update([room_id])  # read at version 2
    if handed_back:
        store.cache(read)
        lent = store.rooms_for_update([room_id])[room_id]
    else:
        lent = read[room_id]
    lent.receive(channel_message_id="wamid.lost", text="decided, never saved", sent_at=datetime.now(UTC))
    other = Container.build(db_settings)  # a second API process writes the room meanwhile
    try:
        other.inbound.submit(account, message("628999", "wamid.l2", text="from elsewhere"))
    finally:
        other.close()
    with pytest.raises(IntegrityError):
        store.save(lent)
    again = store.rooms_for_update([room_id])[room_id]
    assert again == container.event_store.repository.get(room_id)
    assert again.version == 3 and again.message_count == 2
    assert "wamid.lost" not in again.inbound_ids.values()


def _batch_read_plan_without_statistics(store: EventStore, wanted: list[UUID]) -> dict[str, Any]:
    """The plan (EXPLAIN, JSON) of the batch read of `wanted` rooms on a store of 100,000 events of
    4,000 rooms, committed and never analyzed (as a new store, or autovacuum off)."""
    with store.app.connection() as conn:
        conn.execute(
            f"INSERT INTO {store.app.table(EVENTS_TABLE)} (originator_id, originator_version, topic, state)"
            " SELECT md5(r::text)::uuid, v, 'domain.room:Room.MessageReceived', '\\x7b7d'::bytea"
            " FROM generate_series(1, 4000) r, generate_series(1, 25) v"
        )
        conn.commit()
        plan = conn.execute(
            "EXPLAIN (FORMAT JSON) " + store._rooms_sql, (wanted, wanted, [0] * len(wanted))).fetchone()["QUERY PLAN"]
    return (json.loads(plan) if isinstance(plan, str) else plan)[0]


def test_the_batch_read_of_rooms_looks_each_room_up_by_its_key_even_without_statistics(
    container: Container,
) -> None:
    """A store not analyzed yet (new, or autovacuum off) must not turn a batch's read of a few
    rooms into a scan of every event: as a plain join it did (the planner's default guess is ~200
    distinct rooms), 14 ms a batch on a bench's store and 2.1 s on 12 M events."""
    wanted = [UUID(bytes=bytes(16)), *(UUID(hex=f"{i:032x}") for i in range(1, 9))]
    plan = _batch_read_plan_without_statistics(EventStore(container.event_store), wanted)

    def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for child in node.get("Plans", ()):
            yield from nodes(child)

    scans = {n["Node Type"] for n in nodes(plan["Plan"]) if n.get("Relation Name") == EVENTS_TABLE}
    assert scans and "Seq Scan" not in scans, scans


def test_a_large_batch_read_of_rooms_is_not_compiled_first(container: Container) -> None:
    """On a store without statistics, the read of a batch's 500 rooms is estimated far above its
    cost (~170 events a room), past `jit_above_cost`: compiling it took 130 ms for a read that
    runs in 3 ms ("resolve all expired", which reads its chunks of 500 rooms so, ran at a third
    of its speed in the bench). The write side's sessions do not compile."""
    wanted = [UUID(hex=f"{i:032x}") for i in range(500)]
    plan = _batch_read_plan_without_statistics(EventStore(container.event_store), wanted)
    assert plan["Plan"]["Total Cost"] > 100_000, "the test's read no longer looks expensive to the planner"
    assert "JIT" not in plan, plan["JIT"]
