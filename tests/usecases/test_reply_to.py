"""A staff reply answering a message of its room (`reply_to`): which messages it may name, what is
recorded, and what the sender is asked to send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from domain.channels import Channel
from domain.errors import InvalidCommand
from domain.room import MAX_REPLY_TARGETS, Room
from inbox.adapters.memory_store import MemoryEventStore
from inbox.usecases.channel_accounts import AccountInfo, ChannelAccounts
from inbox.usecases.delivery import Deliveries, SendPlan
from inbox.usecases.ingest import InboundCommitter
from inbox.usecases.room_commands import RoomCommands
from tests.usecases.conftest import ADMIN, AGENT_A, message

NOW = datetime.now(UTC)


def recent(n: int, **overrides: object) -> object:
    return message(n, sent_at=NOW - timedelta(minutes=30) + timedelta(seconds=n), **overrides)


def last_sent(store: MemoryEventStore, room_id: str) -> Room.MessageSent:
    return [e for e in store.app.events.get(UUID(room_id)) if isinstance(e, Room.MessageSent)][-1]


def test_a_reply_names_an_inbound_message_by_our_id_or_by_the_channels(
    committer: InboundCommitter, account: AccountInfo, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    first = committer.submit(account, recent(1))
    committer.submit(account, recent(2))

    rooms.reply(AGENT_A, first.room_id, text="by our id", reply_to=first.message_id)
    assert last_sent(store, first.room_id).reply_to == {"message_id": first.message_id, "channel_message_id": "wamid.1"}
    rooms.reply(AGENT_A, first.room_id, text="by the wamid", reply_to="wamid.1")
    assert last_sent(store, first.room_id).reply_to == {"message_id": first.message_id, "channel_message_id": "wamid.1"}
    rooms.reply(AGENT_A, first.room_id, text="no reply_to")
    assert last_sent(store, first.room_id).reply_to is None


def test_an_unknown_or_another_rooms_message_is_refused_with_a_clear_message(
    committer: InboundCommitter, account: AccountInfo, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    mine = committer.submit(account, recent(1))
    other = committer.submit(account, recent(2, contact="62899"))

    with pytest.raises(InvalidCommand, match="not a message of this room"):
        rooms.reply(AGENT_A, mine.room_id, text="x", reply_to="wamid.nope")
    with pytest.raises(InvalidCommand, match="another room"):
        rooms.reply(AGENT_A, mine.room_id, text="x", reply_to="wamid.2")
    with pytest.raises(InvalidCommand, match="not a message of this room"):
        rooms.reply(AGENT_A, mine.room_id, text="x", reply_to=other.message_id)
    assert not [e for e in store.app.events.get(UUID(mine.room_id)) if isinstance(e, Room.MessageSent)]


def test_a_reply_names_a_staff_reply_only_once_it_reached_the_channel(
    committer: InboundCommitter, account: AccountInfo, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    room_id = committer.submit(account, recent(1)).room_id
    earlier = rooms.reply(AGENT_A, room_id, text="first").message_id
    assert earlier is not None

    with pytest.raises(InvalidCommand, match="not reached the channel"):
        rooms.reply(AGENT_A, room_id, text="x", reply_to=earlier)
    Deliveries(store).accepted(room_id, earlier, "wamid.out.1")
    rooms.reply(AGENT_A, room_id, text="as I said", reply_to=earlier)
    assert last_sent(store, room_id).reply_to == {"message_id": earlier, "channel_message_id": "wamid.out.1"}
    rooms.reply(AGENT_A, room_id, text="as I said", reply_to="wamid.out.1")
    assert last_sent(store, room_id).reply_to == {"message_id": earlier, "channel_message_id": "wamid.out.1"}


def test_an_inbound_message_older_than_the_rooms_latest_is_still_found_by_its_channel_id(
    committer: InboundCommitter, account: AccountInfo, rooms: RoomCommands, store: MemoryEventStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import domain.room

    monkeypatch.setattr(domain.room, "MAX_REPLY_TARGETS", 2)
    oldest = committer.submit(account, recent(1))
    for n in (2, 3, 4):
        committer.submit(account, recent(n))
    room: Room = store.get(UUID(oldest.room_id))
    assert oldest.message_id not in room.inbound_ids and len(room.inbound_ids) == 2

    rooms.reply(AGENT_A, oldest.room_id, text="that one", reply_to="wamid.1")  # through the dedup keys

    assert last_sent(store, oldest.room_id).reply_to == {"message_id": oldest.message_id, "channel_message_id": "wamid.1"}
    assert MAX_REPLY_TARGETS == 100


def test_the_sender_quotes_the_wamid_on_whatsapp_and_nothing_on_messenger(
    committer: InboundCommitter, account: AccountInfo, accounts: ChannelAccounts, rooms: RoomCommands,
    store: MemoryEventStore,
) -> None:
    wa = committer.submit(account, recent(1))
    reply = rooms.reply(AGENT_A, wa.room_id, text="yes", reply_to="wamid.1").message_id
    assert reply is not None
    recorded = last_sent(store, wa.room_id).reply_to
    plan = Deliveries(store).plan(wa.room_id, reply, kind="text", text="yes", attachments=[], reply_to=recorded)
    assert isinstance(plan, SendPlan) and plan.reply_to_channel_message_id == "wamid.1"

    page = accounts.register(ADMIN, channel="facebook_messenger", external_id="1000000001", name="Page")
    fb = committer.submit(page, recent(5, contact="psid-1", channel=Channel.FACEBOOK_MESSENGER,
                                       channel_account="1000000001", channel_message_id="m_in1"))
    fb_reply = rooms.reply(AGENT_A, fb.room_id, text="yes", reply_to="m_in1").message_id
    assert fb_reply is not None
    fb_plan = Deliveries(store).plan(fb.room_id, fb_reply, kind="text", text="yes", attachments=[],
                                     reply_to=last_sent(store, fb.room_id).reply_to)
    assert isinstance(fb_plan, SendPlan) and fb_plan.reply_to_channel_message_id is None


def test_a_snapshot_taken_before_rooms_kept_inbound_ids_loads_with_none() -> None:
    state = {"deliveries": {"m": "sent"}}
    Room.upcast_v1_v2(state)
    assert state == {"deliveries": {"m": "sent"}, "delivery_ids": {}, "inbound_ids": {}}
