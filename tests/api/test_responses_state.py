"""Stored responses as OpenAI keeps them: retrieve, list input items, delete, owned by the key;
`store: false` keeps nothing; fields a chat upstream cannot honour are refused by name."""

from __future__ import annotations

import socket
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import openai
import orjson
import pytest

from tests.accounting import query
from tests.api.conftest import WEATHER_TOOL
from tests.conftest import Gateway, start_gateway, stop_gateway


def _other_sdk(gateway: Gateway, client_for):
    key = gateway.create_key()
    return client_for(
        Gateway(
            gateway.url,
            key,
            gateway.env,
            gateway.process,
            gateway.upstream,
            gateway.workdir,
            gateway.log,
        )
    )


@pytest.mark.parametrize("model", ["local-hello", "fake/hello"])
def test_a_stored_response_is_retrieved_listed_and_deleted(sdk, model):
    created = sdk.responses.create(model=model, input="Hi", metadata={"ticket": "42"})
    fetched = sdk.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    assert fetched.metadata == {"ticket": "42"} and fetched.store is True
    items = sdk.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    deleted = sdk.responses.delete(created.id)
    assert deleted is None  # the SDK returns nothing for a 200
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)


def test_another_key_sees_nothing_of_it(sdk, responses_gateway, client_for):
    mine = sdk.responses.create(model="local-hello", input="Hi")
    theirs = _other_sdk(responses_gateway, client_for)
    with pytest.raises(openai.NotFoundError, match="No response found"):
        theirs.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model="local-hello", input="Hi", previous_response_id=mine.id)
    assert sdk.responses.retrieve(mine.id).id == mine.id  # still there for its owner


@pytest.mark.parametrize("model", ["local-hello", "fake/hello"])
def test_store_false_keeps_nothing(sdk, model):
    response = sdk.responses.create(model=model, input="Hi", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model=model, input="More", previous_response_id=response.id)


def test_input_items_page_newest_first_as_openai_lists_them(sdk):
    turns: list[Any] = [{"role": "user", "content": f"turn {n}"} for n in range(5)]
    response = sdk.responses.create(model="local-hello", input=turns)
    page = sdk.responses.input_items.list(response.id, limit=2)
    assert [item.content[0].text for item in page.data] == ["turn 4", "turn 3"]
    assert page.has_more is True
    rest = sdk.responses.input_items.list(response.id, limit=10, after=page.data[-1].id)
    assert [item.content[0].text for item in rest.data] == ["turn 2", "turn 1", "turn 0"]
    assert rest.has_more is False
    every = [item.content[0].text for item in sdk.responses.input_items.list(response.id)]
    assert every == [f"turn {n}" for n in (4, 3, 2, 1, 0)]  # the SDK's pager, one page


@pytest.mark.parametrize("limit", ["0", "101", "ten", "-5", "%C2%B2", "%D9%A3"])
def test_input_items_refuses_a_limit_that_is_not_1_to_100(sdk, responses_gateway, limit):
    """Digits of other scripts ('²', Arabic-Indic '٣') are not a number either: a 400, not a 500."""
    response = sdk.responses.create(model="local-hello", input="Hi")
    answer = httpx.get(
        f"{responses_gateway.base_url}/responses/{response.id}/input_items?limit={limit}",
        headers={"authorization": f"Bearer {responses_gateway.key}"},
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "limit"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].image_url",
        ),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_fields_a_chat_upstream_cannot_honour_are_refused_by_name(sdk, body, param):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(**{"model": "local-hello", "input": "Hi", **body})
    assert caught.value.param == param


def test_unknown_and_dropped_fields(sdk, responses_gateway):
    sdk.responses.create(
        model="local-hello",
        input="Hi",
        truncation="auto",
        service_tier="auto",
        extra_body={"top_k": 5},
    )
    sent = responses_gateway.upstream.last("hello").body
    assert sent["top_k"] == 5  # unknown to the Responses API: the upstream may know it
    assert "truncation" not in sent and "service_tier" not in sent


def test_a_passed_through_body_reaches_openrouter_with_only_the_routes_edits(
    sdk, responses_gateway
):
    sdk.responses.create(
        model="fake/hello",
        input="Hi",
        tools=[WEATHER_TOOL, {"type": "web_search"}],
        reasoning={"effort": "high", "summary": "auto"},
        extra_body={"plugins": [{"id": "web"}]},
    )
    received = responses_gateway.upstream.requests[-1]
    assert received.path == "/openrouter/api/v1/responses"
    assert received.body["tools"][1] == {"type": "web_search"}  # OpenRouter runs it
    assert received.body["plugins"] == [{"id": "web"}]
    assert received.body["reasoning"] == {"summary": "auto", "effort": "high"}
    assert received.body["store"] is False


def test_passed_through_reasoning_streams(sdk):
    with sdk.responses.stream(model="fake/thinker", input="2+2?") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "4"


