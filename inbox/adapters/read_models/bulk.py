"""The first load of `inbox replay`: the log folded in memory by share of rooms, written by binary COPY.

It loads into empty tables that nothing else writes (the shadow schema, or an `--into` target
just truncated), so nothing is read back and nothing is upserted.

Folding (`fold_share`, in a worker process per share of the rooms, or in a thread when there is
one share): the share's events are read in pages and folded room by room by the workers' own
planning (`writer.plan_batch`, `reports_writer.plan_reports`: the projection functions of
`projections/`), from the rooms and report states as the previous pages left them, kept in
memory. Each page yields its new history rows as binary COPY data, its message changes (edits,
removals, deliveries), gaps and dead letters; at the end, the share's rooms, report states,
cycles and backlog changes as COPY data, and its counters (`projections.counters.deltas` from no
room to each final room) and report counts to be added up.

Writing (`BulkLoad`, on the replay's connection, in its transaction): each share's pages in their
order — the COPY data, the gaps and dead letters as the writer inserts them — and the shares' ends;
then the unique indexes of the history, rooms and report states (dropped while loading: a random
id makes every COPYed row a random index insert), the pages' message changes in their order by
the writer's own statement, and the counters and report counts summed over the shares. Rooms
are disjoint across shares, so the order between shares does not matter.

The writer isolates what the database refuses (a CHECK constraint, a NUL in a text, a duplicate
message id) and dead-letters it event by event. A COPY or an index build cannot: if the database
refuses one for a reason that is not transient, `BulkRefused` is raised, and the caller rolls the bulk load back and
loads the same events through the writer (`replay._Loader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection, sql
from psycopg.adapt import Dumper
from psycopg.copy import Copy, FileWriter
from psycopg.pq import Format

from inbox.adapters.event_log import Unreadable, WireEventLog
from inbox.adapters.postgres import conninfo, is_transient
from inbox.adapters.read_models import reports_writer as reports
from inbox.adapters.read_models import writer
from inbox.adapters.wire import event_id
from inbox.config import Settings
from projections.counters import deltas
from projections.rooms import MessageChange, MessageRow
from projections.times import as_datetime

log = logging.getLogger(__name__)

OpenReader = Callable[[Settings], WireEventLog]


# The tables whose rows are all COPYed (the history as it is read, the rooms and report states at
# the end); counters and report counts are added up, upserted on their keys, so keep them.
KEYS_BUILT_AFTER = ("messages", "rooms", "report_rooms", "report_cycles", "report_backlog")


class BulkRefused(Exception):
    """The database refused a bulk write for a reason that is not transient (the cause says which)."""


# ---- the tables' COPY columns ------------------------------------------------------------------
@dataclass(frozen=True)
class _Table:
    name: str
    columns: Sequence[str]
    types: Sequence[str]

    def copy_sql(self) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(self.name), sql.SQL(", ").join(map(sql.Identifier, self.columns)))


MESSAGES = _Table("messages", writer._MESSAGE_COLUMNS,
                  [writer._MESSAGE_TYPES.get(c, "text") for c in writer._MESSAGE_COLUMNS])
ROOMS = _Table("rooms", writer._ROOM_COLUMNS, [writer._ROOM_TYPES.get(c, "text") for c in writer._ROOM_COLUMNS])
COUNTERS = _Table("counters", ["org_id", "tab", "status", "assignee", "rooms", "awaiting"],
                  ["text", "text", "text", "text", "int8", "int8"])
REPORT_ROOMS = _Table("report_rooms", ["room_id", "version", "state"], ["text", "int8", "jsonb"])
REPORT_CYCLES = _Table("report_cycles", reports._CYCLE_COLUMNS,
                       ["text", "text", "int4", "text", "timestamptz", "timestamptz", "timestamptz", "float8", "text",
                        "timestamptz", "float8", "text"])
REPORT_COUNTS = _Table("report_counts", ["org_id", "day", "channel", "agent", *reports.COUNT_FIELDS],
                       ["text", "date", "text", "text"] + ["int8"] * len(reports.COUNT_FIELDS))
REPORT_BACKLOG = _Table("report_backlog", ["org_id", "at", "room_id", "version", "delta"],
                        ["text", "timestamptz", "text", "int8", "int2"])


class _UuidText(Dumper):
    """A UUID given as text (as the read models carry ids), in binary: 16 bytes."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return bytes.fromhex(obj.replace("-", "")) if type(obj) is str else obj.bytes


