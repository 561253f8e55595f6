"""What one viewer's stream makes of a page of the change log (domain visibility, ids, resets)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from domain.staff import Actor, Role
from inbox.adapters.live import ChangeHub, Feed, LiveEvent, frame
from inbox.adapters.read_models.changes import Change, ChangePage, counter_key
from inbox.config import Settings

ROOM = "00000000-0000-0000-0000-000000000001"
MSG = "00000000-0000-0000-0000-0000000000aa"
ADMIN = Actor("admin1", "org1", Role.ADMIN)
AGENT1 = Actor("agent1", "org1", Role.AGENT)
AGENT2 = Actor("agent2", "org1", Role.AGENT)
OTHER_ORG = Actor("admin9", "org2", Role.ADMIN)


def change(position: int, *, before: str | None = None, after: str | None = None, existed: bool = True,
           kind: str = "room", messages: tuple[str, ...] = ()) -> Change:
    return Change(position, kind, "org1" if kind == "room" else None, ROOM if kind == "room" else None, position,
                  existed, before, after, messages)


def page(*changes: Change, assignee: str | None = None, after: int = 0) -> ChangePage:
    p = ChangePage(after=after, upto=max(c.position for c in changes), head=max(c.position for c in changes),
                   horizon=0, changes=list(changes))
    p.rooms = {ROOM: {"id": ROOM, "assignee": assignee, "version": changes[-1].position}}
    p.messages = {MSG: {"id": MSG, "room_id": ROOM, "text": "hi"}}
    for actor in (ADMIN, AGENT1, AGENT2):  # read_changes reads counters of the orgs that changed
        p.counters[counter_key(actor)] = {"unassigned": 1, "who": actor.user_id}
    return p


def render(actor: Actor, p: ChangePage, cursor: int = 0) -> list[tuple[str, Any, int | None]]:
    feed = Feed(ChangeHub(Settings()), actor, None)
    feed.cursor = cursor
    return [(e.name, orjson.loads(e.json), e.position) for e in feed.render(p)]


def test_a_new_unassigned_room_reaches_every_staff_viewer_of_the_org_with_its_message() -> None:
    p = page(change(5, existed=False, messages=(MSG,)))
    for actor in (ADMIN, AGENT1, AGENT2):
        assert [(n, pos) for n, _, pos in render(actor, p)] == [("message", 5), ("room", 5), ("counters", 5)]


def test_nothing_crosses_organizations() -> None:
    p = page(change(5, existed=False, messages=(MSG,)))
    assert [n for n, _, _ in render(OTHER_ORG, p)] == []


def test_a_room_assigned_to_another_agent_is_hidden_without_its_content() -> None:
    p = page(change(7, before=None, after="agent1", messages=(MSG,)), assignee="agent1")
    assert render(AGENT2, p) == [("room_hidden", {"id": ROOM, "version": 7}, 7),
                                 ("counters", {"unassigned": 1, "who": "agent2"}, 7)]
    assert [n for n, _, _ in render(AGENT1, p)] == ["message", "room", "counters"]


def test_a_room_never_seen_is_not_announced_as_hidden() -> None:
    p = page(change(3, existed=False, after="agent1"), assignee="agent1")
    assert [n for n, _, _ in render(AGENT2, p)] == ["counters"]


def test_changes_at_or_before_the_cursor_are_not_sent_again() -> None:
    p = page(change(4, existed=False, messages=(MSG,)), change(5, messages=()), after=3)
    assert [(n, pos) for n, _, pos in render(ADMIN, p, cursor=4)] == [("room", 5), ("counters", 5)]


def test_a_rebuild_resets_first_and_drops_what_came_before_it() -> None:
    p = page(change(4, messages=(MSG,)), change(5, kind="reset"))
    events = render(ADMIN, p)
    assert events[0] == ("reset", {"reason": "rebuilt", "position": 5}, None)
    assert [n for n, _, _ in events[1:]] == ["counters"]


def test_an_expired_page_resets_first_a_viewer_behind_the_horizon_and_sends_its_counters_anew() -> None:
    """The hub's reader fell behind the pruning: its page has no rows, and what the viewer missed is gone."""
    for shared in (False, True):  # the stream's own rendering, and the one shared by the streams of a page
        feed = Feed(ChangeHub(Settings()), ADMIN, None)
        before = page(change(3))
        feed.render(before)  # the viewer has these counters already
        p = ChangePage(after=3, upto=20, head=20, horizon=10)
        p.counters[counter_key(ADMIN)] = before.counters[counter_key(ADMIN)]
        assert p.expired
        sent = feed.render_frames(p) if shared else frame(feed.render(p))
        assert sent == frame([LiveEvent("reset", b'{"reason":"expired","position":20}', None),
                              LiveEvent("counters", b'{"unassigned":1,"who":"admin1"}', 20)])
        assert feed.cursor == 20


