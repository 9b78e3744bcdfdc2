"""POST /v1/responses on every provider type, driven by the official openai SDK, unchanged.

Chat-only upstreams (Workers AI, Sarvam, an OpenAI-compatible server, the simulator) are
translated; OpenRouter serves the Responses API itself and is passed through. The fake
upstream's model names pick its behaviour (tests/fakes/upstream.py, responses_upstream.py).
"""

from __future__ import annotations

import tomllib
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import BaseModel

from callmissed.settings import CATALOG_PATH
from tests.api.conftest import PROVIDERS, WEATHER_TOOL
from tests.conftest import Gateway


class Weather(BaseModel):
    city: str
    temperature_c: int


def _model(provider: str, behaviour: str) -> str:
    return PROVIDERS[provider].format(behaviour)


def _upstream_saw(gateway: Gateway) -> dict[str, Any]:
    return gateway.upstream.requests[-1].body


every_provider = pytest.mark.parametrize("provider", list(PROVIDERS))


@every_provider
def test_create_answers_with_text_and_usage(sdk, provider):
    raw = sdk.responses.with_raw_response.create(model=_model(provider, "hello"), input="Hi")
    response = raw.parse()
    assert response.output_text == "Hello world"
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 6)
    route = "openrouter" if provider == "openrouter" else provider
    assert raw.headers["x-callmissed-route"] == route


