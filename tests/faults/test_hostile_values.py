"""Hostile values through every write endpoint and through signed webhooks, on real processes.

Each value goes, one at a time, into each field of each write request: the answer is a 4xx
(refused, with a reason) or a 2xx (recorded), never a 5xx, and afterwards the pipeline still
flows: the projections reach the event store and a canary message becomes visible.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.meta.signature import signature
from tests.faults.harness import Figures, canary, inbound_body, store_message_ids
from tests.support import Pipeline, auth

pytestmark = pytest.mark.faults

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "meta"
WA_ACCOUNT = "106540352242922"  # phone_number_id in the fixtures
PAGE = "104536785812345"


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


HOSTILE: dict[str, Any] = {
    "nul": "a\u0000b",
    "lone surrogate": "x\ud800y",
    "1 MB": "x" * 1_000_000,
    "year 1": "0001-01-01T00:00:00+00:00",
    "year 9999": "9999-12-31T23:59:59+00:00",
    "nested 300": nested(300),
    "reserved -": "-",
    "reserved *": "*",
}
HOSTILE_NUMBERS: dict[str, Any] = {"2**63": 2**63, "-1": -1, "10**400": int("1" + "0" * 400)}
# Meta sends Unix seconds (WhatsApp, as a string) or milliseconds (Messenger, a number).
HOSTILE_TIMESTAMPS: dict[str, Any] = {
    "epoch of year 1": "-62135596800", "epoch of year 9999": "253402300799", "1e20": "100000000000000000000",
    "ms of year 1": -62135596800000, "ms beyond year 9999": 10**17,
}


def raw(body: Any) -> bytes:
    """JSON as a hostile client would send it: lone surrogates as \\u escapes, any depth."""
    return json.dumps(body, ensure_ascii=True).encode()


def with_value(body: Any, path: tuple[str | int, ...], value: Any) -> Any:
    out = copy.deepcopy(body)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


class Requests:
    """Sends hostile requests and keeps every answer; 5xx are collected, not raised, to list them all."""

    def __init__(self, p: Pipeline) -> None:
        self.client = httpx.Client(base_url=p.base_url, timeout=60)
        self.answers: list[tuple[str, int | str]] = []
        self.inbound_accepted: list[str] = []

    def post(self, what: str, url: str, body: Any, headers: dict[str, str]) -> int | str:
        """The status code, or the name of the transport error when no answer came (also a failure)."""
        if self.broken():
            self.answers.append((what, "not sent"))
            return "not sent"
        try:
            r = self.client.post(url, content=raw(body), headers={**headers, "content-type": "application/json"})
            status: int | str = r.status_code
        except httpx.TransportError as e:
            status = f"error:{type(e).__name__}"
        self.answers.append((what, status))
        return status

    def broken(self) -> bool:
        """Ten failures in a row: the API is broken for good, more requests would only take time."""
        last = [s for _, s in self.answers[-10:]]
        return len(last) == 10 and all(not isinstance(s, int) or s >= 500 for s in last)

    def server_errors(self) -> list[tuple[str, int | str]]:
        return [(w, s) for w, s in self.answers if not isinstance(s, int) or s >= 500]


@pytest.fixture
def hostile_pipeline(pipeline: Pipeline) -> Iterator[Pipeline]:
    admin = auth(pipeline.settings)
    for channel, external_id in (("whatsapp_cloud", WA_ACCOUNT), ("facebook_messenger", PAGE)):
        r = httpx.post(f"{pipeline.base_url}/v1/channel-accounts", headers=admin, timeout=30,
                       json={"channel": channel, "external_id": external_id, "name": channel})
        assert r.status_code == 201, r.text
    yield pipeline


def send_api_requests(p: Pipeline, req: Requests) -> None:
    admin = auth(p.settings)
    bridge = auth(p.settings, role="integration", user="bridge")
    first = httpx.post(f"{p.base_url}/v1/inbound-messages", headers=bridge, timeout=30,
                       json=inbound_body("hostile.room", contact="6281100000001"))
    assert first.status_code == 202, first.text
    room = first.json()["room_id"]

    fields = [("channel_account",), ("contact", "id"), ("contact", "name"), ("contact", "phone"),
              ("contact", "handle"), ("message", "id"), ("message", "text"), ("message", "sent_at"), ("post_id",)]
    for n, (path, (name, value)) in enumerate((f, v) for f in fields for v in HOSTILE.items()):
        mid = f"hostile.{n}"
        body = with_value(inbound_body(mid, contact=f"62811{n:05d}"), path, value)
        status = req.post(f"inbound {'.'.join(map(str, path))}={name}", "/v1/inbound-messages", body, bridge)
        if status == 202:
            req.inbound_accepted.append(value if path == ("message", "id") else mid)

    account = {"channel": "instagram", "external_id": "ig-hostile", "name": "IG", "app_secret": "0123456789abcdef"}
    for n, (field, (name, value)) in enumerate(
        (f, v) for f in ("external_id", "name", "app_secret") for v in HOSTILE.items()
    ):
        body = with_value({**account, "external_id": f"ig-hostile-{n}"}, (field,), value)
        req.post(f"channel account {field}={name}", "/v1/channel-accounts", body, admin)

    for name, value in HOSTILE.items():
        req.post(f"assign agent_id={name}", f"/v1/rooms/{room}/assign", {"agent_id": value}, admin)
        req.post(f"reply text={name}", f"/v1/rooms/{room}/messages", {"text": value}, admin)
        req.post(f"resolve-expired channels=[{name}]", "/v1/rooms/resolve-expired", {"channels": [value]}, admin)
    for name, value in HOSTILE_NUMBERS.items():
        req.post(f"assign expected_version={name}", f"/v1/rooms/{room}/assign",
                 {"agent_id": "agent-1", "expected_version": value}, admin)
        req.post(f"reply expected_version={name}", f"/v1/rooms/{room}/messages",
                 {"text": "ok", "expected_version": value}, admin)
        req.post(f"resolve expected_version={name}", f"/v1/rooms/{room}/resolve", {"expected_version": value}, admin)
    for name, room_id in {"-": "-", "*": "*", "nul": "a%00b", "long": "r" * 5000, "surrogate": "%ED%A0%80"}.items():
        req.post(f"reply to room {name}", f"/v1/rooms/{room_id}/messages", {"text": "hi"}, admin)
        req.post(f"resolve room {name}", f"/v1/rooms/{room_id}/resolve", {}, admin)


def send_webhooks(p: Pipeline, req: Requests) -> None:
    from inbox.config import DEV_META_APP_SECRET

    secret = p.settings.meta_app_secret or DEV_META_APP_SECRET
    wa = json.loads((FIXTURES / "wa_text.json").read_text())
    value = ("entry", 0, "changes", 0, "value")
    wa_paths = {
        "text": (*value, "messages", 0, "text", "body"), "profile name": (*value, "contacts", 0, "profile", "name"),
        "message id": (*value, "messages", 0, "id"), "from": (*value, "messages", 0, "from"),
        "timestamp": (*value, "messages", 0, "timestamp"),
    }
    fb = json.loads((FIXTURES / "fb_messenger_text.json").read_text())
    event = ("entry", 0, "messaging", 0)
    fb["entry"][0]["messaging"][0].pop("message")
    fb["entry"][0]["messaging"][0]["postback"] = {"title": "Start", "payload": "GET_STARTED", "mid": "m_pb"}
    fb_paths = {
        "postback payload": (*event, "postback", "payload"), "postback title": (*event, "postback", "title"),
        "sender": (*event, "sender", "id"), "timestamp": (*event, "timestamp"),
    }

    def send(what: str, body: Any) -> None:
        data = raw(body)
        req.post(what, "/webhooks/meta", body, {"X-Hub-Signature-256": signature(secret, data)})

    n = 0
    for kind, base, paths, id_path in (("whatsapp", wa, wa_paths, wa_paths["message id"]),
                                       ("messenger", fb, fb_paths, (*event, "postback", "mid"))):
        values = {**HOSTILE, **HOSTILE_TIMESTAMPS}
        for field, path in paths.items():
            for name, hostile in values.items():
                n += 1
                body = with_value(with_value(base, id_path, f"hostile-hook.{n}"), path, hostile)
                if field == "message id" and isinstance(hostile, str):
                    # Ids are per account: keep the webhook's ids apart from the API's same hostile
                    # values (another account), so the duplicate count below means one account.
                    body = with_value(body, path, f"hook:{hostile}")
                if kind == "whatsapp" and field == "timestamp":
                    body = with_value(body, path, hostile if isinstance(hostile, str) else str(hostile))
                send(f"webhook {kind} {field}={name}", body)


def test_hostile_values_are_refused_or_recorded_and_the_pipeline_keeps_flowing(
    hostile_pipeline: Pipeline, figures: Callable[[str], Figures]
) -> None:
    p = hostile_pipeline
    f = figures("a hostile values")
    req = Requests(p)
    try:
        send_api_requests(p, req)
        send_webhooks(p, req)
    finally:
        req.client.close()
    statuses = Counter(s for _, s in req.answers)
    stored = store_message_ids(p.settings)
    f.requests, f.accepted = len(req.answers), sum(1 for _, s in req.answers if isinstance(s, int) and 200 <= s < 300)
    f.recorded = sum(1 for m in req.inbound_accepted if stored[m])
    f.lost = sum(1 for m in req.inbound_accepted if not stored[m])
    f.duplicates = sum(1 for m in req.inbound_accepted if stored[m] > 1)
    f.other = Counter({k: v for k, v in statuses.items() if not (isinstance(k, int) and 200 <= k < 300)})

    errors = req.server_errors()
    assert not errors, "\n".join(f"{w}: {s}" for w, s in errors) + f"\napi log:\n{p.log_tail('api', 15)}"
    assert f.lost == 0 and f.duplicates == 0
    f.recover_s = canary(p)
    p.wait_until_projected(timeout=30)


def test_a_reply_containing_nul_never_stops_the_projections(
    pipeline: Pipeline, figures: Callable[[str], Figures]
) -> None:
    """Issue 7's first reproduction: a reply "a\\u0000b" was stored (201), then every projection batch failed."""
    f = figures("a nul reply (reproduction 1)")
    bridge = auth(pipeline.settings, role="integration", user="bridge")
    first = httpx.post(f"{pipeline.base_url}/v1/inbound-messages", headers=bridge, timeout=30,
                       json=inbound_body("nul.room", contact="6281100000002"))
    assert first.status_code == 202, first.text
    r = httpx.post(f"{pipeline.base_url}/v1/rooms/{first.json()['room_id']}/messages", headers=auth(pipeline.settings),
                   timeout=30, json={"text": "a\u0000b"})
    f.requests, f.accepted = 2, 1 + (r.status_code == 201)
    f.other = Counter({r.status_code: 1})
    assert r.status_code in (201, 422), r.text
    f.recover_s = canary(pipeline)
    pipeline.wait_until_projected(timeout=30)
