"""InboundCommitter under a stalled database (real PostgreSQL): waiters that give up never break it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
import pytest

from domain.channels import Channel
from domain.staff import Actor, Role
from inbox.config import Settings
from inbox.bootstrap import Container
from inbox.adapters.postgres import conninfo
from inbox.usecases.channel_accounts import AccountInfo
from inbox.usecases.ingest import InboundMessage
from inbox.usecases.results import Unavailable
from tests.support import query

pytestmark = pytest.mark.integration


@pytest.fixture
def account(container: Container) -> AccountInfo:
    return container.accounts.register(Actor("admin1", "org1", Role.ADMIN), channel="whatsapp_cloud",
                                       external_id="1065", name="Sales")


def message(mid: str) -> InboundMessage:
    return InboundMessage(channel=Channel.WHATSAPP_CLOUD, channel_account="1065", contact_id="62811",
                          channel_message_id=mid, text=mid, sent_at=datetime.now(UTC))


def recorded(settings: Settings) -> list[str]:
    return [r[0] for r in query(settings, "SELECT channel_message_id FROM inbound_dedup")]


def test_a_waiter_that_gives_up_during_a_lock_is_not_recorded_and_the_committer_goes_on(
    container: Container, account: AccountInfo, db_settings: Settings
) -> None:
    container.inbound.submit(account, message("wamid.before"))
    with psycopg.connect(conninfo(db_settings)) as conn:
        conn.execute("LOCK TABLE inbox_events IN ACCESS EXCLUSIVE MODE")
        try:
            with pytest.raises(Unavailable):
                asyncio.run(container.inbound.submit_async(account, message("wamid.gave-up"), timeout=0.5))
            with pytest.raises(Unavailable):
                container.inbound.submit(account, message("wamid.gave-up-sync"), timeout=0.5)
        finally:
            conn.rollback()

    result = container.inbound.submit(account, message("wamid.after"))

    assert not result.duplicate
    assert sorted(recorded(db_settings)) == ["wamid.after", "wamid.before"]


def test_a_full_queue_is_refused_at_once(db_settings: Settings) -> None:
    from dataclasses import replace

    c = Container.build(replace(db_settings, inbound_queue_max=1))
    try:
        account = c.accounts.register(Actor("admin1", "org1", Role.ADMIN), channel="whatsapp_cloud",
                                      external_id="1065", name="Sales")
        with pytest.raises(Unavailable, match="too many"):
            c.inbound.submit_group([(account, message("wamid.1")), (account, message("wamid.2"))])
        assert c.inbound.queued == 0
        c.inbound.submit(account, message("wamid.3"))
    finally:
        c.close()