class _JsonbText(Dumper):
    """JSON (`_jsonb`, or text from `writer._json`) for a jsonb column, in binary: version 1, then the JSON."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + (obj if type(obj) is bytes else obj.encode())


def _jsonb(value: Any) -> bytes | str | None:
    """`writer._json` without decoding orjson's bytes to text and encoding them again."""
    if value is None:
        return None
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: e.g. integers over 64 bits
        return writer._json(value)


def _copy_data(cur: psycopg.Cursor[Any], table: _Table, rows: Iterable[Sequence[Any]]) -> bytes:
    """`rows` as the binary COPY data of `table` (formatted by psycopg, nothing sent)."""
    buffer = io.BytesIO()
    with Copy(cur, binary=True, writer=FileWriter(buffer)) as copy:
        copy.set_types(list(table.types))
        for row in rows:
            copy.write_row(row)
    return buffer.getvalue()


def _register_dumpers(cur: psycopg.Cursor[Any]) -> None:
    for base, type_name in ((_UuidText, "uuid"), (_JsonbText, "jsonb")):
        info = cur.adapters.types[type_name]
        cur.adapters.register_dumper(None, type(base.__name__, (base,), {"oid": info.oid}))


_MESSAGE_ROW = attrgetter(*writer._MESSAGE_COLUMNS)
_MESSAGE_JSON = [writer._MESSAGE_COLUMNS.index(c) for c in ("attachments", "delivery_error", "reply_to")]
_ROOM_ROW = attrgetter(*writer._ROOM_COLUMNS)
_ROOM_JSON = writer._ROOM_COLUMNS.index("last_message_delivery")
_CYCLE_ROW = attrgetter(*reports._CYCLE_COLUMNS)
_BACKLOG_ROW = attrgetter("org_id", "at", "room_id", "version", "delta")


def _message_rows(messages: Iterable[MessageRow]) -> Iterable[list[Any]]:
    """`writer._message_columns` row by row: the jsonb values as JSON text (attachments as a list)."""
    attachments, error, reply_to = _MESSAGE_JSON
    for m in messages:
        row = list(_MESSAGE_ROW(m))
        row[attachments] = _jsonb(list(m.attachments))
        row[error] = _jsonb(m.delivery_error)
        row[reply_to] = _jsonb(m.reply_to)
        yield row


# ---- folding a share of the rooms --------------------------------------------------------------
@dataclass
class PageRows:
    """What one page of a share writes."""

    last_id: int  # the last notification id of the share's page
    events: int
    messages: bytes  # COPY data
    changes: list[tuple[Any, ...]]  # `writer._merge_changes` rows, after the messages
    gaps: list[tuple[str, int, int, bool]]
    dead_letters: list[tuple[Any, ...]]
    unreadable: list[tuple[str, int, str, bytes, str]]  # `unreadable_row`s


@dataclass
class ShareEnd:
    """What a share writes once folded: its rooms and report rows, its counters to add up."""

    rooms: bytes
    report_rooms: bytes
    report_cycles: bytes
    report_backlog: bytes
    counters: dict[tuple[str, str, str, str], tuple[int, int]]
    report_counts: dict[tuple[Any, ...], list[int]]
    report_dead_letters: list[tuple[Any, ...]] = field(default_factory=list)


