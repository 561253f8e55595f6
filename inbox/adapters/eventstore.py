"""The write side's storage: an `eventsourcing` Application on PostgreSQL.

The recorder is the library's PostgreSQL application recorder (table lock, so notification ids
follow commit order, and NOTIFY on insert) plus one addition: inbound channel message ids are
inserted into `inbound_dedup` in the same transaction as the events, so a redelivered message is
never recorded twice, even across API processes; channel delivery statuses go to
`delivery_statuses`, and parked echoes (see inbox/usecases/echoes.py) to `parked_echoes`, in
that same transaction.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from operator import itemgetter
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import BaseAggregate
from eventsourcing.persistence import (
    DatabaseError,
    DataError,
    DatetimeAsISO,
    IntegrityError,
    InterfaceError,
    InternalError,
    JSONTranscoder,
    MapperDeserialisationError,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    Recording,
    StoredEvent,
)
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder, PostgresFactory
from eventsourcing.utils import TopicError
import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout
from psycopg import Connection, Cursor
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Identifier
from psycopg.types.json import Jsonb

from domain.errors import NotFound
from domain.room import Room
from inbox.config import Settings
from inbox.adapters.postgres import eventsourcing_env
from inbox.usecases.ports import BatchState, DeadlinePassed, DedupKey, DeliveryStatusRecord, ParkedEcho, RecordedFact
from inbox.usecases.results import HistoryUnreadable

logger = logging.getLogger(__name__)

EVENTS_TABLE = "inbox_events"
SNAPSHOT_INTERVAL = 50
# Every statement of the write side's connections is cancelled after this long (a locked table,
# a stalled server): nothing waits on PostgreSQL without bound. Writes under `write_deadline` get less.
WRITE_STATEMENT_TIMEOUT_MS = 10_000
# A write under `write_deadline` gets at least this long, even when its deadline is (nearly) past.
MIN_WRITE_BUDGET_S = 0.5

_deadline = threading.local()


@contextmanager
def write_deadline(deadline: float) -> Iterator[None]:
    """Bound the writes of this thread: each transaction gets `SET LOCAL statement_timeout` = time left.

    `deadline` is a `time.monotonic()` value. The library retries a timed-out write; once the
    deadline has passed a retry raises `DeadlinePassed` instead. (A retry follows a lost connection,
    which may have been lost during COMMIT: the caller asks the database what was recorded.) (Only
    this thread's writes: the inbound committer's.)
    """
    _deadline.value, _deadline.attempts = deadline, 0
    try:
        yield
    finally:
        _deadline.value = None


def _statement_timeout_ms() -> int | None:
    deadline: float | None = getattr(_deadline, "value", None)
    if deadline is None:
        return None
    _deadline.attempts += 1
    left = deadline - time.monotonic()
    if left <= 0 and _deadline.attempts > 1:
        raise DeadlinePassed("the write's deadline passed before it could commit")
    return int(max(left, MIN_WRITE_BUDGET_S) * 1000)


# The library retries every operation 10 times on any OperationalError; a statement or lock
# timeout, or no pooled connection in time, would then cost 10 times its timeout. Those are
# answered at once (503); a lost connection (a dead pooled one) is still retried.
_NOT_RETRIED = (pg_errors.QueryCanceled, pg_errors.LockNotAvailable, PoolTimeout)
_RETRIES = 10


def _retry_unless_timed_out(method: Callable[..., Any]) -> Callable[..., Any]:
    inner = getattr(method, "__wrapped__", method)  # the library's method without its retry decorator

    @functools.wraps(inner)
    def call(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(1, _RETRIES + 1):
            try:
                return inner(*args, **kwargs)
            except (InterfaceError, OperationalError) as e:
                if attempt == _RETRIES or isinstance(e.__cause__, _NOT_RETRIED):
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    return call


@contextmanager
def _library_errors() -> Iterator[None]:
    """psycopg's errors as the library's errors, as its `get_connection` maps them: for work on a
    connection held beyond one `get_connection` block (`InboxRecorder.holding`)."""
    try:
        yield
    except psycopg.Error as e:
        for theirs, ours in _LIBRARY_ERRORS:
            if isinstance(e, theirs):
                raise ours(str(e)) from e
        raise PersistenceError(str(e)) from e


_LIBRARY_ERRORS: tuple[tuple[type[psycopg.Error], type[PersistenceError]], ...] = (
    (psycopg.InterfaceError, InterfaceError), (psycopg.OperationalError, OperationalError),
    (psycopg.DataError, DataError), (psycopg.IntegrityError, IntegrityError), (psycopg.InternalError, InternalError),
    (psycopg.ProgrammingError, ProgrammingError), (psycopg.NotSupportedError, NotSupportedError),
    (psycopg.DatabaseError, DatabaseError),
)


class InboxRecorder(PostgresApplicationRecorder):
    select_events = _retry_unless_timed_out(PostgresAggregateRecorder.select_events)
    select_notifications = _retry_unless_timed_out(PostgresApplicationRecorder.select_notifications)
    max_notification_id = _retry_unless_timed_out(PostgresApplicationRecorder.max_notification_id)

    @_retry_unless_timed_out
    def select_notification_rows(
        self, after: int, limit: int | None, *, stop: int | None = None, share: tuple[int, int] | None = None,
    ) -> list[tuple[int, str, int, str, bytes]]:
        """`select_notifications(after, limit, stop, inclusive_of_start=False)` as plain tuples
        (notification id, originator id as text, version, topic, state), read in binary: no
        Notification objects and no UUID parsing (a seventh of the library's cost per row).

        `share` = (k, n): only the rows of the k-th of n disjoint shares of originators (by a hash of
        their id), so n readers can each take every event of their own aggregates. `limit` None:
        every row up to `stop`, in id order.
        """
        statement, params = self._select_notification_rows, [after]
        if stop is not None:
            statement += SQL(" AND notification_id <= %s")
            params.append(stop)
        if share is not None:
            statement += SQL(" AND (hashtext(originator_id::text) & 2147483647) %% %s = %s")
            params += [share[1], share[0]]
        if limit is not None:
            statement += SQL(" ORDER BY notification_id LIMIT %s")
            params.append(limit)
        with self.datastore.get_connection() as conn, conn.cursor(binary=True, row_factory=tuple_row) as cur:
            cur.execute(statement, params, prepare=True)
            rows = cur.fetchall()
        if limit is None:  # sorted here: a filtered range can make the planner sort on disk
            rows.sort(key=itemgetter(0))
        return rows

    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events") -> None:
        # Before the first connection is made (the base class connects to register types).
        # No JIT: the write side's statements take milliseconds, but on a store without statistics
        # the read of a batch's rooms is estimated at ~170 events a room, and compiling a read of
        # 500 rooms took 130 ms for 3 ms of work (the read side's sessions turn it off too).
        # The pool's kwargs override the same keys of its conninfo: keep the URL's own options.
        given = conninfo_to_dict(datastore.pool.conninfo).get("options")
        ours = f"-c statement_timeout={WRITE_STATEMENT_TIMEOUT_MS} -c jit=off"
        datastore.pool.kwargs["options"] = f"{given} {ours}" if given else ours
        super().__init__(datastore, events_table_name=events_table_name)
        self._held = threading.local()  # `holding`: this thread's open transaction with the table lock
        schema = Identifier(self.datastore.schema)
        self._select_notification_rows = SQL(
            "SELECT notification_id, originator_id::text, originator_version, topic, state FROM {schema}.{table}"
            " WHERE notification_id > %s"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.inbound_dedup ("
                " channel_account_id uuid NOT NULL,"
                " channel_message_id text NOT NULL,"
                " room_id uuid NOT NULL,"
                " message_id uuid NOT NULL,"
                " room_version bigint NOT NULL,"
                " recorded_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (channel_account_id, channel_message_id))"
            ).format(schema=schema)
        )
        # Extra rows go in as one statement over arrays (binary), like the events: an executemany
        # binds, dumps and pipelines each row in Python.
        self._insert_dedup = SQL(
            "INSERT INTO {schema}.inbound_dedup (channel_account_id, channel_message_id, room_id, message_id, room_version)"
            " SELECT * FROM unnest(%b::uuid[], %b::text[], %b::uuid[], %b::uuid[], %b::bigint[])"
        ).format(schema=schema)
        # Delivery statuses of the business's messages (sent / delivered / read / failed, channel
        # errors): durable facts of the write side, never events of a room. The key makes a
        # redelivered webhook record nothing new.
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.delivery_statuses ("
                " channel_account_id uuid NOT NULL,"
                " status_key text NOT NULL,"
                " channel text NOT NULL,"
                " status text NOT NULL,"
                " channel_message_id text,"
                " recipient_id text,"
                " occurred_at timestamptz NOT NULL,"
                " errors jsonb NOT NULL DEFAULT '[]',"
                " recorded_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (channel_account_id, status_key))"
            ).format(schema=schema)
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE INDEX IF NOT EXISTS delivery_statuses_by_message"
                " ON {schema}.delivery_statuses (channel_account_id, channel_message_id)"
            ).format(schema=schema)
        )
        self._insert_arrays = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)"
            " SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[]) RETURNING notification_id"
        ).format(schema=schema, table=Identifier(self.events_table_name))
        self._insert_status = SQL(
            "INSERT INTO {schema}.delivery_statuses (channel_account_id, status_key, channel, status,"
            " channel_message_id, recipient_id, occurred_at, errors) SELECT * FROM unnest(%b::uuid[], %b::text[],"
            " %b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[], %b::jsonb[])"
            " ON CONFLICT DO NOTHING"
        ).format(schema=schema)
        # Echoes set aside until the sender recorded the reply they may be the echo of (Instagram:
        # no id of ours on them), written and dropped in the event transaction like the dedup keys.
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {schema}.parked_echoes ("
                " channel_account_id uuid NOT NULL,"
                " channel_message_id text NOT NULL,"
                " room_id uuid NOT NULL,"
                " fact jsonb NOT NULL,"
                " parked_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (channel_account_id, channel_message_id))"
            ).format(schema=schema)
        )
        self._insert_parked = SQL(
            "INSERT INTO {schema}.parked_echoes (channel_account_id, channel_message_id, room_id, fact)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
        ).format(schema=schema)
        self._delete_parked = SQL(
            "DELETE FROM {schema}.parked_echoes WHERE channel_account_id = %s AND channel_message_id = %s"
        ).format(schema=schema)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """The library's pipelined write transaction, sent as ONE round trip: BEGIN, the table lock,
        the extra rows (`_insert_events`), NOTIFY, the events and COMMIT go out together. (The
        library syncs after the INSERT and sends COMMIT in a second round trip.) A unique violation
        still raises IntegrityError here and nothing is written: the pipeline's COMMIT is never
        run after an error, and the transaction is rolled back.

        In a thread holding the table lock (`holding`), the rows go into that transaction, which
        this commits; not retried (a failed statement ends the held transaction)."""
        held: Connection[DictRow] | None = getattr(self._held, "conn", None)
        if held is None:
            return self._insert_retried(stored_events, **kwargs)
        with _library_errors():
            with held.pipeline():
                with held.transaction():
                    ids = self._insert_on(held, stored_events, **kwargs)
                held.execute("COMMIT")
            return ids()

    @_retry_unless_timed_out
    def _insert_retried(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        with self.datastore.get_connection() as conn:
            with conn.pipeline(), conn.transaction():
                ids = self._insert_on(conn, stored_events, **kwargs)
            return ids()

    def _insert_on(
        self, conn: Connection[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Callable[[], Sequence[int] | None]:
        """Queue the write's statements in the open transaction; returns how to fetch the new ids
        (after the pipeline's sync)."""
        inserted = conn.cursor(row_factory=tuple_row)  # one id per event: no dict per row
        with conn.cursor() as curs:
            self._insert_events(curs, stored_events, **kwargs)
        if stored_events:
            self._insert_stored_events(inserted, stored_events, **kwargs)
        return lambda: [row[0] for row in inserted.fetchall()] if stored_events else None

    @contextmanager
    def holding(self, conn: Connection[DictRow]) -> Iterator[None]:
        """This thread's writes go into `conn`'s open transaction, which holds the table lock."""
        self._held.conn = conn
        try:
            yield
        finally:
            self._held.conn = None

    def held_connection(self) -> Connection[DictRow] | None:
        return getattr(self._held, "conn", None)

    def _insert_stored_events(self, curs: Cursor[Any], stored_events: Sequence[StoredEvent], **_: Any) -> None:
        """The library's insert (NOTIFY, INSERT ... RETURNING notification_id; the table lock is
        taken first, in `_insert_events`) with the events as four plain arrays in binary instead of
        one array of composite values: psycopg builds those in Python, value by value, and that was
        most of the insert's CPU."""
        self._notify_channel(curs)
        curs.execute(self._insert_arrays, (
            [e.originator_id for e in stored_events], [e.originator_version for e in stored_events],
            [e.topic for e in stored_events], [e.state for e in stored_events],
        ), prepare=True)

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        dedup_keys: Sequence[DedupKey] = (),
        delivery_statuses: Sequence[DeliveryStatusRecord] = (),
        parked: Sequence[ParkedEcho] = (),
        unparked: Sequence[tuple[str, str]] = (),
        **kwargs: Any,
    ) -> None:
        """Extra rows of the same transaction as the events: inbound dedup keys, delivery statuses.

        Under `write_deadline` the whole transaction (the table lock included) has a statement timeout.
        The table lock comes first, before the extra rows: a transaction never holds a dedup key
        while it waits for the lock, so one holding the lock (`EventStore.exclusive`) never waits
        for such a key while its owner waits for the lock (a deadlock).
        """
        timeout_ms = _statement_timeout_ms()
        if timeout_ms is not None:
            curs.execute("SELECT set_config('statement_timeout', %s, true)", (str(timeout_ms),))
        if stored_events:
            self._lock_table(curs)
        if dedup_keys:
            curs.execute(self._insert_dedup, (
                [k.channel_account_id for k in dedup_keys], [k.key for k in dedup_keys],
                [k.room_id for k in dedup_keys], [k.message_id for k in dedup_keys],
                [k.room_version for k in dedup_keys],
            ), prepare=True)
        if delivery_statuses:
            curs.execute(self._insert_status, (
                [s.channel_account_id for s in delivery_statuses], [s.status_key for s in delivery_statuses],
                [s.channel for s in delivery_statuses], [s.status for s in delivery_statuses],
                [s.channel_message_id for s in delivery_statuses], [s.recipient_id for s in delivery_statuses],
                [s.occurred_at for s in delivery_statuses], [Jsonb(list(s.errors)) for s in delivery_statuses],
            ), prepare=True)
        if parked:
            curs.executemany(self._insert_parked, [
                (p.channel_account_id, p.channel_message_id, p.room_id, Jsonb(p.fact)) for p in parked
            ])
        if unparked:
            curs.executemany(self._delete_parked, list(unparked))
        super()._insert_events(curs, stored_events, **kwargs)


# Values orjson writes exactly as the library's `json` encoder does (compact separators, UTF-8,
# the same string escapes): not floats (orjson writes 1e-05 as 0.00001), not UUIDs (orjson writes
# them as strings, the library as its registered "uuid_hex" transcoding), no subclasses.
_AS_JSON_WRITES = frozenset({str, int, bool, type(None)})
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS


def _plain(value: Any, depth: int) -> bool:
    """Whether `value` holds only what orjson writes byte for byte like `json` (and datetimes)."""
    kind = type(value)
    if kind in _AS_JSON_WRITES or kind is datetime:
        return True
    if depth > 16:
        return False
    if kind is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_plain(v, depth + 1) for v in value)
    return False


