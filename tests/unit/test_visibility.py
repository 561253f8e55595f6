"""Who sees which room (SPEC §2 "Visibility"), and the counter rows that add up to it.

The SQL rendering of the same rule is checked against `can_see` on real PostgreSQL in
tests/integration/test_visibility_property.py.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from domain.staff import Actor, Role
from domain.visibility import ALL, can_see, counter_key, counter_keys

ORG = "org-1"
OTHER_ORG = "org-2"
USERS = ["admin-1", "spv-1", "agent-1", "agent-2", "bridge"]


@given(assignee=st.one_of(st.none(), st.sampled_from(USERS)))
def test_integration_sees_no_room(assignee: str | None) -> None:
    """Integrations record inbound messages; they cannot use the staff inbox, so they see no room."""
    assert not can_see(Actor("bridge", ORG, Role.INTEGRATION), ORG, assignee)


def test_integration_reads_no_counter_rows() -> None:
    assert counter_keys(Actor("bridge", ORG, Role.INTEGRATION)) == []


rooms = st.lists(st.tuples(st.sampled_from([ORG, OTHER_ORG]), st.one_of(st.none(), st.sampled_from(USERS))), max_size=30)
viewers = st.builds(Actor, st.sampled_from(USERS), st.sampled_from([ORG, OTHER_ORG]), st.sampled_from(list(Role)))


@given(rooms=rooms, viewer=viewers)
def test_the_viewers_counter_rows_add_up_to_the_rooms_they_see(
    rooms: list[tuple[str, str | None]], viewer: Actor
) -> None:
    """Each room counts under its assignee's key and under ALL (projections.counters): summing the
    viewer's keys over the viewer's organization counts every room they see exactly once."""
    keys = counter_keys(viewer)
    counted = sum(
        len({counter_key(assignee), ALL} & set(keys)) for org, assignee in rooms if org == viewer.org_id
    )
    assert counted == sum(can_see(viewer, org, assignee) for org, assignee in rooms)
