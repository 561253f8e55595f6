"""(e) "Resolve all expired" on many rooms through `inbox api`, and how fast the API answers meanwhile.

The behaviour (every expired room resolved, the API answering throughout) is a scale test,
tests/e2e/test_resolve_expired_at_scale.py; the figures live here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

import tests.support
from bench.infra import Infra
from bench.stats import rate, summary_ms

EXPIRY_ACCOUNT = "pn-bench-expiry"


def write_expired_rooms(infra: Infra, org: str, n: int) -> None:
    """n assigned WhatsApp rooms whose last customer message is 30 h old, 500 rooms per transaction."""
    tests.support.write_expired_rooms(infra.settings, org, n, account=EXPIRY_ACCOUNT, phone_prefix="62877")


@dataclass
class ExpiryFigures:
    rooms: int
    seconds: float = 0.0
    answer: dict[str, Any] = field(default_factory=dict)
    reads: list[float] = field(default_factory=list)  # GET counters and GET rooms during the resolve
    writes: list[float] = field(default_factory=list)  # POST inbound-messages during the resolve

    def as_dict(self) -> dict[str, Any]:
        return {
            "rooms": self.rooms, "seconds": self.seconds, "rooms_per_s": rate(self.rooms, self.seconds),
            "answer": self.answer, "reads": summary_ms(self.reads), "writes": summary_ms(self.writes),
        }


def resolve_expired_under_load(
    base_url: str, *, rooms: int, spv_token: str, admin_token: str, ingest_token: str
) -> ExpiryFigures:
    """One supervisor resolves every expired room while one client reads the inbox and writes."""
    figures = ExpiryFigures(rooms)

    def bulk_resolve() -> None:
        started = time.perf_counter()
        r = httpx.post(f"{base_url}/v1/rooms/resolve-expired", json={"channels": ["whatsapp_cloud"]},
                       headers={"Authorization": f"Bearer {spv_token}"}, timeout=900)
        figures.seconds = time.perf_counter() - started
        figures.answer = {"status": r.status_code, **(r.json() if r.status_code == 200 else {"text": r.text})}

    admin = {"Authorization": f"Bearer {admin_token}"}
    ingest = {"Authorization": f"Bearer {ingest_token}"}
    resolver = threading.Thread(target=bulk_resolve)
    with httpx.Client(base_url=base_url, timeout=30) as c:
        resolver.start()
        i = 0
        while resolver.is_alive():
            i += 1
            for path, params in (("/v1/inbox/counters", {}), ("/v1/rooms", {"tab": "messages", "limit": 50})):
                started = time.perf_counter()
                c.get(path, headers=admin, params=params).raise_for_status()
                figures.reads.append(time.perf_counter() - started)
            started = time.perf_counter()
            c.post("/v1/inbound-messages", headers=ingest, json={
                "channel": "whatsapp_cloud", "channel_account": EXPIRY_ACCOUNT, "contact": {"id": f"62899{i:07d}"},
                "message": {"id": f"expiry.during.{i}", "text": "halo", "sent_at": datetime.now(UTC).isoformat()},
            }).raise_for_status()
            figures.writes.append(time.perf_counter() - started)
            time.sleep(0.02)
        resolver.join(timeout=60)
    return figures
