"""A downstream consumer of the Inbox events topic, written to be copied (see docs/consumers.md).

It reads `inbox.events` from the start with confluent-kafka (librdkafka), and for every message:
1. parses the JSON and upcasts older schema versions to the one it understands;
2. validates it against the published JSON Schemas (docs/events/*.json): envelope, then its type;
3. drops duplicates on (room_id, version): delivery is at least once, and after a broker loss the
   relay publishes everything again, so the same event can arrive more than once;
4. detects gaps: per room, versions run 1, 2, 3...; a jump means events are missing (and may
   still arrive, late, from a re-publication);
5. "applies" it (here: counts it) and prints a running summary.

It depends on nothing from the Inbox code base: `pip install confluent-kafka jsonschema`, copy
this file and the schema directory, and replace `apply()` with your own logic.

    python consumer.py --bootstrap localhost:9092 --topic inbox.events --schemas docs/events

Without --group it assigns itself every partition and starts at offset 0 on each run (a
replayable, stateless reader; no group join). With --group it joins a consumer group, starts
from the beginning only the first time (auto.offset.reset=earliest), and commits each offset
after the event was applied: that is at-least-once, so keep the de-duplication. `-X KEY=VALUE`
passes any librdkafka consumer property (security.protocol, sasl.*, session.timeout.ms, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

log = logging.getLogger("inbox-consumer")

SCHEMA_VERSION = 1  # the newest event shape this consumer understands
DEFAULT_SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "events"


# ---- validation and upcasting ---------------------------------------------------------------
def load_validators(schema_dir: Path) -> dict[str, Draft202012Validator]:
    """One validator per file: "envelope" and one per event type."""
    schemas = {p.stem: json.loads(p.read_text()) for p in sorted(Path(schema_dir).glob("*.json"))}
    if "envelope" not in schemas:
        raise FileNotFoundError(f"no envelope.json in {schema_dir}")
    registry: Registry = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas.values()
    )
    return {name: Draft202012Validator(s, registry=registry) for name, s in schemas.items()}


class InvalidEvent(ValueError):
    pass


def upcast(event: dict[str, Any]) -> dict[str, Any]:
    """Bring an older event shape to SCHEMA_VERSION (mirrors `inbox.adapters.wire.upcast`).

    Version 0 (drafts before `schema_version` existed) called RoomResolved's reason `cause`;
    messages published before kinds and attachments existed are plain text without attachments.
    """
    version = event.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidEvent(f"schema_version must be a non-negative integer, got {version!r}")
    if version > SCHEMA_VERSION:
        # Newer than this code: do not guess. Upgrade the consumer (schemas and upcasters) first.
        raise InvalidEvent(f"schema_version {version} is newer than this consumer ({SCHEMA_VERSION})")
    data = event.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent("data must be a JSON object")
    if version == 0:
        data = dict(data)
        if event.get("type") == "RoomResolved" and "cause" in data:
            data["reason"] = data.pop("cause")
        event = {**event, "schema_version": 1, "data": data}
    if event.get("type") in ("MessageReceived", "MessageSent") and not {"kind", "attachments"} <= data.keys():
        event = {**event, "data": {"kind": "text", "attachments": [], **data}}
    return event


# ---- the consumer's state ---------------------------------------------------------------------
@dataclass
class Summary:
    messages: int = 0            # everything read from the topic
    applied: int = 0             # valid, new events
    by_type: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0          # (room_id, version) already applied
    gaps: int = 0                # times a room's version jumped
    missing: int = 0             # versions still missing across all rooms
    late: int = 0                # missing versions that arrived later (filled a gap)
    invalid: int = 0             # not JSON, or not valid against the schemas
    unknown_types: int = 0       # valid envelope, type this consumer does not know (skipped)
    rooms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages, "applied": self.applied, "by_type": dict(sorted(self.by_type.items())),
            "rooms": self.rooms, "duplicates": self.duplicates, "gaps": self.gaps, "missing": self.missing,
            "late": self.late, "invalid": self.invalid, "unknown_types": self.unknown_types,
        }

    def line(self) -> str:
        types = " ".join(f"{t}={n}" for t, n in sorted(self.by_type.items()))
        return (
            f"messages={self.messages} applied={self.applied} rooms={self.rooms} duplicates={self.duplicates}"
            f" gaps={self.gaps} missing={self.missing} late={self.late} invalid={self.invalid}"
            f" unknown_types={self.unknown_types} | {types}"
        )


@dataclass
class _Room:
    last: int = 0                                   # highest version applied
    missing: set[int] = field(default_factory=set)  # versions skipped by a gap, not yet seen


class EventChecker:
    """Validate, de-duplicate, detect gaps. In production, keep `_rooms` where you keep your state
    (same transaction as the effect of applying the event), so de-duplication survives restarts."""

    def __init__(self, validators: dict[str, Draft202012Validator]) -> None:
        self._validators = validators
        self._rooms: dict[str, _Room] = {}
        self.summary = Summary()

    def handle(self, key: bytes | None, value: bytes | None) -> str:
        """Returns what happened: applied | duplicate | invalid | unknown_type."""
        s = self.summary
        s.messages += 1
        try:
            event = self._valid_event(key, value)
        except InvalidEvent as e:
            s.invalid += 1
            # A real consumer sends (key, value, reason) to a dead-letter topic or table here.
            log.warning("invalid event at key %s: %s", key, e)
            return "invalid"
        room = self._rooms.get(event["room_id"])
        if room is None:
            room = self._rooms[event["room_id"]] = _Room()
            s.rooms += 1
        version = event["version"]
        if version <= room.last and version not in room.missing:
            s.duplicates += 1
            return "duplicate"
        if version in room.missing:
            room.missing.discard(version)
            s.missing -= 1
            s.late += 1
        elif version > room.last + 1:
            skipped = set(range(room.last + 1, version))
            room.missing |= skipped
            s.gaps += 1
            s.missing += len(skipped)
            log.warning("gap in room %s: versions %s..%s missing", event["room_id"], room.last + 1, version - 1)
        room.last = max(room.last, version)
        if event["type"] not in self._validators:
            s.unknown_types += 1  # skip types you do not know; versions still count for gaps
            return "unknown_type"
        apply(event)
        s.applied += 1
        s.by_type[event["type"]] += 1
        return "applied"

    def _valid_event(self, key: bytes | None, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise InvalidEvent("empty message")
        try:
            event = json.loads(value)
        except ValueError as e:
            raise InvalidEvent(f"not JSON: {e}") from e
        if not isinstance(event, dict):
            raise InvalidEvent("not a JSON object")
        event = upcast(event)
        for schema in ("envelope", event.get("type")):
            validator = self._validators.get(str(schema))
            if validator is None:
                continue  # unknown type: the envelope was checked
            error = next(iter(validator.iter_errors(event)), None)
            if error is not None:
                path = "/".join(map(str, error.absolute_path)) or "(event)"
                raise InvalidEvent(f"{schema}: {path}: {error.message}")
        if key is not None and key.decode(errors="replace") != event["room_id"]:
            raise InvalidEvent(f"key {key!r} is not the room_id {event['room_id']}")
        return event


def apply(event: dict[str, Any]) -> None:
    """Your logic goes here (update a table, call a service...). Must be safe to run once per event."""


# ---- the Kafka loop -------------------------------------------------------------------------
def run(
    bootstrap: str, topic: str, schema_dir: Path = DEFAULT_SCHEMAS, *, group: str | None = None,
    stop_after: int | None = None, idle_exit_s: float | None = None, report_every: int = 1000,
    config: dict[str, str] | None = None,
) -> Summary:
    checker = EventChecker(load_validators(schema_dir))
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        # librdkafka wants a group id even for manual assignment; nothing joins or commits then.
        "group.id": group or "inbox-example-consumer",
        "enable.auto.commit": False,       # commit after applying, never before: at least once
        "auto.offset.reset": "earliest",   # a new group starts at the beginning of the topic
        "enable.partition.eof": False,
        **(config or {}),                  # -X: credentials, timeouts, ... (librdkafka CONFIGURATION.md)
    })
    try:
        if group:
            consumer.subscribe([topic])
        else:
            metadata = consumer.list_topics(topic, timeout=30)
            partitions = metadata.topics[topic].partitions
            if metadata.topics[topic].error is not None or not partitions:
                raise KafkaException(metadata.topics[topic].error or f"topic {topic} has no partitions")
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
        last_message = time.monotonic()
        while stop_after is None or checker.summary.messages < stop_after:
            msg: Message | None = consumer.poll(0.5)
            if msg is None:
                if idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                    break
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(msg.error())
            last_message = time.monotonic()
            checker.handle(msg.key(), msg.value())
            if group:
                consumer.commit(message=msg, asynchronous=True)
            if checker.summary.messages % report_every == 0:
                print(checker.summary.line(), file=sys.stderr, flush=True)
        if group and checker.summary.messages:
            try:
                consumer.commit(asynchronous=False)  # the positions reached, before leaving the group
            except KafkaException as e:
                if e.args[0].code() != KafkaError._NO_OFFSET:
                    raise
                # "No offset stored": the asynchronous commits above already committed everything.
    finally:
        consumer.close()
    return checker.summary


def _property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers, host:port[,host:port]")
    parser.add_argument("--topic", default="inbox.events")
    parser.add_argument("--schemas", type=Path, default=DEFAULT_SCHEMAS, help="directory of the event JSON Schemas")
    parser.add_argument("--group", help="join this consumer group (commits offsets) instead of reading everything")
    parser.add_argument("--stop-after", type=int, help="stop after this many messages")
    parser.add_argument("--idle-exit", type=float, help="stop after this many seconds without a message")
    parser.add_argument("--report-every", type=int, default=1000, help="print the summary every N messages")
    parser.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    parser.add_argument("-X", dest="config", action="append", default=[], type=_property, metavar="KEY=VALUE",
                        help="a librdkafka consumer property, e.g. -X session.timeout.ms=10000 (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = run(
        args.bootstrap, args.topic, args.schemas, group=args.group, stop_after=args.stop_after,
        idle_exit_s=args.idle_exit, report_every=args.report_every, config=dict(args.config),
    )
    print(json.dumps(summary.as_dict()) if args.json else summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
