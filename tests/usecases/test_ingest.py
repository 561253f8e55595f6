"""Recording inbound channel facts (group commit) on the in-memory event store."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import pytest

from channels.facts import DeliveryStatus, MessageEdit, MessageRemoval, OutboundEcho
from domain.channels import Channel
from domain.errors import InvalidCommand
from domain.room import Room
from inbox.adapters.memory_store import MemoryEventStore
from inbox.usecases.channel_accounts import AccountInfo
from inbox.usecases.ingest import InboundCommitter, check_each
from inbox.usecases.results import FactOutcome, Unavailable
from tests.usecases.conftest import T0, WA_ACCOUNT, message


def room_events(store: MemoryEventStore, room_id: str) -> list[object]:
    return list(store.app.events.get(UUID(room_id)))


def stored_room_events(store: MemoryEventStore) -> int:
    notes = store.app.recorder.select_notifications(start=None, limit=1000)
    return sum(n.topic.startswith("domain.room:") for n in notes)


def test_a_first_message_opens_a_room_with_the_message(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    result = committer.submit(account, message(1))

    assert not result.duplicate and result.version == 2
    opened, received = room_events(store, result.room_id)
    assert isinstance(opened, Room.RoomOpened) and isinstance(received, Room.MessageReceived)


def test_a_redelivered_message_is_a_duplicate_of_the_first(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    first = committer.submit(account, message(1))

    again = committer.submit(account, message(1))

    assert again.duplicate and (again.room_id, again.message_id, again.version) == (
        first.room_id, first.message_id, first.version)
    assert len(room_events(store, first.room_id)) == 2


def test_messages_of_one_room_in_one_group_keep_their_order(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    results = committer.submit_group([(account, message(n)) for n in range(1, 6)])

    assert [r.version for r in results] == [2, 3, 4, 5, 6]
    received = [e for e in room_events(store, results[0].room_id) if isinstance(e, Room.MessageReceived)]
    assert [e.channel_message_id for e in received] == [f"wamid.{n}" for n in range(1, 6)]


def test_an_invalid_fact_refuses_its_whole_group_before_anything_is_written(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    naive = message(2, sent_at=T0.replace(tzinfo=None))

    with pytest.raises(InvalidCommand, match="timezone"):
        committer.submit_group([(account, message(1)), (account, naive)])

    assert store.dedup == {} and stored_room_events(store) == 0


def test_facts_checked_one_by_one_are_recorded_as_a_group_without_the_refused_ones(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    naive = message(2, sent_at=T0.replace(tzinfo=None))

    checked, refused = check_each([(account, message(1)), (account, naive), (account, message(3))])
    results = committer.submit_group(checked)

    assert [(fact.channel_message_id, "timezone" in str(error)) for _, fact, error in refused] == [("wamid.2", True)]
    assert [r.version for r in results] == [2, 3]
    assert sorted(store.dedup) == [(account.id, "wamid.1"), (account.id, "wamid.3")]


def test_a_fact_the_domain_refuses_fails_its_group_and_records_nothing_of_it(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    refused = message(2, kind="")  # passes the edge check; Room.receive refuses it

    with pytest.raises(InvalidCommand, match="kind"):
        committer.submit_group([(account, message(1)), (account, refused)])

    assert stored_room_events(store) == 0
    assert committer.submit(account, message(1)).duplicate is False


def test_an_echo_is_recorded_once_in_the_customers_room(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    room_id = committer.submit(account, message(1)).room_id
    echo = OutboundEcho(Channel.WHATSAPP_CLOUD, WA_ACCOUNT, "62811", "wamid.out.1", "sudah dikirim",
                        T0 + timedelta(minutes=1), sender_id=WA_ACCOUNT)

    first, again = committer.submit_group([(account, echo)]), committer.submit_group([(account, echo)])

    assert (first[0].outcome, first[0].room_id) == (FactOutcome.RECORDED, room_id)
    assert again[0].outcome is FactOutcome.DUPLICATE
    assert sum(isinstance(e, Room.MessageSent) for e in room_events(store, room_id)) == 1


def test_an_edit_of_a_recorded_message_is_recorded_against_that_message(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    original = committer.submit(account, message(1))
    edit = MessageEdit(Channel.WHATSAPP_CLOUD, WA_ACCOUNT, "62811", "wamid.1", "pesan yang benar",
                       T0 + timedelta(minutes=1), edit_key="e1")

    [result] = committer.submit_group([(account, edit)])

    assert (result.outcome, result.message_id) == (FactOutcome.RECORDED, original.message_id)
    assert isinstance(room_events(store, original.room_id)[-1], Room.MessageEdited)


def test_an_edit_of_a_message_never_recorded_records_the_edited_message(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    edit = MessageEdit(Channel.WHATSAPP_CLOUD, WA_ACCOUNT, "62811", "wamid.9", "teks akhir",
                       T0 + timedelta(minutes=1), edit_key="e1")

    [result] = committer.submit_group([(account, edit)])

    received = room_events(store, str(result.room_id))[-1]
    assert isinstance(received, Room.MessageReceived) and received.text == "teks akhir"
    assert committer.submit(account, message(9)).duplicate


def test_a_removal_of_a_message_never_recorded_is_ignored(
    committer: InboundCommitter, account: AccountInfo
) -> None:
    removal = MessageRemoval(Channel.WHATSAPP_CLOUD, WA_ACCOUNT, "62811", "wamid.404", T0)

    [result] = committer.submit_group([(account, removal)])

    assert result.outcome is FactOutcome.IGNORED and result.reason


def test_a_removal_of_a_recorded_message_is_recorded_once(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    original = committer.submit(account, message(1))
    removal = MessageRemoval(Channel.WHATSAPP_CLOUD, WA_ACCOUNT, "62811", "wamid.1", T0 + timedelta(minutes=1))

    first, again = committer.submit_group([(account, removal)]), committer.submit_group([(account, removal)])

    assert [first[0].outcome, again[0].outcome] == [FactOutcome.RECORDED, FactOutcome.DUPLICATE]
    assert sum(isinstance(e, Room.MessageRemoved) for e in room_events(store, original.room_id)) == 1


def test_a_delivery_status_is_recorded_once(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    status = DeliveryStatus(Channel.WHATSAPP_CLOUD, WA_ACCOUNT, "read", T0, "read:wamid.out.1",
                            channel_message_id="wamid.out.1", recipient_id="62811")

    first, again = committer.submit_group([(account, status)]), committer.submit_group([(account, status)])

    assert [first[0].outcome, again[0].outcome] == [FactOutcome.RECORDED, FactOutcome.DUPLICATE]
    [record] = store.statuses.values()
    assert (record.status, record.channel_message_id, record.channel) == ("read", "wamid.out.1", "whatsapp_cloud")


def test_a_fact_for_an_account_of_another_channel_is_refused(
    committer: InboundCommitter, account: AccountInfo
) -> None:
    with pytest.raises(InvalidCommand, match="account"):
        committer.submit(account, message(1, channel=Channel.INSTAGRAM))


def test_a_store_that_cannot_write_answers_unavailable_and_records_nothing(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    store.writable = False

    with pytest.raises(Unavailable):
        committer.submit(account, message(1))

    assert not committer.can_commit() and store.dedup == {}
    store.writable = True
    assert committer.submit(account, message(1)).duplicate is False and committer.can_commit()


def test_a_group_the_domain_refuses_does_not_fail_the_groups_committed_with_it(
    committer: InboundCommitter, account: AccountInfo, store: MemoryEventStore
) -> None:
    refused = [(account, message(1)), (account, message(2, kind=""))]
    good = [[(account, message(10 + i, contact=f"6282{i}"))] for i in range(3)]

    async def together() -> list[Any]:
        tasks = [committer.submit_group_async(group) for group in [refused, *good]]
        return await asyncio.gather(*tasks, return_exceptions=True)

    bad, *recorded = asyncio.run(together())

    assert isinstance(bad, InvalidCommand)
    assert [[r.outcome for r in results] for results in recorded] == [[FactOutcome.RECORDED]] * 3
    assert stored_room_events(store) == 6  # three rooms: opened + received


class RivalledStore(MemoryEventStore):
    """Another process writes a customer message to the rooms of every save made outside `exclusive`,
    between this process's read and its write (so each such save loses the race)."""

    def __init__(self) -> None:
        super().__init__()
        self.rival_messages = 0
        self.rivalled = False
        self._inside_exclusive = False

    @contextmanager
    def exclusive(self, deadline: float) -> Iterator[None]:
        with super().exclusive(deadline):
            self._inside_exclusive = True
            try:
                yield
            finally:
                self._inside_exclusive = False

    def save(self, *aggregates: Any, **kwargs: Any) -> None:
        if self.rivalled and not self._inside_exclusive:
            for aggregate in aggregates:
                theirs = self.get(aggregate.id)
                self.rival_messages += 1
                theirs.receive(channel_message_id=f"wamid.rival.{self.rival_messages}", text="rival", sent_at=T0)
                super().save(theirs)
        super().save(*aggregates, **kwargs)


