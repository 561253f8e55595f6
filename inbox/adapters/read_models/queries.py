"""Read-side queries over the projections (never the event store), with role visibility.

Visibility (SPEC §2) is domain.visibility's rule, rendered as SQL there; no query re-types it.

Room lists are ordered by activity (`updated_at` = recorded time of the room's latest message,
then id), newest first, with a keyset cursor that also carries `as_of`: the newest activity on
the first page. Later pages rank every room by its activity *as of* that moment, so rooms that
receive messages while someone pages neither jump over the cursor (skipped) nor come back
(repeated):

- rooms with `updated_at <= as_of` have not moved since: their `updated_at` is their key
  (read in index order);
- rooms with `updated_at > as_of` moved since the first page: their key is the recorded time of
  their latest message at or before `as_of` (one lookup on `messages_by_recorded` each; only
  rooms changed since the first page, typically few); rooms with no message that old were
  opened after the first page and are left to a fresh first page.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from domain.channels import TABS, Channel
from domain.outbound import reply_window
from domain.errors import InvalidCommand, NotFound
from domain.room import STATUSES, has_expired, has_expired_sql
from domain.staff import Actor
from domain.visibility import ALL, counter_keys, sql_partitions, sql_predicate
from projections.rooms import delivery_json


@dataclass(frozen=True)
class RoomFilter:
    tab: str | None = None
    status: str = "all"
    channels: Sequence[str] = ()
    assignee: str | None = None
    awaiting_reply: bool | None = None
    expired: bool | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None


def filter_clauses(filt: RoomFilter, alias: str = "r") -> tuple[list[str], list[Any]]:
    """SQL conditions of the list filters (tab, status, channel, assignee, awaiting, expired, dates)."""
    clauses: list[str] = []
    params: list[Any] = []
    if filt.tab:
        clauses.append(f"{alias}.tab = %s")
        params.append(filt.tab)
    if filt.status != "all":
        clauses.append(f"{alias}.status = %s")
        params.append(filt.status)
    if filt.channels:
        clauses.append(f"{alias}.channel = ANY(%s)")
        params.append(list(filt.channels))
    if filt.assignee is not None:
        clauses.append(f"{alias}.assignee = %s")
        params.append(filt.assignee)
    if filt.awaiting_reply is not None:
        clauses.append(f"{alias}.awaiting_reply = %s")
        params.append(filt.awaiting_reply)
    if filt.expired is True:
        clauses.append(has_expired_sql(alias))
    elif filt.expired is False:
        clauses.append(f"NOT ({has_expired_sql(alias)})")
    if filt.updated_after is not None:
        clauses.append(f"{alias}.updated_at > %s")
        params.append(filt.updated_after)
    if filt.updated_before is not None:
        clauses.append(f"{alias}.updated_at < %s")
        params.append(filt.updated_before)
    return clauses, params


@dataclass(frozen=True)
class ListCursor:
    as_of: datetime  # newest activity on the first page
    key: datetime  # activity (as of `as_of`) of the last room returned
    id: str

    def encode(self) -> str:
        return encode_cursor({"a": self.as_of.isoformat(), "k": self.key.isoformat(), "i": self.id})

    @classmethod
    def decode(cls, cursor: str) -> ListCursor:
        c = decode_cursor(cursor)
        try:
            return cls(datetime.fromisoformat(c["a"]), datetime.fromisoformat(c["k"]), str(UUID(str(c["i"]))))
        except (KeyError, TypeError, ValueError):
            raise InvalidCommand("invalid cursor") from None


def rooms_page_sql(
    actor: Actor, filt: RoomFilter, *, limit: int, cursor: ListCursor | None
) -> tuple[str, list[Any]]:
    """One page of the room list (see the module docstring); rows carry `_key`, their activity key."""
    base, base_params = filter_clauses(filt)
    branches: list[str] = []
    params: list[Any] = []
    for part, part_params in sql_partitions(actor):
        where = " AND ".join([part, *base])
        if cursor is None:
            branches.append(
                f"(SELECT r.*, r.updated_at AS _key FROM rooms r WHERE {where}"
                " ORDER BY r.updated_at DESC, r.id DESC LIMIT %s)"
            )
            params += [*part_params, *base_params, limit]
            continue
        branches.append(
            f"(SELECT r.*, r.updated_at AS _key FROM rooms r WHERE {where}"
            " AND r.updated_at <= %s AND (r.updated_at, r.id) < (%s, %s::uuid)"
            " ORDER BY r.updated_at DESC, r.id DESC LIMIT %s)"
        )
        params += [*part_params, *base_params, cursor.as_of, cursor.key, cursor.id, limit]
        branches.append(
            f"(SELECT r.*, m.recorded_at AS _key FROM rooms r CROSS JOIN LATERAL ("
            " SELECT m.recorded_at FROM messages m WHERE m.room_id = r.id AND m.recorded_at <= %s"
            " ORDER BY m.recorded_at DESC LIMIT 1) m"
            f" WHERE {where} AND r.updated_at > %s AND (m.recorded_at, r.id) < (%s, %s::uuid))"
        )
        params += [cursor.as_of, *part_params, *base_params, cursor.as_of, cursor.key, cursor.id]
    sql = (
        "SELECT page.*, now() AS _now FROM (" + " UNION ALL ".join(branches) + ") page"
        " ORDER BY page._key DESC, page.id DESC LIMIT %s"
    )
    return sql, [*params, limit]


def counters_sql(actor: Actor) -> tuple[str, list[Any]]:
    """The viewer's counter rows (plus the org-wide rows for the unassigned badge): a key lookup."""
    mine = counter_keys(actor)
    return (
        "SELECT tab, status, assignee, rooms, awaiting FROM counters WHERE org_id = %s AND assignee = ANY(%s)",
        [actor.org_id, list({*mine, ALL})],
    )


