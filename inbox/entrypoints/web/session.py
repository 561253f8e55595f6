"""The browser session: an HttpOnly, SameSite=Lax cookie holding the signed token (JWT), and a CSRF
token derived from it for every cookie-authenticated write.

The cookie carries the same signed JWT a bearer client sends, so it expires with the token and needs
no server-side state. EventSource cannot send an Authorization header, and a token must never sit in
a URL: the cookie is how the browser authenticates `/v1/stream` and the UI.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

import jwt
from fastapi import Request, Response

from domain.staff import Actor
from inbox.adapters.auth import InvalidToken, verify_token
from inbox.config import Settings

SESSION_COOKIE = "inbox_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


def actor_from_cookie(settings: Settings, request: Request) -> Actor | None:
    """The signed-in viewer, or None when there is no cookie or it no longer verifies."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return verify_token(settings.jwt_secret or "", token, issuer=settings.jwt_issuer,
                            audience=settings.jwt_audience)
    except InvalidToken:
        return None


def csrf_token(settings: Settings, request: Request) -> str:
    """Per-session CSRF token: an HMAC of the session token, so a page of another origin cannot know it."""
    token = request.cookies.get(SESSION_COOKIE, "")
    key = (settings.jwt_secret or "").encode()
    return hmac.new(key, b"csrf\0" + token.encode(), hashlib.sha256).hexdigest()


def same_origin(request: Request) -> bool:
    """No Origin header (same-origin GET/HEAD, older browsers: SameSite still applies), or one naming
    this host. Only the host is compared: behind a TLS proxy the app may see http for an https origin."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host", "")


def csrf_ok(settings: Settings, request: Request, submitted: str | None) -> bool:
    """A cookie-authenticated write must carry the session's CSRF token (header or form field) and,
    when the browser names an Origin, come from this origin."""
    if not same_origin(request):
        return False
    given = request.headers.get(CSRF_HEADER) or submitted or ""
    return bool(request.cookies.get(SESSION_COOKIE)) and hmac.compare_digest(given, csrf_token(settings, request))


def set_session(response: Response, request: Request, token: str) -> None:
    """Store the verified token in the session cookie until the token expires."""
    exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    max_age = max(0, int(exp) - int(time.time())) if isinstance(exp, int) else None
    response.set_cookie(
        SESSION_COOKIE, token, max_age=max_age, path="/", httponly=True, samesite="lax",
        secure=request.url.scheme == "https",
    )


def clear_session(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax",
                           secure=request.url.scheme == "https")
