"""The example consumer's bookkeeping (examples/consumer/consumer.py), without a broker."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from inbox.adapters.wire import event_id

ROOT = Path(__file__).resolve().parents[2]
ROOM = "27f0e52a-5c14-5559-a06b-0d1eb9662ec1"


def load_example() -> ModuleType:
    path = ROOT / "examples" / "consumer" / "consumer.py"
    spec = importlib.util.spec_from_file_location("inbox_example_consumer", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


example = load_example()


@pytest.fixture
def checker() -> Any:
    return example.EventChecker(example.load_validators(ROOT / "docs" / "events"))


def reopened(version: int, type_: str = "RoomReopened") -> bytes:
    return json.dumps({
        "id": event_id(ROOM, version), "type": type_, "schema_version": 1, "org_id": "org-acme", "room_id": ROOM,
        "version": version, "occurred_at": "2025-03-01T09:15:03.100000+00:00", "data": {"reason": "inbound_message"},
    }).encode()


def test_a_missing_version_that_arrives_late_fills_its_gap_and_is_not_a_duplicate(checker: Any) -> None:
    outcomes = [checker.handle(ROOM.encode(), reopened(v)) for v in (1, 2, 5, 3, 3, 4)]

    assert outcomes == ["applied", "applied", "applied", "applied", "duplicate", "applied"]
    s = checker.summary
    assert (s.gaps, s.missing, s.late, s.duplicates) == (1, 0, 2, 1)


def test_an_unknown_type_is_skipped_but_keeps_the_room_versions_contiguous(checker: Any) -> None:
    outcomes = [checker.handle(ROOM.encode(), reopened(1)), checker.handle(ROOM.encode(), reopened(2, "RoomSnoozed")),
                checker.handle(ROOM.encode(), reopened(3))]

    assert outcomes == ["applied", "unknown_type", "applied"]
    assert (checker.summary.unknown_types, checker.summary.gaps) == (1, 0)


def test_a_key_that_is_not_the_room_id_is_invalid(checker: Any) -> None:
    assert checker.handle(b"another-room", reopened(1)) == "invalid"


def test_a_newer_schema_version_is_invalid_rather_than_guessed(checker: Any) -> None:
    newer = json.loads(reopened(1))
    newer["schema_version"] = 2
    assert checker.handle(ROOM.encode(), json.dumps(newer).encode()) == "invalid"
