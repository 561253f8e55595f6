"""Query benchmark on a large inbox: `python -m bench.dataset --rooms 1000000 --messages 10000000`.

1. Builds the data set through the real write path — Room aggregates deciding real commands
   (receive, reply, assign, resolve, reopen), saved with `app.save(*rooms)` a few thousand events
   per transaction by `--processes` builder processes on disjoint chunks of rooms (the recorder's
   table lock keeps notification ids in commit order) — in schema `bench_dataset` (kept;
   `--reuse` skips straight to step 3, `--reuse --replay` replays again first).
2. Projects it with `inbox replay` (the same fold the workers use; timed, with peak RSS), then
   VACUUM ANALYZE.
3. Starts a real `inbox api` process and measures p50/p99 of the read API over HTTP: counters,
   room list (first page, deep page, filtered, an agent's view), contact search (name, typo,
   phone, handle), conversation search (rare and common words) and history (first and older
   page), each against the issue's target and as a ratio to `/healthz` of the same run (the HTTP
   stack without a query); the API's peak RSS; then prints EXPLAIN (ANALYZE, BUFFERS) of the SQL
   behind each request.
4. Runs a real `inbox relay` (re-publishing the store from its start to an embedded Tansu, as
   after a broker loss) and one `inbox worker` (projecting that topic into a scratch schema,
   dropped afterwards) for `--pipeline-seconds`: their rates and peak RSS.

Needs INBOX_DATABASE_URL; the broker of step 4 is embedded. `--json PATH` writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from domain.channels import Channel
from domain.room import Room
from domain.staff import Actor, Role
from inbox.adapters.auth import mint_token
from inbox.config import ConfigError, Settings
from inbox.adapters.postgres import configure_read_session, conninfo
from inbox.adapters.schema import migrate
from inbox.adapters.embedded import free_port
from inbox.adapters.eventstore import EventStore
from inbox.bootstrap import open_event_store, replay
from inbox.usecases.channel_accounts import AccountInfo, ChannelAccounts
from inbox.adapters.read_models.queries import (
    ListCursor,
    RoomFilter,
    counters_sql,
    encode_cursor,
    history_sql,
    rooms_page_sql,
)
from inbox.adapters.read_models.search import RoomSearch

ORG = "bench-org"
OTHER_ORG = "other-org"  # a tenth of the rooms: the org filter has something to filter
AGENTS = [f"agent{i:02d}" for i in range(40)]
SUPERVISOR = Actor("spv01", ORG, Role.SUPERVISOR, "Supervisor")
CHANNEL_SHARE = [
    (Channel.WHATSAPP_CLOUD, 0.50), (Channel.INSTAGRAM, 0.20), (Channel.FACEBOOK_MESSENGER, 0.15),
    (Channel.INSTAGRAM_COMMENT, 0.10), (Channel.FACEBOOK_COMMENT, 0.05),
]
FIRST = ["Budi", "Siti", "Agus", "Dewi", "Rina", "Andi", "Ayu", "Bayu", "Citra", "Dian", "Eka", "Fajar", "Gita",
         "Hadi", "Indah", "Joko", "Kartika", "Lestari", "Made", "Nur", "Oki", "Putri", "Rizky", "Sari", "Taufik",
         "Umar", "Vina", "Wahyu", "Yanti", "Zaki", "Bambang", "Sri", "Ahmad", "Nia", "Rudi", "Wulan", "Yusuf",
         "Mega", "Irfan", "Anisa", "José", "Renée", "Zoë", "Budí", "Ñoman", "Teguh", "Fitri", "Hendra", "Lina",
         "Dimas"]
LAST = ["Santoso", "Wijaya", "Saputra", "Hidayat", "Lestari", "Kurniawan", "Pratama", "Setiawan", "Nugroho",
        "Wibowo", "Susanto", "Halim", "Gunawan", "Siregar", "Nasution", "Harahap", "Simanjuntak", "Purba",
        "Sinaga", "Tanjung", "Putra", "Utami", "Rahayu", "Permata", "Kusuma", "Hartono", "Salim", "Sutanto",
        "Mulyadi", "Suryadi", "Rahman", "Hakim", "Firmansyah", "Maulana", "Ramadhan", "Syahputra", "Anggraini",
        "Safitri", "Handayani", "Wulandari"]
WORDS = ["halo", "kak", "pesanan", "saya", "belum", "sampai", "ongkir", "ke", "berapa", "ready", "warna", "ukuran",
         "terima", "kasih", "refund", "kapan", "diproses", "promo", "diskon", "alamat", "pengiriman", "resi", "cek",
         "mohon", "bantu", "order", "size", "stock", "available", "please", "thanks", "price", "shipping", "merah",
         "biru", "hitam", "jakarta", "surabaya", "bandung", "medan", "sudah", "transfer", "bayar", "invoice"]
RARE_WORDS = ["kedaluwarsa", "garansi", "tukar", "rusak", "komplain"]  # in ~0.2% of messages each
BASELINE = "baseline: /healthz (no query)"
DEEP = 10_000  # the deep list page starts this many rooms in
MOVED = 500  # rooms with new messages since the first page, for the "moved" deep page


@dataclass
class BuildStats:
    rooms: int = 0
    messages: int = 0
    events: int = 0
    seconds: float = 0.0
    transactions: int = 0


# ---- the data set ----------------------------------------------------------------------------
def message_counts(rooms: int, messages: int, rng: random.Random) -> list[int]:
    """Exactly `messages` over `rooms` (≥ 1 each), uneven, with two long conversations for history."""
    big = min(2000, max(1, messages // 500))
    counts = [big, big] if rooms >= 2 and messages >= 2 * big + rooms else []
    rest_rooms = rooms - len(counts)
    rest = messages - sum(counts)
    base, extra = divmod(rest, rest_rooms)
    tail = [base + (1 if i < extra else 0) for i in range(rest_rooms)]
    for i in range(0, rest_rooms - 1, 2):  # move messages between neighbours: the sum stays exact
        shift = rng.randint(-(tail[i] - 1), tail[i + 1] - 1) if tail[i] > 1 and tail[i + 1] > 1 else 0
        tail[i] += shift
        tail[i + 1] -= shift
    return counts + tail


def text(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(3, 12))
    if rng.random() < 0.1:
        words.insert(rng.randrange(len(words) + 1), f"INV-{rng.randrange(100000, 999999)}")
    if rng.random() < 0.01:
        words.append(rng.choice(RARE_WORDS))
    sentence = " ".join(words)
    return sentence[0].upper() + sentence[1:]


def pick_channel(rng: random.Random) -> Channel:
    x = rng.random()
    for channel, share in CHANNEL_SHARE:
        if x < share:
            return channel
        x -= share
    return Channel.WHATSAPP_CLOUD


def build_room(i: int, n_messages: int, account: AccountInfo, rng: random.Random, now: datetime) -> Room:
    """One conversation through the domain's own commands: the events a real inbox would record."""
    channel = account.channel
    first, last = rng.choice(FIRST), rng.choice(LAST)
    # Unique per room (a WhatsApp room's id derives from the phone; random draws would collide at
    # a million rooms): a multiplicative permutation of the room number scrambles the digits.
    phone = f"628{(i * 7_919_393_773 + 1_234_567_891) % 10**10:010d}"
    contact_id = phone if channel == Channel.WHATSAPP_CLOUD else f"{channel.value[:2]}-{i}"
    handle = f"@{first.lower()}.{last.lower()}{i % 100}" if channel in (
        Channel.INSTAGRAM, Channel.INSTAGRAM_COMMENT) else None
    room = Room.open(
        org_id=account.org_id, channel=channel, channel_account_id=account.id, channel_account=account.external_id,
        contact_id=contact_id, contact_name=f"{first} {last}", contact_phone=phone if rng.random() < 0.3 else None,
        contact_handle=handle, post_id=f"post-{i % 50}" if channel.is_comment else None,
    )
    fate = rng.random()  # 25% never answered, 60% assigned, 15% resolved (a fifth of those reopened)
    agent = Actor(rng.choice(AGENTS), account.org_id, Role.AGENT, "Agent")
    # The last message is within the 24 h window for ~45% of rooms, older (expired) for the rest.
    last_at = now - timedelta(seconds=rng.uniform(0, 86400) if rng.random() < 0.45 else rng.uniform(86400, 30 * 86400))
    at = last_at - timedelta(minutes=3 * n_messages)
    inbound = True
    for k in range(n_messages):
        at += timedelta(minutes=3)
        if inbound or fate < 0.25 or room.status == "resolved":
            room.receive(channel_message_id=f"m{i}.{k}", text=text(rng), sent_at=at)
        else:
            room.reply(agent, message_id=str(uuid.uuid4()), text=text(rng), sent_at=at)
        inbound = rng.random() < 0.55 if k < n_messages - 2 else not inbound
        if fate >= 0.85 and k == n_messages - 2 and room.status == "assigned" and fate < 0.97:
            room.resolve(SUPERVISOR)
    if fate >= 0.25 and room.status == "unassigned" and room.message_count > 0:
        room.assign(SUPERVISOR, agent_id=agent.user_id)
    if fate >= 0.97 and room.status == "assigned":
        room.resolve(SUPERVISOR)
    return room


