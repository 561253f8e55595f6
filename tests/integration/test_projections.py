"""The projection writer and replay against the real PostgreSQL (events read from the real store)."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from domain.channels import Channel
from domain.staff import Actor, Role
from inbox.config import Settings
from inbox.bootstrap import Container
from inbox.adapters.postgres import async_pool
from inbox.adapters.event_log import WireEventLog
from inbox.bootstrap import replay
from inbox.usecases.ingest import InboundMessage
from inbox.adapters.read_models.writer import BatchStats, ProjectionWriter
from tests.support import counters_table, execute, projection_totals, query, recount, store_totals

pytestmark = pytest.mark.integration

ADMIN = Actor("admin1", "org1", Role.ADMIN)
SPV = Actor("spv1", "org1", Role.SUPERVISOR)


def populate(container: Container, *, rooms: int = 12, seed: int = 7) -> None:
    """A realistic mix: messages on DMs and comments, takes, replies, resolutions and reopenings."""
    rng = random.Random(seed)
    wa = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA")
    fb = container.accounts.register(ADMIN, channel="facebook_comment", external_id="page-1", name="FB")
    n = 0
    for step in range(rooms * 6):
        r = rng.randrange(rooms)
        acc, channel, post = (wa, Channel.WHATSAPP_CLOUD, None) if r % 3 else (fb, Channel.FACEBOOK_COMMENT, f"post-{r % 2}")
        n += 1
        res = container.inbound.submit(acc, InboundMessage(
            channel=channel, channel_account=acc.external_id, contact_id=f"c{r}", channel_message_id=f"m{n}",
            text=f"message {n}", sent_at=datetime.now(UTC), post_id=post,
        ))
        action = rng.random()
        # Reply as the room's assignee (any agent while it is unassigned): an inbound message has
        # just reopened a resolved room, so every action below is one the domain allows.
        assignee = container.event_store.repository.get(UUID(res.room_id)).assignee
        agent = Actor(assignee or f"agent-{r % 3}", "org1", Role.AGENT)
        if action < 0.3:
            container.rooms.reply(agent, res.room_id, text="on it")
        elif action < 0.45:
            container.rooms.resolve(SPV, res.room_id)
        elif action < 0.55:
            container.rooms.assign(SPV, res.room_id, agent_id=f"agent-{step % 4}")


def all_events(settings: Settings) -> list[dict[str, Any]]:
    from inbox.bootstrap import open_event_store

    app = open_event_store(settings)
    try:
        page, _ = WireEventLog(app).read(0, 100_000)
        return [e for _, e in page.events]
    finally:
        app.close()


def apply(settings: Settings, batches: list[list[dict[str, Any]]], fill_gap: Any = None) -> list[BatchStats]:
    async def run() -> list[BatchStats]:
        pool = await async_pool(settings)
        try:
            writer = ProjectionWriter(pool, fill_gap=fill_gap)
            return [await writer.apply_batch(b) for b in batches]
        finally:
            await pool.close()

    return asyncio.run(run())


def snapshot(settings: Settings) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], dict[Any, Any]]:
    rooms = query(settings, "SELECT * FROM rooms ORDER BY id")
    messages = query(settings, "SELECT * FROM messages ORDER BY id")
    return rooms, messages, counters_table(settings)


def test_counters_equal_a_recount_after_a_mixed_history(db_settings: Settings, container: Container) -> None:
    populate(container)
    events = all_events(db_settings)
    apply(db_settings, [events[i:i + 37] for i in range(0, len(events), 37)])

    assert counters_table(db_settings) == recount(db_settings)
    assert query(db_settings, "SELECT count(*) FROM messages")[0][0] == sum(
        1 for e in events if e["type"] in ("MessageReceived", "MessageSent")
    )


def test_applying_the_same_events_twice_changes_nothing(db_settings: Settings, container: Container) -> None:
    populate(container)
    events = all_events(db_settings)
    apply(db_settings, [events])
    before = snapshot(db_settings)

    stats = apply(db_settings, [events, list(reversed(events[: len(events) // 2]))])

    assert snapshot(db_settings) == before
    assert stats[0].applied == 0 and stats[0].duplicates == len(events)


def test_a_gap_is_reported_and_filled_from_the_event_store(db_settings: Settings, container: Container) -> None:
    acc = container.accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG")
    for i in range(5):
        container.inbound.submit(acc, InboundMessage(
            channel=Channel.INSTAGRAM, channel_account="ig-1", contact_id="igsid-1", channel_message_id=f"m{i}",
            text=f"hi {i}", sent_at=datetime.now(UTC),
        ))
    events = all_events(db_settings)  # versions 1..6 of one room
    log = WireEventLog(container.event_store)

    async def fill(room_id: str, first: int, last: int) -> list[dict[str, Any]]:
        return log.room_events(room_id, first, last)

    stats = apply(db_settings, [events[:2], [events[5]]], fill_gap=fill)

    assert stats[1].gap_details == [(events[0]["room_id"], 3, 6, True)]
    assert query(db_settings, "SELECT version FROM rooms")[0][0] == 6
    assert query(db_settings, "SELECT count(*) FROM messages")[0][0] == 5
    assert query(db_settings, "SELECT expected_version, got_version, filled FROM projection_gaps") == [(3, 6, True)]


def test_an_unfillable_gap_holds_the_room_back_and_is_recorded(db_settings: Settings, container: Container) -> None:
    acc = container.accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG")
    for i in range(3):
        container.inbound.submit(acc, InboundMessage(
            channel=Channel.INSTAGRAM, channel_account="ig-1", contact_id="igsid-1", channel_message_id=f"m{i}",
            text="x", sent_at=datetime.now(UTC),
        ))
    events = all_events(db_settings)

    stats = apply(db_settings, [events[:1], events[3:]])  # no gap filler: v2, v3 unrecoverable here

    assert stats[1].unfilled_gaps == 1
    assert query(db_settings, "SELECT version FROM rooms")[0][0] == 1
    assert query(db_settings, "SELECT filled FROM projection_gaps") == [(False,)]


def test_two_writers_on_disjoint_partitions_match_one_writer(db_settings: Settings, container: Container) -> None:
    populate(container, rooms=20, seed=11)
    events = all_events(db_settings)
    apply(db_settings, [events])
    expected = snapshot(db_settings)
    execute(db_settings, "TRUNCATE rooms, messages, counters")

    partitions: list[list[dict[str, Any]]] = [[], []]
    for e in events:
        partitions[hash(e["room_id"]) % 2].append(e)

    async def two_workers() -> None:
        pools = [await async_pool(db_settings), await async_pool(db_settings)]
        try:
            writers = [ProjectionWriter(p) for p in pools]

            async def consume(writer: ProjectionWriter, part: list[dict[str, Any]]) -> None:
                for i in range(0, len(part), 7):
                    await writer.apply_batch(part[i:i + 7])

            await asyncio.gather(*(consume(w, p) for w, p in zip(writers, partitions, strict=True)))
        finally:
            for p in pools:
                await p.close()

    asyncio.run(two_workers())
    assert snapshot(db_settings) == expected


def test_replay_rebuilds_exactly_the_live_projections(db_settings: Settings, container: Container) -> None:
    populate(container, rooms=15, seed=3)
    events = all_events(db_settings)
    apply(db_settings, [events[i:i + 50] for i in range(0, len(events), 50)])
    live = snapshot(db_settings)
    execute(db_settings, "UPDATE counters SET rooms = rooms + 5")  # corrupt the live state

    progress: list[tuple[int, int]] = []
    stats = asyncio.run(replay(db_settings, page_size=40, progress=lambda done, total, rate: progress.append((done, total))))

    assert snapshot(db_settings) == live
    assert stats.events == len(events) and stats.rooms == len(live[0])
    assert progress and progress[-1][0] == progress[-1][1]


def reports_snapshot(settings: Settings) -> list[list[tuple[Any, ...]]]:
    return [query(settings, f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4")
            for table in ("report_cycles", "report_counts", "report_backlog")] + [
        query(settings, "SELECT room_id, version, state FROM report_rooms ORDER BY room_id")]


def change_messages(container: Container, settings: Settings) -> None:
    """Edits, removals and delivery outcomes of messages already stored (history rows that change)."""
    now = datetime.now(UTC)
    events = all_events(settings)
    received = [e for e in events if e["type"] == "MessageReceived"][:6]
    sent = [e for e in events if e["type"] == "MessageSent"][:4]
    for i, e in enumerate(received):
        room = container.event_store.repository.get(UUID(e["room_id"]))
        if i % 2:
            room.remove_message(message_id=e["data"]["message_id"],
                                channel_message_id=e["data"]["channel_message_id"], removed_at=now)
        else:
            room.edit_message(message_id=e["data"]["message_id"], channel_message_id=e["data"]["channel_message_id"],
                              text=f"edited {i}", edited_at=now)
        container.event_store.save(room)
    for i, e in enumerate(sent):
        room = container.event_store.repository.get(UUID(e["room_id"]))
        room.record_delivery_accepted(message_id=e["data"]["message_id"], channel_message_id=f"wamid.out{i}", at=now)
        room.record_delivery_status(channel_message_id=f"wamid.out{i}", status="delivered", at=now)
        container.event_store.save(room)


def test_replay_folding_rooms_in_two_processes_rebuilds_the_same_projections(
    db_settings: Settings, container: Container,
) -> None:
    """A large log is folded by share of the rooms in worker processes (`bulk.fold_share`): the same
    rooms, history, counters and reports as the live writer's, and as one share folded in a thread."""
    populate(container, rooms=15, seed=8)
    change_messages(container, db_settings)
    events = all_events(db_settings)
    assert {"MessageEdited", "MessageRemoved", "ReplyDeliveryAccepted", "DeliveryStatusChanged"} <= {
        e["type"] for e in events}
    apply(db_settings, [events[i:i + 50] for i in range(0, len(events), 50)])
    live = snapshot(db_settings)
    asyncio.run(replay(db_settings, page_size=40, shares=1))
    one_share = reports_snapshot(db_settings)
    execute(db_settings, "UPDATE counters SET rooms = rooms + 5")  # corrupt the live state

    progress: list[tuple[int, int]] = []
    stats = asyncio.run(replay(db_settings, page_size=40, shares=2,
                               progress=lambda done, total, rate: progress.append((done, total))))

    assert snapshot(db_settings) == live
    assert reports_snapshot(db_settings) == one_share and one_share[0]
    assert stats.events == len(events) and stats.rooms == len(live[0])
    assert progress and progress[-1][0] == progress[-1][1]


