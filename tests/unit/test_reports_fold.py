"""The reports fold (projections/reports.py) against a naive recount of the same events."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.reports import NOBODY, ReportRoom, apply

T0 = datetime(2025, 3, 1, 22, 0, tzinfo=UTC)  # days change during the histories
AGENTS = ("agent-a", "agent-b", "spv")

action = st.one_of(
    st.tuples(st.just("in"), st.integers(1, 4000)),
    st.tuples(st.just("reply"), st.integers(1, 4000), st.sampled_from(AGENTS)),
    st.tuples(st.just("echo"), st.integers(1, 4000)),
    st.tuples(st.just("assign"), st.integers(1, 4000), st.sampled_from(AGENTS)),
    st.tuples(st.just("resolve"), st.integers(1, 4000)),
)
room_script = st.tuples(st.sampled_from(["org1", "org2"]), st.sampled_from(["whatsapp_cloud", "instagram"]),
                        st.integers(0, 20000), st.lists(action, max_size=12))


def room_events(n: int, script: tuple[str, str, int, list[tuple[Any, ...]]]) -> list[dict[str, Any]]:
    """Wire events of one room following the aggregate's rules (a resolved room reopens on inbound)."""
    org, channel, start, actions = script
    room = f"room-{n}"
    at = T0 + timedelta(seconds=start)
    events: list[dict[str, Any]] = []
    status = "unassigned"

    def emit(kind: str, **data: Any) -> None:
        events.append({"id": f"{room}:{len(events) + 1}", "type": kind, "org_id": org, "room_id": room,
                       "version": len(events) + 1, "occurred_at": at.isoformat(), "data": data})

    emit("RoomOpened", channel=channel, org_id=org)
    emit("MessageReceived", message_id="m", text="hi")
    for a in actions:
        at += timedelta(seconds=a[1])
        if a[0] == "in":
            if status == "resolved":
                emit("RoomReopened", reason="inbound_message")
                status = "unassigned"
            emit("MessageReceived", message_id="m", text="hi")
        elif status == "resolved":
            continue
        elif a[0] == "reply":
            if status == "unassigned":
                emit("RoomAssigned", assignee=a[2])
                status = "assigned"
            emit("MessageSent", sender_id=a[2], sender_role="agent")
        elif a[0] == "echo":
            emit("MessageSent", sender_id="business", sender_role="channel")
        elif a[0] == "assign":
            emit("RoomAssigned", assignee=a[2])
            status = "assigned"
        elif a[0] == "resolve":
            emit("RoomResolved", reason="manual")
            status = "resolved"
    return events


def fold(events: list[dict[str, Any]]) -> tuple[dict[tuple[str, int], Any], Counter[Any], list[tuple[Any, ...]]]:
    states: dict[str, ReportRoom | None] = {}
    cycles: dict[tuple[str, int], Any] = {}
    counts: Counter[Any] = Counter()
    backlog: list[tuple[Any, ...]] = []
    for e in events:
        state, changes = apply(states.get(e["room_id"]), e)
        states[e["room_id"]] = state
        if changes.cycle:
            c = changes.cycle
            cycles[(c.room_id, c.cycle)] = (c.first_response_s, c.resolution_s, c.agent)
        for k in changes.counts:
            counts[(k.org_id, k.day, k.channel, k.agent, k.field)] += 1
        if changes.backlog:
            backlog.append((changes.backlog.org_id, changes.backlog.at, changes.backlog.delta))
    return cycles, counts, backlog


