"""A Server-Sent Events reader for tests: reads GET /v1/stream with httpx in a thread, like a browser."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson


@dataclass
class Event:
    name: str
    data: Any
    id: str | None  # the id field of this event, if it had one
    last_id: str | None  # what a browser would send as Last-Event-ID after this event


class StreamReader:
    def __init__(self, base_url: str, headers: dict[str, str], last_event_id: str | None = None) -> None:
        self.headers = {**headers, **({"Last-Event-ID": last_event_id} if last_event_id is not None else {})}
        self.url = f"{base_url}/v1/stream"
        self.events: list[Event] = []
        self.comments = 0
        self.retry: str | None = None
        self.status: int | None = None
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_id: str | None = self.headers.get("Last-Event-ID")
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(10, read=None)) as r:
                self.status = r.status_code
                if r.status_code != 200:
                    r.read()
                    return
                name, data, event_id = "message", [], None
                for line in r.iter_lines():
                    if line == "":
                        if data:
                            if event_id is not None:
                                last_id = event_id
                            with self._lock:
                                self.events.append(Event(name, orjson.loads("\n".join(data)), event_id, last_id))
                        name, data, event_id = "message", [], None
                    elif line.startswith(":"):
                        self.comments += 1
                    else:
                        field, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if field == "event":
                            name = value
                        elif field == "data":
                            data.append(value)
                        elif field == "id":
                            event_id = value
                        elif field == "retry":
                            self.retry = value
        except httpx.HTTPError as e:
            self.error = e
        finally:
            self.ended.set()

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def named(self, name: str) -> list[Event]:
        return [e for e in self.snapshot() if e.name == name]

    def wait_for(self, check: Callable[[list[Event]], Any], *, timeout: float = 60, what: str = "events") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check(self.snapshot())
            if found:
                return found
            if self.ended.is_set():
                found = check(self.snapshot())
                if found:
                    return found
                raise AssertionError(f"stream ended (status {self.status}, {self.error!r}) before {what}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; got {[(e.name, e.id) for e in self.snapshot()]}")

    def wait_started(self, timeout: float = 30) -> None:
        """The first counters event arrived: the stream is following the log."""
        self.wait_for(lambda evs: any(e.name == "counters" for e in evs), timeout=timeout, what="initial counters")

    @property
    def last_id(self) -> str | None:
        events = self.snapshot()
        return events[-1].last_id if events else None


def rooms_seen(events: list[Event]) -> set[str]:
    """Every room id an event told about (room, room_hidden, message)."""
    out = set()
    for e in events:
        if e.name in ("room", "room_hidden"):
            out.add(e.data["id"])
        elif e.name == "message":
            out.add(e.data["room_id"])
    return out