def test_a_stream_inside_the_log_reads_an_expired_page_s_span_itself_instead_of_skipping_it() -> None:
    """A stream opened at the log's end while the hub's reader was still behind the pruning: the
    hub's expired page has no rows, but the changes after the stream's cursor are in the log."""

    async def run() -> list[str]:
        feed = Feed(ChangeHub(Settings()), ADMIN, None)
        feed.cursor = 12  # inside the log: the horizon is 10

        async def read(after: int | None, **_: Any) -> ChangePage:
            assert after == 12
            return page(change(15, messages=(MSG,)), after=12)

        feed.hub.read = read  # type: ignore[method-assign]
        feed.sub.queue.put_nowait(ChangePage(after=3, upto=15, head=15, horizon=10))
        feed.sub.queue.put_nowait(None)  # then the hub ends the stream
        return [chunk.decode() async for chunk in feed.events(60) if chunk]

    sent = "".join(asyncio.run(run()))
    assert "event: message" in sent and "event: room" in sent and "reset" not in sent


def test_the_id_goes_on_the_last_event_of_each_position_only() -> None:
    frames = frame([LiveEvent("message", b"{}", 5), LiveEvent("room", b"{}", 5), LiveEvent("counters", b"{}", 6),
                     LiveEvent("reset", b"{}", None)]).decode()
    assert frames == ("event: message\ndata: {}\n\n" "id: 5\nevent: room\ndata: {}\n\n"
                      "id: 6\nevent: counters\ndata: {}\n\n" "event: reset\ndata: {}\n\n")


