"""Repair a channel fact so it can be stored, encoded and projected, instead of refusing it.

A channel (Meta) redelivers whatever we refuse, forever; so its facts are repaired, never
refused for their values: NUL and unpaired surrogates become U+FFFD, over-long texts are cut,
a timestamp outside the sane range (domain/limits.py) becomes the arrival time with the raw value
kept, free-form objects become bounded JSON, over-long dedup keys are hashed. Ids are only
cleaned, never cut (a cut id could name someone else): an over-long id is refused by the domain
rules for that one fact. Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from channels.facts import Fact, Ignored
from domain import limits

TEXT_FIELDS = {
    "text": limits.MAX_TEXT,
    "contact_name": limits.MAX_NAME,
    "contact_handle": limits.MAX_HANDLE,
    "contact_phone": limits.MAX_PHONE,
    "kind": limits.MAX_KIND,
    "status": limits.MAX_KIND,
}
ID_FIELDS = ("channel_account", "contact_id", "channel_message_id", "post_id", "sender_id", "recipient_id")
KEY_FIELDS = ("edit_key", "status_key")
TIME_FIELDS = ("sent_at", "edited_at", "removed_at", "occurred_at")
JSON_LIST_FIELDS = ("attachments", "errors")
# A timestamp outside the sane range is replaced by the arrival time; this attachment keeps the raw one.
ORIGINAL_TIME = "original_timestamp"


@dataclass(frozen=True)
class Repair:
    field: str
    reason: str  # unstorable_characters | truncated | time_out_of_range | bounded_json | key_hashed | too_many_items
    raw: str | None = None  # time_out_of_range: the channel's own timestamp


def sanitize(fact: Fact, received_at: datetime) -> tuple[Fact, list[Repair]]:
    """The storable version of `fact` and what had to change (empty: nothing)."""
    if isinstance(fact, Ignored):
        return fact, []
    changes: dict[str, Any] = {}
    repairs: list[Repair] = []
    fields, times = _plan(type(fact))
    for name, kind in fields:
        value = getattr(fact, name)
        if value is None:
            continue
        if kind is _TEXT:
            cleaned, notes = limits.clean_text(value, TEXT_FIELDS[name])
            _note(name, notes, cleaned, value, changes, repairs)
        elif kind is _ID:
            cleaned, notes = limits.clean_text(value, max_length=len(value))
            _note(name, notes, cleaned, value, changes, repairs)
        elif kind is _KEY:
            cleaned, notes = limits.clean_text(value, limits.MAX_MESSAGE_ID)
            if notes:
                changes[name] = "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
                repairs.append(Repair(name, "key_hashed"))
        else:
            items = list(value)
            if name == "errors" and len(items) > limits.MAX_ATTACHMENTS:
                items = items[: limits.MAX_ATTACHMENTS]
                repairs.append(Repair(name, "too_many_items"))
            bounded = []
            for item in items:
                clean, changed = limits.bounded_json(item if isinstance(item, dict) else {"value": item})
                if changed or not isinstance(item, dict):
                    repairs.append(Repair(name, "bounded_json"))
                bounded.append(clean)
            if len(items) != len(value) or any(r.field == name for r in repairs):
                changes[name] = tuple(bounded)
    for name in times:
        at = getattr(fact, name)
        if at is None or (at.tzinfo is not None and limits.in_range(at, received_at)):
            continue
        changes[name] = received_at
        repairs.append(Repair(name, "time_out_of_range", at.isoformat()))
        kept = {"type": ORIGINAL_TIME, "field": name, "value": at.isoformat()}
        attachments = changes.get("attachments", getattr(fact, "attachments", None))
        if attachments is not None and len(attachments) < limits.MAX_ATTACHMENTS:
            changes["attachments"] = (*attachments, kept)
        elif getattr(fact, "errors", None) is not None:
            changes["errors"] = (*changes.get("errors", fact.errors), kept)  # type: ignore[union-attr]
    return (dataclasses.replace(fact, **changes) if changes else fact), repairs  # type: ignore[arg-type]


_TEXT, _ID, _KEY, _JSON = "text", "id", "key", "json"


@functools.cache
def _plan(cls: type) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """A fact class's fields to repair, in order, with their kind; and its timestamp fields (the
    same for every fact of the class: looked up once, not per fact)."""
    fields = []
    for field in dataclasses.fields(cls):
        name = field.name
        if name in TEXT_FIELDS:
            fields.append((name, _TEXT))
        elif name in ID_FIELDS:
            fields.append((name, _ID))
        elif name in KEY_FIELDS:
            fields.append((name, _KEY))
        elif name in JSON_LIST_FIELDS:
            fields.append((name, _JSON))
    names = {field.name for field in dataclasses.fields(cls)}
    return tuple(fields), tuple(name for name in TIME_FIELDS if name in names)


def _note(name: str, notes: list[str], cleaned: str, value: str, changes: dict[str, Any], repairs: list[Repair]) -> None:
    if notes:
        changes[name] = cleaned
        repairs.extend(Repair(name, n) for n in notes)