class InboxTranscoder(JSONTranscoder):
    """The library's JSON transcoder, byte for byte, with orjson writing the common case.

    Encoding each event's state was a fifth of the inbound committer's CPU: the `json` module calls
    back into Python for every datetime. A state made only of strings, integers, booleans, None,
    datetimes (the registered `datetime_iso` transcoding), lists and dicts with text keys is written
    by orjson (its output is the same bytes for those); anything else (a float, a UUID, ...)
    by the library's encoder, as before. Decoding is the library's."""

    def encode(self, obj: Any) -> bytes:
        if type(obj) is dict and self._plain_state(obj):
            try:
                return orjson.dumps(obj, default=self._datetime, option=_ORJSON_OPTIONS)
            except (orjson.JSONEncodeError, TypeError):
                pass  # e.g. an integer beyond 64 bits, a lone surrogate: the library's encoder decides
        return super().encode(obj)

    @staticmethod
    def _plain_state(state: dict[Any, Any]) -> bool:
        for key, value in state.items():  # `_plain`, unrolled for the top level (most values are flat)
            kind = type(value)
            if type(key) is not str or not (kind in _AS_JSON_WRITES or kind is datetime or _plain(value, 1)):
                return False
        return True

    def _datetime(self, o: Any) -> dict[str, Any]:
        transcoding = self.types.get(type(o)) if type(o) is datetime else None
        if type(transcoding) is DatetimeAsISO:
            return {"_type_": transcoding.name, "_data_": o.isoformat()}  # what DatetimeAsISO.encode returns
        raise TypeError(f"{type(o)} is not written by orjson here")