def keys_and_indexes(settings: Settings) -> list[tuple[Any, ...]]:
    """Every index and constraint of the schema's tables, as PostgreSQL states them."""
    return query(settings, "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %s"
                           " ORDER BY 1, 2", (settings.db_schema,)) + query(settings,
        "SELECT t.relname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname = %s ORDER BY 1, 2", (settings.db_schema,))


@pytest.mark.parametrize("shares", [1, 2])
def test_replay_leaves_every_index_and_key_of_the_rebuilt_tables_as_the_migration_made_them(
    db_settings: Settings, container: Container, shares: int,
) -> None:
    """The bulk load drops the unique keys of the tables it COPYs and builds every index after
    loading (`bulk.KEYS_BUILT_AFTER`, `schema.read_model_ddl`): all of them are back after the switch."""
    populate(container, rooms=5, seed=4)
    migrated = keys_and_indexes(db_settings)
    assert {"rooms_pkey", "messages_pkey", "report_rooms_pkey", "report_cycles_pkey"} <= {r[1] for r in migrated}

    asyncio.run(replay(db_settings, page_size=40, shares=shares))

    assert keys_and_indexes(db_settings) == migrated


def test_replay_of_a_message_id_stored_twice_keeps_the_first_as_the_writer_does(
    db_settings: Settings, container: Container, caplog: pytest.LogCaptureFixture,
) -> None:
    """The bulk load builds the history's unique indexes after loading: a message id stored twice
    fails that build, and the log is loaded again through the writer (ON CONFLICT DO NOTHING)."""
    import logging

    populate(container, rooms=4, seed=6)
    first = next(e for e in all_events(db_settings) if e["type"] == "MessageReceived")
    last = max(e["version"] for e in all_events(db_settings) if e["room_id"] == first["room_id"])
    execute(db_settings, "INSERT INTO inbox_events (originator_id, originator_version, topic, state)"
                         " SELECT originator_id, %s, topic, state FROM inbox_events"
                         " WHERE originator_id = %s AND originator_version = %s",
            (last + 1, first["room_id"], first["version"]))
    apply(db_settings, [all_events(db_settings)])
    live = snapshot(db_settings)

    with caplog.at_level(logging.WARNING, logger="inbox.adapters.read_models.replay"):
        asyncio.run(replay(db_settings))

    assert snapshot(db_settings) == live
    assert any("refused a bulk write" in r.getMessage() for r in caplog.records)


