"""Settings travel to child processes (`inbox dev`, tests, bench) through the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from inbox.config import ConfigError, Settings


def test_settings_survive_the_trip_through_a_child_process_environment() -> None:
    settings = Settings(
        database_url="postgresql://u@db:5432/inbox", db_schema="tenant_a", kafka_bootstrap="k1:9092,k2:9092",
        topic_prefix="staging.", topic_partitions=12, http_host="0.0.0.0", http_port=8080, http_keep_alive_s=120,
        jwt_secret="j" * 40,
        meta_app_secret="m", meta_verify_token="v", data_dir=Path("/var/lib/inbox"), max_body_bytes=2048,
        db_pool_size=3, worker_batch_size=100, worker_group="g", worker_session_timeout_s=30.0,
    )
    assert Settings.from_env(settings.to_env()) == settings


def test_production_processes_refuse_to_start_without_their_secrets() -> None:
    with pytest.raises(ConfigError, match="INBOX_JWT_SECRET"):
        Settings(database_url="postgresql://x", kafka_bootstrap="k:9092").require("database_url", "jwt_secret")


def test_a_malformed_number_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="INBOX_HTTP_PORT"):
        Settings.from_env({"INBOX_HTTP_PORT": "eighty"})


@pytest.mark.parametrize("seconds", ["0", "-5"])
def test_a_keep_alive_under_a_second_is_a_configuration_error(seconds: str) -> None:
    with pytest.raises(ConfigError, match="INBOX_HTTP_KEEP_ALIVE_S"):
        Settings.from_env({"INBOX_HTTP_KEEP_ALIVE_S": seconds})
