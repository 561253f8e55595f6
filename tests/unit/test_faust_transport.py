"""`_Resumed`: the rest of a coroutine that already ran to its first suspension outside a task
(`_Consumer.wait_first`'s slow path) behaves as if the task had run it from the start. And
`_Consumer._wait_next_records`: no fetch while a stream buffer is full, a fetch as soon as it drains."""

from __future__ import annotations

import asyncio

import pytest

from faust.types import TP

from inbox.adapters.kafka.faust_transport import LowLatencyApp, _Resumed


def _started(coro):  # type: ignore[no-untyped-def]
    """Run `coro` to its first suspension, as `_Consumer.wait_first` does."""
    return coro, coro.send(None)


def test_a_resumed_coroutine_finishes_with_its_value_after_what_it_waited_for() -> None:
    async def main() -> tuple[str, list[str]]:
        steps: list[str] = []
        gate = asyncio.get_running_loop().create_future()

        async def delivery() -> str:
            steps.append("first part")
            got = await gate
            steps.append(f"got {got}")
            await asyncio.sleep(0)  # a bare yield on the way is passed through too
            return "done"

        coro, pending = _started(delivery())
        assert steps == ["first part"]
        task = asyncio.ensure_future(_Resumed(coro, pending))
        await asyncio.sleep(0)
        assert not task.done()
        gate.set_result("room in the buffer")
        return await task, steps

    assert asyncio.run(main()) == ("done", ["first part", "got room in the buffer"])


def test_cancelling_the_task_cancels_the_resumed_coroutine_where_it_waits() -> None:
    async def main() -> list[str]:
        seen: list[str] = []

        async def delivery() -> None:
            try:
                await asyncio.get_running_loop().create_future()  # never resolved: a full buffer
            except asyncio.CancelledError:
                seen.append("cancelled inside")
                raise

        task = asyncio.ensure_future(_Resumed(*_started(delivery())))
        await asyncio.sleep(0)
        task.cancel()  # what wait_first does to the loser when the flow is suspended
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(main()) == ["cancelled inside"]


def test_an_error_after_the_suspension_reaches_the_awaiter() -> None:
    async def main() -> None:
        async def delivery() -> None:
            await asyncio.sleep(0)
            raise ValueError("undecodable")

        with pytest.raises(ValueError, match="undecodable"):
            await asyncio.ensure_future(_Resumed(*_started(delivery())))

    asyncio.run(main())


def _consumer_fetching(tps: set[TP]) -> tuple[object, list[set[TP]]]:
    """The worker app's consumer (never started) with `tps` assigned; its fetches are recorded."""
    consumer = LowLatencyApp("t", broker="kafka://127.0.0.1:1", web_enabled=False).consumer
    consumer._set_active_tps(tps)
    fetched: list[set[TP]] = []

    async def getmany(active_partitions: set[TP], timeout: float) -> dict[TP, list[str]]:
        fetched.append(set(active_partitions))
        return {tp: ["record"] for tp in active_partitions}

    consumer._getmany = getmany
    return consumer, fetched


def test_while_a_stream_buffer_is_full_nothing_is_fetched_and_the_fetch_resumes_when_it_drains() -> None:
    p0, p1 = TP("events", 0), TP("events", 1)

    async def main() -> None:
        consumer, fetched = _consumer_fetching({p0, p1})
        consumer.on_buffer_full(p0)  # the stream's buffer reached its high mark on a record of p0
        waiting = asyncio.ensure_future(consumer._wait_next_records(5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done() and fetched == []  # p1 is not fetched meanwhile: same buffer
        consumer.on_buffer_drop(p0)
        records, _ = await asyncio.wait_for(waiting, 0.5)  # at once, not after the timeout
        assert records == {}
        records, active = await consumer._wait_next_records(5.0)
        assert fetched == [{p0, p1}] and set(records) == {p0, p1} == active

    asyncio.run(main())


def test_a_pause_that_never_reports_draining_costs_one_timeout_then_the_active_partitions_are_fetched() -> None:
    p0, p1 = TP("events", 0), TP("events", 1)

    async def main() -> None:
        consumer, fetched = _consumer_fetching({p0, p1})
        consumer.on_buffer_full(p0)  # and its drop is never reported
        loop = asyncio.get_running_loop()
        started = loop.time()
        records, _ = await consumer._wait_next_records(0.1)
        assert 0.09 < loop.time() - started < 1.0
        assert fetched == [{p1}] and set(records) == {p1}

    asyncio.run(main())