def test_replay_keeps_reads_answering_and_workers_continue_across_the_switch(
    db_settings: Settings, container: Container,
) -> None:
    """The rebuild happens beside the live read models: the query layer answers from them until the
    switch; a worker projecting during the replay and after it leaves no gap, no duplicate."""
    from inbox.adapters.read_models.queries import InboxQueries, RoomFilter

    populate(container, rooms=10, seed=5)
    apply(db_settings, [all_events(db_settings)])
    queries = InboxQueries(container.read_pool)
    live_rooms = {r["id"] for r in queries.rooms(ADMIN, RoomFilter(), limit=100, cursor=None)["items"]}
    acc = container.accounts.register(ADMIN, channel="instagram", external_id="ig-9", name="IG")
    seen: dict[str, Any] = {}

    def write(contact: str, n: int) -> str:
        return str(container.inbound.submit(acc, InboundMessage(
            channel=Channel.INSTAGRAM, channel_account="ig-9", contact_id=contact, channel_message_id=f"{contact}-{n}",
            text=f"{contact} {n}", sent_at=datetime.now(UTC),
        )).room_id)

    async def before_switch() -> None:
        # The shadow is built and the switch has not happened: reads answer from the live tables
        # (bounded by the read pool's statement timeout: a read blocked by the replay would fail).
        seen["rooms"] = {r["id"] for r in (await asyncio.to_thread(
            queries.rooms, ADMIN, RoomFilter(), limit=100, cursor=None))["items"]}
        seen["counters"] = await asyncio.to_thread(queries.counters, ADMIN)
        # A worker projects events stored after the replay read the log, into the live tables.
        seen["during"] = write("during", 1)
        during = [e for e in all_events(db_settings) if e["room_id"] == seen["during"]]
        seen["during_events"] = during
        pool = await async_pool(db_settings)
        try:
            seen["during_stats"] = await ProjectionWriter(pool).apply_batch(during)
        finally:
            await pool.close()

    stats = asyncio.run(replay(db_settings, page_size=25, before_switch=before_switch))

    assert seen["rooms"] == live_rooms and seen["counters"]
    assert seen["during_stats"].applied == len(seen["during_events"])
    assert stats.rooms == len(live_rooms) + 1  # the switch caught up with what was stored meanwhile
    # After the switch: the worker's redelivery of those events is a duplicate; new events apply.
    again = apply(db_settings, [seen["during_events"]])[0]
    assert again.duplicates == len(seen["during_events"]) and again.applied == 0 and again.gaps == 0
    after_room = write("after", 1)
    write("during", 2)
    fresh = [e for e in all_events(db_settings) if e["room_id"] in (after_room, seen["during"])]
    apply(db_settings, [fresh])
    assert projection_totals(db_settings) == store_totals(db_settings)
    assert counters_table(db_settings) == recount(db_settings)
    assert query(db_settings, "SELECT count(*) FROM projection_gaps")[0][0] == 0
    assert query(db_settings, "SELECT kind FROM room_changes ORDER BY position DESC LIMIT 1")[0][0] == "room"
    assert query(db_settings, "SELECT count(*) FROM room_changes WHERE kind = 'reset'")[0][0] == 1
    ids = {r["id"] for r in queries.rooms(ADMIN, RoomFilter(), limit=100, cursor=None)["items"]}
    assert ids == live_rooms | {seen["during"], after_room}


