"""The change log of the live stream: written with the read models, once per change, rung on commit."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
import pytest

from domain.channels import Channel
from domain.staff import Actor, Role
from inbox.adapters.event_log import WireEventLog
from inbox.adapters.postgres import async_pool, conninfo
from inbox.adapters.read_models.changes import channel, prune, read_changes
from inbox.adapters.read_models.writer import apply_in_transaction
from inbox.bootstrap import Container
from inbox.config import Settings
from inbox.usecases.ingest import InboundMessage
from tests.support import execute, project_all, query

pytestmark = pytest.mark.integration

ADMIN = Actor("admin1", "org1", Role.ADMIN)


def write(container: Container, contact: str, n: int) -> str:
    account = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA") \
        if n == 1 else container.accounts.find(Channel.WHATSAPP_CLOUD, "pn-1")
    res = container.inbound.submit(account, InboundMessage(
        channel=Channel.WHATSAPP_CLOUD, channel_account="pn-1", contact_id=contact, channel_message_id=f"m{n}",
        text=f"message {n}", sent_at=datetime.now(UTC),
    ))
    return str(res.room_id)


def changes(settings: Settings) -> list[tuple[object, ...]]:
    return query(settings, "SELECT kind, room_id::text, version, existed_before, cardinality(message_ids)"
                           " FROM room_changes ORDER BY position")


def test_one_change_row_per_room_change_and_none_for_a_reapplied_event(
    container: Container, db_settings: Settings
) -> None:
    room = write(container, "c1", 1)
    write(container, "c1", 2)
    container.rooms.assign(ADMIN, room, agent_id="agent1")
    project_all(db_settings)
    rows = changes(db_settings)
    assert len(rows) == 1  # one batch, one room: one row at its latest version, naming both messages
    assert rows[0] == ("room", room, query(db_settings, "SELECT version FROM rooms")[0][0], False, 2)

    project_all(db_settings)  # every event again: duplicates change nothing
    assert changes(db_settings) == rows


def test_the_change_row_commits_with_the_read_models_or_not_at_all(
    container: Container, db_settings: Settings
) -> None:
    write(container, "c1", 1)
    events = [e for _, e in WireEventLog(container.event_store).read(0, 100)[0].events]

    async def apply_then_fail() -> None:
        async with await psycopg.AsyncConnection.connect(conninfo(db_settings)) as conn:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await apply_in_transaction(conn, events, None)
                    raise RuntimeError("the batch's transaction fails after the writes")

    asyncio.run(apply_then_fail())
    assert query(db_settings, "SELECT count(*) FROM rooms") == [(0,)]
    assert changes(db_settings) == []


def test_the_doorbell_rings_on_commit_with_the_position(container: Container, db_settings: Settings) -> None:
    with psycopg.connect(conninfo(db_settings), autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel(db_settings.db_schema)}"')
        write(container, "c1", 1)
        project_all(db_settings)
        rings = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
    assert rings == [str(query(db_settings, "SELECT max(position) FROM room_changes")[0][0])]


def test_read_changes_renders_rooms_messages_and_counters_of_one_snapshot(
    container: Container, db_settings: Settings
) -> None:
    room = write(container, "c1", 1)
    project_all(db_settings)

    async def read() -> object:
        async with await psycopg.AsyncConnection.connect(conninfo(db_settings), autocommit=True) as conn:
            return await read_changes(conn, 0, limit=10, viewers=[ADMIN])

    page = asyncio.run(read())
    assert [c.room_id for c in page.changes] == [room]  # type: ignore[attr-defined]
    assert page.rooms[room]["version"] == query(db_settings, "SELECT version FROM rooms")[0][0]  # type: ignore[attr-defined]
    assert [m["text"] for m in page.messages.values()] == ["message 1"]  # type: ignore[attr-defined]
    assert next(iter(page.counters.values()))["unassigned"] == 1  # type: ignore[attr-defined]


def test_a_read_from_the_log_end_gives_the_position_and_the_counters_without_rows(
    container: Container, db_settings: Settings
) -> None:
    write(container, "c1", 1)
    project_all(db_settings)

    async def read() -> object:
        async with await psycopg.AsyncConnection.connect(conninfo(db_settings), autocommit=True) as conn:
            return await read_changes(conn, None, limit=10, viewers=[ADMIN], all_counters=True)

    page = asyncio.run(read())
    end = query(db_settings, "SELECT max(position) FROM room_changes")[0][0]
    assert (page.after, page.upto, page.head) == (end, end, end)  # type: ignore[attr-defined]
    assert page.changes == [] and page.rooms == {} and page.messages == {}  # type: ignore[attr-defined]
    assert next(iter(page.counters.values()))["unassigned"] == 1  # type: ignore[attr-defined]


def test_pruning_moves_the_horizon(container: Container, db_settings: Settings) -> None:
    write(container, "c1", 1)
    project_all(db_settings)
    execute(db_settings, "UPDATE room_changes SET created_at = now() - interval '2 days'")
    last = query(db_settings, "SELECT max(position) FROM room_changes")[0][0]
    rows = len(changes(db_settings))

    async def run() -> int:
        pool = await async_pool(db_settings)
        try:
            async with pool.connection() as conn:
                return await prune(conn, 86400)
        finally:
            await pool.close()

    assert asyncio.run(run()) == rows
    assert query(db_settings, "SELECT pruned_upto FROM room_changes_horizon") == [(last,)]
    assert changes(db_settings) == []


def test_a_read_after_a_pruned_position_is_an_expired_page_without_rows(
    container: Container, db_settings: Settings
) -> None:
    write(container, "c1", 1)
    project_all(db_settings)
    execute(db_settings, "UPDATE room_changes SET created_at = now() - interval '2 days'")

    async def prune_all() -> int:
        async with await psycopg.AsyncConnection.connect(conninfo(db_settings), autocommit=True) as conn:
            return await prune(conn, 86400)

    asyncio.run(prune_all())
    horizon = query(db_settings, "SELECT pruned_upto FROM room_changes_horizon")[0][0]
    write(container, "c2", 2)  # a change after the horizon, still in the log
    project_all(db_settings)
    head = query(db_settings, "SELECT max(position) FROM room_changes")[0][0]

    async def read(after: int) -> object:
        async with await psycopg.AsyncConnection.connect(conninfo(db_settings), autocommit=True) as conn:
            return await read_changes(conn, after, limit=10, viewers=[ADMIN])

    page = asyncio.run(read(horizon - 1))
    assert page.expired and (page.horizon, page.upto, page.head) == (horizon, head, head)  # type: ignore[attr-defined]
    assert page.changes == [] and page.rooms == {} and page.messages == {}  # type: ignore[attr-defined]
    assert page.counters == {}  # type: ignore[attr-defined]
    from_horizon = asyncio.run(read(horizon))  # not expired: the change after the horizon is read
    assert not from_horizon.expired and [c.position for c in from_horizon.changes] == [head]  # type: ignore[attr-defined]
