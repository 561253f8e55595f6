"""Read-side queries over the projections (never the event store), with role visibility.

Visibility (SPEC §2): admins and supervisors see every room of their organization; an agent
sees unassigned rooms and rooms assigned to them.
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

from domain.errors import InvalidCommand, NotFound
from domain.staff import Actor
from projections.counters import ALL, NOBODY

STATUSES = ("unassigned", "assigned", "resolved")
TABS = ("messages", "comments")


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


def _visibility(actor: Actor, alias: str = "r") -> tuple[str, list[Any]]:
    if actor.role.manages_rooms:
        return f"{alias}.org_id = %s", [actor.org_id]
    return f"{alias}.org_id = %s AND ({alias}.assignee IS NULL OR {alias}.assignee = %s)", [actor.org_id, actor.user_id]


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
        "expired": row["status"] != "resolved" and expires_at is not None and expires_at <= now,
        "expires_at": expires_at,
        "last_message": last,
        "last_inbound_at": row["last_inbound_at"],
        "updated_at": row["updated_at"],
        "version": row["version"],
    }


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
    }


class InboxQueries:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def now(self) -> datetime:
        return self._fetch("SELECT now() AS now", [])[0]["now"]

    # ---- counters ---------------------------------------------------------------------------
    def counters(self, actor: Actor) -> dict[str, Any]:
        """Badge numbers for the viewer: a lookup of maintained counter rows, no COUNT over rooms."""
        mine = [ALL] if actor.role.manages_rooms else [NOBODY, actor.user_id]
        rows = self._fetch(
            "SELECT tab, status, assignee, rooms, awaiting FROM counters"
            " WHERE org_id = %s AND assignee = ANY(%s)",
            [actor.org_id, list({*mine, ALL})],
        )
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

    # ---- rooms --------------------------------------------------------------------------------
    def room(self, actor: Actor, room_id: str) -> dict[str, Any]:
        room_id = _room_uuid(room_id)
        where, params = _visibility(actor)
        rows = self._fetch(f"SELECT r.*, now() AS _now FROM rooms r WHERE r.id = %s::uuid AND {where}", [room_id, *params])
        if not rows:
            raise NotFound("room not found")
        return room_json(rows[0], rows[0]["_now"])

    def rooms(self, actor: Actor, filt: RoomFilter, *, limit: int, cursor: str | None) -> dict[str, Any]:
        where, params = _visibility(actor)
        clauses = [where]
        if filt.tab:
            clauses.append("r.tab = %s")
            params.append(filt.tab)
        if filt.status != "all":
            clauses.append("r.status = %s")
            params.append(filt.status)
        if filt.channels:
            clauses.append("r.channel = ANY(%s)")
            params.append(list(filt.channels))
        if filt.assignee is not None:
            clauses.append("r.assignee = %s")
            params.append(filt.assignee)
        if filt.awaiting_reply is not None:
            clauses.append("r.awaiting_reply = %s")
            params.append(filt.awaiting_reply)
        if filt.expired is True:
            clauses.append("r.status <> 'resolved' AND r.expires_at <= now()")
        elif filt.expired is False:
            clauses.append("NOT (r.status <> 'resolved' AND r.expires_at IS NOT NULL AND r.expires_at <= now())")
        if filt.updated_after is not None:
            clauses.append("r.updated_at > %s")
            params.append(filt.updated_after)
        if filt.updated_before is not None:
            clauses.append("r.updated_at < %s")
            params.append(filt.updated_before)
        if cursor:
            c = decode_cursor(cursor)
            try:
                after_ts, after_id = datetime.fromisoformat(c["u"]), str(c["i"])
            except (KeyError, TypeError, ValueError):
                raise InvalidCommand("invalid cursor") from None
            clauses.append("(r.updated_at, r.id) < (%s, %s::uuid)")
            params.extend([after_ts, after_id])
        sql = (
            "SELECT r.*, now() AS _now FROM rooms r WHERE " + " AND ".join(clauses)
            + " ORDER BY r.updated_at DESC, r.id DESC LIMIT %s"
        )
        rows = self._fetch(sql, [*params, limit + 1])
        page = rows[:limit]
        next_cursor = None
        if len(rows) > limit:
            last = page[-1]
            next_cursor = encode_cursor({"u": last["updated_at"].isoformat(), "i": str(last["id"])})
        return {"items": [room_json(r, r["_now"]) for r in page], "next_cursor": next_cursor}

    # ---- history ------------------------------------------------------------------------------
    def messages(self, actor: Actor, room_id: str, *, limit: int, before: str | None) -> dict[str, Any]:
        room_id = self.room(actor, room_id)["id"]  # 404 unless visible
        params: list[Any] = [room_id]
        clause = ""
        if before:
            c = decode_cursor(before)
            if not isinstance(c.get("s"), int):
                raise InvalidCommand("invalid cursor")
            clause = " AND seq < %s"
            params.append(c["s"])
        rows = self._fetch(
            f"SELECT * FROM messages WHERE room_id = %s::uuid{clause} ORDER BY seq DESC LIMIT %s",
            [*params, limit + 1],
        )
        page = rows[:limit]
        next_before = encode_cursor({"s": page[-1]["seq"]}) if len(rows) > limit else None
        return {"items": [message_json(r) for r in page], "next_before": next_before}
