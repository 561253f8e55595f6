"""Security basics on the real PostgreSQL: account app secrets, iss/aud at the API, the whole database URL."""

from __future__ import annotations

import uuid
from dataclasses import replace

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from inbox.entrypoints.api.app import create_api
from inbox.adapters.auth import mint_token
from inbox.config import Settings
from inbox.bootstrap import Container
from inbox.adapters.postgres import conninfo
from inbox.bootstrap import open_event_store
from tests.support import auth

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("secret", ["", "   ", "short-secret"])
def test_an_account_with_an_empty_or_trivially_short_app_secret_is_refused(
    client: TestClient, db_settings: Settings, secret: str
) -> None:
    r = client.post("/v1/channel-accounts", headers=auth(db_settings), json={
        "channel": "whatsapp_cloud", "external_id": "pn-1", "name": "Sales", "app_secret": secret})
    assert r.status_code == 422, r.text
    assert "app_secret" in r.text and "16" in r.text


def test_an_account_with_a_real_app_secret_is_registered(client: TestClient, db_settings: Settings) -> None:
    r = client.post("/v1/channel-accounts", headers=auth(db_settings), json={
        "channel": "whatsapp_cloud", "external_id": "pn-1", "name": "Sales", "app_secret": "0123456789abcdef"})
    assert r.status_code == 201, r.text
    assert r.json()["has_app_secret"] is True


def test_the_api_checks_issuer_and_audience_when_configured(db_settings: Settings) -> None:
    settings = replace(db_settings, jwt_issuer="https://id.example", jwt_audience="inbox")
    container = Container.build(settings)
    secret = settings.jwt_secret or ""
    try:
        with TestClient(create_api(container)) as c:
            def status(token: str) -> int:
                return c.get("/v1/inbox/counters", headers={"Authorization": f"Bearer {token}"}).status_code

            assert status(mint_token(secret, org="o", user="u", role="admin")) == 401
            assert status(mint_token(secret, org="o", user="u", role="admin", issuer="https://id.example",
                                     audience="other")) == 401
            assert status(mint_token(secret, org="o", user="u", role="admin", issuer="https://id.example",
                                     audience="inbox")) == 200
    finally:
        container.close()


def test_the_event_store_honours_every_parameter_of_the_database_url(db_settings: Settings) -> None:
    name = f"inbox-es-{uuid.uuid4().hex[:8]}"
    params = conninfo_to_dict(db_settings.database_url or "")
    url = make_conninfo(**{**params, "application_name": name, "sslmode": "disable",
                           "options": "-c work_mem=7777kB"})
    app = open_event_store(replace(db_settings, database_url=url))
    try:
        with app.connection() as conn:
            row = conn.execute("SELECT current_setting('application_name') AS a, current_setting('work_mem') AS w,"
                               " ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == {"a": name, "w": "7777kB", "ssl": False}
    finally:
        app.close()


def test_read_connections_keep_the_urls_own_options(db_settings: Settings) -> None:
    params = conninfo_to_dict(db_settings.database_url or "")
    settings = replace(db_settings, database_url=make_conninfo(**params, options="-c work_mem=7777kB"))
    with psycopg.connect(conninfo(settings)) as conn:
        assert conn.execute("SELECT current_setting('work_mem'), current_setting('search_path')").fetchone() == (
            "7777kB", settings.db_schema)
