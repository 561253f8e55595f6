"""Service reports as a pure fold of wire events (issue 13): the template for downstream teams.

Per room the fold keeps a small state (`ReportRoom`) and, for each event, says what changes in
the report tables:

- a **cycle** is one stretch of a room from `RoomOpened` or `RoomReopened` to its `RoomResolved`.
  Its `inbound_at` is the first inbound message of the cycle (the one that opened or reopened
  the room); its first response is the first staff reply (`MessageSent` whose sender is staff,
  not a channel echo) after that; `first_response_s` and `resolution_s` (cycle start ->
  `RoomResolved`) are measured between the events' `occurred_at`. The cycle's agent is the staff
  member who answered first, else whoever it was assigned to when resolved.
- **counts** per (org, UTC day, channel, agent) of rooms opened, reopened and resolved and of
  messages in and out: the agent is the room's assignee at that event ('-' when none), for a
  staff reply its sender.
- **backlog changes**: +1 when a room becomes unassigned (opened, reopened), -1 when an
  unassigned room is assigned or resolved. The unassigned count at a moment is the sum of the
  changes up to it, so it is exact whatever order rooms' events arrive in.

`apply(state, event)` expects the room's events in version order (the writer skips duplicates).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from projections.frozen import replace
from projections.times import as_datetime

NOBODY = "-"
STAFF_ROLES = frozenset({"admin", "supervisor", "agent"})
COUNT_FIELDS = ("opened", "reopened", "resolved", "messages_in", "messages_out")


@dataclass(frozen=True)
class Cycle:
    org_id: str
    room_id: str
    cycle: int
    channel: str
    started_at: datetime
    inbound_at: datetime | None = None
    first_response_at: datetime | None = None
    first_response_s: float | None = None
    responder: str | None = None
    resolved_at: datetime | None = None
    resolution_s: float | None = None
    agent: str | None = None


@dataclass(frozen=True)
class ReportRoom:
    room_id: str
    org_id: str
    channel: str
    version: int
    status: str  # unassigned | assigned | resolved
    assignee: str | None
    cycle: Cycle


@dataclass(frozen=True)
class Count:
    org_id: str
    day: date
    channel: str
    agent: str
    field: str  # one of COUNT_FIELDS


@dataclass(frozen=True)
class BacklogChange:
    org_id: str
    at: datetime
    room_id: str
    version: int
    delta: int


@dataclass(frozen=True)
class Changes:
    counts: tuple[Count, ...] = ()
    backlog: BacklogChange | None = None
    cycle: Cycle | None = None  # the cycle row to upsert when it changed


class UnknownEvent(ValueError):
    """An event type the reports do not know; dead-lettered, never silently dropped."""


KNOWN = frozenset({
    "RoomOpened", "MessageReceived", "MessageSent", "RoomAssigned", "RoomResolved", "RoomReopened",
    "MessageEdited", "MessageRemoved",
    # Delivery outcomes of staff replies (issue 9): known, and they change no report number.
    "ReplyDeliveryAccepted", "ReplyDeliveryFailed", "ReplyDeliveryUnknown", "DeliveryStatusChanged",
})


def apply(state: ReportRoom | None, event: dict[str, Any]) -> tuple[ReportRoom, Changes]:
    kind = event["type"]
    data = event["data"]
    at = as_datetime(event["occurred_at"])
    version = event["version"]
    if kind not in KNOWN:
        raise UnknownEvent(f"unknown event type {kind!r}")
    if kind == "RoomOpened":
        if state is not None:
            raise ValueError(f"RoomOpened v{version} for room {event['room_id']} that is already open")
        cycle = Cycle(event["org_id"], event["room_id"], 1, str(data["channel"]), at)
        state = ReportRoom(event["room_id"], event["org_id"], cycle.channel, version, "unassigned", None, cycle)
        return state, Changes((_count(state, at, "opened"),), _backlog(state, at, +1), cycle)
    if state is None:
        raise ValueError(f"{kind} v{version} for room {event['room_id']} before RoomOpened")
    before = state
    state = replace(state, version=version)
    if kind == "MessageReceived":
        counts = (_count(state, at, "messages_in"),)
        if state.cycle.inbound_at is None:
            cycle = replace(state.cycle, inbound_at=at)
            return replace(state, cycle=cycle), Changes(counts, None, cycle)
        return state, Changes(counts)
    if kind == "MessageSent":
        staff = data.get("sender_role") in STAFF_ROLES
        agent = str(data["sender_id"]) if staff and data.get("sender_id") else None
        counts = (_count(state, at, "messages_out", agent),)
        c = state.cycle
        if staff and c.inbound_at is not None and c.first_response_at is None:
            cycle = replace(c, first_response_at=at, first_response_s=_seconds(c.inbound_at, at), responder=agent,
                            agent=agent)
            return replace(state, cycle=cycle), Changes(counts, None, cycle)
        return state, Changes(counts)
    if kind == "RoomAssigned":
        after = replace(state, status="assigned", assignee=str(data["assignee"]))
        return after, Changes((), _backlog(after, at, -1) if before.status == "unassigned" else None)
    if kind == "RoomResolved":
        c = state.cycle
        cycle = replace(c, resolved_at=at, resolution_s=_seconds(c.started_at, at), agent=c.responder or state.assignee)
        after = replace(state, status="resolved", cycle=cycle)
        backlog = _backlog(after, at, -1) if before.status == "unassigned" else None
        return after, Changes((_count(state, at, "resolved"),), backlog, cycle)
    if kind == "RoomReopened":
        cycle = Cycle(state.org_id, state.room_id, state.cycle.cycle + 1, state.channel, at)
        after = replace(state, status="unassigned", assignee=None, cycle=cycle)
        backlog = _backlog(after, at, +1) if before.status != "unassigned" else None
        return after, Changes((_count(after, at, "reopened"),), backlog, cycle)
    return state, Changes()  # edits, removals and delivery outcomes change no report number


def _count(state: ReportRoom, at: datetime, field: str, agent: str | None = None) -> Count:
    return Count(state.org_id, day_of(at), state.channel, agent or state.assignee or NOBODY, field)


def _backlog(state: ReportRoom, at: datetime, delta: int) -> BacklogChange:
    return BacklogChange(state.org_id, at, state.room_id, state.version, delta)


def day_of(at: datetime) -> date:
    """The UTC day of a moment (reports are bucketed by UTC day)."""
    return at.astimezone(UTC).date()


def _seconds(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds()
