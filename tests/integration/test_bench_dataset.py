"""The query benchmark's data set (bench/dataset.py) as built by several processes: the same rooms
as one process builds, every event through the store's recorder with notification ids in commit
order (each room's versions ascend with them)."""

from __future__ import annotations

from dataclasses import replace

import psycopg
import pytest
from psycopg import sql

from bench.dataset import build
from inbox.adapters.postgres import conninfo
from inbox.adapters.schema import migrate
from inbox.config import Settings

pytestmark = pytest.mark.integration

ROOMS, MESSAGES = 4500, 18_000  # three chunks of the builders: two processes share them


def room_events(settings: Settings) -> dict[str, list[tuple[int, int]]]:
    """Room id → its (notification id, version) pairs, in notification order."""
    with psycopg.connect(conninfo(settings)) as conn:
        rows = conn.execute(
            "SELECT originator_id::text, notification_id, originator_version FROM inbox_events"
            " WHERE topic LIKE %s ORDER BY notification_id", ("domain.room:%",)
        ).fetchall()
    out: dict[str, list[tuple[int, int]]] = {}
    for room, nid, version in rows:
        out.setdefault(room, []).append((nid, version))
    return out


def test_builder_processes_build_the_data_set_one_process_builds(db_settings: Settings) -> None:
    parallel = build(db_settings, ROOMS, MESSAGES, processes=2, events_per_tx=3000)
    single_settings = replace(db_settings, db_schema=db_settings.db_schema + "_one")
    migrate(single_settings)
    try:
        single = build(single_settings, ROOMS, MESSAGES, processes=1, events_per_tx=3000)
        by_two, by_one = room_events(db_settings), room_events(single_settings)
    finally:
        with psycopg.connect(db_settings.database_url or "", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(single_settings.db_schema)))

    assert (parallel.rooms, parallel.messages) == (single.rooms, single.messages) == (ROOMS, MESSAGES)
    assert parallel.events == single.events == sum(len(v) for v in by_two.values())
    assert len(by_two) == ROOMS  # every room its own aggregate: no two rooms share an id (phones are unique)
    assert {room: len(events) for room, events in by_two.items()} == {
        room: len(events) for room, events in by_one.items()
    }
    for events in by_two.values():  # a room's events were recorded in its version order
        assert [version for _, version in events] == list(range(1, len(events) + 1))
