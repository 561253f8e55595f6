"""What the write-side use cases answer: primitives and small values, never aggregates."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FactOutcome(StrEnum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # recorded before: nothing new written
    IGNORED = "ignored"  # nothing to record (see `FactResult.reason`)
    REFUSED = "refused"  # a domain rule refused it (see `FactResult.reason`)
    PARKED = "parked"  # kept aside, durably, until it can be decided (inbox/usecases/echoes.py)


@dataclass(frozen=True)
class FactResult:
    """What recording one inbound fact did."""

    outcome: FactOutcome
    room_id: str | None = None
    version: int | None = None
    message_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class InboundResult:
    room_id: str
    version: int
    message_id: str
    duplicate: bool


@dataclass(frozen=True)
class CommandResult:
    room_id: str
    version: int
    message_id: str | None = None


class Unavailable(Exception):
    """The write side cannot record now (database locked, slow or down; queue full): HTTP 503."""

    retry_after = 5


class HistoryUnreadable(Unavailable):
    """An aggregate's recorded events cannot be read back (a corrupt row, or an event type this code
    does not know, e.g. after a deploy was rolled back): nothing can be decided on that room (or
    channel account) until an operator mends the row. Answered like `Unavailable` (503 +
    Retry-After), so the sender retries and its retry is recorded once it reads again; every other
    room is unaffected."""

    def __init__(self, aggregate_id: object, version: int | None, reason: str) -> None:
        event = f"its stored event {version}" if version is not None else "one of its stored events"
        super().__init__(f"the history of {aggregate_id} cannot be read: {event} is unreadable ({reason});"
                         " nothing is recorded on it until an operator mends it; retry later")