def test_a_batch_that_keeps_losing_races_to_another_process_is_decided_under_the_stores_lock(
    account: AccountInfo,
) -> None:
    store = RivalledStore()
    committer = InboundCommitter(store, timeout=5.0)
    try:
        first = committer.submit(account, message(1))
        store.rivalled = True

        result = committer.submit(account, message(2))
    finally:
        committer.close()

    assert store.rival_messages >= 2 and not result.duplicate
    received = [e for e in room_events(store, first.room_id) if isinstance(e, Room.MessageReceived)]
    assert [e.channel_message_id for e in received].count("wamid.2") == 1
    assert len(received) == 2 + store.rival_messages and result.version == len(received) + 1


class GatedStore(MemoryEventStore):
    """Its first save waits until `gate` is set (so the next submissions queue up behind it)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.saves = 0

    def save(self, *aggregates: Any, **kwargs: Any) -> None:
        self.saves += 1
        if self.saves == 1:
            assert self.gate.wait(10)
        super().save(*aggregates, **kwargs)


def test_the_waiters_of_one_batch_are_all_answered_with_one_wake_up_of_their_event_loop(
    account: AccountInfo,
) -> None:
    store = GatedStore()
    committer = InboundCommitter(store, timeout=5.0)
    loop = asyncio.new_event_loop()
    wake_ups = 0
    call_soon_threadsafe = loop.call_soon_threadsafe

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal wake_ups
        wake_ups += 1
        return call_soon_threadsafe(*args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]

    async def burst() -> list[Any]:
        first = asyncio.ensure_future(committer.submit_async(account, message(1)))
        deadline = loop.time() + 10
        while store.saves == 0:  # the first batch is being written (and held at the gate)
            assert loop.time() < deadline
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(committer.submit_async(account, message(10 + i, contact=f"6283{i}")))
                for i in range(8)]
        while committer.queued < 8:
            assert loop.time() < deadline
            await asyncio.sleep(0.001)
        store.gate.set()
        return await asyncio.gather(first, *rest)

    try:
        results = loop.run_until_complete(burst())
    finally:
        loop.close()
        committer.close()

    assert [r.duplicate for r in results] == [False] * 9 and len({r.room_id for r in results}) == 9
    assert store.saves == 2  # the eight queued behind the gate were one batch
    assert wake_ups == 2  # one per batch, not one per waiter
