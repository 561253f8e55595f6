"""`inbox export`: the room-event history (the events of the topic) as JSON Lines or Parquet.

Reads the event store through `WireEventLog`, so every event is exactly the wire event the relay
publishes (same `to_wire`, same `encode`). Streams: one page of notifications and at most one
Parquet row group are in memory at a time, whatever the size of the history. Filters are applied
while streaming. The export stops at the last notification that existed when it started, so an
export of a live store is a fixed cut that ends. See docs/analytics.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from inbox.adapters.event_log import WireEventLog
from inbox.adapters.wire import EVENT_TYPE_NAMES, encode

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "parquet")
Progress = Callable[[int, int, float], None]  # (notifications read, notifications to read, events/s)


class ExportError(ValueError):
    """Bad export arguments (unknown type, bad time, unknown format): reported to the user, exit 2."""


# ---- the Parquet table: envelope columns + the union of every known `data` field --------------
# Column name -> kind: "string", "int32", "int64", "bool", "timestamp" (UTC, microseconds) or "json"
# (a JSON text column for nested values). Data fields are prefixed `data_`; the union is taken
# over docs/events/*.json (tests/integration/test_export.py checks it against the schemas).
ENVELOPE_COLUMNS: dict[str, str] = {
    "id": "string",
    "type": "string",
    "schema_version": "int32",
    "org_id": "string",
    "room_id": "string",
    "version": "int64",
    "occurred_at": "timestamp",
}
DATA_FIELDS: dict[str, str] = {
    # RoomOpened
    "org_id": "string",
    "channel": "string",
    "channel_account_id": "string",
    "channel_account": "string",
    "contact_id": "string",
    "contact_name": "string",
    "contact_phone": "string",
    "contact_handle": "string",
    "post_id": "string",
    # MessageReceived / MessageSent / MessageEdited / MessageRemoved
    "message_id": "string",
    "channel_message_id": "string",
    "text": "string",
    "sent_at": "timestamp",
    "kind": "string",
    "attachments": "json",
    "sender_id": "string",
    "sender_role": "string",
    "sender_name": "string",
    "edited_at": "timestamp",
    "removed_at": "timestamp",
    "reply_to": "json",
    # RoomAssigned / RoomResolved / RoomReopened
    "assignee": "string",
    "previous_assignee": "string",
    "assigned_by": "string",
    "by_role": "string",
    "reason": "string",
    "resolved_by": "string",
    # ReplyDeliveryAccepted / ReplyDeliveryFailed / ReplyDeliveryUnknown / DeliveryStatusChanged
    "accepted_at": "timestamp",
    "code": "int64",
    "title": "string",
    "permanent": "bool",
    "failed_at": "timestamp",
    "at": "timestamp",
    "status": "string",
    "error": "json",
}
# Fields a newer event carries that this exporter does not know yet: kept, as one JSON object.
EXTRA_COLUMN = "data_extra"


def parquet_columns() -> dict[str, str]:
    """Every Parquet column in order, with its kind."""
    return {**ENVELOPE_COLUMNS, **{f"data_{k}": v for k, v in DATA_FIELDS.items()}, EXTRA_COLUMN: "json"}


# ---- filters --------------------------------------------------------------------------------
def parse_time(text: str) -> datetime:
    """ISO-8601 date or date-time; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as e:
        raise ExportError(f"not an ISO-8601 time: {text!r} (e.g. 2025-03-01 or 2025-03-01T09:00:00+07:00)") from e
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_types(text: str) -> frozenset[str]:
    types = frozenset(t.strip() for t in text.split(",") if t.strip())
    unknown = types - EVENT_TYPE_NAMES
    if unknown or not types:
        raise ExportError(
            f"unknown event types: {', '.join(sorted(unknown)) or '(none given)'};"
            f" known: {', '.join(sorted(EVENT_TYPE_NAMES))}"
        )
    return types


@dataclass(frozen=True)
class ExportFilter:
    """Which events to export: `since` <= occurred_at < `until`, of `org`, of `types` (None: all)."""

    org: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    types: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.since and self.until and self.since >= self.until:
            raise ExportError(f"--since ({self.since.isoformat()}) must be before --until ({self.until.isoformat()})")

    def accepts(self, event: dict[str, Any]) -> bool:
        if self.org is not None and event["org_id"] != self.org:
            return False
        if self.types is not None and event["type"] not in self.types:
            return False
        if self.since or self.until:
            at = datetime.fromisoformat(event["occurred_at"])
            if (self.since and at < self.since) or (self.until and at >= self.until):
                return False
        return True


