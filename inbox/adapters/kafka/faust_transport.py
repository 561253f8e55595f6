"""Faust for low latency: a Kafka consumer that waits at most FETCH_MAX_WAIT_MS for new data, and
`take_ready`, batches without a fixed window. The consumer also seeks back to the beginning of a
partition without a committed offset (`seek_to_committed_or_reset`), where Faust with aiokafka
alone lost the records it dropped during a rebalance.

faust-streaming hard-codes `fetch_max_wait_ms=1500` for its worker consumer. A broker that does
not answer a fetch early when data arrives (Tansu, here) then adds up to 1.5 s between an event
being published and the agent seeing it (measured: ~0.7 s median). Real Kafka answers as soon
as data arrives, so a short wait costs it nothing but a few more idle fetch requests.

Measured against the embedded Tansu (produce acknowledged → record returned to the consumer):
50 ms waits gave p50 14 ms / max 36 ms; 10 ms gave p50 3 ms / max 9 ms. An idle consumer then
costs ~3.5% of a core (and the broker ~3%) instead of ~1% each at 50 ms: worth it for the live
stream's freshness budget (issue 10: 202 → stream event p99 < 100 ms).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Generator, Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.conductor import Conductor
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from mode.services import WaitResults

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 10


async def seek_to_committed_or_reset(consumer: AIOKafkaConsumer, reset: str) -> dict[TopicPartition, int | None]:
    """Move every assigned partition back to its committed offset, or where `reset` says when it
    has none ("earliest": the beginning, "latest": the end); returns the committed offsets.

    Faust drops records it fetched while its flow is stopped (a rebalance) and counts on this seek
    to read them again. aiokafka's `seek_to_committed` leaves a partition without a committed
    offset where it is, i.e. after the records just dropped: they were never seen again. That
    happens whenever the group has no commit for a partition — a new group's first rebalances, or
    a broker that lost its offsets with its data (the embedded Tansu keeps nothing across a
    restart): a projection worker then sat idle with the whole topic unprojected.
    """
    committed = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if offset is None]
    for tp, offset in committed.items():
        if offset == 0:  # aiokafka skips a committed 0 as well
            consumer.seek(tp, 0)
    if fresh:
        log.info("no committed offset for %s: reading from the %s", sorted(tp.partition for tp in fresh),
                 "end" if reset == "latest" else "beginning")
        if reset == "latest":
            await consumer.seek_to_end(*fresh)
        else:
            await consumer.seek_to_beginning(*fresh)
    return committed


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts its fetcher
        return consumer

    async def seek_to_committed(self) -> Mapping[Any, int]:
        reset = self.app.conf.consumer_auto_offset_reset
        return cast(Mapping[Any, int],
                    await self.call_thread(seek_to_committed_or_reset, self._ensure_consumer(), reset))


class _Consumer(faust_aiokafka.Consumer):
    _drained: asyncio.Event | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def on_buffer_drop(self, tp: Any) -> None:
        """A paused partition's stream buffer drained: fetch for it again now (`_wait_next_records`)."""
        super().on_buffer_drop(tp)
        if self._drained is not None:
            self._drained.set()

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        """Faust's, except that while a partition is paused for a full stream buffer nothing is
        fetched: it waits until that buffer drains (`on_buffer_drop`), at most `timeout`.

        Faust pauses a partition whose stream buffer reaches 80 % of `stream_buffer_maxsize`
        and goes on fetching the others. This worker's partitions all feed one stream, so the
        others are paused as soon as a record of theirs arrives; meanwhile a fetch for the ones
        still active waits for their next record up to `timeout` (1 s) in the consumer thread,
        and with every partition paused Faust slept a whole second. The buffer drains in a
        fraction of that: a worker catching up projected what it held (~3,300 events), then sat
        idle (measured: 5 of 7 s of a 24,000-event catch-up, at most ~5,000 events/s).
        """
        if not self.flow_active:
            await self.wait(self.can_resume_flow)  # type: ignore[arg-type]
        try:
            self.not_waiting_next_records.set()
            client_only = self.app.client_only
            active_partitions: set[Any] | None = None if client_only else self._get_active_partitions()
            records: Any = {}
            if client_only or (active_partitions and not self._buffered_partitions):
                records = await self._getmany(active_partitions=active_partitions, timeout=timeout)
            else:  # a stream buffer is full (or nothing is assigned): until it drains
                drained = self._drained = self._drained or asyncio.Event()
                drained.clear()  # nothing awaited since the partitions were read: no drop missed
                await self.wait_first(drained.wait(), timeout=timeout)
                if not drained.is_set() and active_partitions and not self.should_stop:
                    # No drop within `timeout`: a batch that slow, or a pause whose drop will never be
                    # reported (its records cleared by a rebalance). Fetch what is active, as Faust
                    # does, rather than wait on it forever.
                    records = await self._getmany(active_partitions=active_partitions, timeout=timeout)
            return records, active_partitions
        finally:
            self.not_waiting_next_records.set()

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """`Service.wait_first` without four tasks per message when the first coroutine does not block.

        Faust's fetcher hands every message over with `wait_first(callback(message),
        suspend_flow.wait())` (so a rebalance can abandon a delivery that waits for room in a
        full stream buffer), and `wait_first` wraps that and the service's stopped and crashed
        events in a task each, then cancels three: half of a catch-up worker's CPU went there.
        Here the first coroutine runs to its first suspension first; almost always (the buffer
        has room, the flow is not suspended) it is done by then, and the result is what
        `wait_first` returns when it wins. Otherwise it goes on inside the library's
        `wait_first`, from where it stopped, racing the others exactly as before.
        """
        first = coros[0] if coros else None
        if timeout is not None or not asyncio.iscoroutine(first):
            return await super().wait_first(*coros, timeout=timeout)
        try:
            pending = first.send(None)
        except BaseException as e:
            for other in coros[1:]:
                if asyncio.iscoroutine(other):
                    other.close()  # never started: closed, as a cancelled task's would be
            if not isinstance(e, StopIteration):
                raise
            if self._stopped.is_set() or self._crashed.is_set():
                return WaitResults([], [], True)
            return WaitResults([first], [e.value], False)
        resumed = _Resumed(first, pending)
        results = await super().wait_first(resumed, *coros[1:])
        return WaitResults([first if c is resumed else c for c in results.done], results.results, results.stopped)


