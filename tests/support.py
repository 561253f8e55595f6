"""Test helpers: tokens, waiting on conditions, recounts, and real processes of the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import psycopg
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from domain.channels import Channel
from domain.room import Room
from domain.staff import Actor, Role
from inbox.adapters.auth import mint_token
from inbox.config import Settings
from inbox.adapters.postgres import conninfo
from inbox.bootstrap import open_event_log, open_event_store
from inbox.adapters.eventstore import EventStore
from inbox.usecases.channel_accounts import ChannelAccounts
from inbox.adapters.read_models.writer import ProjectionWriter
from inbox.entrypoints.processes import Processes

T = TypeVar("T")


def token(settings: Settings, *, org: str = "org1", user: str = "admin1", role: str = "admin") -> str:
    assert settings.jwt_secret
    return mint_token(settings.jwt_secret, org=org, user=user, role=role)


def auth(settings: Settings, **claims: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(settings, **claims)}"}


def wait_until(check: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll `check` until it returns a truthy value; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def query(settings: Settings, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo(settings)) as conn:
        return conn.execute(sql, params).fetchall()


def execute(settings: Settings, sql: str, params: tuple[Any, ...] = ()) -> None:
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        conn.execute(sql, params)


def counters_table(settings: Settings) -> dict[tuple[str, str, str, str], tuple[int, int]]:
    rows = query(settings, "SELECT org_id, tab, status, assignee, rooms, awaiting FROM counters")
    return {(o, t, s, a): (r, w) for o, t, s, a, r, w in rows if r or w}


def recount(settings: Settings) -> dict[tuple[str, str, str, str], tuple[int, int]]:
    """What the counters must say, counted from the room projection itself."""
    rows = query(
        settings,
        "SELECT org_id, tab, status, coalesce(assignee, '-'), count(*), count(*) FILTER (WHERE awaiting_reply)"
        " FROM rooms GROUP BY 1, 2, 3, 4"
        " UNION ALL"
        " SELECT org_id, tab, status, '*', count(*), count(*) FILTER (WHERE awaiting_reply)"
        " FROM rooms GROUP BY 1, 2, 3",
    )
    return {(o, t, s, a): (r, w) for o, t, s, a, r, w in rows}


def store_totals(settings: Settings) -> tuple[int, int]:
    """(rooms, sum of room versions) according to the event store: what projections must reach."""
    rows = query(
        settings,
        "SELECT count(*), coalesce(sum(v), 0) FROM (SELECT max(originator_version) AS v FROM inbox_events"
        " WHERE topic LIKE 'domain.room:Room.%%' GROUP BY originator_id) t",
    )
    return int(rows[0][0]), int(rows[0][1])


def projection_totals(settings: Settings) -> tuple[int, int]:
    rows = query(settings, "SELECT count(*), coalesce(sum(version), 0) FROM rooms")
    return int(rows[0][0]), int(rows[0][1])


def project_all(settings: Settings) -> None:
    """Apply everything in the event store to the projections directly (tests without Kafka)."""

    async def run() -> None:
        log = open_event_log(settings)
        pool = None
        try:
            from inbox.adapters.postgres import async_pool

            pool = await async_pool(settings)
            writer = ProjectionWriter(pool)
            position = 0
            while True:
                page, rows = log.read(position, 1000)
                if rows == 0:
                    break
                await writer.apply_batch([e for _, e in page.events])
                position = page.last_id
        finally:
            if pool is not None:
                await pool.close()
            log.close()

    asyncio.run(run())


@asynccontextmanager
async def events_topic_from_start(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of the events topic as a downstream team would read it: every partition assigned
    by hand, from the beginning, nothing committed; stopped when the block ends."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    try:
        await consumer.start()
        tps = [TopicPartition(settings.events_topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        yield consumer
    finally:
        await consumer.stop()


async def read_topic_async(settings: Settings, at_least: int, timeout: float = 30) -> list[tuple[bytes, dict[str, Any]]]:
    """Everything on the events topic, read like a downstream consumer (manual assignment, from the start)."""
    async with events_topic_from_start(settings) as consumer:
        out: list[tuple[bytes, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while len(out) < at_least and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend((r.key, orjson.loads(r.value)) for r in records)
        return out


def read_topic(settings: Settings, at_least: int, timeout: float = 30) -> list[tuple[bytes, dict[str, Any]]]:
    return asyncio.run(read_topic_async(settings, at_least, timeout))


def env_for(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "INBOX_HTTP_HOST": "127.0.0.1", "INBOX_LOG_LEVEL": "WARNING"}


class Pipeline:
    """Real `inbox api|relay|worker` processes for end-to-end tests; each can be killed and restarted."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        data_dir = log_dir / "data"  # the worker's Faust directory goes in here; never the cwd's .inbox
        data_dir.mkdir(exist_ok=True)
        self.processes = Processes({**env_for(settings), "INBOX_DATA_DIR": str(data_dir)}, log_dir=log_dir)
        self.base_url = f"http://127.0.0.1:{settings.http_port}"
        self._http: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        """One client for the test's calls to the API, closed by `stop_all`. Polling through it is
        cheap; every new httpx client builds a TLS context (~30 ms of CPU), even for http://."""
        if self._http is None or self._http.is_closed:
            self._http = httpx.Client(base_url=self.base_url, timeout=30)
        return self._http

    def start(self, name: str, role: str | None = None) -> subprocess.Popen[bytes]:
        return self.processes.start(name, role).popen

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """`sig` to the process's group; SIGKILL after 10 s (Faust can hang stopping mid-rebalance)."""
        self.processes.kill(name, sig)

    def stop_all(self) -> None:
        if self._http is not None:
            self._http.close()
        self.processes.stop_all()

    def wait_for_api(self, timeout: float = 60) -> None:
        """Until this pipeline's own `inbox api` answers on its port. The port came from
        `free_test_port` and tests run side by side: another test's API can hold it (ours then fails to
        bind), and its /healthz must not pass for ours."""
        port = self.settings.http_port

        def up() -> bool:
            try:
                if self.http.get("/healthz", timeout=1).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
            pid = self.processes.pid("api")  # someone answers: is it ours? (read from /proc once it does)
            return pid is not None and listens_on(pid, port)

        wait_until(up, timeout=timeout, what=f"this pipeline's API listening on {port} and /healthz")

    def wait_until_projected(self, timeout: float = 120) -> None:
        """Projections caught up with everything in the event store."""
        wait_until(
            lambda: projection_totals(self.settings) == store_totals(self.settings),
            timeout=timeout, interval=0.25,
            what=f"projections to reach the event store (store {store_totals(self.settings)})",
        )

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.processes.log_tail(name, lines)