@every_provider
def test_stream_sends_the_event_sequence_the_sdk_accumulates(sdk, provider):
    with sdk.responses.stream(model=_model(provider, "hello"), input="Hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for kind in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert kind in kinds
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == "Hello world"
    assert final.usage is not None and final.usage.total_tokens == 11


@every_provider
@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip(sdk, responses_gateway, provider, stream):
    model = _model(provider, "weather")
    first = _create(sdk, stream, model=model, input="Weather in Paris?", tools=[WEATHER_TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert orjson.loads(calls[0].arguments) == {"city": "Paris"}
    follow_up: list[Any] = [{"role": "user", "content": "Weather in Paris?"}, *first.output]
    follow_up.append({"type": "function_call_output", "call_id": calls[0].call_id, "output": "21C"})
    second = _create(sdk, stream, model=model, input=follow_up, tools=[WEATHER_TOOL])
    assert second.output_text == "It is 21C in Paris."
    sent = _upstream_saw(responses_gateway)
    if provider == "openrouter":
        assert sent["input"][-1]["type"] == "function_call_output"
    else:
        assert sent["messages"][-1] == {
            "role": "tool",
            "tool_call_id": calls[0].call_id,
            "content": "21C",
        }
        assert sent["messages"][-2]["tool_calls"][0]["function"]["name"] == "get_weather"


def _create(sdk: openai.OpenAI, stream: bool, **body: Any) -> Any:
    if not stream:
        return sdk.responses.create(**body)
    with sdk.responses.stream(**body) as events:
        return events.get_final_response()


@every_provider
@pytest.mark.parametrize("stream", [False, True])
def test_parse_with_a_pydantic_model(sdk, responses_gateway, provider, stream):
    body: dict[str, Any] = {"model": _model(provider, "structured"), "input": "Weather?"}
    if stream:
        with sdk.responses.stream(**body, text_format=Weather) as events:
            parsed = events.get_final_response().output_parsed
    else:
        parsed = sdk.responses.parse(**body, text_format=Weather).output_parsed
    assert parsed == Weather(city="Paris", temperature_c=21)
    sent = _upstream_saw(responses_gateway)
    if provider == "openrouter":
        assert sent["text"]["format"]["type"] == "json_schema"
    else:
        schema = sent["response_format"]["json_schema"]
        assert sent["response_format"]["type"] == "json_schema"
        assert schema["name"] == "Weather" and schema["strict"] is True
        assert schema["schema"]["required"] == ["city", "temperature_c"]


@every_provider
def test_previous_response_id_continues_the_conversation(sdk, responses_gateway, provider):
    first = sdk.responses.create(
        model=_model(provider, "hello"), input="Hi", instructions="Be brief."
    )
    second = sdk.responses.create(
        model=_model(provider, "hello"), input="And again?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    sent = _upstream_saw(responses_gateway)
    if provider == "openrouter":
        assert "previous_response_id" not in sent and sent["store"] is False
        texts = [_text(item) for item in sent["input"]]
        assert texts == ["Hi", "Hello world", "And again?"]
    else:
        # The first turn's instructions do not carry over, as OpenAI's own API keeps them.
        assert sent["messages"] == [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello world"},
            {"role": "user", "content": "And again?"},
        ]
    items = sdk.responses.input_items.list(second.id, order="asc")
    assert [_text(item.model_dump()) for item in items.data] == ["Hi", "Hello world", "And again?"]


def _text(item: dict[str, Any]) -> str:
    return "".join(part["text"] for part in item["content"])


@every_provider
def test_function_call_output_after_previous_response_id(sdk, provider):
    """The Agents SDK's turn: only the tool's output, after the stored function call."""
    model = _model(provider, "weather")
    first = sdk.responses.create(model=model, input="Weather in Paris?", tools=[WEATHER_TOOL])
    call = next(item for item in first.output if item.type == "function_call")
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "18C"}
    second = sdk.responses.create(
        model=model, input=[output], previous_response_id=first.id, tools=[WEATHER_TOOL]
    )
    assert second.output_text == "It is 18C in Paris."


@every_provider
def test_a_failure_mid_stream_ends_with_an_error_the_sdk_raises(sdk, provider):
    events: list[Any] = []
    model = _model(provider, "midstream-error")
    with (
        pytest.raises(openai.APIError, match="Provider returned error"),
        sdk.responses.stream(model=model, input="Hi") as stream,
    ):
        events.extend(stream)
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"


def test_the_simulator_answers_streamed_and_not(sdk):
    whole = sdk.responses.create(model="sim/gpt-oss-120b", input="Explain quicksort.")
    assert "Quicksort" in whole.output_text
    kinds = [item.type for item in whole.output]
    assert kinds == ["reasoning", "message"]  # the simulated model thinks first
    with sdk.responses.stream(
        model="sim/gpt-oss-120b", input="More?", previous_response_id=whole.id
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds
    assert final.output_text.strip().startswith("Quicksort")
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens > 0


def test_catalog_models_are_translated_with_the_reasoning_matrix(sdk, responses_gateway):
    raw = sdk.responses.with_raw_response.create(
        model="gpt-oss-120b", input="Hi", reasoning={"effort": "minimal"}
    )
    assert raw.parse().output_text == "Hello world"
    assert raw.headers["x-callmissed-route"] == "cloudflare"
    assert raw.headers["x-callmissed-reasoning-effort"] == "low"  # gpt-oss cannot think less
    assert (
        responses_gateway.upstream.last("@cf/openai/gpt-oss-120b").body["reasoning_effort"] == "low"
    )


def test_usage_cost_is_what_the_key_was_charged(responses_gateway, client_for):
    key = responses_gateway.create_key("--credits", "10")
    sdk = openai.OpenAI(base_url=responses_gateway.base_url, api_key=key, max_retries=0)
    try:
        passed = sdk.responses.create(model="fake/hello", input="Hi")
        with sdk.responses.stream(model="local-hello", input="Hi") as stream:
            translated = stream.get_final_response()
        me = httpx.get(
            f"{responses_gateway.base_url}/key", headers={"authorization": f"Bearer {key}"}
        ).json()["data"]
    finally:
        sdk.close()
    # 5 input tokens at $1/M and 6 output at $2/M; OpenRouter's own 0.123 is not passed on.
    for response in (passed, translated):
        assert response.usage is not None
        assert response.usage.model_dump()["cost"] == pytest.approx(0.000017)
    assert me["usage"] == pytest.approx(0.000034)
    assert me["limit_remaining"] == pytest.approx(10 - 0.000034)


def test_a_codex_shaped_request_streams_the_answer(responses_gateway):
    """What Codex sends: nothing stored, its own history with tool output, encrypted reasoning
    asked for (which a chat upstream has none of)."""
    body = {
        "model": "local-weather",
        "instructions": "You are a coding agent.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "?"}]},
            {"type": "reasoning", "summary": [], "content": None, "encrypted_content": "gAAA"},
            {
                "type": "function_call",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
                "call_id": "call_w1",
            },
            {"type": "function_call_output", "call_id": "call_w1", "output": "9C"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "session-1",
    }
    headers = {"authorization": f"Bearer {responses_gateway.key}"}
    url = f"{responses_gateway.base_url}/responses"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as reply:
        assert reply.status_code == 200
        raw = reply.read()
    events = [orjson.loads(block.split(b"\ndata: ")[1]) for block in raw.strip().split(b"\n\n")]
    completed = events[-1]
    assert completed["type"] == "response.completed"
    assert completed["response"]["store"] is False
    texts = [part["text"] for item in completed["response"]["output"] for part in item["content"]]
    assert texts == ["It is 9C in Paris."]
    sent = responses_gateway.upstream.last("weather").body
    assert sent["messages"][0] == {"role": "system", "content": "You are a coding agent."}
    assert "include" not in sent and "prompt_cache_key" not in sent
    stored = httpx.get(f"{url}/{completed['response']['id']}", headers=headers)
    assert stored.status_code == 404  # store: false keeps nothing


_CATALOG = tomllib.loads(CATALOG_PATH.read_text())["models"]
_CHAT_MODELS = [name for name, entry in _CATALOG.items() if "embedding" not in entry]


@pytest.mark.parametrize("name", _CHAT_MODELS)
def test_every_catalog_model_answers(sdk, name):
    response = sdk.responses.create(model=name, input="Hi", store=False)
    assert response.status == "completed" and response.output_text
