"""The web UI's routes: each parses, authorizes, calls one use case or query (server-side, never HTTP
to itself) and renders an HTML page or partial. The browser swaps partials in with htmx
(static/htmx.min.js, vendored) and keeps them live from `/v1/stream` (static/inbox.js).

Writes are cookie-authenticated, so each one checks the session's CSRF token (web/session.py).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time as dtime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from domain import limits
from domain.channels import TABS
from domain.errors import InvalidCommand, NotFound
from domain.staff import Actor, Role
from inbox.adapters.auth import InvalidToken, mint_token, verify_token
from inbox.adapters.read_models.queries import InboxQueries, RoomFilter
from inbox.adapters.read_models.search import RoomSearch
from inbox.adapters.signin_codes import SigninCodes
from inbox.bootstrap import Container
from inbox.entrypoints.api.deps import ContainerDep, ViewerDep
from inbox.entrypoints.web.session import (
    CSRF_FIELD, SESSION_COOKIE, actor_from_cookie, clear_session, csrf_ok, csrf_token, same_origin, set_session,
)

STATIC_DIR = Path(__file__).parent / "static"
PAGE_SIZE = 50
HISTORY_PAGE = 30
# A command's result is rendered once the projection has caught up with it (read-your-writes).
PROJECTION_WAIT_S = 5.0

CHANNELS: dict[str, tuple[str, str, str]] = {  # channel -> (label, icon text, tab)
    "whatsapp_cloud": ("WhatsApp Cloud", "WA", "messages"),
    "instagram": ("Instagram", "IG", "messages"),
    "facebook_messenger": ("Facebook Messenger", "FB", "messages"),
    "instagram_comment": ("Instagram comment", "IG", "comments"),
    "facebook_comment": ("Facebook comment", "FB", "comments"),
}
DIRECT_CHANNELS = [c for c, (_, _, tab) in CHANNELS.items() if tab == "messages"]
STATUSES = ("all", "unassigned", "assigned", "resolved")
# Security headers of every HTML page: scripts, styles and connections from this origin only.
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
                               " connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


# ---- rendering --------------------------------------------------------------------------------
def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    now = datetime.now(UTC)
    local = value.astimezone(UTC)
    return local.strftime("%H:%M") if local.date() == now.date() else local.strftime("%d %b %H:%M")


@functools.cache
def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("inbox.entrypoints.web", "templates"),
        autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.globals.update(CHANNELS=CHANNELS, STATUSES=STATUSES)
    return env


def render(name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    html = _env().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status_code, headers={**HTML_HEADERS, **(headers or {})})


# ---- the view: what the URL asks to see ---------------------------------------------------------
@dataclass(frozen=True)
class View:
    tab: str = "messages"
    status: str = "all"
    channels: tuple[str, ...] = ()
    assignee: str = ""
    awaiting: str = ""  # "", "yes", "no"
    expired: str = ""
    date_from: str = ""
    date_to: str = ""
    q: str = ""
    by: str = "contact"
    room: str = ""
    cursor: str = ""

    @classmethod
    def parse(cls, params: Any) -> View:
        def one(name: str, allowed: tuple[str, ...] | None = None, default: str = "") -> str:
            value = (params.get(name) or default).strip()
            limits.check_text(value, name, limits.MAX_TEXT)
            if allowed is not None and value not in allowed:
                raise InvalidCommand(f"{name} must be one of {', '.join(a or '(empty)' for a in allowed)}")
            return value

        channels = tuple(params.getlist("channel"))
        for c in channels:
            if c not in CHANNELS:
                raise InvalidCommand(f"unknown channel {c!r}")
        view = cls(
            tab=one("tab", TABS, "messages"), status=one("status", STATUSES, "all"), channels=channels,
            assignee=one("assignee"), awaiting=one("awaiting", ("", "yes", "no")),
            expired=one("expired", ("", "yes", "no")), date_from=one("from"), date_to=one("to"),
            q=one("q"), by=one("by", ("contact", "conversation"), "contact"), room=one("room"), cursor=one("cursor"),
        )
        view.filter()  # refuse bad dates now
        return view

    def filter(self) -> RoomFilter:
        def day(value: str, name: str) -> datetime | None:
            if not value:
                return None
            try:
                return datetime.combine(date.fromisoformat(value), dtime(0), UTC)
            except ValueError:
                raise InvalidCommand(f"{name} must be a date (YYYY-MM-DD)") from None

        yes_no = {"": None, "yes": True, "no": False}
        to = day(self.date_to, "to")
        return RoomFilter(
            tab=self.tab, status=self.status, channels=self.channels, assignee=self.assignee or None,
            awaiting_reply=yes_no[self.awaiting], expired=yes_no[self.expired],
            updated_after=day(self.date_from, "from"), updated_before=to + timedelta(days=1) if to else None,
        )

    def query(self, **changes: Any) -> str:
        """This view's query string, with `changes` applied (empty values left out)."""
        v = replace(self, **changes)
        pairs: list[tuple[str, str]] = [("tab", v.tab), ("status", v.status)]
        pairs += [("channel", c) for c in v.channels]
        pairs += [(k, val) for k, val in (("assignee", v.assignee), ("awaiting", v.awaiting), ("expired", v.expired),
                                          ("from", v.date_from), ("to", v.date_to), ("q", v.q),
                                          ("by", v.by if v.q else ""), ("room", v.room), ("cursor", v.cursor)) if val]
        return urlencode(pairs)

    @property
    def filtered(self) -> bool:
        return bool(self.channels or self.assignee or self.awaiting or self.expired or self.date_from or self.date_to)


