"""Staff commands on a room (assign, reply, resolve): load → decide (domain) → save.

Optimistic concurrency: a command that raced with another staff command on the same room gets
`Conflict` (HTTP 409); one that raced only with the customer (a message, an edit, an echo) is
decided again on fresh state.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from domain.errors import Conflict, InvalidCommand, NotFound
from domain.room import CHANNEL_SENDER, RESOLVED, Room
from domain.staff import Actor
from inbox.usecases.ports import EventStore
from inbox.usecases.results import CommandResult

_IDEMPOTENT_REPLY = uuid.UUID("5d7c8a52-3f0e-4f55-9a51-6c1f0e1a9b7d")  # namespace of keyed reply ids

# Events a customer (not staff) causes: a staff command that raced only with these is re-decided.
# The sender's delivery outcomes and the channel's statuses count as such too: they never change
# what a staff command decides on.
_CUSTOMER_EVENTS = (
    Room.MessageReceived, Room.RoomReopened, Room.MessageEdited, Room.MessageRemoved,
    Room.ReplyDeliveryAccepted, Room.ReplyDeliveryFailed, Room.ReplyDeliveryUnknown, Room.DeliveryStatusChanged,
)


class RoomCommands:
    """Assign, reply, resolve: optimistic concurrency against other staff commands."""

    def __init__(self, store: EventStore, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._clock = clock

    def assign(self, actor: Actor, room_id: str, *, agent_id: str, expected_version: int | None = None) -> CommandResult:
        def decide(room: Room) -> None:
            room.assign(actor, agent_id=agent_id)

        return self._execute(actor, room_id, expected_version, decide)

    def reply(
        self,
        actor: Actor,
        room_id: str,
        *,
        text: str | None = None,
        template: dict[str, Any] | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        reply_to: str | None = None,
    ) -> CommandResult:
        """A staff reply. With `idempotency_key` the message id is derived from (room, user, key): a
        retried request finds its reply recorded and records nothing new. `reply_to` names the
        message of this room it answers, by our message id or the channel's (422 otherwise)."""
        if idempotency_key is None:
            message_id = str(uuid.uuid4())
        else:
            message_id = str(uuid.uuid5(_IDEMPOTENT_REPLY, f"{room_id}|{actor.org_id}|{actor.user_id}|{idempotency_key}"))
            room = self._load_visible(actor, room_id)
            if room.delivery_status(message_id) is not None:
                return CommandResult(room_id=str(room.id), version=room.version, message_id=message_id)

        def decide(room: Room) -> str:
            target = None if reply_to is None else self._reply_target(room, reply_to)
            room.reply(actor, message_id=message_id, text=text, template=template, sent_at=self._clock(),
                       reply_to=target)
            return message_id

        return self._execute(actor, room_id, expected_version, decide)

    def resolve(
        self, actor: Actor, room_id: str, *, reason: str = "manual", expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> CommandResult:
        """With `idempotency_key`: a retry after this actor's resolve answers as the first did."""
        if idempotency_key is not None:
            room = self._load_visible(actor, room_id)
            if room.status == RESOLVED and getattr(room, "resolved_by", None) == actor.user_id:
                return CommandResult(room_id=str(room.id), version=room.version)
        return self._execute(actor, room_id, expected_version, lambda room: room.resolve(actor, reason=reason))

    def _execute(
        self, actor: Actor, room_id: str, expected_version: int | None, decide: Callable[[Room], str | None]
    ) -> CommandResult:
        room = self._load_visible(actor, room_id)
        if expected_version is not None and room.version != expected_version:
            raise Conflict(f"room is at version {room.version}, not {expected_version}; reload and retry")
        for _ in range(5):
            decided_at = room.version
            message_id = decide(room)
            try:
                self._store.save(room)
            except IntegrityError:
                room = self._load_visible(actor, room_id)
                if expected_version is not None or not self._only_customer_events_since(room.id, decided_at):
                    raise Conflict("the room was changed by another command; reload and retry") from None
                continue  # only the customer wrote meanwhile: decide again on fresh state
            return CommandResult(room_id=str(room.id), version=room.version, message_id=message_id)
        raise Conflict("the room is changing too fast; retry")

    def _reply_target(self, room: Room, ref: str) -> tuple[str, str]:
        """(our id, channel id) of the message `ref` names: the room's own state knows its latest
        inbound messages and its accepted replies; an older inbound message is found by its
        channel message id in the inbound dedup keys (which also say when it is another room's)."""
        found = room.reply_target(ref)
        if found is not None:
            return found
        recorded = self._store.recorded_dedup_keys([(room.channel_account_id, ref)]).get((room.channel_account_id, ref))
        if recorded is not None:
            if recorded.room_id != str(room.id):
                raise InvalidCommand(f"reply_to {ref!r} is a message of another room")
            return recorded.message_id, ref
        raise InvalidCommand(
            f"reply_to {ref!r} is not a message of this room: give the id or channel_message_id of a message"
            " in its history (a customer message, or a reply that reached the channel)"
        )

    def _only_customer_events_since(self, room_id: UUID, version: int) -> bool:
        events = self._store.events_after(room_id, version)
        return all(
            isinstance(e, _CUSTOMER_EVENTS)
            or (isinstance(e, Room.MessageSent) and e.sender_role == CHANNEL_SENDER)  # a channel echo
            for e in events
        )

    def _load_visible(self, actor: Actor, room_id: str) -> Room:
        try:
            room: Room = self._store.get(UUID(room_id))
        except (ValueError, NotFound):
            raise NotFound("room not found") from None
        if not isinstance(room, Room) or not room.is_visible_to(actor):
            raise NotFound("room not found")
        return room
