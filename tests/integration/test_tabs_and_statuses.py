"""Tabs and statuses (SPEC §2–§3) through the HTTP API on real PostgreSQL: which tab a room is in, its status lifecycle, awaiting reply."""

from __future__ import annotations

import pytest

from tests.integration.inbox_helpers import Inbox, agent, spv, statuses

pytestmark = pytest.mark.integration


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
