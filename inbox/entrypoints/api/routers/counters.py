from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from inbox.entrypoints.api.deps import QueriesDep, StaffDep
from inbox.entrypoints.api.schemas import Counters

router = APIRouter(prefix="/v1/inbox", tags=["inbox"])


@router.get("/counters", response_model=Counters)
def inbox_counters(actor: StaffDep, queries: QueriesDep) -> dict[str, Any]:
    """Badges for the viewer: Messages/Comments awaiting reply, org unassigned, per-status counts."""
    return queries.counters(actor)
