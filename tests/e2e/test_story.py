"""The Inbox story end to end, through real `inbox api|relay|worker` processes and Kafka.

Customers write on WhatsApp, Instagram and Messenger and comment under two posts → badges → an
agent takes a room and replies → a supervisor resolves it → the customer writes again → "Resolve
all expired", first without and then with unassigned rooms. After every step every badge, list
and search is checked against SPEC §2–§3, for an admin and for two agents.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from inbox.config import Settings
from tests.e2e.test_pipeline import read_topic
from tests.support import Customers, Pipeline, auth, counters_table, http_settings, recount, running, store_totals

pytestmark = pytest.mark.e2e

LONG_AGO = datetime.now(UTC) - timedelta(hours=30)


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    with running(http_settings(settings), tmp_path, "worker", "relay", "api") as p:
        yield p


class Story:
    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.http = httpx.Client(base_url=p.base_url, timeout=60)
        self.admin = auth(p.settings, role="admin", user="admin1")
        self.spv = auth(p.settings, role="supervisor", user="spv1")
        self.agent1 = auth(p.settings, role="agent", user="agent1")
        self.agent2 = auth(p.settings, role="agent", user="agent2")

    def command(self, path: str, headers: dict[str, str], body: Any = None) -> Any:
        r = self.http.post(path, headers=headers, json=body)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def settle(self) -> None:
        """Wait until the worker has projected everything in the event store (via Kafka)."""
        self.p.wait_until_projected()

    def badges(self, headers: dict[str, str]) -> dict[str, Any]:
        c = self.http.get("/v1/inbox/counters", headers=headers).json()
        return {k: c[k] for k in ("messages", "comments", "unassigned", "statuses")}

    def ids(self, headers: dict[str, str], **params: Any) -> set[str]:
        out: set[str] = set()
        cursor = None
        while True:
            page = self.http.get("/v1/rooms", headers=headers,
                                 params={**params, "limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            out |= {r["id"] for r in page["items"]}
            cursor = page["next_cursor"]
            if not cursor:
                return out


def badges(messages: int, comments: int, unassigned: int, u: int, a: int, r: int) -> dict[str, Any]:
    return {"messages": messages, "comments": comments, "unassigned": unassigned,
            "statuses": {"all": u + a + r, "unassigned": u, "assigned": a, "resolved": r}}


def test_the_inbox_story(pipeline: Pipeline) -> None:
    s = Story(pipeline)
    customers = Customers(pipeline)

    # 1. Customers write on three channels and comment under two posts; two old conversations expired.
    budi = customers.write("whatsapp_cloud", "6281234567890", "Halo, pesanan INV-77 belum sampai", name="Budí Santoso")
    siti = customers.write("instagram", "igsid-siti", "kak, warna merah ready?", name="Siti Rahayu")
    agus = customers.write("facebook_messenger", "psid-agus", "refund saya kapan?", name="Agus Salim")
    dewi = customers.write("instagram_comment", "igsid-dewi", "harga berapa?", name="Dewi", post="post-1")
    rina = customers.write("facebook_comment", "psid-rina", "masih ada?", name="Rina", post="post-2")
    old_wa = customers.write("whatsapp_cloud", "6285700000001", "halo", name="Lama Satu", at=LONG_AGO)
    old_fb = customers.write("facebook_messenger", "psid-lama", "halo", name="Lama Dua", at=LONG_AGO)
    s.settle()

    direct = {budi, siti, agus, old_wa, old_fb}
    comments = {dewi, rina}
    assert s.badges(s.admin) == badges(5, 2, 7, u=7, a=0, r=0)
    assert s.badges(s.agent1) == badges(5, 2, 7, u=7, a=0, r=0)
    assert s.ids(s.admin, tab="messages", status="unassigned") == direct
    assert s.ids(s.admin, tab="comments") == comments
    assert s.ids(s.admin, expired=True) == {old_wa, old_fb}
    assert s.ids(s.admin, channel=["instagram", "instagram_comment"]) == {siti, dewi}

    # 2. agent1 takes Budi's room and replies; agent2 takes the old Messenger conversation.
    s.command(f"/v1/rooms/{budi}/assign", s.agent1, {"agent_id": "agent1"})
    s.command(f"/v1/rooms/{budi}/messages", s.agent1, {"text": "Baik kak, kami cek INV-77 dulu"})
    s.command(f"/v1/rooms/{old_fb}/assign", s.agent2, {"agent_id": "agent2"})
    s.settle()

    assert s.badges(s.admin) == badges(4, 2, 5, u=5, a=2, r=0)
    # Agents see the unassigned rooms and their own; the other agent's room is not in their numbers.
    assert s.badges(s.agent1) == badges(3, 2, 5, u=5, a=1, r=0)
    assert s.badges(s.agent2) == badges(4, 2, 5, u=5, a=1, r=0)
    assert s.ids(s.agent1, status="assigned") == {budi}
    assert old_fb not in s.ids(s.agent1)
    assert s.http.get(f"/v1/rooms/{old_fb}", headers=s.agent1).status_code == 404
    assert s.ids(s.admin, awaiting_reply=False) == {budi}
    assert s.ids(s.admin, assignee="agent2") == {old_fb}

    # 3. The supervisor resolves Budi's room.
    s.command(f"/v1/rooms/{budi}/resolve", s.spv)
    s.settle()
    assert s.badges(s.admin) == badges(4, 2, 5, u=5, a=1, r=1)
    assert s.badges(s.agent1) == badges(3, 2, 5, u=5, a=0, r=1)
    assert s.ids(s.admin, status="resolved") == {budi}

    # 4. Budi writes again: the room reopens unassigned, awaiting a reply; its history continues.
    assert customers.write("whatsapp_cloud", "6281234567890", "Sudah 5 hari belum datang", name="Budí Santoso") == budi
    s.settle()
    assert s.badges(s.admin) == badges(5, 2, 6, u=6, a=1, r=0)
    assert s.badges(s.agent1) == badges(4, 2, 6, u=6, a=0, r=0)
    room = s.http.get(f"/v1/rooms/{budi}", headers=s.agent1).json()
    assert (room["status"], room["assignee"], room["awaiting_reply"]) == ("unassigned", None, True)
    history = s.http.get(f"/v1/rooms/{budi}/messages", headers=s.agent1, params={"limit": 2}).json()
    older = s.http.get(f"/v1/rooms/{budi}/messages", headers=s.agent1,
                       params={"limit": 2, "before": history["next_before"]}).json()
    assert [m["text"] for m in history["items"] + older["items"]] == [
        "Sudah 5 hari belum datang", "Baik kak, kami cek INV-77 dulu", "Halo, pesanan INV-77 belum sampai"]
    assert s.http.get("/v1/rooms", headers=s.admin, params={"limit": 1}).json()["items"][0]["id"] == budi

    # Search finds Budi by name (accent-insensitive), by phone, and by words of the conversation.
    hits = s.http.get("/v1/search", headers=s.agent1, params={"q": "budi"}).json()["items"]
    assert [h["id"] for h in hits] == [budi]
    assert [h["id"] for h in s.http.get("/v1/search", headers=s.admin, params={"q": "0812-3456-7890"}).json()["items"]] == [budi]
    [hit] = s.http.get("/v1/search", headers=s.admin, params={"q": "inv-77", "by": "conversation"}).json()["items"]
    assert hit["id"] == budi and "<mark>" in hit["match"]["snippet"]
    by_admin = s.http.get("/v1/search", headers=s.admin, params={"q": "lama dua"}).json()["items"]
    by_agent1 = s.http.get("/v1/search", headers=s.agent1, params={"q": "lama dua"}).json()["items"]
    assert by_admin[0]["id"] == old_fb and old_fb not in {h["id"] for h in by_agent1}  # agent2's room

    # 5. Resolve all expired: assigned rooms only, then unassigned too; comments never expire.
    expired_channels = {"channels": ["whatsapp_cloud", "instagram", "facebook_messenger"]}
    assert s.http.post("/v1/rooms/resolve-expired", headers=s.agent1, json=expired_channels).status_code == 403
    assert s.command("/v1/rooms/resolve-expired", s.spv, expired_channels)["resolved"] == 1
    s.settle()
    assert s.ids(s.admin, status="resolved") == {old_fb}
    assert s.badges(s.admin) == badges(4, 2, 6, u=6, a=0, r=1)
    assert s.badges(s.agent2) == badges(4, 2, 6, u=6, a=0, r=1)

    assert s.command("/v1/rooms/resolve-expired", s.admin, {**expired_channels, "include_unassigned": True})["resolved"] == 1
    s.settle()
    assert s.command("/v1/rooms/resolve-expired", s.admin, {"include_unassigned": True})["resolved"] == 0
    assert s.ids(s.admin, status="resolved") == {old_fb, old_wa}
    assert s.ids(s.admin, expired=True) == set()
    assert s.badges(s.admin) == badges(3, 2, 5, u=5, a=0, r=2)
    # Resolved rooms keep their assignee: agent2's resolved room stays out of agent1's numbers.
    assert s.badges(s.agent1) == badges(3, 2, 5, u=5, a=0, r=1)
    assert s.ids(s.agent1, status="resolved") == {old_wa}
    assert s.ids(s.admin, tab="comments", status="unassigned") == comments

    # The projections equal a recount, and downstream consumers saw the expired resolutions on Kafka.
    assert counters_table(pipeline.settings) == recount(pipeline.settings)
    events = [e for _, e in read_topic(pipeline.settings, store_totals(pipeline.settings)[1])]
    resolved = {(e["room_id"], e["data"]["reason"]) for e in events if e["type"] == "RoomResolved"}
    assert resolved == {(budi, "manual"), (old_fb, "expired"), (old_wa, "expired")}
    s.http.close()
    customers.close()
