"""The three queries of docs/analytics.md, exactly as written there, over a real export.

The SQL is read out of the doc's fenced blocks tagged `analytics:<name>`, so docs and test cannot
drift. Expected answers are recounted here from the exported wire events.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from inbox.adapters.export import export_events
from inbox.config import Settings
from inbox.bootstrap import Container
from inbox.adapters.event_log import WireEventLog
from inbox.bootstrap import open_event_store
from tests.integration.history_helpers import Story, write_story

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"
QUERIES = dict(re.findall(r"^```sql analytics:(\w+)\n(.*?)^```", DOC.read_text(), flags=re.S | re.M))


def test_the_doc_has_the_three_tagged_queries() -> None:
    assert set(QUERIES) == {"messages_per_channel_per_day", "median_first_response", "unassigned_rooms_at"}


@pytest.fixture
def exported(
    db_settings: Settings, tmp_path: Path
) -> Iterator[tuple[Story, duckdb.DuckDBPyConnection, list[dict[str, Any]]]]:
    container = Container.build(db_settings)
    try:
        day_before = datetime.now(UTC).date()
        story = write_story(container)
        assert datetime.now(UTC).date() == day_before, "the story crossed midnight UTC; run again"
    finally:
        container.close()
    app = open_event_store(db_settings)
    try:
        export_events(WireEventLog(app), tmp_path / "inbox-events.parquet", "parquet")
        export_events(WireEventLog(app), tmp_path / "inbox-events.jsonl", "jsonl")
    finally:
        app.close()
    events = [orjson.loads(line) for line in (tmp_path / "inbox-events.jsonl").read_bytes().splitlines()]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW events AS SELECT * FROM '{tmp_path / 'inbox-events.parquet'}'")
    yield story, con, events
    con.close()


def test_messages_per_channel_per_day(exported: tuple[Story, duckdb.DuckDBPyConnection, list[dict[str, Any]]]) -> None:
    story, con, events = exported
    day = datetime.fromisoformat(events[0]["occurred_at"]).date()

    rows = con.execute(QUERIES["messages_per_channel_per_day"]).fetchall()

    assert rows == [
        ("org1", day, "instagram", 2, 1),
        ("org1", day, "whatsapp_cloud", 4, 1),
        ("org2", day, "whatsapp_cloud", 1, 0),
    ]


def test_median_first_response(exported: tuple[Story, duckdb.DuckDBPyConnection, list[dict[str, Any]]]) -> None:
    story, con, events = exported

    def first(room: str, type_: str) -> datetime:
        return min(datetime.fromisoformat(e["occurred_at"]) for e in events
                   if e["room_id"] == story.rooms[room] and e["type"] == type_)

    recount = statistics.median(
        (first(room, "MessageSent") - first(room, "MessageReceived")).total_seconds() for room in ("c1", "c4")
    )

    [(org, rooms_answered, median_s)] = con.execute(QUERIES["median_first_response"]).fetchall()

    assert (org, rooms_answered) == ("org1", 2)
    assert median_s == pytest.approx(recount, abs=1e-6)


def test_unassigned_rooms_at_a_moment(exported: tuple[Story, duckdb.DuckDBPyConnection, list[dict[str, Any]]]) -> None:
    story, con, _ = exported

    def unassigned_at(moment: datetime) -> list[tuple[str, int]]:
        con.execute(f"SET VARIABLE moment = TIMESTAMPTZ '{moment.isoformat()}'")
        return con.execute(QUERIES["unassigned_rooms_at"]).fetchall()

    # Before any staff action every room waited; at the end c1, c4 (replied), c2 (assigned) and
    # c3 (resolved) are off the unassigned list: org1 keeps c6, org2 keeps c5.
    assert unassigned_at(story.before_staff) == [("org1", 5), ("org2", 1)]
    assert unassigned_at(datetime.now(UTC)) == [("org1", 1), ("org2", 1)]