# ---- reading --------------------------------------------------------------------------------
def iter_events(
    reader: WireEventLog, flt: ExportFilter, *, page_size: int = 5000, progress: Progress | None = None
) -> Iterator[dict[str, Any]]:
    """The store's room events in notification order (per room: version order), filtered."""
    total = reader.max_notification_id()
    started = time.perf_counter()
    position = read = 0
    while position < total:
        page, rows = reader.read(position, min(page_size, total - position))
        if rows == 0:
            break
        for notification_id, event in page.events:
            if notification_id <= total and flt.accepts(event):
                yield event
        read += len(page.events)
        position = page.last_id
        if progress:
            elapsed = time.perf_counter() - started
            progress(position, total, read / elapsed if elapsed else 0.0)


# ---- writing --------------------------------------------------------------------------------
class EventWriter(Protocol):
    def write(self, event: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlWriter:
    """One envelope per line: exactly the bytes the relay publishes (`inbox.adapters.wire.encode`)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def write(self, event: dict[str, Any]) -> None:
        self._out.write(encode(event))
        self._out.write(b"\n")

    def close(self) -> None:
        self._out.flush()


class ParquetWriter:
    """One row per event; buffers at most `row_group_size` rows, then writes them as a row group."""

    def __init__(self, sink: IO[bytes], *, row_group_size: int = 100_000) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ExportError("Parquet needs pyarrow: pip install 'inbox[analytics]'") from e

        self._pa = pa
        self._kinds = parquet_columns()
        types = {
            "string": pa.string(), "json": pa.string(), "int32": pa.int32(), "int64": pa.int64(),
            "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC"),
        }
        self.schema = pa.schema(
            [pa.field(name, types[kind], nullable=name not in ENVELOPE_COLUMNS) for name, kind in self._kinds.items()],
            metadata={"inbox.wire.encoding": "one row per wire event; data fields as data_<field>"},
        )
        self._writer = pq.ParquetWriter(sink, self.schema, compression="zstd")
        self._row_group_size = row_group_size
        self._columns: dict[str, list[Any]] = {name: [] for name in self._kinds}
        self._rows = 0

    def write(self, event: dict[str, Any]) -> None:
        columns = self._columns
        for name in ENVELOPE_COLUMNS:
            columns[name].append(event[name])
        data = event["data"]
        for field, kind in DATA_FIELDS.items():
            value = data.get(field)
            if value is not None and kind == "json":
                value = orjson.dumps(value).decode()
            columns[f"data_{field}"].append(value)
        extra = {k: v for k, v in data.items() if k not in DATA_FIELDS}
        columns[EXTRA_COLUMN].append(orjson.dumps(extra).decode() if extra else None)
        self._rows += 1
        if self._rows >= self._row_group_size:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        pa = self._pa
        arrays = []
        for field in self.schema:
            values = self._columns[field.name]
            if self._kinds[field.name] == "timestamp":
                values = [None if v is None else datetime.fromisoformat(v) for v in values]
            arrays.append(pa.array(values, type=field.type))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema), row_group_size=self._rows)
        self._columns = {name: [] for name in self._kinds}
        self._rows = 0

    def close(self) -> None:
        self._flush()
        self._writer.close()


# ---- the use case ---------------------------------------------------------------------------
@dataclass
class ExportStats:
    events: int
    bytes: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def export_events(
    reader: WireEventLog, out: Path | str, fmt: str, flt: ExportFilter = ExportFilter(), *,
    page_size: int = 5000, row_group_size: int = 100_000, progress: Progress | None = None,
) -> ExportStats:
    """Write the filtered history to `out`; written to `out.partial` first, so `out` is only ever complete."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    started = time.perf_counter()
    events = 0
    try:
        with open(partial, "wb") as f:
            writer: EventWriter = JsonlWriter(f) if fmt == "jsonl" else ParquetWriter(f, row_group_size=row_group_size)
            for event in iter_events(reader, flt, page_size=page_size, progress=progress):
                writer.write(event)
                events += 1
            writer.close()
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    log.info("exported %s events to %s (%s) in %.1fs", events, out, fmt, seconds)
    return ExportStats(events=events, bytes=out.stat().st_size, seconds=seconds)
