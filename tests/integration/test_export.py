"""`inbox export` against the real PostgreSQL (and, for the topic comparison, the real broker)."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inbox.adapters.export import (
    ENVELOPE_COLUMNS,
    ExportError,
    ExportFilter,
    export_events,
    parquet_columns,
    parse_time,
    parse_types,
)
from inbox.entrypoints.cli import main
from inbox.config import Settings
from inbox.bootstrap import Container
from inbox.adapters.event_log import WireEventLog
from inbox.bootstrap import open_event_store
from inbox.adapters.wire import encode
from tests.integration.history_helpers import ADMIN1, Story, write_inbound, write_story
from tests.integration.test_relay import caught_up, running_relay
from tests.support import events_topic_from_start

pytestmark = pytest.mark.integration


@pytest.fixture
def reader(db_settings: Settings) -> Iterator[WireEventLog]:
    app = open_event_store(db_settings)
    yield WireEventLog(app)
    app.close()


@pytest.fixture
def story(container: Container) -> Story:
    return write_story(container)


def all_wire_events(reader: WireEventLog) -> list[dict[str, Any]]:
    page, _ = reader.read(0, 100_000)
    return [e for _, e in page.events]


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# ---- JSON Lines -----------------------------------------------------------------------------
def test_jsonl_holds_one_line_per_room_event_with_the_bytes_the_relay_encodes(
    reader: WireEventLog, story: Story, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    stats = export_events(reader, out, "jsonl")

    expected = [encode(e) for e in all_wire_events(reader)]
    assert out.read_bytes().splitlines() == expected
    # inbound, opened, replies (each with its RoomAssigned), assign, resolve
    assert stats.events == len(expected) == 7 + 6 + 2 * 2 + 1 + 1
    assert stats.bytes == out.stat().st_size


def test_jsonl_lines_are_exactly_what_the_relay_published_to_the_topic(settings: Settings, tmp_path: Path) -> None:
    container = Container.build(settings)
    try:
        write_story(container)
    finally:
        container.close()
    app = open_event_store(settings)
    try:
        export_events(WireEventLog(app), tmp_path / "events.jsonl", "jsonl")
    finally:
        app.close()

    async def published() -> list[bytes]:
        async with running_relay(settings) as relay:
            await caught_up(relay, settings)
        return await raw_topic_values(settings, at_least=relay.published)

    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert sorted(asyncio.run(published())) == sorted(lines)
    per_room: dict[str, list[int]] = defaultdict(list)
    for event in map(orjson.loads, lines):
        per_room[event["room_id"]].append(event["version"])
    assert all(v == list(range(1, len(v) + 1)) for v in per_room.values())  # per room, in version order


async def raw_topic_values(settings: Settings, at_least: int, timeout: float = 30) -> list[bytes]:
    """The events topic's message values, byte for byte, read from the start of every partition."""
    async with events_topic_from_start(settings) as consumer:
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < at_least:
            assert time.monotonic() < deadline, f"only {len(values)} of {at_least} events on the topic"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                values.extend(r.value for r in records)
        return values