class _Fold:
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self.cur = cur
        self.rooms: dict[str, Any] = {}  # every room of the share as the pages so far left it
        self.reports = reports._Rows()  # report states, cycles, counts, backlog changes, dead letters
        self.stats = writer.BatchStats()
        self.report_stats = reports.ReportStats()

    def add(self, events: Sequence[dict[str, Any]], last_id: int, unreadable: list[Unreadable]) -> PageRows:
        # plan_batch awaits only a gap filler, and there is none: run it to completion here.
        plans = _run(writer.plan_batch(events, None, self.stats, self.rooms))
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
        return PageRows(last_id, len(events), _copy_data(self.cur, MESSAGES, _message_rows(messages)),
                        writer._merge_changes(changes) if changes else [], gaps, dead_letters,
                        [unreadable_row(u) for u in unreadable])

    def end(self) -> ShareEnd:
        r = self.reports
        rooms = []
        for v in self.rooms.values():
            row = list(_ROOM_ROW(v))
            row[_ROOM_JSON] = writer._json(v.last_message_delivery)
            rooms.append(row)
        return ShareEnd(
            rooms=_copy_data(self.cur, ROOMS, rooms),
            report_rooms=_copy_data(self.cur, REPORT_ROOMS,
                                    ((s.room_id, s.version, reports.state_text(s)) for s in r.rooms.values())),
            report_cycles=_copy_data(self.cur, REPORT_CYCLES, map(_CYCLE_ROW, r.cycles.values())),
            report_backlog=_copy_data(self.cur, REPORT_BACKLOG, map(_BACKLOG_ROW, r.backlog)),
            counters={k: (d.rooms, d.awaiting) for k, d in deltas((None, v) for v in self.rooms.values()).items()},
            report_counts=r.counts,
            report_dead_letters=r.dead_letters,
        )


def _run(coroutine: Any) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the fold waited on I/O")


def fold_share(
    settings: Settings, reader: WireEventLog, share: tuple[int, int] | None, stop: int, page_size: int,
    until: datetime | None, send: Callable[[Any], None],
) -> None:
    """Fold the events of one share of the rooms up to notification `stop`; `send` each page's
    `PageRows`, then the share's `ShareEnd`, or ("error", reason) if it fails."""
    gc.disable()  # what is folded stays until the end: the cyclic collector would only walk it again
    try:
        with psycopg.connect(conninfo(settings), autocommit=True) as conn, conn.cursor() as cur:
            _register_dumpers(cur)  # formats COPY data only: nothing is sent on it
            fold = _Fold(cur)
            position = 0
            while position < stop:
                unreadable: list[Unreadable] = []
                page, _ = reader.read(position, page_size, unreadable, stop=stop, share=share, folding=True)
                position = page.last_id
                events = [e for _, e in page.events]
                if until is not None:
                    events = [e for e in events if as_datetime(e["occurred_at"]) <= until]
                send(fold.add(events, position, unreadable))
            send(fold.end())
    except Exception as e:
        send(("error", e, traceback.format_exc()))
    finally:
        gc.enable()


def _fold_share_process(
    settings: Settings, open_reader: OpenReader, share: tuple[int, int], stop: int, page_size: int,
    until: datetime | None, pipe: Any,
) -> None:
    def send(item: Any) -> None:
        if isinstance(item, tuple) and item[0] == "error":  # the exception as text: not every one pickles
            item = ("error", f"{type(item[1]).__name__}: {item[1]}", item[2])
        pipe.send(item)

    reader = open_reader(settings)
    try:
        fold_share(settings, reader, share, stop, page_size, until, send)
    finally:
        pipe.close()
        reader.close()


def default_shares(total: int) -> int:
    """One share per core for a large log (up to 4); a small one is folded in a thread."""
    return 1 if total < 200_000 else max(1, min(4, os.cpu_count() or 1))


