"""A stand-in for Meta's Graph API on loopback: answers like Meta's documented samples (README.md),
records every request, and injects errors, delays and dropped connections on demand.

A small HTTP/1.1 server on asyncio in a background thread (no framework: dropping a connection
after the request arrived, or answering late, needs control of the socket). Starts in
milliseconds on a free port.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERSION_RE = re.compile(r"^v\d+\.\d+$")

# The HTTP status Meta answers with for each error code (WhatsApp Cloud API error-code page; Graph
# API errors default to 400). Only used when a test does not choose one.
STATUS_FOR_CODE = {
    1: 400,
    2: 503,
    4: 400,
    10: 403,
    100: 400,
    190: 401,
    368: 403,
    551: 400,
    613: 400,
    80007: 400,
    130429: 400,
    131000: 500,
    131016: 503,
    131026: 400,
    131047: 400,
    131056: 400,
}

# Meta's titles, which Cloud API puts into `message` as "(#code) title".
TITLE_FOR_CODE = {
    1: "API Unknown",
    2: "API Service",
    4: "Application request limit reached",
    10: "Permission denied",
    100: "Invalid parameter",
    190: "Invalid OAuth access token - Cannot parse access token",
    368: "Temporarily blocked for policies violations",
    551: "This person isn't available right now.",
    613: "Calls to this api have exceeded the rate limit.",
    80007: "There have been too many messages sent to this user.",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131016: "Service unavailable",
    131026: "Message Undeliverable",
    131047: "Re-engagement message",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    raw_body: bytes
    at: float  # time.monotonic() when the request was fully received

    @property
    def json(self) -> Any:
        return json.loads(self.raw_body) if self.raw_body else None

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        values = self.query.get("access_token")
        return values[0] if values else None


@dataclass
class Fault:
    """What happens to one upcoming request instead of (or before) the normal answer."""

    kind: str  # "error" | "status" | "delay" | "drop"
    code: int | None = None
    http_status: int | None = None
    subcode: int | None = None
    message: str | None = None
    error_data: dict[str, Any] | None = None
    error_type: str = "OAuthException"
    delay_s: float = 0.0
    body: bytes = b""
    retry_after: str | None = None


@dataclass
class _Grant:
    token: str
    fields: dict[str, Any] = field(default_factory=dict)


class GraphStandin:
    """Use as a context manager or start()/stop(). `url` is the base URL (no version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self._grants: dict[str, _Grant] = {}
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._before_answer: Callable[[RecordedRequest, Any], None] | None = None
        self.port = 0

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GraphStandin:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve_connection, "127.0.0.1", 0)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="graph-standin", daemon=True)
        self._thread.start()
        if not ready.wait(timeout=5):
            raise RuntimeError("graph stand-in did not start within 5 s")
        if failure:
            raise RuntimeError("graph stand-in could not start") from failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=5)
        self._loop = None

    def __enter__(self) -> GraphStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls ----------------------------------------------------------------------------

    def grant(self, object_id: str, token: str, **fields: Any) -> None:
        """`token` may read `object_id` (GET answers id + fields) and may send on behalf of it."""
        with self._lock:
            self._grants[object_id] = _Grant(token=token, fields=dict(fields))

    def revoke(self, object_id: str) -> None:
        with self._lock:
            self._grants.pop(object_id, None)

    def fail_next(
        self,
        code: int,
        *,
        times: int = 1,
        http_status: int | None = None,
        subcode: int | None = None,
        message: str | None = None,
        error_data: dict[str, Any] | None = None,
        retry_after: str | None = None,
    ) -> None:
        """The next `times` requests get Meta's error body with this code."""
        self._push(
            times,
            Fault(
                "error",
                code=code,
                http_status=http_status or STATUS_FOR_CODE.get(code, 400),
                subcode=subcode,
                message=message,
                error_data=error_data,
                retry_after=retry_after,
            ),
        )

    def server_error_next(self, status: int = 500, *, times: int = 1, body: bytes = b"") -> None:
        """The next `times` requests get a bare 5xx (as a load balancer in front of Meta would)."""
        self._push(times, Fault("status", http_status=status, body=body))

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """The next `times` requests are answered normally, but only after `seconds`."""
        self._push(times, Fault("delay", delay_s=seconds))

    def drop_next(self, *, times: int = 1) -> None:
        """The next `times` requests are received and recorded, then the connection is closed unanswered."""
        self._push(times, Fault("drop"))

    def before_answer(self, hook: Callable[[RecordedRequest, Any], None] | None) -> None:
        """Call `hook(request, answer_json)` (in a thread) before each successful answer is written,
        e.g. to deliver Meta's echo webhook of a send before the sender hears Meta's answer (the
        race Meta allows: webhooks and the Send API's answer are not ordered). None removes it."""
        with self._lock:
            self._before_answer = hook

    def _push(self, times: int, fault: Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * times)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.requests
            if len(seen) >= count:
                return seen
            time.sleep(0.01)
        raise TimeoutError(f"expected {count} requests within {timeout} s, got {len(self.requests)}")

    # --- HTTP -------------------------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                with self._lock:
                    self._requests.append(request)
                    fault = self._faults.pop(0) if self._faults else None
                if fault is not None and fault.kind == "drop":
                    writer.transport.abort()
                    return
                if fault is not None and fault.kind == "delay":
                    await asyncio.sleep(fault.delay_s)
                    fault = None
                status, body, extra = self._answer(request, fault)
                with self._lock:
                    hook = self._before_answer
                if hook is not None and status == 200:
                    await asyncio.get_running_loop().run_in_executor(None, hook, request, json.loads(body))
                writer.write(_response_bytes(status, body, extra))
                await writer.drain()
                if request.headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return  # the client went away (e.g. it timed out while we were delaying)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
        parts = urlsplit(target)
        return RecordedRequest(
            method=method,
            path=parts.path,
            query=parse_qs(parts.query),
            headers=headers,
            raw_body=body,
            at=time.monotonic(),
        )

    def _answer(self, request: RecordedRequest, fault: Fault | None) -> tuple[int, bytes, dict[str, str]]:
        if fault is not None and fault.kind == "status":
            return fault.http_status or 500, fault.body, {"Content-Type": "text/html"}
        if fault is not None and fault.kind == "error":
            extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return (
                fault.http_status or 400,
                _error_body(fault.code or 1, fault.message, fault.subcode, fault.error_data, fault.error_type),
                extra,
            )
        try:
            status, payload = self._route(request)
        except _GraphError as exc:
            return exc.http_status, _error_body(exc.code, exc.message, exc.subcode, None, exc.error_type), {}
        return status, json.dumps(payload).encode(), {}

    def _route(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        segments = [s for s in request.path.split("/") if s]
        if not segments or not VERSION_RE.match(segments[0]):
            raise _GraphError(2500, "Unknown path components: " + request.path)
        rest = segments[1:]
        token = request.token
        if not token:
            raise _GraphError(104, "An access token is required to request this resource.", http_status=400)
        with self._lock:
            grants = dict(self._grants)
        if token not in {g.token for g in grants.values()}:
            raise _GraphError(190, "Invalid OAuth access token - Cannot parse access token", http_status=401)
        if request.method == "GET" and len(rest) == 1:
            return 200, self._read_object(rest[0], token, grants, request)
        if request.method == "POST" and len(rest) == 2:
            object_id, edge = rest
            body = _json_body(request)
            if edge == "messages":
                if body.get("messaging_product") == "whatsapp":
                    return 200, self._whatsapp_send(body)
                return 200, self._messenger_send(body)
            if edge == "comments":
                return 200, {"id": f"{object_id.split('_')[0]}_{next(self._seq)}"}
            if edge == "replies":
                return 200, {"id": str(17873440459141021 + next(self._seq))}
        raise _GraphError(2500, "Unknown path components: /" + "/".join(rest))

    def _read_object(
        self, object_id: str, token: str, grants: dict[str, _Grant], request: RecordedRequest
    ) -> dict[str, Any]:
        grant = grants.get(object_id)
        if grant is None or grant.token != token:
            raise _GraphError(
                100,
                f"Unsupported get request. Object with ID '{object_id}' does not exist, cannot be loaded "
                "due to missing permissions, or does not support this operation.",
                subcode=33,
                error_type="GraphMethodException",
            )
        wanted = request.query.get("fields", [""])[0]
        answer = {"id": object_id, **grant.fields}
        if wanted:
            names = [n.strip() for n in wanted.split(",") if n.strip()]
            missing = [n for n in names if n not in answer]
            if missing:
                raise _GraphError(100, f"(#100) Tried accessing nonexisting field ({missing[0]}) on node type")
            answer = {k: v for k, v in answer.items() if k in {"id", *names}}
        return answer

    def _whatsapp_send(self, body: dict[str, Any]) -> dict[str, Any]:
        to = body.get("to")
        kind = body.get("type", "text")
        if not isinstance(to, str) or not to:
            raise _GraphError(100, "(#100) The parameter to is required.")
        if kind == "text" and not (body.get("text") or {}).get("body"):
            raise _GraphError(100, "(#100) The parameter text['body'] is required.")
        if kind == "template" and not (body.get("template") or {}).get("name"):
            raise _GraphError(100, "(#100) The parameter template['name'] is required.")
        if kind not in ("text", "template"):
            raise _GraphError(100, f"(#100) Param type must be one of {{text, template}} - got \"{kind}\".")
        seq = next(self._seq)
        wamid = "wamid." + base64.b64encode(f"standin-{to}-{seq:08d}".encode()).decode()
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
            "messages": [{"id": wamid}],
        }

    def _messenger_send(self, body: dict[str, Any]) -> dict[str, Any]:
        recipient = (body.get("recipient") or {}).get("id")
        messaging_type = body.get("messaging_type")
        if not recipient:
            raise _GraphError(100, "(#100) The parameter recipient is required")
        if messaging_type not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            raise _GraphError(100, "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}")
        if messaging_type == "MESSAGE_TAG" and not body.get("tag"):
            raise _GraphError(100, "(#100) Param tag is required when messaging_type is MESSAGE_TAG")
        if not (body.get("message") or {}).get("text"):
            raise _GraphError(100, "(#100) The parameter message is required")
        return {"recipient_id": recipient, "message_id": f"m_standin{next(self._seq):012d}"}


