"""One bad event never stops a projection loop: the writer, replay, the worker and `inbox dead-letters`.

Real PostgreSQL (and, for the worker, the real broker and a real `inbox worker` process).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from domain.channels import Channel
from domain.staff import Actor, Role
from inbox.adapters.read_models import dead_letters
from inbox.config import Settings
from inbox.bootstrap import Container
from inbox.adapters.postgres import async_pool, conninfo
from inbox.bootstrap import replay, retry_dead_letters
from inbox.usecases.ingest import InboundMessage
from inbox.adapters.wire import encode, event_id
from inbox.adapters.postgres import is_transient
from inbox.adapters.read_models.writer import ProjectionWriter
from inbox.adapters.kafka.relay import ensure_topic
from tests.support import Pipeline, counters_table, env_for, execute, project_all, query, recount, wait_until

pytestmark = pytest.mark.integration

ADMIN = Actor("admin1", "org1", Role.ADMIN)
NOW = "2026-01-05T10:00:00+00:00"


def wire(room: str, version: int, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id(room, version), "type": type_, "schema_version": 1, "org_id": "org1", "room_id": room,
            "version": version, "occurred_at": NOW, "data": data}


def opened(room: str) -> dict[str, Any]:
    return wire(room, 1, "RoomOpened", {
        "channel": "whatsapp_cloud", "channel_account_id": str(uuid.uuid4()), "channel_account": "pn-1",
        "contact_id": "6281200000001", "contact_name": "Ana", "contact_phone": None, "contact_handle": None,
        "post_id": None,
    })


def received(room: str, version: int, text: Any = "hello", **data: Any) -> dict[str, Any]:
    return wire(room, version, "MessageReceived", {
        "message_id": str(uuid.uuid4()), "text": text, "sent_at": NOW, "channel_message_id": f"wamid-{version}",
        "kind": "text", "attachments": [], **data,
    })


def apply_batches(settings: Settings, *batches: list[dict[str, Any]]) -> None:
    async def run() -> None:
        pool = await async_pool(settings)
        try:
            writer = ProjectionWriter(pool)
            for batch in batches:
                await writer.apply_batch(batch)
        finally:
            await pool.close()

    asyncio.run(run())


def room_state(settings: Settings, room: str) -> tuple[int, str]:
    rows = query(settings, "SELECT version, last_message_text FROM rooms WHERE id = %s", (room,))
    return rows[0] if rows else (0, "")


def unresolved(settings: Settings) -> list[tuple[Any, ...]]:
    return query(settings, "SELECT room_id, version, event_type, reason FROM projection_dead_letters"
                           " WHERE resolved_at IS NULL ORDER BY id")


HOSTILE = {
    "nul_in_text": (lambda room: received(room, 2, "a\u0000b"), "NUL"),
    "nul_in_attachment": (lambda room: received(room, 2, attachments=[{"caption": "x\u0000"}]), "Unicode"),
    "text_is_an_object": (lambda room: received(room, 2, {"a": 1}), "adapt"),
    "text_too_long_for_a_tsvector": (lambda room: received(room, 2, " ".join(f"w{i}" for i in range(220_000))),
                                     "too long"),
    "text_is_null": (lambda room: received(room, 2, None), "null"),
    "message_id_not_a_uuid": (lambda room: received(room, 2, message_id="m-1"), "uuid"),
    "sent_at_overflows_the_reply_window": (lambda room: received(room, 2, sent_at="9999-12-31T23:00:00+00:00"),
                                           "Overflow"),
    "contact_name_with_nul": (lambda room: received(room, 2, contact_name="Ana\u0000"), "NUL"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_an_event_the_database_refuses_is_dead_lettered_and_the_rest_of_the_batch_projects(
    db_settings: Settings, case: str,
) -> None:
    make_bad, reason = HOSTILE[case]
    room, other = str(uuid.uuid4()), str(uuid.uuid4())

    apply_batches(db_settings, [opened(room), make_bad(room), received(room, 3, "canary"),
                                opened(other), received(other, 2, "other canary")])

    assert room_state(db_settings, room) == (3, "canary")
    assert room_state(db_settings, other) == (2, "other canary")
    [(dl_room, dl_version, dl_type, dl_reason)] = unresolved(db_settings)
    assert (dl_room, dl_version, dl_type) == (room, 2, "MessageReceived")
    assert reason.lower() in dl_reason.lower()
    assert query(db_settings, "SELECT count(*) FROM messages WHERE room_id = %s", (room,))[0][0] == 1
    assert counters_table(db_settings) == recount(db_settings)


def test_an_attachment_orjson_cannot_encode_is_projected_exactly_not_refused(db_settings: Settings) -> None:
    room = str(uuid.uuid4())  # an integer over 64 bits: written as JSON by the stdlib (writer._json)
    apply_batches(db_settings, [opened(room), received(room, 2, "big", attachments=[{"n": 2**70}])])

    assert room_state(db_settings, room) == (2, "big")
    assert query(db_settings, "SELECT attachments FROM messages WHERE room_id = %s", (room,)) == [([{"n": 2**70}],)]
    assert unresolved(db_settings) == []


def test_a_refused_event_in_a_later_batch_does_not_hold_back_the_room(db_settings: Settings) -> None:
    room = str(uuid.uuid4())

    apply_batches(db_settings, [opened(room), received(room, 2)], [received(room, 3, "a\u0000b")],
                  [received(room, 4, "canary")])

    assert room_state(db_settings, room) == (4, "canary")
    assert [r[1] for r in unresolved(db_settings)] == [3]


def test_a_lock_timeout_is_retried_not_dead_lettered(db_settings: Settings) -> None:
    room = str(uuid.uuid4())
    apply_batches(db_settings, [opened(room)])

    async def scenario() -> BaseException | None:
        options = f"-c search_path={db_settings.db_schema} -c lock_timeout=200"
        pool = AsyncConnectionPool(conninfo(db_settings), kwargs={"autocommit": True, "options": options}, open=False)
        await pool.open()
        blocker = await psycopg.AsyncConnection.connect(conninfo(db_settings))
        try:
            await blocker.execute("SELECT 1 FROM rooms WHERE id = %s FOR UPDATE", (room,))
            await ProjectionWriter(pool).apply_batch([received(room, 2, "canary")])
        except Exception as e:  # noqa: BLE001 - the error is the assertion's subject
            return e
        finally:
            await blocker.close()
            await pool.close()
        return None

    error = asyncio.run(scenario())

    assert isinstance(error, psycopg.errors.LockNotAvailable) and is_transient(error)
    assert unresolved(db_settings) == []
    assert room_state(db_settings, room)[0] == 1
    apply_batches(db_settings, [received(room, 2, "canary")])  # the retry, once the lock is gone
    assert room_state(db_settings, room) == (2, "canary")


def test_transient_and_event_errors_are_told_apart() -> None:
    assert is_transient(psycopg.OperationalError("connection lost"))
    assert is_transient(psycopg.errors.AdminShutdown())
    assert is_transient(psycopg.errors.QueryCanceled())
    assert is_transient(psycopg.errors.UndefinedTable())  # schema not migrated: not the event's fault
    assert not is_transient(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"))
    assert not is_transient(psycopg.errors.ProgramLimitExceeded())  # e.g. a text too long for a tsvector
    assert not is_transient(psycopg.errors.CheckViolation())
    assert not is_transient(TypeError("x"))


# ---- from the event store: replay and retry -------------------------------------------------
def store_conversation(container: Container, texts: list[str]) -> str:
    account = container.accounts.register(ADMIN, channel="whatsapp_cloud", external_id="pn-1", name="WA")
    room_id = ""
    for i, text in enumerate(texts):
        room_id = str(container.inbound.submit(account, InboundMessage(
            channel=Channel.WHATSAPP_CLOUD, channel_account="pn-1", contact_id="6281200000001",
            channel_message_id=f"m{i}", text=text, sent_at=datetime.now(UTC),
        )).room_id)
    return room_id


def refuse_text(settings: Settings, text: str) -> None:
    """A constraint the projection cannot satisfy for one stored event (stands for any database refusal)."""
    execute(settings, f"ALTER TABLE messages ADD CONSTRAINT refuse_poison CHECK (text <> '{text}')")


@pytest.mark.parametrize("shares", [1, 2])  # the log folded in a thread, or in two worker processes
def test_replay_dead_letters_an_event_it_cannot_apply_and_finishes(
    db_settings: Settings, container: Container, shares: int,
) -> None:
    room = store_conversation(container, ["one", "poison", "three"])
    refuse_text(db_settings, "poison")

    stats = asyncio.run(replay(db_settings, page_size=2, shares=shares))

    assert stats.events == 4
    assert room_state(db_settings, room) == (4, "three")
    assert [(r[1], r[2]) for r in unresolved(db_settings)] == [(3, "MessageReceived")]
    assert "refuse_poison" in unresolved(db_settings)[0][3]
    assert counters_table(db_settings) == recount(db_settings)


@pytest.mark.parametrize("shares", [1, 2])
def test_replay_dead_letters_an_event_its_fold_refuses_exactly_as_a_worker_does(
    db_settings: Settings, container: Container, shares: int,
) -> None:
    """The replay's reader leaves out what a fold does not need (the event id, ISO text for times:
    `event_log._lean_wire(folding=True)`); a dead letter still stores the whole wire event."""
    room = store_conversation(container, ["one"])
    orphan = str(uuid.uuid4())  # a message with no RoomOpened before it: both folds refuse it
    execute(db_settings, "INSERT INTO inbox_events (originator_id, originator_version, topic, state)"
                         " SELECT %s, 1, topic, state FROM inbox_events WHERE originator_id = %s AND originator_version = 2",
            (orphan, room))
    letters = "SELECT event_id, event, room_id, version, event_type FROM {} ORDER BY id"
    project_all(db_settings)  # the projection worker's writer (not the reports consumer)
    [live] = query(db_settings, letters.format("projection_dead_letters"))

    asyncio.run(replay(db_settings, page_size=2, shares=shares))

    assert query(db_settings, letters.format("projection_dead_letters")) == [live]
    assert query(db_settings, letters.format("report_dead_letters")) == [live]
    assert live[0] == event_id(orphan, 1)


def test_retry_after_the_fix_applies_the_event_and_resolves_its_dead_letter(
    db_settings: Settings, container: Container,
) -> None:
    room = store_conversation(container, ["one", "poison", "three"])
    refuse_text(db_settings, "poison")
    project_all(db_settings)
    [dead] = dead_letters.list_dead_letters(db_settings)
    assert (dead.room_id, dead.version) == (room, 3)

    still = asyncio.run(retry_dead_letters(db_settings, [dead.id]))  # not fixed yet: stays, same id
    assert (still.resolved, still.still_failing) == (0, 1)
    assert [d.id for d in dead_letters.list_dead_letters(db_settings)] == [dead.id]

    execute(db_settings, "ALTER TABLE messages DROP CONSTRAINT refuse_poison")  # the fix
    result = asyncio.run(retry_dead_letters(db_settings, None))

    assert (result.rooms, result.resolved, result.still_failing) == (1, 1, 0)
    assert query(db_settings, "SELECT text FROM messages WHERE room_id = %s ORDER BY seq", (room,)) == [
        ("one",), ("poison",), ("three",)]
    assert room_state(db_settings, room) == (4, "three")
    assert counters_table(db_settings) == recount(db_settings)
    with psycopg.connect(conninfo(db_settings)) as conn:
        assert dead_letters.unresolved_count(conn) == 0
    [after] = dead_letters.list_dead_letters(db_settings, include_resolved=True)
    assert after.id == dead.id and after.resolved_at is not None


def test_the_cli_lists_and_retries_dead_letters(db_settings: Settings, container: Container, tmp_path: Path) -> None:
    store_conversation(container, ["one", "poison"])
    refuse_text(db_settings, "poison")
    project_all(db_settings)
    env = env_for(db_settings)

    listed = subprocess.run([sys.executable, "-m", "inbox.entrypoints.cli", "dead-letters"], env=env, capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    execute(db_settings, "ALTER TABLE messages DROP CONSTRAINT refuse_poison")
    retried = subprocess.run([sys.executable, "-m", "inbox.entrypoints.cli", "dead-letters", "retry", "--all"], env=env,
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)

    assert listed.returncode == 0 and "MessageReceived" in listed.stdout and "refuse_poison" in listed.stdout
    assert retried.returncode == 0, retried.stderr
    assert "1 resolved, 0 still failing" in retried.stdout
    assert unresolved(db_settings) == []


# ---- the worker process ---------------------------------------------------------------------
def test_the_worker_dead_letters_a_nul_text_and_projects_the_canary_after_it(settings: Settings, tmp_path: Path) -> None:
    settings = replace(settings, topic_partitions=1)  # one partition: the canaries queue behind the bad event
    room, other = str(uuid.uuid4()), str(uuid.uuid4())
    events = [opened(room), received(room, 2, "a\u0000b"), opened(other), received(other, 2, "other canary"),
              received(room, 3, "canary")]

    async def publish() -> None:
        assert settings.kafka_bootstrap
        await ensure_topic(settings.kafka_bootstrap, settings.events_topic, settings.topic_partitions)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            for e in events:
                await producer.send_and_wait(settings.events_topic, encode(e), key=e["room_id"].encode())
        finally:
            await producer.stop()

    asyncio.run(publish())
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start("worker")
    try:
        wait_until(lambda: room_state(settings, room) == (3, "canary") and room_state(settings, other)[0] == 2,
                   timeout=90, what="the canaries behind the NUL event to be projected")
    finally:
        pipeline.stop_all()

    [(dl_room, dl_version, _, reason)] = unresolved(settings)
    assert (dl_room, dl_version) == (room, 2) and "NUL" in reason


def store_unreadable_event(settings: Settings, room: str, version: int) -> None:
    """A stored room event the code cannot decode (stands for a corrupt row or a class removed by a deploy)."""
    execute(settings, "INSERT INTO inbox_events (originator_id, originator_version, topic, state)"
                      " VALUES (%s, %s, 'domain.room:Room.MessageReceived', %s)", (room, version, b"\xffnot json"))


@pytest.mark.parametrize("shares", [1, 2])
def test_replay_dead_letters_a_stored_event_it_cannot_read_and_finishes(
    db_settings: Settings, container: Container, shares: int,
) -> None:
    room = store_conversation(container, ["one"])
    store_unreadable_event(db_settings, room, 3)
    account = container.accounts.register(ADMIN, channel="instagram", external_id="ig-1", name="IG")
    canary = str(container.inbound.submit(account, InboundMessage(
        channel=Channel.INSTAGRAM, channel_account="ig-1", contact_id="igsid-1", channel_message_id="canary",
        text="canary", sent_at=datetime.now(UTC),
    )).room_id)

    asyncio.run(replay(db_settings, page_size=2, shares=shares))

    assert room_state(db_settings, room)[0] == 2
    assert room_state(db_settings, canary) == (2, "canary")
    [(dl_room, dl_version, dl_type, _)] = unresolved(db_settings)
    assert (dl_room, dl_version, dl_type) == (room, 3, "MessageReceived")
