"""Live updates for one API process: one LISTEN connection, one reader, fan-out to every open stream.

`ChangeHub` keeps a single connection LISTENing on the schema's doorbell (`inbox_changes:<schema>`,
application_name `inbox-stream:<schema>`) and a reader task that, on each ring (and every
`poll_s` anyway), reads the change log after the last position it published, as pages of
`read_changes` (one snapshot each), and puts every page on every subscriber's bounded queue
(with no stream open it reads only where the log ends: an API without streams renders nothing).
When the listening connection drops, it reconnects with backoff and rings itself: the reader
catches up from the log by position, so nothing is missed — the doorbell is only a hint.

`Feed` is one viewer's stream: it resumes from a Last-Event-ID (or starts at the log's end),
catches up from the log on its own connection (its first page and counters in the same read
that finds where it starts), then follows the hub's pages, and turns each page
into the events this viewer may see (domain.visibility). A subscriber whose queue is full gets
`overflowed` and its feed ends with `reset`: memory per stream stays bounded.

Fan-out cost: a page's room and message events are rendered and framed (SSE bytes) once per
class of viewers that see the same rooms of that page (`_view`: every admin of an organization,
every agent the page does not name; a named agent is decided again only on its own rooms), and
the counters once per distinct value (`counters_by_key`); each stream then adds its counters
frame and writes everything waiting for it in one send per wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from domain.staff import Actor
from domain.visibility import Sight, sight
from inbox.adapters.postgres import conninfo
from inbox.adapters.read_models.changes import Change, ChangePage, channel, counter_key, read_changes
from inbox.config import Settings

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
STOP_TIMEOUT_S = 5.0  # how long shutdown waits for the listener, the reader and the pool


def listener_name(schema: str) -> str:
    """application_name of a hub's LISTEN connection (operators and tests find it by this)."""
    return f"inbox-stream:{schema}"[:63]


@dataclass(frozen=True)
class LiveEvent:
    name: str  # counters | room | room_hidden | message | reset
    json: bytes  # the data, as the matching GET route renders it (orjson, UTC as "Z" like pydantic)
    position: int | None  # the SSE id (None: no id line)


def _json(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_UTC_Z)


_HEARTBEAT: Any = object()  # on a stream's queue: nothing written for heartbeat_s, send `: hb`


class Subscription:
    def __init__(self, actor: Actor, buffer: int) -> None:
        self.actor = actor
        self.queue: asyncio.Queue[ChangePage | None] = asyncio.Queue(buffer)  # or _HEARTBEAT
        self.overflowed = asyncio.Event()  # the client fell behind by `buffer` pages
        self.ended = asyncio.Event()  # overflowed or the process is shutting down: stop soon