@contextmanager
def running(settings: Settings, log_dir: Path, *names: str) -> Iterator[Pipeline]:
    """A `Pipeline` with the processes `names` started in that order and its API answering; every
    process is stopped when the block ends."""
    p = Pipeline(settings, log_dir)
    try:
        for name in names:
            p.start(name)
        p.wait_for_api()
        yield p
    finally:
        p.stop_all()


# The channel accounts of the three-channel story (tests/e2e/test_story.py, tests/web/test_browser_story.py):
# customers write on WhatsApp, Instagram and Messenger and comment under posts.
STORY_ACCOUNTS = {"whatsapp_cloud": "pn-1", "instagram": "ig-1", "facebook_messenger": "page-1",
                  "instagram_comment": "ig-1", "facebook_comment": "page-1"}


class Customers:
    """The integration side of the story: its channel accounts registered (by admin1), then
    customers' messages posted through the HTTP API."""

    def __init__(self, p: Pipeline) -> None:
        self.http = httpx.Client(base_url=p.base_url, timeout=60)
        self.settings = p.settings
        self._n = 0
        admin = auth(p.settings, role="admin", user="admin1")
        for channel, external_id in STORY_ACCOUNTS.items():
            r = self.http.post("/v1/channel-accounts", headers=admin,
                               json={"channel": channel, "external_id": external_id, "name": channel})
            assert r.status_code == 201, r.text

    def write(self, channel: str, contact: str, text: str, *, name: str, at: datetime | None = None,
              post: str | None = None) -> str:
        """The next customer message (ids m1, m2, ...) on `channel`; returns its room's id."""
        self._n += 1
        r = self.http.post("/v1/inbound-messages", headers=auth(self.settings, role="integration", user="bridge"),
                           json={"channel": channel, "channel_account": STORY_ACCOUNTS[channel],
                                 "contact": {"id": contact, "name": name},
                                 "message": {"id": f"m{self._n}", "text": text,
                                             "sent_at": (at or datetime.now(UTC)).isoformat()},
                                 **({"post_id": post} if post else {})})
        assert r.status_code == 202, r.text
        return str(r.json()["room_id"])

    def close(self) -> None:
        self.http.close()


