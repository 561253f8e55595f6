"""A room as it was at a moment: its events up to then, folded by the same pure projection functions.

The event store is the source of truth: the room's events with `occurred_at <= as_of` (a room's
events are in version order and their time grows with it) go through `projections.rooms.apply`
and `message_change`, exactly what the live worker folds, so "as of" and live cannot disagree
about what an event means.

Visibility: the viewer must see the room now (the live rule on the live projection) AND as it
was then (the same rule on the folded view). "Now" keeps time travel from reopening a door the
viewer no longer has (an agent whose room was reassigned to someone else); "then" keeps it from
showing an agent what another agent's room looked like before it came to them.
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from domain.errors import InvalidCommand, NotFound
from domain.staff import Actor
from domain.visibility import can_see
from inbox.adapters.eventstore import InboxApplication
from inbox.adapters.read_models.queries import (
    InboxQueries,
    decode_cursor,
    encode_cursor,
    message_json,
    room_json,
)
from inbox.adapters.wire import to_wire
from projections.rooms import MessageRow, RoomView, apply, message_change

_MESSAGE_FIELDS = [f.name for f in fields(MessageRow)]


class RoomsAsOf:
    def __init__(self, app: InboxApplication, queries: InboxQueries) -> None:
        self._app = app
        self._queries = queries

    def events(self, room_id: str, as_of: datetime) -> list[dict[str, Any]]:
        """The room's wire events that occurred at or before `as_of`, in version order."""
        stored = self._app.recorder.select_events(UUID(room_id))
        out = []
        for s in stored:
            event = to_wire(self._app.decode(s))
            if datetime.fromisoformat(event["occurred_at"]) > as_of:
                break
            out.append(event)
        return out

    def fold(self, actor: Actor, room_id: str, as_of: datetime) -> tuple[RoomView, list[dict[str, Any]]]:
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)  # like the CLI: no offset means UTC
        room_id = self._queries.room(actor, room_id)["id"]  # 404 unless the viewer sees it now
        if as_of > datetime.now(UTC):
            raise InvalidCommand("as_of is in the future")
        view: RoomView | None = None
        messages: dict[str, dict[str, Any]] = {}
        for event in self.events(room_id, as_of):
            view, message = apply(view, event)
            if message is not None:
                messages[message.id] = {
                    **{k: getattr(message, k) for k in _MESSAGE_FIELDS},
                    "attachments": list(message.attachments), "edited_at": None, "removed_at": None,
                }
            change = message_change(event)
            if change is not None and change.message_id in messages:
                row = messages[change.message_id]
                row["text"] = change.text if change.text is not None else row["text"]
                row["edited_at"] = change.edited_at or row["edited_at"]
                row["removed_at"] = change.removed_at or row["removed_at"]
        if view is None or not can_see(actor, view.org_id, view.assignee):
            raise NotFound("room not found as of that moment")
        return view, sorted(messages.values(), key=lambda m: m["seq"], reverse=True)

    def room(self, actor: Actor, room_id: str, as_of: datetime) -> dict[str, Any]:
        view, _ = self.fold(actor, room_id, as_of)
        moment = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
        return room_json({f.name: getattr(view, f.name) for f in fields(RoomView)}, moment)

    def messages(
        self, actor: Actor, room_id: str, as_of: datetime, *, limit: int, before: str | None
    ) -> dict[str, Any]:
        """The history as it was then, newest first, paged like the live history."""
        _, rows = self.fold(actor, room_id, as_of)
        if before:
            c = decode_cursor(before)
            if not isinstance(c.get("s"), int) or isinstance(c.get("s"), bool):
                raise InvalidCommand("invalid cursor")
            rows = [r for r in rows if r["seq"] < c["s"]]
        page = rows[:limit]
        next_before = encode_cursor({"s": page[-1]["seq"]}) if len(rows) > limit else None
        return {"items": [message_json(r) for r in page], "next_before": next_before}
