"""Outbound rules: reply windows per channel and what each of Meta's error codes means for a send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.channels import Channel
from domain.outbound import (
    CONNECTION_REFUSED,
    META_ERRORS,
    NEVER_OPEN,
    TEMPLATE_NEEDED,
    TEMPLATE_WHATSAPP_ONLY,
    TIMEOUT_AFTER_REQUEST_SENT,
    WINDOW_CLOSED,
    ErrorClass,
    MessagingType,
    ReplyKind,
    backoff_delay,
    classify_meta_error,
    decide_send,
    error_title,
    reply_window,
)

LAST = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


# --- reply windows ----------------------------------------------------------------------------------


def test_whatsapp_window_is_24_hours_free_form_and_no_human_agent_tag() -> None:
    window = reply_window(Channel.WHATSAPP_CLOUD, LAST)
    assert window.free_form_until == LAST + 24 * H
    assert window.human_agent_until is None


@pytest.mark.parametrize("channel", [Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM])
def test_messenger_and_instagram_windows_are_24_hours_then_7_days_human_agent(channel: Channel) -> None:
    window = reply_window(channel, LAST)
    assert window.free_form_until == LAST + 24 * H
    assert window.human_agent_until == LAST + timedelta(days=7)


@pytest.mark.parametrize("channel", [Channel.FACEBOOK_COMMENT, Channel.INSTAGRAM_COMMENT])
def test_comment_rooms_have_no_window(channel: Channel) -> None:
    window = reply_window(channel, LAST)
    assert window.to_json() == {"free_form_until": None, "human_agent_until": None}


def test_reply_window_json_uses_iso_times() -> None:
    assert reply_window(Channel.INSTAGRAM, LAST).to_json() == {
        "free_form_until": "2026-03-02T12:00:00+00:00",
        "human_agent_until": "2026-03-08T12:00:00+00:00",
    }


def test_direct_message_room_without_customer_message_has_a_window_closed_since_the_epoch() -> None:
    window = reply_window(Channel.FACEBOOK_MESSENGER, None)
    assert window.free_form_until == NEVER_OPEN
    assert window.human_agent_until == NEVER_OPEN


# --- send decisions ---------------------------------------------------------------------------------


def test_whatsapp_free_form_allowed_inside_24_hours() -> None:
    decision = decide_send(Channel.WHATSAPP_CLOUD, LAST, LAST + 23 * H)
    assert decision.allowed and decision.messaging_type is None and decision.tag is None


def test_whatsapp_free_form_refused_at_24_hours_because_a_template_is_needed() -> None:
    decision = decide_send(Channel.WHATSAPP_CLOUD, LAST, LAST + 24 * H)
    assert not decision.allowed
    assert decision.reason == TEMPLATE_NEEDED
    assert "template is needed" in decision.reason


def test_whatsapp_template_allowed_any_time() -> None:
    assert decide_send(Channel.WHATSAPP_CLOUD, LAST, LAST + timedelta(days=90), ReplyKind.TEMPLATE).allowed
    assert decide_send(Channel.WHATSAPP_CLOUD, None, LAST, ReplyKind.TEMPLATE).allowed


@pytest.mark.parametrize("channel", [Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM])
def test_messenger_and_instagram_reply_as_response_inside_24_hours(channel: Channel) -> None:
    decision = decide_send(channel, LAST, LAST + 1 * H)
    assert decision.allowed
    assert decision.messaging_type is MessagingType.RESPONSE
    assert decision.tag is None


@pytest.mark.parametrize("channel", [Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM])
@pytest.mark.parametrize("after", [24 * H, 6 * 24 * H + 23 * H])
def test_messenger_and_instagram_reply_with_human_agent_tag_from_24_hours_to_7_days(
    channel: Channel, after: timedelta
) -> None:
    decision = decide_send(channel, LAST, LAST + after)
    assert decision.allowed
    assert decision.messaging_type is MessagingType.MESSAGE_TAG
    assert decision.tag == "HUMAN_AGENT"


@pytest.mark.parametrize("channel", [Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM])
def test_messenger_and_instagram_refused_from_7_days_on(channel: Channel) -> None:
    decision = decide_send(channel, LAST, LAST + timedelta(days=7))
    assert not decision.allowed
    assert decision.reason == WINDOW_CLOSED


@pytest.mark.parametrize("channel", [Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM, Channel.FACEBOOK_COMMENT])
def test_templates_are_refused_outside_whatsapp(channel: Channel) -> None:
    decision = decide_send(channel, LAST, LAST + H, ReplyKind.TEMPLATE)
    assert not decision.allowed
    assert decision.reason == TEMPLATE_WHATSAPP_ONLY


@pytest.mark.parametrize("channel", [Channel.FACEBOOK_COMMENT, Channel.INSTAGRAM_COMMENT])
def test_comment_rooms_always_accept_a_reply(channel: Channel) -> None:
    decision = decide_send(channel, LAST, LAST + timedelta(days=400))
    assert decision.allowed and decision.messaging_type is None


def test_direct_message_room_without_customer_message_refuses_free_form() -> None:
    decision = decide_send(Channel.WHATSAPP_CLOUD, None, LAST)
    assert not decision.allowed and "template is needed" in (decision.reason or "")


# --- Meta error classification (issue 9 item 4, one row each) ---------------------------------------

EXPECTED_CLASSES = {
    130429: ErrorClass.RETRY,
    131056: ErrorClass.RETRY,
    4: ErrorClass.RETRY,
    80007: ErrorClass.RETRY,
    613: ErrorClass.RETRY,
    1: ErrorClass.RETRY,
    2: ErrorClass.RETRY,
    131000: ErrorClass.RETRY,
    131016: ErrorClass.RETRY,
    131047: ErrorClass.PERMANENT,
    131026: ErrorClass.PERMANENT,
    100: ErrorClass.PERMANENT,
    368: ErrorClass.PERMANENT,
    551: ErrorClass.PERMANENT,
    10: ErrorClass.PERMANENT,
    190: ErrorClass.REAUTH,
}


def test_the_table_has_exactly_the_issue_rows() -> None:
    assert set(META_ERRORS) == set(EXPECTED_CLASSES)


@pytest.mark.parametrize(("code", "expected"), sorted(EXPECTED_CLASSES.items()))
def test_each_meta_code_has_its_class_whatever_the_http_status(code: int, expected: ErrorClass) -> None:
    assert classify_meta_error(code, 400) is expected
    assert classify_meta_error(code, 503) is expected
    assert error_title(code, "fallback") == META_ERRORS[code].title


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_5xx_and_429_without_a_known_code_are_retried(status: int) -> None:
    assert classify_meta_error(None, status) is ErrorClass.RETRY
    assert classify_meta_error(999999, status) is ErrorClass.RETRY


def test_unknown_code_on_4xx_fails_permanently() -> None:
    assert classify_meta_error(999999, 400) is ErrorClass.PERMANENT
    assert classify_meta_error(None, 404) is ErrorClass.PERMANENT
    assert error_title(999999, "HTTP 400") == "HTTP 400"


def test_connection_refused_is_retried() -> None:
    assert CONNECTION_REFUSED is ErrorClass.RETRY


def test_timeout_after_the_request_left_is_unknown() -> None:
    assert TIMEOUT_AFTER_REQUEST_SENT is ErrorClass.UNKNOWN


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff_delay(30) == 300.0
    with pytest.raises(ValueError):
        backoff_delay(0)
