"""The change log of the read models (`room_changes`): what the live stream (GET /v1/stream) reads.

The projection writes one row per changed room in the same transaction as the read models
(`writer.record_changes`), under `CHANGES_LOCK`, so positions are handed out in commit order:
reading `position > n` never skips a row that commits later with a lower position.

`read_changes` reads a page of rows *and* everything needed to render them — the rooms, the
messages and the counters of the viewers asking — in one REPEATABLE READ snapshot, so a room
event, its messages and the counters sent after them describe the same moment.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from domain.staff import Actor
from domain.visibility import ALL, counter_keys
from inbox.adapters.read_models.queries import counters_json, message_json, room_json
from inbox.adapters.read_models.writer import CHANGES_LOCK, end_transaction

CHANNEL_PREFIX = "inbox_changes:"

CounterKey = tuple[str, tuple[str, ...]]


def channel(schema: str) -> str:
    """The NOTIFY channel of one Inbox schema (`writer.NOTIFY_LAST_CHANGE` builds the same name)."""
    return f"{CHANNEL_PREFIX}{schema}"


@functools.lru_cache(maxsize=4096)
def counter_key(actor: Actor) -> CounterKey:
    """Viewers with the same key see the same counters (`counters_json` depends on nothing else).

    Cached: the stream's reader asks it for every open stream's viewer on every page it reads.
    """
    return actor.org_id, tuple(sorted(counter_keys(actor)))


@dataclass(frozen=True)
class Change:
    position: int
    kind: str  # 'room' | 'reset'
    org_id: str | None
    room_id: str | None
    version: int | None
    existed_before: bool
    assignee_before: str | None
    assignee_after: str | None
    message_ids: tuple[str, ...]


@dataclass
class ChangePage:
    """Rows in (after, upto] and what renders them, as of one snapshot; `head` is the log's end."""

    after: int
    upto: int
    head: int
    horizon: int  # positions at or below were pruned
    changes: list[Change] = field(default_factory=list)
    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)  # room id -> room_json
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # message id -> message_json
    counters: dict[CounterKey, dict[str, Any]] = field(default_factory=dict)
    _encoded: dict[Any, bytes] = field(default_factory=dict, repr=False)
    views: dict[Any, Any] = field(default_factory=dict, repr=False)  # renderings shared by streams (adapters.live)

    def encode(self, key: Any, data: dict[str, Any]) -> bytes:
        """`data` as JSON, encoded once per page however many streams send it (`key` names it)."""
        if (found := self._encoded.get(key)) is None:
            found = self._encoded[key] = orjson.dumps(data, option=orjson.OPT_UTC_Z)
        return found

    @property
    def more(self) -> bool:
        return self.upto < self.head

    @property
    def expired(self) -> bool:
        """Rows after `after` were pruned (up to `horizon`): the page holds none, its `upto` is the log's end."""
        return self.after < self.horizon


# Positions at or below were pruned (no row yet: nothing was).
_HORIZON = "coalesce((SELECT pruned_upto FROM room_changes_horizon), 0)"
# The page's rows, as every query of `read_changes` selects them (the same snapshot gives the same rows);
# none after a pruned position (an expired page): the horizon is compared once, before any row is read.
_PAGE = (
    "SELECT {} FROM room_changes WHERE position > %(after)s AND %(after)s >= " + _HORIZON
    + " ORDER BY position LIMIT %(limit)s"
)
_READ_MARKS = f"SELECT {_HORIZON} AS horizon, (SELECT max(position) FROM room_changes) AS head"
_READ_CHANGES = _PAGE.format(
    "position, kind, org_id, room_id::text AS room_id, version, existed_before, assignee_before, assignee_after,"
    " message_ids::text[] AS message_ids"
)
# `= ANY(ARRAY(subquery))`: the page's ids are computed once, then looked up by primary key.
_READ_ROOMS = (
    "SELECT r.*, now() AS _now FROM rooms r WHERE r.id = ANY(ARRAY("
    f"SELECT room_id FROM ({_PAGE.format('room_id')}) c WHERE room_id IS NOT NULL))"
)
_READ_MESSAGES = f"SELECT * FROM messages WHERE id = ANY(ARRAY(SELECT unnest(message_ids) FROM ({_PAGE.format('message_ids')}) c))"
# The lists go in binary (%b): psycopg writes a list as a text array literal in Python, character
# by character (0.7 ms for the keys of 180 agents), and in binary about 8x faster.
_COUNTER_ROWS = "SELECT org_id, tab, status, assignee, rooms, awaiting FROM counters WHERE assignee = ANY(%(keys)b) AND "
_READ_COUNTERS = _COUNTER_ROWS + "org_id = ANY(%(orgs)b)"
_READ_COUNTERS_OF_PAGE = (  # only the organizations the page changes
    _COUNTER_ROWS + f"org_id = ANY(ARRAY(SELECT DISTINCT org_id FROM ({_PAGE.format('org_id')}) c"
    " WHERE org_id = ANY(%(orgs)b)))"
)


# `after` of a read that starts at the log's end: beyond any position (bigint's largest value). A
# larger `after` (a client's Last-Event-ID) is read as this one: compared as a bigint, its page is
# an empty index range; as the numeric it would be sent as, every row of the log would be compared.
_BEYOND = 2**63 - 1