def _room_list(container: Container, actor: Actor, view: View) -> dict[str, Any]:
    cursor = view.cursor or None
    if view.q:
        search = RoomSearch(container.read_pool)
        filt = RoomFilter(tab=view.tab, status=view.status)
        if view.by == "contact":
            return search.by_contact(actor, filt, view.q, limit=PAGE_SIZE, cursor=cursor)
        return search.by_conversation(actor, filt, view.q, limit=PAGE_SIZE, cursor=cursor)
    return InboxQueries(container.read_pool).rooms(actor, view.filter(), limit=PAGE_SIZE, cursor=cursor)


def _room_context(container: Container, actor: Actor, room_id: str) -> dict[str, Any]:
    queries = InboxQueries(container.read_pool)
    room = queries.room(actor, room_id)
    history = queries.messages(actor, room_id, limit=HISTORY_PAGE, before=None)
    return {"room": room, "messages": list(reversed(history["items"])), "next_before": history["next_before"],
            **_abilities(actor, room)}


def _abilities(actor: Actor, room: dict[str, Any]) -> dict[str, bool]:
    """What the buttons offer; the domain decides again on every command."""
    open_ = room["status"] != "resolved"
    lead = actor.role in (Role.SUPERVISOR, Role.ADMIN)
    return {
        "can_take": open_ and room["assignee"] != actor.user_id and (lead or room["assignee"] is None),
        "can_assign": open_ and lead,
        "can_resolve": open_ and (lead or room["assignee"] == actor.user_id),
        "can_reply": open_ and actor.role in (Role.AGENT, Role.SUPERVISOR, Role.ADMIN),
    }


def _page_context(request: Request, container: Container, actor: Actor, view: View) -> dict[str, Any]:
    counters = InboxQueries(container.read_pool).counters(actor)
    ctx: dict[str, Any] = {
        "viewer": actor, "csrf": csrf_token(container.settings, request), "view": view, "counters": counters,
        "rooms": _room_list(container, actor, view), "lead": actor.role in (Role.SUPERVISOR, Role.ADMIN),
        "direct_channels": DIRECT_CHANNELS,
    }
    if view.room:
        try:
            ctx.update(_room_context(container, actor, view.room))
        except NotFound:
            ctx["room_missing"] = True
    return ctx


# ---- pages ------------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
def inbox_page(request: Request, container: ContainerDep) -> Response:
    actor = actor_from_cookie(container.settings, request)
    if actor is None or not actor.role.is_staff:
        return RedirectResponse("/session/new", status_code=303)
    view = View.parse(request.query_params)
    return render("inbox.html", **_page_context(request, container, actor, view))


@router.get("/ui/list", response_class=HTMLResponse)
def room_list(request: Request, actor: ViewerDep, container: ContainerDep) -> HTMLResponse:
    """The room list (or search results) of the view in the query string; `cursor` for the next page."""
    view = View.parse(request.query_params)
    return render("_list.html", view=view, rooms=_room_list(container, actor, view), more=bool(view.cursor))


@router.get("/ui/counters")
def counters(actor: ViewerDep, container: ContainerDep) -> JSONResponse:
    """GET /v1/inbox/counters for the cookie session: what the page polls when the stream is missing."""
    return JSONResponse(InboxQueries(container.read_pool).counters(actor), headers={"Cache-Control": "no-store"})


@router.get("/ui/rooms/{room_id}", response_class=HTMLResponse)
def room_view(request: Request, room_id: str, actor: ViewerDep, container: ContainerDep) -> HTMLResponse:
    return render("_room.html", viewer=actor, csrf=csrf_token(container.settings, request),
                  **_room_context(container, actor, room_id))


@router.get("/ui/rooms/{room_id}/older", response_class=HTMLResponse)
def older_messages(room_id: str, before: str, actor: ViewerDep, container: ContainerDep) -> HTMLResponse:
    """"Load older dialogs": the page of history before `before`, oldest first, with the next button."""
    page = InboxQueries(container.read_pool).messages(actor, room_id, limit=HISTORY_PAGE, before=before)
    return render("_older.html", room_id=room_id, messages=list(reversed(page["items"])),
                  next_before=page["next_before"], viewer=actor)


