"""Room events stored before every event carried `org_id` are read with it after `inbox migrate`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from eventsourcing.persistence import StoredEvent

from domain.channels import Channel
from domain.room import Room
from domain.staff import Actor, Role
from inbox.config import Settings
from inbox.adapters.schema import migrate
from inbox.adapters.event_log import WireEventLog
from inbox.adapters.eventstore import InboxApplication, stamp_org_ids
from inbox.bootstrap import open_event_store

pytestmark = pytest.mark.integration

ORG = "org-legacy"
SPV = Actor("spv-1", ORG, Role.SUPERVISOR)


@pytest.fixture
def app(db_settings: Settings) -> Iterator[InboxApplication]:
    a = open_event_store(db_settings)
    yield a
    a.close()


def _room_events() -> list[object]:
    room = Room.open(
        org_id=ORG, channel=Channel.WHATSAPP_CLOUD, channel_account_id="acc-1", channel_account="6281",
        contact_id="c-1",
    )
    room.receive(channel_message_id="wamid.1", text="halo", sent_at=datetime(2026, 1, 5, 9, tzinfo=UTC))
    room.assign(SPV, agent_id="agent-1")
    return list(room.collect_events())


def _as_stored_before_org_ids(app: InboxApplication, domain_event: object) -> StoredEvent:
    """The stored shape of the first release: org_id only in RoomOpened, messages of class v1."""
    stored = app.mapper.to_stored_event(domain_event)  # type: ignore[arg-type]
    if type(domain_event) is Room.RoomOpened:
        return stored
    state = orjson.loads(stored.state)
    for key in ("org_id", "kind", "attachments", "class_version"):
        state.pop(key, None)
    return StoredEvent(stored.originator_id, stored.originator_version, stored.topic, orjson.dumps(state))


def test_events_stored_without_org_id_are_read_with_their_rooms_org_after_migrate(
    db_settings: Settings, app: InboxApplication
) -> None:
    app.recorder.insert_events([_as_stored_before_org_ids(app, e) for e in _room_events()])

    migrate(db_settings)

    page, _ = WireEventLog(app).read(0, 100)
    wire = [e for _, e in page.events]
    assert [e["type"] for e in wire] == ["RoomOpened", "MessageReceived", "RoomAssigned"]
    assert {e["org_id"] for e in wire} == {ORG}
    assert "org_id" not in wire[1]["data"] and "org_id" not in wire[2]["data"]  # the wire contract is unchanged
    assert (wire[1]["data"]["kind"], wire[1]["data"]["attachments"]) == ("text", [])


def test_stamping_finds_nothing_to_do_when_events_already_carry_org_id(app: InboxApplication) -> None:
    app.save(*_room_events())  # type: ignore[arg-type]

    assert stamp_org_ids(app) == 0
