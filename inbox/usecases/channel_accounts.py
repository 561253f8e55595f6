"""Channel accounts: register one (admins), find one by the channel's external id (cached)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from domain.channel_account import ChannelAccount, channel_account_id_for
from domain.channels import Channel
from domain.errors import AlreadyExists, NotAllowed, NotFound
from domain.staff import Actor, Role
from inbox.usecases.ports import EventStore


@dataclass(frozen=True)
class AccountInfo:
    id: str
    org_id: str
    channel: Channel
    external_id: str
    name: str
    app_secret: str | None


MISSING_TTL = 5.0  # seconds a negative account look-up is remembered (`cache_missing`)
MISSING_CACHE_SIZE = 10_000


class ChannelAccounts:
    """Registers accounts and finds them by the channel's external id (cached: accounts are immutable)."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._cache: dict[UUID, AccountInfo] = {}
        self._missing: dict[UUID, float] = {}  # negative look-ups (see `find`), id -> expiry (monotonic)
        self._lock = threading.Lock()

    def register(
        self, actor: Actor, *, channel: str, external_id: str, name: str, app_secret: str | None = None
    ) -> AccountInfo:
        if actor.role != Role.ADMIN:
            raise NotAllowed("only admins register channel accounts")
        account = ChannelAccount.register(
            org_id=actor.org_id, channel=Channel.parse(channel), external_id=external_id, name=name,
            app_secret=app_secret,
        )
        try:
            self._store.save(account)
        except IntegrityError:
            raise AlreadyExists(
                f"{channel} account {external_id!r} is already registered"
            ) from None
        with self._lock:
            self._missing.pop(account.id, None)
        return self._info(account)

    def find_cached(self, channel: Channel, external_id: str) -> AccountInfo | None:
        """The account if this process has seen it already (no I/O: safe on an event loop)."""
        with self._lock:
            return self._cache.get(channel_account_id_for(channel.value, external_id))

    def find(self, channel: Channel, external_id: str, *, cache_missing: bool = False) -> AccountInfo | None:
        """The account, or None. `cache_missing`: remember a miss for MISSING_TTL seconds (for
        look-ups an unauthenticated caller can trigger; another process's new account may then
        stay unseen that long)."""
        account_id = channel_account_id_for(channel.value, external_id.encode("utf-8", "replace").decode())
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(account_id)
            missing_until = self._missing.get(account_id, 0.0)
        if cached is not None:
            return cached
        if cache_missing and missing_until > now:
            return None
        try:
            account: ChannelAccount = self._store.get(account_id)
        except NotFound:
            if cache_missing:
                with self._lock:
                    if len(self._missing) >= MISSING_CACHE_SIZE:
                        self._missing = {k: t for k, t in self._missing.items() if t > now}
                        if len(self._missing) >= MISSING_CACHE_SIZE:
                            self._missing.clear()
                    self._missing[account_id] = now + MISSING_TTL
            return None
        info = self._info(account)
        with self._lock:
            self._cache[account_id] = info
        return info

    @staticmethod
    def _info(account: ChannelAccount) -> AccountInfo:
        return AccountInfo(
            id=str(account.id), org_id=account.org_id, channel=Channel(account.channel),
            external_id=account.external_id, name=account.name, app_secret=account.app_secret,
        )
