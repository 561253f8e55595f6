"""Database plumbing: connection info, session setup, pools (migration: inbox/adapters/schema.py)."""

from __future__ import annotations

import psycopg
from eventsourcing import persistence as es_persistence
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from inbox.config import ConfigError, Settings


def conninfo(settings: Settings) -> str:
    """libpq connection string with the schema on the search_path."""
    if not settings.database_url:
        raise ConfigError("INBOX_DATABASE_URL is not set")
    given = conninfo_to_dict(settings.database_url).get("options")  # keep the URL's own options
    options = f"{given} -c search_path={settings.db_schema}" if given else f"-c search_path={settings.db_schema}"
    return make_conninfo(settings.database_url, options=options)


def eventsourcing_env(settings: Settings) -> dict[str, str]:
    """Translate our database URL into the `eventsourcing` library's POSTGRES_* settings."""
    if not settings.database_url:
        raise ConfigError("INBOX_DATABASE_URL is not set")
    params = conninfo_to_dict(settings.database_url)
    return {
        # The library's factory passes on host/port/user/password/dbname only; ours adds the rest
        # of the URL (sslmode, options, application_name, ...).
        "PERSISTENCE_MODULE": "inbox.adapters.eventstore:InboxPostgresFactory",
        "POSTGRES_CONNINFO": settings.database_url,
        "POSTGRES_DBNAME": str(params.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(params.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(params.get("port") or "5432"),
        "POSTGRES_USER": str(params.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(params.get("password") or ""),
        "POSTGRES_SCHEMA": settings.db_schema,
        "POSTGRES_POOL_SIZE": str(settings.db_pool_size),
        "POSTGRES_MAX_OVERFLOW": "8",
        "POSTGRES_LOCK_TIMEOUT": "10",
        # Waiting for a pooled connection (all busy, or the database unreachable) fails after
        # this long: a 503 instead of a request hanging for the library's default 30 s.
        "POSTGRES_CONNECT_TIMEOUT": "5",
        # No ping per checkout (a round trip each): the library retries reads and writes on
        # InterfaceError/OperationalError, which is what a dead pooled connection raises.
        "POSTGRES_PRE_PING": "n",
    }


# pg_trgm (contact search) lives in a shared schema of its own: an extension created inside one
# Inbox schema would be dropped with it (DROP SCHEMA ... CASCADE), taking every other schema's
# trigram indexes along. Already installed elsewhere (e.g. `public`)? Then it is used where it is.
EXTENSION_SCHEMA = "extensions"
# Typo tolerance of contact search: `q <% search_name` matches at this word similarity or more
# ("santso" → "santoso" is 0.57; unrelated names of the same length score 0.2–0.3).
WORD_SIMILARITY_THRESHOLD = 0.5


def extension_schema(conn: psycopg.Connection) -> str | None:
    row = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_trgm'"
    ).fetchone()
    return str(row[0]) if row else None


def ensure_pg_trgm(conn: psycopg.Connection) -> str:
    """Install pg_trgm if missing (search needs it); returns the schema holding it."""
    found = extension_schema(conn)
    if found:
        return found
    try:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(EXTENSION_SCHEMA)))
        conn.execute(
            sql.SQL("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA {}").format(sql.Identifier(EXTENSION_SCHEMA))
        )
    except psycopg.Error as e:
        raise ConfigError(
            f"the pg_trgm extension is required (contact search) and could not be created: {e};"
            " ask a database superuser to run CREATE EXTENSION pg_trgm"
        ) from e
    return extension_schema(conn) or EXTENSION_SCHEMA


def use_search_path(conn: psycopg.Connection, schema: str) -> None:
    """Our schema first, then the one holding pg_trgm (its operators and operator classes)."""
    ext = extension_schema(conn)
    names = [schema] + ([ext] if ext and ext != schema else [])
    conn.execute(
        sql.SQL("SELECT set_config('search_path', {}, false)").format(
            sql.Literal(", ".join(sql.Identifier(n).as_string(conn) for n in names))
        )
    )
    conn.execute(
        "SELECT set_config('pg_trgm.word_similarity_threshold', %s, false)", (str(WORD_SIMILARITY_THRESHOLD),)
    )


def configure_read_session(conn: psycopg.Connection, schema: str) -> None:
    """A read-pool session: search path as above, and three planner settings for the query API.

    - `plan_cache_mode = force_custom_plan`: psycopg prepares statements it runs often, and
      PostgreSQL would then switch to one generic plan per statement; but the best plan of a
      search or a page depends on the values (how rare the words are, the LIMITs, the cursor),
      and a generic plan measured 4x slower. Planning each execution costs well under 1 ms.
    - `jit = off`: the queries take milliseconds; compiling them would cost more (the estimated
      cost of a search can cross `jit_above_cost`).
    - `max_parallel_workers_per_gather = 0`: the queries are bounded by their indexes and LIMITs;
      the planner goes parallel only where it misjudges how many rows a search reads (a rare
      prefix term taken for 2% of 10M messages), and starting the workers then cost 10-25 ms
      more than the whole query (measured on 1M rooms / 10M messages).
    """
    use_search_path(conn, schema)
    conn.execute("SET plan_cache_mode = force_custom_plan")
    conn.execute("SET jit = off")
    conn.execute("SET max_parallel_workers_per_gather = 0")


# Waiting for a read connection (pool exhausted, database unreachable) raises PoolTimeout (→ 503) after this long.
READ_POOL_TIMEOUT_S = 5.0


def sync_pool(settings: Settings, *, min_size: int = 1, max_size: int | None = None) -> ConnectionPool:
    """Read pool (the query API): pg_trgm's schema is on its search path for contact search."""

    def configure(conn: psycopg.Connection) -> None:
        configure_read_session(conn, settings.db_schema)
        # Bounded reads: a query running longer is cancelled (QueryCanceled → 503).
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(settings.read_statement_timeout_ms),))

    return ConnectionPool(
        conninfo(settings),
        min_size=min_size,
        max_size=max_size or settings.db_pool_size,
        open=True,
        kwargs={"autocommit": True},
        configure=configure,
        timeout=READ_POOL_TIMEOUT_S,
    )


async def async_pool(settings: Settings, *, min_size: int = 1, max_size: int = 4) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        conninfo(settings), min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    return pool


def is_transient(error: BaseException) -> bool:
    """True when a failure is the database's, not the data's: retry, never skip or dead-letter.

    Lost connections, a restarting server, lock and statement timeouts, deadlocks, serialization
    failures, a full disk or pool (psycopg's and the eventsourcing library's `OperationalError` and
    `InterfaceError`), and a schema that is not migrated or not accessible. A program limit hit by
    one value (class 54, e.g. a text too long for a tsvector) is the value's own. The one predicate
    of the relay, the projection and reports workers, replay and the sender.
    """
    if isinstance(error, psycopg.errors.ProgramLimitExceeded):
        return False
    return isinstance(error, (
        es_persistence.OperationalError, es_persistence.InterfaceError,
        psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError,
        psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedFunction,
        psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction,
        psycopg.errors.InFailedSqlTransaction,
    ))
