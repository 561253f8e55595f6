"""An event's times as the folds read them."""

from __future__ import annotations

from datetime import datetime


def as_datetime(value: str | datetime) -> datetime:
    """An event's time: ISO text as on the wire, or the datetime a replay's reader left it as."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
