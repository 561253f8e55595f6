"""Badges (SPEC §3): per-tab counts of rooms awaiting a reply, through the HTTP API on real PostgreSQL."""

from __future__ import annotations

import pytest

from tests.integration.inbox_helpers import Inbox, agent, spv
from tests.support import counters_table, recount

pytestmark = pytest.mark.integration


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