class _Resumed:
    """The rest of a coroutine that suspended on `pending` outside a task: awaiting this (in a
    task) waits on `pending`, then drives the coroutine on, cancellation included."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # noqa: BLE001 - thrown in by the task (cancellation): passed on
                try:
                    pending = coro.throw(e)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as done:
                    return done.value


class _Conductor(Conductor):
    def _compile_message_handler(self) -> Any:
        """Faust's handler of every fetched record, without taking the lock of the partition ->
        callback index when nobody holds it: the index changes only under that lock (on
        subscription changes), so while it is free a read sees a whole index, and one that is
        being rebuilt is still waited for. Saves an `async with` (two coroutines) per record."""
        if self.app.client_only:
            return super()._compile_message_handler()
        lock = self._tp_to_callback_lock
        get_callback_for_tp = self._tp_to_callback.__getitem__

        async def on_message(message: Any) -> Any:
            if lock.locked():
                async with lock:
                    callback = get_callback_for_tp(message.tp)
            else:
                callback = get_callback_for_tp(message.tp)
            return await callback(message)

        return on_message


class _ProducerBuffer(ProducerBuffer):
    """The buffer of an unthreaded producer, whose size is asked for every fetched record
    (`wait_until_ebb`): its length, without reading the `producer_threaded` setting each time."""

    @property
    def size(self) -> int:
        return self.pending.qsize()


class _Producer(faust_aiokafka.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.app.conf.producer_threaded:
            self.buffer = _ProducerBuffer(loop=self.loop, beacon=self.beacon)
            self.buffer.app = self.app


class _Transport(faust_aiokafka.Transport):
    Conductor = _Conductor
    Consumer = _Consumer
    Producer = _Producer


class LowLatencyApp(faust.App):
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    def on_init_dependencies(self) -> Any:
        """Without Faust's Monitor among the sensors: it keeps per-message statistics (four calls
        per message, a tenth of the library's CPU per message) for Faust's web views and metric
        exporters, which the workers do not run. The consumer still records end offsets and
        commits in it directly."""
        services = super().on_init_dependencies()
        if self.monitor in self.sensors:
            self.sensors.remove(self.monitor)
        return services


class RawSchema(faust.Schema):
    """Key and value as the bytes that came in (what `key_type=bytes, key_serializer="raw"` and
    the same for values give), without the codec lookups and checks Faust's `Schema` makes for
    every message of a typed topic: an event is created straight from the record."""

    def __init__(self) -> None:
        super().__init__(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, *, on_key_decode_error: Any = None,
                on_value_decode_error: Any = None, default_propagate: bool = False) -> Any:
        event_type = app.conf.Event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return event_type(app, message.key, message.value, message.headers, message)

        return decode


async def take_ready(stream: faust.StreamT[Any], max_: int) -> AsyncIterator[list[Any]]:
    """Like `stream.take(max_, within)`, without its fixed window: a batch is whatever arrived
    while the previous one was being processed (at most `max_`), handed over as soon as there
    is one.

    `take` yields when its buffer is full or every `within` seconds, whatever arrived when: an
    idle stream holds each event up to `within` (20 ms here before) for nothing. Here an event
    that finds the agent idle is processed at once, and under load the batches grow by
    themselves (the events that arrive during one transaction make the next batch).

    Acks as `take` does: the events of a batch are acked after the agent's body finished with
    it (at least once), in order. Adding to the buffer waits while it holds `max_` events.
    """
    buffer: list[Any] = []
    events: list[Any] = []
    ready = asyncio.Event()  # the buffer holds something
    room = asyncio.Event()  # the buffer holds less than max_
    room.set()
    acks_enabled = stream.enable_acks

    def add_to_buffer(value: Any) -> Any:
        # Plain function while the buffer has room (the stream awaits a processor's result only
        # when it is awaitable; the values are bytes): no coroutine per event.
        if len(buffer) >= max_:
            return add_when_room(value)
        add(value)
        return value

    async def add_when_room(value: Any) -> Any:
        while len(buffer) >= max_ and not stream.should_stop:
            room.clear()
            await stream.wait(room)
        add(value)
        return value

    def add(value: Any) -> None:
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_ready found current_event is None")
        buffer.append(value)
        events.append(event)
        ready.set()

    stream.enable_acks = False  # acked here, after the body is done with the batch
    stream.add_processor(add_to_buffer)
    stream._enable_passive(cast(Any, aiter(stream.channel)))  # as `take` does: fill the buffer in the background
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(ready, timeout=1.0)
            if not buffer:
                continue
            await asyncio.sleep(0)  # records of the same fetch still on their way to the buffer join this batch
            batch, acks = buffer[:], events[:]
            buffer.clear()
            events.clear()
            ready.clear()
            room.set()
            yield batch
            for event in acks:
                await stream.ack(event)
    finally:
        stream.enable_acks = acks_enabled
        stream._processors.remove(add_to_buffer)
