"""(c) Replay: rebuild every projection from the event store and compare with the live projections."""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from bench.infra import Infra
from inbox.adapters.read_models.replay import ReplayStats
from bench.stats import rate
from inbox.bootstrap import open_event_store, replay


@dataclass
class ProjectionImage:
    rooms: dict[str, tuple[Any, ...]]
    counters: dict[tuple[str, str, str, str], tuple[int, int]]
    messages_count: int
    messages_md5: str


def image(infra: Infra) -> ProjectionImage:
    with infra.connect() as conn:
        rooms = {str(r[0]): tuple(r[1:]) for r in conn.execute("SELECT * FROM rooms ORDER BY id").fetchall()}
        counters = {
            (o, t, s, a): (int(r), int(w))
            for o, t, s, a, r, w in conn.execute(
                "SELECT org_id, tab, status, assignee, rooms, awaiting FROM counters"
            ).fetchall()
            if r or w  # a zero row and a missing row are the same count
        }
        row = conn.execute("SELECT count(*), coalesce(md5(string_agg(m::text, ',' ORDER BY id)), '') FROM messages m").fetchone()
        assert row
    return ProjectionImage(rooms, counters, int(row[0]), str(row[1]))


@dataclass
class ReplayResult:
    stats: ReplayStats
    ok: bool
    differences: list[str] = field(default_factory=list)
    rooms: int = 0
    counter_rows: int = 0
    messages: int = 0
    cpu_s: float | None = None  # this process (the replay runs in it) and its fold processes
    store_read_rows_per_s: float | None = None  # baseline: the same notifications read raw, no decoding

    @property
    def cpu_ms_per_event(self) -> float | None:
        return 1000 * self.cpu_s / self.stats.events if self.cpu_s is not None and self.stats.events else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.stats.events, "rooms": self.stats.rooms, "seconds": self.stats.seconds,
            "events_per_s": self.stats.events_per_s, "equal_to_live": self.ok, "differences": self.differences,
            "compared": {"rooms": self.rooms, "counter_rows": self.counter_rows, "messages": self.messages},
            "replay_cpu_s": self.cpu_s, "replay_cpu_ms_per_event": self.cpu_ms_per_event,
            "store_read_rows_per_s": self.store_read_rows_per_s,
        }


def compare(before: ProjectionImage, after: ProjectionImage) -> list[str]:
    diffs = []
    if before.rooms != after.rooms:
        ids = set(before.rooms) | set(after.rooms)
        differing = sum(1 for i in ids if before.rooms.get(i) != after.rooms.get(i))
        diffs.append(f"rooms: {differing} of {len(ids)} rows differ")
    if before.counters != after.counters:
        keys = set(before.counters) | set(after.counters)
        differing = sorted(k for k in keys if before.counters.get(k) != after.counters.get(k))
        diffs.append(
            f"counters: {len(differing)} rows differ, e.g. "
            + ", ".join(f"{k}: live {before.counters.get(k)} replayed {after.counters.get(k)}" for k in differing[:3])
        )
    if (before.messages_count, before.messages_md5) != (after.messages_count, after.messages_md5):
        diffs.append(f"messages: live {before.messages_count} rows, replayed {after.messages_count} (or contents differ)")
    return diffs


def store_read_baseline(infra: Infra, page_size: int = 20_000) -> float:
    """Rows/s of reading the whole notification log as replay pages it, without decoding a row."""
    app = open_event_store(infra.settings)
    try:
        rows, position, started = 0, 0, time.perf_counter()
        while page := app.recorder.select_notifications(start=position, limit=page_size, inclusive_of_start=False):
            rows += len(page)
            position = page[-1].id
        return rate(rows, time.perf_counter() - started)
    finally:
        app.close()


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (replay's fold processes, `bulk`)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_replay(infra: Infra, live: ProjectionImage | None = None) -> ReplayResult:
    """Replay `infra`'s store and compare with its live projections (or with `live`, taken elsewhere)."""
    before = live if live is not None else image(infra)
    read_rate = store_read_baseline(infra)
    cpu0 = _cpu()
    stats = asyncio.run(replay(infra.settings))
    cpu = _cpu() - cpu0
    after = image(infra)
    diffs = compare(before, after)
    return ReplayResult(
        stats=stats, ok=not diffs, differences=diffs, rooms=len(before.rooms),
        counter_rows=len(before.counters), messages=before.messages_count, cpu_s=cpu,
        store_read_rows_per_s=read_rate,
    )
