"""The web UI's sign-in, session cookie, CSRF checks and server-rendered pages (in-process, real
PostgreSQL; projections applied with project_all)."""

from __future__ import annotations

import re

import pytest

from inbox.adapters.signin_codes import SigninCodes, SigninGrant
from inbox.entrypoints.web.session import SESSION_COOKIE
from tests.integration.inbox_helpers import Inbox
from tests.support import token

pytestmark = pytest.mark.integration


def sign_in(inbox: Inbox, role: str = "agent", user: str = "agent1") -> str:
    """Sign in through the form; returns the page's CSRF token."""
    r = inbox.client.post("/session", data={"token": token(inbox.settings, role=role, user=user, org=inbox.org)},
                          follow_redirects=False)
    assert r.status_code == 303, r.text
    page = inbox.client.get("/")
    assert page.status_code == 200, page.text
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]


def test_inbox_page_without_a_session_redirects_to_the_sign_in_form(inbox: Inbox) -> None:
    r = inbox.client.get("/", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/session/new")
    form = inbox.client.get("/session/new")
    assert form.status_code == 200 and 'name="token"' in form.text and 'action="/session"' in form.text


def test_sign_in_sets_an_httponly_samesite_lax_cookie_and_never_puts_the_token_in_a_url(inbox: Inbox) -> None:
    jwt = token(inbox.settings, role="supervisor", user="spv1")
    r = inbox.client.post("/session", data={"token": jwt}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/" in cookie
    page = inbox.client.get("/")
    assert page.status_code == 200 and "<title>Inbox</title>" in page.text
    assert jwt not in page.text  # the page carries a CSRF token, never the session token


def test_sign_in_with_an_invalid_token_shows_the_form_again_with_401(inbox: Inbox) -> None:
    r = inbox.client.post("/session", data={"token": "not-a-jwt"}, follow_redirects=False)
    assert r.status_code == 401 and "That token does not work" in r.text
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")


def test_sign_in_refuses_a_role_that_cannot_use_the_inbox(inbox: Inbox) -> None:
    jwt = token(inbox.settings, role="integration", user="bridge")
    r = inbox.client.post("/session", data={"token": jwt}, follow_redirects=False)
    assert r.status_code == 403 and SESSION_COOKIE not in r.headers.get("set-cookie", "")


def test_sign_in_posted_from_another_site_is_refused(inbox: Inbox) -> None:
    jwt = token(inbox.settings, role="agent", user="agent1")
    r = inbox.client.post("/session", data={"token": jwt}, headers={"Origin": "https://evil.example"},
                          follow_redirects=False)
    assert r.status_code == 403


def test_one_time_sign_in_code_works_once(inbox: Inbox) -> None:
    code = SigninCodes(inbox.container.read_pool).create(
        SigninGrant(org_id=inbox.org, user_id="admin1", role="admin", name="Dev Admin"))
    first = inbox.client.get(f"/session/redeem?code={code}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert first.headers["set-cookie"].startswith(f"{SESSION_COOKIE}=")
    inbox.client.cookies.clear()
    again = inbox.client.get(f"/session/redeem?code={code}", follow_redirects=False)
    assert again.status_code == 401 and "already used or has expired" in again.text


def test_an_expired_sign_in_code_is_refused(inbox: Inbox) -> None:
    code = SigninCodes(inbox.container.read_pool).create(
        SigninGrant(org_id=inbox.org, user_id="admin1", role="admin", name=None), ttl_s=-1)
    assert inbox.client.get(f"/session/redeem?code={code}", follow_redirects=False).status_code == 401


def test_viewer_is_taken_from_a_bearer_token_or_the_session_cookie(inbox: Inbox) -> None:
    assert inbox.client.get("/ui/counters").status_code == 401
    assert inbox.client.get("/ui/counters", headers=inbox.headers("agent", "agent1")).status_code == 200
    sign_in(inbox)
    assert inbox.client.get("/ui/counters").json()["unassigned"] == 0


def test_a_cookie_write_without_the_csrf_token_is_refused(inbox: Inbox) -> None:
    room = inbox.inbound("whatsapp_cloud", "c1")["room_id"]
    inbox.project()
    csrf = sign_in(inbox)
    r = inbox.client.post(f"/ui/rooms/{room}/take", data={})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = inbox.client.post(f"/ui/rooms/{room}/take", data={"csrf": "0" * 64})
    assert r.status_code == 403
    # nothing was recorded: the room is still unassigned
    assert inbox.get(f"/v1/rooms/{room}")["status"] == "unassigned"
    r = inbox.client.post(f"/ui/rooms/{room}/take", headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"})
    assert r.status_code == 403


def test_a_cookie_write_with_the_csrf_token_runs_the_command(inbox: Inbox) -> None:
    room = inbox.inbound("whatsapp_cloud", "c1", name="Ana")["room_id"]
    inbox.project()
    csrf = sign_in(inbox)
    r = inbox.client.post(f"/ui/rooms/{room}/take", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert r.headers["hx-trigger"] == "inbox-changed"
    inbox.project()
    assert inbox.get(f"/v1/rooms/{room}")["assignee"] == "agent1"


def test_a_refused_command_answers_with_the_domain_reason(inbox: Inbox) -> None:
    room = inbox.inbound("whatsapp_cloud", "c1")["room_id"]
    inbox.project()
    csrf = sign_in(inbox, role="agent", user="agent1")
    r = inbox.client.post(f"/ui/rooms/{room}/assign", data={"agent_id": "agent2", "csrf": csrf})
    assert r.status_code == 403 and r.json()["detail"] == "an agent may only take a room for itself"


def test_sign_out_needs_the_csrf_token_and_clears_the_cookie(inbox: Inbox) -> None:
    csrf = sign_in(inbox)
    assert inbox.client.post("/session/end", data={}, follow_redirects=False).status_code == 403
    r = inbox.client.post("/session/end", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/session/new"
    assert f'{SESSION_COOKIE}=""' in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]


def test_the_page_shows_badges_the_unassigned_title_and_the_rooms(inbox: Inbox) -> None:
    inbox.inbound("whatsapp_cloud", "c1", name="Ana Souza", text="where is my order?")
    inbox.inbound("instagram", "c2", name="Budi")
    inbox.inbound("instagram_comment", "c3", name="Citra", post="post-9")
    inbox.project()
    sign_in(inbox, role="supervisor", user="spv1")
    page = inbox.client.get("/").text
    assert "<title>(3) Inbox</title>" in page
    assert re.search(r'id="badge-messages"[^>]*>2</span>', page)
    assert re.search(r'id="badge-comments"[^>]*>1</span>', page)
    assert "Ana Souza" in page and "where is my order?" in page and "Budi" in page
    assert "Citra" not in page  # a comment: on the Comments tab
    assert "Citra" in inbox.client.get("/?tab=comments").text
    assert "Resolve all expired chat room" in page and "Including unassigned rooms" in page
    assert page.count('aria-label="WhatsApp Cloud"') == 1  # the list icon; the dialog choice is its label


def test_pages_send_a_content_security_policy(inbox: Inbox) -> None:
    sign_in(inbox)
    csp = inbox.client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp


def test_bad_view_parameters_are_a_422_with_a_reason(inbox: Inbox) -> None:
    sign_in(inbox)
    r = inbox.client.get("/?status=sideways")
    assert r.status_code == 422 and "status must be one of" in r.json()["detail"]
    r = inbox.client.get("/ui/list?from=yesterday")
    assert r.status_code == 422 and "from must be a date" in r.json()["detail"]


def test_vendored_htmx_is_served_from_this_origin(inbox: Inbox) -> None:
    r = inbox.client.get("/static/htmx.min.js")
    assert r.status_code == 200 and 'version:"2.0.11"' in r.text
