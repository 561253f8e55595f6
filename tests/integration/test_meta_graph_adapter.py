"""The Graph API client against the stand-in Graph API: the exact request per channel and reply kind,
and the outcome for each class of Meta's answers (issue 9 items 2 and 4)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from domain.channels import Channel
from domain.outbound import MessagingType
from inbox.adapters.meta_graph import (
    Accepted,
    AccessGranted,
    Failed,
    InvalidReply,
    MetaGraphClient,
    OutboundReply,
    Reauth,
    RetryAfter,
    Unknown,
    build_send_request,
)
from tests.graph_standin import GraphStandin, graph_standin  # noqa: F401  (fixture)

VERSION = "v21.0"
TOKEN = "EAAG-secret-system-user-token-7f3a9c"
PHONE_ID = "106540352242922"
PAGE_ID = "1234567890"


def run_send(standin: GraphStandin, reply: OutboundReply, token: str = TOKEN, **client: Any) -> Any:
    async def go() -> Any:
        async with MetaGraphClient(standin.url, VERSION, **client) as graph:
            return await graph.send(reply, token)

    return asyncio.run(go())


def run_check(base_url: str, object_id: str, token: str = TOKEN, channel: Channel | None = None) -> Any:
    async def go() -> Any:
        async with MetaGraphClient(base_url, VERSION) as graph:
            return await graph.check_access(object_id, token, channel)

    return asyncio.run(go())


def whatsapp_text(**extra: Any) -> OutboundReply:
    return OutboundReply(Channel.WHATSAPP_CLOUD, PHONE_ID, "16505555555", text="Hello from the inbox", **extra)


@pytest.fixture
def standin(graph_standin: GraphStandin) -> GraphStandin:  # noqa: F811
    graph_standin.grant(PHONE_ID, TOKEN, verified_name="Acme Support", display_phone_number="+1 650-555-1234")
    graph_standin.grant(PAGE_ID, TOKEN, name="Acme Page")
    return graph_standin


# --- one per channel and reply kind -----------------------------------------------------------------


def test_whatsapp_text_reply_is_posted_to_the_phone_number_messages_edge(standin: GraphStandin) -> None:
    outcome = run_send(standin, whatsapp_text())

    assert isinstance(outcome, Accepted) and outcome.channel_message_id.startswith("wamid.")
    [request] = standin.requests
    assert (request.method, request.path) == ("POST", f"/{VERSION}/{PHONE_ID}/messages")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert "access_token" not in request.query
    assert request.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "16505555555",
        "type": "text",
        "text": {"preview_url": False, "body": "Hello from the inbox"},
    }


def test_whatsapp_reply_to_a_message_carries_its_wamid_as_context(standin: GraphStandin) -> None:
    wamid = "wamid.HBgLMTY0NjcwNDM1OTUVAgASGBQzQTdCNTg5RjY1MEMyRjlGMjRGNgA="
    outcome = run_send(standin, whatsapp_text(reply_to_message_id=wamid))

    assert isinstance(outcome, Accepted)
    assert standin.requests[0].json["context"] == {"message_id": wamid}


def test_whatsapp_template_is_sent_with_name_language_code_and_components(standin: GraphStandin) -> None:
    components = [{"type": "body", "parameters": [{"type": "text", "text": "Ada"}]}]
    reply = OutboundReply(
        Channel.WHATSAPP_CLOUD,
        PHONE_ID,
        "16505555555",
        template={"name": "order_update", "language": "en_US", "components": components},
    )

    outcome = run_send(standin, reply)

    assert isinstance(outcome, Accepted)
    assert standin.requests[0].json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "16505555555",
        "type": "template",
        "template": {"name": "order_update", "language": {"code": "en_US"}, "components": components},
    }


def test_our_message_id_rides_along_where_meta_echoes_it_back(standin: GraphStandin) -> None:
    run_send(standin, whatsapp_text(correlation_id="msg-1"))
    run_send(
        standin,
        OutboundReply(
            Channel.FACEBOOK_MESSENGER, PAGE_ID, "PSID", text="hi",
            messaging_type=MessagingType.RESPONSE, correlation_id="msg-2",
        ),
    )
    run_send(
        standin,
        OutboundReply(
            Channel.INSTAGRAM, PAGE_ID, "IGSID", text="hi",
            messaging_type=MessagingType.RESPONSE, correlation_id="msg-3",
        ),
    )

    whatsapp, messenger, instagram = (r.json for r in standin.requests)
    assert whatsapp["biz_opaque_callback_data"] == "msg-1"
    assert messenger["message"] == {"text": "hi", "metadata": "msg-2"}
    assert instagram["message"] == {"text": "hi"}


@pytest.mark.parametrize("channel", [Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM])
def test_messenger_and_instagram_reply_inside_24_hours_is_a_response(
    standin: GraphStandin, channel: Channel
) -> None:
    reply = OutboundReply(channel, PAGE_ID, "PSID-42", text="On it!", messaging_type=MessagingType.RESPONSE)

    outcome = run_send(standin, reply)

    assert isinstance(outcome, Accepted) and outcome.channel_message_id.startswith("m_")
    [request] = standin.requests
    assert (request.method, request.path) == ("POST", f"/{VERSION}/{PAGE_ID}/messages")
    assert request.json == {
        "recipient": {"id": "PSID-42"},
        "messaging_type": "RESPONSE",
        "message": {"text": "On it!"},
    }


@pytest.mark.parametrize("channel", [Channel.FACEBOOK_MESSENGER, Channel.INSTAGRAM])
def test_messenger_and_instagram_reply_after_24_hours_is_tagged_human_agent(
    standin: GraphStandin, channel: Channel
) -> None:
    reply = OutboundReply(
        channel, PAGE_ID, "PSID-42", text="Sorry for the wait", messaging_type=MessagingType.MESSAGE_TAG
    )

    assert isinstance(run_send(standin, reply), Accepted)
    assert standin.requests[0].json == {
        "recipient": {"id": "PSID-42"},
        "messaging_type": "MESSAGE_TAG",
        "message": {"text": "Sorry for the wait"},
        "tag": "HUMAN_AGENT",
    }


def test_facebook_comment_reply_is_posted_to_the_comment_comments_edge(standin: GraphStandin) -> None:
    reply = OutboundReply(Channel.FACEBOOK_COMMENT, PAGE_ID, "111222333_444555666", text="Thanks!")

    outcome = run_send(standin, reply)

    assert isinstance(outcome, Accepted) and outcome.channel_message_id.startswith("111222333_")
    [request] = standin.requests
    assert (request.method, request.path) == ("POST", f"/{VERSION}/111222333_444555666/comments")
    assert request.json == {"message": "Thanks!"}


def test_instagram_comment_reply_is_posted_to_the_comment_replies_edge(standin: GraphStandin) -> None:
    reply = OutboundReply(Channel.INSTAGRAM_COMMENT, PAGE_ID, "17870913679156914", text="*sniff*")

    outcome = run_send(standin, reply)

    assert isinstance(outcome, Accepted) and outcome.channel_message_id.isdigit()
    [request] = standin.requests
    assert (request.method, request.path) == ("POST", f"/{VERSION}/17870913679156914/replies")
    assert request.json == {"message": "*sniff*"}


@pytest.mark.parametrize(
    "reply",
    [
        OutboundReply(Channel.FACEBOOK_MESSENGER, PAGE_ID, "PSID", text="hi"),  # no messaging_type
        OutboundReply(Channel.INSTAGRAM, PAGE_ID, "PSID", template={"name": "x", "language": "en"}),
        OutboundReply(Channel.WHATSAPP_CLOUD, PHONE_ID, "1650", text="  "),
        OutboundReply(Channel.WHATSAPP_CLOUD, PHONE_ID, "1650", template={"name": "x"}),
    ],
)
def test_a_reply_the_channel_cannot_carry_is_refused_before_any_request(reply: OutboundReply) -> None:
    with pytest.raises(InvalidReply):
        build_send_request(reply, VERSION)


def test_the_version_must_look_like_metas() -> None:
    with pytest.raises(ValueError, match="v21.0"):
        MetaGraphClient("http://127.0.0.1:1", "21")


def test_base_url_and_version_come_from_arguments(standin: GraphStandin) -> None:
    async def go() -> Any:
        async with MetaGraphClient(standin.url + "/", "v99.9") as graph:
            return await graph.send(whatsapp_text(), TOKEN)

    assert isinstance(asyncio.run(go()), Accepted)
    assert standin.requests[0].path == f"/v99.9/{PHONE_ID}/messages"


# --- error classes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [130429, 131056, 4, 80007, 613, 1, 2, 131000, 131016])
def test_rate_limits_and_temporary_errors_are_retried(standin: GraphStandin, code: int) -> None:
    standin.fail_next(code)

    outcome = run_send(standin, whatsapp_text())

    assert isinstance(outcome, RetryAfter) and outcome.code == code


def test_retry_after_header_is_passed_on(standin: GraphStandin) -> None:
    standin.fail_next(130429, retry_after="7")

    outcome = run_send(standin, whatsapp_text())

    assert isinstance(outcome, RetryAfter) and outcome.seconds == 7.0


@pytest.mark.parametrize("status", [500, 502, 503])
def test_bare_5xx_is_retried(standin: GraphStandin, status: int) -> None:
    standin.server_error_next(status, body=b"<html>Bad gateway</html>")

    outcome = run_send(standin, whatsapp_text())

    assert isinstance(outcome, RetryAfter) and outcome.seconds is None


@pytest.mark.parametrize("code", [131047, 131026, 100, 368, 551, 10])
def test_permanent_errors_fail_at_once_with_metas_code_and_title(standin: GraphStandin, code: int) -> None:
    standin.fail_next(code)

    outcome = run_send(standin, whatsapp_text())

    assert isinstance(outcome, Failed) and outcome.permanent
    assert outcome.code == code
    assert outcome.title and not outcome.title.startswith("(#")
    assert outcome.fbtrace_id


def test_whatsapp_error_details_are_kept(standin: GraphStandin) -> None:
    details = "Message failed to send because more than 24 hours have passed since the customer last replied."
    standin.fail_next(131047, error_data={"messaging_product": "whatsapp", "details": details})

    outcome = run_send(standin, whatsapp_text())

    assert isinstance(outcome, Failed)
    assert (outcome.code, outcome.title, outcome.details) == (131047, "Re-engagement message", details)


def test_rejected_token_means_reauth(standin: GraphStandin) -> None:
    outcome = run_send(standin, whatsapp_text(), token="EAAG-revoked-token")

    assert isinstance(outcome, Reauth) and outcome.code == 190


def test_injected_190_means_reauth(standin: GraphStandin) -> None:
    standin.fail_next(190, subcode=463, message="Error validating access token: Session has expired")

    outcome = run_send(standin, whatsapp_text())

    assert outcome == Reauth(code=190, title="Error validating access token: Session has expired")


def test_connection_refused_is_retried() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go() -> Any:
        async with MetaGraphClient(f"http://127.0.0.1:{port}", VERSION) as graph:
            return await graph.send(whatsapp_text(), TOKEN)

    outcome = asyncio.run(go())

    assert isinstance(outcome, RetryAfter) and "ConnectError" in outcome.reason


def test_timeout_after_the_request_left_is_unknown(standin: GraphStandin) -> None:
    standin.delay_next(2.0)

    outcome = run_send(standin, whatsapp_text(), timeout_s=0.3)

    assert isinstance(outcome, Unknown)
    assert len(standin.requests) == 1  # Meta did receive it


def test_dropped_connection_after_the_request_arrived_is_unknown(standin: GraphStandin) -> None:
    standin.drop_next()

    outcome = run_send(standin, whatsapp_text())

    assert isinstance(outcome, Unknown)
    assert len(standin.requests) == 1


def test_the_token_is_never_logged_even_when_a_call_fails(
    standin: GraphStandin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.fail_next(131047)
    standin.fail_next(130429)
    standin.drop_next()

    outcomes = [run_send(standin, whatsapp_text()) for _ in range(3)]
    outcomes.append(run_send(standin, whatsapp_text(), token=TOKEN + "-wrong"))

    assert [type(o) for o in outcomes] == [Failed, RetryAfter, Unknown, Reauth]
    assert caplog.records, "the failures were logged"
    assert TOKEN not in caplog.text
    assert "EAAG" not in caplog.text


# --- the account-connection proof ---------------------------------------------------------------------


def test_check_access_returns_the_objects_id_and_name(standin: GraphStandin) -> None:
    outcome = run_check(standin.url, PAGE_ID)

    assert outcome == AccessGranted(object_id=PAGE_ID, name="Acme Page", fields={"id": PAGE_ID, "name": "Acme Page"})
    [request] = standin.requests
    assert (request.method, request.path) == ("GET", f"/{VERSION}/{PAGE_ID}")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_check_access_of_a_whatsapp_number_names_it_by_its_verified_name(standin: GraphStandin) -> None:
    outcome = run_check(standin.url, PHONE_ID, channel=Channel.WHATSAPP_CLOUD)

    assert isinstance(outcome, AccessGranted) and outcome.name == "Acme Support"
    assert standin.requests[0].query["fields"] == ["id,verified_name,display_phone_number"]


def test_check_access_asking_a_field_the_node_lacks_fails_like_meta(standin: GraphStandin) -> None:
    outcome = run_check(standin.url, PHONE_ID, channel=Channel.FACEBOOK_MESSENGER)  # asks for "name"

    assert isinstance(outcome, Failed) and outcome.code == 100


def test_check_access_with_a_rejected_token_is_reauth(standin: GraphStandin) -> None:
    outcome = run_check(standin.url, PAGE_ID, token="someone-elses-token")

    assert isinstance(outcome, Reauth) and outcome.code == 190


def test_check_access_to_an_object_the_token_cannot_read_fails(standin: GraphStandin) -> None:
    standin.grant("999", "token-of-another-org")

    outcome = run_check(standin.url, "999")  # our token is valid, but not for this object

    assert isinstance(outcome, Failed) and outcome.code == 100 and outcome.subcode == 33


def test_check_access_timeout_is_retried_because_a_read_is_safe_to_repeat(standin: GraphStandin) -> None:
    standin.drop_next()

    outcome = run_check(standin.url, PAGE_ID)

    assert isinstance(outcome, RetryAfter)
