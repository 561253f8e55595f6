"""The stand-in Graph API answers in the shapes of Meta's documented samples (tests/graph_standin/fixtures),
records what it receives, and injects the faults tests ask for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.graph_standin import GraphStandin, graph_standin  # noqa: F401  (fixture)

FIXTURES = Path(__file__).parents[1] / "graph_standin" / "fixtures"
TOKEN = "standin-test-token"


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def shape(value: Any) -> Any:
    """Keys and nesting of a JSON value, without the values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


@pytest.fixture
def standin(graph_standin: GraphStandin) -> GraphStandin:  # noqa: F811
    graph_standin.grant("106540352242922", TOKEN, verified_name="Acme")
    return graph_standin


def post(standin: GraphStandin, path: str, body: dict[str, Any], token: str = TOKEN) -> httpx.Response:
    return httpx.post(standin.url + path, json=body, headers={"Authorization": f"Bearer {token}"})


def test_whatsapp_send_answers_like_the_documented_sample(standin: GraphStandin) -> None:
    response = post(
        standin,
        "/v21.0/106540352242922/messages",
        {"messaging_product": "whatsapp", "to": "+16505555555", "type": "text", "text": {"body": "hi"}},
    )

    assert response.status_code == 200
    assert shape(response.json()) == shape(sample("whatsapp_send_response.json"))
    assert response.json()["contacts"] == [{"input": "+16505555555", "wa_id": "16505555555"}]


def test_messenger_send_answers_like_the_documented_sample(standin: GraphStandin) -> None:
    response = post(
        standin,
        "/v21.0/1234/messages",
        {"recipient": {"id": "PSID"}, "messaging_type": "RESPONSE", "message": {"text": "hi"}},
    )

    assert response.status_code == 200
    assert shape(response.json()) == shape(sample("messenger_send_response.json"))
    assert response.json()["recipient_id"] == "PSID"


@pytest.mark.parametrize(
    ("edge", "fixture"),
    [("comments", "fb_comment_response.json"), ("replies", "ig_comment_reply_response.json")],
)
def test_comment_replies_answer_with_the_new_comment_id(standin: GraphStandin, edge: str, fixture: str) -> None:
    response = post(standin, f"/v21.0/17870913679156914/{edge}", {"message": "thanks"})

    assert response.status_code == 200
    assert shape(response.json()) == shape(sample(fixture))


def test_each_send_gets_a_new_id(standin: GraphStandin) -> None:
    body = {"messaging_product": "whatsapp", "to": "1650", "type": "text", "text": {"body": "hi"}}
    ids = {post(standin, "/v21.0/106540352242922/messages", body).json()["messages"][0]["id"] for _ in range(3)}
    assert len(ids) == 3


def test_messenger_message_tag_without_a_tag_is_refused_like_meta(standin: GraphStandin) -> None:
    response = post(
        standin,
        "/v21.0/1234/messages",
        {"recipient": {"id": "PSID"}, "messaging_type": "MESSAGE_TAG", "message": {"text": "hi"}},
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == 100


def test_injected_error_has_metas_error_shape_and_status(standin: GraphStandin) -> None:
    standin.fail_next(190, subcode=460)

    response = httpx.get(standin.url + "/v21.0/106540352242922", params={"access_token": TOKEN})

    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "error_subcode", "fbtrace_id"}
    assert (error["type"], error["code"], error["error_subcode"]) == ("OAuthException", 190, 460)
    assert set(error) <= set(sample("error_response.json")["error"])


def test_injected_whatsapp_error_carries_error_data_details(standin: GraphStandin) -> None:
    standin.fail_next(131047)

    response = post(standin, "/v21.0/106540352242922/messages", {"messaging_product": "whatsapp"})

    assert response.status_code == 400
    assert shape(response.json()) == shape(sample("whatsapp_error_response.json"))
    assert response.json()["error"]["message"] == "(#131047) Re-engagement message"


def test_fail_next_n_times_then_answers_normally(standin: GraphStandin) -> None:
    standin.fail_next(130429, times=2)

    url = standin.url + "/v21.0/106540352242922"
    statuses = [httpx.get(url, params={"access_token": TOKEN}).status_code for _ in range(3)]

    assert statuses == [400, 400, 200]


def test_token_check_accepts_the_token_as_query_parameter_or_bearer_header(standin: GraphStandin) -> None:
    url = standin.url + "/v21.0/106540352242922"
    by_query = httpx.get(url, params={"access_token": TOKEN, "fields": "id,verified_name"})
    by_header = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})

    assert by_query.json() == {"id": "106540352242922", "verified_name": "Acme"}
    assert by_header.json() == {"id": "106540352242922", "verified_name": "Acme"}


def test_unknown_token_is_an_oauth_190_error(standin: GraphStandin) -> None:
    response = httpx.get(standin.url + "/v21.0/106540352242922", params={"access_token": "nope"})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == 190


def test_every_request_is_recorded_with_method_path_query_headers_and_body(standin: GraphStandin) -> None:
    post(standin, "/v21.0/1234/comments?debug=all", {"message": "hi"})

    [request] = standin.requests
    assert (request.method, request.path, request.query) == ("POST", "/v21.0/1234/comments", {"debug": ["all"]})
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.json == {"message": "hi"}
    assert request.token == TOKEN


def test_dropped_request_is_recorded_but_unanswered(standin: GraphStandin) -> None:
    standin.drop_next()

    with pytest.raises(httpx.RemoteProtocolError):
        post(standin, "/v21.0/1234/comments", {"message": "hi"})

    assert len(standin.wait_for_requests(1)) == 1


def test_two_standins_listen_on_different_free_ports() -> None:
    with GraphStandin() as one, GraphStandin() as two:
        assert one.port and two.port and one.port != two.port