CHUNK = 2000  # rooms per task of a builder process


@dataclass
class _Builder:
    """What each builder process needs: the same accounts, clock and seed as every other one."""

    settings: Settings
    by_org: dict[str, dict[Channel, AccountInfo]]
    now: datetime
    seed: int
    events_per_tx: int


_builder: tuple[_Builder, Any] | None = None  # this builder process's spec and event store


def _start_builder(spec: _Builder) -> None:
    global _builder
    _builder = (spec, open_event_store(spec.settings))


def _build_chunk(start: int, counts: list[int]) -> BuildStats:
    """Rooms start .. start+len(counts)-1: each decided by its Room aggregate and saved through the
    store's recorder (`app.save`, a few thousand events per transaction; the recorder's table lock
    keeps notification ids in commit order across builder processes). Seeded by `start`, so the
    data set does not depend on how many processes built it."""
    assert _builder is not None
    spec, app = _builder
    rng = random.Random(f"{spec.seed}:{start}")
    stats = BuildStats()
    batch: list[Room] = []
    pending_events = 0
    for i, n in enumerate(counts, start):
        org = OTHER_ORG if i % 10 == 9 else ORG
        channel = Channel.WHATSAPP_CLOUD if i < 2 else pick_channel(rng)
        room = build_room(i, n, spec.by_org[org][channel], rng, spec.now)
        batch.append(room)
        pending_events += len(room.pending_events)
        stats.messages += n
        stats.rooms += 1
        if pending_events >= spec.events_per_tx:
            app.save(*batch)
            stats.events += pending_events
            stats.transactions += 1
            batch, pending_events = [], 0
    if batch:
        app.save(*batch)
        stats.events += pending_events
        stats.transactions += 1
    return stats


