"""The event store writes each state as the same bytes as the eventsourcing library's JSON transcoder.

`InboxTranscoder` lets orjson write the states it writes identically and leaves the rest to the
library's encoder: whatever the value (floats, UUIDs, tuples, deep nesting, odd characters), the
stored bytes do not change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder
from hypothesis import given
from hypothesis import strategies as st

from domain.channels import Channel
from domain.room import Room
from inbox.adapters.eventstore import InboxTranscoder


def transcoders() -> tuple[JSONTranscoder, JSONTranscoder]:
    library, ours = JSONTranscoder(), InboxTranscoder()
    for transcoder in (library, ours):
        Application().register_transcodings(transcoder)
    return library, ours


LIBRARY, OURS = transcoders()

text = st.text(st.characters(blacklist_categories=("Cs",)))
leaves = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | text
    | st.floats(allow_nan=True, allow_infinity=True) | st.uuids() | st.decimals(allow_nan=False)
    | st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=7)), None]))
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(text, values, max_size=8))
def test_any_state_is_written_as_the_librarys_json_transcoder_writes_it(state: dict[str, Any]) -> None:
    assert OURS.encode(state) == LIBRARY.encode(state)


def test_room_events_and_snapshots_are_written_as_the_library_writes_them() -> None:
    at = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    room = Room.open(org_id="org-1", channel=Channel.WHATSAPP_CLOUD, channel_account_id="account-1",
                     channel_account="1065403", contact_id="628111", contact_name="Siti \u2028 \"quoted\" \x1f")
    room.receive(channel_message_id="wamid.1", text="Halo 🙏\n", sent_at=at, kind="location",
                 attachments=[{"type": "location", "latitude": -6.2, "longitude": 1e-05, "name": None}])
    room.receive(channel_message_id="wamid.2", text="x" * 1000, sent_at=at + timedelta(seconds=1))
    library, ours = (app.mapper for app in (Application(), Application()))
    ours.transcoder = OURS
    for event in [*room.collect_events(), Room.Snapshot.take(room)]:
        assert ours.to_stored_event(event).state == library.to_stored_event(event).state


def test_a_value_only_the_librarys_encoder_refuses_is_still_refused() -> None:
    for state in ({"x": Decimal("1.5"), "y": {1: "int key"}}, {"n": 2**80}, {"s": "\ud800"}):
        try:
            expected: Any = LIBRARY.encode(state)
        except Exception as e:  # noqa: BLE001 - the library's own verdict, whatever it is
            expected = type(e)
        try:
            got: Any = OURS.encode(state)
        except Exception as e:  # noqa: BLE001
            got = type(e)
        assert got == expected
