"""Who sees which room and who may assign it (SPEC §2–§3), through the HTTP API on real PostgreSQL."""

from __future__ import annotations

import pytest

from tests.integration.inbox_helpers import Inbox, agent, spv

pytestmark = pytest.mark.integration


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