class InboxPostgresFactory(PostgresFactory):
    """The library's PostgreSQL factory, honouring every parameter of INBOX_DATABASE_URL.

    The library builds its pool from host/port/user/password/dbname alone; the pool connects with
    `make_conninfo(pool.conninfo, **kwargs)`, so giving it the whole URL as its conninfo adds the
    other parameters (sslmode, sslrootcert, options, application_name, target_session_attrs, ...)
    while the explicit ones (taken from the same URL) stay as they are.
    """

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        url = self.env.get("POSTGRES_CONNINFO")
        if url:
            self.datastore.pool.conninfo = url


class InboxApplication(Application):
    """Rooms and channel accounts, stored as events; snapshots keep command cost flat."""

    name = "Inbox"
    snapshotting_intervals = {Room: SNAPSHOT_INTERVAL}
    env = {
        "APPLICATION_RECORDER_TOPIC": f"{__name__}:InboxRecorder",
        "TRANSCODER_TOPIC": f"{__name__}:InboxTranscoder",
        "AGGREGATE_CACHE_MAXSIZE": "50000",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
    }

    @classmethod
    def from_settings(cls, settings: Settings, *, create_tables: bool = False) -> InboxApplication:
        env = eventsourcing_env(settings)
        env["CREATE_TABLE"] = "y" if create_tables else "n"
        return cls(env=env)

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """`Application.save` minus, for aggregates, its two `isinstance` checks against typing
        Protocols per object (tens of microseconds each: a large part of saving a batch of a few
        hundred rooms). Anything else goes to the library's save. (eventsourcing 9.5.6, pinned.)"""
        if not all(isinstance(obj, BaseAggregate) for obj in objs):
            return super().save(*objs, **kwargs)
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        for aggregate in objs:
            processing.events.extend(aggregate.collect_events())
            processing.aggregates[aggregate.id] = aggregate
        processing.saved_kwargs.update(kwargs)
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._notify(recordings)
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        """The library's snapshots (when an aggregate's events reach a multiple of
        `snapshotting_intervals`), taken from the saved aggregate itself, and written together.

        The library reads each aggregate back from the store at the multiple's version (its
        snapshot and events: a query and a decode of up to SNAPSHOT_INTERVAL events) and writes
        each snapshot in a transaction of its own: a tenth of the inbound committer's time. The
        aggregate just saved is recorded state already (its events are the stored ones), so it is
        snapshotted as it is, at its own version: past the multiple when this save carried it
        across (several events of one room in a batch). A snapshot is valid at any version
        (readers fold the events after it), so this only moves it a few events later."""
        if not self.snapshots or not self.snapshotting_intervals:
            return
        taken = []
        crossed: set[UUID] = set()
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            if aggregate is None:
                continue
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval is None or event.originator_version % interval != 0:
                continue
            if type(aggregate) in self.snapshotting_projectors:  # the library's way: folded by that projector
                self.take_snapshot(event.originator_id, version=event.originator_version,
                                   projector_func=self.snapshotting_projectors[type(aggregate)])
            elif event.originator_id not in crossed:  # one snapshot a save, however many multiples it crossed
                crossed.add(event.originator_id)
                snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
                taken.append(snapshot_class.take(aggregate))
        if taken:
            self.snapshots.put(taken)

    def decode(self, stored: StoredEvent) -> Any:
        return self.mapper.to_domain_event(stored)

    def table(self, name: str) -> str:
        """Schema-qualified, quoted name of one of the write side's tables, for raw SQL."""
        schema = self.recorder.datastore.schema  # type: ignore[attr-defined]
        return f'"{schema}"."{name}"'

    def connection(self) -> AbstractContextManager[Connection[DictRow]]:
        """A pooled connection of the event store (rows as dicts; errors mapped to the library's)."""
        return self.recorder.datastore.get_connection()  # type: ignore[attr-defined,no-any-return]


