"""Holding the event store's commit lock, so tests can queue work behind a commit deterministically."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from inbox.config import Settings
from inbox.adapters.postgres import conninfo


@contextmanager
def commits_held(settings: Settings) -> Iterator[None]:
    """While inside, every commit to the event store waits (reads do not): the store takes
    `LOCK TABLE ... IN EXCLUSIVE MODE` per commit, which this session already holds.
    Leave within the store's lock timeout (10 s)."""
    with psycopg.connect(conninfo(settings)) as conn:
        conn.execute("LOCK TABLE inbox_events IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()
