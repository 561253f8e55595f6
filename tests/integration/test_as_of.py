"""The inbox as it was at a moment: `GET /v1/rooms/{id}?as_of=` and `inbox replay --until --into`."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from inbox.adapters.schema import migrate
from inbox.bootstrap import replay
from inbox.config import ConfigError, Settings
from inbox.bootstrap import Container
from tests.integration.history_helpers import Story, write_story
from tests.integration.inbox_helpers import Inbox, agent
from tests.support import counters_table, env_for, project_all, query

pytestmark = pytest.mark.integration


def _moment() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def story(inbox: Inbox) -> dict[str, object]:
    """One room through its life: opened, assigned to agent-b, answered, resolved, reopened."""
    room = inbox.inbound("whatsapp_cloud", "628111", text="first")["room_id"]
    opened = _moment()
    r = inbox.post(f"/v1/rooms/{room}/assign", json={"agent_id": "agent-b"})
    assert r.status_code == 200, r.text
    r = inbox.post(f"/v1/rooms/{room}/messages", headers=inbox.headers("agent", "agent-b"), json={"text": "hello"})
    assert r.status_code == 201, r.text
    answered = _moment()
    r = inbox.post(f"/v1/rooms/{room}/resolve", json={})
    assert r.status_code == 200, r.text
    resolved = _moment()
    inbox.inbound("whatsapp_cloud", "628111", text="again")
    inbox.project()
    return {"room": room, "opened": opened, "answered": answered, "resolved": resolved}


def test_room_as_of_a_moment_is_the_room_as_it_was_then(inbox: Inbox, story: dict[str, object]) -> None:
    room = story["room"]
    then = inbox.get(f"/v1/rooms/{room}", as_of=story["opened"].isoformat())  # type: ignore[attr-defined]
    later = inbox.get(f"/v1/rooms/{room}", as_of=story["resolved"].isoformat())  # type: ignore[attr-defined]
    now = inbox.get(f"/v1/rooms/{room}")
    assert (then["status"], then["assignee"], then["last_message"]["text"]) == ("unassigned", None, "first")
    assert (later["status"], later["assignee"], later["last_message"]["text"]) == ("resolved", "agent-b", "hello")
    assert (now["status"], now["last_message"]["text"]) == ("unassigned", "again")
    assert then["version"] < later["version"] < now["version"]


def test_history_as_of_a_moment_holds_the_messages_up_to_then(inbox: Inbox, story: dict[str, object]) -> None:
    room = story["room"]
    then = inbox.get(f"/v1/rooms/{room}/messages", as_of=story["answered"].isoformat())  # type: ignore[attr-defined]
    now = inbox.get(f"/v1/rooms/{room}/messages")
    assert [m["text"] for m in then["items"]] == ["hello", "first"]
    assert [m["text"] for m in now["items"]] == ["again", "hello", "first"]
    assert then["items"] == now["items"][1:]  # the same rows, folded by the same functions


def test_as_of_pages_like_the_live_history(inbox: Inbox, story: dict[str, object]) -> None:
    room = story["room"]
    first = inbox.get(f"/v1/rooms/{room}/messages", as_of=_moment().isoformat(), limit=2)
    rest = inbox.get(f"/v1/rooms/{room}/messages", as_of=_moment().isoformat(), limit=2, before=first["next_before"])
    assert [m["text"] for m in first["items"] + rest["items"]] == ["again", "hello", "first"]
    assert rest["next_before"] is None


def test_as_of_before_the_room_existed_is_404(inbox: Inbox, story: dict[str, object]) -> None:
    r = inbox.client.get(f"/v1/rooms/{story['room']}", headers=inbox.admin,
                         params={"as_of": (datetime.now(UTC) - timedelta(days=1)).isoformat()})
    assert r.status_code == 404, r.text


def test_as_of_in_the_future_or_not_a_time_is_refused(inbox: Inbox, story: dict[str, object]) -> None:
    for bad in ((datetime.now(UTC) + timedelta(days=1)).isoformat(), "yesterday"):
        r = inbox.client.get(f"/v1/rooms/{story['room']}", headers=inbox.admin, params={"as_of": bad})
        assert r.status_code == 422, r.text
        assert r.json()["detail"]


def test_an_agent_sees_a_past_state_only_if_the_room_is_theirs_now_and_was_then(
    inbox: Inbox, story: dict[str, object]
) -> None:
    room = story["room"]
    # Now unassigned (reopened): every agent sees it now, but then it was agent-b's.
    r = inbox.client.get(f"/v1/rooms/{room}", headers=agent(inbox, "agent-c"),
                         params={"as_of": story["answered"].isoformat()})  # type: ignore[attr-defined]
    assert r.status_code == 404, r.text
    r = inbox.client.get(f"/v1/rooms/{room}", headers=agent(inbox, "agent-c"),
                         params={"as_of": story["opened"].isoformat()})  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    r = inbox.client.get(f"/v1/rooms/{room}", headers=agent(inbox, "agent-b"),
                         params={"as_of": story["answered"].isoformat()})  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    # Assigned to agent-b now: agent-c sees no moment of it, not even when it was unassigned.
    r = inbox.post(f"/v1/rooms/{room}/assign", json={"agent_id": "agent-b"})
    assert r.status_code == 200, r.text
    inbox.project()
    r = inbox.client.get(f"/v1/rooms/{room}", headers=agent(inbox, "agent-c"),
                         params={"as_of": story["opened"].isoformat()})  # type: ignore[attr-defined]
    assert r.status_code == 404, r.text


# ---- inbox replay --until --into ---------------------------------------------------------------
@pytest.fixture
def target(db_settings: Settings) -> Iterator[str]:
    name = f"asof_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(db_settings.database_url or "", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


DOC = Path(__file__).parents[2] / "docs" / "analytics.md"


def _unassigned_badge(settings: Settings, org: str) -> int:
    """docs/analytics.md's query (`replay:unassigned_badge`), run on the schema of `settings`."""
    block = re.search(r"^```sql replay:unassigned_badge\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    assert block, "docs/analytics.md lost its replay:unassigned_badge query"
    rows = query(settings, block.group(1).replace("inbox_at_0900.", "").replace("%", "%%"))
    return int(dict(rows).get(org, 0))


@pytest.fixture
def storied(db_settings: Settings) -> Iterator[Story]:
    container = Container.build(db_settings)
    try:
        story = write_story(container)
    finally:
        container.close()
    project_all(db_settings)
    yield story


def test_replay_until_into_builds_the_inbox_as_it_stood_then_without_touching_the_live_one(
    db_settings: Settings, storied: Story, target: str
) -> None:
    settings = db_settings
    story = storied
    live_before = counters_table(settings)
    stats = asyncio.run(replay(settings, until=story.before_staff, into=target))
    then = replace(settings, db_schema=target)
    assert stats.rooms == 6
    assert _unassigned_badge(then, "org1") == 5  # every org1 room was unassigned before staff acted
    assert _unassigned_badge(settings, "org1") == 1  # live: c6 only (replies assign, c2 assigned, c3 resolved)
    assert counters_table(settings) == live_before
    assert query(then, "SELECT count(*) FROM messages")[0][0] == 7  # only the inbound messages
    # The reports are rebuilt as of then too: no reply yet, so no first response.
    assert query(then, "SELECT count(*) FROM report_cycles WHERE first_response_s IS NOT NULL")[0][0] == 0
    assert query(then, "SELECT count(*) FROM report_cycles")[0][0] == 6


def test_replay_into_refuses_the_live_schema(db_settings: Settings) -> None:
    with pytest.raises(ConfigError, match="live schema"):
        asyncio.run(replay(db_settings, into=db_settings.db_schema))


def test_replay_until_without_into_is_refused(db_settings: Settings) -> None:
    done = subprocess.run([sys.executable, "-m", "inbox.entrypoints.cli", "replay", "--until", "2025-03-01"],
                          env=env_for(db_settings), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "--until needs --into" in done.stderr


def test_replay_into_refuses_a_schema_holding_an_event_store(db_settings: Settings, database_url: str) -> None:
    other = f"t_{uuid.uuid4().hex[:10]}"
    migrate(replace(db_settings, db_schema=other))
    try:
        with pytest.raises(ConfigError, match="event store"):
            asyncio.run(replay(db_settings, into=other))
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)))


def test_inbox_replay_until_into_runs_from_the_command_line(
    db_settings: Settings, storied: Story, target: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "inbox.entrypoints.cli", "replay", "--until", storied.before_staff.isoformat(),
         "--into", target], env=env_for(db_settings), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"in schema {target}" in done.stdout
    assert _unassigned_badge(replace(db_settings, db_schema=target), "org1") == 5
