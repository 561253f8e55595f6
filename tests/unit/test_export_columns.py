"""The Parquet export's data columns are the union of the `data` fields in docs/events/*.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inbox.adapters.export import DATA_FIELDS

EVENTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "events"


def column_kind(prop: dict[str, Any]) -> str:
    types = prop.get("type", "string")
    types = {types} if isinstance(types, str) else set(types)
    types.discard("null")
    if types & {"array", "object"}:
        return "json"
    if prop.get("format") == "date-time":
        return "timestamp"
    if types == {"integer"}:
        return "int64"
    if types == {"boolean"}:
        return "bool"
    assert types == {"string"}, prop
    return "string"


def test_every_data_field_of_every_event_schema_has_a_typed_column() -> None:
    union: dict[str, str] = {}
    for path in sorted(EVENTS_DIR.glob("*.json")):
        if path.stem == "envelope":
            continue
        for field, prop in json.loads(path.read_text())["properties"]["data"]["properties"].items():
            kind = column_kind(prop)
            assert union.setdefault(field, kind) == kind, f"{path.stem}.{field} changes type across events"
    assert DATA_FIELDS == union