def build(settings: Settings, rooms: int, messages: int, *, seed: int = 7, events_per_tx: int = 4000,
          processes: int = 1) -> BuildStats:
    """The data set through Room aggregates and the event store, by `processes` builder processes
    (each its own event store connection) on disjoint chunks of CHUNK rooms."""
    started = time.perf_counter()
    app = open_event_store(settings)
    try:
        accounts = ChannelAccounts(EventStore(app))
        by_org: dict[str, dict[Channel, AccountInfo]] = {}
        for org in (ORG, OTHER_ORG):
            admin = Actor("admin", org, Role.ADMIN)
            by_org[org] = {
                c: accounts.register(admin, channel=c.value, external_id=f"{org}-{c.value}", name=c.value)
                for c, _ in CHANNEL_SHARE
            }
    finally:
        app.close()
    counts = message_counts(rooms, messages, random.Random(seed))
    spec = _Builder(settings, by_org, datetime.now(UTC), seed, events_per_tx)
    stats = BuildStats()
    chunks = [(start, counts[start:start + CHUNK]) for start in range(0, rooms, CHUNK)]
    reported = 0
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_builder, initargs=(spec,)) as pool:
        for done in as_completed([pool.submit(_build_chunk, start, part) for start, part in chunks]):
            part = done.result()
            stats.rooms += part.rooms
            stats.messages += part.messages
            stats.events += part.events
            stats.transactions += part.transactions
            if stats.rooms - reported >= max(5000, rooms // 50) or stats.rooms == rooms:
                reported = stats.rooms
                elapsed = time.perf_counter() - started
                print(f"  wrote {stats.rooms:,} rooms, {stats.messages:,} messages, {stats.events:,} events"
                      f" ({stats.events / elapsed:,.0f} events/s)", flush=True)
    stats.seconds = time.perf_counter() - started
    return stats


def table_counts(settings: Settings) -> tuple[int, int]:
    with psycopg.connect(conninfo(settings)) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM rooms), (SELECT count(*) FROM messages)").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def reset_schema(settings: Settings) -> None:
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.db_schema)))
    migrate(settings)


def vacuum(settings: Settings) -> None:
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        for table in ("rooms", "messages", "counters"):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))


# ---- the measurements ------------------------------------------------------------------------
@dataclass
class Probe:
    name: str
    path: str
    params: Callable[[int], dict[str, Any]]  # sample number → query parameters
    viewer: str = "admin"
    explain: tuple[str, list[Any]] | None = None
    search_filter: RoomFilter = field(default_factory=RoomFilter)  # conversation searches' tab/status


@dataclass
class Figures:
    name: str
    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    items: int
    plan: list[str] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(p / 100 * len(ordered))) - 1)]


@dataclass
class Samples:
    """Real values from the data set to query for (so searches and cursors hit real rows)."""

    names: list[str]
    typos: list[str]
    phones: list[str]
    handles: list[str]
    codes: list[str]
    big_room: str
    big_room_older: int
    deep_cursor: str
    moved_cursor: str
    agent: str


