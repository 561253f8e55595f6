"""Schema migration: the one place that creates every table the system needs.

In order: the schema and pg_trgm; the event store's tables (created by the eventsourcing library's
recorder: `stored_events`/snapshots plus `inbound_dedup` and `delivery_statuses`, whose DDL lives
next to the inserts that use them in `InboxRecorder`, since the recorder writes them in the event
transaction); older room events stamped with their `org_id`; then the SQL files in
`inbox/adapters/sql/`: `read_models.sql` (projections, dead letters) and `pipeline.sql` (relay
position and dead letters, worker heartbeats), ...; last, app secrets that channel accounts
registered before they were sealed kept in plaintext in their event are moved into the sealed
credentials and those events rewritten without them (`seal_plaintext_app_secrets`, needs
INBOX_SECRET_KEY when there are any).
"""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg import sql

from inbox.adapters.eventstore import InboxApplication, stamp_org_ids
from inbox.adapters.outbound.credentials import seal_plaintext_app_secrets
from inbox.adapters.secrets import SecretBox
from inbox.adapters.postgres import conninfo, ensure_pg_trgm, use_search_path
from inbox.config import Settings

SQL_FILES = ("read_models.sql", "pipeline.sql", "signin.sql", "outbound.sql")


def sql_file(name: str) -> str:
    return resources.files("inbox.adapters.sql").joinpath(name).read_text()


def migrate(settings: Settings) -> None:
    """Create the schema and every table the system needs; safe to run repeatedly and concurrently."""
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('inbox-migrate'))")
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.db_schema)))
            ensure_pg_trgm(conn)
            use_search_path(conn, settings.db_schema)
            event_store = InboxApplication.from_settings(settings, create_tables=True)
            try:
                stamp_org_ids(event_store)
            finally:
                event_store.close()
            for name in SQL_FILES:
                conn.execute(sql_file(name))
            event_store = InboxApplication.from_settings(settings)
            try:
                seal_plaintext_app_secrets(event_store, SecretBox(settings.secret_key) if settings.secret_key else None)
            finally:
                event_store.close()
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('inbox-migrate'))")


def migrate_read_models(settings: Settings) -> None:
    """Create the read-model tables alone in `settings.db_schema` (e.g. `inbox replay --into`): no event store."""
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.db_schema)))
        ensure_pg_trgm(conn)
        use_search_path(conn, settings.db_schema)
        conn.execute(sql_file("read_models.sql"))


def read_model_ddl() -> tuple[list[str], list[str]]:
    """`read_models.sql` as (statements creating the tables, the non-unique CREATE INDEX statements).

    `inbox replay` runs the first, loads the rows, then builds the indexes: the same DDL as a
    migration, with the indexes built once over the loaded tables instead of row by row. Unique
    indexes stay with the tables: the writer's ON CONFLICT relies on them while loading.
    """
    text = "\n".join(line.split("--", 1)[0] for line in sql_file("read_models.sql").splitlines())
    tables, indexes = [], []
    for statement in (s.strip() for s in text.split(";")):
        if statement:
            is_index = statement.upper().startswith("CREATE INDEX")
            (indexes if is_index else tables).append(statement)
    return tables, indexes
