"""Use case: a signed Meta webhook in, its facts recorded (all or none), a fast answer out.

Signature rule (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`): Meta signs
each POST with the secret of the app that sends it. We accept a POST whose signature matches
either the global `INBOX_META_APP_SECRET` or the own `app_secret` of a channel account the
payload mentions (constant-time comparisons); anything else is refused (401), nothing recorded.
Then, per fact: an account with its own `app_secret` only takes facts from POSTs signed with that
secret, and an account without one only from POSTs signed with the global secret; facts for an
account the signing app does not speak for are acknowledged and dropped (logged, counted as
`other_app`), so one tenant's app can never write into another tenant's account.

The global secret is tried first on the raw bytes, so the common case verifies before any JSON
is parsed; only when it does not match is the body parsed to find accounts with their own secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections import Counter as Tally
from dataclasses import dataclass
from datetime import datetime

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
from channels.meta import WebhookShapeError, parse_webhook
from domain.channels import Channel
from domain.errors import InvalidCommand
from inbox.config import Settings
from inbox.metrics import Metrics
from inbox.services import AccountInfo, ChannelAccounts, FactResult, InboundCommitter

log = logging.getLogger(__name__)

SIGNATURE_PREFIX = "sha256="


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

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class PreparedWebhook:
    """A verified, parsed POST: the facts it may record (`group`) and what was set aside (`tally`)."""

    facts: list[Fact]
    group: list[tuple[AccountInfo, RecordableFact]]
    tally: Tally[str]


def signature(secret: str, body: bytes) -> str:
    """The header value Meta would send for `body` signed with `secret`."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _kind(fact: Fact) -> str:
    return {
        InboundMessage: "message", OutboundEcho: "echo", MessageEdit: "edit", MessageRemoval: "removal",
        DeliveryStatus: "status", Ignored: "ignored",
    }[type(fact)]


class MetaWebhooks:
    def __init__(
        self, settings: Settings, accounts: ChannelAccounts, inbound: InboundCommitter, metrics: Metrics
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
    def receive(self, body: bytes, header: str | None, *, received_at: datetime) -> WebhookOutcome:
        """Verify, parse and record a POST; returns after the commit (blocking)."""
        prepared = self.prepare(body, header, received_at=received_at)
        try:
            results = self._inbound.submit_group(prepared.group)
        except InvalidCommand as e:
            raise self._rejected_payload(str(e)) from None
        return self.finish(prepared, results)

    async def receive_async(self, body: bytes, header: str | None, *, received_at: datetime) -> WebhookOutcome:
        """`receive` for an event loop: the CPU part runs in a thread, the commit is awaited."""
        prepared = await anyio.to_thread.run_sync(lambda: self.prepare(body, header, received_at=received_at))
        try:
            results = await self._inbound.submit_group_async(prepared.group, self._settings.inbound_timeout_s)
        except InvalidCommand as e:
            raise self._rejected_payload(str(e)) from None
        return self.finish(prepared, results)

    def prepare(self, body: bytes, header: str | None, *, received_at: datetime) -> PreparedWebhook:
        """Verify the signature, parse, and pick the facts this POST may record (no writes)."""
        try:
            secret, facts = self._verify(body, header, received_at)
        except BadSignature:
            self._metrics.webhook_rejected.labels("signature").inc()
            raise
        try:
            if facts is None:
                facts = self._parse(body, received_at)
        except BadPayload:
            self._metrics.webhook_rejected.labels("payload").inc()
            raise
        return self._select(facts, secret)

    def _rejected_payload(self, reason: str) -> BadPayload:
        self._metrics.webhook_rejected.labels("payload").inc()
        return BadPayload(reason)

    def _verify(self, body: bytes, header: str | None, received_at: datetime) -> tuple[str, list[Fact] | None]:
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
        for account in self._accounts_of(facts).values():
            if account is not None and account.app_secret and hmac.compare_digest(
                signature(account.app_secret, body).encode(), given
            ):
                return account.app_secret, facts
        raise BadSignature("X-Hub-Signature-256 does not match the body")

    @staticmethod
    def _parse(body: bytes, received_at: datetime) -> list[Fact]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise BadPayload(f"malformed JSON: {e}") from None
        try:
            return parse_webhook(payload, received_at=received_at)
        except WebhookShapeError as e:
            raise BadPayload(f"not a Meta webhook payload: {e}") from None

    def _accounts_of(self, facts: list[Fact]) -> dict[tuple[Channel, str], AccountInfo | None]:
        found: dict[tuple[Channel, str], AccountInfo | None] = {}
        for fact in facts:
            if isinstance(fact, Ignored) or fact.channel is None:
                continue
            key = (fact.channel, fact.channel_account)
            if key not in found:
                found[key] = self._accounts.find(*key)
        return found

    def _select(self, facts: list[Fact], secret: str) -> PreparedWebhook:
        accounts = self._accounts_of(facts)
        global_secret = self._settings.meta_app_secret
        group: list[tuple[AccountInfo, RecordableFact]] = []
        tally: Tally[str] = Tally()
        for fact in facts:
            kind = _kind(fact)
            if isinstance(fact, Ignored):
                log.debug("webhook item ignored: %s", fact.reason)
                tally["ignored"] += 1
                self._metrics.webhook_facts.labels(kind, "ignored").inc()
                continue
            account = accounts[(fact.channel, fact.channel_account)]
            if account is None:
                log.warning(
                    "webhook %s for unknown %s account %r: acknowledged, not recorded",
                    kind, fact.channel.value, fact.channel_account,
                )
                tally["unknown_accounts"] += 1
                self._metrics.webhook_unknown_accounts.labels(fact.channel.value).inc()
                self._metrics.webhook_facts.labels(kind, "unknown_account").inc()
                continue
            allowed = account.app_secret or global_secret
            if not allowed or not hmac.compare_digest(allowed.encode(), secret.encode()):
                log.warning(
                    "webhook %s for %s account %r was signed by another app: acknowledged, not recorded",
                    kind, fact.channel.value, fact.channel_account,
                )
                tally["other_app"] += 1
                self._metrics.webhook_facts.labels(kind, "other_app").inc()
                continue
            group.append((account, fact))
        return PreparedWebhook(facts, group, tally)

    def finish(self, prepared: PreparedWebhook, results: list[FactResult]) -> WebhookOutcome:
        facts, group, tally = prepared.facts, prepared.group, prepared.tally
        for (_, fact), result in zip(group, results, strict=True):
            tally[{"recorded": "recorded", "duplicate": "duplicates"}.get(result.outcome, "ignored")] += 1
            self._metrics.webhook_facts.labels(_kind(fact), result.outcome).inc()
            if result.outcome == "ignored":
                log.info("webhook %s not recorded: %s", _kind(fact), result.reason)
        return WebhookOutcome(
            received=len(facts), recorded=tally["recorded"], duplicates=tally["duplicates"],
            ignored=tally["ignored"], unknown_accounts=tally["unknown_accounts"], other_app=tally["other_app"],
        )
