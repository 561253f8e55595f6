"""The room view shows a staff reply's delivery the way chat apps do (issue 11: "with the delivery
ticks once outbound delivery exists"); the live renderer in static/inbox.js mirrors this markup."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from inbox.entrypoints.web.routes import _env


def message(direction: str, delivery: dict | None) -> dict:
    return {
        "id": "m1", "room_id": "r1", "direction": direction, "text": "Pesanan Anda dikirim hari ini",
        "sent_at": datetime(2026, 11, 26, 9, 0, tzinfo=UTC), "sender": {"id": "agent1", "name": None, "role": "agent"},
        "channel_message_id": None, "seq": 1, "kind": "text", "attachments": [], "edited_at": None,
        "removed": False, "removed_at": None, "delivery": delivery,
    }


def render(m: dict) -> str:
    return _env().from_string('{% from "_macros.html" import message %}{{ message(m) }}').render(m=m)


@pytest.mark.parametrize(("status", "mark"), [("pending", "○"), ("sent", "✓"), ("delivered", "✓✓"), ("read", "✓✓")])
def test_a_staff_reply_shows_its_delivery_status(status: str, mark: str) -> None:
    html = render(message("outbound", {"status": status, "at": None, "error": None}))
    assert f'aria-label="delivery: {status}"' in html and f">{mark}</span>" in html


def test_a_failed_reply_names_metas_reason() -> None:
    html = render(message("outbound", {"status": "failed", "at": None,
                                       "error": {"code": 131026, "title": "Message undeliverable"}}))
    assert 'aria-label="delivery: failed"' in html and "Message undeliverable" in html


def test_a_customer_message_has_no_ticks() -> None:
    assert "delivery:" not in render(message("inbound", {"status": "read", "at": None, "error": None}))