# ---- commands (cookie + CSRF) ------------------------------------------------------------------
async def _form(request: Request) -> dict[str, list[str]]:
    body = await request.body()
    try:
        return parse_qs(body.decode(), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise InvalidCommand("the form must be URL-encoded UTF-8") from None


def _check_csrf(request: Request, container: Container, form: dict[str, list[str]]) -> None:
    if not csrf_ok(container.settings, request, (form.get(CSRF_FIELD) or [None])[0]):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")


def _field(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def _after_command(request: Request, container: Container, actor: Actor, room_id: str, version: int) -> HTMLResponse:
    """The room as the projection shows it once it has caught up with the command (bounded wait)."""
    queries = InboxQueries(container.read_pool)
    deadline = time.monotonic() + PROJECTION_WAIT_S
    while True:
        try:
            room = queries.room(actor, room_id)
        except NotFound:
            room = None
        if (room is not None and room["version"] >= version) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    headers = {"HX-Trigger": "inbox-changed"}
    if room is None:
        return render("_room_gone.html", headers=headers)
    return render("_room.html", headers=headers, viewer=actor, csrf=csrf_token(container.settings, request),
                  **_room_context(container, actor, room_id))


@router.post("/ui/rooms/{room_id}/{action}", response_class=HTMLResponse)
async def room_command(request: Request, room_id: str, action: str, actor: ViewerDep,
                       container: ContainerDep) -> HTMLResponse:
    """take | assign (agent_id) | reply (text) | resolve, then the room as it now is."""
    form = await _form(request)
    _check_csrf(request, container, form)
    rooms = container.rooms
    if action == "take":
        call = functools.partial(rooms.assign, actor, room_id, agent_id=actor.user_id)
    elif action == "assign":
        agent = _field(form, "agent_id")
        if not agent:
            raise InvalidCommand("choose the agent to assign the room to")
        call = functools.partial(rooms.assign, actor, room_id, agent_id=agent)
    elif action == "reply":
        text = _field(form, "text")
        if not text:
            raise InvalidCommand("write a reply first")
        limits.check_text(text, "reply", limits.MAX_TEXT)
        call = functools.partial(rooms.reply, actor, room_id, text=text)
    elif action == "resolve":
        call = functools.partial(rooms.resolve, actor, room_id)
    else:
        raise HTTPException(404, f"unknown room action {action!r}")
    result = await run_in_threadpool(call)
    return await run_in_threadpool(_after_command, request, container, actor, result.room_id, result.version)


@router.post("/ui/resolve-expired", response_class=HTMLResponse)
async def resolve_expired(request: Request, actor: ViewerDep, container: ContainerDep) -> HTMLResponse:
    """The "Resolve all expired chat room" dialog: the chosen channels, and unassigned rooms when asked."""
    form = await _form(request)
    _check_csrf(request, container, form)
    channels = form.get("channel") or []
    for c in channels:
        if c not in DIRECT_CHANNELS:
            raise InvalidCommand(f"{c!r} is not a direct-message channel")
    if not channels:
        raise InvalidCommand("choose at least one channel")
    result = await run_in_threadpool(
        functools.partial(container.expired.resolve_expired, actor, channels=channels,
                          include_unassigned=_field(form, "include_unassigned") == "yes")
    )
    return render("_resolved.html", headers={"HX-Trigger": "inbox-changed"}, result=result)


# ---- sign-in / sign-out -----------------------------------------------------------------------
@router.get("/session/new", response_class=HTMLResponse)
def signin_form(error: str | None = None) -> HTMLResponse:
    return render("signin.html", error=error)


@router.post("/session")
async def sign_in(request: Request, container: ContainerDep) -> Response:
    """The sign-in form posts `token` (a JWT); a valid staff token becomes the session cookie."""
    if not same_origin(request):
        raise HTTPException(403, "sign-in from another site refused")
    token = _field(await _form(request), "token")
    settings = container.settings
    try:
        actor = verify_token(settings.jwt_secret or "", token, issuer=settings.jwt_issuer,
                             audience=settings.jwt_audience)
    except InvalidToken as e:
        return render("signin.html", status_code=401, error=f"That token does not work: {e}.")
    if not actor.role.is_staff:
        return render("signin.html", status_code=403, error=f"Role {actor.role.value!r} cannot use the inbox.")
    response = RedirectResponse("/", status_code=303)
    set_session(response, request, token)
    return response


@router.get("/session/redeem")
def redeem_code(request: Request, code: str, container: ContainerDep) -> Response:
    """The one-click link `inbox dev` prints: a one-time code (used once, short-lived), never a token."""
    grant = SigninCodes(container.read_pool).redeem(code)
    if grant is None:
        return render("signin.html", status_code=401,
                      error="That sign-in link was already used or has expired; sign in with a token.")
    settings = container.settings
    token = mint_token(settings.jwt_secret or "", org=grant.org_id, user=grant.user_id, role=grant.role,
                       name=grant.name, ttl_s=12 * 3600, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    response = RedirectResponse("/", status_code=303)
    set_session(response, request, token)
    return response


@router.post("/session/end")
async def sign_out(request: Request, container: ContainerDep) -> Response:
    form = await _form(request)
    if request.cookies.get(SESSION_COOKIE) and not csrf_ok(container.settings, request, _field(form, CSRF_FIELD)):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page")
    response = RedirectResponse("/session/new", status_code=303)
    clear_session(response, request)
    return response