class ChangeHub:
    """The change log's reader and fan-out of one API process.

    The LISTEN connection and the reader run on an event loop of their own, in a thread
    (`stream-reader`): under load the API's loop is busy answering POSTs, and a page read of
    several round trips would wait a turn of that loop for each of them. Only the hand-over of a
    page (`_publish`) runs on the API's loop, one page at a time: while it waits for its turn, the
    changes that commit meanwhile go into the next page.
    """

    def __init__(self, settings: Settings, *, page_size: int = 1000, poll_s: float = 5.0) -> None:
        self.settings = settings
        self.page_size = page_size
        self.poll_s = poll_s
        self.position = 0  # everything up to here was published
        self.listening = False
        self._subs: set[Subscription] = set()
        self._streams_of: dict[Actor, int] = {}  # open streams per viewer
        self._actors: tuple[Actor, ...] = ()  # the viewers of the open streams, each once (read by the reader)
        self._pool: AsyncConnectionPool | None = None  # the streams' own reads (start, catch-up), API loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        # The reader's side (its thread's loop):
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._reader_stop: asyncio.Event | None = None
        self._doorbell: asyncio.Event | None = None
        self._reader_pool: AsyncConnectionPool | None = None
        self._read_position = 0

    # ---- lifecycle ------------------------------------------------------------------------------
    def _new_pool(self, name: str, max_size: int) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            conninfo(self.settings), min_size=1, max_size=max_size, open=False,
            kwargs={"autocommit": True, "application_name": name}, timeout=5.0,
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool = self._new_pool("inbox-stream-reader", 4)
        await self._pool.open(wait=False)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_reader, args=(ready,), name="stream-reader", daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait, STOP_TIMEOUT_S)

    def end_streams(self) -> None:
        """Tell every open stream to finish (shutdown): they return at once, not at the next event."""
        self._closing = True
        for sub in list(self._subs):
            self._end(sub)

    def end_streams_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.end_streams)

    async def stop(self) -> None:
        """End the streams and the hub's reader; bounded, so a shutdown never hangs on them."""
        self.end_streams()
        self._stopping = True
        loop, stop = self._reader_loop, self._reader_stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2 * STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("stream hub: the reader did not stop within %ss; leaving it", 2 * STOP_TIMEOUT_S)
        if self._pool is not None:
            await self._pool.close(timeout=STOP_TIMEOUT_S)

    # ---- subscribers (API loop) -----------------------------------------------------------------
    def subscribe(self, actor: Actor) -> Subscription:
        sub = Subscription(actor, self.settings.stream_buffer)
        self._subs.add(sub)
        count = self._streams_of.get(actor, 0)
        self._streams_of[actor] = count + 1
        if not count:  # a new viewer: the reader reads its counters too (a new tuple: it reads it from its thread)
            self._actors = tuple(self._streams_of)
        if self._closing:
            self._end(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub not in self._subs:
            return
        self._subs.discard(sub)
        count = self._streams_of.pop(sub.actor) - 1
        if count:
            self._streams_of[sub.actor] = count
        else:
            self._actors = tuple(self._streams_of)

    @property
    def streams(self) -> int:
        return len(self._subs)

    @staticmethod
    def _end(sub: Subscription) -> None:
        sub.ended.set()
        if sub.queue.full():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def _publish(self, page: ChangePage) -> None:
        for sub in list(self._subs):
            if sub.ended.is_set():
                continue
            try:
                sub.queue.put_nowait(page)
            except asyncio.QueueFull:
                log.warning("stream of %s fell %s pages behind; sending reset", sub.actor.user_id, sub.queue.maxsize)
                sub.overflowed.set()
                self._end(sub)
        self.position = max(self.position, page.upto)

    async def read(self, after: int | None, *, actors: list[Actor], all_counters: bool,
                   limit: int | None = None) -> ChangePage:
        """A page of the log for a stream (API loop); `after=None`: none, at the log's end."""
        assert self._pool is not None
        return await self._read(self._pool, after, actors=actors, all_counters=all_counters, limit=limit)

    async def _read(self, pool: AsyncConnectionPool, after: int | None, *, actors: list[Actor], all_counters: bool,
                    limit: int | None = None) -> ChangePage:
        async with pool.connection() as conn:
            return await read_changes(
                conn, after, limit=self.page_size if limit is None else limit, viewers=actors,
                all_counters=all_counters,
            )

    # ---- the reader (its own thread and loop) ---------------------------------------------------
    def _run_reader(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._reader_main(loop, ready))
        except BaseException as e:  # noqa: BLE001 - the thread must end quietly, the API goes on
            if not isinstance(e, asyncio.CancelledError):
                log.exception("stream reader thread failed")
        finally:
            ready.set()
            loop.close()

    async def _reader_main(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        self._reader_stop = asyncio.Event()
        self._doorbell = asyncio.Event()
        self._doorbell.set()  # the reader starts by finding the log's end
        self._reader_pool = self._new_pool("inbox-stream-reader", 1)
        await self._reader_pool.open(wait=False)
        self._reader_loop = loop
        tasks = [asyncio.create_task(self._listen(), name="stream-listen"),
                 asyncio.create_task(self._read_loop(), name="stream-read")]
        ready.set()
        if self._stopping:
            self._reader_stop.set()
        await self._reader_stop.wait()
        # Cancel until they are done: Python 3.11's asyncio.wait_for can swallow a cancellation that
        # races with its inner wait completing (the reader waits on the doorbell that way).
        pending = set(tasks)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        if pending:
            log.warning("stream hub: %s task(s) did not stop within %ss; leaving them", len(pending),
                        STOP_TIMEOUT_S)
        await self._reader_pool.close(timeout=STOP_TIMEOUT_S)

    async def _listen(self) -> None:
        assert self._doorbell is not None
        attempt = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    conninfo(self.settings), autocommit=True, application_name=listener_name(self.settings.db_schema),
                )
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel(self.settings.db_schema))))
                    self.listening = True
                    attempt = 0
                    self._doorbell.set()  # catch up on whatever committed while we were not listening
                    async for _ in conn.notifies():
                        self._doorbell.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                backoff = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("stream listener lost its connection (%s: %s); reconnecting in %ss",
                            type(e).__name__, e, backoff)
            finally:
                self.listening = False
            await asyncio.sleep(RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)] if attempt else 0.1)

    async def _hand_over(self, page: ChangePage) -> None:
        """Publish `page` on the API loop and wait until it is done (one page in flight)."""
        assert self._loop is not None and self._reader_loop is not None
        done = asyncio.Event()
        reader_loop = self._reader_loop

        def publish() -> None:
            try:
                self._publish(page)
            finally:
                with contextlib.suppress(RuntimeError):  # the reader's loop ended meanwhile
                    reader_loop.call_soon_threadsafe(done.set)

        self._loop.call_soon_threadsafe(publish)
        await done.wait()

    async def _read_loop(self) -> None:
        assert self._doorbell is not None and self._reader_pool is not None
        first = True
        while not self._stopping:
            try:
                await asyncio.wait_for(self._doorbell.wait(), self.poll_s)
            except TimeoutError:
                pass
            self._doorbell.clear()
            try:
                while True:
                    actors = self._actors
                    # At the start (streams catch up on their own from their Last-Event-ID) and with no
                    # stream open (nobody to render for): only keep up with the log's end.
                    if first or not actors:
                        head = (await self._read(self._reader_pool, 0, actors=[], all_counters=False, limit=0)).head
                        self._read_position = self.position = max(self._read_position, head)
                        first = False
                        break
                    page = await self._read(self._reader_pool, self._read_position, actors=list(actors),
                                            all_counters=False)
                    if page.expired:  # we fell behind the pruning: streams that get `reset` need every
                        # viewer's counters at the log's end, not only those of organizations that changed
                        page = await self._read(self._reader_pool, self._read_position, actors=list(actors),
                                                all_counters=True)
                    if page.upto > self._read_position:
                        await self._hand_over(page)
                        self._read_position = page.upto
                    if not page.more:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the database is away: keep the position, try again on the next ring/poll
                log.warning("stream reader could not read the change log (%s: %s)", type(e).__name__, e)
                await asyncio.sleep(1.0)
                self._doorbell.set()


