"""Sender throughput against the stand-in Graph API: `python -m bench.sender [--accounts 4] [--contacts 250]`.

Records one WhatsApp reply per contact while `inbox sender` is stopped (api + relay running), then
starts the sender and measures how fast the queued replies are accepted by the stand-in: replies/s
from the sender's start (intake from the topic included) and between the first and the last
acceptance. Sends are paced per account (WhatsApp's 80 msg/s default), so the ceiling is
80 x accounts replies/s; the figure says whether the sender reaches it. It prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

import httpx

from bench.infra import infrastructure
from bench.procs import Pipeline
from inbox.adapters.auth import mint_token
from inbox.adapters.secrets import generate_key
from tests.graph_standin.server import GraphStandin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=4)
    parser.add_argument("--contacts", type=int, default=250, help="per account; one reply each")
    args = parser.parse_args(argv)
    with GraphStandin() as standin, infrastructure() as infra:
        infra.settings = replace(infra.settings, meta_graph_url=standin.url, secret_key=generate_key())
        s = infra.settings
        p = Pipeline(infra)
        try:
            for role in ("api", "relay"):
                p.start(role)
            p.wait_until(p.api_up, timeout=60, what="API")

            def headers(role: str, user: str) -> dict[str, str]:
                token = mint_token(s.jwt_secret or "", org="bench", user=user, role=role,
                                   issuer=s.jwt_issuer, audience=s.jwt_audience)
                return {"Authorization": f"Bearer {token}"}

            admin, bridge, agent = headers("admin", "a"), headers("integration", "b"), headers("agent", "agent1")
            accounts = [f"pn-bench-{i}" for i in range(args.accounts)]
            for account in accounts:
                standin.grant(account, f"tok-{account}", verified_name="Bench", display_phone_number="+1")
                r = httpx.post(f"{p.base_url}/v1/channel-accounts", headers=admin, json={
                    "channel": "whatsapp_cloud", "external_id": account, "name": account,
                    "access_token": f"tok-{account}"})
                r.raise_for_status()

            def one(i: int) -> None:
                account = accounts[i % len(accounts)]
                with httpx.Client(base_url=p.base_url, timeout=60) as c:
                    r = c.post("/v1/inbound-messages", headers=bridge, json={
                        "channel": "whatsapp_cloud", "channel_account": account, "contact": {"id": f"62{i:09d}"},
                        "message": {"id": f"in.{i}", "text": "halo", "sent_at": datetime.now(UTC).isoformat()}})
                    r.raise_for_status()
                    c.post(f"/v1/rooms/{r.json()['room_id']}/messages", headers=agent,
                           json={"text": f"reply {i}"}).raise_for_status()

            total = args.accounts * args.contacts
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(one, range(total)))
            print(f"{total} replies recorded; starting the sender", flush=True)
            started = time.monotonic()
            p.start("sender")
            p.wait_until(lambda: sum(1 for r in standin.requests if r.method == "POST") >= total,
                         timeout=600, what="every reply sent")
            elapsed = time.monotonic() - started
            posts = [r for r in standin.requests if r.method == "POST"]
            window = max(r.at for r in posts) - min(r.at for r in posts)
            print(f"sender: {total} replies over {args.accounts} accounts in {elapsed:.1f} s from start"
                  f" = {total / elapsed:.0f} replies/s (startup and topic intake included);"
                  f" {total / window if window else float('inf'):.0f} replies/s between first and last request"
                  f" (pacing ceiling {80 * args.accounts}/s)", flush=True)
        finally:
            p.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
