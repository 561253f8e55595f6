"""The first load of `inbox replay`: the whole log folded in memory, the rows written by binary COPY.

It loads into empty tables that nothing else writes (the shadow schema, or an `--into` target
just truncated), so nothing is read back and nothing is upserted. Each page is folded room by
room by the workers' own planning (`writer.plan_batch`, `reports_writer.plan_reports`: the
projection functions of `projections/`, from the rooms and report states as the previous pages
left them, kept in memory); its new history rows are COPYed, its message changes (edits,
removals, deliveries) applied by the writer's own statement, its gaps and dead letters inserted
as the writer does. The rooms, the counters (`projections.counters.deltas` from no room to each
final room) and the report rows are COPYed once at the end, when each holds its last state.

The writer isolates what the database refuses (a CHECK constraint, a NUL in a text, a duplicate
message id) and dead-letters it event by event. A COPY cannot: if the database refuses one for a
reason that is not transient, `BulkRefused` is raised, and the caller rolls the bulk load back
and loads the same events through the writer (`replay._Loader`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from inbox.adapters.postgres import is_transient
from inbox.adapters.read_models import reports_writer as reports
from inbox.adapters.read_models import writer
from projections.counters import deltas
from projections.rooms import MessageChange, MessageRow, RoomView


class BulkRefused(Exception):
    """The database refused a bulk write for a reason that is not transient (the cause says which)."""


class _UuidText(Dumper):
    """A UUID given as text (as the read models carry ids), in binary: 16 bytes."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return bytes.fromhex(obj.replace("-", "")) if type(obj) is str else obj.bytes


class _JsonbText(Dumper):
    """JSON text (`writer._json`) for a jsonb column, in binary: version 1, then the text."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + obj.encode()


def _copy_types(columns: Sequence[str], types: dict[str, str]) -> list[str]:
    return [types.get(c, "text") for c in columns]


_MESSAGE_TYPES = _copy_types(writer._MESSAGE_COLUMNS, writer._MESSAGE_TYPES)
_ROOM_TYPES = _copy_types(writer._ROOM_COLUMNS, writer._ROOM_TYPES)
_CYCLE_TYPES = ["text", "text", "int4", "text", "timestamptz", "timestamptz", "timestamptz", "float8", "text",
                "timestamptz", "float8", "text"]


class BulkLoad:
    """Folds pages of wire events (`add`) into empty read models; `finish` writes what is kept in memory."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self.conn = conn
        self.rooms: dict[str, RoomView] = {}  # every room as the pages so far left it
        self.reports = reports._Rows()  # report states, cycles, counts, backlog changes, dead letters
        self.stats = writer.BatchStats()
        self.report_stats = reports.ReportStats()

    async def add(self, events: Sequence[dict[str, Any]]) -> None:
        plans = await writer.plan_batch(events, None, self.stats, self.rooms)
        messages: list[MessageRow] = []
        changes: list[MessageChange] = []
        gaps: list[tuple[str, int, int, bool]] = []
        dead_letters: list[tuple[Any, ...]] = []
        for plan in plans:
            gaps.extend(plan.gaps)
            for step in plan.steps:
                for row in step.rows:
                    (messages if type(row) is MessageRow else changes).append(row)  # type: ignore[arg-type]
                if step.dead_letter is not None:
                    dead_letters.append(step.dead_letter)
            if (t := plan.transition) is not None:
                self.rooms[plan.room_id] = t[1]
        for step in reports.plan_reports(events, self.reports.rooms, self.report_stats):
            self.reports.add(step)
        try:
            await self._copy("messages", writer._MESSAGE_COLUMNS, _MESSAGE_TYPES, writer._message_columns(messages))
            async with self.conn.cursor() as cur:
                if changes:  # after the inserts: an edit may follow its message in the same page
                    await cur.execute(writer._CHANGE_MESSAGES,
                                      writer._binary(writer._change_columns(writer._merge_changes(changes))))
                if gaps:
                    await cur.execute(writer._INSERT_GAPS, writer._binary(writer._columns(gaps, 4)))
                if dead_letters:
                    await cur.execute(writer._INSERT_DEAD_LETTERS, writer._binary(writer._columns(dead_letters, 6)))
        except Exception as e:
            if is_transient(e):
                raise
            raise BulkRefused(f"{type(e).__name__}: {writer._first_line(e)}") from e

    async def finish(self) -> None:
        """The rooms, the counters and the reports, each row in its last state."""
        rooms = list(self.rooms.values())
        counters = [(*key, d.rooms, d.awaiting) for key, d in deltas((None, v) for v in rooms).items()]
        r = self.reports
        try:
            await self._copy("rooms", writer._ROOM_COLUMNS, _ROOM_TYPES, writer._room_columns(rooms))
            await self._copy("counters", ["org_id", "tab", "status", "assignee", "rooms", "awaiting"],
                             ["text", "text", "text", "text", "int8", "int8"], writer._columns(counters, 6))
            await self._copy("report_rooms", ["room_id", "version", "state"], ["text", "int8", "jsonb"],
                             [[s.room_id for s in r.rooms.values()], [s.version for s in r.rooms.values()],
                              [reports.state_text(s) for s in r.rooms.values()]])
            cycles = list(r.cycles.values())
            await self._copy("report_cycles", reports._CYCLE_COLUMNS, _CYCLE_TYPES,
                             [[getattr(c, k) for c in cycles] for k in reports._CYCLE_COLUMNS])
            counts = [(*k, *v) for k, v in sorted(r.counts.items())]
            await self._copy("report_counts", ["org_id", "day", "channel", "agent", *reports.COUNT_FIELDS],
                             ["text", "date", "text", "text"] + ["int8"] * len(reports.COUNT_FIELDS),
                             writer._columns(counts, 4 + len(reports.COUNT_FIELDS)))
            await self._copy("report_backlog", ["org_id", "at", "room_id", "version", "delta"],
                             ["text", "timestamptz", "text", "int8", "int2"],
                             writer._columns([(b.org_id, b.at, b.room_id, b.version, b.delta) for b in r.backlog], 5))
            if r.dead_letters:
                async with self.conn.cursor() as cur:
                    await cur.executemany(reports._INSERT_DEAD_LETTER, r.dead_letters)
        except Exception as e:
            if is_transient(e):
                raise
            raise BulkRefused(f"{type(e).__name__}: {writer._first_line(e)}") from e

    async def _copy(self, table: str, columns: Sequence[str], types: list[str], values: list[list[Any]]) -> None:
        """COPY column-wise `values` (one list per column, as the writer builds them) in binary."""
        if not values or not values[0]:
            return
        writer._binary(values)  # a NUL in a text: refused with the writer's message
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
        async with self.conn.cursor() as cur:
            cur.adapters.register_dumper(None, _dumper(_UuidText, "uuid", cur))
            cur.adapters.register_dumper(None, _dumper(_JsonbText, "jsonb", cur))
            async with cur.copy(statement) as copy:
                copy.set_types(types)
                for row in zip(*values, strict=True):
                    await copy.write_row(row)


def _dumper(base: type[Dumper], type_name: str, cur: Any) -> type[Dumper]:
    info = cur.adapters.types[type_name]
    return type(base.__name__, (base,), {"oid": info.oid})
