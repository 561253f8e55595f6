from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.client import AIOKafkaClient
from fastapi import APIRouter, Response

from inbox.entrypoints.api.deps import ContainerDep
from inbox.entrypoints.api.schemas import Readiness
from inbox.bootstrap import Container
from inbox.adapters.lag import consumer_lag, store_lag

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

HEARTBEAT_FRESH_S = 10


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


def _database_checks(container: ContainerDep) -> dict[str, Any]:
    with container.read_pool.connection(timeout=3) as conn:
        rows = conn.execute(
            "SELECT kind, count(*) FILTER (WHERE beat_at > now() - make_interval(secs => %s)) AS live"
            " FROM worker_heartbeats GROUP BY kind",
            (HEARTBEAT_FRESH_S,),
        ).fetchall()
    live = {kind: n for kind, n in rows}
    return {"database": True, "relay": live.get("relay", 0) > 0, "stream_workers": live.get("projector", 0),
            "report_workers": live.get("reports", 0)}  # informational: the reports are not on the serving path


async def _broker_ok(bootstrap: str) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout=3)
        return True
    except Exception:
        return False
    finally:
        await client.close()


async def _lag(container: Container) -> dict[str, Any]:
    """Relay and projection lag (inbox/adapters/lag.py); raises when the database cannot say."""
    settings = container.settings
    store = await asyncio.to_thread(store_lag, container.read_pool, settings.events_topic)
    out: dict[str, Any] = {
        "relay_lag_events": store.relay_events,
        "relay_lag_seconds": container.lag.relay.behind_for(store.relay_position, store.relay_events),
        "projection_dead_letters": store.dead_letters,
        "projection_lag_events": None,
        "projection_lag_seconds": None,
    }
    try:
        behind, committed = await asyncio.wait_for(
            consumer_lag(settings.kafka_bootstrap or "", settings.events_topic, settings.worker_group), timeout=5
        )
    except Exception as e:  # the broker is down or slow: /readyz reports it as "broker"
        log.warning("projection lag unknown (broker): %s: %s", type(e).__name__, e)
    else:
        out["projection_lag_events"] = behind
        out["projection_lag_seconds"] = container.lag.projection.behind_for(committed, behind)
    return out


@router.get("/readyz", response_model=Readiness)
async def readyz(container: ContainerDep, response: Response) -> dict[str, Any]:
    """Ready when the database, the broker, the relay and at least one stream worker are up, the
    write path can commit, and neither the relay nor the projections are stuck (behind and not
    moving for `INBOX_STALL_AFTER_S`). No error text of a dependency is ever in the body."""
    try:
        checks = await asyncio.to_thread(_database_checks, container)
    except Exception as e:
        log.warning("readyz: database check failed: %s: %s", type(e).__name__, e)
        checks = {"database": False, "relay": False, "stream_workers": 0}
    checks["broker"] = await _broker_ok(container.settings.kafka_bootstrap or "")
    checks["write_path"] = container.inbound.can_commit() or await asyncio.to_thread(container.inbound.probe)
    stall = container.settings.stall_after_s
    checks["relay_moving"] = checks["projections_moving"] = False
    if checks["database"]:
        try:
            lag = await _lag(container)
        except Exception as e:
            log.warning("readyz: lag unknown: %s: %s", type(e).__name__, e)
        else:
            checks.update(lag)
            checks["relay_moving"] = lag["relay_lag_seconds"] < stall
            checks["projections_moving"] = (
                lag["projection_lag_seconds"] is not None and lag["projection_lag_seconds"] < stall
            )
    # Live updates (GET /v1/stream): this process's LISTEN connection is up, and how many streams are open.
    hub = container.stream_hub
    checks["live_updates_listening"] = hub is not None and hub.listening
    checks["live_update_streams"] = hub.streams if hub is not None else 0
    ready = all(checks[k] for k in (
        "database", "broker", "relay", "stream_workers", "write_path", "relay_moving", "projections_moving"
    ))
    response.status_code = 200 if ready else 503
    return {"ready": ready, "checks": checks}


@router.get("/metrics")
async def metrics(container: ContainerDep) -> Response:
    m = container.metrics
    m.inbound_queue.set(container.inbound.queued)
    m.write_path_up.set(1 if container.inbound.can_commit() else 0)
    try:
        lag = await _lag(container)
    except Exception as e:  # still serve the counters; the lag gauges keep their last values
        log.warning("metrics: lag unknown: %s: %s", type(e).__name__, e)
    else:
        m.relay_lag_events.set(lag["relay_lag_events"])
        m.relay_lag_seconds.set(lag["relay_lag_seconds"])
        m.projection_dead_letters.set(lag["projection_dead_letters"])
        if lag["projection_lag_events"] is not None:
            m.projection_lag_events.set(lag["projection_lag_events"])
            m.projection_lag_seconds.set(lag["projection_lag_seconds"])
    if container.credentials is not None:
        try:
            m.channel_accounts_needing_reauth.set(await asyncio.to_thread(container.credentials.needs_reauth_count))
        except Exception as e:
            log.warning("metrics: needs_reauth unknown: %s: %s", type(e).__name__, e)
    return Response(m.render(), media_type="text/plain; version=0.0.4")
