"""channels.sanitize: a Meta fact is repaired to fit the limits, never refused for its values;
and no JSON shape makes the parser fail other than with WebhookShapeError."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.facts import DeliveryStatus, InboundMessage, MessageEdit
from channels.meta.parser import WebhookShapeError, parse_webhook
from channels.sanitize import ORIGINAL_TIME, Repair, sanitize
from domain import limits
from domain.channels import Channel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "meta"
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def message(**changes: Any) -> InboundMessage:
    base: dict[str, Any] = dict(
        channel=Channel.WHATSAPP_CLOUD, channel_account="106540352242922", contact_id="16505551234",
        channel_message_id="wamid.1", text="hi", sent_at=NOW,
    )
    return InboundMessage(**{**base, **changes})


def test_a_clean_fact_is_returned_unchanged() -> None:
    fact = message(attachments=({"type": "image", "id": "1"},))
    assert sanitize(fact, NOW) == (fact, [])


def test_nul_and_lone_surrogates_become_the_replacement_character() -> None:
    fact, repairs = sanitize(message(text="a\x00b\ud800", contact_name="Bu\x00di"), NOW)
    assert fact.text == "a\ufffdb\ufffd" and fact.contact_name == "Bu\ufffddi"  # type: ignore[union-attr]
    assert set(repairs) == {Repair("text", "unstorable_characters"), Repair("contact_name", "unstorable_characters")}


def test_overlong_text_is_truncated_to_the_limit() -> None:
    fact, repairs = sanitize(message(text="x" * 1_000_000, contact_name="n" * 1000), NOW)
    assert len(fact.text) == limits.MAX_TEXT and len(fact.contact_name or "") == limits.MAX_NAME  # type: ignore[union-attr]
    assert Repair("text", "truncated") in repairs


def test_overlong_ids_are_left_for_the_rules_to_refuse_not_cut() -> None:
    fact, repairs = sanitize(message(contact_id="6" * 1000), NOW)
    assert fact.contact_id == "6" * 1000 and repairs == []  # type: ignore[union-attr]


def test_a_time_out_of_range_becomes_the_arrival_time_and_the_raw_value_is_kept() -> None:
    for at in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)):
        fact, repairs = sanitize(message(sent_at=at), NOW)
        assert fact.sent_at == NOW  # type: ignore[union-attr]
        assert fact.attachments == ({"type": ORIGINAL_TIME, "field": "sent_at", "value": at.isoformat()},)  # type: ignore[union-attr]
        assert repairs == [Repair("sent_at", "time_out_of_range", at.isoformat())]


def test_free_form_objects_become_bounded_json() -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    fact, repairs = sanitize(message(attachments=({"type": "postback", "payload": deep, "n": 2**70},)), NOW)
    [attachment] = fact.attachments  # type: ignore[union-attr]
    assert attachment["n"] == str(2**70) and orjson.dumps(attachment)
    assert limits.bounded_json(attachment) == (attachment, False)
    assert Repair("attachments", "bounded_json") in repairs


def test_overlong_keys_are_hashed_and_errors_bounded() -> None:
    status = DeliveryStatus(Channel.WHATSAPP_CLOUD, "1", "failed", NOW, "k" * 10_000,
                            errors=tuple({"code": i} for i in range(1000)))
    fact, repairs = sanitize(status, NOW)
    assert fact.status_key.startswith("sha256:") and len(fact.errors) == limits.MAX_ATTACHMENTS  # type: ignore[union-attr]
    assert Repair("status_key", "key_hashed") in repairs and Repair("errors", "too_many_items") in repairs
    edit = MessageEdit(Channel.INSTAGRAM, "1", "2", "m", "t", NOW, edit_key="e\x00")
    assert sanitize(edit, NOW)[0].edit_key.startswith("sha256:")  # type: ignore[union-attr]


# ---- the parser never fails otherwise than with a shape error -------------------------------------
def _fixtures() -> list[Any]:
    return [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]


hostile_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=False),
    st.text(max_size=20), st.just([]), st.just({}), st.just([None, 1, "x"]), st.just("9" * 400),
    st.just({"id": None}), st.just(10**30),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if len(prefix) >= 12:  # Meta's payloads are shallower; an inserted deep leaf is not walked
        return out
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], leaf: Any) -> Any:
    """A copy of `doc` with the value at `path` replaced (only the nodes on the path are copied)."""
    if not path:
        return leaf
    head, *rest = path
    node = copy.copy(doc)
    node[head] = _replace(doc[head], tuple(rest), leaf)
    return node


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_fixtures()), st.data())
def test_any_value_anywhere_in_a_documented_payload_parses_or_is_a_shape_error(payload: Any, data: st.DataObject) -> None:
    paths = _paths(payload)
    mutated = payload
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        mutated = _replace(mutated, path, data.draw(hostile_leaf))
        paths = _paths(mutated)
    try:
        facts = parse_webhook(mutated, received_at=NOW)
    except WebhookShapeError:
        return
    for fact in facts:
        clean, _ = sanitize(fact, NOW)
        for name in ("attachments", "errors"):
            for item in getattr(clean, name, ()):
                assert limits.bounded_json(item) == (item, False)
