"""(d) Staff command latency on a small and a large room, and cold loads (snapshots every 50 events).

Runs in-process through the services the API uses (InboundCommitter, RoomCommands).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import project_aggregate

from bench.infra import Infra
from bench.ingest import ACCOUNT, ORG
from bench.stats import rate, summary_ms
from domain.channels import Channel
from domain.staff import Actor, Role
from inbox.adapters.eventstore import EventStore, InboxApplication
from inbox.bootstrap import open_event_store
from inbox.usecases.channel_accounts import ChannelAccounts
from inbox.usecases.ingest import InboundCommitter, InboundMessage
from inbox.usecases.room_commands import RoomCommands


@dataclass
class RoomBuild:
    label: str
    room_id: str
    events: int
    messages: int
    seconds: float
    batches: int

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "messages": self.messages, "seconds": self.seconds,
                "msg_per_s": rate(self.messages, self.seconds), "committer_batches": self.batches,
                "mean_batch": self.messages / self.batches if self.batches else None}


@dataclass
class RoomFigures:
    build: RoomBuild
    commands: dict[str, float] = field(default_factory=dict)
    command_count: int = 0
    version_after: int = 0
    cold_before: dict[str, float] = field(default_factory=dict)
    cold_after: dict[str, float] = field(default_factory=dict)
    reconstruct_before: dict[str, float] = field(default_factory=dict)
    reconstruct_after: dict[str, float] = field(default_factory=dict)
    full_fold: dict[str, float] = field(default_factory=dict)
    snapshots: int = 0
    latest_snapshot: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"build": self.build.as_dict(), "room_id": self.build.room_id, "commands": self.commands,
                "command_count": self.command_count, "version_after_commands": self.version_after,
                "cold_load_before_commands": self.cold_before, "cold_load_after_commands": self.cold_after,
                "reconstruct_before_commands": self.reconstruct_before,
                "reconstruct_after_commands": self.reconstruct_after,
                "fold_all_events_without_snapshot": self.full_fold, "snapshots": self.snapshots,
                "latest_snapshot_version": self.latest_snapshot}


def build_room(
    app: InboxApplication, committer: InboundCommitter, accounts: ChannelAccounts, *, label: str, events: int,
    threads: int = 128,
) -> RoomBuild:
    """A room with exactly `events` events: RoomOpened + (events - 1) MessageReceived, via the group committer."""
    account = accounts.find(Channel.WHATSAPP_CLOUD, ACCOUNT)
    assert account is not None, "the bench channel account is not registered"
    contact = f"room-{label}"
    now = datetime.now(UTC)

    def message(i: int) -> InboundMessage:
        return InboundMessage(
            channel=Channel.WHATSAPP_CLOUD, channel_account=ACCOUNT, contact_id=contact,
            channel_message_id=f"wamid.{label}.{i}", text=f"message {i} of a long conversation", sent_at=now,
            contact_name="Long Talker",
        )

    n = events - 1
    batches0 = committer.batches
    started = time.perf_counter()
    first = committer.submit(account, message(0))
    if n > 1:
        with ThreadPoolExecutor(max_workers=min(threads, n)) as pool:
            results = list(pool.map(lambda i: committer.submit(account, message(i)), range(1, n)))
        assert not any(r.duplicate for r in results)
    seconds = time.perf_counter() - started
    room: Any = app.repository.get(UUID(first.room_id))
    if room.version != events:
        raise RuntimeError(f"room {label} has {room.version} events, expected {events}")
    return RoomBuild(label, first.room_id, events, n, seconds, committer.batches - batches0)


def run_commands(commands: RoomCommands, room_id: str, count: int) -> list[float]:
    """Alternate assign (to two agents in turn) and reply; each appends exactly one event."""
    admin = Actor(user_id="bench-admin", org_id=ORG, role=Role.ADMIN, name="Bench Admin")
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        if i % 2 == 0:
            commands.assign(admin, room_id, agent_id=f"agent-{(i // 2) % 2}")
        else:
            commands.reply(admin, room_id, text=f"reply {i}: thanks, looking into it")
        times.append(time.perf_counter() - t0)
    return times


def cold_loads(infra: Infra, room_id: str, repeats: int) -> list[float]:
    """A new InboxApplication each time (empty aggregate cache); its pool is warmed before the clock."""
    times = []
    for _ in range(repeats):
        app = open_event_store(infra.settings)
        try:
            app.recorder.max_notification_id()  # opens a pooled connection
            t0 = time.perf_counter()
            app.repository.get(UUID(room_id))
            times.append(time.perf_counter() - t0)
        finally:
            app.close()
    return times


def reconstructs(app: InboxApplication, room_id: str, repeats: int) -> list[float]:
    """The cache-miss path on a warm application: latest snapshot + the events after it."""
    rid = UUID(room_id)
    version = app.repository.get(rid).version
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        app.repository.get(rid, version=version)  # an explicit version bypasses the aggregate cache
        times.append(time.perf_counter() - t0)
    return times


def full_folds(app: InboxApplication, room_id: str, repeats: int) -> list[float]:
    """What a cold load would cost without snapshots: read and fold every event of the room."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        project_aggregate(None, app.events.get(UUID(room_id)))
        times.append(time.perf_counter() - t0)
    return times


def snapshot_info(infra: Infra, room_id: str) -> tuple[int, int]:
    with infra.connect() as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(max(originator_version), 0) FROM inbox_snapshots WHERE originator_id = %s",
            (room_id,),
        ).fetchone()
    assert row
    return int(row[0]), int(row[1])


def command_bench(
    infra: Infra, *, small_events: int, large_events: int, commands_per_room: int, cold_repeats: int,
    progress: Any = print,
) -> dict[str, RoomFigures]:
    app = open_event_store(infra.settings)
    store = EventStore(app)
    committer = InboundCommitter(store)
    accounts = ChannelAccounts(store)
    commands = RoomCommands(store)
    figures: dict[str, RoomFigures] = {}
    try:
        warm = build_room(app, committer, accounts, label="warm", events=3)
        for label, events in (("small", small_events), ("large", large_events)):
            build = build_room(app, committer, accounts, label=label, events=events)
            progress(
                f"  built the {label} room: {events:,} events in {build.seconds:.2f}s"
                f" ({rate(build.messages, build.seconds):,.0f} msg/s through InboundCommitter,"
                f" {build.batches} batches)"
            )
            figures[label] = RoomFigures(build=build)
        for label, fig in figures.items():
            fig.cold_before = summary_ms(cold_loads(infra, fig.build.room_id, cold_repeats))
            fig.reconstruct_before = summary_ms(reconstructs(app, fig.build.room_id, cold_repeats * 5))
            fig.full_fold = summary_ms(full_folds(app, fig.build.room_id, max(3, cold_repeats // 4)))
        run_commands(commands, warm.room_id, 4)  # warm code paths and connections on a third room
        for label, fig in figures.items():
            times = run_commands(commands, fig.build.room_id, commands_per_room)
            fig.commands = summary_ms(times)
            fig.command_count = commands_per_room
            fig.version_after = app.repository.get(UUID(fig.build.room_id)).version
        for label, fig in figures.items():
            fig.cold_after = summary_ms(cold_loads(infra, fig.build.room_id, cold_repeats))
            fig.reconstruct_after = summary_ms(reconstructs(app, fig.build.room_id, cold_repeats * 5))
            fig.snapshots, fig.latest_snapshot = snapshot_info(infra, fig.build.room_id)
    finally:
        committer.close()
        app.close()
    return figures
