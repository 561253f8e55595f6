"""Use case: a signed Meta webhook in, its facts recorded (all or none), a fast answer out.

Signature rule (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`): Meta signs
each POST with the secret of the app that sends it. We accept a POST whose signature matches
either the global `INBOX_META_APP_SECRET` or the own `app_secret` of a channel account the
payload mentions (constant-time comparisons; an account's own secret is read through the
`Credentials` port, sealed at rest, cached APP_SECRET_TTL seconds: inbox/usecases/channel_accounts.py);
anything else is refused (401), nothing recorded.
Then, per fact: an account with its own `app_secret` only takes facts from POSTs signed with that
secret, and an account without one only from POSTs signed with the global secret; facts for an
account the signing app does not speak for are acknowledged and dropped (logged, counted as
`other_app`), so one tenant's app can never write into another tenant's account.

The global secret is tried first on the raw bytes, so the common case verifies before any JSON
is parsed; only when it does not match is the body parsed to find accounts with their own secret,
looking up at most MAX_SIGNATURE_ACCOUNTS accounts (misses are cached briefly), so a forged POST
costs bounded work before its 401.

What is recorded is storable (docs/meta.md): values are repaired, never refused
(`channels.sanitize`, counted in `inbox_webhook_repaired_values_total`); a fact that a domain rule
refuses (e.g. more than 20 shared contacts, an over-long id) is logged and counted as `refused`
while the POST's other facts are recorded.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections import Counter as Tally
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio.to_thread
import orjson

from channels.facts import (
    DeliveryStatus,
    Fact,
    Ignored,
    InboundMessage,
    MessageEdit,
    MessageRemoval,
    OutboundEcho,
    RecordableFact,
)
from channels.meta.parser import WebhookShapeError, parse_webhook
from channels.meta.signature import SIGNATURE_PREFIX, signature
from channels.sanitize import Repair, sanitize
from domain.channels import Channel
from domain.errors import Conflict, DomainError
from inbox.config import Settings
from inbox.usecases.channel_accounts import AccountInfo, ChannelAccounts, NotCached
from inbox.usecases.ingest import CheckedFacts, InboundCommitter, check_each
from inbox.usecases.ports import WebhookMetrics
from inbox.usecases.results import FactOutcome, FactResult

log = logging.getLogger(__name__)

MAX_SIGNATURE_ACCOUNTS = 20  # accounts with their own secret tried per POST not signed by the global app
# A POST up to this size whose accounts this process has cached is prepared on the event loop:
# handing it to a thread and back costs more than its work. Meta's usual POST, one message of
# 0.5-1 KB, takes ~0.05 ms to verify, parse and repair; a POST of this size (~25 messages) ~0.5 ms,
# about as long as the loop should be kept from its other requests. Larger ones go to a thread.
INLINE_BODY_BYTES = 4 * 1024


class BadSignature(Exception):
    """Missing or wrong X-Hub-Signature-256: 401, nothing recorded."""


class BadPayload(Exception):
    """Not JSON, or not shaped like a Meta webhook: 400 with the reason."""


@dataclass(frozen=True)
class WebhookOutcome:
    received: int
    recorded: int
    duplicates: int
    ignored: int
    unknown_accounts: int
    other_app: int
    refused: int = 0  # facts a domain rule refused (logged, counted); the others are recorded
    repaired: int = 0  # facts recorded with repaired values (channels.sanitize)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class PreparedWebhook:
    """A verified, parsed POST: the facts it may record (`group`) and what was set aside (`tally`)."""

    facts: list[Fact]
    group: CheckedFacts
    tally: Tally[str]
    refusals: list[tuple[Fact, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Trust:
    accounts: dict[tuple[Channel, str], AccountInfo | None]
    speaks_for: dict[str, bool]  # account id -> the app that signed the POST speaks for it


_KINDS: dict[type, str] = {
    InboundMessage: "message", OutboundEcho: "echo", MessageEdit: "edit", MessageRemoval: "removal",
    DeliveryStatus: "status", Ignored: "ignored",
}


def _kind(fact: Fact) -> str:
    return _KINDS[type(fact)]


def _lenient_json(body: bytes, error: orjson.JSONDecodeError) -> Any:
    """orjson refuses lone surrogate escapes ("\\ud800"), which JSON allows and a truncated emoji
    produces: such a body is read by the standard library instead (and repaired later)."""
    if "surrogate" not in str(error):
        raise BadPayload(f"malformed JSON: {error}") from None
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise BadPayload(f"malformed JSON: {e}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class MetaWebhooks:
    def __init__(
        self, settings: Settings, accounts: ChannelAccounts, inbound: InboundCommitter, metrics: WebhookMetrics
    ) -> None:
        self._settings = settings
        self._accounts = accounts
        self._inbound = inbound
        self._metrics = metrics

    # ---- GET: the subscription handshake
    def verify_subscription(self, mode: str | None, token: str | None, challenge: str | None) -> str | None:
        """The challenge to echo back, or None when the handshake must be refused."""
        expected = self._settings.meta_verify_token
        if mode != "subscribe" or not expected or token is None or challenge is None:
            return None
        return challenge if hmac.compare_digest(token.encode(), expected.encode()) else None

    # ---- POST: notifications
    async def receive_async(self, body: bytes, header: str | None, *, received_at: datetime) -> WebhookOutcome:
        """Verify, parse and record a POST; the commit is awaited. Preparing it (`prepare`) runs on
        the event loop when the POST is small and needs no read of the store, else in a thread."""
        prepared = None
        if len(body) <= INLINE_BODY_BYTES:
            try:
                prepared = self.prepare(body, header, received_at=received_at, cached_only=True)
            except NotCached:
                pass  # an account or app secret this process has not cached: read in the thread
        if prepared is None:
            prepared = await anyio.to_thread.run_sync(lambda: self.prepare(body, header, received_at=received_at))
        try:
            results = await self._inbound.submit_group_async(prepared.group, self._settings.inbound_timeout_s)
        except DomainError as e:
            if isinstance(e, Conflict):
                raise
            results = await anyio.to_thread.run_sync(self._one_by_one, prepared, e)
        return self.finish(prepared, results)

    def _one_by_one(self, prepared: PreparedWebhook, error: DomainError) -> list[FactResult]:
        """A rule `validate_fact` does not know refused the group: record each fact on its own,
        so the refused one does not sink the others (rare: the common refusals are caught up front)."""
        log.warning("webhook group refused (%s): recording its %s facts one by one", error, len(prepared.group))
        results = []
        for account, fact in prepared.group.items:
            try:
                [result] = self._inbound.submit_group([(account, fact)])
            except DomainError as e:
                if isinstance(e, Conflict):
                    raise
                result = FactResult(FactOutcome.REFUSED, reason=str(e))
            results.append(result)
        return results

    def prepare(
        self, body: bytes, header: str | None, *, received_at: datetime, cached_only: bool = False
    ) -> PreparedWebhook:
        """Verify the signature, parse, repair and pick the facts this POST may record (no writes).
        `cached_only`: raise NotCached, before any metric or log, when that needs a read of the store."""
        try:
            secret, facts = self._verify(body, header, received_at, cached_only)
        except BadSignature:
            self._metrics.webhook_rejected.labels("signature").inc()
            raise
        try:
            if facts is None:
                facts = self._parse(body, received_at)
        except BadPayload:
            self._metrics.webhook_rejected.labels("payload").inc()
            raise
        repaired = [sanitize(fact, received_at) for fact in facts]
        clean = [fact for fact, _ in repaired]
        trust = self._trust(clean, secret, cached_only)
        for fact, repairs in repaired:
            self._note_repairs(fact, repairs)
        prepared = self._select(clean, trust)
        prepared.tally["repaired"] = sum(1 for _, repairs in repaired if repairs)
        return prepared

    def _note_repairs(self, clean: Fact, repairs: list[Repair]) -> None:
        for repair in repairs:
            self._metrics.webhook_repairs.labels(repair.field, repair.reason).inc()
        if repairs:
            log.warning(
                "webhook %s %.80r: values repaired to be storable: %s", _kind(clean),
                getattr(clean, "channel_message_id", None) or getattr(clean, "status_key", None),
                ", ".join(f"{r.field} {r.reason}" + (f" (was {r.raw})" if r.raw else "") for r in repairs),
            )

    def _verify(
        self, body: bytes, header: str | None, received_at: datetime, cached_only: bool
    ) -> tuple[str, list[Fact] | None]:
        if not header:
            raise BadSignature("missing X-Hub-Signature-256 header")
        if not header.startswith(SIGNATURE_PREFIX):
            raise BadSignature("X-Hub-Signature-256 must be sha256=<hex digest>")
        given = header.strip().lower().encode("utf-8", "replace")
        global_secret = self._settings.meta_app_secret
        if global_secret and hmac.compare_digest(signature(global_secret, body).encode(), given):
            return global_secret, None
        # Not the global app: maybe the app of an account that has its own secret.
        try:
            facts = self._parse(body, received_at)
        except BadPayload:
            raise BadSignature("X-Hub-Signature-256 does not match the body") from None
        found = self._accounts_of(facts, cached_only, limit=MAX_SIGNATURE_ACCOUNTS, cache_missing=True)
        for account in found.values():
            own = self._accounts.app_secret(account, cached_only=cached_only) if account is not None else None
            if own and hmac.compare_digest(signature(own, body).encode(), given):
                return own, facts
        raise BadSignature("X-Hub-Signature-256 does not match the body")

    @staticmethod
    def _parse(body: bytes, received_at: datetime) -> list[Fact]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            payload = _lenient_json(body, e)
        try:
            return parse_webhook(payload, received_at=received_at)
        except WebhookShapeError as e:
            raise BadPayload(f"not a Meta webhook payload: {e}") from None
        except Exception as e:
            # A shape the parser does not expect must never be a 500: logged with its trace, refused.
            log.exception("webhook payload broke the parser")
            raise BadPayload(f"not a Meta webhook payload: unexpected shape ({type(e).__name__})") from None

    def _accounts_of(
        self, facts: list[Fact], cached_only: bool, *, limit: int | None = None, cache_missing: bool = False
    ) -> dict[tuple[Channel, str], AccountInfo | None]:
        found: dict[tuple[Channel, str], AccountInfo | None] = {}
        for fact in facts:
            if isinstance(fact, Ignored) or fact.channel is None:
                continue
            key = (fact.channel, fact.channel_account)
            if key not in found:
                if limit is not None and len(found) >= limit:
                    break
                found[key] = self._accounts.find(*key, cache_missing=cache_missing, cached_only=cached_only)
        return found

    def _trust(self, facts: list[Fact], secret: str, cached_only: bool) -> _Trust:
        """Every read of the store `_select` needs: the POST's accounts and, per account, whether
        the app that signed the POST speaks for it."""
        accounts = self._accounts_of(facts, cached_only)
        global_secret = self._settings.meta_app_secret
        speaks_for: dict[str, bool] = {}
        for account in accounts.values():
            if account is not None and account.id not in speaks_for:
                own = self._accounts.app_secret(account, cached_only=cached_only) or global_secret
                speaks_for[account.id] = bool(own) and hmac.compare_digest(own.encode(), secret.encode())
        return _Trust(accounts, speaks_for)

    def _select(self, facts: list[Fact], trust: _Trust) -> PreparedWebhook:
        accounts, speaks_for = trust.accounts, trust.speaks_for
        candidates: list[tuple[AccountInfo, RecordableFact]] = []
        tally: Tally[str] = Tally()
        for fact in facts:
            if isinstance(fact, Ignored):
                log.debug("webhook item ignored: %s", fact.reason)
                tally["ignored"] += 1
                self._metrics.webhook_facts.labels("ignored", "ignored").inc()
                continue
            account = accounts[(fact.channel, fact.channel_account)]
            if account is None:
                kind = _kind(fact)
                log.warning(
                    "webhook %s for unknown %s account %r: acknowledged, not recorded",
                    kind, fact.channel.value, fact.channel_account,
                )
                tally["unknown_accounts"] += 1
                self._metrics.webhook_unknown_accounts.labels(fact.channel.value).inc()
                self._metrics.webhook_facts.labels(kind, "unknown_account").inc()
                continue
            if not speaks_for[account.id]:
                kind = _kind(fact)
                log.warning(
                    "webhook %s for %s account %r was signed by another app: acknowledged, not recorded",
                    kind, fact.channel.value, fact.channel_account,
                )
                tally["other_app"] += 1
                self._metrics.webhook_facts.labels(kind, "other_app").inc()
                continue
            candidates.append((account, fact))
        group, refused = check_each(candidates)
        for _, fact, error in refused:
            self._refused(fact, str(error), tally)
        return PreparedWebhook(facts, group, tally)

    def _refused(self, fact: Fact, reason: str, tally: Tally[str]) -> None:
        log.warning(
            "webhook %s %.80r refused, the POST's other facts are recorded: %s",
            _kind(fact), getattr(fact, "channel_message_id", None), reason,
        )
        tally["refused"] += 1
        self._metrics.webhook_facts.labels(_kind(fact), "refused").inc()

    def finish(self, prepared: PreparedWebhook, results: list[FactResult]) -> WebhookOutcome:
        facts, group, tally = prepared.facts, prepared.group, prepared.tally
        counted: Tally[tuple[str, str]] = Tally()  # (kind, outcome): one metric update each, not one per fact
        for (_, fact), result in zip(group.items, results, strict=True):
            if result.outcome is FactOutcome.REFUSED:
                self._refused(fact, result.reason or "refused", tally)
                continue
            # A parked echo is durably kept (inbox/usecases/echoes.py): counted as recorded.
            tally[_TALLIES.get(result.outcome, "ignored")] += 1
            counted[(_kind(fact), result.outcome.value)] += 1
            if result.outcome is FactOutcome.IGNORED:
                log.info("webhook %s not recorded: %s", _kind(fact), result.reason)
        for (kind, outcome), n in counted.items():
            self._metrics.webhook_facts.labels(kind, outcome).inc(n)
        return WebhookOutcome(
            received=len(facts), recorded=tally["recorded"], duplicates=tally["duplicates"],
            ignored=tally["ignored"], unknown_accounts=tally["unknown_accounts"], other_app=tally["other_app"],
            refused=tally["refused"], repaired=tally["repaired"],
        )


_TALLIES = {FactOutcome.RECORDED: "recorded", FactOutcome.PARKED: "recorded", FactOutcome.DUPLICATE: "duplicates"}