class Feed:
    """One viewer's events: catch up from `last_event_id`, then follow the hub."""

    def __init__(self, hub: ChangeHub, actor: Actor, last_event_id: int | None) -> None:
        self.hub = hub
        self.actor = actor
        self.sight = sight(actor)
        self.counter_key = counter_key(actor)
        self.last_event_id = last_event_id
        self.sub = hub.subscribe(actor)
        self.cursor = 0
        self._counters: dict[str, Any] | None = None
        self._opening = b""  # the first write: what `start` read, rendered
        self._more = False  # the log holds more than `start` read: catch up on the rest
        self._beat: asyncio.TimerHandle | None = None
        self._written = 0.0  # loop time of the last write (heartbeats come heartbeat_s after it)

    def close(self) -> None:
        self.hub.unsubscribe(self.sub)
        if self._beat is not None:
            self._beat.cancel()

    async def start(self) -> None:
        """Where to start: the log's end, the Last-Event-ID, or a `reset` when that is not in the log;
        and the first write (the changes after Last-Event-ID, the counters), from one read.

        One read per stream that opens, not two (where, then what): a reconnect storm after an
        API restart is that many reads at once on the streams' few connections. Called before
        the response starts, so a database that is away is a 503, not a broken stream.
        """
        last = self.last_event_id
        page = await self.hub.read(last, actors=[self.actor], all_counters=True)
        if page.expired or (last is not None and last > page.head):
            # No rows were read (expired) or none are after `last`; the counters of the snapshot are the log end's.
            self.cursor = page.head
            events = [self._reset("expired" if page.expired else "unknown position", page.head)]
            self._opening = frame(events + self._new_counters(page, page.head))
            return
        self.cursor = page.after
        self._opening = frame(self.render(page))
        self._more = page.more

    async def events(self, heartbeat_s: float) -> AsyncIterator[bytes | None]:
        """SSE frames to write, in order; None when `heartbeat_s` passed without any.

        Every page waiting in the queue when the stream wakes up goes out in one write. The
        heartbeat is one timer per stream that re-arms itself from the time of the last write (a
        `_HEARTBEAT` on an empty queue when it finds the stream idle), not a timeout per wait:
        a wake-up costs only the queue's get.
        """
        loop = asyncio.get_running_loop()
        self._arm_heartbeat(loop, heartbeat_s)
        if self._opening:
            yield self._opening
        if self._more:
            async for chunk in self._catch_up(None, counters=False):
                yield chunk
        queue = self.sub.queue
        stop = False
        while not stop:
            if self.sub.ended.is_set() and queue.empty():
                break
            page = await queue.get() if queue.empty() else queue.get_nowait()
            parts: list[bytes] = []
            beat = False
            while True:
                if page is _HEARTBEAT:
                    beat = True
                elif page is None or self.sub.overflowed.is_set():
                    stop = True
                    break
                elif page.upto > self.cursor:
                    # Joined the hub after this page's start: read the gap ourselves. An expired page
                    # (the hub fell behind the pruning) has no rows: a stream still inside the log
                    # reads the page's span itself; one behind the horizon gets `reset` from render.
                    gap = page.upto if page.expired and self.cursor >= page.horizon else page.after
                    if gap > self.cursor:
                        async for chunk in self._catch_up(gap):
                            parts.append(chunk)
                    if page.upto > self.cursor:
                        parts.append(self.render_frames(page))
                if queue.empty():
                    break
                page = queue.get_nowait()
            if out := b"".join(parts):
                self._written = loop.time()
                yield out
            elif beat and not stop:
                self._written = loop.time()
                yield None
        if self.sub.overflowed.is_set():
            yield frame([self._reset("too slow", self.hub.position)])

    def _arm_heartbeat(self, loop: asyncio.AbstractEventLoop, heartbeat_s: float) -> None:
        self._written = loop.time()
        queue = self.sub.queue

        def due() -> None:
            idle = loop.time() - self._written
            if idle < heartbeat_s:
                self._beat = loop.call_later(heartbeat_s - idle, due)
                return
            if queue.empty() and not self.sub.ended.is_set():  # a waiting page will be written anyway
                queue.put_nowait(_HEARTBEAT)
            self._written = loop.time()  # the next beat, heartbeat_s after this one if nothing is written
            self._beat = loop.call_later(heartbeat_s, due)

        self._beat = loop.call_later(heartbeat_s, due)

    async def _catch_up(self, until: int | None, *, counters: bool = True) -> AsyncIterator[bytes]:
        """Read the log after the cursor on our own (up to `until`, or its end) and render it;
        `counters`: the first page carries the viewer's counters even if its organization has no change."""
        first = counters
        while until is None or self.cursor < until:
            page = await self.hub.read(self.cursor, actors=[self.actor], all_counters=first)
            first = False
            out = self.render(page)
            if out:
                yield frame(out)
            if not page.more:
                break

    def render_frames(self, page: ChangePage) -> bytes:
        """`frame(self.render(page))`, sharing the rendering with every stream of the same sight.

        A page with nothing before the cursor and no `reset` renders the same room and message
        events for every viewer whose sight decides the same for each room of the page, so they
        are rendered and framed once per such class (`_view`); the counters are one lookup.
        """
        view = _view(page, self.sight) if self.cursor <= page.after else None
        if view is None:
            return frame(self.render(page))
        self.cursor = max(self.cursor, page.upto)
        counters = page.counters.get(self.counter_key)
        if counters is None or counters is self._counters or counters == self._counters:
            return view.framed
        self._counters = counters
        # Viewers with equal badges share one dict (read_models.changes.counters_by_key): one encoding each.
        key = ("counters frame", id(counters))
        if (tail := page.views.get(key)) is None:
            tail = page.views[key] = b"id: %d\nevent: counters\ndata: %s\n\n" % (
                page.upto, page.encode(("c", id(counters)), counters))
        key = ("with counters", id(view), id(counters))  # the streams of one class with the same badges
        if (out := page.views.get(key)) is None:
            out = page.views[key] = view.with_counters(tail)
        return out

    def render(self, page: ChangePage) -> list[LiveEvent]:
        """The events of `page` after the cursor that this viewer may see; advances the cursor.

        An expired page (the hub's reader fell behind the pruning) resets a viewer whose cursor
        is below the horizon: the changes it missed are gone.
        """
        changes = [c for c in page.changes if c.position > self.cursor]
        out: list[LiveEvent] = []
        if page.expired and self.cursor < page.horizon:
            out.append(self._reset("expired", page.upto))
        self.cursor = max(self.cursor, page.upto)
        resets = [c for c in changes if c.kind == "reset"]
        if resets:  # the projections were rebuilt: what came before is moot
            out.append(self._reset("rebuilt", resets[-1].position))
            changes = [c for c in changes if c.position > resets[-1].position]
        out.extend(_room_events(page, changes, self.sight))
        return out + self._new_counters(page, page.upto)

    def _reset(self, reason: str, position: int) -> LiveEvent:
        """A `reset` (the client re-fetches everything, then goes on after `position`): counters are sent anew."""
        self._counters = None
        return LiveEvent("reset", _json({"reason": reason, "position": position}), None)

    def _new_counters(self, page: ChangePage, position: int) -> list[LiveEvent]:
        """The viewer's counters of `page` at `position`, when they differ from the last ones sent."""
        counters = page.counters.get(self.counter_key)
        if counters is None or counters == self._counters:
            return []
        self._counters = counters
        return [LiveEvent("counters", page.encode(("c", id(counters)), counters), position)]


