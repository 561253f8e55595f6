"""`_Resumed`: the rest of a coroutine that already ran to its first suspension outside a task
(`_Consumer.wait_first`'s slow path) behaves as if the task had run it from the start."""

from __future__ import annotations

import asyncio

import pytest

from inbox.adapters.kafka.faust_transport import _Resumed


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
