"""Settings, read once from the environment (and an optional `.env` file) by the composition root."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEV_JWT_SECRET = "inbox-development-only-jwt-secret-not-for-production"
DEV_META_APP_SECRET = "inbox-dev-meta-app-secret"
DEV_META_VERIFY_TOKEN = "inbox-dev-verify-token"
# Production processes refuse shorter secrets: HS256 keys below 32 bytes can be brute-forced
# offline from one token; a Meta app secret is 32 hex characters, so anything under 16 is a typo
# or a placeholder.
MIN_JWT_SECRET_BYTES = 32
MIN_APP_SECRET_CHARS = 16


class ConfigError(RuntimeError):
    """Configuration is missing or invalid; the process must not start."""


def _load_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    db_schema: str = "public"
    kafka_bootstrap: str | None = None
    topic_prefix: str = ""
    topic_partitions: int = 4
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Bind the API's port with SO_REUSEPORT: several `inbox api` processes on one port share its
    # connections (the kernel spreads new connections over them; Linux).
    http_reuse_port: bool = False
    # Seconds an idle keep-alive connection is kept open (uvicorn's default is 5). Longer than the
    # idle timeout of the proxies in front (AWS ALB and nginx: 60 s), so the proxy closes first: a
    # server that closes a connection the proxy is reusing at that moment drops the request (502),
    # and a server that stalls past a short timeout can close a connection whose next request
    # already arrived.
    http_keep_alive_s: int = 75
    jwt_secret: str | None = None
    meta_app_secret: str | None = None
    meta_verify_token: str | None = None
    data_dir: Path = field(default_factory=lambda: Path(".inbox"))
    max_body_bytes: int = 1_048_576
    db_pool_size: int = 16
    worker_batch_size: int = 500
    worker_group: str = "inbox-projections"
    # A dead worker's partitions move to the others after this long (Kafka session timeout).
    worker_session_timeout_s: float = 10.0
    # Optional JWT checks: when set, tokens must carry this `iss` / `aud` (and `inbox token` adds them).
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Ingest under stalls: an inbound request answers 503 + Retry-After after this long, and at
    # once while this many facts already wait for the group commit.
    inbound_timeout_s: float = 10.0
    inbound_queue_max: int = 5000
    # Bounded reads: every query of the read pool is cancelled after this long (503).
    read_statement_timeout_ms: int = 5000
    # /readyz: the relay or the projections are "stuck" when behind and not moving for this long.
    stall_after_s: float = 30.0
    # Live stream (GET /v1/stream): change-log retention (older Last-Event-IDs get `reset`),
    # heartbeat interval, and how many pages of changes may wait for one slow client before it
    # gets `reset` and is disconnected.
    stream_retention_s: float = 86400.0
    stream_heartbeat_s: float = 15.0
    stream_buffer: int = 256
    # Outbound delivery (issue 9): Meta's Graph API, and the key sealing channel-account tokens at rest.
    meta_graph_url: str = "https://graph.facebook.com"
    meta_graph_version: str = "v21.0"
    secret_key: str | None = None

    @property
    def events_topic(self) -> str:
        return f"{self.topic_prefix}inbox.events"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(_load_dotenv(Path(".env")))
        env.update(os.environ if environ is None else environ)

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        def get_int(name: str, default: int) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                return int(raw)
            except ValueError as e:
                raise ConfigError(f"{name} must be an integer, got {raw!r}") from e

        def get_float(name: str, default: float) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                return float(raw)
            except ValueError as e:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from e

        keep_alive = get_int("INBOX_HTTP_KEEP_ALIVE_S", 75)
        if keep_alive < 1:
            raise ConfigError(f"INBOX_HTTP_KEEP_ALIVE_S must be at least 1 (seconds), got {keep_alive}")
        return cls(
            database_url=get("INBOX_DATABASE_URL"),
            db_schema=get("INBOX_DB_SCHEMA") or "public",
            kafka_bootstrap=get("INBOX_KAFKA_BOOTSTRAP"),
            topic_prefix=get("INBOX_TOPIC_PREFIX") or "",
            topic_partitions=get_int("INBOX_TOPIC_PARTITIONS", 4),
            http_host=get("INBOX_HTTP_HOST") or "127.0.0.1",
            http_port=get_int("INBOX_HTTP_PORT", 8000),
            http_reuse_port=(get("INBOX_HTTP_REUSE_PORT") or "0").lower() in ("1", "true", "yes", "y"),
            http_keep_alive_s=keep_alive,
            jwt_secret=get("INBOX_JWT_SECRET"),
            meta_app_secret=get("INBOX_META_APP_SECRET"),
            meta_verify_token=get("INBOX_META_VERIFY_TOKEN"),
            data_dir=Path(get("INBOX_DATA_DIR") or ".inbox"),
            max_body_bytes=get_int("INBOX_MAX_BODY_BYTES", 1_048_576),
            db_pool_size=get_int("INBOX_DB_POOL_SIZE", 16),
            worker_batch_size=get_int("INBOX_WORKER_BATCH_SIZE", 500),
            worker_group=get("INBOX_WORKER_GROUP") or "inbox-projections",
            worker_session_timeout_s=float(get_int("INBOX_WORKER_SESSION_TIMEOUT_S", 10)),
            jwt_issuer=get("INBOX_JWT_ISSUER"),
            jwt_audience=get("INBOX_JWT_AUDIENCE"),
            inbound_timeout_s=get_float("INBOX_INBOUND_TIMEOUT_S", 10.0),
            inbound_queue_max=get_int("INBOX_INBOUND_QUEUE_MAX", 5000),
            read_statement_timeout_ms=get_int("INBOX_READ_STATEMENT_TIMEOUT_MS", 5000),
            stall_after_s=float(get_int("INBOX_STALL_AFTER_S", 30)),
            stream_retention_s=get_float("INBOX_STREAM_RETENTION_S", 86400.0),
            stream_heartbeat_s=get_float("INBOX_STREAM_HEARTBEAT_S", 15.0),
            stream_buffer=get_int("INBOX_STREAM_BUFFER", 256),
            meta_graph_url=get("INBOX_META_GRAPH_URL") or "https://graph.facebook.com",
            meta_graph_version=get("INBOX_META_GRAPH_VERSION") or "v21.0",
            secret_key=get("INBOX_SECRET_KEY"),
        )

    def to_env(self) -> dict[str, str]:
        """The INBOX_* variables that make `from_env` in a child process return these settings."""
        values = {
            "INBOX_DATABASE_URL": self.database_url,
            "INBOX_DB_SCHEMA": self.db_schema,
            "INBOX_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "INBOX_TOPIC_PREFIX": self.topic_prefix,
            "INBOX_TOPIC_PARTITIONS": str(self.topic_partitions),
            "INBOX_HTTP_HOST": self.http_host,
            "INBOX_HTTP_PORT": str(self.http_port),
            "INBOX_HTTP_REUSE_PORT": "1" if self.http_reuse_port else "0",
            "INBOX_HTTP_KEEP_ALIVE_S": str(self.http_keep_alive_s),
            "INBOX_JWT_SECRET": self.jwt_secret,
            "INBOX_META_APP_SECRET": self.meta_app_secret,
            "INBOX_META_VERIFY_TOKEN": self.meta_verify_token,
            "INBOX_DATA_DIR": str(self.data_dir),
            "INBOX_MAX_BODY_BYTES": str(self.max_body_bytes),
            "INBOX_DB_POOL_SIZE": str(self.db_pool_size),
            "INBOX_WORKER_BATCH_SIZE": str(self.worker_batch_size),
            "INBOX_WORKER_GROUP": self.worker_group,
            "INBOX_WORKER_SESSION_TIMEOUT_S": str(int(self.worker_session_timeout_s)),
            "INBOX_JWT_ISSUER": self.jwt_issuer,
            "INBOX_JWT_AUDIENCE": self.jwt_audience,
            "INBOX_INBOUND_TIMEOUT_S": str(self.inbound_timeout_s),
            "INBOX_INBOUND_QUEUE_MAX": str(self.inbound_queue_max),
            "INBOX_READ_STATEMENT_TIMEOUT_MS": str(self.read_statement_timeout_ms),
            "INBOX_STALL_AFTER_S": str(int(self.stall_after_s)),
            "INBOX_STREAM_RETENTION_S": str(self.stream_retention_s),
            "INBOX_STREAM_HEARTBEAT_S": str(self.stream_heartbeat_s),
            "INBOX_STREAM_BUFFER": str(self.stream_buffer),
            "INBOX_META_GRAPH_URL": self.meta_graph_url,
            "INBOX_META_GRAPH_VERSION": self.meta_graph_version,
            "INBOX_SECRET_KEY": self.secret_key,
        }
        return {k: v or "" for k, v in values.items()}

    def with_dev_defaults(self) -> Settings:
        """Fill unset secrets with well-known development values (only `inbox dev` calls this)."""
        return replace(
            self,
            jwt_secret=self.jwt_secret or DEV_JWT_SECRET,
            meta_app_secret=self.meta_app_secret or DEV_META_APP_SECRET,
            meta_verify_token=self.meta_verify_token or DEV_META_VERIFY_TOKEN,
        )

    def require(self, *names: str) -> Settings:
        """Refuse to run a production process without the settings it needs."""
        env_names = {
            "database_url": "INBOX_DATABASE_URL",
            "kafka_bootstrap": "INBOX_KAFKA_BOOTSTRAP",
            "jwt_secret": "INBOX_JWT_SECRET",
            "meta_app_secret": "INBOX_META_APP_SECRET",
            "meta_verify_token": "INBOX_META_VERIFY_TOKEN",
        }
        missing = [env_names[n] for n in names if not getattr(self, n)]
        if missing:
            raise ConfigError(
                "missing required configuration: " + ", ".join(missing)
                + " (only `inbox dev` fills in development defaults)"
            )
        return self

    def check_secrets(self) -> Settings:
        """Refuse secrets too short to protect anything (production processes; `inbox dev` has long ones)."""
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ConfigError(f"INBOX_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long")
        if self.meta_app_secret is not None and len(self.meta_app_secret) < MIN_APP_SECRET_CHARS:
            raise ConfigError(f"INBOX_META_APP_SECRET must be at least {MIN_APP_SECRET_CHARS} characters long")
        return self
