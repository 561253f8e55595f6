"""Reads the event store as SPEC §4 wire events: the relay, replay and gap repair share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from inbox.eventstore import InboxApplication
from inbox.wire import to_wire

ROOM_TOPIC_PREFIX = "domain.room:Room."


@dataclass
class LogPage:
    events: list[tuple[int, dict[str, Any]]]  # (notification id, wire event) for room events
    last_id: int  # the last notification id read, room event or not

    def __len__(self) -> int:
        return len(self.events)


class WireEventLog:
    """Sync reader over the event store; call it from a thread when on an event loop."""

    def __init__(self, app: InboxApplication) -> None:
        self._app = app

    def read(self, after: int, limit: int) -> tuple[LogPage, int]:
        """Notifications with id > after, at most `limit`; returns (page, number of rows read)."""
        notifications = self._app.recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False
        )
        last_id = notifications[-1].id if notifications else after
        room_rows = [n for n in notifications if n.topic.startswith(ROOM_TOPIC_PREFIX)]
        events = self._to_wire(room_rows)
        return LogPage([(n.id, e) for n, e in zip(room_rows, events, strict=True)], last_id), len(notifications)

    def room_events(self, room_id: str, first_version: int, last_version: int) -> list[dict[str, Any]]:
        stored = self._app.recorder.select_events(
            UUID(room_id), gt=first_version - 1, lte=last_version
        )
        return self._to_wire(stored)

    def max_notification_id(self) -> int:
        return self._app.recorder.max_notification_id() or 0

    def _to_wire(self, rows: list[StoredEvent]) -> list[dict[str, Any]]:
        """Each room event carries its room's org_id (older stored ones are upcast): no lookup."""
        return [to_wire(self._app.decode(r)) for r in rows]