def recount(events: list[dict[str, Any]]) -> tuple[dict[tuple[str, int], Any], Counter[Any], dict[Any, int]]:
    """Whole-history recount, written independently of the fold: split each room into cycles."""
    cycles: dict[tuple[str, int], Any] = {}
    counts: Counter[Any] = Counter()
    by_room: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_room.setdefault(e["room_id"], []).append(e)
    for room, evs in by_room.items():
        channel = evs[0]["data"]["channel"]
        starts = [i for i, e in enumerate(evs) if e["type"] in ("RoomOpened", "RoomReopened")]
        for n, s in enumerate(starts, start=1):
            end = starts[n] if n < len(starts) else len(evs)
            part = evs[s:end]
            t = lambda e: datetime.fromisoformat(e["occurred_at"])  # noqa: E731
            inbound = next((e for e in part if e["type"] == "MessageReceived"), None)
            reply = next((e for e in part if inbound and e["type"] == "MessageSent"
                          and e["data"]["sender_role"] != "channel" and e["version"] > inbound["version"]), None)
            resolved = next((e for e in part if e["type"] == "RoomResolved"), None)
            assignee = None
            for e in part:
                if e["type"] == "RoomAssigned":
                    assignee = e["data"]["assignee"]
                if e is resolved:
                    break
            agent = reply["data"]["sender_id"] if reply else (assignee if resolved else None)
            cycles[(room, n)] = (
                (t(reply) - t(inbound)).total_seconds() if reply else None,
                (t(resolved) - t(part[0])).total_seconds() if resolved else None,
                agent,
            )
        assignee = None
        for e in evs:
            day = datetime.fromisoformat(e["occurred_at"]).date()
            if e["type"] == "RoomReopened":
                assignee = None
            who = assignee or NOBODY
            if e["type"] == "MessageSent" and e["data"]["sender_role"] != "channel":
                who = e["data"]["sender_id"]
            name = {"RoomOpened": "opened", "RoomReopened": "reopened", "RoomResolved": "resolved",
                    "MessageReceived": "messages_in", "MessageSent": "messages_out"}.get(e["type"])
            if name:
                counts[(e["org_id"], day, channel, who, name)] += 1
            if e["type"] == "RoomAssigned":
                assignee = e["data"]["assignee"]
    return cycles, counts, {}


def unassigned_at(events: list[dict[str, Any]], org: str, moment: datetime) -> int:
    """The analytics.md query: rooms whose last lifecycle event up to the moment is opened/reopened."""
    last: dict[str, str] = {}
    for e in events:
        if e["org_id"] == org and e["type"] in ("RoomOpened", "RoomAssigned", "RoomResolved", "RoomReopened") \
                and datetime.fromisoformat(e["occurred_at"]) <= moment:
            last[e["room_id"]] = e["type"]
    return sum(1 for t in last.values() if t in ("RoomOpened", "RoomReopened"))


@settings(max_examples=150, deadline=None)
@given(st.lists(room_script, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_report_fold_equals_a_recount_from_the_events(scripts: list[Any], rnd: Any) -> None:
    rooms = [room_events(n, s) for n, s in enumerate(scripts)]
    events = [e for r in rooms for e in r]
    # Rooms interleave in any order on the topic; each room's own events stay in order.
    interleaved: list[dict[str, Any]] = []
    queues = [list(r) for r in rooms]
    while any(queues):
        q = rnd.choice([q for q in queues if q])
        interleaved.append(q.pop(0))
    cycles, counts, backlog = fold(interleaved)
    want_cycles, want_counts, _ = recount(events)
    assert cycles == want_cycles
    assert counts == want_counts
    moments = sorted({datetime.fromisoformat(e["occurred_at"]) for e in events})
    for org in ("org1", "org2"):
        for m in moments:
            got = sum(d for o, at, d in backlog if o == org and at <= m)
            assert got == unassigned_at(events, org, m), (org, m)


def test_delivery_outcomes_of_replies_are_known_and_change_no_report_number() -> None:
    """Issue 9's delivery events reach the reports consumer too: folded (version moves), never dead-lettered."""
    base = {"org_id": "org1", "room_id": "r", "occurred_at": T0.isoformat()}
    state, _ = apply(None, {**base, "type": "RoomOpened", "version": 1, "data": {"channel": "whatsapp_cloud"}})
    for version, kind in enumerate(("ReplyDeliveryAccepted", "ReplyDeliveryFailed", "ReplyDeliveryUnknown",
                                    "DeliveryStatusChanged"), start=2):
        after, changes = apply(state, {**base, "type": kind, "version": version, "data": {"message_id": "m"}})
        assert (changes.counts, changes.backlog, changes.cycle) == ((), None, None)
        assert after.version == version and after.cycle == state.cycle
        state = after
