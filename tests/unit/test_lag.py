"""Progress: telling a loop that is behind and moving from one that is stuck."""

from __future__ import annotations

from inbox.adapters.lag import Progress
from tests.support import wait_until


def test_a_loop_first_seen_behind_has_been_behind_for_no_time() -> None:
    p = Progress()
    assert p.behind_for(10, 0) == 0.0
    assert p.behind_for(10, 3) == 0.0


def test_a_loop_behind_at_the_same_position_accumulates_time() -> None:
    p = Progress()
    p.behind_for(10, 3)
    wait_until(lambda: p.behind_for(10, 3) > 0, timeout=5, interval=0.01, what="time behind to grow")


def test_a_loop_that_moves_or_catches_up_starts_over() -> None:
    p = Progress()
    p.behind_for(10, 3)
    wait_until(lambda: p.behind_for(10, 3) > 0, timeout=5, interval=0.01, what="time behind to grow")
    assert p.behind_for(11, 2) == 0.0
    assert p.behind_for(11, 0) == 0.0
