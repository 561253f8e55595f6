"""Bearer tokens (JWT, HS256) with the claims of SPEC §3: sub, org, role."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import jwt

from domain.errors import InvalidCommand
from domain.limits import check_identifier
from domain.staff import Actor, Role

ALGORITHM = "HS256"


class InvalidToken(Exception):
    """The token is missing, malformed, expired or signed with another secret."""


def mint_token(
    secret: str, *, org: str, user: str, role: str, name: str | None = None, ttl_s: int = 7 * 24 * 3600,
    issuer: str | None = None, audience: str | None = None,
) -> str:
    Role(role)  # refuse unknown roles early
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "org": org, "role": role, "iat": now, "exp": now + ttl_s}
    if name:
        claims["name"] = name
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Verified tokens by their raw string (with the settings they were checked against), each kept
# until its own expiry: a client sends the same token on every request, and decoding + HMAC +
# claim checks cost more than the rest of a small request's auth. Only successes are cached.
VERIFIED_CACHE_SIZE = 10_000
_verified: OrderedDict[tuple[str, str, str | None, str | None], tuple[Actor, float]] = OrderedDict()
_verified_lock = threading.Lock()


def verify_token(secret: str, token: str, *, issuer: str | None = None, audience: str | None = None) -> Actor:
    """Check signature and expiry; when `issuer`/`audience` are configured, the token must carry them."""
    key = (token, secret, issuer, audience)
    with _verified_lock:
        hit = _verified.get(key)
        if hit is not None:
            if time.time() < hit[1]:
                _verified.move_to_end(key)
                return hit[0]
            del _verified[key]
    actor, expires = _verify(secret, token, issuer=issuer, audience=audience)
    with _verified_lock:
        _verified[key] = (actor, expires)
        while len(_verified) > VERIFIED_CACHE_SIZE:
            _verified.popitem(last=False)
    return actor


def _verify(secret: str, token: str, *, issuer: str | None, audience: str | None) -> tuple[Actor, float]:
    required = ["sub", "exp"] + (["iss"] if issuer else []) + (["aud"] if audience else [])
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], issuer=issuer, audience=audience,
            options={"require": required, "verify_aud": audience is not None},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.PyJWTError as e:
        raise InvalidToken(f"invalid token: {e}") from None
    try:
        role = Role(claims.get("role"))
    except ValueError:
        raise InvalidToken(f"invalid token: unknown role {claims.get('role')!r}") from None
    org, sub = claims.get("org"), claims.get("sub")
    if not isinstance(org, str) or not org or not isinstance(sub, str) or not sub:
        raise InvalidToken("invalid token: claims 'sub' and 'org' must be non-empty strings")
    try:  # the ids every command and counter key is built from: "*" as a user would read every row
        check_identifier(sub, "claim 'sub'")
        check_identifier(org, "claim 'org'")
    except InvalidCommand as e:
        raise InvalidToken(f"invalid token: {e}") from None
    return Actor(user_id=sub, org_id=org, role=role, name=claims.get("name")), float(claims["exp"])
