from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from inbox.entrypoints.api.deps import SearchDep, StaffDep
from inbox.entrypoints.api.schemas import QueryText, SearchPage
from inbox.adapters.read_models.queries import RoomFilter

router = APIRouter(prefix="/v1/search", tags=["search"])


@router.get("", response_model=SearchPage)
def search(
    actor: StaffDep,
    rooms: SearchDep,
    q: Annotated[QueryText, Query(min_length=1, max_length=200)],
    by: Literal["contact", "conversation"] = "contact",
    tab: Literal["messages", "comments"] | None = None,
    status: Literal["all", "unassigned", "assigned", "resolved"] = "all",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Rooms visible to the viewer by contact (name, phone, handle: case/accent-insensitive,
    partial, typo-tolerant) or by conversation (words in message text, with the matching message
    id and a snippet)."""
    filt = RoomFilter(tab=tab, status=status)
    if by == "contact":
        return rooms.by_contact(actor, filt, q, limit=limit, cursor=cursor)
    return rooms.by_conversation(actor, filt, q, limit=limit, cursor=cursor)