class _GraphError(Exception):
    def __init__(
        self,
        code: int,
        message: str,
        *,
        http_status: int = 400,
        subcode: int | None = None,
        error_type: str = "OAuthException",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.subcode = subcode
        self.error_type = error_type


def _json_body(request: RecordedRequest) -> dict[str, Any]:
    try:
        body = request.json
    except ValueError:
        raise _GraphError(100, "(#100) The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _GraphError(100, "(#100) The request body must be a JSON object")
    return body


def _error_body(
    code: int, message: str | None, subcode: int | None, error_data: dict[str, Any] | None, error_type: str
) -> bytes:
    title = TITLE_FOR_CODE.get(code, "Error")
    error: dict[str, Any] = {"message": message or f"(#{code}) {title}", "type": error_type, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if error_data is not None:
        error["error_data"] = error_data
    elif code >= 130000:  # Cloud API errors carry error_data.details
        error["error_data"] = {"messaging_product": "whatsapp", "details": title}
    error["fbtrace_id"] = "Standin" + base64.b32encode(str(time.monotonic_ns()).encode()).decode()[:10]
    return json.dumps({"error": error}).encode()


def _response_bytes(status: int, body: bytes, extra: dict[str, str]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    headers = {"Content-Type": "application/json; charset=UTF-8", **extra, "Content-Length": str(len(body))}
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + body


def running_standin() -> Iterator[GraphStandin]:
    """Generator for a pytest fixture: `yield from running_standin()`."""
    standin = GraphStandin().start()
    try:
        yield standin
    finally:
        standin.stop()