def test_the_event_log_reads_the_same_wire_events_as_the_library_decoder(
    db_settings: Settings, container: Container,
) -> None:
    """`WireEventLog` parses stored states itself (orjson, the library's transcodings and upcasts):
    the wire events equal the library's decode + `to_wire`, old class versions included."""
    from inbox.adapters.event_log import ROOM_TOPIC_PREFIX
    from inbox.adapters.wire import to_wire

    populate(container, rooms=6, seed=11)
    room = all_events(db_settings)[0]["room_id"]
    # A MessageReceived stored at class version 1 (no kind, attachments, class_version): upcast on read.
    execute(db_settings, "INSERT INTO inbox_events (originator_id, originator_version, topic, state) VALUES"
                         " (%s, 1000, 'domain.room:Room.MessageReceived', convert_to(%s, 'UTF8'))",
            (room, '{"timestamp":{"_type_":"datetime_iso","_data_":"2025-01-02T03:04:05.000006+00:00"},'
                   '"org_id":"org1","message_id":"0825f889-97da-53d9-9773-1179a247928c","channel_message_id":"x",'
                   '"text":"old \\u00e9","sent_at":{"_type_":"datetime_iso","_data_":"2025-01-02T03:04:05+07:00"},'
                   '"contact_name":null}'))
    app = container.event_store
    stored = [n for n in app.recorder.select_notifications(start=0, limit=100_000) if n.topic.startswith(ROOM_TOPIC_PREFIX)]
    page, _ = WireEventLog(app).read(0, 100_000)

    assert [e for _, e in page.events] == [to_wire(app.decode(n)) for n in stored]
    assert page.events[-1][1]["data"]["kind"] == "text" and page.events[-1][1]["version"] == 1000


