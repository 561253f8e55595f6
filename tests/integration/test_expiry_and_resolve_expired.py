"""When a room expires (SPEC §2) and "Resolve all expired", through the HTTP API on real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from domain.room import Room
from domain.staff import Actor, Role
from inbox.adapters.eventstore import EventStore
from inbox.usecases.expiry import ExpiredRooms
from inbox.adapters.read_models.queries import InboxQueries
from tests.integration.inbox_helpers import NOW, OLD, Inbox, agent, spv
from tests.support import counters_table, recount

pytestmark = pytest.mark.integration


# ---- expiry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("channel", ["whatsapp_cloud", "instagram", "facebook_messenger"])
def test_expires_at_is_the_last_inbound_channel_timestamp_plus_24h(inbox: Inbox, channel: str) -> None:
    sent = datetime(2026, 1, 5, 8, 30, tzinfo=UTC)
    inbox.inbound(channel, "c1", at=sent)
    inbox.inbound(channel, "c1", at=sent - timedelta(hours=3))  # a late, older message: no change
    inbox.project()

    [room] = inbox.rooms()
    assert datetime.fromisoformat(room["expires_at"]) == sent + timedelta(hours=24) and room["expired"] is True


@pytest.mark.parametrize("channel", ["instagram_comment", "facebook_comment"])
def test_comment_rooms_never_expire(inbox: Inbox, channel: str) -> None:
    inbox.inbound(channel, "c1", at=NOW - timedelta(days=30))
    inbox.project()

    [room] = inbox.rooms()
    assert room["expires_at"] is None and room["expired"] is False


# ---- resolve all expired ------------------------------------------------------------------------------
@pytest.fixture
def expiring(inbox: Inbox) -> dict[str, str]:
    rooms = {
        "wa_assigned": inbox.inbound("whatsapp_cloud", "62811", at=OLD)["room_id"],
        "wa_unassigned": inbox.inbound("whatsapp_cloud", "62812", at=OLD)["room_id"],
        "wa_fresh": inbox.inbound("whatsapp_cloud", "62813")["room_id"],
        "ig_assigned": inbox.inbound("instagram", "ig-1", at=OLD)["room_id"],
        "fb_unassigned": inbox.inbound("facebook_messenger", "psid-1", at=OLD)["room_id"],
        "comment": inbox.inbound("instagram_comment", "ig-1", at=OLD)["room_id"],
    }
    for key in ("wa_assigned", "ig_assigned", "wa_fresh"):
        assert inbox.post(f"/v1/rooms/{rooms[key]}/assign", spv(inbox), {"agent_id": "agent1"}).status_code == 200
    inbox.project()
    return rooms


def last_event(inbox: Inbox, room_id: str) -> object:
    return list(inbox.container.event_store.events.get(UUID(room_id)))[-1]


def test_only_admins_and_supervisors_resolve_expired_rooms(inbox: Inbox, expiring: dict[str, str]) -> None:
    r = inbox.post("/v1/rooms/resolve-expired", agent(inbox), {"channels": ["whatsapp_cloud"]})
    assert r.status_code == 403 and "supervisors and admins" in r.json()["detail"]
    assert inbox.post("/v1/rooms/resolve-expired", inbox.headers("integration", "bridge"), {}).status_code == 403
    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"channels": ["telegram"]}).status_code == 422


def test_resolve_expired_resolves_assigned_expired_rooms_of_the_channels_only(inbox: Inbox,
                                                                             expiring: dict[str, str]) -> None:
    r = inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"channels": ["whatsapp_cloud"]})

    assert r.status_code == 200 and r.json() == {"resolved": 1, "skipped": 0, "unreadable": []}
    inbox.project()
    assert set(inbox.room_ids(status="resolved")) == {expiring["wa_assigned"]}
    resolved = last_event(inbox, expiring["wa_assigned"])
    assert isinstance(resolved, Room.RoomResolved) and resolved.reason == "expired" and resolved.resolved_by == "spv1"


def test_resolve_expired_with_unassigned_and_every_channel(inbox: Inbox, expiring: dict[str, str]) -> None:
    r = inbox.post("/v1/rooms/resolve-expired", inbox.admin, {"include_unassigned": True})

    assert r.json()["resolved"] == 4
    inbox.project()
    assert set(inbox.room_ids(status="resolved")) == {
        expiring["wa_assigned"], expiring["wa_unassigned"], expiring["ig_assigned"], expiring["fb_unassigned"]}
    assert inbox.room_ids(expired=True) == []
    assert inbox.get(f"/v1/rooms/{expiring['comment']}")["status"] == "unassigned"  # comments never expire
    assert inbox.get(f"/v1/rooms/{expiring['wa_fresh']}")["status"] == "assigned"
    assert counters_table(inbox.settings) == recount(inbox.settings)


def test_resolve_expired_is_safe_to_repeat(inbox: Inbox, expiring: dict[str, str]) -> None:
    body = {"channels": ["whatsapp_cloud", "instagram", "facebook_messenger"], "include_unassigned": True}
    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), body).json()["resolved"] == 4
    # Even before the projection catches up, a repeat finds the rooms changed and leaves them.
    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), body).json() == {"resolved": 0, "skipped": 4, "unreadable": []}
    inbox.project()
    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), body).json() == {"resolved": 0, "skipped": 0, "unreadable": []}


def test_resolve_expired_skips_a_room_that_received_a_message_after_the_query_saw_it(
    inbox: Inbox, expiring: dict[str, str]
) -> None:
    # The customer writes again (an old, late-delivered message: the room is still expired) and
    # the projection has not seen it yet: the projected version is no longer the room's version.
    inbox.inbound("whatsapp_cloud", "62811", at=OLD + timedelta(minutes=1), text="halo? masih ada?")

    r = inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"channels": ["whatsapp_cloud"]})

    assert r.json() == {"resolved": 0, "skipped": 1, "unreadable": []}
    inbox.project()
    room = inbox.get(f"/v1/rooms/{expiring['wa_assigned']}")
    assert (room["status"], room["awaiting_reply"]) == ("assigned", True)
    # Once the projection shows the message (and the room is still expired) a repeat resolves it.
    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"channels": ["whatsapp_cloud"]}).json()["resolved"] == 1


def test_a_chunk_that_races_with_an_inbound_message_still_resolves_the_other_rooms(
    inbox: Inbox, expiring: dict[str, str]
) -> None:
    app = inbox.container.event_store
    real_save = app.save
    raced: list[str] = []

    def save_after_a_customer_writes(*aggregates: Any, **kwargs: Any) -> Any:
        if len(aggregates) > 1 and not raced:  # the chunk's transaction: a customer wrote meanwhile
            raced.append("wa")
            inbox.inbound("whatsapp_cloud", "62812", at=OLD + timedelta(minutes=1), text="halo?")
        return real_save(*aggregates, **kwargs)

    app.save = save_after_a_customer_writes  # type: ignore[method-assign]
    service = ExpiredRooms(EventStore(app), InboxQueries(inbox.container.read_pool).expired_rooms)

    result = service.resolve_expired(Actor("spv1", "org1", Role.SUPERVISOR), include_unassigned=True)

    assert raced and (result.resolved, result.skipped) == (3, 1)
    inbox.project()
    assert inbox.get(f"/v1/rooms/{expiring['wa_unassigned']}")["status"] == "unassigned"
    assert set(inbox.room_ids(status="resolved")) == {
        expiring["wa_assigned"], expiring["ig_assigned"], expiring["fb_unassigned"]}


def test_resolve_expired_works_through_more_rooms_than_one_chunk(inbox: Inbox) -> None:
    for i in range(7):
        inbox.inbound("whatsapp_cloud", f"6281{i}", at=OLD - timedelta(minutes=i))
    inbox.project()
    service = ExpiredRooms(EventStore(inbox.container.event_store), InboxQueries(inbox.container.read_pool).expired_rooms, chunk_size=2)

    result = service.resolve_expired(Actor("admin1", "org1", Role.ADMIN), include_unassigned=True)

    assert (result.resolved, result.skipped) == (7, 0)


def test_the_resolved_rooms_are_cached_as_recorded_for_the_next_inbound_batch(
    inbox: Inbox, expiring: dict[str, str]
) -> None:
    """The chunk's read caches its rooms in the process's write cache; once resolved, the cache
    holds them as saved, not as read (the next inbound message's optimistic write would fail)."""
    store = inbox.container.expired._store
    assert isinstance(store, EventStore)

    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"channels": ["whatsapp_cloud"]}).json()["resolved"] == 1

    room_id = UUID(expiring["wa_assigned"])
    cached = store._rooms[room_id]
    assert cached.status == "resolved" and cached.version == inbox.container.event_store.repository.get(room_id).version
