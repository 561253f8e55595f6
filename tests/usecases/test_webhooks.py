"""The Meta webhook use case: signature, selection of the facts a POST may record, refusals."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from domain import limits
from inbox.adapters.memory_store import MemoryEventStore
from inbox.adapters.metrics import Metrics
from inbox.config import Settings
from inbox.usecases.channel_accounts import AccountInfo, ChannelAccounts
from inbox.usecases.ingest import InboundCommitter
from inbox.usecases.meta_webhooks import INLINE_BODY_BYTES, BadSignature, MetaWebhooks, WebhookOutcome, signature

SECRET = "app-secret"
FIXTURE = json.loads((Path(__file__).parent.parent / "fixtures" / "meta" / "wa_text.json").read_text())


@pytest.fixture
def webhooks(accounts: ChannelAccounts, committer: InboundCommitter, account: AccountInfo) -> MetaWebhooks:
    return MetaWebhooks(Settings(meta_app_secret=SECRET, meta_verify_token="verify"), accounts, committer, Metrics())


def payload(*message_ids: str) -> bytes:
    body = copy.deepcopy(FIXTURE)
    value = body["entry"][0]["changes"][0]["value"]
    [template] = value["messages"]
    value["messages"] = [
        {**template, "id": mid, "timestamp": str(int(datetime.now(UTC).timestamp()))} for mid in message_ids
    ]
    return json.dumps(body).encode()


def receive(webhooks: MetaWebhooks, body: bytes, header: str | None) -> WebhookOutcome:
    return asyncio.run(webhooks.receive_async(body, header, received_at=datetime.now(UTC)))


def test_a_post_signed_with_the_app_secret_is_recorded(webhooks: MetaWebhooks) -> None:
    body = payload("wamid.1", "wamid.2")

    outcome = receive(webhooks, body, signature(SECRET, body))

    assert (outcome.received, outcome.recorded, outcome.refused) == (2, 2, 0)


def test_a_redelivered_post_records_nothing_new(webhooks: MetaWebhooks) -> None:
    body = payload("wamid.1")
    receive(webhooks, body, signature(SECRET, body))

    again = receive(webhooks, body, signature(SECRET, body))

    assert (again.recorded, again.duplicates) == (0, 1)


@pytest.mark.parametrize("header", [None, "sha1=abc", signature("another-secret", b"x")])
def test_a_post_without_a_valid_signature_is_refused_and_records_nothing(
    webhooks: MetaWebhooks, committer: InboundCommitter, header: Any
) -> None:
    body = payload("wamid.1")

    with pytest.raises(BadSignature):
        receive(webhooks, body, header)

    assert receive(webhooks, body, signature(SECRET, body)).recorded == 1


def test_a_signature_over_other_bytes_is_refused(webhooks: MetaWebhooks) -> None:
    with pytest.raises(BadSignature):
        receive(webhooks, payload("wamid.1"), signature(SECRET, payload("wamid.2")))


def test_a_refused_fact_does_not_sink_the_other_facts_of_its_post(webhooks: MetaWebhooks) -> None:
    body = payload("wamid.ok1", "wamid." + "x" * (limits.MAX_MESSAGE_ID + 1), "wamid.ok2")

    outcome = receive(webhooks, body, signature(SECRET, body))

    assert (outcome.recorded, outcome.refused) == (2, 1)


def test_the_subscription_handshake_echoes_the_challenge_only_for_the_verify_token(webhooks: MetaWebhooks) -> None:
    assert webhooks.verify_subscription("subscribe", "verify", "c-123") == "c-123"
    assert webhooks.verify_subscription("subscribe", "wrong", "c-123") is None


# ---- an account's own app secret: read through the Credentials port, rotatable -----------------
def test_after_a_rotation_of_the_accounts_app_secret_only_posts_signed_with_the_new_one_are_recorded(
    accounts: ChannelAccounts, committer: InboundCommitter
) -> None:
    from tests.usecases.conftest import ADMIN, WA_ACCOUNT

    # The WhatsApp account of the `account` fixture is not used here: this one has its own app.
    own = accounts.register(ADMIN, channel="whatsapp_cloud", external_id=WA_ACCOUNT, name="Tenant WA",
                            app_secret="tenant-old-secret")
    webhooks = MetaWebhooks(Settings(meta_app_secret=SECRET, meta_verify_token="verify"), accounts, committer,
                            Metrics())
    first = payload("wamid.r1")
    assert receive(webhooks, first, signature("tenant-old-secret", first)).recorded == 1
    assert receive(webhooks, first, signature(SECRET, first)).other_app == 1  # the global app: not this account's

    accounts.rotate(ADMIN, own.id, app_secret="tenant-new-secret")

    second = payload("wamid.r2")
    with pytest.raises(BadSignature):
        receive(webhooks, second, signature("tenant-old-secret", second))
    assert receive(webhooks, second, signature("tenant-new-secret", second)).recorded == 1


# ---- where a POST is prepared: on the event loop when it needs no read of the store -------------
class PreparedOn:
    """Records, for each POST a MetaWebhooks prepared, whether that ran on the event loop's thread."""

    def __init__(self, webhooks: MetaWebhooks, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on_loop: list[bool] = []
        real = webhooks.prepare

        def spy(*args: Any, **kwargs: Any) -> Any:
            prepared = real(*args, **kwargs)
            self.on_loop.append(threading.current_thread() is threading.main_thread())
            return prepared

        monkeypatch.setattr(webhooks, "prepare", spy)


def test_a_small_post_is_prepared_on_the_event_loop_once_its_account_is_cached(
    store: MemoryEventStore, committer: InboundCommitter, account: AccountInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    cold = ChannelAccounts(store)  # a process that has not looked the account up yet
    webhooks = MetaWebhooks(Settings(meta_app_secret=SECRET, meta_verify_token="verify"), cold, committer, Metrics())
    prepared = PreparedOn(webhooks, monkeypatch)

    for mid in ("wamid.c1", "wamid.c2"):
        body = payload(mid)
        assert receive(webhooks, body, signature(SECRET, body)).recorded == 1

    assert prepared.on_loop == [False, True]  # the first read the account in a thread, the second did not


def test_a_large_post_is_prepared_in_a_thread(webhooks: MetaWebhooks, monkeypatch: pytest.MonkeyPatch) -> None:
    small = payload("wamid.s1")
    receive(webhooks, small, signature(SECRET, small))  # the account is cached
    prepared = PreparedOn(webhooks, monkeypatch)
    large = payload(*(f"wamid.l{i}" for i in range(40)))
    assert len(large) > INLINE_BODY_BYTES

    assert receive(webhooks, large, signature(SECRET, large)).recorded == 40

    assert prepared.on_loop == [False]


def test_a_post_prepared_again_in_a_thread_counts_its_repairs_once(
    store: MemoryEventStore, committer: InboundCommitter, account: AccountInfo
) -> None:
    metrics = Metrics()
    webhooks = MetaWebhooks(Settings(meta_app_secret=SECRET, meta_verify_token="verify"), ChannelAccounts(store),
                            committer, metrics)
    body = json.loads(payload("wamid.t1"))
    body["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = "99999999999"  # the year 5138
    raw = json.dumps(body).encode()

    outcome = receive(webhooks, raw, signature(SECRET, raw))  # the account was not cached: tried on the loop first

    assert (outcome.recorded, outcome.repaired) == (1, 1)
    assert metrics.webhook_repairs.labels("sent_at", "time_out_of_range")._value.get() == 1  # noqa: SLF001
