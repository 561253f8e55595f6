"""Channel-account credentials in PostgreSQL, the access token sealed with SecretBox (AES-256-GCM).

Why a table of its own and not the ChannelAccount events: events are immutable and replayed into
every consumer; a token in an event could never be rotated out of the store, and one mistake in
the relay would put it on the topic. Here a rotation overwrites it, a disconnection deletes it,
and the seal is bound to the account (`channel_account:<id>:access_token`), so a sealed value
copied onto another row does not open.
"""

from __future__ import annotations

import logging

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from inbox.adapters.secrets import SecretBox
from inbox.usecases.ports import AccountCredentials
from inbox.usecases.results import Unavailable

log = logging.getLogger(__name__)


def token_context(account_id: str) -> str:
    return f"channel_account:{account_id}:access_token"


class PostgresCredentials:
    def __init__(self, pool: ConnectionPool, box: SecretBox | None) -> None:
        self._pool = pool
        self._box = box

    def _seal(self, account_id: str, token: str) -> str:
        if self._box is None:
            raise Unavailable("INBOX_SECRET_KEY is not set: access tokens cannot be stored")
        return self._box.seal(token, token_context(account_id))

    def record(self, account_id: str, *, org_id: str, channel: str, external_id: str, name: str,
               access_token: str | None) -> None:
        sealed = self._seal(account_id, access_token) if access_token is not None else None
        with self._pool.connection() as conn:
            conn.execute(
                "INSERT INTO channel_account_credentials (account_id, org_id, channel, external_id, name,"
                " access_token_sealed, needs_reauth) VALUES (%s, %s, %s, %s, %s, %s, false)"
                " ON CONFLICT (account_id) DO UPDATE SET"
                " access_token_sealed = coalesce(EXCLUDED.access_token_sealed, channel_account_credentials.access_token_sealed),"
                " needs_reauth = CASE WHEN EXCLUDED.access_token_sealed IS NULL"
                "   THEN channel_account_credentials.needs_reauth ELSE false END,"
                " reauth_reason = CASE WHEN EXCLUDED.access_token_sealed IS NULL"
                "   THEN channel_account_credentials.reauth_reason END,"
                " disconnected_at = NULL, updated_at = now()",
                (account_id, org_id, channel, external_id, name, sealed),
            )

    def access_token(self, account_id: str) -> str | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT access_token_sealed FROM channel_account_credentials"
                " WHERE account_id = %s AND disconnected_at IS NULL", (account_id,),
            ).fetchone()
        if row is None or row[0] is None or self._box is None:
            return None
        return self._box.open(row[0], token_context(account_id))

    def sendable_token(self, account_id: str) -> str | None:
        """The token to send with, or None when there is none or Meta rejected it (sends wait)."""
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT access_token_sealed, needs_reauth FROM channel_account_credentials"
                " WHERE account_id = %s AND disconnected_at IS NULL", (account_id,),
            ).fetchone()
        if row is None or row[0] is None or row[1] or self._box is None:
            return None
        return self._box.open(row[0], token_context(account_id))

    def mark_needs_reauth(self, account_id: str, reason: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "UPDATE channel_account_credentials SET needs_reauth = true, reauth_reason = %s, updated_at = now()"
                " WHERE account_id = %s", (reason, account_id),
            )
        log.warning("channel account %s needs re-authorisation: %s", account_id, reason)

    def needs_reauth(self, account_id: str) -> bool:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT needs_reauth FROM channel_account_credentials WHERE account_id = %s", (account_id,)
            ).fetchone()
        return bool(row and row[0])

    def list(self, org_id: str) -> list[AccountCredentials]:
        return self._select("WHERE org_id = %s AND disconnected_at IS NULL ORDER BY name, account_id", (org_id,))

    def get(self, account_id: str) -> AccountCredentials | None:
        found = self._select("WHERE account_id = %s AND disconnected_at IS NULL", (account_id,))
        return found[0] if found else None

    def disconnect(self, account_id: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(
                "UPDATE channel_account_credentials SET access_token_sealed = NULL, disconnected_at = now(),"
                " updated_at = now() WHERE account_id = %s", (account_id,),
            )

    def needs_reauth_count(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM channel_account_credentials WHERE needs_reauth AND disconnected_at IS NULL"
            ).fetchone()
        return int(row[0]) if row else 0

    def _select(self, where: str, params: tuple[object, ...]) -> list[AccountCredentials]:
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT account_id::text, org_id, channel, external_id, name,"
                " access_token_sealed IS NOT NULL AS has_access_token, needs_reauth, reauth_reason"
                f" FROM channel_account_credentials {where}", params,
            )
            return [AccountCredentials(**row) for row in cur.fetchall()]
