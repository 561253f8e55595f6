"""One-time sign-in codes for the web UI: `inbox dev` creates one and prints a link with it; the API
redeems it once (the code is never stored, only its SHA-256) and sets the session cookie."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from psycopg_pool import ConnectionPool

from domain.staff import Role

CODE_TTL_S = 15 * 60


@dataclass(frozen=True)
class SigninGrant:
    org_id: str
    user_id: str
    role: str
    name: str | None


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class SigninCodes:
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def create(self, grant: SigninGrant, *, ttl_s: int = CODE_TTL_S) -> str:
        """A fresh code for `grant`, valid once within `ttl_s` seconds."""
        Role(grant.role)  # refuse unknown roles early
        code = secrets.token_urlsafe(32)
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO signin_codes (code_hash, org_id, user_id, role, name, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
                (_hash(code), grant.org_id, grant.user_id, grant.role, grant.name, ttl_s),
            )
        return code

    def redeem(self, code: str) -> SigninGrant | None:
        """The grant of an unused, unexpired code, marking it used; None for any other code."""
        if not code or len(code) > 200:
            return None
        with self._pool.connection() as conn:
            row = conn.execute(
                "UPDATE signin_codes SET used_at = now()"
                " WHERE code_hash = %s AND used_at IS NULL AND expires_at > now()"
                " RETURNING org_id, user_id, role, name",
                (_hash(code),),
            ).fetchone()
        return SigninGrant(*row) if row else None
