"""The composition root: the one place that builds every process's dependencies.

The API (`Container`), the relay, the projection worker, replay, dead-letter retry and export
all get their event store, event log and pools from here; the adapters take them as constructor
arguments and never open their own.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from psycopg_pool import ConnectionPool

from inbox.config import Settings
from inbox.adapters.postgres import async_pool, sync_pool
from inbox.adapters.eventstore import EventStore, InboxApplication
from inbox.adapters.event_log import WireEventLog
from inbox.usecases.expiry import ExpiredRooms
from inbox.adapters.lag import LagTracker
from inbox.adapters.metrics import Metrics
from inbox.usecases.channel_accounts import ChannelAccounts
from inbox.usecases.ingest import InboundCommitter
from inbox.usecases.room_commands import RoomCommands
from inbox.adapters.read_models.queries import InboxQueries
from inbox.adapters.outbound.credentials import PostgresCredentials
from inbox.adapters.outbound.graph_access import GraphAccessChecker
from inbox.adapters.secrets import SecretBox
from inbox.adapters.outbound.sender import SenderOptions

if TYPE_CHECKING:
    import faust

    from inbox.adapters.live import ChangeHub

    from inbox.adapters.kafka.relay import Relay
    from inbox.adapters.read_models.dead_letters import RetryResult
    from inbox.adapters.read_models.replay import Hook, Progress, ReplayStats


def open_event_store(settings: Settings) -> InboxApplication:
    return InboxApplication.from_settings(settings)


def open_event_log(settings: Settings) -> WireEventLog:
    """A reader of the event store as wire events, over its own event store; close it when done."""
    return WireEventLog(open_event_store(settings))


@dataclass
class Container:
    """Everything one API process uses."""

    settings: Settings
    event_store: InboxApplication
    read_pool: ConnectionPool
    accounts: ChannelAccounts
    inbound: InboundCommitter
    rooms: RoomCommands
    expired: ExpiredRooms
    metrics: Metrics = field(default_factory=Metrics)
    lag: LagTracker = field(default_factory=LagTracker.create)
    # Live updates (GET /v1/stream): needs the event loop, so the API's lifespan starts it.
    stream_hub: ChangeHub | None = None

    async def start_stream_hub(self) -> ChangeHub:
        from inbox.adapters.live import ChangeHub

        self.stream_hub = ChangeHub(self.settings)
        await self.stream_hub.start()
        return self.stream_hub

    async def stop_stream_hub(self) -> None:
        if self.stream_hub is not None:
            await self.stream_hub.stop()
    credentials: PostgresCredentials | None = None

    @classmethod
    def build(cls, settings: Settings) -> Container:
        event_store = open_event_store(settings)
        read_pool = sync_pool(settings)
        store = EventStore(event_store)  # the use cases' port on the eventsourcing application
        credentials = PostgresCredentials(read_pool, SecretBox(settings.secret_key) if settings.secret_key else None)
        access = GraphAccessChecker(settings.meta_graph_url, settings.meta_graph_version)
        return cls(
            settings=settings,
            event_store=event_store,
            read_pool=read_pool,
            credentials=credentials,
            accounts=ChannelAccounts(store, credentials, access),
            inbound=InboundCommitter(
                store, max_queue=settings.inbound_queue_max, timeout=settings.inbound_timeout_s
            ),
            rooms=RoomCommands(store),
            expired=ExpiredRooms(store, InboxQueries(read_pool).expired_rooms),
        )

    def close(self) -> None:
        self.inbound.close()
        self.read_pool.close()
        self.event_store.close()


@contextmanager
def relay(settings: Settings, *, page_size: int = 2000, max_request_size: int = 1_048_576) -> Iterator[Relay]:
    """The relay with its event log; the log is closed when the block ends."""
    from inbox.adapters.kafka.relay import Relay

    event_log = open_event_log(settings)
    try:
        yield Relay(settings, event_log, page_size=page_size, max_request_size=max_request_size)
    finally:
        event_log.close()


def projection_worker(settings: Settings, worker_id: str | None = None) -> faust.App:
    """The Faust app of one projection worker; its pool and event log open on first use."""
    from inbox.adapters.kafka.projector import ProjectorRuntime, create_faust_app

    runtime = ProjectorRuntime(
        settings, worker_id or f"{socket.gethostname()}-{os.getpid()}",
        open_pool=lambda: async_pool(settings, min_size=1, max_size=3),
        open_event_log=lambda: open_event_log(settings),
    )
    return create_faust_app(settings, runtime)


async def replay(
    settings: Settings, *, page_size: int = 20_000, progress: Progress | None = None,
    until: datetime | None = None, into: str | None = None, before_switch: Hook | None = None,
    shares: int | None = None,
) -> ReplayStats:
    """Rebuild every projection from the event store (see inbox/adapters/read_models/replay.py)."""
    from inbox.adapters.read_models import replay as replaying

    event_log = open_event_log(settings)
    try:
        return await replaying.replay(settings, event_log, page_size=page_size, progress=progress,
                                      until=until, into=into, before_switch=before_switch,
                                      open_reader=open_event_log, shares=shares)
    finally:
        event_log.close()


async def retry_dead_letters(settings: Settings, ids: list[int] | None = None) -> RetryResult:
    """Re-project the rooms of the given dead letters (all unresolved ones when `ids` is None)."""
    from inbox.adapters.read_models import dead_letters

    event_log = open_event_log(settings)
    try:
        return await dead_letters.retry(settings, event_log, ids)
    finally:
        event_log.close()


async def run_sender(
    settings: Settings, stop: asyncio.Event, options: SenderOptions | None = None, *, graph_timeout_s: float = 10.0
) -> None:
    """The `inbox sender` process: events topic → Graph API → outcome events on the rooms."""
    from inbox.adapters.meta_graph import MetaGraphClient
    from inbox.adapters.outbound.sender import Sender
    from inbox.adapters.postgres import async_pool
    from inbox.usecases.delivery import Deliveries
    from inbox.usecases.echoes import ParkedEchoes

    event_store = open_event_store(settings)
    read_pool = sync_pool(settings, max_size=16)
    pool = await async_pool(settings, max_size=16)
    box = SecretBox(settings.secret_key) if settings.secret_key else None
    try:
        async with MetaGraphClient(
            settings.meta_graph_url, settings.meta_graph_version, timeout_s=graph_timeout_s
        ) as client:
            options = options or SenderOptions()
            sender = Sender(
                bootstrap=settings.kafka_bootstrap or "", topic=settings.events_topic, pool=pool,
                deliveries=Deliveries(EventStore(event_store)), credentials=PostgresCredentials(read_pool, box),
                client=client, options=options,
                echoes=ParkedEchoes(EventStore(event_store), hold_s=options.echo_hold_s),
            )
            await sender.run(stop)
    finally:
        await pool.close()
        read_pool.close()
        event_store.close()