async def read_changes(
    conn: AsyncConnection[Any], after: int | None, *, limit: int, viewers: Iterable[Actor] = (),
    all_counters: bool = False,
) -> ChangePage:
    """Rows after `after` (at most `limit`) with their rooms, messages and the viewers' counters.

    `after=None`: no rows, the log's end as of the snapshot (the page's `after` and `upto`): a
    new stream's position and its viewer's counters, in one read. `after` below the horizon (an
    expired page): no rows either, none read, and `upto` is the log's end.

    Counters are read for the viewers whose organization has a change in the page (or for all of
    them with `all_counters`); each distinct `counter_key` once.

    Every query goes out at once (pipeline mode) and selects the page's rows itself: the read is
    one round trip to the database, not one per query (the stream's freshness on a busy machine).
    `conn` is in autocommit mode (the snapshot's BEGIN and COMMIT are statements of the pipeline).
    """
    viewers = list(viewers)
    params = {"after": _BEYOND if after is None else min(after, _BEYOND), "limit": limit,
              "orgs": list({a.org_id for a in viewers}),
              "keys": list({ALL, *(k for a in viewers for k in counter_key(a)[1])})}
    # BEGIN and COMMIT as statements: conn.transaction() in a pipeline syncs at its exit and again
    # after COMMIT, each a round trip more. One Sync, at the pipeline's exit, fills every cursor.
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            marks_cur = await conn.cursor(row_factory=dict_row).execute(_READ_MARKS)
            if limit > 0:
                changes_cur = await conn.cursor(row_factory=dict_row).execute(_READ_CHANGES, params)
                rooms_cur = await conn.cursor(row_factory=dict_row).execute(_READ_ROOMS, params)
                messages_cur = await conn.cursor(row_factory=dict_row).execute(_READ_MESSAGES, params)
                counters_cur = await conn.cursor(row_factory=dict_row).execute(
                    _READ_COUNTERS if all_counters else _READ_COUNTERS_OF_PAGE, params) if viewers else None
            await conn.execute("COMMIT")
    except BaseException:
        await end_transaction(conn)
        raise
    marks = await marks_cur.fetchone()
    assert marks is not None
    horizon = int(marks["horizon"])
    head = max(int(marks["head"] or 0), horizon)
    if after is None:
        after = head
    if limit <= 0:
        return ChangePage(after, head, head, horizon)
    changes = [
        Change(r["position"], r["kind"], r["org_id"], r["room_id"], r["version"], r["existed_before"],
               r["assignee_before"], r["assignee_after"], tuple(r["message_ids"] or ()))
        for r in await changes_cur.fetchall()
    ]
    page = ChangePage(after, changes[-1].position if changes and len(changes) == limit else head, head, horizon, changes)
    page.rooms = {str(r["id"]): room_json(r, r["_now"]) for r in await rooms_cur.fetchall()}
    page.messages = {str(r["id"]): message_json(r) for r in await messages_cur.fetchall()}
    if counters_cur is not None:
        orgs = {c.org_id for c in changes}
        page.counters = counters_by_key(
            await counters_cur.fetchall(), (a for a in viewers if all_counters or a.org_id in orgs))
    return page


def counters_by_key(rows: Iterable[dict[str, Any]], viewers: Iterable[Actor]) -> dict[CounterKey, dict[str, Any]]:
    """`counters_json` of each viewer's `counter_key` (each once), from the counter rows of their keys.

    counters_json reads only the rows of the organization's total (ALL) and of the viewer's keys,
    and looks at a row's assignee only to ask whether it is ALL and whether it is one of the
    viewer's keys (which every row handed to it of a key other than ALL is). So two viewers whose
    key groups hold the same values, group by group, have the same counters: the badges of the 180
    agents of a page differ only by their own few rows. Each such signature is computed once and
    its dict shared (so a stream's encoding of it is shared too, `adapters.live`).
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["org_id"], r["assignee"]), []).append(r)
    interned: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    value_ids: dict[tuple[str, str], int] = {}  # the id of the interned values of each group (equal values: equal ids)
    for gk, group in groups.items():
        values = tuple((r["tab"], r["status"], r["rooms"], r["awaiting"]) for r in group)
        value_ids[gk] = id(interned.setdefault(values, values))
    out: dict[CounterKey, dict[str, Any]] = {}
    by_signature: dict[tuple[Any, ...], dict[str, Any]] = {}
    for actor in viewers:
        key = counter_key(actor)
        if key in out:
            continue
        org, keys = key
        ordered = dict.fromkeys((ALL, *keys))
        signature = tuple((k == ALL, k in keys, value_ids.get((org, k))) for k in ordered)
        if (found := by_signature.get(signature)) is None:
            found = by_signature[signature] = counters_json(
                actor, [r for k in ordered for r in groups.get((org, k), ())])
        out[key] = found
    return out


async def record_reset(conn: AsyncConnection[Any]) -> int:
    """A `reset` row (the projections were rebuilt): streams tell their clients to re-fetch."""
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGES_LOCK,))
    row = await (await conn.execute("INSERT INTO room_changes (kind) VALUES ('reset') RETURNING position")).fetchone()
    assert row is not None
    await conn.execute("SELECT pg_notify('inbox_changes:' || current_schema(), %s::text)", (str(row[0]),))
    return int(row[0])


async def prune(conn: AsyncConnection[Any], retention_s: float) -> int:
    """Delete rows older than the retention; clients resuming from before them get `reset`."""
    async with conn.transaction():
        row = await (await conn.execute(
            "SELECT max(position) FROM room_changes WHERE created_at < now() - make_interval(secs => %s)",
            (retention_s,),
        )).fetchone()
        upto = row[0] if row else None
        if upto is None:
            return 0
        deleted = await conn.execute("DELETE FROM room_changes WHERE position <= %s", (upto,))
        await conn.execute(
            "UPDATE room_changes_horizon SET pruned_upto = greatest(pruned_upto, %s) WHERE id = 1", (upto,)
        )
        return deleted.rowcount
