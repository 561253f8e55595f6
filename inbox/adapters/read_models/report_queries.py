"""Read side of the service reports (tables of inbox/adapters/read_models/reports_writer.py).

Percentiles are exact (`percentile_cont` over one sample per room cycle), never merged sketches.
Who sees what: admins and supervisors their whole organization; an agent only their own numbers
(cycles they answered or resolved, counts under their name), whatever the grouping.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

from domain.errors import InvalidCommand, NotAllowed
from domain.staff import Actor, Role
from inbox.adapters.read_models.queries import ReadModelReader

GROUPS = {
    "day": ("to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "to_char(day, 'YYYY-MM-DD')"),
    "agent": ("coalesce(agent, '-')", "agent"),
    "channel": ("channel", "channel"),
}
MAX_SAMPLES = 5000  # backlog points per request
MAX_STEP_S = 366 * 86_400  # backlog step: a year at most (PostgreSQL's interval arithmetic must not overflow)
CSV_COLUMNS = ("key", "rooms", "first_response_p50_s", "first_response_p90_s", "resolution_p50_s",
               "resolution_p90_s", "messages_in", "messages_out")


def day_range(start: date, end: date) -> tuple[datetime, datetime]:
    """Whole UTC days `start`..`end`, both included, as a half-open time range."""
    if end < start:
        raise InvalidCommand("`to` is before `from`")
    if (end - start).days > 366:
        raise InvalidCommand("at most 367 days per report")
    return (datetime(start.year, start.month, start.day, tzinfo=UTC),
            datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1))


class ReportQueries(ReadModelReader):
    def response_times(self, actor: Actor, start: date, end: date, group_by: str) -> list[dict[str, Any]]:
        """One item per group over the cycles that started in the days `start`..`end` (UTC, inclusive)
        and the messages of those days."""
        if group_by not in GROUPS:
            raise InvalidCommand(f"group_by must be one of {', '.join(GROUPS)}")
        own = _own(actor)
        lo, hi = day_range(start, end)
        cycle_key, count_key = GROUPS[group_by]
        mine_c, mine_n = ("AND agent = %s", "AND agent = %s") if own else ("", "")
        params: list[Any] = [actor.org_id, lo, hi, *([own] if own else []),
                             actor.org_id, start, end, *([own] if own else [])]
        rows = self._fetch(
            f"""
            WITH c AS (
                SELECT {cycle_key} AS key, count(*) AS rooms,
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY first_response_s) AS fr50,
                       percentile_cont(0.9) WITHIN GROUP (ORDER BY first_response_s) AS fr90,
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY resolution_s) AS rs50,
                       percentile_cont(0.9) WITHIN GROUP (ORDER BY resolution_s) AS rs90
                FROM report_cycles WHERE org_id = %s AND started_at >= %s AND started_at < %s {mine_c}
                GROUP BY 1
            ), n AS (
                SELECT {count_key} AS key, sum(messages_in) AS messages_in, sum(messages_out) AS messages_out
                FROM report_counts WHERE org_id = %s AND day >= %s AND day <= %s {mine_n}
                GROUP BY 1
            )
            SELECT coalesce(c.key, n.key) AS key, coalesce(c.rooms, 0) AS rooms, c.fr50, c.fr90, c.rs50, c.rs90,
                   coalesce(n.messages_in, 0) AS messages_in, coalesce(n.messages_out, 0) AS messages_out
            FROM c FULL JOIN n ON n.key = c.key
            ORDER BY 1
            """,
            params,
        )
        return [
            {
                "key": r["key"], "rooms": int(r["rooms"]),
                "first_response_s": {"p50": r["fr50"], "p90": r["fr90"]},
                "resolution_s": {"p50": r["rs50"], "p90": r["rs90"]},
                "messages_in": int(r["messages_in"]), "messages_out": int(r["messages_out"]),
            }
            for r in rows
        ]

    def backlog(self, actor: Actor, start: datetime, end: datetime, step_s: int) -> list[dict[str, Any]]:
        """The organization's unassigned rooms at `start`, `start + step`, ... and at `end`."""
        if actor.role not in (Role.ADMIN, Role.SUPERVISOR):
            raise NotAllowed("only admins and supervisors see the backlog")
        if end < start:
            raise InvalidCommand("`to` is before `from`")
        if step_s < 1 or step_s > MAX_STEP_S or (end - start).total_seconds() / step_s + 1 > MAX_SAMPLES:
            raise InvalidCommand(f"step must be 1 to {MAX_STEP_S} s and give at most {MAX_SAMPLES} points")
        rows = self._fetch(
            """
            WITH t AS (SELECT generate_series(%s::timestamptz, %s::timestamptz, make_interval(secs => %s)) AS at),
                 before AS (SELECT coalesce(sum(delta), 0) AS n FROM report_backlog WHERE org_id = %s AND at <= %s),
                 steps AS (
                     SELECT t.at, coalesce(sum(b.delta), 0) AS d FROM t
                     LEFT JOIN report_backlog b ON b.org_id = %s AND b.at > %s AND b.at <= t.at
                     AND b.at > t.at - make_interval(secs => %s)
                     GROUP BY t.at
                 )
            SELECT at, ((SELECT n FROM before) + sum(d) OVER (ORDER BY at))::bigint AS unassigned FROM steps ORDER BY at
            """,
            [start, end, step_s, actor.org_id, start, actor.org_id, start, step_s],
        )
        points = [{"at": r["at"], "unassigned": int(r["unassigned"])} for r in rows]
        if points and points[-1]["at"] < end:  # `to` itself is always the last point
            points.append({"at": end, **self.backlog(actor, end, end, 1)[0]} | {"at": end})
        return points

    def samples(self, actor: Actor, start: date, end: date) -> tuple[list[float], list[float]]:
        """First-response and resolution times (seconds) of the cycles started those days (the plot)."""
        own = _own(actor)
        lo, hi = day_range(start, end)
        rows = self._fetch(
            "SELECT first_response_s, resolution_s FROM report_cycles WHERE org_id = %s"
            f" AND started_at >= %s AND started_at < %s {'AND agent = %s' if own else ''}",
            [actor.org_id, lo, hi, *([own] if own else [])],
        )
        return ([r["first_response_s"] for r in rows if r["first_response_s"] is not None],
                [r["resolution_s"] for r in rows if r["resolution_s"] is not None])


def _own(actor: Actor) -> str | None:
    """None for a whole-organization viewer; the agent's own id for an agent."""
    if actor.role in (Role.ADMIN, Role.SUPERVISOR):
        return None
    if actor.role == Role.AGENT:
        return actor.user_id
    raise NotAllowed(f"role {actor.role.value!r} cannot read reports")


def items_csv(items: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for i in items:
        w.writerow([i["key"], i["rooms"], _num(i["first_response_s"]["p50"]), _num(i["first_response_s"]["p90"]),
                    _num(i["resolution_s"]["p50"]), _num(i["resolution_s"]["p90"]), i["messages_in"],
                    i["messages_out"]])
    return out.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"
