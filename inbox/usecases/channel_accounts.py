"""Channel accounts: register one (admins), find one by the channel's external id (cached), and
its secrets (access token, app secret), kept sealed behind the `Credentials` port.

The app secret verifies webhook signatures, so it is read on the webhook path: cached per account
for APP_SECRET_TTL seconds. A rotation (`rotate`) replaces the cached value in its own process at
once; other API processes read the new secret when their cached one expires, so a POST signed with
the old secret may still be taken there for at most APP_SECRET_TTL seconds after the rotation.
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from uuid import UUID

from eventsourcing.persistence import IntegrityError

from domain.channel_account import ChannelAccount, channel_account_id_for
from domain.channels import Channel
from domain.errors import AlreadyExists, InvalidCommand, NotAllowed, NotFound
from domain.limits import MAX_SECRET, check_optional_text, check_text
from domain.staff import Actor, Role
from inbox.usecases.ports import AccessChecker, AccountCredentials, Credentials, EventStore
from inbox.usecases.results import Unavailable


@dataclass(frozen=True)
class AccountInfo:
    id: str
    org_id: str
    channel: Channel
    external_id: str
    name: str


MISSING_TTL = 5.0  # seconds a negative account look-up is remembered (`cache_missing`)
MISSING_CACHE_SIZE = 10_000
APP_SECRET_TTL = 5.0  # seconds an account's app secret is cached (other processes see a rotation within it)
APP_SECRET_CACHE_SIZE = 10_000


class NotCached(Exception):
    """The answer needs a read of the store, and the caller asked for answers from the caches only
    (`cached_only`: a caller on an event loop, which must not wait on the database)."""


class ChannelAccounts:
    """Registers accounts and finds them by the channel's external id (cached: accounts are immutable)."""

    def __init__(
        self, store: EventStore, credentials: Credentials | None = None, access: AccessChecker | None = None
    ) -> None:
        self._store = store
        self._credentials = credentials
        self._access = access
        self._cache: dict[UUID, AccountInfo] = {}
        self._missing: dict[UUID, float] = {}  # negative look-ups (see `find`), id -> expiry (monotonic)
        self._secrets: dict[str, tuple[str | None, float]] = {}  # account id -> (app secret, expiry)
        self._lock = threading.Lock()

    def register(
        self, actor: Actor, *, channel: str, external_id: str, name: str, app_secret: str | None = None,
        access_token: str | None = None,
    ) -> AccountInfo:
        """Connect an account. With `access_token`, Meta is asked first whether the token can read
        the account (so no org claims an account it does not control): 422 when it cannot."""
        if actor.role != Role.ADMIN:
            raise NotAllowed("only admins register channel accounts")
        account = ChannelAccount.register(
            org_id=actor.org_id, channel=Channel.parse(channel), external_id=external_id, name=name,
        )
        app_secret = self._check_app_secret(app_secret)
        if app_secret is not None:
            self._vault()  # no key to seal it with: refuse before anything is recorded
        if access_token is not None:
            self._prove_access(channel, account.external_id, access_token)
        already = AlreadyExists(f"{channel} account {external_id!r} is already registered")
        # The secrets first, then the Registered event: a failure in between leaves a credentials
        # row without an account (overwritten by the retry, listed nowhere), never an account
        # without its secrets. One registration of an id at a time, and none once it exists, so
        # a registration never overwrites the secrets of an account that exists.
        with self._credentials.exclusive(str(account.id)) if self._credentials is not None else nullcontext():
            if self._exists(account.id):
                raise already
            if self._credentials is not None:
                self._credentials.register(
                    str(account.id), org_id=account.org_id, channel=account.channel,
                    external_id=account.external_id, name=account.name, access_token=access_token,
                    app_secret=app_secret,
                )
            try:
                self._store.save(account)
            except IntegrityError:
                raise already from None
        with self._lock:
            self._missing.pop(account.id, None)
            self._secrets.pop(str(account.id), None)
        return self._info(account)

    def _exists(self, account_id: UUID) -> bool:
        try:
            self._store.get(account_id)
        except NotFound:
            return False
        return True

    @staticmethod
    def _check_app_secret(app_secret: str | None) -> str | None:
        check_optional_text(app_secret, "app_secret", MAX_SECRET)
        return app_secret or None

    def app_secret(self, account: AccountInfo, *, cached_only: bool = False) -> str | None:
        """The account's own Meta app secret, or None (its webhooks are signed by the global app).
        Cached for APP_SECRET_TTL seconds; without credentials configured, no account has one.
        `cached_only`: raise NotCached rather than read the store."""
        if self._credentials is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._secrets.get(account.id)
        if cached is not None and cached[1] > now:
            return cached[0]
        if cached_only:
            raise NotCached(account.id)
        secret = self._credentials.app_secret(account.id)
        with self._lock:
            if len(self._secrets) >= APP_SECRET_CACHE_SIZE:
                self._secrets = {k: v for k, v in self._secrets.items() if v[1] > now}
                if len(self._secrets) >= APP_SECRET_CACHE_SIZE:
                    self._secrets.clear()
            self._secrets[account.id] = (secret, now + APP_SECRET_TTL)
        return secret

    def _prove_access(self, channel: str, external_id: str, access_token: str) -> None:
        check_text(access_token, "access_token", MAX_SECRET * 4)
        if not access_token.strip():
            raise InvalidCommand("access_token must not be empty")
        if self._access is None:
            raise Unavailable("the Graph API is not configured; cannot check the access token")
        result = self._access.check(channel, external_id, access_token)
        if result.retry:
            raise Unavailable(f"could not ask the Graph API whether the token reads {external_id}: {result.reason}")
        if not result.granted:
            raise InvalidCommand(f"this access token cannot read {channel} account {external_id!r}: {result.reason}")

    def list(self, actor: Actor) -> list[AccountCredentials]:
        self._require_admin(actor)
        # A row whose registration failed before its event was saved is no account.
        return [c for c in self._vault().list(actor.org_id) if self._exists(UUID(c.account_id))]

    def rotate(
        self, actor: Actor, account_id: str, *, access_token: str | None = None, app_secret: str | None = None
    ) -> AccountCredentials:
        """A new token (checked with Meta first; clears needs_reauth, so waiting sends go out)
        and/or a new app secret (webhooks signed with the old one are refused from then on: at
        once in this process, within APP_SECRET_TTL seconds in the others)."""
        current = self._own(actor, account_id)
        if access_token is None and app_secret is None:
            raise InvalidCommand("give an access_token and/or an app_secret to rotate")
        app_secret = self._check_app_secret(app_secret)
        if app_secret is None and access_token is None:
            raise InvalidCommand("app_secret must not be empty")
        if access_token is not None:
            self._prove_access(current.channel, current.external_id, access_token)
        self._vault().record(
            current.account_id, org_id=current.org_id, channel=current.channel, external_id=current.external_id,
            name=current.name, access_token=access_token, app_secret=app_secret,
        )
        if app_secret is not None:
            with self._lock:
                self._secrets[current.account_id] = (app_secret, time.monotonic() + APP_SECRET_TTL)
        updated = self._vault().get(current.account_id)
        assert updated is not None
        return updated

    def disconnect(self, actor: Actor, account_id: str) -> None:
        self._own(actor, account_id)
        self._vault().disconnect(account_id)

    def _own(self, actor: Actor, account_id: str) -> AccountCredentials:
        self._require_admin(actor)
        try:
            account_id = str(UUID(account_id))
        except ValueError:
            raise NotFound("channel account not found") from None
        found = self._vault().get(account_id)
        if found is None or found.org_id != actor.org_id or not self._exists(UUID(account_id)):
            raise NotFound("channel account not found")
        return found

    def _vault(self) -> Credentials:
        if self._credentials is None:
            raise Unavailable("channel-account credentials are not configured (INBOX_SECRET_KEY)")
        return self._credentials

    @staticmethod
    def _require_admin(actor: Actor) -> None:
        if actor.role != Role.ADMIN:
            raise NotAllowed("only admins manage channel accounts")

    def find_cached(self, channel: Channel, external_id: str) -> AccountInfo | None:
        """The account if this process has seen it already (no I/O: safe on an event loop)."""
        with self._lock:
            return self._cache.get(channel_account_id_for(channel.value, external_id))

    def find(
        self, channel: Channel, external_id: str, *, cache_missing: bool = False, cached_only: bool = False
    ) -> AccountInfo | None:
        """The account, or None. `cache_missing`: remember a miss for MISSING_TTL seconds (for
        look-ups an unauthenticated caller can trigger; another process's new account may then
        stay unseen that long). `cached_only`: raise NotCached rather than read the store."""
        account_id = channel_account_id_for(channel.value, external_id.encode("utf-8", "replace").decode())
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(account_id)
            missing_until = self._missing.get(account_id, 0.0)
        if cached is not None:
            return cached
        if cache_missing and missing_until > now:
            return None
        if cached_only:
            raise NotCached(str(account_id))
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
            external_id=account.external_id, name=account.name,
        )
