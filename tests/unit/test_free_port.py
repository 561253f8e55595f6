"""`free_port` never hands out a port promised to something that has not bound it yet: `inbox dev`
once started its broker on the port chosen for its API (the kernel gives a just-released port out
again), and the API then could not bind it."""

from __future__ import annotations

import socket
from typing import Self

import pytest

from inbox.adapters import embedded
from inbox.adapters.embedded import free_port

PICKED: list[int] = []  # the ports the kernel picks, in order


class _Socket:
    """A socket that binds to the next port of PICKED."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        assert address == ("127.0.0.1", 0)
        self.port = PICKED.pop(0)

    def getsockname(self) -> tuple[str, int]:
        return "127.0.0.1", self.port


def test_a_port_to_avoid_is_passed_over_for_the_next_free_one(monkeypatch: pytest.MonkeyPatch) -> None:
    PICKED[:] = [46779, 46779, 40001]
    monkeypatch.setattr(embedded.socket, "socket", _Socket)

    assert free_port(avoid={46779}) == 40001
    assert PICKED == []


def test_without_ports_to_avoid_it_is_a_port_nothing_listens_on() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free: it binds
