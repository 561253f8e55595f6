"""Reads the event store as SPEC §4 wire events: the relay, replay and gap repair share it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder, StoredEvent
from eventsourcing.utils import resolve_topic

from inbox.adapters.eventstore import InboxApplication
from inbox.adapters.postgres import is_transient
from domain.room import Room
from inbox.adapters.wire import ROOM_EVENT_TYPES, SCHEMA_VERSION, event_id, to_wire

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


# The library's transcodings the lean decoder knows; a store registering others is read through `_fast_wire`.
_LEAN_TRANSCODINGS = frozenset({"uuid_hex", "decimal_str", "datetime_iso"})
_ROOM_EVENTS: dict[str, tuple[str, int, bool]] = {}  # topic → (wire type, class version, carries org_id in data)


def _room_event(topic: str) -> tuple[str, int, bool]:
    if (spec := _ROOM_EVENTS.get(topic)) is None:
        cls = _event_class(topic)
        spec = _ROOM_EVENTS[topic] = (ROOM_EVENT_TYPES[cls], getattr(cls, "class_version", 1), cls is Room.RoomOpened)
    return spec


def _lean_wire(row: tuple[int, str, int, str, bytes], *, folding: bool = False) -> dict[str, Any] | None:
    """`to_wire(decode(row))` straight from the stored JSON, for the common case: a state at its
    class's current version whose transcoded values are top-level datetimes and UUIDs. Anything
    else (an older class version to upcast, a transcoded value nested in a list or dict, a decimal,
    a state orjson reads differently from the stdlib) returns None: the caller takes `_fast_wire`,
    the library's rules. Equal to the library decode + `to_wire` (tests/integration/test_event_log.py).

    `folding`: for a reader that folds the events at once (the replay), two things it does not
    need are left undone: the times (`occurred_at` and the data's) stay the datetimes they were
    parsed into instead of ISO text (the projections take either, `projections.times.as_datetime`;
    each time would otherwise be formatted here and parsed again by each fold), and there is no
    "id" (a hash per event; only a dead letter needs it, `writer.wire_id` computes it then).
    """
    _, room_id, version, topic, raw = row
    kind, class_version, org_in_data = _room_event(topic)
    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(state) is not dict or state.pop("class_version", 1) != class_version:
        return None
    timestamp = state.pop("timestamp", None)
    if type(timestamp) is not dict or timestamp.get("_type_") != "datetime_iso" or len(timestamp) != 2:
        return None
    state.pop("originator_topic", None)
    org_id = state.get("org_id") if org_in_data else state.pop("org_id", _MISSING)
    if org_id is _MISSING or "originator_id" in state or "originator_version" in state:
        return None
    transcoded = 1
    for key, value in state.items():
        if type(value) is dict and "_type_" in value:
            if len(value) != 2 or "_data_" not in value or type(value["_data_"]) is not str:
                return None
            name = value["_type_"]
            if name == "datetime_iso":
                at = datetime.fromisoformat(value["_data_"])
                state[key] = at if folding else at.isoformat()
            elif name == "uuid_hex":
                state[key] = str(UUID(value["_data_"]))
            else:
                return None
            transcoded += 1
    if raw.count(b'"_type_"') != transcoded:  # one nested deeper: the library revives it into an object
        return None
    occurred = datetime.fromisoformat(timestamp["_data_"])
    if folding:
        return {"type": kind, "schema_version": SCHEMA_VERSION, "org_id": org_id, "room_id": room_id,
                "version": version, "occurred_at": occurred, "data": state}
    return {
        "id": event_id(room_id, version),
        "type": kind,
        "schema_version": SCHEMA_VERSION,
        "org_id": org_id,
        "room_id": room_id,
        "version": version,
        "occurred_at": occurred.isoformat(),
        "data": state,
    }


_MISSING = object()


class WireEventLog:
    """Sync reader over the event store; call it from a thread when on an event loop."""

    def __init__(self, event_store: InboxApplication) -> None:
        self._event_store = event_store

    def close(self) -> None:
        """Close the event store it reads (the bootstrap opens one per reader)."""
        self._event_store.close()

    def read(
        self, after: int, limit: int, unreadable: list[Unreadable] | None = None, *,
        stop: int | None = None, share: tuple[int, int] | None = None, folding: bool = False,
    ) -> tuple[LogPage, int]:
        """Notifications with id > after, at most `limit`; returns (page, number of rows read).

        `stop`: none after that id; the page's `last_id` is `stop` once everything up to it is read.
        `share` = (k, n), with `stop`: only the rooms of the k-th of n disjoint shares
        (`InboxRecorder.select_notification_rows`), for n readers folding rooms side by side; a page
        is then the share's rows among the next `limit` * n notifications.

        With `unreadable`, a stored event that cannot be turned into a wire event (it cannot be
        decoded, or its room has no `RoomOpened`) is left out of the page and appended there, so
        the caller records it and goes on; without it, the error propagates. Transient database
        errors always propagate.

        `folding`: for a reader that folds the events itself: their times may be datetimes rather
        than ISO text, and they may have no "id" (`_lean_wire`); never for events that leave the
        process.
        """
        recorder = self._event_store.recorder
        if not hasattr(recorder, "select_notification_rows"):  # not the PostgreSQL store
            if share is not None:
                raise ValueError("reading a share of the rooms needs the PostgreSQL event store")
            notifications = recorder.select_notifications(start=after, limit=limit, stop=stop, inclusive_of_start=False)
            rows = [(n.id, str(n.originator_id), n.originator_version, n.topic, n.state) for n in notifications]
        elif share is not None:
            if stop is None:
                raise ValueError("reading a share of the rooms needs a stop")
            stop = min(stop, after + limit * share[1])
            rows = recorder.select_notification_rows(after, None, stop=stop, share=share)
        else:
            rows = recorder.select_notification_rows(after, limit, stop=stop)
        if stop is not None and (share is not None or len(rows) < limit):
            last_id = stop  # read up to there
        else:
            last_id = rows[-1][0] if rows else after
        room_rows = [r for r in rows if r[3].startswith(ROOM_TOPIC_PREFIX)]
        events: list[tuple[int, dict[str, Any]]] = []
        lean = self._lean_decoding()
        for row in room_rows:
            try:
                event = _lean_wire(row, folding=folding) if lean else None
                events.append((row[0], event if event is not None else self._wire(row)))
            except Exception as e:
                if unreadable is None or is_transient(e):
                    raise
                n, room_id, version, topic, state = row
                unreadable.append(Unreadable(n, room_id, version, topic, bytes(state), e))
        return LogPage(events, last_id), len(rows)

    def _lean_decoding(self) -> bool:
        """The stored states are the library's plain JSON (no cipher, no compression): `_lean_wire` reads them."""
        mapper = self._event_store.mapper
        return mapper.cipher is None and mapper.compressor is None and isinstance(mapper.transcoder, JSONTranscoder) \
            and set(mapper.transcoder.names) <= _LEAN_TRANSCODINGS

    def _wire(self, row: tuple[int, str, int, str, bytes]) -> dict[str, Any]:
        n, room_id, version, topic, state = row
        return self._to_wire([StoredEvent(UUID(room_id), version, topic, bytes(state))])[0]

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
        A state orjson refuses (NaN, lone surrogates) goes through the library
        (`tests/integration/test_projections.py` compares). orjson would read an integer beyond 64
        bits as a float without an error; the domain never writes one (`domain.limits.check_json`
        refuses them in every free-form field of an event).
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
