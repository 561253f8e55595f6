"""Service reports on real PostgreSQL: the writer, the API (JSON and CSV) and the plot."""

from __future__ import annotations

import asyncio
import csv
import io
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from inbox.adapters.event_log import WireEventLog
from inbox.adapters.eventstore import InboxApplication
from inbox.adapters.postgres import conninfo
from inbox.adapters.read_models.reports_writer import ReportStats, apply_reports
from inbox.config import Settings
from inbox.entrypoints.cli import main
from tests.integration.inbox_helpers import Inbox, agent, spv
from tests.support import execute, query

pytestmark = pytest.mark.integration


def store_events(settings: Settings) -> list[dict[str, Any]]:
    app = InboxApplication.from_settings(settings)
    try:
        log = WireEventLog(app)
        out, position = [], 0
        while True:
            page, rows = log.read(position, 1000)
            if rows == 0:
                return out
            out += [e for _, e in page.events]
            position = page.last_id
    finally:
        app.close()


def report(settings: Settings, events: list[dict[str, Any]]) -> ReportStats:
    async def run() -> ReportStats:
        async with await psycopg.AsyncConnection.connect(conninfo(settings)) as conn, conn.transaction():
            return await apply_reports(conn, events)

    return asyncio.run(run())


def report_tables(settings: Settings) -> tuple[Any, ...]:
    return tuple(
        query(settings, f"SELECT * FROM {t} ORDER BY 1, 2, 3")
        for t in ("report_cycles", "report_counts", "report_backlog")
    )


@pytest.fixture
def day(inbox: Inbox) -> dict[str, str]:
    """Rooms on two channels: answered by agent-a, by agent-b, resolved, and one nobody answered."""
    rooms = {}
    for contact, channel in (("c1", "whatsapp_cloud"), ("c2", "whatsapp_cloud"), ("c3", "instagram"),
                             ("c4", "instagram")):
        rooms[contact] = inbox.inbound(channel, contact, text="help")["room_id"]
    for contact, who in (("c1", "agent-a"), ("c2", "agent-b"), ("c3", "agent-a")):
        r = inbox.post(f"/v1/rooms/{rooms[contact]}/messages", headers=agent(inbox, who), json={"text": "hi"})
        assert r.status_code == 201, r.text
    r = inbox.post(f"/v1/rooms/{rooms['c1']}/resolve", json={})
    assert r.status_code == 200, r.text
    inbox.inbound("whatsapp_cloud", "c1", text="one more thing")  # reopens c1: a second cycle
    inbox.project()
    report(inbox.settings, store_events(inbox.settings))
    return rooms


