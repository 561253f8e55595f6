"""Who sees which room (SPEC §2 "Visibility"): the rule stated once, as data, and rendered twice.

- admins and supervisors see every room of their organization;
- an agent sees the unassigned rooms of their organization and the rooms assigned to them,
  never a room assigned to someone else;
- any other role (`integration`) sees no room: integrations record inbound messages, they do not
  read or work the staff inbox (the API refuses them every staff route with 403);
- nothing is ever visible across organizations.

`sight(actor)` is that rule as data. `can_see` checks it in Python (the aggregate's commands);
`sql_predicate` and `sql_partitions` render it as SQL text with parameters for the read models;
`counter_keys` names the maintained counter rows that add up to it. A property test
(tests/integration/test_visibility_property.py) checks that the Python check and the SQL
agree on random rooms and viewers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domain.staff import Actor, Role

# Assignee keys of the maintained counters (projections.counters): each room counts once under
# its assignee (NOBODY when unassigned) and once under ALL, the organization's total.
ALL = "*"
NOBODY = "-"


@dataclass(frozen=True)
class Sight:
    """The rooms one viewer sees: rooms of `org_id`, either all of them (`whole_org`) or those
    whose assignee is one of `assignees` (None: the unassigned rooms)."""

    org_id: str
    whole_org: bool = False
    assignees: tuple[str | None, ...] = ()

    def sees(self, org_id: str, assignee: str | None) -> bool:
        """Whether this sight covers a room of `org_id` currently assigned to `assignee`."""
        return org_id == self.org_id and (self.whole_org or assignee in self.assignees)


def sight(actor: Actor) -> Sight:
    if actor.role.manages_rooms:
        return Sight(actor.org_id, whole_org=True)
    if actor.role == Role.AGENT:
        return Sight(actor.org_id, assignees=(None, actor.user_id))
    return Sight(actor.org_id)


def can_see(actor: Actor, org_id: str, assignee: str | None) -> bool:
    """Whether `actor` sees a room of `org_id` currently assigned to `assignee` (None: unassigned)."""
    return sight(actor).sees(org_id, assignee)


def counter_key(assignee: str | None) -> str:
    """The counter row a room's assignee counts under."""
    return NOBODY if assignee is None else assignee


def counter_keys(actor: Actor) -> list[str]:
    """The counter rows (of the viewer's organization) whose sum is exactly the rooms the viewer sees."""
    s = sight(actor)
    return [ALL] if s.whole_org else [counter_key(a) for a in s.assignees]


def sql_partitions(actor: Actor, alias: str = "r") -> list[tuple[str, list[Any]]]:
    """Visibility as disjoint SQL conditions on `alias`.org_id / `alias`.assignee, with parameters.

    Each part is one index range (organization, or organization and assignee), so a list can read
    every part in activity order and merge them instead of scanning past other agents' rooms.
    Never empty: a viewer who sees nothing gets one condition that matches no row.
    """
    s = sight(actor)
    org = f"{alias}.org_id = %s"
    if s.whole_org:
        return [(org, [s.org_id])]
    if not s.assignees:
        return [(f"{org} AND false", [s.org_id])]
    return [
        (f"{org} AND {cond}", [s.org_id, *params]) for cond, params in (_assignee_is(alias, a) for a in s.assignees)
    ]


def sql_predicate(actor: Actor, alias: str = "r") -> tuple[str, list[Any]]:
    """Visibility as one SQL condition on `alias`.org_id / `alias`.assignee, with parameters."""
    s = sight(actor)
    org = f"{alias}.org_id = %s"
    if s.whole_org:
        return org, [s.org_id]
    if not s.assignees:
        return f"{org} AND false", [s.org_id]
    conds = [_assignee_is(alias, a) for a in s.assignees]
    return (
        f"{org} AND (" + " OR ".join(c for c, _ in conds) + ")",
        [s.org_id, *(p for _, params in conds for p in params)],
    )


def _assignee_is(alias: str, assignee: str | None) -> tuple[str, list[Any]]:
    if assignee is None:
        return f"{alias}.assignee IS NULL", []
    return f"{alias}.assignee = %s", [assignee]