# ---- Parquet --------------------------------------------------------------------------------
def test_parquet_has_one_typed_row_per_event_with_data_fields_as_columns(
    reader: WireEventLog, story: Story, tmp_path: Path
) -> None:
    out = tmp_path / "events.parquet"
    export_events(reader, out, "parquet", row_group_size=5)
    events = all_wire_events(reader)

    table = pq.read_table(out)
    assert table.num_rows == len(events)
    assert pq.ParquetFile(out).metadata.num_row_groups == -(-len(events) // 5)
    assert table.schema.names == list(parquet_columns())
    utc_us = pa.timestamp("us", tz="UTC")
    assert table.schema.field("occurred_at").type == utc_us
    assert table.schema.field("data_sent_at").type == utc_us
    assert table.schema.field("version").type == pa.int64()
    assert table.schema.field("data_attachments").type == pa.string()  # nested: JSON text
    rows = table.to_pylist()
    for row, event in zip(rows, events, strict=True):
        assert {k: row[k] for k in ENVELOPE_COLUMNS if k != "occurred_at"} == {
            k: event[k] for k in ENVELOPE_COLUMNS if k != "occurred_at"
        }
        assert row["occurred_at"] == datetime.fromisoformat(event["occurred_at"])
        assert row["data_extra"] is None  # every field of today's events has its own column
        if event["type"] == "MessageReceived":
            assert row["data_text"] == event["data"]["text"]
            assert row["data_sent_at"] == datetime.fromisoformat(event["data"]["sent_at"])
            assert orjson.loads(row["data_attachments"]) == event["data"]["attachments"]
            assert row["data_assignee"] is None  # another type's field: null
        if event["type"] == "RoomOpened":
            assert row["data_channel"] in {"whatsapp_cloud", "instagram"}


def test_parquet_keeps_unknown_data_fields_in_data_extra(tmp_path: Path) -> None:
    from inbox.adapters.export import ParquetWriter

    event = {
        "id": "x", "type": "RoomReopened", "schema_version": 1, "org_id": "o", "room_id": "r", "version": 9,
        "occurred_at": "2025-03-01T09:00:00+00:00", "data": {"reason": "inbound_message", "newer_field": [1, 2]},
    }
    with open(tmp_path / "e.parquet", "wb") as f:
        writer = ParquetWriter(f)
        writer.write(event)
        writer.close()
    [row] = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert row["data_reason"] == "inbound_message"
    assert orjson.loads(row["data_extra"]) == {"newer_field": [1, 2]}


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_the_org_filter_exports_only_that_organizations_events(
    fmt: str, reader: WireEventLog, story: Story, tmp_path: Path
) -> None:
    out = tmp_path / f"events.{fmt}"
    export_events(reader, out, fmt, ExportFilter(org="org2"))
    rows = pq.read_table(out).to_pylist() if fmt == "parquet" else jsonl(out)
    assert [(r["org_id"], r["type"]) for r in rows] == [("org2", "RoomOpened"), ("org2", "MessageReceived")]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_the_types_filter_exports_only_those_types(
    fmt: str, reader: WireEventLog, story: Story, tmp_path: Path
) -> None:
    out = tmp_path / f"events.{fmt}"
    export_events(reader, out, fmt, ExportFilter(types=parse_types("RoomOpened, MessageSent")))
    rows = pq.read_table(out).to_pylist() if fmt == "parquet" else jsonl(out)
    assert Counter(r["type"] for r in rows) == {"RoomOpened": 6, "MessageSent": 2}


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_since_and_until_select_events_by_when_they_occurred(
    fmt: str, reader: WireEventLog, story: Story, tmp_path: Path
) -> None:
    before, after = tmp_path / f"before.{fmt}", tmp_path / f"after.{fmt}"
    export_events(reader, before, fmt, ExportFilter(until=story.before_staff))
    export_events(reader, after, fmt, ExportFilter(since=story.before_staff))

    def types(path: Path) -> Counter[str]:
        rows = pq.read_table(path).to_pylist() if fmt == "parquet" else jsonl(path)
        return Counter(r["type"] for r in rows)

    assert types(before) == {"RoomOpened": 6, "MessageReceived": 7}
    assert types(after) == {"MessageSent": 2, "RoomAssigned": 3, "RoomResolved": 1}


def test_bad_filters_are_refused_with_a_reason() -> None:
    with pytest.raises(ExportError, match="unknown event types: RoomExploded"):
        parse_types("RoomOpened,RoomExploded")
    with pytest.raises(ExportError, match="not an ISO-8601 time"):
        parse_time("yesterday")
    with pytest.raises(ExportError, match="must be before"):
        ExportFilter(since=parse_time("2025-03-02"), until=parse_time("2025-03-01"))
    assert parse_time("2025-03-01") == datetime(2025, 3, 1, tzinfo=UTC)


def test_a_failed_export_leaves_no_file_behind(reader: WireEventLog, story: Story, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"

    def explode(done: int, total: int, rate: float) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        export_events(reader, out, "jsonl", progress=explode, page_size=3)
    assert list(tmp_path.iterdir()) == []


# ---- streaming ------------------------------------------------------------------------------
def python_peak_bytes(reader: WireEventLog, out: Path, fmt: str) -> tuple[int, int]:
    gc.collect()
    tracemalloc.start()
    try:
        stats = export_events(reader, out, fmt, page_size=200, row_group_size=500)
        return stats.events, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_memory_does_not_grow_with_the_number_of_events(
    fmt: str, container: Container, reader: WireEventLog, tmp_path: Path
) -> None:
    account = container.accounts.register(ADMIN1, channel="whatsapp_cloud", external_id="pn-1", name="WA")
    write_inbound(container, account, 1000, tag="a")
    small_events, small_peak = python_peak_bytes(reader, tmp_path / f"small.{fmt}", fmt)
    write_inbound(container, account, 4000, tag="b")
    large_events, large_peak = python_peak_bytes(reader, tmp_path / f"large.{fmt}", fmt)

    assert large_events >= 4 * small_events
    # Pages and row groups are fixed-size: 4x the events must not need (anywhere near) 4x the memory.
    assert large_peak < 1.5 * small_peak, (small_peak, large_peak)


# ---- the command ----------------------------------------------------------------------------
def test_inbox_export_writes_the_file_and_shows_progress_with_events_per_second(
    db_settings: Settings, story: Story, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in db_settings.to_env().items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "org1.parquet"

    code = main(["export", "--format", "parquet", "--out", str(out), "--org", "org1", "--types", "MessageReceived"])

    assert code == 0
    assert pq.read_table(out).num_rows == 6
    err = capsys.readouterr().err
    assert "events/s" in err and "100.0%" in err
    assert "exported 6 events" in err


def test_inbox_export_refuses_an_unknown_type_without_writing(
    db_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in db_settings.to_env().items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "x.jsonl"

    code = main(["export", "--format", "jsonl", "--out", str(out), "--types", "Nope"])

    assert code == 2
    assert "unknown event types: Nope" in capsys.readouterr().err
    assert not out.exists()


def test_inbox_export_of_a_schema_without_an_event_store_says_so(
    db_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in db_settings.to_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("INBOX_DB_SCHEMA", db_settings.db_schema + "_missing")
    out = tmp_path / "x.jsonl"

    code = main(["export", "--format", "jsonl", "--out", str(out)])

    assert code == 2
    assert "cannot read the event store in schema" in capsys.readouterr().err
    assert not out.exists()


def test_inbox_export_into_a_missing_directory_says_so(
    db_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in db_settings.to_env().items():
        monkeypatch.setenv(name, value)

    code = main(["export", "--format", "jsonl", "--out", str(tmp_path / "no-such-dir" / "x.jsonl")])

    assert code == 2
    assert "cannot write" in capsys.readouterr().err