def test_an_upstream_status_before_the_first_byte_is_an_http_error(sdk):
    with pytest.raises(openai.RateLimitError):
        sdk.responses.create(model="fake/error-429", input="Hi", stream=True)
    # Another route: the first 429's Retry-After rests its own (then: 503 routes_resting).
    with pytest.raises(openai.RateLimitError):
        sdk.responses.create(model="fake-b/error-429", input="Hi")


def test_bounded_storage(upstream, tmp_path):
    """A response too large to store says store: false; past its budget a key's oldest go."""
    gateway = start_gateway(
        upstream,
        tmp_path,
        CALLMISSED_RESPONSES_MAX_BYTES="6000",
        CALLMISSED_RESPONSES_KEY_BYTES="12000",
    )
    headers = {"authorization": f"Bearer {gateway.key}"}
    try:
        with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as client:
            large = client.post("/responses", json={"model": "local-model", "input": "x" * 7000})
            assert large.status_code == 200 and large.json()["store"] is False
            assert client.get(f"/responses/{large.json()['id']}").status_code == 404
            ids = []
            for _ in range(6):  # ~2.3 KB each: six do not fit in 12 KB
                body = {"model": "local-model", "input": "y" * 1000}
                ids.append(client.post("/responses", json=body).json()["id"])
            found = [client.get(f"/responses/{rid}").status_code for rid in ids]
            assert found[-1] == 200 and found[0] == 404
            assert found == sorted(found, reverse=True)  # the oldest went first
    finally:
        stop_gateway(gateway)


def test_a_key_that_stops_reading_its_stored_responses_holds_little(upstream, tmp_path):
    """Reading a stored response is free, and its body may be 8 MiB: 60 GETs of one on an h2c
    connection that never opens its flow-control window held 450 MB in a worker for as long as
    the client kept the connection alive with PINGs. Now a key's reads in flight hold at most
    twice the largest stored response per worker; past it its next read is a 429 at once."""
    gateway = start_gateway(upstream, tmp_path, CALLMISSED_RESPONSES_MAX_BYTES="2000000")
    headers = {"authorization": f"Bearer {gateway.key}"}
    try:
        body = {"model": "sim/instant-thinker", "input": "x" * 1_900_000}
        stored = httpx.post(f"{gateway.base_url}/responses", json=body, headers=headers)
        assert stored.json()["store"] is True
        path = f"/v1/responses/{stored.json()['id']}/input_items"
        statuses = _stuck_h2_reads(gateway, path, 30)
        assert statuses.count("429") >= 27, statuses  # two fit in 4 MB; unbounded, all 200
        assert "200" in statuses
    finally:
        stop_gateway(gateway)


def _stuck_h2_reads(gateway: Gateway, path: str, count: int) -> list[str]:
    """`count` GETs of `path` on one h2c connection whose client never lets a byte of a body
    through (a stream window of 0); each one's status, as far as one came within a second."""
    host, port = gateway.url.removeprefix("http://").split(":")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
    )
    conn.initiate_connection()
    streams = [conn.get_next_available_stream_id() + 2 * n for n in range(count)]
    head = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", host)]
    for stream in streams:
        conn.send_headers(stream, [*head, ("authorization", f"Bearer {gateway.key}")], True)
    found: dict[int, str] = {}
    with socket.create_connection((host, int(port)), timeout=1) as sock:
        sock.sendall(conn.data_to_send())
        while len(found) < count:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    found[event.stream_id] = dict(event.headers)[b":status"].decode()
            sock.sendall(conn.data_to_send())
    return [found.get(stream, "none") for stream in streams]


def _streamed_final(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """The last event's data of a streamed POST /v1/responses."""
    with client.stream("POST", "/responses", json={**body, "stream": True}) as response:
        data = [line for line in response.iter_lines() if line.startswith("data:")]
    return dict(orjson.loads(data[-1].removeprefix("data:")))


@pytest.mark.parametrize("model", ["local-model", "fake/hello"])
def test_a_response_that_was_not_stored_says_so_in_its_last_event(upstream, tmp_path, model):
    """Too large to store, or the store failing: the answer still goes out, as paid for, with
    `store: false` in it, streamed or not. A streamed one said `store: true` in
    response.completed all the same; a failing store made a paid answer a 500 (or
    response.failed)."""
    gateway = start_gateway(upstream, tmp_path, CALLMISSED_RESPONSES_MAX_BYTES="6000")
    headers = {"authorization": f"Bearer {gateway.key}"}
    try:
        with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=30) as client:
            large = _streamed_final(client, {"model": model, "input": "x" * 7000})
            assert large["type"] == "response.completed"
            assert large["response"]["store"] is False
            query(gateway, "DROP TABLE responses")  # from here on, every save fails
            small = {"model": model, "input": "Hi"}
            answer = client.post("/responses", json=small)
            assert answer.status_code == 200, answer.text
            assert answer.json()["store"] is False
            final = _streamed_final(client, small)
            assert final["type"] == "response.completed"
            assert final["response"]["store"] is False
    finally:
        stop_gateway(gateway)