# ---- writing ----------------------------------------------------------------------------------
class BulkLoad:
    """Folds the whole log (up to `stop`) in `shares` and writes it on `conn`, inside its transaction."""

    def __init__(
        self, conn: AsyncConnection[Any], settings: Settings, reader: WireEventLog, open_reader: OpenReader | None,
        *, shares: int, page_size: int, until: datetime | None,
    ) -> None:
        self.conn, self.settings, self.reader, self.open_reader = conn, settings, reader, open_reader
        self.shares = shares if open_reader is not None else 1
        self.page_size, self.until = page_size, until
        self.events = 0
        self.rooms = 0
        self._restore: list[sql.Composable] = []  # the unique indexes of KEYS_BUILT_AFTER, built after loading
        self._changes: list[list[tuple[Any, ...]]] = []  # each page's message changes, applied after loading

    async def run(self, stop: int, on_page: Callable[[int], None]) -> None:
        """Fold and write everything up to notification `stop`; `on_page(position)` after each page
        (every share has been written up to that notification id)."""
        await self._guarded(self._drop_unique_indexes())
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        processes: list[Any] = []
        receivers: list[asyncio.Task[None]] = []
        thread: threading.Thread | None = None
        if self.shares == 1:
            def send(item: Any) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (0, item))

            thread = threading.Thread(target=fold_share, name="replay-fold", daemon=True, args=(
                self.settings, self.reader, None, stop, self.page_size, self.until, send))
            thread.start()
        else:
            context = multiprocessing.get_context("spawn")
            for k in range(self.shares):
                receive, give = context.Pipe(duplex=False)
                process = context.Process(target=_fold_share_process, name=f"replay-fold-{k}", daemon=True, args=(
                    self.settings, self.open_reader, (k, self.shares), stop, self.page_size, self.until, give))
                process.start()
                give.close()
                processes.append(process)
                receivers.append(asyncio.create_task(_receive(k, receive, queue)))
        try:
            counters: dict[tuple[str, str, str, str], list[int]] = {}
            counts: dict[tuple[Any, ...], list[int]] = {}
            report_dead_letters: list[tuple[Any, ...]] = []
            positions = [0] * self.shares  # the last notification id written of each share
            ended = 0
            while ended < self.shares:
                share, item = await queue.get()
                if isinstance(item, tuple) and item and item[0] == "error":
                    if isinstance(item[1], BaseException):
                        raise item[1]
                    raise RuntimeError(f"replay: folding share {share} of the rooms failed: {item[1]}\n{item[2]}")
                if isinstance(item, PageRows):
                    await self._write_page(item)
                    self.events += item.events
                    positions[share] = item.last_id
                    on_page(min(positions))
                    continue
                positions[share] = stop
                assert isinstance(item, ShareEnd)
                await self._write_end(item)
                for key, (rooms, awaiting) in item.counters.items():
                    total = counters.setdefault(key, [0, 0])
                    total[0] += rooms
                    total[1] += awaiting
                for key, values in item.report_counts.items():
                    total = counts.setdefault(key, [0] * len(values))
                    for i, v in enumerate(values):
                        total[i] += v
                report_dead_letters += item.report_dead_letters
                ended += 1
            await self._guarded(self._restore_unique_indexes())
            await self._guarded(self._write_changes())
            await self._guarded(self._write_sums(counters, counts, report_dead_letters))
        finally:
            for task in receivers:
                task.cancel()
            for process in processes:
                if process.is_alive():
                    process.kill()
                process.join(10)
            if thread is not None:
                await asyncio.to_thread(thread.join)

    async def _drop_unique_indexes(self) -> None:
        """The unique indexes of the tables COPY fills (`KEYS_BUILT_AFTER`) go while they are loaded,
        and are built once after (`_restore_`): a random id per row makes each COPYed row a random
        index insert (on 1,000,000 rooms: 2.5 s with the key, 1.5 s without it and building it
        after). A duplicate then fails the build, which sends the load through the writer like any
        refusal."""
        for table in KEYS_BUILT_AFTER:
            cur = await self.conn.execute(
                "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
                " WHERE c.conrelid = %s::regclass AND c.contype IN ('p', 'u')", (table,))
            for name, definition in await cur.fetchall():
                await self.conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(table), sql.Identifier(name)))
                self._restore.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)))
            cur = await self.conn.execute(
                "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                " WHERE x.indrelid = %s::regclass AND x.indisunique", (table,))
            for name, definition in await cur.fetchall():
                await self.conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
                self._restore.append(sql.SQL(definition))

    async def _restore_unique_indexes(self) -> None:
        for statement in self._restore:
            await self.conn.execute(statement)

    async def _write_changes(self) -> None:
        """The pages' message changes, in their order, once the history is loaded and indexed: each
        change's message came in its page or before (a room's events are in version order)."""
        async with self.conn.cursor() as cur:
            for changes in self._changes:
                await cur.execute(writer._CHANGE_MESSAGES, writer._binary(writer._change_columns(changes)))

    async def _write_page(self, page: PageRows) -> None:
        if page.changes:
            self._changes.append(page.changes)

        async def write() -> None:
            await self._copy(MESSAGES, page.messages)
            async with self.conn.cursor() as cur:
                if page.gaps:
                    await cur.execute(writer._INSERT_GAPS, writer._binary(writer._columns(page.gaps, 4)))
                if page.dead_letters:
                    await cur.execute(writer._INSERT_DEAD_LETTERS, writer._binary(writer._columns(page.dead_letters, 6)))
            for u in page.unreadable:
                await dead_letter_unreadable(self.conn, *u)

        await self._guarded(write())

    async def _write_end(self, end: ShareEnd) -> None:
        async def write() -> None:
            await self._copy(ROOMS, end.rooms)
            await self._copy(REPORT_ROOMS, end.report_rooms)
            await self._copy(REPORT_CYCLES, end.report_cycles)
            await self._copy(REPORT_BACKLOG, end.report_backlog)

        await self._guarded(write())

    async def _write_sums(
        self, counters: dict[tuple[str, str, str, str], list[int]], counts: dict[tuple[Any, ...], list[int]],
        report_dead_letters: list[tuple[Any, ...]],
    ) -> None:
        async with self.conn.cursor() as cur:
            await cur.execute(  # the writer's statement (rows summed per key, as the writer adds them)
                writer._ADD_COUNTERS, writer._binary(writer._columns(
                    [(*k, r, a) for k, (r, a) in sorted(counters.items()) if r or a], 6)))
            sync_rows = [(*k, *v) for k, v in sorted(counts.items())]
            if sync_rows:
                await cur.executemany(reports._ADD_COUNTS, sync_rows)
            if report_dead_letters:
                await cur.executemany(reports._INSERT_DEAD_LETTER, report_dead_letters)
        row = await (await self.conn.execute("SELECT count(*) FROM rooms")).fetchone()
        self.rooms = int(row[0]) if row else 0

    async def _guarded(self, write: Any) -> None:
        try:
            await write
        except Exception as e:
            if is_transient(e):
                raise
            raise BulkRefused(f"{type(e).__name__}: {writer._first_line(e)}") from e

    async def _copy(self, table: _Table, data: bytes) -> None:
        if not data:
            return
        async with self.conn.cursor() as cur, cur.copy(table.copy_sql()) as copy:
            await copy.write(data)


async def _receive(share: int, pipe: Any, queue: asyncio.Queue[tuple[int, Any]]) -> None:
    """A worker process's items into the queue, in order; its end of the pipe closed is an error."""
    try:
        while True:
            try:
                item = await asyncio.to_thread(pipe.recv)
            except EOFError:
                await queue.put((share, ("error", f"the process folding share {share} exited", "")))
                return
            await queue.put((share, item))
            if isinstance(item, ShareEnd) or (isinstance(item, tuple) and item and item[0] == "error"):
                return
    finally:
        with contextlib.suppress(Exception):
            pipe.close()


def unreadable_row(u: Unreadable) -> tuple[str, int, str, bytes, str]:
    return (u.room_id, u.version, u.topic, u.state, u.reason)


async def dead_letter_unreadable(
    conn: AsyncConnection[Any], room_id: str, version: int, topic: str, state: bytes, reason: str,
) -> None:
    """A stored event that cannot be read does not abort the replay: it is dead-lettered with the reason."""
    log.error("replay: dead-lettering unreadable stored event %s v%s: %s", room_id, version, reason.splitlines()[0])
    await conn.execute(
        "INSERT INTO projection_dead_letters (event_id, reason, event, room_id, version, event_type)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (event_id(room_id, version), reason, state, room_id, version, topic.rsplit(".", 1)[-1]),
    )
