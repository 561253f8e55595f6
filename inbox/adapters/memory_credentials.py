"""Channel-account credentials in memory (`inbox.usecases.ports.Credentials`), for use-case tests.

Plaintext in a dict: nothing here is at rest. PostgreSQL's adapter
(inbox/adapters/outbound/credentials.py) seals every secret.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from eventsourcing.persistence import OperationalError

from inbox.usecases.ports import AccountCredentials


@dataclass
class _Row:
    org_id: str
    channel: str
    external_id: str
    name: str
    access_token: str | None = None
    app_secret: str | None = None
    needs_reauth: bool = False
    reauth_reason: str | None = None
    disconnected: bool = False


class MemoryCredentials:
    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()
        self._registering = threading.RLock()
        self.failing = False  # True: `register` fails as a database that is down would
        self.app_secret_reads = 0  # how often `app_secret` was asked (tests of the callers' cache)

    def record(self, account_id: str, *, org_id: str, channel: str, external_id: str, name: str,
               access_token: str | None, app_secret: str | None = None) -> None:
        with self._lock:
            row = self._rows.setdefault(account_id, _Row(org_id, channel, external_id, name))
            row.disconnected = False
            if access_token is not None:
                row.access_token, row.needs_reauth, row.reauth_reason = access_token, False, None
            if app_secret is not None:
                row.app_secret = app_secret

    def register(self, account_id: str, *, org_id: str, channel: str, external_id: str, name: str,
                 access_token: str | None, app_secret: str | None) -> None:
        with self._lock:
            if self.failing:
                raise OperationalError("the in-memory credentials are set failing")
            self._rows[account_id] = _Row(org_id, channel, external_id, name, access_token, app_secret)

    @contextmanager
    def exclusive(self, account_id: str) -> Iterator[None]:
        with self._registering:
            yield

    def app_secret(self, account_id: str) -> str | None:
        with self._lock:
            self.app_secret_reads += 1
            row = self._rows.get(account_id)
            return row.app_secret if row else None

    def access_token(self, account_id: str) -> str | None:
        with self._lock:
            row = self._rows.get(account_id)
            return row.access_token if row and not row.disconnected else None

    def mark_needs_reauth(self, account_id: str, reason: str) -> None:
        with self._lock:
            if account_id in self._rows:
                self._rows[account_id].needs_reauth, self._rows[account_id].reauth_reason = True, reason

    def needs_reauth(self, account_id: str) -> bool:
        with self._lock:
            row = self._rows.get(account_id)
            return bool(row and row.needs_reauth)

    def list(self, org_id: str) -> list[AccountCredentials]:
        with self._lock:
            ids = sorted((r.name, a) for a, r in self._rows.items() if r.org_id == org_id and not r.disconnected)
        return [found for _, a in ids if (found := self.get(a)) is not None]

    def get(self, account_id: str) -> AccountCredentials | None:
        with self._lock:
            r = self._rows.get(account_id)
            if r is None or r.disconnected:
                return None
            return AccountCredentials(
                account_id=account_id, org_id=r.org_id, channel=r.channel, external_id=r.external_id, name=r.name,
                has_access_token=r.access_token is not None, needs_reauth=r.needs_reauth,
                reauth_reason=r.reauth_reason, has_app_secret=r.app_secret is not None,
            )

    def disconnect(self, account_id: str) -> None:
        with self._lock:
            if account_id in self._rows:
                self._rows[account_id].access_token = None
                self._rows[account_id].disconnected = True
