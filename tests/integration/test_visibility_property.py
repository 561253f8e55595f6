"""The read side's SQL says what the domain says (hypothesis, real PostgreSQL).

Random rooms go into a temporary table with the room projection's columns; for random viewers
of every role, the SQL that domain.visibility renders must select exactly the rooms `can_see`
allows, and its disjoint parts (what the room list reads) must cover the same rooms once each.
Likewise the SQL rendering of "expired" must select exactly the rooms `has_expired` names.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.room import STATUSES, has_expired, has_expired_sql
from domain.staff import Actor, Role
from domain.visibility import ALL, NOBODY, can_see, sql_partitions, sql_predicate

pytestmark = pytest.mark.integration

ORGS = ["org1", "org2"]
USERS = ["admin1", "spv1", "agent1", "agent2", "bridge"]
NOW = datetime(2024, 5, 2, 9, 0, tzinfo=UTC)

# Any text PostgreSQL can store (no NUL), including the counters' own keys and quotes.
odd_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=4)
user_ids = st.one_of(st.sampled_from(USERS), st.sampled_from([ALL, NOBODY, "", "o'neil"]), odd_text)
rooms = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(ORGS), odd_text),
        st.one_of(st.none(), user_ids),
        st.sampled_from(STATUSES),
        st.one_of(st.none(), st.integers(-3, 3).map(lambda h: NOW + timedelta(hours=h))),
    ),
    max_size=25,
)
viewers = st.lists(
    st.builds(Actor, user_ids, st.one_of(st.sampled_from(ORGS), odd_text), st.sampled_from(list(Role))),
    min_size=1, max_size=6,
)


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        c.execute(
            "CREATE TEMP TABLE rooms (id int PRIMARY KEY, org_id text NOT NULL, assignee text,"
            " status text NOT NULL, expires_at timestamptz)"
        )
        yield c


def _load(conn: psycopg.Connection, rows: list[tuple[str, str | None, str, datetime | None]]) -> None:
    conn.execute("TRUNCATE rooms")
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO rooms (id, org_id, assignee, status, expires_at) VALUES (%s, %s, %s, %s, %s)",
            [(i, *row) for i, row in enumerate(rows)],
        )


def _ids(conn: psycopg.Connection, where: str, params: list[object]) -> list[int]:
    return [i for (i,) in conn.execute(f"SELECT r.id FROM rooms r WHERE {where} ORDER BY r.id", params).fetchall()]


@settings(max_examples=150, deadline=None)
@given(rows=rooms, people=viewers)
def test_sql_visibility_selects_exactly_the_rooms_can_see_allows(
    conn: psycopg.Connection, rows: list[tuple[str, str | None, str, datetime | None]], people: list[Actor]
) -> None:
    _load(conn, rows)
    for viewer in people:
        expected = [i for i, (org, assignee, _, _) in enumerate(rows) if can_see(viewer, org, assignee)]

        assert _ids(conn, *sql_predicate(viewer)) == expected, viewer


@settings(max_examples=150, deadline=None)
@given(rows=rooms, people=viewers)
def test_sql_visibility_parts_cover_the_visible_rooms_once_each(
    conn: psycopg.Connection, rows: list[tuple[str, str | None, str, datetime | None]], people: list[Actor]
) -> None:
    _load(conn, rows)
    for viewer in people:
        expected = [i for i, (org, assignee, _, _) in enumerate(rows) if can_see(viewer, org, assignee)]

        parts = [i for where, params in sql_partitions(viewer) for i in _ids(conn, where, params)]

        assert sorted(parts) == expected, viewer


@settings(max_examples=100, deadline=None)
@given(rows=rooms)
def test_sql_expiry_selects_exactly_the_rooms_has_expired_names(
    conn: psycopg.Connection, rows: list[tuple[str, str | None, str, datetime | None]]
) -> None:
    _load(conn, rows)
    expected = [i for i, (_, _, status, expires_at) in enumerate(rows) if has_expired(status, expires_at, NOW)]
    not_expected = [i for i in range(len(rows)) if i not in expected]

    assert _ids(conn, has_expired_sql("r", "%s"), [NOW]) == expected
    assert _ids(conn, f"NOT ({has_expired_sql('r', '%s')})", [NOW]) == not_expected