def recount_first_responses(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per agent: first staff reply after each cycle's first inbound, from the events alone."""
    out: dict[str, list[float]] = {}
    cycle_in: dict[str, datetime | None] = {}
    answered: dict[str, bool] = {}
    for e in events:
        at = datetime.fromisoformat(e["occurred_at"])
        if e["type"] in ("RoomOpened", "RoomReopened"):
            cycle_in[e["room_id"]], answered[e["room_id"]] = None, False
        elif e["type"] == "MessageReceived" and cycle_in[e["room_id"]] is None:
            cycle_in[e["room_id"]] = at
        elif e["type"] == "MessageSent" and not answered[e["room_id"]] and cycle_in[e["room_id"]]:
            answered[e["room_id"]] = True
            out.setdefault(e["data"]["sender_id"], []).append((at - cycle_in[e["room_id"]]).total_seconds())
    return out


def test_report_tables_are_unchanged_when_the_same_events_come_again(inbox: Inbox, day: dict[str, str]) -> None:
    before = report_tables(inbox.settings)
    stats = report(inbox.settings, store_events(inbox.settings))
    assert stats.applied == 0 and stats.duplicates == stats.events > 0
    assert report_tables(inbox.settings) == before


def test_an_event_the_reports_cannot_read_is_dead_lettered_and_the_room_goes_on(inbox: Inbox) -> None:
    room = inbox.inbound("whatsapp_cloud", "c9")["room_id"]
    events = store_events(inbox.settings)
    bad = {**events[-1], "version": 3, "type": "RoomTeleported", "data": {}}
    later = {**events[-1], "version": 4}  # another inbound after it
    stats = report(inbox.settings, [*events, bad, later])
    assert stats.dead_letters == 1
    reason = query(inbox.settings, "SELECT reason, version FROM report_dead_letters")
    assert reason == [("UnknownEvent: unknown event type 'RoomTeleported'", 3)]
    assert query(inbox.settings, "SELECT version FROM report_rooms WHERE room_id = %s", (room,)) == [(4,)]
    assert query(inbox.settings, "SELECT sum(messages_in) FROM report_counts")[0][0] == 2


def test_response_times_by_agent_match_a_recount_from_the_events(inbox: Inbox, day: dict[str, str]) -> None:
    items = {i["key"]: i for i in inbox.get("/v1/reports/response-times", group_by="agent")["items"]}
    want = recount_first_responses(store_events(inbox.settings))
    for who, samples in want.items():
        assert items[who]["first_response_s"]["p50"] == pytest.approx(statistics.median(samples))
    assert items["agent-a"]["rooms"] == 2 and items["agent-b"]["rooms"] == 1
    assert items["agent-a"]["messages_out"] == 2 and items["agent-b"]["messages_out"] == 1
    assert items["agent-a"]["resolution_s"]["p50"] is not None  # c1's first cycle was resolved
    assert items["-"]["rooms"] == 2  # c4 (never answered) and c1's second cycle


def test_response_times_by_day_and_channel_count_every_cycle_and_message(inbox: Inbox, day: dict[str, str]) -> None:
    today = datetime.now(UTC).date().isoformat()
    by_day = inbox.get("/v1/reports/response-times", group_by="day")["items"]
    assert [(i["key"], i["rooms"], i["messages_in"], i["messages_out"]) for i in by_day] == [(today, 5, 5, 3)]
    by_channel = {i["key"]: (i["rooms"], i["messages_in"], i["messages_out"])
                  for i in inbox.get("/v1/reports/response-times", group_by="channel")["items"]}
    assert by_channel == {"whatsapp_cloud": (3, 3, 2), "instagram": (2, 2, 1)}
    # An empty range is an empty report, not an error.
    assert inbox.get("/v1/reports/response-times", **{"from": "2020-01-01", "to": "2020-01-02"})["items"] == []


def test_response_times_download_as_csv(inbox: Inbox, day: dict[str, str]) -> None:
    r = inbox.client.get("/v1/reports/response-times", params={"group_by": "channel"},
                         headers={**inbox.admin, "Accept": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["key"]: row["messages_in"] for row in rows} == {"instagram": "2", "whatsapp_cloud": "3"}


def test_an_agent_gets_only_their_own_row(inbox: Inbox, day: dict[str, str]) -> None:
    mine = inbox.get("/v1/reports/response-times", headers=agent(inbox, "agent-b"), group_by="agent")["items"]
    assert [i["key"] for i in mine] == ["agent-b"]
    by_day = inbox.get("/v1/reports/response-times", headers=agent(inbox, "agent-b"), group_by="day")["items"]
    assert [(i["rooms"], i["messages_out"]) for i in by_day] == [(1, 1)]
    assert len(inbox.get("/v1/reports/response-times", headers=spv(inbox), group_by="agent")["items"]) == 3


def test_reports_refuse_integrations_and_bad_parameters(inbox: Inbox) -> None:
    r = inbox.client.get("/v1/reports/response-times", headers=inbox.headers("integration", "bridge"))
    assert r.status_code == 403
    for params in ({"group_by": "week"}, {"from": "2025-03-02", "to": "2025-03-01"}, {"from": "yesterday"}):
        r = inbox.client.get("/v1/reports/response-times", headers=inbox.admin, params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["detail"]
    r = inbox.client.get("/v1/reports/backlog", headers=agent(inbox, "agent-a"),
                         params={"from": "2025-03-01T00:00:00Z", "to": "2025-03-01T01:00:00Z"})
    assert r.status_code == 403
    r = inbox.client.get("/v1/reports/backlog", headers=inbox.admin,
                         params={"from": "2025-03-01T00:00:00Z", "to": "2025-03-09T00:00:00Z", "step": 1})
    assert r.status_code == 422
    # A step beyond PostgreSQL's interval range was a 500 (found by schemathesis).
    r = inbox.client.get("/v1/reports/backlog", headers=inbox.admin,
                         params={"from": "2000-01-01T02:00:00Z", "to": "6622-07-14T21:36:55.50Z", "step": 27481908724017})
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_backlog_over_time_counts_the_unassigned_rooms_at_each_moment(inbox: Inbox) -> None:
    start = datetime.now(UTC) - timedelta(seconds=1)
    rooms = [inbox.inbound("whatsapp_cloud", f"b{i}")["room_id"] for i in range(3)]
    mid = datetime.now(UTC)
    r = inbox.post(f"/v1/rooms/{rooms[0]}/assign", json={"agent_id": "agent-a"})
    assert r.status_code == 200
    r = inbox.post(f"/v1/rooms/{rooms[1]}/resolve", json={})
    assert r.status_code == 200
    end = datetime.now(UTC) + timedelta(seconds=1)
    report(inbox.settings, store_events(inbox.settings))
    points = inbox.get("/v1/reports/backlog", **{"from": start.isoformat(), "to": end.isoformat(), "step": 1})
    counts = [p["unassigned"] for p in points["items"]]
    assert counts[0] == 0 and counts[-1] == 1
    at_mid = inbox.get("/v1/reports/backlog", **{"from": mid.isoformat(), "to": mid.isoformat()})["items"]
    assert [p["unassigned"] for p in at_mid] == [3]


def test_report_plot_writes_a_png(inbox: Inbox, day: dict[str, str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in inbox.settings.to_env().items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "report.png"
    assert main(["report", "--plot", str(out), "--org", inbox.org]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_event_the_database_refuses_is_dead_lettered_and_the_rest_of_the_batch_is_counted(inbox: Inbox) -> None:
    inbox.inbound("whatsapp_cloud", "c7")
    inbox.inbound("whatsapp_cloud", "c8")
    events = store_events(inbox.settings)
    poisoned = [{**e, "data": {**e["data"], "channel": "whats\x00app"}} if e["type"] == "RoomOpened"
                and e["room_id"] == events[0]["room_id"] else e for e in events]
    stats = report(inbox.settings, poisoned)
    assert stats.dead_letters == 2  # its RoomOpened (text with NUL), then its message (room never opened)
    assert query(inbox.settings, "SELECT event_type FROM report_dead_letters ORDER BY version") == [
        ("RoomOpened",), ("MessageReceived",)]
    assert query(inbox.settings, "SELECT channel, opened, messages_in FROM report_counts") == [("whatsapp_cloud", 1, 1)]


def test_readyz_reports_live_report_workers_without_depending_on_them(inbox: Inbox) -> None:
    assert inbox.client.get("/readyz").json()["checks"]["report_workers"] == 0
    execute(inbox.settings, "INSERT INTO worker_heartbeats (worker_id, kind) VALUES ('reports-1', 'reports')")
    assert inbox.client.get("/readyz").json()["checks"]["report_workers"] == 1