def test_the_shared_rendering_sends_exactly_what_each_viewer_renders_alone() -> None:
    """render_frames (one rendering per class of sights, reused) == framing this viewer's own render."""
    rooms = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(1, 6)]
    assignees = [None, "agent1", "agent2", "agent3", None]
    viewers = [ADMIN, AGENT1, AGENT2, Actor("agent3", "org1", Role.AGENT), Actor("agent4", "org1", Role.AGENT),
               Actor("sup1", "org1", Role.SUPERVISOR), OTHER_ORG]
    pages: list[ChangePage] = []
    position = 0
    for round_ in range(5):
        changes = []
        after = position
        for i, (room, assignee) in enumerate(zip(rooms, assignees)):
            if (i + round_) % 3 == 0:
                continue
            position += 1
            before = assignees[(i + round_) % len(assignees)] if round_ else None
            changes.append(Change(position, "room", "org1", room, position, round_ > 0, before, assignee,
                                  (f"m{position}",)))
        if round_ == 1:  # a room of another organization
            position += 1
            changes.append(Change(position, "room", "org2", "00000000-0000-0000-0000-0000000000f2", position, False, None,
                                  None, ("x",)))
        if round_ == 3:  # the projections were rebuilt after these
            position += 1
            changes.insert(1, Change(position, "reset", None, None, None, False, None, None, ()))
            changes.sort(key=lambda c: c.position)
        p = ChangePage(after=after, upto=position, head=position, horizon=0, changes=changes)
        p.rooms = {c.room_id: {"id": c.room_id, "assignee": c.assignee_after, "version": c.position}
                   for c in changes if c.room_id and not (round_ == 2 and c.room_id == rooms[1])}  # one is gone
        p.messages = {m: {"id": m} for c in changes for m in c.message_ids}
        for actor in viewers:
            p.counters[counter_key(actor)] = {"round": round_ // 2, "who": actor.user_id}
        pages.append(p)
    for actor in viewers:
        shared, alone = Feed(ChangeHub(Settings()), actor, None), Feed(ChangeHub(Settings()), actor, None)
        for p in pages:
            assert shared.render_frames(p) == frame(alone.render(p)), (actor, p.after)
            assert shared.cursor == alone.cursor


def test_counters_by_key_are_each_viewers_own_counters_json() -> None:
    """Viewers with equal counter values share one computed dict, and every one equals counters_json."""
    import random

    from domain.channels import TABS
    from domain.room import STATUSES
    from domain.visibility import ALL, NOBODY
    from inbox.adapters.read_models.changes import counters_by_key
    from inbox.adapters.read_models.queries import counters_json

    rng = random.Random(10)
    agents = [Actor(f"agent{i}", org, Role.AGENT) for org in ("org1", "org2") for i in range(12)]
    managers = [Actor("admin1", "org1", Role.ADMIN), Actor("sup1", "org1", Role.SUPERVISOR),
                Actor("admin2", "org2", Role.ADMIN), Actor("int1", "org1", Role.INTEGRATION)]
    for _ in range(30):
        rows = [{"org_id": org, "tab": tab, "status": status, "assignee": key,
                 "rooms": rng.choice((0, 1, 2)), "awaiting": rng.choice((0, 1))}
                for org in ("org1", "org2") for key in (ALL, NOBODY, *(f"agent{i}" for i in range(12)))
                for tab in TABS for status in STATUSES if rng.random() < 0.6]
        viewers = rng.sample(agents + managers, 20)
        got = counters_by_key(rows, viewers)
        assert set(got) == {counter_key(a) for a in viewers}
        for actor in viewers:
            assert got[counter_key(actor)] == counters_json(actor, [r for r in rows if r["org_id"] == actor.org_id])
    rows = [{"org_id": "org1", "tab": "messages", "status": "assigned", "assignee": key, "rooms": 1, "awaiting": 1}
            for key in (ALL, ALL, "agent0", "agent1", "agent2")]
    rows[-1]["awaiting"] = 0
    got = counters_by_key(rows, agents[:3])
    assert got[counter_key(agents[0])] is got[counter_key(agents[1])]  # computed once
    assert got[counter_key(agents[2])] != got[counter_key(agents[0])]


def test_the_shared_rendering_equals_each_viewers_own_on_random_pages() -> None:
    """Many agents named in one page (each decided on its own groups over a shared class) and rooms
    moving between agents, unassigned, gone or new: render_frames == framing the viewer's own render."""
    import random

    rng = random.Random(11)
    people = [None, *(f"agent{i}" for i in range(8))]
    viewers = [Actor(f"agent{i}", "org1", Role.AGENT) for i in range(10)] + [ADMIN, OTHER_ORG]
    rooms = [f"00000000-0000-0000-0000-0000000001{i:02d}" for i in range(30)]
    held: dict[str, str | None] = {}
    position = 0
    pages: list[ChangePage] = []
    for _ in range(40):
        after = position
        changes = []
        for room in rng.sample(rooms, rng.randint(1, 12)):
            for _ in range(rng.randint(1, 2)):
                position += 1
                before, now = held.get(room), rng.choice(people)
                org = "org2" if room == rooms[0] else "org1"
                changes.append(Change(position, "room", org, room, position, room in held, before, now,
                                      (f"m{position}",) if rng.random() < 0.7 else ()))
                held[room] = now
        p = ChangePage(after=after, upto=position, head=position, horizon=0, changes=changes)
        p.rooms = {c.room_id: {"id": c.room_id, "assignee": held[c.room_id], "version": c.position}
                   for c in changes if c.room_id and rng.random() < 0.9}
        p.messages = {m: {"id": m} for c in changes for m in c.message_ids}
        for actor in viewers:
            p.counters[counter_key(actor)] = {"n": rng.randint(0, 1)}
        pages.append(p)
    feeds = [(Feed(ChangeHub(Settings()), a, None), Feed(ChangeHub(Settings()), a, None)) for a in viewers]
    for p in pages:
        for shared, alone in rng.sample(feeds, len(feeds)):  # classes computed in a different order each page
            assert shared.render_frames(p) == frame(alone.render(p)), (shared.actor, p.after)
