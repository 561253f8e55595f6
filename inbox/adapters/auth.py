"""Bearer tokens (JWT, HS256) with the claims of SPEC §3: sub, org, role."""

from __future__ import annotations

import time

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


def verify_token(secret: str, token: str, *, issuer: str | None = None, audience: str | None = None) -> Actor:
    """Check signature and expiry; when `issuer`/`audience` are configured, the token must carry them."""
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
    return Actor(user_id=sub, org_id=org, role=role, name=claims.get("name"))
