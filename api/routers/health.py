from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.client import AIOKafkaClient
from fastapi import APIRouter, Response

from api.deps import ContainerDep
from api.schemas import Readiness

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
    return {"database": True, "relay": live.get("relay", 0) > 0, "stream_workers": live.get("projector", 0)}


async def _broker_ok(bootstrap: str) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout=3)
        return True
    except Exception:
        return False
    finally:
        await client.close()


@router.get("/readyz", response_model=Readiness)
async def readyz(container: ContainerDep, response: Response) -> dict[str, Any]:
    """Ready when the database, the broker, the relay and at least one stream worker are up."""
    try:
        checks = await asyncio.to_thread(_database_checks, container)
    except Exception as e:
        checks = {"database": False, "error": str(e), "relay": False, "stream_workers": 0}
    checks["broker"] = await _broker_ok(container.settings.kafka_bootstrap or "")
    ready = bool(checks["database"] and checks["broker"] and checks["relay"] and checks["stream_workers"])
    response.status_code = 200 if ready else 503
    return {"ready": ready, "checks": checks}


@router.get("/metrics")
def metrics(container: ContainerDep) -> Response:
    return Response(container.metrics.render(), media_type="text/plain; version=0.0.4")
