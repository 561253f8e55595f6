"""A small, known history written through the real write side, for the export and analytics tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from domain.staff import Actor, Role
from inbox.bootstrap import Container
from inbox.usecases.channel_accounts import AccountInfo
from inbox.usecases.ingest import InboundMessage

ADMIN1 = Actor("admin1", "org1", Role.ADMIN)
SPV1 = Actor("spv1", "org1", Role.SUPERVISOR)
AGENT1 = Actor("agent-a", "org1", Role.AGENT)
ADMIN2 = Actor("admin2", "org2", Role.ADMIN)


def inbound(account: AccountInfo, contact: str, mid: str) -> InboundMessage:
    return InboundMessage(
        channel=account.channel, channel_account=account.external_id, contact_id=contact,
        channel_message_id=mid, text=f"text {mid}", sent_at=datetime.now(UTC), contact_name=f"Contact {contact}",
    )


@dataclass
class Story:
    """Rooms by name; `before_staff` is a moment after every inbound message and before any staff action."""

    rooms: dict[str, str] = field(default_factory=dict)
    before_staff: datetime = datetime.min.replace(tzinfo=UTC)


def write_story(container: Container) -> Story:
    """org1: WhatsApp rooms c1 (replied), c2 (assigned), c3 (resolved), c6 (untouched); Instagram c4
    (two inbound, replied). org2: WhatsApp c5 (untouched). 7 inbound messages, 2 replies."""
    wa1 = container.accounts.register(ADMIN1, channel="whatsapp_cloud", external_id="pn-1", name="WA 1")
    ig1 = container.accounts.register(ADMIN1, channel="instagram", external_id="ig-1", name="IG 1")
    wa2 = container.accounts.register(ADMIN2, channel="whatsapp_cloud", external_id="pn-2", name="WA 2")
    story = Story()
    for name, account in (("c1", wa1), ("c2", wa1), ("c3", wa1), ("c6", wa1), ("c4", ig1), ("c5", wa2)):
        story.rooms[name] = container.inbound.submit(account, inbound(account, name, f"{name}-m1")).room_id
    container.inbound.submit(ig1, inbound(ig1, "c4", "c4-m2"))
    story.before_staff = datetime.now(UTC)
    container.rooms.reply(AGENT1, story.rooms["c1"], text="on it")
    container.rooms.reply(AGENT1, story.rooms["c4"], text="checking")
    container.rooms.assign(SPV1, story.rooms["c2"], agent_id="agent-b")
    container.rooms.resolve(SPV1, story.rooms["c3"])
    return story


def write_inbound(
    container: Container, account: AccountInfo, count: int, *, contacts: int = 20, tag: str = "m"
) -> None:
    """`count` inbound messages spread over `contacts` rooms, committed in groups."""
    items = [(account, inbound(account, f"{tag}-c{i % contacts}", f"{tag}-{i}")) for i in range(count)]
    for start in range(0, count, 500):
        container.inbound.submit_group(items[start:start + 500], timeout=120)

