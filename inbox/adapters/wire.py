"""The one place where domain events become the downstream contract of SPEC §4 (and back).

Wire event: {"id", "type", "schema_version", "org_id", "room_id", "version", "occurred_at", "data"}.
`id` is derived from (room id, version), so a re-published event always carries the same id.
Old schema versions are upcast on read (`upcast`), so consumers only ever see the newest shape.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson

from domain.room import Room

SCHEMA_VERSION = 1
EVENT_ID_NAMESPACE = uuid5(NAMESPACE_URL, "https://inbox.example/events")

ROOM_EVENT_TYPES: dict[type, str] = {
    Room.RoomOpened: "RoomOpened",
    Room.MessageReceived: "MessageReceived",
    Room.MessageSent: "MessageSent",
    Room.RoomAssigned: "RoomAssigned",
    Room.RoomResolved: "RoomResolved",
    Room.RoomReopened: "RoomReopened",
    Room.MessageEdited: "MessageEdited",
    Room.MessageRemoved: "MessageRemoved",
    Room.ReplyDeliveryAccepted: "ReplyDeliveryAccepted",
    Room.ReplyDeliveryFailed: "ReplyDeliveryFailed",
    Room.ReplyDeliveryUnknown: "ReplyDeliveryUnknown",
    Room.DeliveryStatusChanged: "DeliveryStatusChanged",
}
EVENT_TYPE_NAMES = frozenset(ROOM_EVENT_TYPES.values())

# Fields of the library's own bookkeeping that are not part of the contract.
_ENVELOPE_FIELDS = {"originator_id", "originator_version", "timestamp", "originator_topic"}


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


def event_id(room_id: UUID | str, version: int) -> str:
    """uuid5(EVENT_ID_NAMESPACE, "<room id>:<version>"), computed without building UUID objects
    (a fifth of reading the event store otherwise; equal to `uuid5`, tests/unit/test_wire.py)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{room_id}:{version}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def to_wire(domain_event: Any) -> dict[str, Any]:
    """Domain event → SPEC §4 dict; every room event carries its room's `org_id`.

    The envelope holds `org_id`; only RoomOpened repeats it in `data` (as SPEC §4 always had it).
    """
    data = {
        k: _plain(v) for k, v in vars(domain_event).items()
        if k not in _ENVELOPE_FIELDS and (k != "org_id" or type(domain_event) is Room.RoomOpened)
    }
    return {
        "id": event_id(domain_event.originator_id, domain_event.originator_version),
        "type": ROOM_EVENT_TYPES[type(domain_event)],
        "schema_version": SCHEMA_VERSION,
        "org_id": domain_event.org_id,
        "room_id": str(domain_event.originator_id),
        "version": domain_event.originator_version,
        "occurred_at": domain_event.timestamp.isoformat(),
        "data": data,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


def encode(wire_event: dict[str, Any]) -> bytes:
    return orjson.dumps(wire_event)


class InvalidWireEvent(ValueError):
    """A message on the topic is not an Inbox event we can read."""


def decode(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """Parse and upcast one wire event; raises InvalidWireEvent with a reason."""
    try:
        event = raw if isinstance(raw, dict) else orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidWireEvent(f"not JSON: {e}") from e
    if not isinstance(event, dict):
        raise InvalidWireEvent("event is not a JSON object")
    missing = [k for k in ("id", "type", "org_id", "room_id", "version", "occurred_at", "data") if k not in event]
    if missing:
        raise InvalidWireEvent(f"missing fields: {', '.join(missing)}")
    _check_envelope(event)
    return upcast(event)


def decode_batch(raws: list[bytes]) -> list[dict[str, Any] | InvalidWireEvent]:
    """`decode` of each message, parsing the whole batch as one JSON array (one parser call).

    If that array does not parse into exactly one value per message (a message is not JSON, or
    not one value), each message is parsed on its own, so every one gets its own verdict.
    """
    try:
        values = orjson.loads(b"[" + b",".join(raws) + b"]") if raws else []
    except (orjson.JSONDecodeError, TypeError):
        values = None
    parsed = values is not None and len(values) == len(raws)
    out: list[dict[str, Any] | InvalidWireEvent] = []
    for value in values if parsed else raws:
        try:
            if parsed and not isinstance(value, dict):
                raise InvalidWireEvent("event is not a JSON object")
            out.append(decode(value))
        except InvalidWireEvent as e:
            out.append(e)
    return out


def _check_envelope(event: dict[str, Any]) -> None:
    """The fields a reader keys, sorts and locks by: a bad one would fail a whole batch, not one event."""
    for name in ("id", "type", "org_id", "room_id", "occurred_at"):
        if not isinstance(event[name], str):
            raise InvalidWireEvent(f"{name} must be a string")
    if not _CANONICAL_UUID.fullmatch(event["room_id"]):
        raise InvalidWireEvent("room_id must be a UUID in canonical form")
    version = event["version"]
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**63:
        raise InvalidWireEvent("version must be a positive 64-bit integer")


def upcast(event: dict[str, Any]) -> dict[str, Any]:
    """Bring an event of any past schema version to SCHEMA_VERSION.

    Version 0 (pre-release drafts) had no `schema_version` and called the resolve reason `cause`.
    """
    version = event.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidWireEvent(f"schema_version must be a non-negative integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise InvalidWireEvent(f"schema_version {version} is newer than this reader ({SCHEMA_VERSION})")
    if not isinstance(event.get("data"), dict):
        raise InvalidWireEvent("data must be a JSON object")
    if version == 0:
        event = dict(event, data=dict(event["data"]))
        if event["type"] == "RoomResolved" and "cause" in event["data"]:
            event["data"]["reason"] = event["data"].pop("cause")
        event["schema_version"] = 1
    if event["type"] in _CONTENT_TYPES and not {"kind", "attachments"} <= event["data"].keys():
        # Published before messages carried their kind and attachments: plain text, no attachments.
        event = dict(event, data={"kind": "text", "attachments": [], **event["data"]})
    if event["type"] == "MessageSent" and "reply_to" not in event["data"]:
        # Published before staff replies could answer a given message.
        event = dict(event, data={**event["data"], "reply_to": None})
    return event


_CONTENT_TYPES = frozenset({"MessageReceived", "MessageSent"})
# What str(UUID(x)) gives: lower-case hex, 8-4-4-4-12 (a tenth of the time of parsing and printing it).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
