"""The `inbox` command: `dev` runs everything locally; `api`, `relay`, `worker` are the production processes."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING

from inbox.config import DEV_JWT_SECRET, ConfigError, Settings

if TYPE_CHECKING:
    from inbox.adapters.embedded import EmbeddedBroker
    from inbox.entrypoints.processes import Processes

log = logging.getLogger("inbox")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---- production processes -------------------------------------------------------------------
# How long a thread that holds the GIL keeps it while another waits (Python's default: 5 ms). The
# API has three busy threads (the event loop, the inbound committer, the live stream's reader) and
# the worker two (Faust's loop and its Kafka consumer thread); the I/O-bound ones give the GIL up
# at every database or socket call and then waited up to 5 ms each time to get it back from a
# busy event loop: tens of milliseconds per change-log page or batch, the live stream's freshness
# (issue 10). Forced switches only happen while a thread waits, a few microseconds each.
THREAD_SWITCH_S = 0.0005
# The cyclic garbage collector, measured in the API under the live-stream benchmark (500 msg/s,
# 200 streams): a full collection walked ~180,000 objects — ~105,000 of them the modules, routes
# and schemas built at start — every ~5 s, 85-135 ms of CPU each with the GIL held: every stream,
# POST and commit of the process stood still that long; and 25-35 young collections a second.
# `settle_heap` moves what exists once the process is built out of the collector's sight
# (gc.freeze; frozen alone, full collections still took 40-60 ms) and lets the youngest generation
# grow larger before a collection (most objects die by reference counting long before): then
# ~2 young collections a second of at most ~7 ms, and no full one in 15 s windows.
GC_THRESHOLDS = (10_000, 10, 10)


def settle_heap() -> None:
    """Freeze what the process has built so far (it lives as long as the process); see GC_THRESHOLDS."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from inbox.entrypoints.api.app import create_api
    from inbox.bootstrap import Container
    from inbox.adapters.schema import migrate

    settings = Settings.from_env().require(
        "database_url", "kafka_bootstrap", "jwt_secret", "meta_app_secret", "meta_verify_token"
    ).check_secrets()
    migrate(settings)
    sys.setswitchinterval(THREAD_SWITCH_S)
    container = Container.build(settings)
    try:
        verbose = os.environ.get(_DEV_VERBOSE) == "1"  # `inbox dev --verbose`: uvicorn's own and access logs
        api = create_api(container)
        settle_heap()

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: object) -> None:
                # uvicorn waits for open responses before the lifespan ends: end the live streams now.
                if container.stream_hub is not None:
                    container.stream_hub.end_streams_threadsafe()
                super().handle_exit(sig, frame)  # type: ignore[arg-type]

        server = Server(uvicorn.Config(
            api, host=settings.http_host, port=settings.http_port,
            log_level="info" if verbose else "warning", access_log=verbose, timeout_graceful_shutdown=10,
            timeout_keep_alive=settings.http_keep_alive_s,
        ))
        server.run(sockets=[_reuse_port_socket(settings.http_host, settings.http_port)]
                   if settings.http_reuse_port else None)
    finally:
        container.close()
    return 0


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT: other `inbox api` processes may bind the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _run_until_signalled(main: object) -> None:
    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await main(stop)  # type: ignore[operator]
        finally:
            # Shutting down: a second signal (inbox dev's SIGTERM after the terminal's SIGINT) has
            # nothing left to stop, and must not reach a closing loop ("Exception ignored ... wakeup fd").
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)

    asyncio.run(runner())


def cmd_relay(args: argparse.Namespace) -> int:
    from inbox import bootstrap
    from inbox.adapters.schema import migrate

    settings = Settings.from_env().require("database_url", "kafka_bootstrap").check_secrets()
    migrate(settings)
    with bootstrap.relay(settings) as relay:
        settle_heap()
        _run_until_signalled(relay.run)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from inbox import bootstrap
    from inbox.adapters.schema import migrate
    from inbox.adapters.kafka.projector import run_worker

    settings = Settings.from_env().require("database_url", "kafka_bootstrap").check_secrets()
    migrate(settings)
    sys.setswitchinterval(THREAD_SWITCH_S)
    run_worker(bootstrap.projection_worker(settings), loglevel=os.environ.get("INBOX_LOG_LEVEL", "INFO").lower(),
               built=settle_heap)
    return 0


