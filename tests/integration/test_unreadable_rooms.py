"""A room whose recorded history cannot be read (a corrupt stored event, or a type this code does
not know, e.g. after a deploy was rolled back): nothing can be decided on it, the rest goes on.

Inbound for it and commands on it are answered 503 + Retry-After naming the room (never a 500:
the sender retries, and its retry is recorded once the row is mended); "resolve all expired"
leaves it, reports it and resolves the others.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest

from domain.room import Room
from tests.integration.inbox_helpers import OLD, Inbox, spv
from tests.integration.test_dead_letters import (
    store_unreadable_event as store_unreadable_row,
)
from tests.support import execute, query

pytestmark = pytest.mark.integration


def store_unreadable_event(inbox: Inbox, room_id: str) -> int:
    """The room's next event, stored as a row the code cannot decode; returns its version."""
    version = len(list(inbox.container.event_store.events.get(UUID(room_id)))) + 1
    store_unreadable_row(inbox.settings, room_id, version)
    return version


def mend(inbox: Inbox, room_id: str, version: int) -> None:
    """What an operator does once the cause is known (here: the row is removed)."""
    execute(inbox.settings, "DELETE FROM inbox_events WHERE originator_id = %s AND originator_version = %s",
            (room_id, version))


def inbound_body(inbox: Inbox, contact: str, mid: str) -> dict[str, object]:
    return {"channel": "whatsapp_cloud", "channel_account": inbox.accounts["whatsapp_cloud"],
            "contact": {"id": contact}, "message": {"id": mid, "text": "halo", "sent_at": datetime.now(UTC).isoformat()}}


def test_inbound_for_a_room_that_cannot_be_read_is_answered_503_naming_it_and_recorded_once_mended(
    inbox: Inbox,
) -> None:
    room = inbox.inbound("whatsapp_cloud", "62811")["room_id"]
    version = store_unreadable_event(inbox, room)
    bridge = inbox.headers("integration", "bridge")

    r = inbox.client.post("/v1/inbound-messages", headers=bridge, json=inbound_body(inbox, "62811", "after"))

    assert r.status_code == 503, r.text
    assert room in r.json()["detail"] and "cannot be read" in r.json()["detail"]
    assert int(r.headers["Retry-After"]) > 0
    # Every other room still takes messages.
    assert inbox.inbound("whatsapp_cloud", "62812")["room_id"] != room

    mend(inbox, room, version)
    r = inbox.client.post("/v1/inbound-messages", headers=bridge, json=inbound_body(inbox, "62811", "after"))
    assert r.status_code == 202, r.text
    assert r.json()["room_id"] == room


def test_a_command_on_a_room_that_cannot_be_read_is_answered_503_naming_it(inbox: Inbox) -> None:
    room = inbox.inbound("whatsapp_cloud", "62811")["room_id"]
    store_unreadable_event(inbox, room)

    r = inbox.post(f"/v1/rooms/{room}/assign", spv(inbox), {"agent_id": "agent1"})

    assert r.status_code == 503, r.text
    assert room in r.json()["detail"] and "Retry-After" in r.headers


def test_resolve_expired_leaves_a_room_it_cannot_read_reports_it_and_resolves_the_others(inbox: Inbox) -> None:
    unreadable = inbox.inbound("whatsapp_cloud", "62811", at=OLD)["room_id"]
    readable = inbox.inbound("whatsapp_cloud", "62812", at=OLD)["room_id"]
    inbox.project()
    bad_version = store_unreadable_event(inbox, unreadable)

    r = inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"include_unassigned": True})

    assert r.status_code == 200, r.text
    assert r.json() == {"resolved": 1, "skipped": 0, "unreadable": [unreadable]}
    assert isinstance(list(inbox.container.event_store.events.get(UUID(readable)))[-1], Room.RoomResolved)
    assert query(inbox.settings, "SELECT max(originator_version) FROM inbox_events WHERE originator_id = %s",
                 (unreadable,)) == [(bad_version,)]  # nothing written after the row it cannot read

    mend(inbox, unreadable, bad_version)
    inbox.project()
    r = inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"include_unassigned": True})
    assert r.json() == {"resolved": 1, "skipped": 0, "unreadable": []}
