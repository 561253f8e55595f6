"""The write side's storage: an `eventsourcing` Application on PostgreSQL.

The recorder is the library's PostgreSQL application recorder (table lock, so notification ids
follow commit order, and NOTIFY on insert) plus one addition: inbound channel message ids are
inserted into `inbound_dedup` in the same transaction as the events, so a redelivered message is
never recorded twice, even across API processes; channel delivery statuses go to
`delivery_statuses` in that same transaction.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder, PostgresFactory
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout
from psycopg import Connection, Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier
from psycopg.types.json import Jsonb

from domain.room import Room
from inbox.config import Settings
from inbox.adapters.postgres import eventsourcing_env

logger = logging.getLogger(__name__)

EVENTS_TABLE = "inbox_events"
SNAPSHOT_INTERVAL = 50
# Every statement of the write side's connections is cancelled after this long (a locked table,
# a stalled server): nothing waits on PostgreSQL without bound. Writes under `write_deadline` get less.
WRITE_STATEMENT_TIMEOUT_MS = 10_000
# A write under `write_deadline` gets at least this long, even when its deadline is (nearly) past.
MIN_WRITE_BUDGET_S = 0.5

_deadline = threading.local()


class DeadlinePassed(Exception):
    """A write under `write_deadline` was not attempted (again): its deadline has passed. Nothing was written."""


@contextmanager
def write_deadline(deadline: float) -> Iterator[None]:
    """Bound the writes of this thread: each transaction gets `SET LOCAL statement_timeout` = time left.

    `deadline` is a `time.monotonic()` value. The library retries a timed-out write; once the
    deadline has passed a retry raises `DeadlinePassed` instead, so the caller knows nothing was
    committed. (Only this thread's writes: the inbound committer's.)
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


class InboxRecorder(PostgresApplicationRecorder):
    select_events = _retry_unless_timed_out(PostgresAggregateRecorder.select_events)
    insert_events = _retry_unless_timed_out(PostgresApplicationRecorder.insert_events)
    select_notifications = _retry_unless_timed_out(PostgresApplicationRecorder.select_notifications)
    max_notification_id = _retry_unless_timed_out(PostgresApplicationRecorder.max_notification_id)

    def __init__(self, datastore: Any, *, events_table_name: str = "stored_events") -> None:
        # Before the first connection is made (the base class connects to register types).
        datastore.pool.kwargs["options"] = f"-c statement_timeout={WRITE_STATEMENT_TIMEOUT_MS}"
        super().__init__(datastore, events_table_name=events_table_name)
        schema = Identifier(self.datastore.schema)
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
        self._insert_dedup = SQL(
            "INSERT INTO {schema}.inbound_dedup (channel_account_id, channel_message_id, room_id, message_id, room_version)"
            " VALUES (%s, %s, %s, %s, %s)"
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
        self._insert_status = SQL(
            "INSERT INTO {schema}.delivery_statuses (channel_account_id, status_key, channel, status,"
            " channel_message_id, recipient_id, occurred_at, errors) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING"
        ).format(schema=schema)

    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        dedup_keys: Sequence[tuple[str, str, str, str, int]] = (),
        delivery_statuses: Sequence[tuple[Any, ...]] = (),
        **kwargs: Any,
    ) -> None:
        """Extra rows of the same transaction as the events.

        dedup_keys: (channel_account_id, key, room_id, message_id, room_version);
        delivery_statuses: (channel_account_id, status_key, channel, status, channel_message_id,
        recipient_id, occurred_at, errors as a list of dicts).
        Under `write_deadline` the whole transaction (the table lock included) has a statement timeout.
        """
        timeout_ms = _statement_timeout_ms()
        if timeout_ms is not None:
            curs.execute("SELECT set_config('statement_timeout', %s, true)", (str(timeout_ms),))
        if dedup_keys:
            curs.executemany(self._insert_dedup, list(dedup_keys))
        if delivery_statuses:
            curs.executemany(self._insert_status, [(*row[:7], Jsonb(list(row[7]))) for row in delivery_statuses])
        super()._insert_events(curs, stored_events, **kwargs)


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
        "AGGREGATE_CACHE_MAXSIZE": "50000",
        "AGGREGATE_CACHE_FASTFORWARD": "y",
    }

    @classmethod
    def from_settings(cls, settings: Settings, *, create_tables: bool = False) -> InboxApplication:
        env = eventsourcing_env(settings)
        env["CREATE_TABLE"] = "y" if create_tables else "n"
        return cls(env=env)

    def decode(self, stored: StoredEvent) -> Any:
        return self.mapper.to_domain_event(stored)

    def table(self, name: str) -> str:
        """Schema-qualified, quoted name of one of the write side's tables, for raw SQL."""
        schema = self.recorder.datastore.schema  # type: ignore[attr-defined]
        return f'"{schema}"."{name}"'

    def connection(self) -> AbstractContextManager[Connection[DictRow]]:
        """A pooled connection of the event store (rows as dicts; errors mapped to the library's)."""
        return self.recorder.datastore.get_connection()  # type: ignore[attr-defined,no-any-return]


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