def frame(events: list[LiveEvent], next_position: int | None = None) -> bytes:
    """SSE frames; the id goes on the last event of each position only (resuming skips no event).

    `next_position`: the position of the event that will follow these in the same write, if any.
    """
    parts: list[bytes] = []
    n = len(events)
    for i, e in enumerate(events):
        following = events[i + 1].position if i + 1 < n else next_position
        if e.position is not None and following != e.position:
            parts.append(b"id: %d\n" % e.position)
        parts.append(b"event: " + e.name.encode() + b"\ndata: " + e.json + b"\n\n")
    return b"".join(parts)


def _room_events(page: ChangePage, changes: list[Change], s: Sight) -> list[LiveEvent]:
    """message/room/room_hidden events of `changes` (rooms in order of their latest change) for `s`."""
    out: list[LiveEvent] = []
    groups: dict[str, list[Change]] = {}
    for c in changes:
        if c.kind != "room" or c.room_id is None or c.org_id != s.org_id:
            continue
        groups.setdefault(c.room_id, []).append(c)
    for room_id, group in sorted(groups.items(), key=lambda g: g[1][-1].position):
        first, latest = group[0], group[-1]
        room = page.rooms.get(room_id)
        seen_before = first.existed_before and s.sees(first.org_id or "", first.assignee_before)
        if room is not None and s.sees(latest.org_id or "", room["assignee"]):
            for message_id in dict.fromkeys(m for c in group for m in c.message_ids):
                if (message := page.messages.get(message_id)) is not None:
                    out.append(LiveEvent("message", page.encode(("m", message_id), message), latest.position))
            out.append(LiveEvent("room", page.encode(("r", room_id), room), latest.position))
        elif seen_before:
            version = room["version"] if room is not None else latest.version
            out.append(LiveEvent("room_hidden", _json({"id": room_id, "version": version}), latest.position))
    return out


