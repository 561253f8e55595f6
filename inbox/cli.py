"""The `inbox` command: `dev` runs everything locally; `api`, `relay`, `worker` are the production processes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING

from inbox.config import ConfigError, Settings

if TYPE_CHECKING:
    from inbox.embedded import EmbeddedBroker

log = logging.getLogger("inbox")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---- production processes -------------------------------------------------------------------
def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from inbox.container import Container
    from inbox.db import migrate

    settings = Settings.from_env().require(
        "database_url", "kafka_bootstrap", "jwt_secret", "meta_app_secret", "meta_verify_token"
    )
    migrate(settings)
    container = Container.build(settings)
    try:
        verbose = os.environ.get(_DEV_VERBOSE) == "1"  # `inbox dev --verbose`: uvicorn's own and access logs
        uvicorn.run(
            create_app(container), host=settings.http_host, port=settings.http_port,
            log_level="info" if verbose else "warning", access_log=verbose,
        )
    finally:
        container.close()
    return 0


def _run_until_signalled(main: object) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)  # type: ignore[operator]

    asyncio.run(runner())


def cmd_relay(args: argparse.Namespace) -> int:
    from inbox.db import migrate
    from streams.relay import Relay

    settings = Settings.from_env().require("database_url", "kafka_bootstrap")
    migrate(settings)
    _run_until_signalled(Relay(settings).run)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from inbox.db import migrate
    from streams.projector import run_worker

    settings = Settings.from_env().require("database_url", "kafka_bootstrap")
    migrate(settings)
    run_worker(settings, loglevel=os.environ.get("INBOX_LOG_LEVEL", "INFO").lower())
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from inbox.db import migrate

    migrate(Settings.from_env().require("database_url"))
    print("schema is up to date")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from inbox.auth import mint_token

    settings = Settings.from_env()
    if not settings.jwt_secret:
        settings = settings.with_dev_defaults()
        print("INBOX_JWT_SECRET is not set: signing with the development secret", file=sys.stderr)
    print(mint_token(settings.jwt_secret or "", org=args.org, user=args.user, role=args.role, name=args.name,
                     ttl_s=args.ttl))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from inbox.db import migrate
    from inbox.replay import replay

    settings = Settings.from_env()
    with _embedded_database(settings) as settings:
        settings = settings.require("database_url")
        migrate(settings)
        stats = asyncio.run(replay(settings, progress=_progress_bar))
        print(
            f"\nreplayed {stats.events:,} events into {stats.rooms:,} rooms in {stats.seconds:.1f}s"
            f" ({stats.events_per_s:,.0f} events/s)"
        )
    return 0


def _progress_bar(done: int, total: int, rate: float) -> None:
    width = 30
    frac = min(1.0, done / total) if total else 1.0
    bar = "#" * int(frac * width)
    sys.stderr.write(f"\r[{bar:<{width}}] {frac:6.1%} {done:,}/{total:,} notifications  {rate:,.0f} events/s")
    sys.stderr.flush()


# ---- dev: everything on embedded defaults ---------------------------------------------------
class _embedded_database:
    """Use INBOX_DATABASE_URL when set, else start embedded PostgreSQL in INBOX_DATA_DIR/pg."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pg = None

    def __enter__(self) -> Settings:
        if self.settings.database_url:
            return self.settings
        from inbox.embedded import EmbeddedPostgres

        print(f"starting embedded PostgreSQL in {self.settings.data_dir / 'pg'} ...", file=sys.stderr)
        self.pg = EmbeddedPostgres(self.settings.data_dir / "pg").start()
        return replace(self.settings, database_url=self.pg.url)

    def __exit__(self, *exc: object) -> None:
        if self.pg is not None:
            self.pg.stop()


_DEV_VERBOSE = "INBOX_DEV_VERBOSE"


def _quiet_dev_logs() -> dict[str, str]:
    """`inbox dev` without --verbose: warnings and errors only, from every process; returns the
    children's environment for it. An INBOX_LOG_LEVEL the user set still wins."""
    if "INBOX_LOG_LEVEL" in os.environ:
        return {}
    logging.getLogger().setLevel(logging.WARNING)  # embedded PostgreSQL narrates every step at INFO
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")  # platformdirs, harmless here
    return {"INBOX_LOG_LEVEL": "WARNING"}


def cmd_dev(args: argparse.Namespace) -> int:
    from inbox.auth import mint_token
    from inbox.db import migrate
    from inbox.embedded import EmbeddedBroker

    log_env = {_DEV_VERBOSE: "1"} if args.verbose else _quiet_dev_logs()
    settings = Settings.from_env().with_dev_defaults()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    broker = None
    children: list[subprocess.Popen[bytes]] = []
    with _embedded_database(settings) as settings:
        try:
            if not settings.kafka_bootstrap:
                broker = EmbeddedBroker(log_path=settings.data_dir / "broker.log").start()
                settings = replace(settings, kafka_bootstrap=broker.bootstrap)
                print(f"started embedded Tansu broker on {broker.bootstrap}", file=sys.stderr)
            migrate(settings)
            env = {**os.environ, **settings.to_env(), **log_env}
            for role in ("relay", "worker", "api"):
                children.append(subprocess.Popen([sys.executable, "-m", "inbox.cli", role], env=env))
                print(f"started {role} (pid {children[-1].pid})", file=sys.stderr)
            token = mint_token(settings.jwt_secret or "", org="dev-org", user="dev-admin", role="admin")
            print(
                f"\nInbox is starting on http://{settings.http_host}:{settings.http_port}"
                f"  (OpenAPI: http://{settings.http_host}:{settings.http_port}/docs)\n"
                f"dev admin token (org dev-org):\n{token}\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )
            _supervise(children, broker)
        except KeyboardInterrupt:
            pass
        finally:
            _stop_all(children)
            if broker is not None:
                broker.stop()
    return 0


def _supervise(children: list[subprocess.Popen[bytes]], broker: EmbeddedBroker | None) -> None:
    """Run until Ctrl-C/SIGTERM, or until a process (or the embedded broker) dies."""
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    while not stop:
        for child in children:
            if child.poll() is not None:
                log.error("process %s exited with %s; stopping", child.args, child.returncode)
                return
        if broker is not None and not broker.alive():
            log.error("the embedded broker exited; stopping")
            return
        time.sleep(0.2)


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run the whole system on embedded defaults")
    dev.add_argument("--verbose", action="store_true",
                     help="every process's full log (Faust's start-up tables, HTTP access log); default: warnings and errors")
    dev.set_defaults(func=cmd_dev)
    sub.add_parser("api", help="run the HTTP API (production)").set_defaults(func=cmd_api)
    sub.add_parser("relay", help="publish the event store to Kafka (production)").set_defaults(func=cmd_relay)
    sub.add_parser("worker", help="run a Faust projection worker (production)").set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="create or update the database schema").set_defaults(func=cmd_migrate)
    sub.add_parser("replay", help="rebuild every projection from the event store").set_defaults(func=cmd_replay)
    token = sub.add_parser("token", help="print a signed bearer token")
    token.add_argument("--org", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--role", required=True, choices=["admin", "supervisor", "agent", "integration"])
    token.add_argument("--name")
    token.add_argument("--ttl", type=int, default=7 * 24 * 3600, help="seconds until the token expires")
    token.set_defaults(func=cmd_token)
    args = parser.parse_args(argv)
    _setup_logging(os.environ.get("INBOX_LOG_LEVEL", "INFO"))
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"inbox {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
