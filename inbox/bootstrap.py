"""The composition root: builds settings, connections and services once per process."""

from __future__ import annotations

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

    @classmethod
    def build(cls, settings: Settings) -> Container:
        app = InboxApplication.from_settings(settings)
        read_pool = sync_pool(settings)
        store = EventStore(app)
        return cls(
            settings=settings,
            app=app,
            read_pool=read_pool,
            accounts=ChannelAccounts(store),
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