class _View:
    """The room and message events of one page for one class of sights, framed when first asked.

    A large page names many agents, each a class with a single stream, most of whose badges move
    with the page: their bytes are joined once, with the counters event, not framed twice first.
    """

    __slots__ = ("parts", "last_no_id", "_framed")

    def __init__(self, parts: list[bytes], last_no_id: bytes | None) -> None:
        self.parts = parts
        self.last_no_id = last_no_id  # the last part without its `id:` line, when the counters event carries it
        self._framed: bytes | None = None

    @property
    def framed(self) -> bytes:
        """As sent when no counters event follows."""
        if self._framed is None:
            self._framed = b"".join(self.parts)
        return self._framed

    def with_counters(self, tail: bytes) -> bytes:
        """As sent followed by the counters event `tail` (at the page's end)."""
        if self.last_no_id is None:
            return b"".join([*self.parts, tail])
        return b"".join([*self.parts[:-1], self.last_no_id, tail])


@dataclass(frozen=True)
class _Group:
    """One room's changes in a page, framed every way a stream may send them (`_view` picks)."""

    org_id: str | None
    room: dict[str, Any] | None
    existed_before: bool
    assignee_before: str | None
    position: int
    shown: bytes  # its messages, then `id:` and its room event
    shown_no_id: bytes  # the same without the `id:` line (the counters event carries it)
    hidden: bytes  # `id:` and its room_hidden event
    hidden_no_id: bytes


_MISSING = object()