def collect_samples(settings: Settings, rng: random.Random) -> Samples:
    with psycopg.connect(conninfo(settings)) as conn:
        def col(q: str, *params: Any) -> list[Any]:
            return [r[0] for r in conn.execute(q, params).fetchall()]

        names = col("SELECT contact_name FROM rooms WHERE org_id = %s ORDER BY random() LIMIT 50", ORG)
        phones = col("SELECT phone_digits FROM rooms WHERE org_id = %s AND phone_digits IS NOT NULL"
                     " ORDER BY random() LIMIT 50", ORG)
        handles = col("SELECT contact_handle FROM rooms WHERE org_id = %s AND contact_handle IS NOT NULL"
                      " ORDER BY random() LIMIT 50", ORG)
        codes = col("SELECT upper(substring(text from '(?i)inv-[0-9]{6}')) FROM messages"
                    " WHERE org_id = %s AND text ILIKE %s LIMIT 50", ORG, "%inv-%")
        [big_room, big_seq] = conn.execute(
            "SELECT room_id::text, max(seq) FROM messages WHERE org_id = %s GROUP BY room_id"
            " ORDER BY count(*) DESC LIMIT 1", (ORG,)).fetchone() or ("", 0)
        newest = conn.execute("SELECT max(updated_at) FROM rooms WHERE org_id = %s", (ORG,)).fetchone()
        [(org_rooms,)] = conn.execute("SELECT count(*) FROM rooms WHERE org_id = %s", (ORG,)).fetchall()
        depth = min(DEEP, org_rooms // 2)
        deep = conn.execute("SELECT updated_at, id::text FROM rooms WHERE org_id = %s"
                            " ORDER BY updated_at DESC, id DESC OFFSET %s LIMIT 1", (ORG, depth)).fetchone()
        moved = conn.execute("SELECT updated_at FROM rooms WHERE org_id = %s"
                             " ORDER BY updated_at DESC OFFSET %s LIMIT 1", (ORG, min(MOVED, depth // 2))).fetchone()
        agent = conn.execute("SELECT assignee FROM rooms WHERE org_id = %s AND assignee IS NOT NULL LIMIT 1",
                             (ORG,)).fetchone()
    assert newest and deep and moved and agent and codes, "the data set is too small to sample from"

    def typo(name: str) -> str:
        word = max(name.split(), key=len)
        k = rng.randrange(1, len(word) - 1)
        return word[:k] + word[k + 1:]  # one letter dropped

    return Samples(
        names=[n.split()[0] for n in names], typos=[typo(n) for n in names],
        phones=[f"0{p[:3]}-{p[3:7]}" for p in phones],  # local format, partial: 0812-3456
        handles=[h[: max(4, len(h) - 3)] for h in handles], codes=codes, big_room=big_room,
        big_room_older=int(big_seq) // 2,  # "load older dialogs" halfway back
        # Page 201 of 50 (DEEP rooms in), nothing changed since the first page.
        deep_cursor=ListCursor(newest[0], deep[0], deep[1]).encode(),
        # The same depth when MOVED rooms got new messages since the first page (their positions as of
        # the first page are looked up in the messages index).
        moved_cursor=ListCursor(moved[0], deep[0], deep[1]).encode(),
        agent=str(agent[0]),
    )


def probes(s: Samples) -> list[Probe]:
    admin = Actor("admin", ORG, Role.ADMIN)
    agent = Actor(s.agent, ORG, Role.AGENT)
    older_cursor = encode_cursor({"s": s.big_room_older})
    every = RoomFilter()
    msgs = RoomFilter(tab="messages")

    def pick(values: list[str]) -> Callable[[int], str]:
        return lambda i: values[i % len(values)]

    name, typo, phone, handle, code = (pick(v) for v in (s.names, s.typos, s.phones, s.handles, s.codes))
    deep = ListCursor.decode(s.deep_cursor)
    moved = ListCursor.decode(s.moved_cursor)
    return [
        Probe(BASELINE, "/healthz", lambda i: {}),
        Probe("counters (admin)", "/v1/inbox/counters", lambda i: {}, explain=counters_sql(admin)),
        Probe("counters (agent)", "/v1/inbox/counters", lambda i: {}, "agent", counters_sql(agent)),
        Probe("list: first page, messages tab", "/v1/rooms", lambda i: {"tab": "messages", "limit": 50},
              explain=rooms_page_sql(admin, msgs, limit=51, cursor=None)),
        Probe("list: first page, all tabs (agent)", "/v1/rooms", lambda i: {"limit": 50}, "agent",
              rooms_page_sql(agent, every, limit=51, cursor=None)),
        Probe("list: unassigned+whatsapp+expired", "/v1/rooms",
              lambda i: {"tab": "messages", "status": "unassigned", "channel": "whatsapp_cloud", "expired": "true",
                         "limit": 50},
              explain=rooms_page_sql(admin, RoomFilter(tab="messages", status="unassigned",
                                                       channels=["whatsapp_cloud"], expired=True), limit=51,
                                     cursor=None)),
        Probe("list: deep page (10,000 rooms in)", "/v1/rooms", lambda i: {"limit": 50, "cursor": s.deep_cursor},
              explain=rooms_page_sql(admin, every, limit=51, cursor=deep)),
        Probe("list: deep page, 500 rooms moved", "/v1/rooms", lambda i: {"limit": 50, "cursor": s.moved_cursor},
              explain=rooms_page_sql(admin, every, limit=51, cursor=moved)),
        Probe("search contact: first name", "/v1/search", lambda i: {"q": name(i)},
              explain=("contact", [s.names[0], admin])),
        Probe("search contact: typo", "/v1/search", lambda i: {"q": typo(i)},
              explain=("contact", [s.typos[0], admin])),
        Probe("search contact: phone 0812-3456", "/v1/search", lambda i: {"q": phone(i)},
              explain=("contact", [s.phones[0], admin])),
        Probe("search contact: handle", "/v1/search", lambda i: {"q": handle(i)},
              explain=("contact", [s.handles[0], admin])),
        Probe("search contact (agent)", "/v1/search", lambda i: {"q": name(i)}, "agent",
              ("contact", [s.names[0], agent])),
        Probe("search conversation: INV code", "/v1/search", lambda i: {"q": code(i), "by": "conversation"},
              explain=("tsquery", [s.codes[0]])),
        Probe("search conversation: rare word", "/v1/search", lambda i: {"q": RARE_WORDS[i % 5], "by": "conversation"},
              explain=("tsquery", [RARE_WORDS[0]])),
        Probe("search conversation: common word", "/v1/search", lambda i: {"q": "surabaya", "by": "conversation"},
              explain=("tsquery", ["surabaya"])),
        Probe("search conversation: common word, comments+resolved", "/v1/search",  # ~2% of the rooms
              lambda i: {"q": "surabaya", "by": "conversation", "tab": "comments", "status": "resolved"},
              explain=("tsquery", ["surabaya"]), search_filter=RoomFilter(tab="comments", status="resolved")),
        Probe("search conversation: common word, resolved", "/v1/search",  # ~15% of the rooms
              lambda i: {"q": "surabaya", "by": "conversation", "status": "resolved"},
              explain=("tsquery", ["surabaya"]), search_filter=RoomFilter(status="resolved")),
        Probe("search conversation: 2 words, comments+assigned", "/v1/search",  # ~2% of messages, 10% of rooms
              lambda i: {"q": "surabaya invoice", "by": "conversation", "tab": "comments", "status": "assigned"},
              explain=("tsquery", ["surabaya invoice"]), search_filter=RoomFilter(tab="comments", status="assigned")),
        Probe("search conversation: rare word, resolved", "/v1/search",
              lambda i: {"q": RARE_WORDS[i % 5], "by": "conversation", "status": "resolved"},
              explain=("tsquery", [RARE_WORDS[0]]), search_filter=RoomFilter(status="resolved")),
        Probe("history: first page", f"/v1/rooms/{s.big_room}/messages", lambda i: {"limit": 50},
              explain=history_sql(s.big_room, None, 51)),
        Probe("history: older page", f"/v1/rooms/{s.big_room}/messages", lambda i: {"limit": 50, "before": older_cursor},
              explain=history_sql(s.big_room, s.big_room_older, 51)),
    ]


@dataclass
class ApiProcess:
    base_url: str
    proc: subprocess.Popen[bytes]


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB: its resident memory now and its peak since it started."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def start_api(settings: Settings, workdir: Path) -> ApiProcess:
    port = free_port()
    env = dict(os.environ)
    env.update({
        "INBOX_DATABASE_URL": settings.database_url or "", "INBOX_DB_SCHEMA": settings.db_schema,
        "INBOX_KAFKA_BOOTSTRAP": "127.0.0.1:9",  # required setting; the API never talks to the broker
        "INBOX_JWT_SECRET": settings.jwt_secret or "", "INBOX_META_APP_SECRET": settings.meta_app_secret or "",
        "INBOX_META_VERIFY_TOKEN": settings.meta_verify_token or "", "INBOX_HTTP_HOST": "127.0.0.1",
        "INBOX_HTTP_PORT": str(port), "INBOX_DATA_DIR": str(workdir), "INBOX_LOG_LEVEL": "WARNING",
    })
    log = open(workdir / "api.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "inbox.entrypoints.cli", "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return ApiProcess(base, proc)
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the API did not start; see {workdir / 'api.log'}")


class TracedSearch(RoomSearch):
    """The API's search (RoomSearch) on one connection, noting each query it runs, in order: the
    plans printed are those of the queries the API itself runs for the probe, whatever branch its
    strategy takes (no copy of that strategy here to drift from it)."""

    def __init__(self, conn: psycopg.Connection) -> None:  # not ReadModelReader's pool: one session
        self._conn = conn
        self.ran: list[tuple[str, list[Any]]] = []

    def _fetch(self, sql: str, params: Any) -> list[dict[str, Any]]:
        self.ran.append((sql, list(params)))
        with self._conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()


def explain(settings: Settings, probe: Probe) -> list[str]:
    if probe.explain is None:
        return []
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        configure_read_session(conn, settings.db_schema)  # as the API's read pool
        query, params = probe.explain
        queries = [("", query, params)]
        if query in ("contact", "tsquery"):  # a search: the queries RoomSearch runs for the probe's first page
            search = TracedSearch(conn)
            if query == "contact":
                q, actor = params
                search.by_contact(actor, RoomFilter(), q, limit=20, cursor=None)
            else:
                search.by_conversation(Actor("admin", ORG, Role.ADMIN), probe.search_filter, params[0], limit=20,
                                       cursor=None)
            queries = [(f"query {i} of {len(search.ran)} the API runs", *ran) for i, ran in enumerate(search.ran, 1)]
        return explain_lines(conn, queries)


def explain_lines(conn: psycopg.Connection, queries: list[tuple[str, str, list[Any]]]) -> list[str]:
    lines: list[str] = []
    for title, q, p in queries:
        if title:
            lines.append(f"[{title}]")
        lines += [r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + q, p).fetchall()]
    return lines


def measure(settings: Settings, api: ApiProcess, samples: Samples, n: int) -> Iterator[Figures]:
    secret = settings.jwt_secret or ""
    headers = {
        "admin": {"Authorization": f"Bearer {mint_token(secret, org=ORG, user='admin', role='admin')}"},
        "agent": {"Authorization": f"Bearer {mint_token(secret, org=ORG, user=samples.agent, role='agent')}"},
    }
    with httpx.Client(base_url=api.base_url, timeout=60) as client:
        for probe in probes(samples):
            times: list[float] = []
            items = 0
            for i in range(-5, n):  # 5 warm-up requests
                started = time.perf_counter()
                r = client.get(probe.path, params=probe.params(i), headers=headers[probe.viewer])
                elapsed = time.perf_counter() - started
                if r.status_code != 200:
                    raise RuntimeError(f"{probe.name}: HTTP {r.status_code} {r.text[:300]}")
                if i >= 0:
                    times.append(elapsed)
                    body = r.json()
                    items += len(body["items"]) if "items" in body else 1
            yield Figures(probe.name, n, percentile(times, 50) * 1000, percentile(times, 99) * 1000,
                          sum(times) / len(times) * 1000, items // n, explain(settings, probe))


# ---- the pipeline's processes on this store: relay and worker --------------------------------
@dataclass
class PipelineSlice:
    """`inbox relay` publishing the store from its start, and one `inbox worker` projecting what it
    publishes into a fresh schema, for `seconds`: their rates and peak resident memory (VmHWM)."""

    seconds: float
    relayed: int
    projected: int
    relay_peak_kb: int
    worker_peak_kb: int
    relay_cpu_s: float
    worker_cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "relayed_events": self.relayed, "projected_events": self.projected,
                "relay_events_per_s": self.relayed / self.seconds, "worker_events_per_s": self.projected / self.seconds,
                "relay_peak_rss_mb": self.relay_peak_kb / 1024, "worker_peak_rss_mb": self.worker_peak_kb / 1024,
                "relay_cpu_s": self.relay_cpu_s, "worker_cpu_s": self.worker_cpu_s}


def family_peak_kb(pid: int) -> int:
    """Peak resident memory (VmHWM) of a process plus its children's (an upper bound of their peak together)."""
    import psutil

    family = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    total = 0
    for p in family:
        with contextlib.suppress(OSError, KeyError):
            total += memory_kb(p)[1]
    return total


def family_cpu_s(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in family:
        with contextlib.suppress(psutil.Error):
            c = p.cpu_times()
            total += c.user + c.system
    return total


def pipeline_slice(settings: Settings, seconds: float, workdir: Path) -> PipelineSlice:
    """A real relay and worker over the whole store, as after a broker loss (the relay re-publishes
    from the start; the worker catches up). The worker projects into schema <schema>_pipe, dropped
    afterwards, so the data set's projections stay as measured; the relay's position row for its
    run's topic is removed from the data set's schema afterwards."""
    from inbox.adapters.embedded import EmbeddedBroker
    from inbox.entrypoints.processes import STOP_GRACE_S, Processes

    tag = uuid.uuid4().hex[:8]
    pipe_schema = f"{settings.db_schema}_pipe"
    broker = EmbeddedBroker(log_path=workdir / "tansu.log").start()
    relay_settings = replace(settings, kafka_bootstrap=broker.bootstrap, topic_prefix=f"dataset-{tag}.",
                             worker_group=f"dataset-{tag}", data_dir=workdir / "data", http_port=free_port())
    relay_settings.data_dir.mkdir(exist_ok=True)
    worker_settings = replace(relay_settings, db_schema=pipe_schema)
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(pipe_schema)))
    migrate(worker_settings)
    env = {**os.environ, **relay_settings.to_env(), "INBOX_LOG_LEVEL": "WARNING"}
    procs = Processes(env, log_dir=workdir)
    peaks = {"relay": 0, "worker": 0}
    with psycopg.connect(conninfo(settings), autocommit=True) as conn:
        beats = [r[0] for r in conn.execute("SELECT worker_id FROM worker_heartbeats").fetchall()]
    try:
        procs.start("relay")
        procs.start("worker", env=worker_settings.to_env())
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            dead = procs.first_dead()
            if dead is not None:
                raise RuntimeError(f"`inbox {dead.name}` exited:\n{procs.log_tail(dead.name)}")
            for name in peaks:
                pid = procs.pid(name)
                if pid:
                    peaks[name] = max(peaks[name], family_peak_kb(pid))
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu = {name: family_cpu_s(procs.pid(name) or 0) for name in peaks}
        with psycopg.connect(conninfo(settings), autocommit=True) as conn:
            [(relayed,)] = conn.execute("SELECT coalesce(max(notification_id), 0) FROM relay_position WHERE name = %s",
                                        (relay_settings.events_topic,)).fetchall()
        with psycopg.connect(conninfo(worker_settings), autocommit=True) as conn:
            [(projected,)] = conn.execute("SELECT coalesce(sum(version), 0) FROM rooms").fetchall()
    finally:
        procs.stop_all(STOP_GRACE_S)
        broker.stop()
        with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(pipe_schema)))
        with psycopg.connect(conninfo(settings), autocommit=True) as conn:
            conn.execute("DELETE FROM relay_position WHERE name = %s", (relay_settings.events_topic,))
            conn.execute("DELETE FROM worker_heartbeats WHERE worker_id <> ALL(%s)", (beats,))
    return PipelineSlice(elapsed, int(relayed), int(projected), peaks["relay"], peaks["worker"],
                         cpu["relay"], cpu["worker"])


# The targets (p99 over HTTP, ms) by the probe name's start; replay of the whole store: 240 s.
TARGETS_MS = {"counters": 5.0, "list: first page": 20.0, "search contact": 30.0, "search conversation": 50.0,
              "history": 10.0}
REPLAY_TARGET_S = 240.0


def target_ms(name: str) -> float | None:
    return next((ms for prefix, ms in TARGETS_MS.items() if name.startswith(prefix)), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--schema", default="bench_dataset")
    parser.add_argument("--reuse", action="store_true", help="keep an existing data set of at least this size")
    parser.add_argument("--replay", action="store_true", help="with --reuse: replay the store again (and time it)")
    parser.add_argument("--samples", type=int, default=200, help="requests per measured query")
    parser.add_argument("--processes", type=int, default=2, help="builder processes (disjoint rooms)")
    parser.add_argument("--events-per-tx", type=int, default=4000, help="events per write transaction")
    parser.add_argument("--pipeline-seconds", type=float, default=120.0,
                        help="run a real relay and worker over the store this long (peak RSS, rates); 0: skip")
    parser.add_argument("--no-plans", action="store_true", help="do not print the EXPLAIN plans")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this path")
    args = parser.parse_args(argv)

    base = Settings.from_env().with_dev_defaults()
    if not base.database_url:
        raise ConfigError("set INBOX_DATABASE_URL (the benchmark keeps its data in schema --schema)")
    settings = replace(base, db_schema=args.schema, db_pool_size=4)
    migrate(settings)
    out: dict[str, Any] = {"schema": args.schema, "cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}
    have_rooms, have_messages = table_counts(settings)
    reuse = args.reuse and have_rooms >= args.rooms and have_messages >= args.messages
    if reuse:
        print(f"reusing schema {args.schema}: {have_rooms:,} rooms, {have_messages:,} messages", flush=True)
    else:
        print(f"building {args.rooms:,} rooms / {args.messages:,} messages in schema {args.schema}"
              f" ({args.processes} builder processes)", flush=True)
        reset_schema(settings)
        stats = build(settings, args.rooms, args.messages, processes=args.processes,
                      events_per_tx=args.events_per_tx)
        print(f"write path: {stats.events:,} events ({stats.rooms:,} rooms, {stats.messages:,} messages) in"
              f" {stats.seconds:.0f}s = {stats.events / stats.seconds:,.0f} events/s,"
              f" {stats.transactions:,} transactions", flush=True)
        out["build"] = {"events": stats.events, "rooms": stats.rooms, "messages": stats.messages,
                        "seconds": stats.seconds, "events_per_s": stats.events / stats.seconds,
                        "transactions": stats.transactions, "processes": args.processes}
    if not reuse or args.replay:
        def progress(position: int, total: int, rate: float) -> None:
            if position == total or position % 500_000 < 20_000:
                print(f"  replay {position:,}/{total:,} ({rate:,.0f} events/s)", flush=True)

        load = os.getloadavg()
        replayed = asyncio.run(replay(settings, progress=progress))
        peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest fold process
        verdict = "meets" if replayed.seconds < REPLAY_TARGET_S else "misses"
        print(f"replay: {replayed.events:,} events, {replayed.rooms:,} rooms in {replayed.seconds:.0f}s"
              f" = {replayed.events_per_s:,.0f} events/s ({verdict} the {REPLAY_TARGET_S:.0f} s target);"
              f" peak RSS: this process {peak_self / 1024:,.0f} MB, largest fold process"
              f" {peak_children / 1024:,.0f} MB; load average before {load[0]:.1f}", flush=True)
        out["replay"] = {"events": replayed.events, "rooms": replayed.rooms, "seconds": replayed.seconds,
                         "events_per_s": replayed.events_per_s, "target_s": REPLAY_TARGET_S,
                         "peak_rss_mb": peak_self / 1024, "fold_process_peak_rss_mb": peak_children / 1024,
                         "load_avg_before": load}
        vacuum(settings)
    rooms, messages = table_counts(settings)
    out["data_set"] = {"rooms": rooms, "messages": messages}
    print(f"data set: {rooms:,} rooms, {messages:,} messages (org {ORG}: 90%)", flush=True)

    samples = collect_samples(settings, random.Random(11))
    with tempfile.TemporaryDirectory(prefix="inbox-bench-dataset-") as tmp:
        api = start_api(settings, Path(tmp))
        try:
            started_kb = memory_kb(api.proc.pid)[0]
            figures = list(measure(settings, api, samples, args.samples))
            api_now_kb, api_peak_kb = memory_kb(api.proc.pid)
        finally:
            api.proc.terminate()
            api.proc.wait(10)
        pipe = pipeline_slice(settings, args.pipeline_seconds, Path(tmp)) if args.pipeline_seconds > 0 else None
    baseline = next(f for f in figures if f.name == BASELINE)
    print(f"\nHTTP latency through `inbox api`, {args.samples} sequential requests each (after 5 warm-up);"
          f" x base = p50 / p50 of {BASELINE} (the same HTTP stack, no query):")
    print(f"  {'query':<52} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'items':>6} {'x base':>7} {'target':>10}")
    out["latency"] = []
    for f in figures:
        goal = target_ms(f.name)
        verdict = "" if goal is None else f"{'ok' if f.p99_ms < goal else 'MISS'} <{goal:.0f}"
        print(f"  {f.name:<52} {f.p50_ms:8.2f} {f.p99_ms:8.2f} {f.mean_ms:8.2f} {f.items:6d}"
              f" {f.p50_ms / baseline.p50_ms:7.1f} {verdict:>10}")
        out["latency"].append({"name": f.name, "n": f.n, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms,
                               "mean_ms": f.mean_ms, "items": f.items, "p50_over_baseline": f.p50_ms / baseline.p50_ms,
                               "target_p99_ms": goal, "meets_target": None if goal is None else f.p99_ms < goal})
    print(f"API process RSS: {started_kb / 1024:,.0f} MB after start, {api_now_kb / 1024:,.0f} MB at the end,"
          f" peak {api_peak_kb / 1024:,.0f} MB")
    out["api_rss_mb"] = {"after_start": started_kb / 1024, "end": api_now_kb / 1024, "peak": api_peak_kb / 1024}
    if pipe is not None:
        d = pipe.as_dict()
        print(f"relay + worker over the store for {pipe.seconds:.0f}s: relay published {pipe.relayed:,} events"
              f" ({d['relay_events_per_s']:,.0f}/s, {pipe.relay_cpu_s:.0f} CPU s), worker projected {pipe.projected:,}"
              f" ({d['worker_events_per_s']:,.0f}/s, {pipe.worker_cpu_s:.0f} CPU s); peak RSS: relay"
              f" {d['relay_peak_rss_mb']:,.0f} MB, worker {d['worker_peak_rss_mb']:,.0f} MB")
        out["pipeline"] = d
    out["load_avg_at_end"] = os.getloadavg()
    if not args.no_plans:
        for f in figures:
            if f.plan:
                print(f"\n--- EXPLAIN (ANALYZE, BUFFERS): {f.name}")
                print("\n".join(f.plan))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