def test_a_replay_that_fails_before_its_switch_leaves_the_live_read_models_and_no_shadow(
    db_settings: Settings, container: Container,
) -> None:
    populate(container, rooms=5, seed=2)
    apply(db_settings, [all_events(db_settings)])
    live = snapshot(db_settings)

    async def crash() -> None:
        raise RuntimeError("killed before the switch")

    with pytest.raises(RuntimeError, match="killed before the switch"):
        asyncio.run(replay(db_settings, before_switch=crash))

    assert snapshot(db_settings) == live
    assert query(db_settings, "SELECT count(*) FROM pg_namespace WHERE nspname = %s",
                 (db_settings.db_schema + "__replay",))[0][0] == 0
    assert query(db_settings, "SELECT count(*) FROM room_changes WHERE kind = 'reset'")[0][0] == 0
    asyncio.run(replay(db_settings))  # the lock was released: the next one runs
    assert snapshot(db_settings) == live


def test_a_second_replay_of_the_same_schema_is_refused_while_one_runs(
    db_settings: Settings, container: Container,
) -> None:
    from inbox.config import ConfigError

    populate(container, rooms=3, seed=4)
    refused: list[BaseException] = []

    async def second() -> None:
        try:
            await replay(db_settings)
        except ConfigError as e:
            refused.append(e)

    stats = asyncio.run(replay(db_settings, before_switch=second))

    assert [str(e) for e in refused] == [f"another `inbox replay` is rebuilding schema {db_settings.db_schema!r}"]
    assert stats.rooms == 3 and counters_table(db_settings) == recount(db_settings)


def test_the_switch_gives_way_to_a_long_read_and_retries(
    db_settings: Settings, container: Container, caplog: pytest.LogCaptureFixture,
) -> None:
    """A read holding a live table past the switch's lock timeout makes the switch give up and try
    again (rather than queue every other read behind it); the replay finishes once it ends."""
    import logging
    import threading
    import time

    import psycopg

    from inbox.adapters.postgres import conninfo

    populate(container, rooms=4, seed=9)
    apply(db_settings, [all_events(db_settings)])
    live = snapshot(db_settings)
    holding, errors = threading.Event(), []

    def long_read() -> None:
        try:
            with psycopg.connect(conninfo(db_settings)) as conn:
                conn.execute("SELECT count(*) FROM rooms").fetchone()  # ACCESS SHARE until the commit
                holding.set()
                deadline = time.monotonic() + 60
                while not any("switching waits for readers" in r.getMessage() for r in list(caplog.records)):
                    assert time.monotonic() < deadline, "the switch never gave way"
                    time.sleep(0.05)
                conn.commit()
        except BaseException as e:  # reported by the test thread
            errors.append(e)
            holding.set()

    reader = threading.Thread(target=long_read)

    async def start_reader() -> None:
        reader.start()
        await asyncio.to_thread(holding.wait, 30)

    with caplog.at_level(logging.WARNING, logger="inbox.adapters.read_models.replay"):
        asyncio.run(replay(db_settings, before_switch=start_reader))
    reader.join(30)

    assert not errors and snapshot(db_settings) == live