def _groups(page: ChangePage) -> list[_Group] | None:
    """The page's room groups in `_room_events` order, framed once (None: the page has a `reset` or expired)."""
    found = page.views.get("groups", _MISSING)
    if found is not _MISSING:
        return found  # type: ignore[return-value]
    if page.expired or any(c.kind == "reset" for c in page.changes):
        page.views["groups"] = None
        return None
    grouped: dict[str, list[Change]] = {}
    for c in page.changes:
        if c.kind == "room" and c.room_id is not None:
            grouped.setdefault(c.room_id, []).append(c)
    out = []
    for room_id, group in sorted(grouped.items(), key=lambda g: g[1][-1].position):
        first, latest = group[0], group[-1]
        room = page.rooms.get(room_id)
        shown: list[LiveEvent] = []
        if room is not None:
            shown = [LiveEvent("message", page.encode(("m", m), page.messages[m]), latest.position)
                     for m in dict.fromkeys(m for c in group for m in c.message_ids) if m in page.messages]
            shown.append(LiveEvent("room", page.encode(("r", room_id), room), latest.position))
        version = room["version"] if room is not None else latest.version
        hidden = [LiveEvent("room_hidden", _json({"id": room_id, "version": version}), latest.position)]
        out.append(_Group(latest.org_id, room, first.existed_before, first.assignee_before, latest.position,
                          frame(shown), frame(shown, latest.position), frame(hidden), frame(hidden, latest.position)))
    page.views["groups"] = out
    return out


def _view(page: ChangePage, s: Sight) -> _View | None:
    """The shared rendering of `page` for `s` (None when the page has a `reset` or expired: render per stream).

    Viewers whose sights agree on every assignee the page mentions (every admin of an
    organization; every agent the page does not name) share one class: `s` reduced to those
    assignees decides every room of the page as `s` itself does. Each class is the page's
    pre-framed room groups that its sight shows or hides (as `_room_events` decides).
    """
    mentioned = page.views.get("assignees")
    if mentioned is None:
        mentioned = page.views["assignees"] = frozenset(
            [c.assignee_before for c in page.changes] + [r["assignee"] for r in page.rooms.values()])
    named = tuple([a for a in s.assignees if a in mentioned]) if s.assignees else ()
    key = (s.org_id, s.whole_org, named)
    if (view := page.views.get(key)) is not None:
        return view
    groups = _groups(page)
    if groups is None:
        return None
    parts: list[bytes] = []
    last: _Group | None = None
    last_shown = False
    for i, shown in _decisions(page, groups, s, key):
        last, last_shown = groups[i], shown
        parts.append(last.shown if shown else last.hidden)
    last_no_id = None
    if last is not None and last.position == page.upto:  # the counters event carries this position's id
        last_no_id = last.shown_no_id if last_shown else last.hidden_no_id
    view = _View(parts, last_no_id)
    page.views[key] = view
    return view


def _decide(g: _Group, s: Sight) -> bool | None:
    """Whether `s` gets group `g` shown (True), hidden (False) or not at all (None), as `_room_events`."""
    if g.org_id != s.org_id:
        return None
    if g.room is not None and s.sees(s.org_id, g.room["assignee"]):
        return True
    if g.existed_before and s.sees(s.org_id, g.assignee_before):
        return False
    return None


def _decisions(page: ChangePage, groups: list[_Group], s: Sight, key: tuple[Any, ...]) -> list[tuple[int, bool]]:
    """(group index, shown) of each group `s` gets, in page order; cached per class (`key`).

    An agent the page names decides like the agents it does not name (one shared class, decided
    over every group once) except on the groups that name it: only those are decided again. A
    large page (the reader coalesces pages while the loop is busy) names many agents; each of
    their classes then costs its own few groups, not the whole page.
    """
    cache_key = ("decisions", key)
    if (found := page.views.get(cache_key)) is not None:
        return found  # type: ignore[no-any-return]
    people = [a for a in key[2] if a is not None]
    if not people:
        out = [(i, shown) for i, g in enumerate(groups) if (shown := _decide(g, s)) is not None]
    else:
        base_sight = Sight(s.org_id, s.whole_org, tuple(a for a in s.assignees if a not in people))
        base = _decisions(page, groups, base_sight, (s.org_id, s.whole_org, tuple(a for a in key[2] if a is None)))
        naming = page.views.get("naming")
        if naming is None:  # (org, assignee) -> indexes of the groups that name it, before or after
            naming = page.views["naming"] = {}
            for i, g in enumerate(groups):
                for a in {g.assignee_before, g.room["assignee"] if g.room is not None else None} - {None}:
                    naming.setdefault((g.org_id, a), []).append(i)
        own = {i for a in people for i in naming.get((s.org_id, a), ())}
        out = [d for d in base if d[0] not in own]
        out += [(i, shown) for i in own if (shown := _decide(groups[i], s)) is not None]
        out.sort()
    page.views[cache_key] = out
    return out
