"""`python -m bench.webhooks`: latency of signed Meta webhooks against a real `inbox api` process.

Starts PostgreSQL and a broker like the rest of bench/ (INBOX_DATABASE_URL / INBOX_KAFKA_BOOTSTRAP
when set, else embedded ones in a temporary directory), a fresh schema, and one `inbox api`
subprocess. Registers a WhatsApp number, a Facebook page (Messenger + comments) and an Instagram
account, then posts realistic signed payloads (shapes of tests/fixtures/meta: WhatsApp text with
contact profile, image with caption, status updates, Messenger text, Page feed comments) from
concurrent clients and prints, per phase, p50/p99 of the HTTP round trip (the handler answers
after the facts are durably committed), requests/s and messages/s, then checks that every message
was recorded exactly once.

Phases: `single` (one message per POST, like Meta's usual delivery) and `batched` (several entries
per POST, as Meta batches under load). Every POST is sent once more at the end of the run
(`redelivery`) to measure the duplicate path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.baselines import trivial_http_baseline
from bench.ingest import RawHTTPConnection
from bench.infra import infrastructure
from bench.main import start_second_api
from bench.procs import CpuMeter, Pipeline, profiled, standard_groups
from bench.stats import fmt_ms, rate, summary_ms
from channels.meta.signature import signature as sign
from inbox.adapters.auth import mint_token

ORG = "bench-webhooks"
WA_PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
PAGE_ID = "104536785812345"
IG_ACCOUNT = "17841405822304914"
TEXTS = [
    "Halo kak, pesanan saya belum sampai", "Apakah ukuran M masih ada?", "Does it come in another color?",
    "Berapa ongkir ke Surabaya?", "Terima kasih 🙏", "Bisa COD kak?", "Kapan restock warna hitam?",
]


# ---- realistic payloads ---------------------------------------------------------------------
class Payloads:
    """Meta-shaped webhook bodies with unique message ids over a pool of contacts."""

    def __init__(self, contacts: int, seed: int = 7) -> None:
        self.contacts = contacts
        self.rng = random.Random(seed)
        self.n = 0

    def _next(self) -> tuple[int, int]:
        self.n += 1
        return self.n, self.rng.randrange(self.contacts)

    def whatsapp_entry(self) -> tuple[dict[str, Any], int]:
        n, c = self._next()
        wa_id = f"62812{c:07d}"
        ts = str(int(time.time()))
        if n % 5 == 0:
            message = {"from": wa_id, "id": f"wamid.bench.{n}", "timestamp": ts, "type": "image",
                       "image": {"caption": self.rng.choice(TEXTS), "mime_type": "image/jpeg",
                                 "sha256": "5tBK5LOrGBrDZ8sFkMdmx7HApO4qHJ5Ri7ZSkfC9rLg=", "id": f"10033834{n:08d}"}}
        else:
            message = {"from": wa_id, "id": f"wamid.bench.{n}", "timestamp": ts, "type": "text",
                       "text": {"body": self.rng.choice(TEXTS)}}
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": WA_PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": f"Pelanggan {c}"}, "wa_id": wa_id}],
            "messages": [message],
        }
        messages = 1
        if n % 4 == 0:  # a status of an earlier outbound message rides along, as Meta does
            value["statuses"] = [{"id": f"wamid.out.{n}", "status": "delivered", "timestamp": ts, "recipient_id": wa_id}]
            messages += 1
        return {"id": WABA_ID, "changes": [{"value": value, "field": "messages"}]}, messages

    def messenger_entry(self) -> tuple[dict[str, Any], int]:
        n, c = self._next()
        now_ms = int(time.time() * 1000)
        return {"id": PAGE_ID, "time": now_ms, "messaging": [{
            "sender": {"id": f"77{c:014d}"}, "recipient": {"id": PAGE_ID}, "timestamp": now_ms,
            "message": {"mid": f"m_bench.{n}", "text": self.rng.choice(TEXTS)},
        }]}, 1

    def comment_entry(self) -> tuple[dict[str, Any], int]:
        n, c = self._next()
        post = f"{PAGE_ID}_1221047835920{c % 20:05d}"
        return {"id": PAGE_ID, "time": int(time.time()), "changes": [{"field": "feed", "value": {
            "from": {"id": f"88{c:014d}", "name": f"Pelanggan {c}"}, "post_id": post,
            "comment_id": f"{post.split('_')[1]}_{n}", "created_time": int(time.time()), "item": "comment",
            "parent_id": post, "verb": "add", "message": self.rng.choice(TEXTS),
        }}]}, 1

    def body(self, entries: int) -> tuple[bytes, int]:
        """One POST: `entries` entries of one object type (Meta never mixes objects in a POST)."""
        kind = self.rng.random()
        if kind < 0.6:
            obj, make = "whatsapp_business_account", self.whatsapp_entry
        elif kind < 0.85:
            obj, make = "page", self.messenger_entry
        else:
            obj, make = "page", self.comment_entry
        made = [make() for _ in range(entries)]
        return orjson.dumps({"object": obj, "entry": [e for e, _ in made]}), sum(m for _, m in made)


# ---- the load -----------------------------------------------------------------------------------
@dataclass
class PhaseResult:
    name: str
    requests: int
    facts: int
    seconds: float
    latencies: list[float]
    errors: dict[int, int]

    @property
    def msg_per_s(self) -> float:
        return rate(self.facts, self.seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "facts": self.facts, "seconds": self.seconds,
                "req_per_s": rate(self.requests, self.seconds), "msg_per_s": self.msg_per_s,
                "latency": summary_ms(self.latencies), "errors": self.errors}

    def describe(self) -> str:
        s = summary_ms(self.latencies)
        return (
            f"{self.name:>10}: {self.requests} POSTs, {self.facts} facts in {self.seconds:.2f}s —"
            f" {rate(self.requests, self.seconds):,.0f} req/s, {rate(self.facts, self.seconds):,.0f} msg/s;"
            f" latency {fmt_ms(s)}" + (f"; errors {self.errors}" if self.errors else "")
        )


async def run_phase(
    name: str, base_url: str, secret: str, bodies: list[tuple[bytes, int]], clients: int
) -> PhaseResult:
    queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    latencies: list[float] = []
    errors: dict[int, int] = {}
    facts = 0
    # The raw keep-alive client (bench.ingest): httpx would cost the 2-core machine ~1 core here.
    url = httpx.URL(base_url)
    conns = [RawHTTPConnection(url.host, url.port or 80, {"Content-Type": "application/json"}) for _ in range(clients)]
    try:
        await asyncio.gather(*(c.request("GET", "/healthz") for c in conns))

        async def worker(conn: RawHTTPConnection) -> None:
            nonlocal facts
            while True:
                try:
                    body, count = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                headers = {"X-Hub-Signature-256": sign(secret, body)}
                started = time.perf_counter()
                status, _ = await conn.request("POST", "/webhooks/meta", body, headers)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1
                else:
                    facts += count

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        seconds = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return PhaseResult(name, len(bodies), facts, seconds, latencies, errors)


def register_accounts(base_url: str, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for channel, external_id in (
        ("whatsapp_cloud", WA_PHONE_NUMBER_ID), ("facebook_messenger", PAGE_ID), ("facebook_comment", PAGE_ID),
        ("instagram", IG_ACCOUNT), ("instagram_comment", IG_ACCOUNT),
    ):
        r = httpx.post(f"{base_url}/v1/channel-accounts", headers=headers, timeout=30,
                       json={"channel": channel, "external_id": external_id, "name": f"bench {channel}"})
        if r.status_code != 201:
            raise RuntimeError(f"registering {channel} answered {r.status_code}: {r.text}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=4000, help="POSTs in the single-message phase (default 4000)")
    p.add_argument("--batched", type=int, default=200, help="POSTs in the batched phase (default 200)")
    p.add_argument("--entries", type=int, default=100, help="entries (messages) per batched POST (default 100)")
    p.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients (default 32)")
    p.add_argument("--contacts", type=int, default=500, help="distinct contacts, i.e. rooms per channel (default 500)")
    p.add_argument("--warmup", type=int, default=200, help="POSTs before measuring (default 200)")
    p.add_argument("--api-processes", type=int, choices=(1, 2), default=1,
                   help="2: then start a second `inbox api` on the same port (SO_REUSEPORT) and run the batched"
                        " phase again with new messages")
    p.add_argument("--profile", type=Path, help="py-spy record of the API during one phase (raw format)")
    p.add_argument("--profile-phase", choices=("single", "batched", "redelivery", "batched2"), default="batched",
                   help="the phase --profile records (default batched)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON to this path")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("starting PostgreSQL, broker and `inbox api` ...", flush=True)
    with infrastructure(keep_workdir=args.keep) as infra:
        settings = infra.settings
        secret = settings.meta_app_secret or ""
        pipeline = Pipeline(infra)
        try:
            pipeline.start("api")
            pipeline.wait_until(pipeline.api_up, timeout=90, what="`inbox api` /healthz")
            token = mint_token(settings.jwt_secret or "", org=ORG, user="bench-admin", role="admin")
            register_accounts(pipeline.base_url, token)
            print(f"database: {infra.database} (PostgreSQL {infra.server_version}); broker: {infra.broker}")
            print(f"api: {pipeline.base_url}; clients: {args.clients}; contacts: {args.contacts}", flush=True)

            payloads = Payloads(args.contacts)
            warm = [payloads.body(1) for _ in range(args.warmup)]
            single = [payloads.body(1) for _ in range(args.requests)]
            batched = [payloads.body(args.entries) for _ in range(args.batched)]
            again = [payloads.body(args.entries) for _ in range(args.batched)] if args.api_processes == 2 else []
            out: dict[str, Any] = {"clients": args.clients, "contacts": args.contacts, "entries": args.entries}
            for name, bodies in (("single", single), ("batched", batched)):
                b = trivial_http_baseline("/webhooks/meta", [body for body, _ in bodies], clients=args.clients)
                facts = sum(c for _, c in bodies)
                out[f"trivial_{name}"] = {**b.as_dict(), "msg_per_s": rate(facts, b.seconds)}
                print(f"baseline: trivial FastAPI endpoint parsing the {name} bodies: {b.req_per_s:,.0f} req/s,"
                      f" {rate(facts, b.seconds):,.0f} msg/s; {fmt_ms(b.latency)}", flush=True)
            results = []
            asyncio.run(run_phase("warmup", pipeline.base_url, secret, warm, args.clients))
            phases = [("single", single), ("batched", batched), ("redelivery", single)]
            if again:
                phases.append(("batched2", again))
            for name, bodies in phases:
                if name == "batched2":
                    start_second_api(pipeline)
                meter = CpuMeter(standard_groups(infra, pipeline))
                meter.start()
                with profiled(pipeline.pid("api") if name == args.profile_phase else None, args.profile):
                    result = asyncio.run(run_phase(name, pipeline.base_url, secret, bodies, args.clients))
                cpu = meter.stop()
                results.append(result)
                print(result.describe() + (" (2 API processes)" if name == "batched2" else ""), flush=True)
                out[name] = result.as_dict()
                if cpu is not None:
                    print(f"{'':>12}cpu: {cpu.describe()}", flush=True)
                    api_s = sum(v for k, v in cpu.by_group.items() if k.startswith("api"))
                    per = 1000 * api_s / result.facts if result.facts else math.nan
                    print(f"{'':>12}API CPU per fact: {per:.3f} ms", flush=True)
                    out[name]["cpu"] = cpu.as_dict()
                    out[name]["api_cpu_ms_per_fact"] = per
            ratios = {
                "single_vs_trivial": rate(out["single"]["msg_per_s"], out["trivial_single"]["msg_per_s"]),
                "batched_vs_trivial": rate(out["batched"]["msg_per_s"], out["trivial_batched"]["msg_per_s"]),
                "batched_vs_target_10000": out["batched"]["msg_per_s"] / 10_000,
            }
            if "batched2" in out:
                ratios["batched2_vs_batched"] = rate(out["batched2"]["msg_per_s"], out["batched"]["msg_per_s"])
                ratios["batched2_vs_trivial"] = rate(out["batched2"]["msg_per_s"], out["trivial_batched"]["msg_per_s"])
            out["ratios"] = ratios
            print("ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()), flush=True)
            expected_extra = sum(c for _, c in again)
            pipeline.check_alive()

            expected = sum(c for _, c in warm + single + batched) + expected_extra
            with infra.connect() as conn:
                row = conn.execute(
                    "SELECT (SELECT count(*) FROM inbound_dedup) + (SELECT count(*) FROM delivery_statuses)"
                ).fetchone()
            recorded = int(row[0]) if row else -1
            ok = recorded == expected and not any(r.errors for r in results)
            print(f"recorded facts: {recorded} (expected {expected}, each exactly once): {'OK' if ok else 'MISMATCH'}")
            out["recorded_exactly_once"] = ok
            if args.json:
                args.json.write_text(json.dumps(out, indent=2, default=str))
                print(f"figures written to {args.json}")
            return 0 if ok else 1
        finally:
            pipeline.stop_all()


if __name__ == "__main__":
    sys.exit(main())