def write_expired_rooms(settings: Settings, org: str, n: int, *, account: str, phone_prefix: str) -> None:
    """n assigned WhatsApp rooms of `org` whose last customer message is 30 h old, written through
    the real write path (Room aggregates saved 500 per transaction); the scale test and bench/ use it."""
    event_store = open_event_store(settings)
    try:
        info = ChannelAccounts(EventStore(event_store)).register(
            Actor("admin1", org, Role.ADMIN), channel="whatsapp_cloud", external_id=account, name=account
        )
        spv = Actor("spv1", org, Role.SUPERVISOR)
        old = datetime.now(UTC) - timedelta(hours=30)
        batch: list[Room] = []
        for i in range(n):
            room = Room.open(org_id=org, channel=Channel.WHATSAPP_CLOUD, channel_account_id=info.id,
                             channel_account=info.external_id, contact_id=f"{phone_prefix}{i:07d}",
                             contact_name=f"Customer {i}")
            room.receive(channel_message_id=f"wamid.{account}.{i}", text="halo, masih ada?", sent_at=old)
            room.assign(spv, agent_id=f"agent{i % 20}")
            batch.append(room)
            if len(batch) == 500:
                event_store.save(*batch)
                batch = []
        if batch:
            event_store.save(*batch)
    finally:
        event_store.close()


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a listening TCP socket on `port` (Linux: /proc; elsewhere, assumed)."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return True
    local = f":{port:04X} "  # the local address's port, as /proc/net/tcp writes it
    inodes = set()
    for table in tables:
        for line in table.read_text().splitlines()[1:] if table.exists() else []:
            if local not in line:  # most lines, cheaply: a busy test machine has thousands
                continue
            fields = line.split()  # sl local_address rem_address st ... inode
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


# Ports for the API processes tests start: below Linux's ephemeral range (32768-60999), in a block
# of this xdist worker's own. A port picked in the ephemeral range (bind to 0) and bound later by a
# child process can be taken meanwhile as the local port of any outgoing connection of the suite's
# (PostgreSQL, the broker, HTTP clients): the API then fails to bind ("address already in use").
_PORT_BLOCK = 1000
_FIRST_TEST_PORT = 20_000
_next_port = itertools.count()


def free_test_port() -> int:
    """A port nothing listens on now, from this worker's block, never the same twice in a row."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...; unset without xdist
    index = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0
    start = _FIRST_TEST_PORT + index % 12 * _PORT_BLOCK  # blocks from 20000 to 31999
    for _ in range(_PORT_BLOCK):
        port = start + next(_next_port) % _PORT_BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {start}-{start + _PORT_BLOCK - 1}")


def http_settings(settings: Settings) -> Settings:
    from dataclasses import replace

    return replace(settings, http_port=free_test_port())