def cmd_reports(args: argparse.Namespace) -> int:
    from inbox.adapters.kafka.reports import ReportsConsumer
    from inbox.adapters.schema import migrate

    settings = Settings.from_env().require("database_url", "kafka_bootstrap").check_secrets()
    migrate(settings)
    _run_until_signalled(ReportsConsumer(settings).run)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, time as dtime, timedelta
    from pathlib import Path

    from domain.staff import Actor, Role
    from inbox.adapters.postgres import sync_pool
    from inbox.adapters.read_models.report_queries import ReportQueries
    from inbox.adapters.report_plot import draw

    try:
        end = datetime.fromisoformat(args.to).date() if args.to else datetime.now(UTC).date()
        start = datetime.fromisoformat(args.from_).date() if args.from_ else end - timedelta(days=6)
        day = datetime.fromisoformat(args.day).date() if args.day else end
    except ValueError as e:
        print(f"inbox report: not an ISO-8601 date: {e}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    with _embedded_database(settings) as settings:
        pool = sync_pool(settings.require("database_url"))
        try:
            queries = ReportQueries(pool)
            viewer = Actor("inbox-report", args.org, Role.ADMIN)
            first, resolution = queries.samples(viewer, start, end)
            day_start = datetime.combine(day, dtime(), tzinfo=UTC)
            day_end = min(day_start + timedelta(days=1), max(day_start, datetime.now(UTC)))  # not the future
            backlog = queries.backlog(viewer, day_start, day_end, 900)
        finally:
            pool.close()
    draw(Path(args.plot), title=f"{args.org}: rooms started {start}..{end}; backlog on {day}",
         first_response_s=first, resolution_s=resolution, backlog=backlog)
    print(f"wrote {args.plot}: {len(first)} first responses, {len(resolution)} resolutions,"
          f" {len(backlog)} backlog samples", file=sys.stderr)
    return 0


def cmd_sender(args: argparse.Namespace) -> int:
    from inbox.adapters.schema import migrate
    from inbox.bootstrap import run_sender

    settings = Settings.from_env().require("database_url", "kafka_bootstrap").check_secrets()
    migrate(settings)
    from inbox.adapters.outbound.sender import SenderOptions

    # Backoff base for retryable Graph errors (tests shorten it; Meta's limits want seconds).
    options = SenderOptions(backoff_base_s=float(os.environ.get("INBOX_SENDER_BACKOFF_BASE_S") or 1.0),
                            reauth_poll_s=float(os.environ.get("INBOX_SENDER_REAUTH_POLL_S") or 2.0),
                            # Parked Instagram echoes (inbox/usecases/echoes.py): how often, how long.
                            echo_sweep_s=float(os.environ.get("INBOX_ECHO_SWEEP_S") or 0.5),
                            echo_hold_s=float(os.environ.get("INBOX_ECHO_HOLD_S") or 30.0))
    timeout_s = float(os.environ.get("INBOX_SENDER_GRAPH_TIMEOUT_S") or 10.0)
    _run_until_signalled(lambda stop: run_sender(settings, stop, options, graph_timeout_s=timeout_s))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from inbox.adapters.schema import migrate

    migrate(Settings.from_env().require("database_url"))
    print("schema is up to date")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from inbox.adapters.auth import mint_token

    settings = Settings.from_env()
    if not settings.jwt_secret:
        if not args.dev:
            raise ConfigError("INBOX_JWT_SECRET is not set; pass --dev to sign with the development secret"
                              " (accepted by `inbox dev` only)")
        settings = settings.with_dev_defaults()
        print("signing with the development secret (--dev)", file=sys.stderr)
    elif settings.jwt_secret == DEV_JWT_SECRET and not args.dev:
        raise ConfigError("INBOX_JWT_SECRET is the development secret; pass --dev if that is what you mean")
    print(mint_token(settings.jwt_secret or "", org=args.org, user=args.user, role=args.role, name=args.name,
                     ttl_s=args.ttl, issuer=settings.jwt_issuer, audience=settings.jwt_audience))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from inbox.adapters.export import ExportError, parse_time
    from inbox.adapters.schema import migrate
    from inbox.bootstrap import replay

    try:
        until = parse_time(args.until) if args.until else None
    except ExportError as e:
        print(f"inbox replay: {e}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    with _embedded_database(settings) as settings:
        settings = settings.require("database_url")
        migrate(settings)
        stats = asyncio.run(replay(settings, progress=_progress_bar, until=until, into=args.into))
        where = f" in schema {args.into}" if args.into else ""
        print(
            f"\nreplayed {stats.events:,} events into {stats.rooms:,} rooms{where} in {stats.seconds:.1f}s"
            f" ({stats.events_per_s:,.0f} events/s)"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from eventsourcing.persistence import ProgrammingError

    from inbox.adapters.export import ExportError, ExportFilter, export_events, parse_time, parse_types
    from inbox.bootstrap import open_event_log

    try:
        flt = ExportFilter(
            org=args.org, since=parse_time(args.since) if args.since else None,
            until=parse_time(args.until) if args.until else None,
            types=parse_types(args.types) if args.types else None,
        )
    except ExportError as e:
        print(f"inbox export: {e}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    with _embedded_database(settings) as settings:
        settings = settings.require("database_url")  # read-only: no migrate, so a read replica will do
        event_log = open_event_log(settings)
        try:
            stats = export_events(event_log, args.out, args.format, flt, progress=_progress_bar)
        except ExportError as e:
            print(f"inbox export: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # e.g. the output directory does not exist
            print(f"inbox export: cannot write {args.out}: {e}", file=sys.stderr)
            return 2
        except ProgrammingError as e:  # e.g. no event store in this schema
            print(f"inbox export: cannot read the event store in schema {settings.db_schema!r}: {e}", file=sys.stderr)
            return 2
        finally:
            event_log.close()
        print(
            f"\nexported {stats.events:,} events to {args.out} ({stats.bytes:,} bytes) in {stats.seconds:.1f}s"
            f" ({stats.events_per_s:,.0f} events/s)", file=sys.stderr,
        )
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from inbox.adapters.read_models import dead_letters
    from inbox.adapters.schema import migrate
    from inbox.bootstrap import retry_dead_letters

    settings = Settings.from_env()
    with _embedded_database(settings) as settings:
        settings = settings.require("database_url")
        migrate(settings)
        if args.action == "retry":
            if not args.all and not args.id:
                print("inbox dead-letters retry: give --id N (repeatable) or --all", file=sys.stderr)
                return 2
            result = asyncio.run(retry_dead_letters(settings, None if args.all else args.id))
            print(f"re-projected {result.rooms} room(s) from the event store: {result.resolved} resolved,"
                  f" {result.still_failing} still failing")
            return 0 if result.still_failing == 0 else 1
        rows = dead_letters.list_dead_letters(settings, include_resolved=args.resolved, limit=args.limit)
        print(f"{'id':>6}  {'room':36}  {'version':>7}  {'type':16}  {'recorded at':25}  reason")
        for d in rows:
            state = f" [resolved {d.resolved_at:%Y-%m-%d %H:%M:%S}]" if d.resolved_at else ""
            print(f"{d.id:>6}  {d.room_id or '-':36}  {d.version if d.version is not None else '-':>7}"
                  f"  {d.event_type or '-':16}  {d.recorded_at:%Y-%m-%d %H:%M:%S%z}  {_one_line(d.reason)}{state}")
        relay = dead_letters.list_relay_dead_letters(settings, limit=args.limit)
        if relay:
            print("\nnot published by the relay (projected from the event store; missing on the topic):")
            for r in relay:
                print(f"{r['id']:>6}  {r['room_id'] or '-':36}  {r['version'] or '-':>7}  {r['event_type'] or '-':16}"
                      f"  {r['recorded_at']:%Y-%m-%d %H:%M:%S%z}  {_one_line(r['reason'])}")
        return 0


def _one_line(reason: str, width: int = 160) -> str:
    line = next(iter(reason.splitlines()), "")
    return line if len(line) <= width else line[: width - 1] + "…"


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
        from inbox.adapters.embedded import EmbeddedPostgres

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
    from inbox.adapters.auth import mint_token
    from inbox.adapters.schema import migrate
    from inbox.adapters.embedded import EmbeddedBroker, free_port
    from inbox.entrypoints.processes import Processes

    log_env = {_DEV_VERBOSE: "1"} if args.verbose else _quiet_dev_logs()
    settings = Settings.from_env().with_dev_defaults()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if not settings.secret_key:  # seals channel-account tokens; kept in the data dir across runs
        from inbox.adapters.secrets import ensure_key_file

        settings = replace(settings, secret_key=ensure_key_file(settings.data_dir))
    broker = None
    children: Processes | None = None
    with _embedded_database(settings) as settings:
        try:
            if not settings.kafka_bootstrap:
                # Not on the API's port, which nothing listens on yet (seen: a free port picked for
                # INBOX_HTTP_PORT came back as the broker's, and the API then could not bind it).
                port = free_port(avoid={settings.http_port})
                broker = EmbeddedBroker(port, log_path=settings.data_dir / "broker.log").start()
                settings = replace(settings, kafka_bootstrap=broker.bootstrap)
                print(f"started embedded Tansu broker on {broker.bootstrap}", file=sys.stderr)
            migrate(settings)
            # Same session as `inbox dev`: a Ctrl-C in the terminal reaches every child; output to this terminal.
            children = Processes({**os.environ, **settings.to_env(), **log_env}, own_session=False)
            for role in ("relay", "worker", "reports", "api", "sender"):
                print(f"started {role} (pid {children.start(role).pid})", file=sys.stderr)
            token = mint_token(settings.jwt_secret or "", org="dev-org", user="dev-admin", role="admin",
                               issuer=settings.jwt_issuer, audience=settings.jwt_audience)
            signin = _dev_signin_code(settings)
            print(
                f"\nInbox is starting on http://{settings.http_host}:{settings.http_port}"
                f"  (OpenAPI: http://{settings.http_host}:{settings.http_port}/docs)\n"
                f"dev admin token (org dev-org):\n{token}\n"
                f"open the Inbox (one-time sign-in link, valid 15 min):\n"
                f"http://{settings.http_host}:{settings.http_port}/session/redeem?code={signin}\n"
                "Ctrl-C stops everything.\n",
                flush=True,
            )
            _supervise(children, broker)
        except KeyboardInterrupt:
            pass
        finally:
            if children is not None:
                children.stop_all(DEV_STOP_GRACE_S)
            if broker is not None:
                broker.stop()
    return 0


def _dev_signin_code(settings: Settings) -> str:
    """A one-time code for the dev admin's one-click sign-in link (the link carries no token)."""
    from inbox.adapters.postgres import sync_pool
    from inbox.adapters.signin_codes import SigninCodes, SigninGrant

    pool = sync_pool(settings, min_size=1, max_size=1)
    try:
        return SigninCodes(pool).create(SigninGrant(org_id="dev-org", user_id="dev-admin", role="admin", name=None))
    finally:
        pool.close()


DEV_STOP_GRACE_S = 15.0


def _supervise(children: Processes, broker: EmbeddedBroker | None) -> None:
    """Run until Ctrl-C/SIGTERM, or until a process (or the embedded broker) dies."""
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    while not stop:
        dead = children.first_dead()
        if dead is not None:
            log.error("process `inbox %s` exited with %s; stopping", dead.role, dead.returncode)
            return
        if broker is not None and not broker.alive():
            log.error("the embedded broker exited; stopping")
            return
        time.sleep(0.2)


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
    sub.add_parser("sender", help="deliver staff replies to Meta's Graph API (production)").set_defaults(
        func=cmd_sender)
    sub.add_parser("migrate", help="create or update the database schema").set_defaults(func=cmd_migrate)
    sub.add_parser("reports", help="build the service reports from the events topic (production)").set_defaults(
        func=cmd_reports)
    report = sub.add_parser("report", help="draw the service reports (response times, backlog) as a PNG")
    report.add_argument("--plot", required=True, help="PNG file to write")
    report.add_argument("--org", required=True)
    report.add_argument("--from", dest="from_", help="first UTC day of the room cycles (default: 6 days before --to)")
    report.add_argument("--to", help="last UTC day, included (default: today)")
    report.add_argument("--day", help="the UTC day whose backlog is drawn (default: --to)")
    report.set_defaults(func=cmd_report)
    replay = sub.add_parser("replay", help="rebuild every projection from the event store")
    replay.add_argument("--until", help="only events that occurred at or before this ISO-8601 time (UTC if no offset)")
    replay.add_argument("--into", help="build the projections in this separate schema; the live ones are not touched")
    replay.set_defaults(func=cmd_replay)
    export = sub.add_parser("export", help="write the room-event history to Parquet or JSON Lines")
    export.add_argument("--format", required=True, choices=["parquet", "jsonl"])
    export.add_argument("--out", required=True, help="file to write (replaced only when complete)")
    export.add_argument("--org", help="only this organization's events")
    export.add_argument("--since", help="only events that occurred at or after this ISO-8601 time (UTC if no offset)")
    export.add_argument("--until", help="only events that occurred before this ISO-8601 time")
    export.add_argument("--types", help="comma-separated event types, e.g. RoomOpened,MessageReceived")
    export.set_defaults(func=cmd_export)
    dead = sub.add_parser("dead-letters", help="list projection dead letters; `retry` re-applies them")
    dead.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    dead.add_argument("--id", type=int, action="append", help="retry this dead letter (repeatable)")
    dead.add_argument("--all", action="store_true", help="retry every unresolved dead letter")
    dead.add_argument("--resolved", action="store_true", help="list resolved ones too")
    dead.add_argument("--limit", type=int, default=100)
    dead.set_defaults(func=cmd_dead_letters)
    token = sub.add_parser("token", help="print a signed bearer token")
    token.add_argument("--org", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--role", required=True, choices=["admin", "supervisor", "agent", "integration"])
    token.add_argument("--name")
    token.add_argument("--ttl", type=int, default=7 * 24 * 3600, help="seconds until the token expires")
    token.add_argument("--dev", action="store_true", help="allow signing with the development secret")
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
