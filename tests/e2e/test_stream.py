"""GET /v1/stream on real `inbox api|relay|worker` processes: what each viewer receives, resuming,
reset, several API processes, a lost listener connection, slow readers and shutdown."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from inbox.adapters.live import listener_name
from inbox.config import Settings
from tests.e2e.sse import Event, StreamReader, rooms_seen
from tests.support import Pipeline, auth, http_settings, query, wait_until

pytestmark = pytest.mark.e2e

ACCOUNT = {"org1": "pn-1", "org2": "pn-2"}


def start_pipeline(settings: Settings, tmp_path: Path, **overrides: Any) -> Pipeline:
    """worker, relay and api, the API answering; stopped again when it does not come up (the
    caller's fixture never gets them to stop: left running, they would load the rest of the run)."""
    p = Pipeline(replace(http_settings(settings), **overrides), tmp_path)
    try:
        for name in ("worker", "relay", "api"):
            p.start(name)
        p.wait_for_api()
    except BaseException:
        p.stop_all()
        raise
    return p


@pytest.fixture
def pipeline(settings: Settings, tmp_path: Path) -> Iterator[Pipeline]:
    p = start_pipeline(settings, tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


class Customers:
    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.http = httpx.Client(base_url=p.base_url, timeout=60)
        self._n = 0
        for org, external_id in ACCOUNT.items():
            r = self.http.post("/v1/channel-accounts", headers=auth(p.settings, org=org, role="admin"),
                               json={"channel": "whatsapp_cloud", "external_id": external_id, "name": external_id})
            assert r.status_code in (200, 201, 409), r.text

    def write(self, contact: str, text: str = "hello", *, org: str = "org1") -> dict[str, Any]:
        self._n += 1
        r = self.http.post(
            "/v1/inbound-messages", headers=auth(self.p.settings, org=org, role="integration", user="bridge"),
            json={"channel": "whatsapp_cloud", "channel_account": ACCOUNT[org], "contact": {"id": contact},
                  "message": {"id": f"{org}-m{self._n}", "text": text, "sent_at": datetime.now(UTC).isoformat()}},
        )
        assert r.status_code == 202, r.text
        return dict(r.json())


def stream(p: Pipeline, base_url: str | None = None, last_event_id: str | None = None, **claims: str) -> StreamReader:
    reader = StreamReader(base_url or p.base_url, auth(p.settings, **claims), last_event_id)
    reader.wait_started()
    return reader


def room_event(room_id: str, version: int = 1) -> Any:
    def check(events: list[Event]) -> Event | None:
        return next((e for e in events if e.name == "room" and e.data["id"] == room_id
                     and e.data["version"] >= version), None)
    return check


def id_after(check: Any) -> Any:
    """The first event id at or after the event `check` finds (the id a browser would resume from)."""
    def find(events: list[Event]) -> str | None:
        found = check(events)
        if found is None:
            return None
        return next((e.id for e in events[events.index(found):] if e.id is not None), None)
    return find


def has_message(text: str) -> Any:
    return lambda events: next((e for e in events if e.name == "message" and e.data["text"] == text), None)


def test_stream_without_a_token_is_refused(pipeline: Pipeline) -> None:
    r = httpx.get(f"{pipeline.base_url}/v1/stream", timeout=10)
    assert r.status_code == 401
    r = httpx.get(f"{pipeline.base_url}/v1/stream", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert r.status_code == 401


def test_a_hostile_last_event_id_is_refused_or_reset_never_a_500(pipeline: Pipeline) -> None:
    for hostile in ("abc", "-1", "1e5", "7" * 40):
        headers = {**auth(pipeline.settings, role="admin"), "Last-Event-ID": hostile}
        with httpx.stream("GET", f"{pipeline.base_url}/v1/stream", headers=headers, timeout=30) as r:
            if hostile.isdigit():  # a position far beyond the log: reset, then the stream goes on from its end
                assert r.status_code == 200, hostile
                assert next(line for line in r.iter_lines() if line.startswith("event:")) == "event: reset"
            else:
                assert r.status_code == 400, (hostile, r.status_code)
                assert "Last-Event-ID" in r.read().decode()


def test_each_viewer_receives_exactly_what_they_may_see(pipeline: Pipeline) -> None:
    admin = stream(pipeline, org="org1", role="admin", user="admin1")
    agent1 = stream(pipeline, org="org1", role="agent", user="agent1")
    agent2 = stream(pipeline, org="org1", role="agent", user="agent2")
    other_org = stream(pipeline, org="org2", role="admin", user="admin9")
    assert admin.retry == "2000"
    customers = Customers(pipeline)

    room = customers.write("c1", "first words")["room_id"]
    for reader in (admin, agent1, agent2):  # an unassigned room: every agent of the org sees it
        reader.wait_for(room_event(room), what=f"room {room}")
        reader.wait_for(has_message("first words"), what="the message")
    counters = admin.wait_for(lambda evs: [e for e in evs if e.name == "counters" and e.data["unassigned"] == 1],
                              what="counters with the new room")[-1]
    assert counters.data == httpx.get(f"{pipeline.base_url}/v1/inbox/counters",
                                      headers=auth(pipeline.settings, role="admin")).json()

    http = httpx.Client(base_url=pipeline.base_url, timeout=30)
    r = http.post(f"/v1/rooms/{room}/assign", headers=auth(pipeline.settings, role="admin"),
                  json={"agent_id": "agent1"})
    assert r.status_code == 200, r.text
    version = r.json()["version"]  # read-your-writes: wait for this room version on the stream
    assigned = agent1.wait_for(room_event(room, version), what="the assignment")
    assert assigned.data["assignee"] == "agent1"
    hidden = agent2.wait_for(lambda evs: next((e for e in evs if e.name == "room_hidden"), None), what="room_hidden")
    assert hidden.data == {"id": room, "version": version}
    seen_by_agent2 = len(agent2.snapshot())

    customers.write("c1", "secret follow-up")
    admin.wait_for(has_message("secret follow-up"), what="the follow-up")
    agent1.wait_for(has_message("secret follow-up"), what="the follow-up")
    customers.write("c9", "a marker for agent2")  # a later, unassigned room: agent2 has read past the follow-up
    agent2.wait_for(has_message("a marker for agent2"), what="the marker")
    after_hidden = agent2.snapshot()[seen_by_agent2:]
    assert room not in rooms_seen(after_hidden), "agent2 heard about a room assigned to agent1"
    assert not any(e.name == "message" and e.data["text"] == "secret follow-up" for e in agent2.snapshot())
    assert rooms_seen(other_org.snapshot()) == set(), "a room crossed organizations"
    assert all(e.data["statuses"]["all"] == 0 for e in other_org.named("counters"))


def test_resuming_with_last_event_id_delivers_every_change_after_it_and_a_position_beyond_the_log_resets(pipeline: Pipeline) -> None:
    customers = Customers(pipeline)
    first = stream(pipeline, role="admin")
    room = customers.write("c1", "one")["room_id"]
    first.wait_for(room_event(room), what="room after message one")
    resume_from = first.wait_for(id_after(room_event(room)), what="an id after message one")
    for text in ("two", "three", "four"):
        customers.write("c2", text)
    first.wait_for(has_message("four"), what="message four")

    resumed = StreamReader(pipeline.base_url, auth(pipeline.settings, role="admin"), resume_from)
    resumed.wait_for(has_message("four"), what="message four after resuming")
    texts = [e.data["text"] for e in resumed.named("message")]
    assert texts == ["two", "three", "four"]
    assert not resumed.named("reset")

    # A position the log never reached (another deployment's, a client's bug): reset, then the log's end.
    end = query(pipeline.settings, "SELECT max(position) FROM room_changes")[0][0]
    ahead = StreamReader(pipeline.base_url, auth(pipeline.settings, role="admin"), str(end + 1_000_000))
    reset = ahead.wait_for(lambda evs: evs[0] if evs else None, what="the first event")
    assert reset.name == "reset" and reset.data == {"reason": "unknown position", "position": end}
    counters = ahead.wait_for(lambda evs: next((e for e in evs if e.name == "counters"), None), what="counters")
    assert int(counters.id or 0) == end
    customers.write("c3", "five")
    ahead.wait_for(has_message("five"), what="news after the reset")
    assert [e.data["text"] for e in ahead.named("message")] == ["five"]


def test_a_resume_point_older_than_the_retention_gets_reset(settings: Settings, tmp_path: Path) -> None:
    p = start_pipeline(settings, tmp_path, stream_retention_s=1.0)
    try:
        customers = Customers(p)
        first = stream(p, role="admin")
        customers.write("c1", "soon forgotten")
        first.wait_for(has_message("soon forgotten"), what="the message")
        old = first.last_id
        assert old is not None
        customers.write("c1", "later, also forgotten")  # the change right after `old` is pruned too
        wait_until(lambda: query(p.settings, "SELECT pruned_upto FROM room_changes_horizon")[0][0] > int(old),
                   timeout=60, what="the worker to prune the change log")

        resumed = StreamReader(p.base_url, auth(p.settings, role="admin"), old)
        reset = resumed.wait_for(lambda evs: evs[0] if evs else None, what="the first event")
        assert reset.name == "reset" and reset.data["reason"] == "expired"
        resumed.wait_started()  # then it follows the log from its end: counters with a fresh id
        assert int(resumed.last_id or 0) >= int(old)
        customers.write("c2", "after the reset")
        resumed.wait_for(has_message("after the reset"), what="news after the reset")
    finally:
        p.stop_all()


def test_an_api_process_frozen_past_the_retention_resets_its_open_streams_when_it_wakes(
        settings: Settings, tmp_path: Path) -> None:
    """The hub's own reader falls behind the pruning: its streams cannot be served the pruned
    changes, so each gets `reset` (reason `expired`), then follows the log from its end."""
    p = start_pipeline(settings, tmp_path, stream_retention_s=1.0)
    (tmp_path / "writer").mkdir()
    writer = Pipeline(http_settings(p.settings), tmp_path / "writer")  # takes the writes while `p`'s API sleeps
    writer.start("api")
    try:
        writer.wait_for_api()
        customers = Customers(writer)
        frozen = stream(p, role="admin")
        customers.write("c1", "before the freeze")
        frozen.wait_for(has_message("before the freeze"), what="the message")
        seen = int(frozen.last_id or 0)
        api = p.processes.running["api"]
        api.send(signal.SIGSTOP)
        try:
            customers.write("c1", "while frozen")  # pruned before the API wakes: it never sees it
            customers.write("c2", "also while frozen")
            wait_until(lambda: query(p.settings, "SELECT pruned_upto FROM room_changes_horizon")[0][0] > seen + 1,
                       timeout=60, what="the worker to prune past the frozen stream's position")
        finally:
            api.send(signal.SIGCONT)
        reset = frozen.wait_for(lambda evs: next((e for e in evs if e.name == "reset"), None), what="the reset")
        assert reset.data["reason"] == "expired"
        events = frozen.snapshot()
        assert not [e for e in events[events.index(reset):] if e.name == "message" and "frozen" in e.data["text"]]
        counters = frozen.wait_for(lambda evs: next((e for e in evs[evs.index(reset):] if e.name == "counters"), None),
                                   what="counters after the reset")
        assert int(counters.id or 0) > seen
        customers.write("c3", "after waking")
        frozen.wait_for(has_message("after waking"), what="news after the reset")
        assert frozen.error is None
    finally:
        writer.stop_all()
        p.stop_all()


def test_two_api_processes_both_deliver(pipeline: Pipeline, tmp_path: Path) -> None:
    (tmp_path / "second").mkdir()
    second = Pipeline(http_settings(pipeline.settings), tmp_path / "second")
    second.start("api")
    try:
        second.wait_for_api()
        on_first = stream(pipeline, role="admin")
        on_second = stream(pipeline, base_url=second.base_url, role="admin")
        customers = Customers(pipeline)
        for n in range(5):
            customers.write(f"c{n}", f"hello {n}")
        for reader in (on_first, on_second):
            reader.wait_for(has_message("hello 4"), what="the last message")
            assert sorted(e.data["text"] for e in reader.named("message")) == [f"hello {n}" for n in range(5)]
    finally:
        second.stop_all()


def test_a_killed_listener_connection_reconnects_and_nothing_is_missed(pipeline: Pipeline) -> None:
    reader = stream(pipeline, role="admin")
    customers = Customers(pipeline)
    name = listener_name(pipeline.settings.db_schema)
    killed = query(pipeline.settings, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE application_name = %s", (name,))
    assert killed == [(True,)]
    for n in range(10):  # while the API has no listening connection
        customers.write(f"c{n}", f"during the outage {n}")
    reader.wait_for(has_message("during the outage 9"), what="every message of the outage")
    assert sorted(e.data["text"] for e in reader.named("message")) == sorted(f"during the outage {n}" for n in range(10))
    wait_until(lambda: query(pipeline.settings, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                             (name,))[0][0] == 1, what="the listener to be back")
    customers.write("c0", "after the outage")
    reader.wait_for(has_message("after the outage"), what="news after reconnecting")


def test_a_slow_reader_gets_reset_and_is_disconnected(settings: Settings, tmp_path: Path) -> None:
    p = start_pipeline(settings, tmp_path, stream_buffer=2)
    try:
        customers = Customers(p)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing fills up fast
        sock.connect(("127.0.0.1", p.settings.http_port))
        token = auth(p.settings, role="admin")["Authorization"]
        sock.sendall(f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\n\r\n".encode())
        big = "x" * 3000
        n = 0
        while "fell" not in p.log_tail("api", 200):  # write until the API gives up on this stream
            for _ in range(5):
                customers.write(f"c{n % 50}", f"{n} {big}")
                n += 1
            assert n < 3000, "the API never bounded the slow stream"
        sock.settimeout(30)
        received = b""
        # Now read: the reset, then the end of the response (the last chunk; the connection itself
        # stays open for HTTP keep-alive) or the server closing the connection.
        while not received.endswith(b"\r\n0\r\n\r\n") and (chunk := sock.recv(65536)):
            received += chunk
        assert b"event: reset" in received and b'"too slow"' in received
        assert httpx.get(f"{p.base_url}/healthz", timeout=10).status_code == 200
        sock.close()
    finally:
        p.stop_all()


def test_an_idle_stream_gets_heartbeats_and_a_busy_one_its_events(settings: Settings, tmp_path: Path) -> None:
    p = start_pipeline(settings, tmp_path, stream_heartbeat_s=0.3)
    try:
        reader = stream(p, role="admin")
        wait_until(lambda: reader.comments >= 3, timeout=30, what="heartbeats on an idle stream")
        customers = Customers(p)
        customers.write("c1", "between heartbeats")
        reader.wait_for(has_message("between heartbeats"), what="the message")
        beats = reader.comments
        wait_until(lambda: reader.comments >= beats + 2, timeout=30, what="heartbeats after the events")
        assert reader.error is None and not reader.ended.is_set()
    finally:
        p.stop_all()


def test_sigterm_with_open_streams_exits_promptly(pipeline: Pipeline) -> None:
    readers = [stream(pipeline, role="admin") for _ in range(3)]
    proc = pipeline.processes.running.pop("api").popen
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    assert time.monotonic() - started < 10
    for reader in readers:
        assert reader.ended.wait(10)


def test_a_replay_tells_open_streams_to_reset(pipeline: Pipeline) -> None:
    import subprocess
    import sys

    from tests.support import env_for

    customers = Customers(pipeline)
    customers.write("c1", "before the replay")
    reader = stream(pipeline, role="admin")
    pipeline.wait_until_projected()
    subprocess.run([sys.executable, "-m", "inbox.entrypoints.cli", "replay"], env=env_for(pipeline.settings),
                   check=True, capture_output=True, timeout=120)
    reset = reader.wait_for(lambda evs: next((e for e in evs if e.name == "reset"), None), what="reset")
    assert reset.data["reason"] == "rebuilt"
    customers.write("c1", "after the replay")
    reader.wait_for(has_message("after the replay"), what="news after the replay")
