"""Delivering staff replies: Meta's echo of our Messenger reply, whenever it arrives, is that reply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from channels.facts import OutboundEcho
from domain.channels import Channel
from domain.room import Room
from inbox.adapters.memory_store import MemoryEventStore
from inbox.usecases.channel_accounts import AccountInfo, ChannelAccounts
from inbox.usecases.delivery import Deliveries, Settled
from inbox.usecases.ingest import InboundCommitter
from inbox.usecases.results import FactOutcome
from inbox.usecases.room_commands import RoomCommands
from tests.usecases.conftest import ADMIN, AGENT_A, message

PAGE = "1000000001"


@pytest.fixture
def page(accounts: ChannelAccounts) -> AccountInfo:
    return accounts.register(ADMIN, channel="facebook_messenger", external_id=PAGE, name="Acme Page")


def customer_writes(committer: InboundCommitter, page: AccountInfo) -> str:
    fact = message(1, contact="psid-1", channel=Channel.FACEBOOK_MESSENGER, channel_account=PAGE,
                   channel_message_id="m_in1", sent_at=datetime.now(UTC) - timedelta(minutes=5))
    return committer.submit(page, fact).room_id


def echo(mid: str, metadata: str | None) -> OutboundEcho:
    return OutboundEcho(Channel.FACEBOOK_MESSENGER, PAGE, "psid-1", mid, "on its way", datetime.now(UTC),
                        sender_id=PAGE, correlation_id=metadata)


def events(store: MemoryEventStore, room_id: str) -> list[object]:
    return list(store.app.events.get(UUID(room_id)))


def test_an_echo_carrying_our_message_id_before_the_sender_recorded_settles_the_reply_as_sent(
    committer: InboundCommitter, page: AccountInfo, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    room_id = customer_writes(committer, page)
    reply = rooms.reply(AGENT_A, room_id, text="on its way").message_id
    assert reply is not None

    [result] = committer.submit_group([(page, echo("m_out1", reply))])  # Meta's echo overtakes the answer

    assert (result.outcome, result.message_id) == (FactOutcome.DUPLICATE, reply)
    room: Room = store.get(UUID(room_id))
    assert room.delivery_status(reply) == "sent" and room.message_for_channel_id("m_out1") == reply
    assert sum(isinstance(e, Room.MessageSent) for e in events(store, room_id)) == 1
    before = len(events(store, room_id))

    deliveries = Deliveries(store)
    assert deliveries.accepted(room_id, reply, "m_out1") is False  # the sender's answer, later: nothing new
    assert len(events(store, room_id)) == before
    assert deliveries.plan(room_id, reply, kind="text", text="on its way", attachments=[]) == Settled("sent")
    assert committer.submit_group([(page, echo("m_out1", reply))])[0].outcome is FactOutcome.DUPLICATE
    assert len(events(store, room_id)) == before


def test_an_echo_after_the_sender_recorded_is_recognised_by_its_mid_alone(
    committer: InboundCommitter, page: AccountInfo, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    room_id = customer_writes(committer, page)
    reply = rooms.reply(AGENT_A, room_id, text="on its way").message_id
    assert reply is not None and Deliveries(store).accepted(room_id, reply, "m_out2") is True
    before = len(events(store, room_id))

    [result] = committer.submit_group([(page, echo("m_out2", None))])

    assert (result.outcome, result.message_id) == (FactOutcome.DUPLICATE, reply)
    assert len(events(store, room_id)) == before


def test_an_echo_never_moves_a_delivered_reply_back_to_sent(
    committer: InboundCommitter, page: AccountInfo, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    room_id = customer_writes(committer, page)
    reply = rooms.reply(AGENT_A, room_id, text="on its way").message_id
    assert reply is not None
    room: Room = store.get(UUID(room_id))
    room.record_delivery_status(channel_message_id="m_out3", status="delivered", at=datetime.now(UTC),
                                message_id=reply)
    store.save(room)

    [result] = committer.submit_group([(page, echo("m_out3-other", reply))])

    assert (result.outcome, result.message_id) == (FactOutcome.DUPLICATE, reply)
    assert store.get(UUID(room_id)).delivery_status(reply) == "delivered"


def test_an_echo_whose_metadata_is_not_a_reply_of_that_room_is_the_business_own_message(
    committer: InboundCommitter, page: AccountInfo, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    room_id = customer_writes(committer, page)
    [result] = committer.submit_group([(page, echo("m_tool1", "some-other-apps-metadata"))])

    assert result.outcome is FactOutcome.RECORDED
    sent = [e for e in events(store, room_id) if isinstance(e, Room.MessageSent)]
    assert [e.sender_role for e in sent] == ["channel"]


def test_an_echo_of_a_reply_the_room_has_forgotten_is_that_reply_by_the_dedup_key_recorded_when_accepted(
    committer: InboundCommitter, page: AccountInfo, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    from channels.facts import DeliveryStatus
    from domain.room import MAX_SETTLED_DELIVERIES

    room_id = customer_writes(committer, page)
    deliveries = Deliveries(store)
    for i in range(MAX_SETTLED_DELIVERIES + 1):
        reply = rooms.reply(AGENT_A, room_id, text=f"r{i}").message_id
        assert reply is not None and deliveries.accepted(room_id, reply, f"m_old{i}")
        read = DeliveryStatus(Channel.FACEBOOK_MESSENGER, PAGE, "read", datetime.now(UTC), f"read:m_old{i}",
                              channel_message_id=f"m_old{i}", recipient_id="psid-1")
        assert committer.submit_group([(page, read)])[0].outcome is FactOutcome.RECORDED
    room: Room = store.get(UUID(room_id))
    assert room.message_for_channel_id("m_old0") is None  # read long ago: forgotten by the room
    sent_before = sum(isinstance(e, Room.MessageSent) for e in events(store, room_id))

    [result] = committer.submit_group([(page, echo("m_old0", None))])  # a very late echo of it

    assert result.outcome is FactOutcome.DUPLICATE
    assert sum(isinstance(e, Room.MessageSent) for e in events(store, room_id)) == sent_before
