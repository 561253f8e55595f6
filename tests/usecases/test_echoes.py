"""An Instagram echo of our reply that overtakes the sender's record is parked, then that reply (issue 9).

Instagram echoes carry no id of ours: one whose mid no reply knows, while a reply of its room is in
flight, is parked; the sweep drops it once the sender recorded that mid, or records it as the
business's own message after the hold (or once no reply is in flight any more).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from channels.facts import OutboundEcho
from domain.channels import Channel
from domain.room import Room
from inbox.adapters.memory_store import MemoryEventStore
from inbox.usecases.channel_accounts import AccountInfo, ChannelAccounts
from inbox.usecases.delivery import Deliveries
from inbox.usecases.echoes import ParkedEchoes
from inbox.usecases.ingest import InboundCommitter
from inbox.usecases.results import FactOutcome
from inbox.usecases.room_commands import RoomCommands
from tests.usecases.conftest import ADMIN, AGENT_A, message

IG = "17841400000"
PAGE = "1000000001"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(store: MemoryEventStore) -> Clock:
    c = Clock()
    store.clock = c
    return c


@pytest.fixture
def ig(accounts: ChannelAccounts) -> AccountInfo:
    return accounts.register(ADMIN, channel="instagram", external_id=IG, name="acme")


@pytest.fixture
def sweep(store: MemoryEventStore, clock: Clock) -> ParkedEchoes:
    return ParkedEchoes(store, hold_s=30, clock=clock)


def customer_writes(committer: InboundCommitter, account: AccountInfo, channel: Channel = Channel.INSTAGRAM,
                    external_id: str = IG) -> str:
    fact = message(1, contact="igsid-1", channel=channel, channel_account=external_id,
                   channel_message_id=f"m_in.{external_id}", sent_at=datetime.now(UTC) - timedelta(minutes=5))
    return committer.submit(account, fact).room_id


def ig_echo(mid: str, text: str = "on its way") -> OutboundEcho:
    return OutboundEcho(Channel.INSTAGRAM, IG, "igsid-1", mid, text, datetime.now(UTC), sender_id=IG)


def sent_messages(store: MemoryEventStore, room_id: str) -> list[Room.MessageSent]:
    return [e for e in store.app.events.get(UUID(room_id)) if isinstance(e, Room.MessageSent)]


def test_an_echo_that_overtakes_the_senders_record_is_parked_then_dropped_as_that_reply(
    committer: InboundCommitter, ig: AccountInfo, rooms: RoomCommands, store: MemoryEventStore,
    sweep: ParkedEchoes,
) -> None:
    room_id = customer_writes(committer, ig)
    reply = rooms.reply(AGENT_A, room_id, text="on its way").message_id
    assert reply is not None

    [result] = committer.submit_group([(ig, ig_echo("m_out1"))])  # before the sender recorded m_out1
    assert (result.outcome, result.room_id) == (FactOutcome.PARKED, room_id)
    assert list(store.parked) == [(ig.id, "m_out1")]
    assert len(sent_messages(store, room_id)) == 1
    # Meta redelivers the same echo meanwhile: still one parked echo.
    assert committer.submit_group([(ig, ig_echo("m_out1"))])[0].outcome is FactOutcome.PARKED
    assert len(store.parked) == 1
    assert sweep.sweep() == {"dropped": 0, "recorded": 0, "kept": 1}  # the reply is still in flight

    assert Deliveries(store).accepted(room_id, reply, "m_out1") is True  # the sender's record
    assert sweep.sweep() == {"dropped": 1, "recorded": 0, "kept": 0}
    assert store.parked == {}
    room: Room = store.get(UUID(room_id))
    assert room.delivery_status(reply) == "sent" and room.message_for_channel_id("m_out1") == reply
    assert len(sent_messages(store, room_id)) == 1  # one reply, no second message
    # A later redelivery is that reply, as any echo after the sender's record.
    [again] = committer.submit_group([(ig, ig_echo("m_out1"))])
    assert (again.outcome, again.message_id) == (FactOutcome.DUPLICATE, reply)


def test_an_echo_while_no_reply_is_in_flight_is_recorded_at_once(
    committer: InboundCommitter, ig: AccountInfo, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    room_id = customer_writes(committer, ig)
    [result] = committer.submit_group([(ig, ig_echo("m_tool1", "sent from the Instagram app"))])
    assert result.outcome is FactOutcome.RECORDED and store.parked == {}
    [echoed] = sent_messages(store, room_id)
    assert (echoed.sender_role, echoed.channel_message_id) == ("channel", "m_tool1")


def test_a_parked_echo_still_unmatched_after_the_hold_is_the_business_own_message(
    committer: InboundCommitter, ig: AccountInfo, rooms: RoomCommands, store: MemoryEventStore,
    sweep: ParkedEchoes, clock: Clock,
) -> None:
    room_id = customer_writes(committer, ig)
    reply = rooms.reply(AGENT_A, room_id, text="queued, never answered").message_id
    assert reply is not None
    assert committer.submit_group([(ig, ig_echo("m_tool2", "from the app"))])[0].outcome is FactOutcome.PARKED
    clock.now += timedelta(seconds=29)
    assert sweep.sweep()["kept"] == 1
    clock.now += timedelta(seconds=2)
    assert sweep.sweep() == {"dropped": 0, "recorded": 1, "kept": 0}
    assert store.parked == {}
    texts = [(m.sender_role, m.text) for m in sent_messages(store, room_id)]
    assert texts == [("agent", "queued, never answered"), ("channel", "from the app")]
    assert store.get(UUID(room_id)).delivery_status(reply) == "pending"  # the reply is untouched
    # Redelivered afterwards: recorded once (its dedup key).
    assert committer.submit_group([(ig, ig_echo("m_tool2", "from the app"))])[0].outcome is FactOutcome.DUPLICATE
    assert sweep.sweep() == {"dropped": 0, "recorded": 0, "kept": 0}


def test_a_parked_echo_is_recorded_as_soon_as_no_reply_is_in_flight(
    committer: InboundCommitter, ig: AccountInfo, rooms: RoomCommands, store: MemoryEventStore,
    sweep: ParkedEchoes,
) -> None:
    room_id = customer_writes(committer, ig)
    reply = rooms.reply(AGENT_A, room_id, text="will fail").message_id
    assert reply is not None
    assert committer.submit_group([(ig, ig_echo("m_tool3"))])[0].outcome is FactOutcome.PARKED
    Deliveries(store).failed(room_id, reply, code=131026, title="undeliverable", permanent=True)
    assert sweep.sweep() == {"dropped": 0, "recorded": 1, "kept": 0}
    assert [m.channel_message_id for m in sent_messages(store, room_id)] == [None, "m_tool3"]


def test_a_messenger_echo_without_metadata_is_never_parked(
    committer: InboundCommitter, accounts: ChannelAccounts, rooms: RoomCommands, store: MemoryEventStore
) -> None:
    page = accounts.register(ADMIN, channel="facebook_messenger", external_id=PAGE, name="Acme Page")
    room_id = customer_writes(committer, page, Channel.FACEBOOK_MESSENGER, PAGE)
    assert rooms.reply(AGENT_A, room_id, text="in flight").message_id
    echo = OutboundEcho(Channel.FACEBOOK_MESSENGER, PAGE, "igsid-1", "m_page1", "from Page inbox", datetime.now(UTC),
                        sender_id=PAGE)
    # Messenger echoes of our replies carry metadata: one without it is the business's own, at once.
    assert committer.submit_group([(page, echo)])[0].outcome is FactOutcome.RECORDED
    assert store.parked == {}
