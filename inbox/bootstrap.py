"""The composition root: builds settings, connections and services once per process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from psycopg_pool import ConnectionPool

from inbox.config import Settings
from inbox.adapters.postgres import sync_pool
from inbox.adapters.eventstore import EventStore, InboxApplication
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


@dataclass
class Container:
    settings: Settings
    app: InboxApplication
    read_pool: ConnectionPool
    accounts: ChannelAccounts
    inbound: InboundCommitter
    rooms: RoomCommands
    expired: ExpiredRooms
    metrics: Metrics = field(default_factory=Metrics)
    lag: LagTracker = field(default_factory=LagTracker.create)
    credentials: PostgresCredentials | None = None

    @classmethod
    def build(cls, settings: Settings) -> Container:
        app = InboxApplication.from_settings(settings)
        read_pool = sync_pool(settings)
        store = EventStore(app)
        credentials = PostgresCredentials(read_pool, SecretBox(settings.secret_key) if settings.secret_key else None)
        access = GraphAccessChecker(settings.meta_graph_url, settings.meta_graph_version)
        return cls(
            settings=settings,
            app=app,
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
        self.app.close()


async def run_sender(
    settings: Settings, stop: asyncio.Event, options: SenderOptions | None = None, *, graph_timeout_s: float = 10.0
) -> None:
    """The `inbox sender` process: events topic → Graph API → outcome events on the rooms."""
    from inbox.adapters.meta_graph import MetaGraphClient
    from inbox.adapters.outbound.sender import Sender
    from inbox.adapters.postgres import async_pool
    from inbox.usecases.delivery import Deliveries

    app = InboxApplication.from_settings(settings)
    read_pool = sync_pool(settings, max_size=16)
    pool = await async_pool(settings, max_size=16)
    box = SecretBox(settings.secret_key) if settings.secret_key else None
    try:
        async with MetaGraphClient(
            settings.meta_graph_url, settings.meta_graph_version, timeout_s=graph_timeout_s
        ) as client:
            sender = Sender(
                bootstrap=settings.kafka_bootstrap or "", topic=settings.events_topic, pool=pool,
                deliveries=Deliveries(EventStore(app)), credentials=PostgresCredentials(read_pool, box),
                client=client, options=options or SenderOptions(),
            )
            await sender.run(stop)
    finally:
        await pool.close()
        read_pool.close()
        app.close()
