"""Badges equal a recount at any quiet moment, after random command sequences (hypothesis).

Random inbound messages (every channel, comments under two posts, fresh and expired), takes,
assignments, replies, resolutions (manual and "resolve all expired") and reopenings go through
the HTTP API and its services; projections are applied in random batches (tests.support.
project_all at random points). Then the maintained `counters` table must equal a recount of the
room projection, and each viewer's GET /v1/inbox/counters must equal a plain-SQL recount over
the rooms that viewer may see.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbox.entrypoints.api.app import create_api
from inbox.config import Settings
from inbox.bootstrap import Container
from tests.integration.inbox_helpers import ACCOUNTS, Inbox
from tests.support import counters_table, query, recount

pytestmark = pytest.mark.integration

CHANNELS = list(ACCOUNTS)
STAFF = [("admin", "admin1"), ("supervisor", "spv1"), ("agent", "agent1"), ("agent", "agent2")]
VIEWERS = [("admin", "admin1"), ("supervisor", "spv1"), ("agent", "agent1"), ("agent", "agent2"), ("agent", "agent3")]

inbound_cmd = st.tuples(
    st.just("inbound"), st.sampled_from(CHANNELS), st.integers(0, 3), st.sampled_from(["post-A", "post-B"]),
    st.booleans(),  # an old (expired) channel timestamp
)
staff_cmd = st.tuples(
    st.sampled_from(["take", "assign", "reply", "resolve"]), st.integers(0, 50), st.sampled_from(STAFF),
    st.sampled_from(["agent1", "agent2", "agent3"]),
)
other_cmd = st.one_of(st.tuples(st.just("project")), st.tuples(st.just("resolve_expired"), st.booleans()))
commands = st.lists(st.one_of(inbound_cmd, inbound_cmd, staff_cmd, staff_cmd, other_cmd), min_size=1, max_size=40)


@pytest.fixture
def client(db_settings: Settings) -> Iterator[tuple[TestClient, Container]]:
    container = Container.build(db_settings)
    with TestClient(create_api(container)) as c:
        yield c, container
    container.close()


def visible_recount(settings: Settings, org: str, role: str, user: str) -> dict[str, Any]:
    """What GET /v1/inbox/counters must say for this viewer, counted from the rooms with plain SQL."""
    sees_all = role in ("admin", "supervisor")
    rows = query(
        settings,
        "SELECT tab, status, count(*), count(*) FILTER (WHERE awaiting_reply) FROM rooms"
        " WHERE org_id = %s AND (%s OR assignee IS NULL OR assignee = %s) GROUP BY tab, status",
        (org, sees_all, user),
    )
    [(unassigned,)] = query(settings, "SELECT count(*) FROM rooms WHERE org_id = %s AND status = 'unassigned'", (org,))
    statuses = {"unassigned": 0, "assigned": 0, "resolved": 0}
    awaiting = {"messages": 0, "comments": 0}
    for tab, status, n, waiting in rows:
        statuses[status] += n
        awaiting[tab] += waiting
    return {"messages": awaiting["messages"], "comments": awaiting["comments"], "unassigned": unassigned,
            "statuses": {"all": sum(statuses.values()), **statuses}}


example = itertools.count()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=commands)
def test_counters_equal_a_recount_after_random_command_sequences(
    client: tuple[TestClient, Container], db_settings: Settings, steps: list[tuple[Any, ...]]
) -> None:
    n = next(example)
    inbox = Inbox(client[0], db_settings, client[1], org=f"org-h{n}",
                  accounts={ch: f"{ext}-h{n}" for ch, ext in ACCOUNTS.items()})
    inbox.register_all()
    rooms: list[str] = []
    old = datetime.now(UTC) - timedelta(days=2)
    for step in steps:
        kind = step[0]
        if kind == "inbound":
            _, channel, contact, post, expired = step
            at = old + timedelta(seconds=len(rooms)) if expired else None
            room = inbox.inbound(channel, f"contact-{contact}", post=post, at=at)["room_id"]
            if room not in rooms:
                rooms.append(room)
        elif kind == "project":
            inbox.project()
        elif kind == "resolve_expired":
            r = inbox.post("/v1/rooms/resolve-expired", inbox.headers("supervisor", "spv1"),
                           {"include_unassigned": step[1]})
            assert r.status_code == 200, r.text
        elif rooms:
            _, index, (role, user), agent_id = step
            room = rooms[index % len(rooms)]
            actor = inbox.headers(role, user)
            if kind == "take":
                r = inbox.post(f"/v1/rooms/{room}/assign", actor, {"agent_id": user})
            elif kind == "assign":
                r = inbox.post(f"/v1/rooms/{room}/assign", actor, {"agent_id": agent_id})
            elif kind == "reply":
                r = inbox.post(f"/v1/rooms/{room}/messages", actor, {"text": "balasan"})
            else:
                r = inbox.post(f"/v1/rooms/{room}/resolve", actor)
            assert r.status_code in (200, 201, 403, 404, 409), r.text  # refusals are fine, errors are not

    inbox.project()

    assert counters_table(db_settings) == recount(db_settings)
    for role, user in VIEWERS:
        got = inbox.counters(inbox.headers(role, user))
        assert {k: got[k] for k in ("messages", "comments", "unassigned", "statuses")} == visible_recount(
            db_settings, inbox.org, role, user), (role, user)
