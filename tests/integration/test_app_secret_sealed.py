"""An account's app secret is sealed like its access token, never in an event, and rotatable.

Accounts registered before that kept it in plaintext in their Registered event: the upcast drops
it from the aggregate, and `inbox migrate` moves it into the sealed store once and rewrites the
stored event without it. Real PostgreSQL; the API in process (TestClient).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent
from fastapi.testclient import TestClient

from channels.meta.signature import signature
from domain.channel_account import ChannelAccount
from inbox.adapters.eventstore import InboxApplication
from inbox.adapters.outbound.credentials import REGISTERED_TOPIC, seal_plaintext_app_secrets
from inbox.adapters.schema import migrate
from inbox.adapters.secrets import SecretKeyError
from inbox.bootstrap import Container
from inbox.config import DEV_META_APP_SECRET, Settings
from inbox.entrypoints.api.app import create_api
from tests.support import auth, query

pytestmark = pytest.mark.integration

FIXTURE = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "meta" / "wa_text.json").read_text())
WA = "106540352242922"  # phone_number_id of the fixture
OLD_SECRET = "tenant-plaintext-secret-of-2024"


def wa_post(message_id: str) -> bytes:
    body = json.loads(json.dumps(FIXTURE))
    [msg] = body["entry"][0]["changes"][0]["value"]["messages"]
    msg.update(id=message_id, timestamp=str(int(datetime.now(UTC).timestamp())))
    return json.dumps(body).encode()


def post(client: TestClient, body: bytes, secret: str) -> Any:
    return client.post("/webhooks/meta", content=body, headers={
        "content-type": "application/json", "X-Hub-Signature-256": signature(secret, body)})


def store_old_registration(settings: Settings, org_id: str = "org1") -> UUID:
    """A Registered event as it was stored before app secrets were sealed (v1, plaintext secret)."""
    app = InboxApplication.from_settings(settings)
    try:
        account_id = ChannelAccount.create_id("whatsapp_cloud", WA)
        state = {
            "originator_id": account_id, "originator_version": 1, "timestamp": datetime.now(UTC),
            "originator_topic": "domain.channel_account:ChannelAccount", "org_id": org_id,
            "channel": "whatsapp_cloud", "external_id": WA, "name": "Old WA", "app_secret": OLD_SECRET,
        }
        app.recorder.insert_events([StoredEvent(
            originator_id=account_id, originator_version=1, topic=REGISTERED_TOPIC,
            state=app.mapper.transcoder.encode(state),
        )])
        return account_id
    finally:
        app.close()


def plaintext_in_store(settings: Settings) -> bool:
    rows = query(settings, "SELECT convert_from(state, 'UTF8') FROM inbox_events")
    rows += query(settings, "SELECT coalesce(app_secret_sealed, '') FROM channel_account_credentials")
    return any(OLD_SECRET in row[0] for row in rows)


def test_an_old_plaintext_app_secret_is_moved_into_the_sealed_store_by_migrate_and_still_verifies(
    db_settings: Settings
) -> None:
    account_id = store_old_registration(db_settings)
    app = InboxApplication.from_settings(db_settings)
    try:  # before the migration: the upcast already keeps it out of the aggregate
        assert not hasattr(app.repository.get(account_id), "app_secret")
    finally:
        app.close()
    assert plaintext_in_store(db_settings)

    migrate(db_settings)
    migrate(db_settings)  # once: a second run finds nothing to move

    assert not plaintext_in_store(db_settings)
    [(sealed,)] = query(db_settings, "SELECT app_secret_sealed FROM channel_account_credentials WHERE account_id = %s",
                        (account_id,))
    assert sealed.startswith("v1.")
    [(state,)] = query(db_settings, "SELECT convert_from(state, 'UTF8') FROM inbox_events WHERE originator_id = %s",
                       (account_id,))
    assert "app_secret" not in state and json.loads(state)["name"] == "Old WA"

    container = Container.build(db_settings)
    try:
        with TestClient(create_api(container)) as client:
            body = wa_post("wamid.after-migrate")
            own = post(client, body, OLD_SECRET)
            assert own.status_code == 200 and own.json()["recorded"] == 1, own.text
            assert post(client, wa_post("wamid.global"), DEV_META_APP_SECRET).json()["other_app"] == 1
            listed = client.get("/v1/channel-accounts", headers=auth(db_settings, role="admin")).json()
            assert [(a["external_id"], a["has_app_secret"]) for a in listed] == [(WA, True)]
            assert OLD_SECRET not in json.dumps(listed)
    finally:
        container.close()


def test_migrate_refuses_to_leave_plaintext_secrets_when_no_key_is_configured(db_settings: Settings) -> None:
    store_old_registration(db_settings)
    app = InboxApplication.from_settings(db_settings)
    try:
        with pytest.raises(SecretKeyError, match="INBOX_SECRET_KEY is not set"):
            seal_plaintext_app_secrets(app, None)
    finally:
        app.close()
    assert plaintext_in_store(db_settings)  # nothing half done


def test_a_registered_app_secret_is_sealed_listed_and_rotated_old_signatures_refused(
    client: TestClient, db_settings: Settings
) -> None:
    admin = auth(db_settings, role="admin")
    r = client.post("/v1/channel-accounts", headers=admin, json={
        "channel": "whatsapp_cloud", "external_id": WA, "name": "WA", "app_secret": "tenant-first-secret"})
    assert r.status_code == 201 and r.json()["has_app_secret"] is True, r.text
    stored = query(db_settings, "SELECT convert_from(state, 'UTF8') FROM inbox_events")
    assert all("tenant-first-secret" not in row[0] for row in stored)
    [(sealed,)] = query(db_settings, "SELECT app_secret_sealed FROM channel_account_credentials")
    assert "tenant-first-secret" not in sealed
    assert post(client, wa_post("wamid.1"), "tenant-first-secret").json()["recorded"] == 1

    rotated = client.patch(f"/v1/channel-accounts/{r.json()['id']}", headers=admin,
                           json={"app_secret": "tenant-second-secret"})
    assert rotated.status_code == 200 and rotated.json()["has_app_secret"] is True, rotated.text
    assert "tenant-second-secret" not in rotated.text

    assert post(client, wa_post("wamid.2"), "tenant-first-secret").status_code == 401
    assert post(client, wa_post("wamid.3"), "tenant-second-secret").json()["recorded"] == 1
    empty = client.patch(f"/v1/channel-accounts/{r.json()['id']}", headers=admin, json={})
    assert empty.status_code == 422 and "app_secret" in empty.text
    short = client.patch(f"/v1/channel-accounts/{r.json()['id']}", headers=admin, json={"app_secret": "x"})
    assert short.status_code == 422
    agent = client.patch(f"/v1/channel-accounts/{r.json()['id']}", headers=auth(db_settings, role="agent"),
                         json={"app_secret": "tenant-third-secret"})
    assert agent.status_code == 403


def test_a_registration_whose_credentials_cannot_be_written_records_no_account(db_settings: Settings) -> None:
    """A real fault between the two writes: the credentials table is locked longer than the write
    may wait (statement timeout). The secrets are written first, so nothing is registered; once
    the lock is gone the retry registers the account with its secret."""
    import psycopg

    from domain.channels import Channel
    from domain.staff import Actor, Role
    from inbox.adapters.postgres import conninfo

    settings = replace(db_settings, read_statement_timeout_ms=300)
    container = Container.build(settings)
    admin = Actor("admin1", "org1", Role.ADMIN)
    try:
        with psycopg.connect(conninfo(settings)) as locker:
            locker.execute("LOCK TABLE channel_account_credentials IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(psycopg.errors.QueryCanceled):
                container.accounts.register(admin, channel="whatsapp_cloud", external_id=WA, name="WA",
                                            app_secret="tenant-secret")
            locker.rollback()
        assert query(settings, "SELECT count(*) FROM inbox_events WHERE topic LIKE %s",
                     ("%ChannelAccount.Registered",))[0][0] == 0
        assert container.accounts.find(Channel.WHATSAPP_CLOUD, WA) is None

        registered = container.accounts.register(admin, channel="whatsapp_cloud", external_id=WA, name="WA",
                                                 app_secret="tenant-secret")
        assert container.accounts.app_secret(registered) == "tenant-secret"
        assert [a.has_app_secret for a in container.accounts.list(admin)] == [True]
    finally:
        container.close()
