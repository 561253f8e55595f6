"""Database plumbing: connection info, schema creation, pools. One place knows the SQL files."""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from inbox.config import ConfigError, Settings


def conninfo(settings: Settings) -> str:
    """libpq connection string with the schema on the search_path."""
    if not settings.database_url:
        raise ConfigError("INBOX_DATABASE_URL is not set")
    return make_conninfo(settings.database_url, options=f"-c search_path={settings.db_schema}")


def eventsourcing_env(settings: Settings) -> dict[str, str]:
    """Translate our database URL into the `eventsourcing` library's POSTGRES_* settings."""
    if not settings.database_url:
        raise ConfigError("INBOX_DATABASE_URL is not set")
    params = conninfo_to_dict(settings.database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(params.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(params.get("port") or "5432"),
        "POSTGRES_USER": str(params.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(params.get("password") or ""),
        "POSTGRES_SCHEMA": settings.db_schema,
        "POSTGRES_POOL_SIZE": str(settings.db_pool_size),
        "POSTGRES_MAX_OVERFLOW": "8",
        "POSTGRES_LOCK_TIMEOUT": "10",
        "POSTGRES_PRE_PING": "y",
    }


def _sql_file(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text()


def migrate(settings: Settings) -> None:
    """Create the schema and every table the system needs; safe to run repeatedly and concurrently."""
    from inbox.eventstore import InboxApplication  # the event store creates its own tables

    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('inbox-migrate'))")
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.db_schema)))
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            except psycopg.Error:
                pass  # optional until search lands; the projections do not depend on it yet
            app = InboxApplication.from_settings(settings, create_tables=True)
            app.close()
            conn.execute(_sql_file("projections", "schema.sql"))
            conn.execute(_sql_file("streams", "schema.sql"))
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('inbox-migrate'))")


def sync_pool(settings: Settings, *, min_size: int = 1, max_size: int | None = None) -> ConnectionPool:
    return ConnectionPool(
        conninfo(settings),
        min_size=min_size,
        max_size=max_size or settings.db_pool_size,
        open=True,
        kwargs={"autocommit": True},
    )


async def async_pool(settings: Settings, *, min_size: int = 1, max_size: int = 4) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        conninfo(settings), min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    return pool
