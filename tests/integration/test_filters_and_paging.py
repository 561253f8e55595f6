"""Room list filters, ordering and cursors, and message history paging, through the HTTP API on real PostgreSQL."""

from __future__ import annotations

import pytest

from tests.integration.inbox_helpers import OLD, Inbox, agent, spv

pytestmark = pytest.mark.integration


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
