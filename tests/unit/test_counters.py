"""projections.counters: each room's contribution, net deltas, and exactness against a recount."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.channels import Channel
from domain.errors import DomainError
from domain.room import Room
from domain.staff import Actor, Role
from inbox.adapters.wire import to_wire
from projections.counters import ALL, NOBODY, CounterDelta, CounterKey, contributions, deltas
from projections.rooms import RoomView, apply

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


# ---- builders -------------------------------------------------------------------------------
def view(
    status: str = "unassigned", assignee: str | None = None, awaiting: bool = True,
    org_id: str = "org-1", tab: str = "messages",
) -> RoomView:
    return RoomView(
        id="room-1", org_id=org_id, tab=tab, channel="whatsapp_cloud", channel_account_id="account-1",
        channel_account="Shop", contact_id="contact-1", contact_name=None, contact_phone=None,
        contact_handle=None, post_id=None, status=status, assignee=assignee, awaiting_reply=awaiting,
        last_inbound_at=None, expires_at=None, last_message_id=None, last_message_direction=None,
        last_message_text=None, last_message_at=None, opened_at=T0, updated_at=T0, version=1,
    )


# ---- contributions --------------------------------------------------------------------------
def test_no_room_contributes_nothing() -> None:
    assert contributions(None) == {}


def test_unassigned_room_counts_for_nobody_and_the_total() -> None:
    assert contributions(view("unassigned", None, awaiting=True)) == {
        ("org-1", "messages", "unassigned", NOBODY): CounterDelta(rooms=1, awaiting=1),
        ("org-1", "messages", "unassigned", ALL): CounterDelta(rooms=1, awaiting=1),
    }


def test_assigned_room_counts_for_its_assignee_and_the_total() -> None:
    assert contributions(view("assigned", "agent-1", awaiting=False, tab="comments")) == {
        ("org-1", "comments", "assigned", "agent-1"): CounterDelta(rooms=1, awaiting=0),
        ("org-1", "comments", "assigned", ALL): CounterDelta(rooms=1, awaiting=0),
    }


# ---- deltas ---------------------------------------------------------------------------------
def test_new_room_adds_its_contribution() -> None:
    after = view("unassigned", None, awaiting=True)

    assert deltas([(None, after)]) == contributions(after)


def test_assignment_moves_the_room_between_assignees() -> None:
    before = view("unassigned", None, awaiting=True)
    after = view("assigned", "agent-1", awaiting=True)

    assert deltas([(before, after)]) == {
        ("org-1", "messages", "assigned", ALL): CounterDelta(1, 1),
        ("org-1", "messages", "assigned", "agent-1"): CounterDelta(1, 1),
        ("org-1", "messages", "unassigned", ALL): CounterDelta(-1, -1),
        ("org-1", "messages", "unassigned", NOBODY): CounterDelta(-1, -1),
    }


def test_reply_changes_only_awaiting() -> None:
    before = view("assigned", "agent-1", awaiting=True)
    after = view("assigned", "agent-1", awaiting=False)

    assert deltas([(before, after)]) == {
        ("org-1", "messages", "assigned", ALL): CounterDelta(0, -1),
        ("org-1", "messages", "assigned", "agent-1"): CounterDelta(0, -1),
    }


def test_zero_deltas_are_omitted() -> None:
    same = view("assigned", "agent-1")

    assert deltas([(same, replace(same, version=2))]) == {}


def test_transitions_in_one_batch_cancel_out() -> None:
    a = view("unassigned", None, awaiting=True)
    b = view("assigned", "agent-1", awaiting=False)

    assert deltas([(a, b), (b, a)]) == {}


def test_delta_keys_are_sorted() -> None:
    before = view("unassigned", None, org_id="org-b")
    after = view("resolved", "agent-1", awaiting=False, org_id="org-a")

    keys = list(deltas([(before, after), (None, view(org_id="org-c", tab="comments"))]))

    assert keys == sorted(keys)
    assert len(keys) == 6


# ---- exactness against a recount (property) --------------------------------------------------
ROOMS = [  # (org, channel, contact, post)
    ("org-1", Channel.WHATSAPP_CLOUD, "c1", None),
    ("org-1", Channel.INSTAGRAM, "c2", None),
    ("org-1", Channel.INSTAGRAM_COMMENT, "c1", "post-1"),
    ("org-2", Channel.FACEBOOK_MESSENGER, "c1", None),
    ("org-2", Channel.FACEBOOK_COMMENT, "c3", "post-9"),
]
USERS = [("admin-1", Role.ADMIN), ("spv-1", Role.SUPERVISOR), ("agent-1", Role.AGENT), ("agent-2", Role.AGENT)]
AGENT_IDS = ["agent-1", "agent-2"]
COMMANDS = ["inbound", "reply", "assign", "take", "resolve", "resolve_expired"]

steps = st.lists(
    st.tuples(
        st.integers(0, len(ROOMS) - 1),
        st.sampled_from(COMMANDS),
        st.sampled_from(USERS),
        st.sampled_from(AGENT_IDS),
    ),
    min_size=5,
    max_size=60,
)


def run(room: Room | None, spec: tuple, command: str, actor: Actor, agent_id: str, step: int) -> Room | None:
    """Apply one command; a refused command (DomainError) simply records nothing."""
    org, channel, contact, post = spec
    at = T0 + timedelta(minutes=step)
    try:
        if command == "inbound":
            if room is None:
                room = Room.open(
                    org_id=org, channel=channel, channel_account_id=f"{org}-{channel}",
                    channel_account="Shop", contact_id=contact, post_id=post,
                )
            room.receive(channel_message_id=f"m{step}", text="hi", sent_at=at)
        elif room is None:
            pass  # no room yet: only an inbound message opens one
        elif command == "reply":
            room.reply(actor, message_id=f"out{step}", text="hello", sent_at=at)
        elif command == "assign":
            room.assign(actor, agent_id=agent_id)
        elif command == "take":
            room.assign(actor, agent_id=actor.user_id)
        elif command == "resolve":
            room.resolve(actor)
        elif command == "resolve_expired":
            room.resolve(actor, reason="expired")
    except DomainError:
        pass
    return room


def play(story: list[tuple]) -> tuple[dict[int, Room], dict[int, RoomView], dict[CounterKey, list[int]]]:
    """Drive the domain, fold its wire events into views and accumulate counter deltas per step."""
    rooms: dict[int, Room] = {}
    views: dict[int, RoomView] = {}
    counters: dict[CounterKey, list[int]] = {}
    for step, (i, command, (user_id, role), agent_id) in enumerate(story):
        spec = ROOMS[i]
        actor = Actor(user_id, spec[0], role)
        room = run(rooms.get(i), spec, command, actor, agent_id, step)
        if room is None:
            continue
        rooms[i] = room
        transitions = []
        for domain_event in room.collect_events():
            before = views.get(i)
            after, _ = apply(before, to_wire(domain_event))
            transitions.append((before, after))
            views[i] = after
        for key, d in deltas(transitions).items():
            total = counters.setdefault(key, [0, 0])
            total[0] += d.rooms
            total[1] += d.awaiting
    return rooms, views, counters


def recount(views: list[RoomView]) -> dict[CounterKey, tuple[int, int]]:
    rooms: Counter[CounterKey] = Counter()
    awaiting: Counter[CounterKey] = Counter()
    for v in views:
        for assignee in (v.assignee or NOBODY, ALL):
            key = (v.org_id, v.tab, v.status, assignee)
            rooms[key] += 1
            awaiting[key] += int(v.awaiting_reply)
    return {k: (rooms[k], awaiting[k]) for k in rooms}


def nonzero(counters: dict[CounterKey, list[int]]) -> dict[CounterKey, tuple[int, int]]:
    return {k: (r, a) for k, (r, a) in counters.items() if r or a}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_accumulated_counters_equal_a_recount_of_the_views(story: list[tuple]) -> None:
    _, views, counters = play(story)

    assert nonzero(counters) == recount(list(views.values()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_projected_views_agree_with_the_aggregates(story: list[tuple]) -> None:
    rooms, views, _ = play(story)

    for i, room in rooms.items():
        v = views[i]
        assert (v.status, v.assignee, v.awaiting_reply, v.version) == (
            room.status, room.assignee, room.awaiting_reply, room.version,
        )
        assert v.last_inbound_at == room.last_inbound_at
