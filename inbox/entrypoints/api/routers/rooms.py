from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query

from inbox.entrypoints.api.deps import ContainerDep, QueriesDep, StaffDep
from inbox.entrypoints.api.schemas import (
    AssignRoom,
    ChannelName,
    CommandAccepted,
    ExpiredResolved,
    MessagePage,
    QueryText,
    ResolveExpired,
    ResolveRoom,
    RoomOut,
    RoomPage,
    SendReply,
)
from inbox.adapters.read_models.as_of import RoomsAsOf
from inbox.adapters.read_models.queries import RoomFilter

router = APIRouter(prefix="/v1/rooms", tags=["rooms"])


@router.get("", response_model=RoomPage)
def list_rooms(
    actor: StaffDep,
    queries: QueriesDep,
    tab: Literal["messages", "comments"] | None = None,
    status: Literal["all", "unassigned", "assigned", "resolved"] = "all",
    channel: Annotated[list[ChannelName] | None, Query()] = None,
    assignee: QueryText | None = None,
    awaiting_reply: bool | None = None,
    expired: bool | None = None,
    updated_after: datetime | None = None,
    updated_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Rooms visible to the viewer, newest activity first."""
    filt = RoomFilter(
        tab=tab, status=status, channels=channel or (), assignee=assignee, awaiting_reply=awaiting_reply,
        expired=expired, updated_after=updated_after, updated_before=updated_before,
    )
    return queries.rooms(actor, filt, limit=limit, cursor=cursor)


@router.post("/resolve-expired", response_model=ExpiredResolved)
def resolve_expired_rooms(body: ResolveExpired, actor: StaffDep, container: ContainerDep) -> ExpiredResolved:
    """Resolve (reason `expired`) every expired room of the channels that is assigned, and
    unassigned too when asked; rooms that changed after the server's query saw them are skipped."""
    result = container.expired.resolve_expired(
        actor, channels=body.channels, include_unassigned=body.include_unassigned
    )
    return ExpiredResolved(resolved=result.resolved, skipped=result.skipped, unreadable=result.unreadable)


@router.get("/{room_id}", response_model=RoomOut)
def get_room(
    room_id: str, actor: StaffDep, queries: QueriesDep, container: ContainerDep, as_of: datetime | None = None
) -> dict[str, Any]:
    """With `as_of`: the room as it was then, folded from its events (docs/analytics.md)."""
    if as_of is not None:
        return RoomsAsOf(container.event_store, queries).room(actor, room_id, as_of)
    return queries.room(actor, room_id)


@router.get("/{room_id}/messages", response_model=MessagePage)
def room_history(
    room_id: str,
    actor: StaffDep,
    queries: QueriesDep,
    container: ContainerDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: str | None = None,
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """Newest page first; pass `next_before` back as `before` to load older dialogs.
    With `as_of`: the history as it was then (edits and removals up to then)."""
    if as_of is not None:
        return RoomsAsOf(container.event_store, queries).messages(actor, room_id, as_of, limit=limit, before=before)
    return queries.messages(actor, room_id, limit=limit, before=before)


# A client's retry key (issue 9): a retried request answers as the first did and records nothing new.
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)]


@router.post("/{room_id}/assign", response_model=CommandAccepted)
def assign_room(
    room_id: str, body: AssignRoom, actor: StaffDep, container: ContainerDep, idempotency_key: IdempotencyKey = None
) -> CommandAccepted:
    # Assigning is idempotent by itself: the same agent again records nothing.
    result = container.rooms.assign(actor, room_id, agent_id=body.agent_id, expected_version=body.expected_version)
    return CommandAccepted(**vars(result))


@router.post("/{room_id}/messages", response_model=CommandAccepted, status_code=201)
def reply_to_room(
    room_id: str, body: SendReply, actor: StaffDep, container: ContainerDep, idempotency_key: IdempotencyKey = None
) -> CommandAccepted:
    """A text reply, or (WhatsApp, any time) `{"template": {"name", "language", "components"}}`.
    `reply_to`: the `id` or `channel_message_id` of a message in this room's history; WhatsApp
    shows the reply quoting it (Messenger, Instagram and comments: recorded, not sent)."""
    result = container.rooms.reply(
        actor, room_id, text=body.text, template=body.template.model_dump() if body.template else None,
        expected_version=body.expected_version, idempotency_key=idempotency_key, reply_to=body.reply_to,
    )
    return CommandAccepted(**vars(result))


@router.post("/{room_id}/resolve", response_model=CommandAccepted)
def resolve_room(
    room_id: str, actor: StaffDep, container: ContainerDep, body: ResolveRoom | None = None,
    idempotency_key: IdempotencyKey = None,
) -> CommandAccepted:
    result = container.rooms.resolve(
        actor, room_id, expected_version=body.expected_version if body else None, idempotency_key=idempotency_key
    )
    return CommandAccepted(**vars(result))
