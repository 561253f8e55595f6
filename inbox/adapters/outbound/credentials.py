"""Channel-account credentials in PostgreSQL: the access token and the app secret, each sealed with
SecretBox (AES-256-GCM).

Why a table of its own and not the ChannelAccount events: events are immutable and replayed into
every consumer; a secret in an event could never be rotated out of the store, and one mistake in
the relay would put it on the topic. Here a rotation overwrites it, a disconnection deletes the
token, and each seal is bound to its account and field (`channel_account:<id>:access_token`,
`channel_account:<id>:app_secret`), so a sealed value copied onto another row or field does not open.

`seal_plaintext_app_secrets` (run by `inbox migrate`) moves the app secrets that registrations
stored before this kept in plaintext in their event into this table, and rewrites those events
without them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from inbox.adapters.eventstore import EVENTS_TABLE, InboxApplication
from inbox.adapters.secrets import SecretBox, SecretKeyError
from inbox.usecases.ports import AccountCredentials
from inbox.usecases.results import Unavailable

log = logging.getLogger(__name__)


def token_context(account_id: str) -> str:
    return f"channel_account:{account_id}:access_token"


def app_secret_context(account_id: str) -> str:
    return f"channel_account:{account_id}:app_secret"


class PostgresCredentials:
    def __init__(self, pool: ConnectionPool, box: SecretBox | None) -> None:
        self._pool = pool
        self._box = box
        self._held = threading.local()  # the connection `exclusive` holds in this thread, if any

    @contextmanager
    def _connection(self) -> Iterator[Connection[Any]]:
        """A pooled connection, committed when the block ends; inside `exclusive`, the one it
        holds (taking a second from the pool could wait for ever on a pool of one)."""
        held: Connection[Any] | None = getattr(self._held, "conn", None)
        if held is None:
            with self._pool.connection() as conn:
                yield conn
            return
        try:
            yield held
        except BaseException:
            held.rollback()
            raise
        held.commit()

    def _seal(self, account_id: str, token: str) -> str:
        if self._box is None:
            raise Unavailable("INBOX_SECRET_KEY is not set: access tokens cannot be stored")
        return self._box.seal(token, token_context(account_id))

    def _seal_both(self, account_id: str, access_token: str | None,
                   app_secret: str | None) -> tuple[str | None, str | None]:
        """(sealed token, sealed app secret), None for what is not given."""
        sealed = self._seal(account_id, access_token) if access_token is not None else None
        if app_secret is None:
            return sealed, None
        if self._box is None:
            raise Unavailable("INBOX_SECRET_KEY is not set: app secrets cannot be stored")
        return sealed, self._box.seal(app_secret, app_secret_context(account_id))

    def record(self, account_id: str, *, org_id: str, channel: str, external_id: str, name: str,
               access_token: str | None, app_secret: str | None = None) -> None:
        sealed, sealed_secret = self._seal_both(account_id, access_token, app_secret)
        with self._connection() as conn:
            conn.execute(
                "INSERT INTO channel_account_credentials (account_id, org_id, channel, external_id, name,"
                " access_token_sealed, app_secret_sealed, needs_reauth) VALUES (%s, %s, %s, %s, %s, %s, %s, false)"
                " ON CONFLICT (account_id) DO UPDATE SET"
                " access_token_sealed = coalesce(EXCLUDED.access_token_sealed, channel_account_credentials.access_token_sealed),"
                " app_secret_sealed = coalesce(EXCLUDED.app_secret_sealed, channel_account_credentials.app_secret_sealed),"
                " needs_reauth = CASE WHEN EXCLUDED.access_token_sealed IS NULL"
                "   THEN channel_account_credentials.needs_reauth ELSE false END,"
                " reauth_reason = CASE WHEN EXCLUDED.access_token_sealed IS NULL"
                "   THEN channel_account_credentials.reauth_reason END,"
                " disconnected_at = NULL, updated_at = now()",
                (account_id, org_id, channel, external_id, name, sealed, sealed_secret),
            )

    def register(self, account_id: str, *, org_id: str, channel: str, external_id: str, name: str,
                 access_token: str | None, app_secret: str | None) -> None:
        sealed, sealed_secret = self._seal_both(account_id, access_token, app_secret)
        with self._connection() as conn:
            conn.execute(
                "INSERT INTO channel_account_credentials (account_id, org_id, channel, external_id, name,"
                " access_token_sealed, app_secret_sealed, needs_reauth) VALUES (%s, %s, %s, %s, %s, %s, %s, false)"
                " ON CONFLICT (account_id) DO UPDATE SET org_id = EXCLUDED.org_id, channel = EXCLUDED.channel,"
                " external_id = EXCLUDED.external_id, name = EXCLUDED.name,"
                " access_token_sealed = EXCLUDED.access_token_sealed, app_secret_sealed = EXCLUDED.app_secret_sealed,"
                " needs_reauth = false, reauth_reason = NULL, disconnected_at = NULL, updated_at = now()",
                (account_id, org_id, channel, external_id, name, sealed, sealed_secret),
            )

    @contextmanager
    def exclusive(self, account_id: str) -> Iterator[None]:
        """A session advisory lock on the account id, held on one pooled connection meanwhile."""
        key = f"channel-account:{account_id}"
        with self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
            conn.commit()
            self._held.conn = conn
            try:
                yield
            finally:
                self._held.conn = None
                conn.rollback()
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))

    def app_secret(self, account_id: str) -> str | None:
        """The account's own app secret (kept when the account is disconnected: its webhooks
        still name it, and must not fall back to the global app's secret)."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT app_secret_sealed FROM channel_account_credentials WHERE account_id = %s", (account_id,),
            ).fetchone()
        if row is None or row[0] is None:
            return None
        if self._box is None:
            raise Unavailable("INBOX_SECRET_KEY is not set: the account's app secret cannot be opened")
        return self._box.open(row[0], app_secret_context(account_id))

    def access_token(self, account_id: str) -> str | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT access_token_sealed FROM channel_account_credentials"
                " WHERE account_id = %s AND disconnected_at IS NULL", (account_id,),
            ).fetchone()
        if row is None or row[0] is None or self._box is None:
            return None
        return self._box.open(row[0], token_context(account_id))

    def sendable_token(self, account_id: str) -> str | None:
        """The token to send with, or None when there is none or Meta rejected it (sends wait)."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT access_token_sealed, needs_reauth FROM channel_account_credentials"
                " WHERE account_id = %s AND disconnected_at IS NULL", (account_id,),
            ).fetchone()
        if row is None or row[0] is None or row[1] or self._box is None:
            return None
        return self._box.open(row[0], token_context(account_id))

    def mark_needs_reauth(self, account_id: str, reason: str) -> None:
        with self._connection() as conn:
            conn.execute(
                "UPDATE channel_account_credentials SET needs_reauth = true, reauth_reason = %s, updated_at = now()"
                " WHERE account_id = %s", (reason, account_id),
            )
        log.warning("channel account %s needs re-authorisation: %s", account_id, reason)

    def needs_reauth(self, account_id: str) -> bool:
        with self._connection() as conn:
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
        with self._connection() as conn:
            conn.execute(
                "UPDATE channel_account_credentials SET access_token_sealed = NULL, disconnected_at = now(),"
                " updated_at = now() WHERE account_id = %s", (account_id,),
            )

    def needs_reauth_count(self) -> int:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM channel_account_credentials WHERE needs_reauth AND disconnected_at IS NULL"
            ).fetchone()
        return int(row[0]) if row else 0

    def _select(self, where: str, params: tuple[object, ...]) -> list[AccountCredentials]:
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT account_id::text, org_id, channel, external_id, name,"
                " access_token_sealed IS NOT NULL AS has_access_token, needs_reauth, reauth_reason,"
                " app_secret_sealed IS NOT NULL AS has_app_secret"
                f" FROM channel_account_credentials {where}", params,
            )
            return [AccountCredentials(**row) for row in cur.fetchall()]


REGISTERED_TOPIC = "domain.channel_account:ChannelAccount.Registered"


def seal_plaintext_app_secrets(app: InboxApplication, box: SecretBox | None) -> int:
    """Move app secrets that account registrations stored in plaintext (Registered v1) into the
    sealed `channel_account_credentials.app_secret_sealed`, and rewrite those stored events
    without the secret (as Registered v2). Returns how many secrets were moved.

    Once per store: a later run finds no Registered event with an `app_secret` and writes nothing.
    One transaction: interrupted, nothing is half moved. A secret sealed meanwhile (a rotation)
    is kept, the old plaintext one is only dropped. Needs INBOX_SECRET_KEY when there is
    anything to move. Channel-account events are never published, so no consumer holds a copy;
    a database backup taken before the migration still does.
    """
    table = app.table(EVENTS_TABLE)
    credentials = app.table("channel_account_credentials")
    transcoder = app.mapper.transcoder
    if app.mapper.compressor or app.mapper.cipher:
        raise NotImplementedError("moving app secrets out of compressed or encrypted events")
    with app.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 0")
        rows = conn.execute(
            f"SELECT originator_id, originator_version, state FROM {table} WHERE topic = %s"
            """ AND position(convert_to('"app_secret"', 'UTF8') in state) > 0""",
            (REGISTERED_TOPIC,),
        ).fetchall()
        moved = 0
        rewritten: list[tuple[bytes, Any, int]] = []
        for r in rows:
            state = transcoder.decode(bytes(r["state"]))
            if "app_secret" not in state:
                continue
            secret = state.pop("app_secret")
            state["class_version"] = 2
            account_id = str(r["originator_id"])
            if secret:
                if box is None:
                    raise SecretKeyError(
                        "INBOX_SECRET_KEY is not set: `inbox migrate` must seal the app secrets that channel"
                        " accounts registered earlier kept in plaintext; set the key and run it again"
                    )
                conn.execute(
                    f"INSERT INTO {credentials} (account_id, org_id, channel, external_id, name, app_secret_sealed)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (account_id) DO UPDATE SET"
                    f" app_secret_sealed = coalesce({credentials}.app_secret_sealed, EXCLUDED.app_secret_sealed),"
                    " updated_at = now()",
                    (account_id, state["org_id"], state["channel"], state["external_id"], state["name"],
                     box.seal(secret, app_secret_context(account_id))),
                )
                moved += 1
            rewritten.append((transcoder.encode(state), r["originator_id"], r["originator_version"]))
        if rewritten:
            with conn.cursor() as cur:
                cur.executemany(
                    f"UPDATE {table} SET state = %s WHERE originator_id = %s AND originator_version = %s", rewritten
                )
    if rewritten:
        log.info("moved %s plaintext app secrets of channel accounts into the sealed store", moved)
    return moved
