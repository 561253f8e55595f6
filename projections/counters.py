"""Maintained counters as a pure function of room views.

Each room contributes to two rows keyed (org, tab, status, assignee): its own assignee
('-' when none) and the org-wide total ('*'). A transition adds the new contribution and
subtracts the old, so counts stay exact no matter how events are batched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from domain.visibility import ALL, NOBODY, counter_key
from projections.rooms import RoomView

__all__ = ["ALL", "NOBODY", "CounterDelta", "CounterKey", "contributions", "deltas"]

CounterKey = tuple[str, str, str, str]  # (org_id, tab, status, assignee)


@dataclass(frozen=True)
class CounterDelta:
    rooms: int = 0
    awaiting: int = 0


def contributions(view: RoomView | None) -> dict[CounterKey, CounterDelta]:
    if view is None:
        return {}
    one = CounterDelta(rooms=1, awaiting=1 if view.awaiting_reply else 0)
    return {
        (view.org_id, view.tab, view.status, counter_key(view.assignee)): one,
        (view.org_id, view.tab, view.status, ALL): one,
    }


def deltas(transitions: Iterable[tuple[RoomView | None, RoomView | None]]) -> dict[CounterKey, CounterDelta]:
    """Net counter change for (before, after) room views; zero changes are left out."""
    rooms: dict[CounterKey, int] = defaultdict(int)
    awaiting: dict[CounterKey, int] = defaultdict(int)
    for before, after in transitions:
        for key, c in contributions(before).items():
            rooms[key] -= c.rooms
            awaiting[key] -= c.awaiting
        for key, c in contributions(after).items():
            rooms[key] += c.rooms
            awaiting[key] += c.awaiting
    keys = sorted(set(rooms) | set(awaiting))  # sorted: writers lock counter rows in one order
    return {
        k: CounterDelta(rooms[k], awaiting[k]) for k in keys if rooms[k] or awaiting[k]
    }
