"""Service reports (issue 13): response times per day, agent or channel; the unassigned backlog over time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from inbox.adapters.read_models.report_queries import MAX_STEP_S, ReportQueries, items_csv
from inbox.entrypoints.api.deps import ContainerDep, StaffDep
from inbox.entrypoints.api.schemas import BacklogReport, ResponseTimesReport

router = APIRouter(prefix="/v1/reports", tags=["reports"])


async def get_report_queries(container: ContainerDep) -> ReportQueries:
    return ReportQueries(container.read_pool)


ReportsDep = Annotated[ReportQueries, Depends(get_report_queries)]


@router.get(
    "/response-times", response_model=ResponseTimesReport,
    responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with `Accept: text/csv`"}},
)
def response_times(
    request: Request,
    actor: StaffDep,
    reports: ReportsDep,
    from_: Annotated[date | None, Query(alias="from", description="first UTC day (default: 6 days before `to`)")] = None,
    to: Annotated[date | None, Query(description="last UTC day, included (default: today)")] = None,
    group_by: Literal["day", "agent", "channel"] = "day",
) -> Any:
    """First-response and resolution times (p50/p90, seconds) of the room cycles started those days,
    with the messages in and out of those days; an agent gets only their own numbers."""
    end = to or datetime.now(UTC).date()
    items = reports.response_times(actor, from_ or end - timedelta(days=6), end, group_by)
    if "text/csv" in request.headers.get("accept", ""):
        return Response(items_csv(items), media_type="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="response-times.csv"'})
    return {"items": items}


@router.get("/backlog", response_model=BacklogReport)
def backlog(
    actor: StaffDep,
    reports: ReportsDep,
    from_: Annotated[datetime, Query(alias="from")],
    to: datetime,
    step: Annotated[int, Query(ge=1, le=MAX_STEP_S, description="seconds between samples")] = 900,
) -> dict[str, Any]:
    """Unassigned rooms of the organization at `from`, `from + step`, ... up to `to` (admin/supervisor)."""
    start, end = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (from_, to))
    return {"items": reports.backlog(actor, start, end, step)}