def history_sql(room_id: str, before_seq: int | None, limit: int) -> tuple[str, list[Any]]:
    """A room's messages newest first (`messages_history`); `before_seq` is the cursor: older than that."""
    if before_seq is None:
        return "SELECT * FROM messages WHERE room_id = %s::uuid ORDER BY seq DESC LIMIT %s", [room_id, limit]
    return (
        "SELECT * FROM messages WHERE room_id = %s::uuid AND seq < %s ORDER BY seq DESC LIMIT %s",
        [room_id, before_seq, limit],
    )


def expired_rooms_sql(
    org_id: str, *, channels: Sequence[str], statuses: Sequence[str], cutoff: datetime,
    after: tuple[datetime, str] | None, limit: int,
) -> tuple[str, list[Any]]:
    """Expired, not resolved rooms in (expires_at, id) order, from `rooms_by_expiry`."""
    sql = (
        "SELECT r.id::text AS id, r.version, r.expires_at FROM rooms r"
        f" WHERE r.org_id = %s AND {has_expired_sql('r', '%s')}"
        " AND r.status = ANY(%s) AND r.channel = ANY(%s)"
    )
    params: list[Any] = [org_id, cutoff, list(statuses), list(channels)]
    if after is not None:
        sql += " AND (r.expires_at, r.id) > (%s, %s::uuid)"
        params += list(after)
    return sql + " ORDER BY r.expires_at, r.id LIMIT %s", [*params, limit]


def _room_uuid(room_id: str) -> str:
    try:
        return str(UUID(room_id))
    except ValueError:
        raise NotFound("room not found") from None


