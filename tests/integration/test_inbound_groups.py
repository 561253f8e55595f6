"""InboundCommitter.submit_group: a webhook's facts commit together or not at all, still group-committed."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from channels.facts import DeliveryStatus, InboundMessage, OutboundEcho, RecordableFact
from domain.channels import Channel
from domain.errors import InvalidCommand
from domain.staff import Actor, Role
from inbox.config import Settings
from inbox.bootstrap import Container
from inbox.usecases.channel_accounts import AccountInfo
from tests.integration.locks import commits_held
from tests.support import query

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def account(container: Container) -> AccountInfo:
    return container.accounts.register(Actor("admin1", "org1", Role.ADMIN), channel="whatsapp_cloud",
                                       external_id="1065", name="Sales")


def message(n: int, *, contact: str = "62811", **overrides: object) -> InboundMessage:
    fields: dict[str, object] = dict(channel=Channel.WHATSAPP_CLOUD, channel_account="1065", contact_id=contact,
                                     channel_message_id=f"wamid.{n}", text=f"m{n}", sent_at=T0 + timedelta(seconds=n))
    fields.update(overrides)
    return InboundMessage(**fields)  # type: ignore[arg-type]


def events(settings: Settings) -> int:
    return int(query(settings, "SELECT count(*) FROM inbox_events WHERE topic LIKE 'domain.room:Room.%%'")[0][0])


def test_an_invalid_fact_fails_the_whole_group_before_anything_is_written(
    container: Container, account: AccountInfo, db_settings: Settings
) -> None:
    status = DeliveryStatus(Channel.WHATSAPP_CLOUD, "1065", "read", T0, "read:wamid.x", channel_message_id="wamid.x")
    naive = message(2, sent_at=datetime(2026, 1, 5, 9, 0))
    with pytest.raises(InvalidCommand, match="timezone"):
        container.inbound.submit_group([(account, message(1)), (account, status), (account, naive)])
    assert events(db_settings) == 0
    assert query(db_settings, "SELECT count(*) FROM delivery_statuses")[0][0] == 0


def test_a_fact_the_domain_refuses_fails_its_group_but_not_the_others(
    container: Container, account: AccountInfo, db_settings: Settings
) -> None:
    refused = message(2, kind="")  # passes the early checks; Room.receive refuses it
    with ThreadPoolExecutor(4) as pool:
        bad = pool.submit(container.inbound.submit_group, [(account, message(1)), (account, refused)])
        good = [pool.submit(container.inbound.submit_group, [(account, message(10 + i, contact=f"6282{i}"))])
                for i in range(3)]
        with pytest.raises(InvalidCommand, match="kind"):
            bad.result(timeout=60)
        assert all(f.result(timeout=60)[0].outcome == "recorded" for f in good)
    assert events(db_settings) == 6  # three rooms, opened + received; nothing of the refused group
    assert container.inbound.submit(account, message(1)).duplicate is False


def test_groups_queued_behind_a_commit_share_the_next_transaction(
    container: Container, account: AccountInfo, db_settings: Settings
) -> None:
    def group(i: int) -> list[tuple[AccountInfo, RecordableFact]]:
        facts: list[tuple[AccountInfo, RecordableFact]] = [
            (account, message(i * 10 + k, contact=f"6283{i}")) for k in range(3)
        ]
        facts.append((account, OutboundEcho(Channel.WHATSAPP_CLOUD, "1065", f"6283{i}", f"wamid.out.{i}", "ok",
                                            T0 + timedelta(minutes=5), sender_id="1065")))
        return facts

    async def sixty_four_groups() -> list[list[str]]:
        with commits_held(db_settings):
            tasks = [asyncio.ensure_future(container.inbound.submit_group_async(group(i))) for i in range(64)]
            await asyncio.sleep(0)  # each task has run up to its wait: all 64 groups are queued
        return [[r.outcome for r in results] for results in await asyncio.gather(*tasks)]

    before = container.inbound.batches
    outcomes = asyncio.run(sixty_four_groups())

    assert all(o == ["recorded"] * 4 for o in outcomes)
    # At most the one commit that was waiting for the lock, then one for everything queued behind it.
    assert container.inbound.batches - before <= 2
    assert events(db_settings) == 64 * 5  # opened + 3 received + 1 echo per room
