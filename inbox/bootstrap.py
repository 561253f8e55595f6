"""The composition root: builds settings, connections and services once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from psycopg_pool import ConnectionPool

from inbox.config import Settings
from inbox.adapters.postgres import sync_pool
from inbox.adapters.eventstore import InboxApplication
from inbox.usecases.expiry import ExpiredRooms
from inbox.adapters.lag import LagTracker
from inbox.adapters.metrics import Metrics
from inbox.usecases.ingest import ChannelAccounts, InboundCommitter, RoomCommands
from inbox.adapters.read_models.queries import InboxQueries

if TYPE_CHECKING:
    from inbox.adapters.live import ChangeHub


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

    @classmethod
    def build(cls, settings: Settings) -> Container:
        app = InboxApplication.from_settings(settings)
        read_pool = sync_pool(settings)
        return cls(
            settings=settings,
            app=app,
            read_pool=read_pool,
            accounts=ChannelAccounts(app),
            inbound=InboundCommitter(
                app, max_queue=settings.inbound_queue_max, timeout=settings.inbound_timeout_s
            ),
            rooms=RoomCommands(app),
            expired=ExpiredRooms(app, InboxQueries(read_pool).expired_rooms),
        )

    def close(self) -> None:
        self.inbound.close()
        self.read_pool.close()
        self.app.close()
