"""The event log's lean decoder (`_lean_wire`, what replay and the relay read with) gives exactly the
library's decode + `to_wire` for every room event type, or declines (None) and leaves the event to
the library's rules: older class versions (upcasts), transcoded values nested in lists or dicts,
transcodings it does not know."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent

from inbox.adapters.event_log import _lean_wire
from inbox.adapters.wire import EVENT_TYPE_NAMES, to_wire
from projections.times import as_datetime
from tests.unit.test_event_schemas import domain_events

Row = tuple[int, str, int, str, bytes]


@pytest.fixture(scope="module")
def app() -> Iterator[Application]:
    app = Application()
    yield app
    app.close()


def stored_rows(app: Application) -> list[StoredEvent]:
    return [app.mapper.to_stored_event(e) for e in domain_events()]


def row(stored: StoredEvent, state: bytes | None = None) -> Row:
    return (1, str(stored.originator_id), stored.originator_version, stored.topic, stored.state if state is None else state)


def library(app: Application, stored: StoredEvent, state: bytes | None = None) -> dict[str, Any]:
    if state is not None:
        stored = StoredEvent(stored.originator_id, stored.originator_version, stored.topic, state)
    return to_wire(app.mapper.to_domain_event(stored))


def test_every_event_type_at_its_current_version_decodes_as_the_library_does(app: Application) -> None:
    stored = stored_rows(app)
    lean = [_lean_wire(row(s)) for s in stored]

    assert {e["type"] for e in lean if e is not None} == EVENT_TYPE_NAMES
    assert lean == [library(app, s) for s in stored]
    # The same JSON too, key order included (the relay publishes these bytes).
    assert [orjson.dumps(e) for e in lean] == [orjson.dumps(library(app, s)) for s in stored]


def test_for_a_fold_it_leaves_out_the_id_and_keeps_the_times_as_the_datetimes_they_stand_for(app: Application) -> None:
    for s in stored_rows(app):
        wire = library(app, s)
        folding = _lean_wire(row(s), folding=True)
        assert folding is not None and "id" not in folding
        assert isinstance(folding["occurred_at"], datetime)
        as_text = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in folding.items()}
        as_text["data"] = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in folding["data"].items()}
        assert {"id": wire["id"], **as_text} == wire
        assert as_datetime(folding["occurred_at"]) == as_datetime(wire["occurred_at"])  # what a fold reads


def test_older_class_versions_are_left_to_the_library_upcasts(app: Application) -> None:
    older = 0
    for s in stored_rows(app):
        cls = type(app.mapper.to_domain_event(s))
        state = orjson.loads(s.state)
        for version in range(1, getattr(cls, "class_version", 1)):
            if version == 1:
                state.pop("class_version", None)
            else:
                state["class_version"] = version
            assert _lean_wire(row(s, orjson.dumps(state))) is None
            older += 1
    assert older


def _received(app: Application) -> StoredEvent:
    return next(s for s in stored_rows(app) if s.topic.endswith(".MessageReceived"))


def test_a_transcoded_value_nested_in_a_list_or_unknown_is_left_to_the_library(app: Application) -> None:
    s = _received(app)
    nested = orjson.loads(s.state)
    nested["attachments"] = [{"at": {"_type_": "datetime_iso", "_data_": "2024-05-01T09:00:00+00:00"}}]
    decimal = orjson.loads(s.state)
    decimal["text"] = {"_type_": "decimal_str", "_data_": "1.5"}

    for state in (nested, decimal):
        assert _lean_wire(row(s, orjson.dumps(state))) is None
    assert library(app, s, orjson.dumps(nested))["data"]["attachments"][0]["at"].year == 2024  # revived by the library


def test_text_quoting_the_transcoding_markers_and_non_canonical_times_decode_as_the_library_does(
    app: Application,
) -> None:
    s = _received(app)
    state = orjson.loads(s.state)
    state["text"] = '{"_type_": "datetime_iso", "_data_": "x"}'
    state["sent_at"] = {"_type_": "datetime_iso", "_data_": "2024-05-01T09:00:00.000+07:00"}  # isoformat says .000 away
    raw = orjson.dumps(state)

    assert _lean_wire(row(s, raw)) == library(app, s, raw)
    assert _lean_wire(row(s, raw))["data"]["sent_at"] == "2024-05-01T09:00:00+07:00"  # type: ignore[index]


def test_what_orjson_reads_differently_from_the_stdlib_is_left_to_the_library(app: Application) -> None:
    s = _received(app)
    for raw in (s.state.replace(b'"text":"', b'"text":NaN,"x":"'), b"\xffnot json", b"[1, 2]"):
        assert _lean_wire(row(s, raw)) is None


def test_room_opened_keeps_its_org_id_in_data_and_others_only_in_the_envelope(app: Application) -> None:
    lean = {e["type"]: e for e in (_lean_wire(row(s)) for s in stored_rows(app)) if e is not None}

    assert lean["RoomOpened"]["data"]["org_id"] == lean["RoomOpened"]["org_id"]
    assert "org_id" not in lean["MessageReceived"]["data"] and lean["MessageReceived"]["org_id"]
