"""SPEC §2–§3 inbox rules through the HTTP API on real PostgreSQL (projections applied directly).

Tabs and statuses, role visibility and assignment rules, badges, list filters, ordering and
cursors, history, expiry and "Resolve all expired".
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from domain.room import Room
from domain.staff import Actor, Role
from inbox.config import Settings
from inbox.expiry import ExpiredRooms
from projections.queries import InboxQueries
from tests.integration.inbox_helpers import Inbox, running_inbox
from tests.support import counters_table, recount

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
OLD = NOW - timedelta(hours=30)  # outside the 24 h window


@pytest.fixture
def inbox(db_settings: Settings) -> Iterator[Inbox]:
    with running_inbox(db_settings) as i:
        yield i


def agent(inbox: Inbox, user: str = "agent1") -> dict[str, str]:
    return inbox.headers("agent", user)


def spv(inbox: Inbox) -> dict[str, str]:
    return inbox.headers("supervisor", "spv1")


def statuses(inbox: Inbox, headers: dict[str, str] | None = None, **params: Any) -> dict[str, set[str]]:
    return {s: set(inbox.room_ids(headers, status=s, **params)) for s in ("all", "unassigned", "assigned", "resolved")}


# ---- tabs and statuses ----------------------------------------------------------------------------
def test_direct_messages_are_in_the_messages_tab_and_comments_in_the_comments_tab(inbox: Inbox) -> None:
    wa = inbox.inbound("whatsapp_cloud", "62811")["room_id"]
    ig = inbox.inbound("instagram", "ig-user")["room_id"]
    fb = inbox.inbound("facebook_messenger", "psid-1")["room_id"]
    igc = inbox.inbound("instagram_comment", "ig-user", post="post-A")["room_id"]
    fbc = inbox.inbound("facebook_comment", "fb-user", post="post-B")["room_id"]
    inbox.project()

    assert set(inbox.room_ids(tab="messages")) == {wa, ig, fb}
    assert set(inbox.room_ids(tab="comments")) == {igc, fbc}
    assert {r["tab"] for r in inbox.rooms(tab="comments")} == {"comments"}


def test_one_contact_under_two_posts_is_two_comment_rooms(inbox: Inbox) -> None:
    a = inbox.inbound("instagram_comment", "ig-user", post="post-A")["room_id"]
    b = inbox.inbound("instagram_comment", "ig-user", post="post-B")["room_id"]
    again = inbox.inbound("instagram_comment", "ig-user", post="post-A")["room_id"]
    inbox.project()

    assert a != b and again == a
    assert set(inbox.room_ids(tab="comments")) == {a, b}


def test_status_lists_follow_the_room_lifecycle(inbox: Inbox) -> None:
    waiting = inbox.inbound("whatsapp_cloud", "62811")["room_id"]
    taken = inbox.inbound("whatsapp_cloud", "62812")["room_id"]
    replied = inbox.inbound("instagram", "ig-2")["room_id"]
    closed = inbox.inbound("facebook_messenger", "psid-3")["room_id"]
    assert inbox.post(f"/v1/rooms/{taken}/assign", agent(inbox), {"agent_id": "agent1"}).status_code == 200
    assert inbox.post(f"/v1/rooms/{replied}/messages", agent(inbox), {"text": "halo kak"}).status_code == 201
    assert inbox.post(f"/v1/rooms/{closed}/resolve", spv(inbox)).status_code == 200
    inbox.project()

    assert statuses(inbox, tab="messages") == {
        "all": {waiting, taken, replied, closed}, "unassigned": {waiting}, "assigned": {taken, replied},
        "resolved": {closed},
    }
    assert {r["id"]: r["assignee"] for r in inbox.rooms(status="assigned")} == {taken: "agent1", replied: "agent1"}


def test_new_inbound_message_reopens_a_resolved_room_as_unassigned_and_its_history_continues(inbox: Inbox) -> None:
    room = inbox.inbound("whatsapp_cloud", "62811", text="pesanan saya belum sampai")["room_id"]
    inbox.post(f"/v1/rooms/{room}/messages", agent(inbox), {"text": "sudah kami cek"})
    inbox.post(f"/v1/rooms/{room}/resolve", agent(inbox))
    inbox.inbound("whatsapp_cloud", "62811", text="masih belum sampai")
    inbox.project()

    [view] = inbox.rooms()
    assert (view["id"], view["status"], view["assignee"], view["awaiting_reply"]) == (room, "unassigned", None, True)
    history = inbox.get(f"/v1/rooms/{room}/messages")
    assert [m["text"] for m in history["items"]] == ["masih belum sampai", "sudah kami cek", "pesanan saya belum sampai"]


def test_awaiting_reply_means_not_resolved_and_latest_message_inbound(inbox: Inbox) -> None:
    asked = inbox.inbound("whatsapp_cloud", "62811")["room_id"]
    answered = inbox.inbound("whatsapp_cloud", "62812")["room_id"]
    inbox.post(f"/v1/rooms/{answered}/messages", spv(inbox), {"text": "siap"})
    assigned_but_waiting = inbox.inbound("whatsapp_cloud", "62813")["room_id"]
    inbox.post(f"/v1/rooms/{assigned_but_waiting}/assign", spv(inbox), {"agent_id": "agent1"})
    resolved = inbox.inbound("whatsapp_cloud", "62814")["room_id"]
    inbox.post(f"/v1/rooms/{resolved}/resolve", spv(inbox))
    inbox.project()

    assert set(inbox.room_ids(awaiting_reply=True)) == {asked, assigned_but_waiting}
    assert set(inbox.room_ids(awaiting_reply=False)) == {answered, resolved}


# ---- visibility and assignment rules ----------------------------------------------------------------
@pytest.fixture
def three_rooms(inbox: Inbox) -> dict[str, str]:
    """An unassigned room, one of agent1 and one of agent2 (contact names and texts to search)."""
    free = inbox.inbound("whatsapp_cloud", "62811", name="Free Customer", text="paket unassigned")["room_id"]
    mine = inbox.inbound("whatsapp_cloud", "62812", name="Mine Customer", text="paket agent satu")["room_id"]
    theirs = inbox.inbound("whatsapp_cloud", "62813", name="Theirs Customer", text="paket agent dua")["room_id"]
    assert inbox.post(f"/v1/rooms/{mine}/assign", spv(inbox), {"agent_id": "agent1"}).status_code == 200
    assert inbox.post(f"/v1/rooms/{theirs}/assign", spv(inbox), {"agent_id": "agent2"}).status_code == 200
    inbox.project()
    return {"free": free, "mine": mine, "theirs": theirs}


@pytest.mark.parametrize("role", ["admin", "supervisor"])
def test_admins_and_supervisors_see_every_room_of_their_organization(inbox: Inbox, three_rooms: dict[str, str],
                                                                     role: str) -> None:
    viewer = inbox.headers(role, f"{role}-x")
    assert set(inbox.room_ids(viewer)) == set(three_rooms.values())
    assert inbox.counters(viewer)["statuses"]["all"] == 3
    assert {r["id"] for r in inbox.search("customer", viewer)} == set(three_rooms.values())


def test_agent_sees_unassigned_rooms_and_their_own_never_another_agents(inbox: Inbox, three_rooms: dict[str, str]) -> None:
    me = agent(inbox, "agent1")
    visible = {three_rooms["free"], three_rooms["mine"]}
    theirs = three_rooms["theirs"]

    for status in ("all", "unassigned", "assigned", "resolved"):
        assert theirs not in inbox.room_ids(me, status=status)
    assert set(inbox.room_ids(me)) == visible
    assert inbox.room_ids(me, assignee="agent2") == []
    counters = inbox.counters(me)
    assert counters["statuses"] == {"all": 2, "unassigned": 1, "assigned": 1, "resolved": 0}
    assert counters["messages"] == 2
    assert {r["id"] for r in inbox.search("customer", me)} == visible
    assert inbox.search("theirs", me) == []
    assert {r["id"] for r in inbox.search("paket", me, by="conversation")} == visible
    assert inbox.search("dua", me, by="conversation") == []


def test_another_agents_room_is_404_by_id_history_and_commands(inbox: Inbox, three_rooms: dict[str, str]) -> None:
    me = agent(inbox, "agent1")
    theirs = three_rooms["theirs"]

    assert inbox.client.get(f"/v1/rooms/{theirs}", headers=me).status_code == 404
    assert inbox.client.get(f"/v1/rooms/{theirs}/messages", headers=me).status_code == 404
    assert inbox.post(f"/v1/rooms/{theirs}/assign", me, {"agent_id": "agent1"}).status_code == 404
    assert inbox.post(f"/v1/rooms/{theirs}/messages", me, {"text": "halo"}).status_code == 404
    assert inbox.post(f"/v1/rooms/{theirs}/resolve", me).status_code == 404
    assert inbox.client.get(f"/v1/rooms/{three_rooms['mine']}", headers=me).status_code == 200


def test_admin_and_supervisor_assign_anyone(inbox: Inbox) -> None:
    room = inbox.inbound("whatsapp_cloud", "62811")["room_id"]
    assert inbox.post(f"/v1/rooms/{room}/assign", inbox.admin, {"agent_id": "agent1"}).status_code == 200
    assert inbox.post(f"/v1/rooms/{room}/assign", spv(inbox), {"agent_id": "agent2"}).status_code == 200
    inbox.project()
    assert inbox.get(f"/v1/rooms/{room}")["assignee"] == "agent2"


def test_agent_may_take_an_unassigned_room_for_itself_only(inbox: Inbox) -> None:
    room = inbox.inbound("whatsapp_cloud", "62811")["room_id"]
    for_someone_else = inbox.post(f"/v1/rooms/{room}/assign", agent(inbox, "agent1"), {"agent_id": "agent2"})
    assert for_someone_else.status_code == 403

    assert inbox.post(f"/v1/rooms/{room}/assign", agent(inbox, "agent1"), {"agent_id": "agent1"}).status_code == 200
    # Now it is agent1's: agent2 cannot take it (it does not even exist for agent2).
    assert inbox.post(f"/v1/rooms/{room}/assign", agent(inbox, "agent2"), {"agent_id": "agent2"}).status_code == 404
    inbox.project()
    assert inbox.get(f"/v1/rooms/{room}")["assignee"] == "agent1"


def test_another_organization_sees_nothing(inbox: Inbox, three_rooms: dict[str, str]) -> None:
    outsider = inbox.headers("admin", "admin-x", org="org2")
    assert inbox.room_ids(outsider) == []
    assert inbox.counters(outsider)["statuses"]["all"] == 0
    assert inbox.search("customer", outsider) == []
    assert inbox.search("paket", outsider, by="conversation") == []
    assert inbox.post("/v1/rooms/resolve-expired", outsider, {"include_unassigned": True}).json()["resolved"] == 0


# ---- badges ---------------------------------------------------------------------------------------
def test_badges_count_awaiting_rooms_per_tab_for_the_viewer_and_the_orgs_unassigned(inbox: Inbox) -> None:
    inbox.inbound("whatsapp_cloud", "62811")
    mine = inbox.inbound("instagram", "ig-1")["room_id"]
    theirs = inbox.inbound("facebook_messenger", "psid-1")["room_id"]
    replied = inbox.inbound("whatsapp_cloud", "62812")["room_id"]
    inbox.inbound("instagram_comment", "ig-1", post="post-A")
    answered_comment = inbox.inbound("facebook_comment", "fb-1", post="post-B")["room_id"]
    inbox.post(f"/v1/rooms/{mine}/assign", spv(inbox), {"agent_id": "agent1"})
    inbox.post(f"/v1/rooms/{theirs}/assign", spv(inbox), {"agent_id": "agent2"})
    inbox.post(f"/v1/rooms/{replied}/messages", agent(inbox, "agent1"), {"text": "siap"})
    inbox.post(f"/v1/rooms/{answered_comment}/messages", spv(inbox), {"text": "cek DM ya"})
    inbox.project()

    everyone = inbox.counters()
    assert (everyone["messages"], everyone["comments"], everyone["unassigned"]) == (3, 1, 2)
    assert everyone["statuses"] == {"all": 6, "unassigned": 2, "assigned": 4, "resolved": 0}
    agent1 = inbox.counters(agent(inbox, "agent1"))
    # agent1 sees the unassigned WhatsApp room, their Instagram room, the room they replied to
    # (assigned to them, answered) and the unassigned comment; not agent2's Messenger room.
    assert (agent1["messages"], agent1["comments"], agent1["unassigned"]) == (2, 1, 2)
    assert agent1["statuses"] == {"all": 4, "unassigned": 2, "assigned": 2, "resolved": 0}
    assert counters_table(inbox.settings) == recount(inbox.settings)


def test_counters_are_a_lookup_of_maintained_rows_not_a_count_over_rooms(inbox: Inbox) -> None:
    inbox.inbound("whatsapp_cloud", "62811")
    inbox.project()
    # Deleting the room rows behind the counters' back leaves the badges unchanged: they are read
    # from the `counters` table, never counted from `rooms` per request.
    from tests.support import execute

    execute(inbox.settings, "DELETE FROM rooms")
    assert inbox.counters()["messages"] == 1 and inbox.counters()["unassigned"] == 1


# ---- filters and ordering ----------------------------------------------------------------------------
def test_filters_combine_with_tab_and_status(inbox: Inbox) -> None:
    wa_old = inbox.inbound("whatsapp_cloud", "62811", at=OLD)["room_id"]
    wa_new = inbox.inbound("whatsapp_cloud", "62812")["room_id"]
    ig_mine = inbox.inbound("instagram", "ig-1", at=OLD)["room_id"]
    fb_theirs = inbox.inbound("facebook_messenger", "psid-1")["room_id"]
    comment = inbox.inbound("instagram_comment", "ig-1", at=OLD)["room_id"]
    inbox.post(f"/v1/rooms/{ig_mine}/assign", spv(inbox), {"agent_id": "agent1"})
    inbox.post(f"/v1/rooms/{fb_theirs}/messages", agent(inbox, "agent2"), {"text": "halo"})
    inbox.project()

    ids = inbox.room_ids
    assert set(ids(channel=["whatsapp_cloud", "instagram"])) == {wa_old, wa_new, ig_mine}
    assert set(ids(tab="messages", status="unassigned", channel=["whatsapp_cloud", "instagram"])) == {wa_old, wa_new}
    assert set(ids(assignee="agent1")) == {ig_mine}
    assert set(ids(tab="messages", status="assigned", awaiting_reply=True)) == {ig_mine}
    assert set(ids(expired=True)) == {wa_old, ig_mine}
    assert set(ids(expired=True, status="unassigned", channel=["whatsapp_cloud"])) == {wa_old}
    assert set(ids(expired=False)) == {wa_new, fb_theirs, comment}
    assert ids(tab="comments", expired=True) == []
    assert {r["id"]: r["expired"] for r in inbox.rooms(tab="messages")} == {
        wa_old: True, wa_new: False, ig_mine: True, fb_theirs: False}


def test_updated_after_and_before_select_by_latest_activity(inbox: Inbox) -> None:
    rooms = [inbox.inbound("whatsapp_cloud", f"6281{i}")["room_id"] for i in range(4)]
    inbox.project()
    listed = inbox.rooms()
    assert [r["id"] for r in listed] == rooms[::-1]
    boundary = listed[1]["updated_at"]  # rooms[2]'s activity

    assert inbox.room_ids(updated_after=boundary) == [rooms[3]]
    assert inbox.room_ids(updated_before=boundary) == [rooms[1], rooms[0]]
    assert inbox.room_ids(updated_after=listed[3]["updated_at"], updated_before=listed[0]["updated_at"]) == [
        rooms[2], rooms[1]]


def test_newest_activity_first_and_only_messages_reorder(inbox: Inbox) -> None:
    a = inbox.inbound("whatsapp_cloud", "62811")["room_id"]
    b = inbox.inbound("whatsapp_cloud", "62812")["room_id"]
    c = inbox.inbound("whatsapp_cloud", "62813")["room_id"]
    inbox.project()
    assert inbox.room_ids() == [c, b, a]

    inbox.post(f"/v1/rooms/{a}/assign", spv(inbox), {"agent_id": "agent1"})
    inbox.post(f"/v1/rooms/{b}/resolve", spv(inbox))
    inbox.project()
    assert inbox.room_ids() == [c, b, a]  # assignment and resolution keep places

    inbox.post(f"/v1/rooms/{a}/messages", agent(inbox, "agent1"), {"text": "halo"})
    inbox.project()
    assert inbox.room_ids() == [a, c, b]  # a reply is activity
    inbox.inbound("whatsapp_cloud", "62812", text="lagi")
    inbox.project()
    assert inbox.room_ids() == [b, a, c]  # so is a customer's message (reopening b)


def test_pages_neither_skip_nor_repeat_rooms_while_new_messages_arrive(inbox: Inbox) -> None:
    contacts = [f"62811{i:03d}" for i in range(30)]
    for c in contacts:
        inbox.inbound("whatsapp_cloud", c)
    inbox.project()
    as_of_first_page = inbox.room_ids(limit=200)
    assert len(as_of_first_page) == 30

    seen: list[str] = []
    page = inbox.get("/v1/rooms", limit=7)
    seen += [r["id"] for r in page["items"]]
    fetches = 0
    while page["next_cursor"]:
        fetches += 1
        # Between fetches: customers write in rooms not yet listed (they jump to the top), in rooms
        # already listed, staff reply, and new rooms open.
        by_id = dict(zip(as_of_first_page, contacts, strict=True))
        unseen = [r for r in as_of_first_page if r not in seen]
        for room_id in unseen[-3:]:
            inbox.inbound("whatsapp_cloud", by_id[room_id], text=f"again {fetches}")
        inbox.inbound("whatsapp_cloud", by_id[seen[0]], text=f"seen again {fetches}")
        inbox.post(f"/v1/rooms/{seen[-1]}/messages", spv(inbox), {"text": "ok"})
        inbox.inbound("whatsapp_cloud", f"62899{fetches:03d}", text="a brand new room")
        inbox.project()
        page = inbox.get("/v1/rooms", limit=7, cursor=page["next_cursor"])
        seen += [r["id"] for r in page["items"]]

    assert fetches >= 4
    assert seen == as_of_first_page  # the same rooms, in the same order, each exactly once
    fresh = inbox.room_ids(limit=200)
    assert len(fresh) == 30 + fetches  # a fresh first page shows the new rooms


def test_cursor_pagination_with_filters_covers_the_filtered_set_exactly(inbox: Inbox) -> None:
    for i in range(12):
        inbox.inbound("whatsapp_cloud" if i % 2 else "instagram", f"c{i}")
    inbox.inbound("instagram_comment", "c-comment")
    inbox.project()
    expected = inbox.room_ids(limit=200, tab="messages", channel=["instagram"])

    paged = inbox.room_ids(limit=2, tab="messages", channel=["instagram"])

    assert len(expected) == 6 and paged == expected


def test_a_garbled_cursor_is_a_readable_422(inbox: Inbox) -> None:
    r = inbox.client.get("/v1/rooms", headers=inbox.admin, params={"cursor": "eyJ4IjoxfQ"})
    assert r.status_code == 422 and r.json() == {"detail": "invalid cursor"}


# ---- history ------------------------------------------------------------------------------------
def test_history_is_newest_first_with_a_stable_cursor_while_messages_arrive(inbox: Inbox) -> None:
    for i in range(7):
        room = inbox.inbound("whatsapp_cloud", "62811", text=f"m{i}")["room_id"]
    inbox.project()

    first = inbox.get(f"/v1/rooms/{room}/messages", limit=3)
    assert [m["text"] for m in first["items"]] == ["m6", "m5", "m4"]
    inbox.inbound("whatsapp_cloud", "62811", text="new while reading")
    inbox.project()
    older = inbox.get(f"/v1/rooms/{room}/messages", limit=3, before=first["next_before"])
    oldest = inbox.get(f"/v1/rooms/{room}/messages", limit=3, before=older["next_before"])

    assert [m["text"] for m in older["items"]] == ["m3", "m2", "m1"]
    assert [m["text"] for m in oldest["items"]] == ["m0"] and oldest["next_before"] is None
    assert inbox.get(f"/v1/rooms/{room}/messages", limit=1)["items"][0]["text"] == "new while reading"


def test_history_continues_across_reopened_sessions(inbox: Inbox) -> None:
    room = inbox.inbound("whatsapp_cloud", "62811", text="first session")["room_id"]
    inbox.post(f"/v1/rooms/{room}/messages", spv(inbox), {"text": "answer one"})
    inbox.post(f"/v1/rooms/{room}/resolve", spv(inbox))
    inbox.inbound("whatsapp_cloud", "62811", text="second session")
    inbox.post(f"/v1/rooms/{room}/messages", agent(inbox), {"text": "answer two"})
    inbox.post(f"/v1/rooms/{room}/resolve", agent(inbox))
    inbox.inbound("whatsapp_cloud", "62811", text="third session")
    inbox.project()

    texts, before = [], None
    while True:
        page = inbox.get(f"/v1/rooms/{room}/messages", limit=2, **({"before": before} if before else {}))
        texts += [(m["text"], m["direction"]) for m in page["items"]]
        before = page["next_before"]
        if not before:
            break
    assert texts == [("third session", "inbound"), ("answer two", "outbound"), ("second session", "inbound"),
                     ("answer one", "outbound"), ("first session", "inbound")]


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
    return list(inbox.container.app.events.get(UUID(room_id)))[-1]


def test_only_admins_and_supervisors_resolve_expired_rooms(inbox: Inbox, expiring: dict[str, str]) -> None:
    r = inbox.post("/v1/rooms/resolve-expired", agent(inbox), {"channels": ["whatsapp_cloud"]})
    assert r.status_code == 403 and "supervisors and admins" in r.json()["detail"]
    assert inbox.post("/v1/rooms/resolve-expired", inbox.headers("integration", "bridge"), {}).status_code == 403
    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"channels": ["telegram"]}).status_code == 422


def test_resolve_expired_resolves_assigned_expired_rooms_of_the_channels_only(inbox: Inbox,
                                                                             expiring: dict[str, str]) -> None:
    r = inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"channels": ["whatsapp_cloud"]})

    assert r.status_code == 200 and r.json() == {"resolved": 1, "skipped": 0}
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
    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), body).json() == {"resolved": 0, "skipped": 4}
    inbox.project()
    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), body).json() == {"resolved": 0, "skipped": 0}


def test_resolve_expired_skips_a_room_that_received_a_message_after_the_query_saw_it(
    inbox: Inbox, expiring: dict[str, str]
) -> None:
    # The customer writes again (an old, late-delivered message: the room is still expired) and
    # the projection has not seen it yet: the projected version is no longer the room's version.
    inbox.inbound("whatsapp_cloud", "62811", at=OLD + timedelta(minutes=1), text="halo? masih ada?")

    r = inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"channels": ["whatsapp_cloud"]})

    assert r.json() == {"resolved": 0, "skipped": 1}
    inbox.project()
    room = inbox.get(f"/v1/rooms/{expiring['wa_assigned']}")
    assert (room["status"], room["awaiting_reply"]) == ("assigned", True)
    # Once the projection shows the message (and the room is still expired) a repeat resolves it.
    assert inbox.post("/v1/rooms/resolve-expired", spv(inbox), {"channels": ["whatsapp_cloud"]}).json()["resolved"] == 1


def test_a_chunk_that_races_with_an_inbound_message_still_resolves_the_other_rooms(
    inbox: Inbox, expiring: dict[str, str]
) -> None:
    app = inbox.container.app
    real_save = app.save
    raced: list[str] = []

    def save_after_a_customer_writes(*aggregates: Any, **kwargs: Any) -> Any:
        if len(aggregates) > 1 and not raced:  # the chunk's transaction: a customer wrote meanwhile
            raced.append("wa")
            inbox.inbound("whatsapp_cloud", "62812", at=OLD + timedelta(minutes=1), text="halo?")
        return real_save(*aggregates, **kwargs)

    app.save = save_after_a_customer_writes  # type: ignore[method-assign]
    service = ExpiredRooms(app, InboxQueries(inbox.container.read_pool).expired_rooms)

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
    service = ExpiredRooms(inbox.container.app, InboxQueries(inbox.container.read_pool).expired_rooms, chunk_size=2)

    result = service.resolve_expired(Actor("admin1", "org1", Role.ADMIN), include_unassigned=True)

    assert (result.resolved, result.skipped) == (7, 0)
