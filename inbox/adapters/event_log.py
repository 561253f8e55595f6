"""Reads the event store as SPEC §4 wire events: the relay, replay and gap repair share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder, Notification, StoredEvent
from eventsourcing.utils import resolve_topic

from inbox.adapters.eventstore import InboxApplication
from inbox.adapters.postgres import is_transient
from inbox.adapters.wire import to_wire

ROOM_TOPIC_PREFIX = "domain.room:Room."


@dataclass
class LogPage:
    events: list[tuple[int, dict[str, Any]]]  # (notification id, wire event) for room events
    last_id: int  # the last notification id read, room event or not

    def __len__(self) -> int:
        return len(self.events)


@dataclass(frozen=True)
class Unreadable:
    """A stored room event that could not be turned into a wire event, and why."""

    notification_id: int
    room_id: str
    version: int
    topic: str
    state: bytes
    error: BaseException

    @property
    def reason(self) -> str:
        return f"{type(self.error).__name__}: {self.error}".replace("\x00", "\\0")


def _revive(value: Any, transcodings: dict[str, Any]) -> Any:
    """The library's JSON object hook, applied bottom-up to an orjson-parsed value."""
    if type(value) is dict:
        for k, v in value.items():
            if type(v) is dict or type(v) is list:
                value[k] = _revive(v, transcodings)
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            return transcodings[value["_type_"]].decode(value["_data_"])
        return value
    if type(value) is list:
        return [_revive(v, transcodings) if type(v) is dict or type(v) is list else v for v in value]
    return value


_EVENT_CLASSES: dict[str, type] = {}


def _event_class(topic: str) -> type:
    if (cls := _EVENT_CLASSES.get(topic)) is None:
        cls = _EVENT_CLASSES[topic] = resolve_topic(topic)
    return cls


class WireEventLog:
    """Sync reader over the event store; call it from a thread when on an event loop."""

    def __init__(self, event_store: InboxApplication) -> None:
        self._event_store = event_store

    def close(self) -> None:
        """Close the event store it reads (the bootstrap opens one per reader)."""
        self._event_store.close()

    def read(self, after: int, limit: int, unreadable: list[Unreadable] | None = None) -> tuple[LogPage, int]:
        """Notifications with id > after, at most `limit`; returns (page, number of rows read).

        With `unreadable`, a stored event that cannot be turned into a wire event (it cannot be
        decoded, or its room has no `RoomOpened`) is left out of the page and appended there, so
        the caller records it and goes on; without it, the error propagates. Transient database
        errors always propagate.
        """
        notifications = self._event_store.recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False
        )
        last_id = notifications[-1].id if notifications else after
        room_rows = [n for n in notifications if n.topic.startswith(ROOM_TOPIC_PREFIX)]
        try:
            events = self._to_wire(room_rows)
        except Exception as e:
            if unreadable is None or is_transient(e):
                raise
            room_rows, events = self._to_wire_one_by_one(room_rows, unreadable)
        return LogPage([(n.id, e) for n, e in zip(room_rows, events, strict=True)], last_id), len(notifications)

    def _to_wire_one_by_one(
        self, rows: list[Notification], unreadable: list[Unreadable]
    ) -> tuple[list[Notification], list[dict[str, Any]]]:
        kept, events = [], []
        for n in rows:
            try:
                events.extend(self._to_wire([n]))
                kept.append(n)
            except Exception as e:
                if is_transient(e):
                    raise
                unreadable.append(Unreadable(n.id, str(n.originator_id), n.originator_version, n.topic, n.state, e))
        return kept, events

    def room_events(self, room_id: str, first_version: int, last_version: int) -> list[dict[str, Any]]:
        stored = self._event_store.recorder.select_events(
            UUID(room_id), gt=first_version - 1, lte=last_version
        )
        return self._to_wire(stored)

    def max_notification_id(self) -> int:
        return self._event_store.recorder.max_notification_id() or 0

    def _to_wire(self, rows: list[StoredEvent]) -> list[dict[str, Any]]:
        """Each room event carries its room's org_id (older stored ones are upcast): no lookup."""
        mapper = self._event_store.mapper
        if mapper.cipher is not None or mapper.compressor is not None or not isinstance(mapper.transcoder, JSONTranscoder):
            return [to_wire(self._event_store.decode(r)) for r in rows]
        return [self._fast_wire(r, mapper.transcoder) for r in rows]

    def _fast_wire(self, row: StoredEvent, transcoder: JSONTranscoder) -> dict[str, Any]:
        """`to_wire(decode(row))`, the same dict, without the library's JSON decoder and event object.

        The stored state is parsed with orjson and revived as the library's decoder hook does
        (every {"_type_", "_data_"} object through its registered transcoding), upcast by the
        event class's own `upcast_v*` methods, then turned into a wire event by `to_wire`'s rules.
        A state orjson reads differently from the stdlib (NaN, integers over 64 bits, lone
        surrogates) goes through the library (`tests/integration/test_projections.py` compares).
        """
        try:
            state = _revive(orjson.loads(row.state), transcoder.names)
        except Exception:
            return to_wire(self._event_store.decode(row))
        cls = _event_class(row.topic)
        state["originator_id"] = row.originator_id if isinstance(row.originator_id, UUID) else UUID(row.originator_id)
        state["originator_version"] = row.originator_version
        version = state.pop("class_version", 1)
        while version < getattr(cls, "class_version", 1):
            getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
            version += 1
        event = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return to_wire(event)
