"""What a stored value may be: the limits and rules every write path applies (docs/operations.md).

One home for them: the aggregates check them (InvalidCommand), the API turns the same checks
into request validation (422), and the Meta webhook path repairs what it may not refuse
(`clean_text`, `bounded_json`). Whatever passes can be stored by PostgreSQL, encoded by both the
event store's JSON transcoder and the relay's orjson, and applied by the projections.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.errors import InvalidCommand
from domain.visibility import ALL, NOBODY

# ---- lengths (characters) -------------------------------------------------------------------
MAX_TEXT = 65_536  # message / reply / edit text
MAX_NAME = 256  # contact name, channel account name
MAX_ID = 256  # contact id, agent / user id, post id, channel account external id
MAX_MESSAGE_ID = 512  # a channel's message id (Meta's mids are long)
MAX_HANDLE = 256  # contact handle (@username)
MAX_PHONE = 64
MAX_KIND = 64  # message kind ("text", "image", ...)
MAX_SECRET = 256  # a channel account's app secret

# ---- channel-provided free-form JSON (attachments, postback payloads, referrals, errors) -----
MAX_ATTACHMENTS = 20  # per message
MAX_JSON_DEPTH = 8  # nesting levels below the attachment itself
MAX_JSON_BYTES = 16_384  # approximate encoded size of one attachment / error object
MAX_JSON_STRING = 4_096  # one string inside such an object
MAX_JSON_INT = 2**63 - 1  # larger integers (either sign) become strings: orjson stops at 64 bits

# ---- timestamps ------------------------------------------------------------------------------
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(days=1)  # a timestamp may be at most this far ahead of the server's clock

# Values that name "nobody" and "everybody" in the counter keys (domain.visibility): never an id.
RESERVED_IDS = frozenset({ALL, NOBODY})

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates: not UTF-8, not PostgreSQL text
_CONTROL = re.compile("[\x00-\x1f\x7f]")


# ---- checks (raise InvalidCommand naming the field) -----------------------------------------
def check_text(value: str, field: str, max_length: int = MAX_TEXT) -> str:
    """Storable text: no NUL, no lone surrogate, at most `max_length` characters."""
    if not isinstance(value, str):
        raise InvalidCommand(f"{field} must be a string")
    if _UNSTORABLE.search(value):
        raise InvalidCommand(f"{field} must not contain NUL characters or unpaired surrogates")
    if len(value) > max_length:
        raise InvalidCommand(f"{field} is longer than {max_length} characters")
    return value


def check_optional_text(value: str | None, field: str, max_length: int) -> str | None:
    return None if value is None else check_text(value, field, max_length)


def check_identifier(value: str, field: str, max_length: int = MAX_ID) -> str:
    """An id: non-empty, bounded, no control characters, not a reserved value."""
    check_text(value, field, max_length)
    if not value.strip():
        raise InvalidCommand(f"{field} is required")
    if _CONTROL.search(value):
        raise InvalidCommand(f"{field} must not contain control characters")
    if value in RESERVED_IDS:
        raise InvalidCommand(f"{field} must not be {value!r} (a reserved value)")
    return value


def check_moment(at: datetime, field: str, now: datetime) -> datetime:
    """A timestamp with a timezone between EARLIEST and now + MAX_FUTURE."""
    if at.tzinfo is None:
        raise InvalidCommand(f"{field} must carry a timezone")
    if not in_range(at, now):
        raise InvalidCommand(
            f"{field} must lie between {EARLIEST.date().isoformat()} and one day after the server's clock"
        )
    return at


def in_range(at: datetime, now: datetime) -> bool:
    return EARLIEST <= at <= now + MAX_FUTURE


def check_json(value: Any, field: str) -> Any:
    """A free-form object must already be bounded, storable JSON (what `bounded_json` returns)."""
    _, changed = bounded_json(value)
    if changed:
        raise InvalidCommand(
            f"{field} must be JSON of at most {MAX_JSON_DEPTH} levels and about {MAX_JSON_BYTES} bytes,"
            " without NUL, unpaired surrogates, non-finite numbers or integers beyond 64 bits"
        )
    return value


# ---- repairs (for input we must not refuse: channel webhooks) ---------------------------------
def clean_text(value: str, max_length: int = MAX_TEXT) -> tuple[str, list[str]]:
    """(storable text, what was repaired): NUL / lone surrogates → U+FFFD, then truncation."""
    notes = []
    if _UNSTORABLE.search(value):
        value = _UNSTORABLE.sub(REPLACEMENT, value)
        notes.append("unstorable_characters")
    if len(value) > max_length:
        value = value[:max_length]
        notes.append("truncated")
    return value, notes


def bounded_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH, max_bytes: int = MAX_JSON_BYTES) -> tuple[Any, bool]:
    """(a JSON value every encoder here agrees on, whether anything had to change).

    Strings are cleaned and cut to MAX_JSON_STRING; containers deeper than `max_depth` become
    the string "[nested too deep]"; once about `max_bytes` are spent, further items are dropped;
    NaN/Infinity become null; integers beyond 64 bits become strings; tuples become lists;
    anything else becomes its `str`. Never recursive beyond `max_depth`, so any input is safe.
    """
    budget = [max_bytes]
    changed = [False]

    def text(s: str, limit: int) -> str:
        cleaned, notes = clean_text(s, max(0, min(MAX_JSON_STRING, limit)))
        if notes:
            changed[0] = True
        budget[0] -= len(cleaned) + 2
        return cleaned

    def walk(v: Any, depth: int) -> Any:
        if v is None or isinstance(v, bool):
            budget[0] -= 5
            return v
        if isinstance(v, int):
            budget[0] -= 20
            if -MAX_JSON_INT <= v <= MAX_JSON_INT:
                return v
            changed[0] = True
            return str(v) if v.bit_length() < 10_000 else ("-" if v < 0 else "") + "[integer too large]"
        if isinstance(v, float):
            budget[0] -= 24
            if math.isfinite(v):
                return v
            changed[0] = True
            return None
        if isinstance(v, str):
            return text(v, budget[0])
        if isinstance(v, (Mapping, list, tuple)):
            if depth >= max_depth:
                changed[0] = True
                budget[0] -= 20
                return "[nested too deep]"
            if isinstance(v, tuple):
                changed[0] = True
            budget[0] -= 2
            if isinstance(v, Mapping):
                out: dict[str, Any] = {}
                for k, item in v.items():
                    if budget[0] <= 0:
                        changed[0] = True
                        break
                    if not isinstance(k, str):
                        changed[0] = True
                        k = str(k)
                    key = text(k, MAX_ID)
                    out[key] = walk(item, depth + 1)
                return out
            items = []
            for item in v:
                if budget[0] <= 0:
                    changed[0] = True
                    break
                items.append(walk(item, depth + 1))
            return items
        changed[0] = True
        return text(str(v), budget[0])

    result = walk(value, 0)
    return result, changed[0]
