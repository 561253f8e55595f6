"""Use-case tests: the write-side use cases on the in-memory event store, no PostgreSQL, no broker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from channels.facts import InboundMessage
from domain.channels import Channel
from domain.staff import Actor, Role
from inbox.adapters.memory_credentials import MemoryCredentials
from inbox.adapters.memory_store import MemoryEventStore
from inbox.usecases.channel_accounts import AccountInfo, ChannelAccounts
from inbox.usecases.ingest import InboundCommitter
from inbox.usecases.room_commands import RoomCommands

ADMIN = Actor("admin1", "org1", Role.ADMIN)
SUPERVISOR = Actor("spv1", "org1", Role.SUPERVISOR)
AGENT_A = Actor("agent-a", "org1", Role.AGENT)
AGENT_B = Actor("agent-b", "org1", Role.AGENT)
WA_ACCOUNT = "106540352242922"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@pytest.fixture
def store() -> MemoryEventStore:
    return MemoryEventStore()


@pytest.fixture
def credentials() -> MemoryCredentials:
    return MemoryCredentials()


@pytest.fixture
def accounts(store: MemoryEventStore, credentials: MemoryCredentials) -> ChannelAccounts:
    return ChannelAccounts(store, credentials)


@pytest.fixture
def account(accounts: ChannelAccounts) -> AccountInfo:
    return accounts.register(ADMIN, channel="whatsapp_cloud", external_id=WA_ACCOUNT, name="Sales WA")


@pytest.fixture
def committer(store: MemoryEventStore) -> Iterator[InboundCommitter]:
    c = InboundCommitter(store, timeout=5.0)
    yield c
    c.close()


@pytest.fixture
def rooms(store: MemoryEventStore) -> RoomCommands:
    return RoomCommands(store)


def message(n: int, *, contact: str = "62811", **overrides: object) -> InboundMessage:
    fields: dict[str, object] = dict(
        channel=Channel.WHATSAPP_CLOUD, channel_account=WA_ACCOUNT, contact_id=contact,
        channel_message_id=f"wamid.{n}", text=f"pesan {n}", sent_at=T0 + timedelta(seconds=n),
    )
    fields.update(overrides)
    return InboundMessage(**fields)  # type: ignore[arg-type]