def encode_cursor(values: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidCommand("invalid cursor") from None
    if not isinstance(value, dict):
        raise InvalidCommand("invalid cursor")
    return value


def room_json(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    last = None
    if row["last_message_id"] is not None:
        last = {
            "id": str(row["last_message_id"]),
            "direction": row["last_message_direction"],
            "text": row["last_message_text"],
            "at": row["last_message_at"],
            "delivery": row.get("last_message_delivery"),
        }
    expires_at = row["expires_at"]
    return {
        "id": str(row["id"]),
        "tab": row["tab"],
        "channel": row["channel"],
        "channel_account": row["channel_account"],
        "contact": {
            "id": row["contact_id"],
            "name": row["contact_name"],
            "handle": row["contact_handle"],
            "phone": row["contact_phone"],
        },
        "post_id": row["post_id"],
        "status": row["status"],
        "assignee": row["assignee"],
        "awaiting_reply": row["awaiting_reply"],
        "expired": has_expired(row["status"], expires_at, now),
        "expires_at": expires_at,
        "last_message": last,
        "last_inbound_at": row["last_inbound_at"],
        "reply_window": _reply_window(row),
        "updated_at": row["updated_at"],
        "version": row["version"],
    }


def _reply_window(row: dict[str, Any]) -> dict[str, Any] | None:
    """What staff can send now: free-form until / human-agent tag until (None: no limit)."""
    try:
        channel = Channel(row["channel"])
    except ValueError:
        return None
    return reply_window(channel, row["last_inbound_at"]).to_json()


def message_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "room_id": str(row["room_id"]),
        "direction": row["direction"],
        "text": row["text"],
        "sent_at": row["sent_at"],
        "sender": {"id": row["sender_id"], "name": row["sender_name"], "role": row["sender_role"]},
        "channel_message_id": row["channel_message_id"],
        "seq": row["seq"],
        "kind": row.get("kind") or "text",
        "attachments": row.get("attachments") or [],
        "edited_at": row.get("edited_at"),
        "removed": row.get("removed_at") is not None,
        "removed_at": row.get("removed_at"),
        "delivery": delivery_json(row.get("delivery_status"), row.get("delivery_at"), row.get("delivery_error")),
        "reply_to": row.get("reply_to"),
    }


def counters_json(actor: Actor, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The viewer's badges (GET /v1/inbox/counters) from the rows of `counters_sql(actor)`."""
    mine = counter_keys(actor)
    per_tab = {tab: {"awaiting": 0, **{s: 0 for s in STATUSES}} for tab in TABS}
    org_unassigned = 0
    for r in rows:
        if r["assignee"] == ALL and r["status"] == "unassigned":
            org_unassigned += r["rooms"]
        if r["assignee"] not in mine or r["tab"] not in per_tab:
            continue
        per_tab[r["tab"]][r["status"]] += r["rooms"]
        per_tab[r["tab"]]["awaiting"] += r["awaiting"]
    statuses = {s: sum(per_tab[t][s] for t in TABS) for s in STATUSES}
    return {
        "messages": per_tab["messages"]["awaiting"],
        "comments": per_tab["comments"]["awaiting"],
        "unassigned": org_unassigned,
        "statuses": {"all": sum(statuses.values()), **statuses},
        "tabs": {
            t: {"awaiting_reply": per_tab[t]["awaiting"],
                "statuses": {"all": sum(per_tab[t][s] for s in STATUSES), **{s: per_tab[t][s] for s in STATUSES}}}
            for t in TABS
        },
    }


class ReadModelReader:
    """Reads over the API's read pool, rows as dicts."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()


class InboxQueries(ReadModelReader):

    # ---- counters ---------------------------------------------------------------------------
    def counters(self, actor: Actor) -> dict[str, Any]:
        """Badge numbers for the viewer: a lookup of maintained counter rows, no COUNT over rooms."""
        return counters_json(actor, self._fetch(*counters_sql(actor)))

    # ---- rooms --------------------------------------------------------------------------------
    def room(self, actor: Actor, room_id: str) -> dict[str, Any]:
        room_id = _room_uuid(room_id)
        where, params = sql_predicate(actor)
        rows = self._fetch(f"SELECT r.*, now() AS _now FROM rooms r WHERE r.id = %s::uuid AND {where}", [room_id, *params])
        if not rows:
            raise NotFound("room not found")
        return room_json(rows[0], rows[0]["_now"])

    def rooms(self, actor: Actor, filt: RoomFilter, *, limit: int, cursor: str | None) -> dict[str, Any]:
        """Rooms visible to the viewer, newest activity first; pages neither skip nor repeat a room
        while messages arrive (see the module docstring)."""
        after = ListCursor.decode(cursor) if cursor else None
        sql, params = rooms_page_sql(actor, filt, limit=limit + 1, cursor=after)
        rows = self._fetch(sql, params)
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            as_of = after.as_of if after else page[0]["_key"]
            last = page[-1]
            next_cursor = ListCursor(as_of, last["_key"], str(last["id"])).encode()
        return {"items": [room_json(r, r["_now"]) for r in page], "next_cursor": next_cursor}

    def expired_rooms(
        self, org_id: str, *, channels: Sequence[str], statuses: Sequence[str], cutoff: datetime,
        after: tuple[datetime, str] | None, limit: int,
    ) -> list[dict[str, Any]]:
        """One chunk of the rooms `resolve-expired` works through: id, projected version, expires_at."""
        sql, params = expired_rooms_sql(
            org_id, channels=channels, statuses=statuses, cutoff=cutoff, after=after, limit=limit
        )
        return self._fetch(sql, params)

    # ---- history ------------------------------------------------------------------------------
    def messages(self, actor: Actor, room_id: str, *, limit: int, before: str | None) -> dict[str, Any]:
        room_id = self.room(actor, room_id)["id"]  # 404 unless visible
        before_seq = None
        if before:
            c = decode_cursor(before)
            if not isinstance(c.get("s"), int) or isinstance(c.get("s"), bool):
                raise InvalidCommand("invalid cursor")
            before_seq = c["s"]
        rows = self._fetch(*history_sql(room_id, before_seq, limit + 1))
        page = rows[:limit]
        next_before = encode_cursor({"s": page[-1]["seq"]}) if len(rows) > limit else None
        return {"items": [message_json(r) for r in page], "next_before": next_before}