class AggregateStore:
    """What both event stores (this one and inbox/adapters/memory_store.py) share: an aggregate
    read from the eventsourcing Application's repository, `NotFound` when it has no events."""

    app: Application

    def get(self, aggregate_id: UUID) -> Any:
        try:
            return self.app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise NotFound(f"aggregate {aggregate_id} not found") from None
        except UNREADABLE_EVENT as e:
            raise HistoryUnreadable(aggregate_id, None, _reason(e)) from e


# What decoding a stored event and folding it into its aggregate raise when the row is not one this
# code can read: an unknown topic (a class removed or renamed), state that is not the transcoder's
# JSON, or state without the fields the event's `apply` reads.
UNREADABLE_EVENT: tuple[type[Exception], ...] = (
    TopicError, MapperDeserialisationError, AttributeError, KeyError, TypeError, ValueError)


def _reason(e: Exception) -> str:
    cause = e.__cause__ if isinstance(e, MapperDeserialisationError) and e.__cause__ else e
    return f"{type(cause).__name__}: {cause}"[:200]


# Rooms kept by `EventStore.rooms_for_update` between batches (per process; the library's own
# cache is separate: it is fast-forwarded in place by other threads' commands).
WRITE_CACHE_MAXSIZE = 50_000


class EventStore(AggregateStore):
    """The use cases' event store (`inbox.usecases.ports.EventStore`) on PostgreSQL.

    Holds the eventsourcing Application (`app`, its name "Inbox" names the tables) and adds the
    inbound dedup keys, the delivery statuses and the few bulk reads the use cases need.
    """

    app: InboxApplication

    def __init__(self, app: InboxApplication) -> None:
        self.app = app
        # Rooms handed back with `cache` after a save, lent out again by `rooms_for_update`.
        self._rooms: OrderedDict[UUID, Room] = OrderedDict()
        self._rooms_lock = threading.Lock()

    def save(
        self, *aggregates: Any, dedup_keys: Sequence[DedupKey] = (),
        statuses: Sequence[DeliveryStatusRecord] = (), deadline: float | None = None,
        parked: Sequence[ParkedEcho] = (), unparked: Sequence[tuple[str, str]] = (),
    ) -> None:
        extra: dict[str, Any] = {}
        if dedup_keys:
            extra["dedup_keys"] = dedup_keys
        if statuses:
            extra["delivery_statuses"] = statuses
        if parked:
            extra["parked"] = parked
        if unparked:
            extra["unparked"] = unparked
        if deadline is None:
            self.app.save(*aggregates, **extra)
            return
        with write_deadline(deadline):
            self.app.save(*aggregates, **extra)

    def recorded_dedup_keys(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RecordedFact]:
        return self.read_batch(keys, (), ()).recorded

    def recorded_statuses(self, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        return self.read_batch((), keys, ()).statuses

    def events_after(self, aggregate_id: UUID, version: int) -> Sequence[Any]:
        return list(self.app.events.get(aggregate_id, gt=version))

    def parked_echoes(self, limit: int) -> list[ParkedEcho]:
        with self.app.connection() as conn:
            rows = conn.execute(
                "SELECT channel_account_id::text AS a, channel_message_id AS m, room_id::text AS r, fact, parked_at"
                f" FROM {self.app.table('parked_echoes')} ORDER BY parked_at LIMIT %s", (limit,),
            ).fetchall()
        return [ParkedEcho(r["a"], r["m"], r["r"], r["fact"], r["parked_at"]) for r in rows]

    def cache(self, aggregates: Mapping[UUID, Any]) -> None:
        """Keep just-saved rooms for the next `rooms_for_update` (the caller gives up these objects)."""
        self._keep({aggregate_id: aggregate for aggregate_id, aggregate in aggregates.items()
                    if isinstance(aggregate, Room)})

    def _keep(self, rooms: Mapping[UUID, Room]) -> None:
        """Cache these rooms (recorded state), unless a newer state of one is cached already."""
        with self._rooms_lock:
            for room_id, room in rooms.items():
                kept = self._rooms.get(room_id)
                if kept is None or kept.version <= room.version:
                    self._rooms[room_id] = room
                    self._rooms.move_to_end(room_id)
            while len(self._rooms) > WRITE_CACHE_MAXSIZE:
                self._rooms.popitem(last=False)

    def rooms_for_update(self, room_ids: Iterable[UUID]) -> dict[UUID, Room]:
        """The current state of several rooms in one query; ids without events are left out.

        A room kept by `cache` is lent out as a copy (the caller may change it and gives it back
        with `cache` after saving it) and brought up to date by the same query that reads the
        other rooms: the events after each room's known version (its cached version, or its
        latest snapshot, or none). So a room another process (or a staff command) wrote since is
        folded forward, and one written after this read makes the save fail with an
        IntegrityError (the events' version key), which the caller answers by deciding again.
        The cache keeps the recorded state (as lent, or as read here) until a save hands back a
        newer one: a next attempt reads only the events after it, not the room again from its
        snapshot (with two API processes writing the same rooms, those re-reads of ~25 events a
        room were most of a committer's work).
        """
        return self.read_batch((), (), room_ids).rooms

    def read_batch(
        self, dedup_keys: Iterable[tuple[str, str]], status_keys: Iterable[tuple[str, str]], room_ids: Iterable[UUID],
        *, trust_cache: bool = False,
    ) -> BatchState:
        """Recorded dedup keys, recorded statuses and rooms for update, pipelined: one round trip
        (none when there is nothing to read: no keys, every room cached and `trust_cache`)."""
        keys, statuses = list(set(dedup_keys)), list(set(status_keys))
        wanted = list(dict.fromkeys(room_ids))
        if not keys and not statuses and not wanted:
            return BatchState({}, set(), {})
        cached: dict[UUID, Room] = {}
        with self._rooms_lock:
            for room_id in wanted:
                room = self._rooms.get(room_id)
                if room is not None:
                    cached[room_id] = copy.copy(room)  # lent; the cache keeps this one (`rooms_for_update`)
        if trust_cache:
            trusted, wanted = cached, [room_id for room_id in wanted if room_id not in cached]
            cached = {}
            if not keys and not statuses and not wanted:
                return BatchState({}, set(), dict(trusted))
        else:
            trusted = {}
        with self._connection() as conn, conn.pipeline():
            cursors = []
            if keys:
                cursors.append(conn.cursor().execute(self._dedup_sql, (
                    [k[0] for k in keys], [k[1] for k in keys]), prepare=True))
            if statuses:
                cursors.append(conn.cursor().execute(self._statuses_sql, (
                    [k[0] for k in statuses], [k[1] for k in statuses]), prepare=True))
            if wanted:
                missing = [room_id for room_id in wanted if room_id not in cached]
                cursors.append(conn.cursor().execute(self._rooms_sql, (
                    missing, wanted, [cached[r].version if r in cached else 0 for r in wanted]), prepare=True))
            results = [cur.fetchall() for cur in cursors]
        recorded = {(r["a"], r["m"]): RecordedFact(r["r"], r["mid"], r["v"]) for r in results.pop(0)} if keys else {}
        found = {(r["a"], r["k"]) for r in results.pop(0)} if statuses else set()
        rooms: dict[UUID, Any] = {**trusted, **cached}
        decode = self.app.mapper.to_domain_event
        folded: set[UUID] = set()
        for r in results.pop(0) if wanted else ():
            room_id = r["originator_id"]
            try:
                event = decode(StoredEvent(room_id, r["originator_version"], r["topic"], bytes(r["state"])))
                rooms[room_id] = event.mutate(rooms.get(room_id))  # a snapshot comes first and starts from None
            except UNREADABLE_EVENT as e:
                raise HistoryUnreadable(room_id, r["originator_version"], _reason(e)) from e
            folded.add(room_id)
        rooms = {room_id: room for room_id, room in rooms.items() if isinstance(room, Room)}
        # What was read is recorded state: keep a copy of it for the next read.
        self._keep({room_id: copy.copy(rooms[room_id]) for room_id in folded if room_id in rooms})
        return BatchState(recorded, found, rooms)

    @contextmanager
    def exclusive(self, deadline: float) -> Iterator[None]:
        """The events table's lock, taken before the block's reads and held until its save commits.

        One pooled connection runs BEGIN, a statement timeout until `deadline`, and the lock every
        insert takes (EXCLUSIVE: reads go on, no other transaction inserts events); the block's
        `read_batch` and its `save` use that transaction, and the save commits it. Anything else
        ends it with a rollback: nothing written.
        """
        recorder: InboxRecorder = self.app.recorder  # type: ignore[assignment]
        timeout_ms = int(max(deadline - time.monotonic(), MIN_WRITE_BUDGET_S) * 1000)
        with self.app.connection() as conn:
            try:
                with conn.pipeline(), conn.cursor() as curs:
                    curs.execute("BEGIN")
                    curs.execute("SELECT set_config('statement_timeout', %s, true)", (str(timeout_ms),))
                    recorder._lock_table(curs)
                with recorder.holding(conn):
                    yield
            finally:
                if conn.info.transaction_status != pq.TransactionStatus.IDLE:
                    # Not committed: undo it. (A broken connection cannot; the pool discards it.)
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()

    @contextmanager
    def _connection(self) -> Iterator[Connection[DictRow]]:
        """This thread's transaction under `exclusive`, else a pooled connection."""
        held = self.app.recorder.held_connection()  # type: ignore[attr-defined]
        if held is None:
            with self.app.connection() as conn:
                yield conn
            return
        with _library_errors():
            yield held

    # The read's lists go in binary (%b), as the inserts' do: psycopg writes a list as a text array
    # literal in Python, value by value, about 8x slower (2 ms for the keys of a batch of 250).
    @functools.cached_property
    def _dedup_sql(self) -> str:
        return (
            "SELECT d.channel_account_id::text AS a, d.channel_message_id AS m, d.room_id::text AS r,"
            " d.message_id::text AS mid, d.room_version AS v"
            f" FROM {self.app.table('inbound_dedup')} d JOIN unnest(%b::uuid[], %b::text[]) AS k(a, m)"
            " ON d.channel_account_id = k.a AND d.channel_message_id = k.m"
        )

    @functools.cached_property
    def _statuses_sql(self) -> str:
        return (
            "SELECT s.channel_account_id::text AS a, s.status_key AS k"
            f" FROM {self.app.table('delivery_statuses')} s JOIN unnest(%b::uuid[], %b::text[]) AS q(a, k)"
            " ON s.channel_account_id = q.a AND s.status_key = q.k"
        )

    @functools.cached_property
    def _rooms_sql(self) -> str:
        """Latest snapshots of the rooms not cached (1st parameter), then every asked room's events
        after its known version: the cached one (3rd parameter, 0 for none) or its snapshot's.

        Room by room (LATERAL, kept apart by LIMIT / OFFSET 0), so each is an index lookup whatever
        the statistics say. As a plain join, on a table without statistics (no ANALYZE yet: a new
        store, or autovacuum off) the planner guessed ~200 distinct rooms, so a large share of the
        table per room, and scanned the whole events table instead: 14 ms a batch on a bench's
        store, 2.1 s on 12 M events.
        """
        snapshots = self.app.table(self.app.snapshots.recorder.events_table_name)  # type: ignore[union-attr]
        return (
            "WITH s AS (SELECT s.originator_id, s.originator_version, s.topic, s.state"
            " FROM unnest(%b::uuid[]) AS m(id) CROSS JOIN LATERAL ("
            f" SELECT originator_id, originator_version, topic, state FROM {snapshots}"
            " WHERE originator_id = m.id ORDER BY originator_version DESC LIMIT 1) s),"
            " k AS (SELECT k.id, greatest(k.v, coalesce(s.originator_version, 0)) AS v"
            " FROM unnest(%b::uuid[], %b::bigint[]) AS k(id, v) LEFT JOIN s ON s.originator_id = k.id)"
            " SELECT originator_id, originator_version, topic, state FROM ("
            " SELECT 0 AS part, originator_id, originator_version, topic, state FROM s"
            " UNION ALL"
            " SELECT 1, e.originator_id, e.originator_version, e.topic, e.state FROM k CROSS JOIN LATERAL ("
            f" SELECT originator_id, originator_version, topic, state FROM {self.app.table(EVENTS_TABLE)}"
            " WHERE originator_id = k.id AND originator_version > k.v OFFSET 0) e"
            ") rows ORDER BY originator_id, part, originator_version"
        )

    def can_write(self) -> bool:
        """Takes the events table's lock an insert takes (2 s at most), writes nothing."""
        try:
            with self.app.connection() as conn, conn.transaction(force_rollback=True):
                conn.execute("SET LOCAL lock_timeout = '2s'")
                conn.execute(f"LOCK TABLE {self.app.table(EVENTS_TABLE)} IN ROW EXCLUSIVE MODE")
        except Exception as e:
            logger.info("write path probe failed: %s: %s", type(e).__name__, e)
            return False
        return True


ROOM_OPENED_TOPIC = "domain.room:Room.RoomOpened"


def stamp_org_ids(app: InboxApplication) -> int:
    """Give every stored room event its room's `org_id`; returns how many events were stamped.

    Room events stored before events carried `org_id` had it only in their room's RoomOpened,
    and one event alone cannot know it, so no upcast can supply it: this rewrites those events'
    stored state once (the domain's `upcast_*` then accept them). New events are written stamped,
    so when the oldest room event after a RoomOpened carries `org_id` there is nothing to do (one
    row read per start). The rewrite is one transaction: interrupted, it leaves nothing half done.
    """
    table = app.table(EVENTS_TABLE)
    transcoder = app.mapper.transcoder
    if app.mapper.compressor or app.mapper.cipher:
        raise NotImplementedError("stamping org ids of compressed or encrypted events")
    later_events = (
        f"SELECT originator_id, originator_version, state FROM {table}"
        " WHERE topic LIKE 'domain.room:Room.%%' AND topic <> %s AND originator_version > 1"
        " ORDER BY notification_id"
    )
    with app.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 0")  # a one-off rewrite of every old event may take long
        oldest = conn.execute(later_events + " LIMIT 1", (ROOM_OPENED_TOPIC,)).fetchone()
        if oldest is None or "org_id" in transcoder.decode(bytes(oldest["state"])):
            return 0
        orgs = {
            r["originator_id"]: transcoder.decode(bytes(r["state"]))["org_id"]
            for r in conn.execute(
                f"SELECT originator_id, state FROM {table} WHERE topic = %s", (ROOM_OPENED_TOPIC,)
            )
        }
        stamped = []
        for r in conn.execute(later_events, (ROOM_OPENED_TOPIC,)).fetchall():
            state = transcoder.decode(bytes(r["state"]))
            if "org_id" in state:
                continue
            if r["originator_id"] not in orgs:
                raise LookupError(f"room {r['originator_id']} has events but no RoomOpened event")
            state["org_id"] = orgs[r["originator_id"]]
            stamped.append((transcoder.encode(state), r["originator_id"], r["originator_version"]))
        with conn.cursor() as cur:
            cur.executemany(
                f"UPDATE {table} SET state = %s WHERE originator_id = %s AND originator_version = %s", stamped
            )
    logger.info("stamped %s room events stored before events carried org_id", len(stamped))
    return len(stamped)
