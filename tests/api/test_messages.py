"""POST /v1/messages and /v1/messages/count_tokens, driven by the official anthropic SDK."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def claude(gateway):
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as sdk:
        yield sdk


def _sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) for every event; each must carry both lines."""
    events = []
    for block in raw.decode().strip().split("\n\n"):
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        events.append((name_line[7:], orjson.loads(data_line[6:])))
    return events


def _raw_stream(gateway, **body: Any) -> bytes:
    body = {"max_tokens": 64, "messages": MESSAGES, "stream": True, **body}
    headers = {"x-api-key": gateway.key, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", f"{gateway.url}/v1/messages", json=body, headers=headers) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "text/event-stream"
        assert reply.headers["request-id"].startswith("req_")
        return reply.read()


@pytest.mark.parametrize(
    ("model", "route", "upstream_model"),
    [
        ("gpt-oss-120b", "cloudflare", "@cf/openai/gpt-oss-120b"),
        ("kimi-k2.6", "cloudflare", "@cf/moonshotai/kimi-k2.6"),
        ("sarvam-105b", "sarvam", "sarvam-105b"),
        ("auto", "openrouter", "openrouter/free"),
        ("anthropic/claude-haiku-4.5", "openrouter", "anthropic/claude-haiku-4.5"),
        ("local-model", "local", "hello"),
    ],
)
def test_create_message_on_every_route(claude, gateway, model, route, upstream_model):
    raw = claude.messages.with_raw_response.create(model=model, max_tokens=64, messages=MESSAGES)
    assert raw.headers["x-callmissed-route"] == route
    assert raw.headers["request-id"].startswith("req_")
    message = raw.parse()
    assert message.id.startswith("msg_")
    assert message.model == model
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello world"
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 6)
    received = gateway.upstream.last(upstream_model).body
    assert received["messages"] == [{"role": "user", "content": "Say hello"}]
    assert received["max_tokens"] == 64


def test_stream_text_and_final_message(claude):
    with claude.messages.stream(model="kimi-k2.5", max_tokens=64, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "Hello world"
        final = stream.get_final_message()
    assert final.id.startswith("msg_")
    assert final.content[0].text == "Hello world"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 6)


def test_stream_wire_format(gateway):
    events = _sse_events(_raw_stream(gateway, model="local-model"))
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == []
    # The prompt's estimate (count_tokens's) until message_delta brings the upstream's count.
    assert start["usage"] == {
        "input_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
    }
    assert events[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    timings = events[6][1].pop("x_callmissed")["timings"]  # Server-Timing's totals
    assert {"gw_ms", "upstream_ms", "first_token_ms", "total_ms"} <= timings.keys()
    assert events[6][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 5, "output_tokens": 6},
    }


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_round_trip(claude, gateway, stream):
    kwargs: dict[str, Any] = {"model": "fake/weather", "max_tokens": 64, "tools": [WEATHER_TOOL]}
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = _message(claude, stream, messages=ask, **kwargs)
    assert first.stop_reason == "tool_use"
    assert [block.type for block in first.content] == ["text", "tool_use"]
    assert first.content[0].text == "Let me check."
    call = first.content[1]
    assert (call.id, call.name, call.input) == ("call_w1", "get_weather", {"city": "Paris"})
    sent = gateway.upstream.last("fake/weather").body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]

    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
    follow_up = [
        *ask,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [result]},
    ]
    answer = _message(claude, stream, messages=follow_up, **kwargs)
    assert answer.content[0].text == "It is sunny in Paris."
    assert answer.stop_reason == "end_turn"
    assert gateway.upstream.last("fake/weather").body["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "sunny"},
    ]


def _message(claude, stream: bool, **kwargs: Any) -> Any:
    if not stream:
        return claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_on_a_reasoning_model(claude, gateway, stream):
    thinking = {"type": "enabled", "budget_tokens": 2048}
    raw = claude.messages.with_raw_response.create(
        model="local-thinker", max_tokens=4096, messages=MESSAGES, thinking=thinking, stream=stream
    )
    raw.http_response.close()
    assert raw.headers["x-callmissed-reasoning-effort"] == "medium"
    assert gateway.upstream.last("reasoning").body["reasoning_effort"] == "medium"
    message = _message(
        claude, stream, model="local-thinker", max_tokens=4096, messages=MESSAGES, thinking=thinking
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Two plus two is four."
    assert message.content[0].signature == ""
    assert message.content[1].text == "4"
    if stream:
        assert message.usage.output_tokens == 9
        assert message.usage.output_tokens_details.thinking_tokens == 7


def test_thinking_stream_events(gateway):
    events = _sse_events(
        _raw_stream(
            gateway, model="local-thinker", thinking={"type": "enabled", "budget_tokens": 1024}
        )
    )
    blocks = [
        (data["index"], data["content_block"])
        for name, data in events
        if name == "content_block_start"
    ]
    assert blocks == [
        (0, {"type": "thinking", "thinking": "", "signature": ""}),
        (1, {"type": "text", "text": ""}),
    ]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert deltas[0] == {"type": "thinking_delta", "thinking": "Two plus two"}
    assert deltas[-1] == {"type": "text_delta", "text": "4"}
    assert gateway.upstream.last("reasoning").body["reasoning_effort"] == "low"


@pytest.mark.parametrize(
    ("model", "upstream_model", "thinking", "sent"),
    [
        ("local-thinker", "reasoning", {"type": "disabled"}, "none"),
        ("local-thinker", "reasoning", {"type": "enabled", "budget_tokens": 8000}, "high"),
        ("local-thinker", "reasoning", {"type": "enabled", "budget_tokens": 500}, "none"),
        ("gpt-oss-120b", "@cf/openai/gpt-oss-120b", {"type": "disabled"}, "low"),
        (
            "mistral-small-3.1",
            "@cf/mistralai/mistral-small-3.1-24b-instruct",
            {"type": "enabled", "budget_tokens": 2048},
            None,  # no reasoning surface: dropped, exactly as reasoning_effort would be
        ),
        ("openrouter-fake/reasoning", "openrouter-fake/reasoning", {"type": "disabled"}, "none"),
    ],
)
def test_thinking_goes_through_the_reasoning_matrix(
    claude, gateway, model, upstream_model, thinking, sent
):
    claude.messages.create(model=model, max_tokens=64, messages=MESSAGES, thinking=thinking)
    assert gateway.upstream.last(upstream_model).body.get("reasoning_effort") == sent


def test_reasoning_is_not_shown_unless_thinking_is_asked_for(claude, gateway):
    message = claude.messages.create(model="local-thinker", max_tokens=64, messages=MESSAGES)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "4"
    assert "reasoning_effort" not in gateway.upstream.last("reasoning").body


@pytest.mark.parametrize(
    ("system", "sent"),
    [
        ("Be brief.", "Be brief."),
        ([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}], None),
        (
            [{"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}],
            [{"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}],
        ),
    ],
)
def test_system_prompts_reach_the_upstream_as_a_system_message(claude, gateway, system, sent):
    claude.messages.create(model="local-model", max_tokens=64, system=system, messages=MESSAGES)
    first = gateway.upstream.last("hello").body["messages"][0]
    assert first == {"role": "system", "content": sent or "Be brief.\nBe kind."}


def test_request_fields_are_translated(claude, gateway):
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    claude.messages.create(
        model="local-model",
        max_tokens=99,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": image},
                ],
            }
        ],
        stop_sequences=["END"],
        metadata={"user_id": "user-7"},
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        # Older SDKs take these as arguments; the 2026 SDK dropped them, the API did not.
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 40},
    )
    body = gateway.upstream.last("hello").body
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ]
    expected = {
        "max_tokens": 99,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
        "user": "user-7",
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    assert {name: body[name] for name in expected} == expected


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences(claude, gateway, stream):
    message = _message(
        claude,
        stream,
        model="fake/stop-sequence",
        max_tokens=64,
        messages=MESSAGES,
        stop_sequences=["###", "END"],
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "###")
    assert message.content[0].text == "Hello"
    assert gateway.upstream.last("fake/stop-sequence").body["stop"] == ["###", "END"]


@pytest.mark.parametrize(
    ("model", "status", "error_type", "error"),
    [
        ("fake/error-400", 400, "invalid_request_error", anthropic.BadRequestError),
        ("fake/error-403", 403, "permission_error", anthropic.PermissionDeniedError),
        ("no-such-model", 404, "not_found_error", anthropic.NotFoundError),
        ("fake/error-404", 404, "not_found_error", anthropic.NotFoundError),
        ("fake/error-413", 413, "request_too_large", anthropic.APIStatusError),
        ("fake/error-429", 429, "rate_limit_error", anthropic.RateLimitError),
        ("fake/error-500", 500, "api_error", anthropic.InternalServerError),
        ("fake/error-401", 500, "api_error", anthropic.InternalServerError),
        ("fake/error-503", 529, "overloaded_error", anthropic.OverloadedError),
        ("fake/error-504", 504, "timeout_error", anthropic.APIStatusError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_errors_before_the_stream_have_anthropic_statuses_and_types(
    claude, model, status, error_type, error, stream
):
    # A route per case: repeated failures of one route would open its breaker (routes_resting).
    model = model.replace("fake/", f"fake-{'stream' if stream else 'whole'}/")
    with pytest.raises(error) as caught:
        claude.messages.create(model=model, max_tokens=64, messages=MESSAGES, stream=stream)
    assert caught.value.status_code == status
    body = _error_body(caught.value)
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert body["error"]["message"]
    assert body["request_id"] == caught.value.request_id
    assert caught.value.request_id.startswith("req_")


def _error_body(exc: anthropic.APIStatusError) -> dict[str, Any]:
    assert isinstance(exc.body, dict)
    return exc.body


def test_an_error_in_the_first_chunk_is_still_a_real_status(claude):
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(
            model="fake/first-chunk-error", max_tokens=64, messages=MESSAGES, stream=True
        )
    assert _error_body(caught.value)["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "cm_wrong"}, {"authorization": "Basic x"}])
def test_requests_without_a_valid_key_are_401(gateway, headers):
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        json={"model": "local-model", "max_tokens": 8, "messages": MESSAGES},
        headers=headers,
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_the_sdk_raises_authentication_error_for_a_bad_key(gateway):
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key="cm_wrong", max_retries=0) as sdk,
        pytest.raises(anthropic.AuthenticationError),
    ):
        sdk.messages.create(model="local-model", max_tokens=8, messages=MESSAGES)


def test_a_base_url_ending_in_v1_is_told_to_drop_it(gateway):
    # The OpenAI SDK's base_url, reused: the Anthropic SDK adds /v1 itself.
    with (
        anthropic.Anthropic(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as sdk,
        pytest.raises(anthropic.NotFoundError) as caught,
    ):
        sdk.messages.create(model="local-model", max_tokens=8, messages=MESSAGES)
    assert "Did you mean /v1/messages? The Anthropic SDK adds /v1 itself" in str(caught.value)


def test_a_bearer_token_works_too(gateway):
    with anthropic.Anthropic(base_url=gateway.url, auth_token=gateway.key, max_retries=0) as sdk:
        message = sdk.messages.create(model="local-model", max_tokens=8, messages=MESSAGES)
    assert isinstance(message.content[0], anthropic.types.TextBlock)
    assert message.content[0].text == "Hello world"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "local-model", "messages": MESSAGES}, "max_tokens"),
        ({"model": "local-model", "max_tokens": 8}, "messages"),
        ({"model": "local-model", "max_tokens": 8, "messages": []}, "messages"),
        (
            {
                "model": "local-model",
                "max_tokens": 8,
                "messages": [{"role": "system", "content": "x"}],
            },
            "messages[0].role",
        ),
        ({"max_tokens": 8, "messages": MESSAGES, "temperature": 1.5}, "model"),
        (
            {"model": "local-model", "max_tokens": 8, "messages": MESSAGES, "temperature": 1.5},
            "temperature",
        ),
        (
            {
                "model": "local-model",
                "max_tokens": 8,
                "messages": MESSAGES,
                "thinking": {"type": "enabled"},
            },
            "thinking.budget_tokens",
        ),
        (
            {
                "model": "local-model",
                "max_tokens": 8,
                "messages": MESSAGES,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools[0].type",
        ),
    ],
)
def test_bad_requests_are_400_before_any_upstream_call(gateway, body, param):
    before = len(gateway.upstream.requests)
    response = httpx.post(
        f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": gateway.key}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert f"'{param}'" in error["message"]
    assert len(gateway.upstream.requests) == before


@pytest.mark.parametrize(
    "model", ["fake/drop-after-2", "fake/no-finish", "fake/bad-json", "fake/midstream-error"]
)
def test_a_stream_broken_midway_makes_the_sdk_raise(claude, model):
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        claude.messages.stream(model=model, max_tokens=64, messages=MESSAGES) as stream,
    ):
        for _ in stream.text_stream:
            pass
    body = _error_body(caught.value)
    assert (body["type"], body["error"]["type"]) == ("error", "api_error")


def test_a_broken_stream_ends_with_an_error_event_and_no_message_stop(gateway):
    events = _sse_events(_raw_stream(gateway, model="fake/midstream-error"))
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-1] == "error"
    assert "message_stop" not in names
    assert events[-1][1]["error"]["message"].endswith("Provider returned error")


@pytest.mark.parametrize("model", ["local-model", "kimi-k2.5", "sim/instant", "local-tools"])
@pytest.mark.parametrize("stream", [False, True])
def test_openai_and_anthropic_endpoints_agree_on_text_and_usage(claude, client, model, stream):
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    openai_tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": MESSAGES}
    message = _message(claude, stream, tools=tools, **kwargs)
    text, prompt, completion, calls = _openai_answer(client, stream, tools=openai_tools, **kwargs)
    assert "".join(b.text for b in message.content if b.type == "text") == text
    assert [b.input for b in message.content if b.type == "tool_use"] == calls
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt, completion)


def _openai_answer(client, stream: bool, **kwargs: Any) -> tuple[str, int, int, list[Any]]:
    if not stream:
        completion = client.chat.completions.create(**kwargs)
        reply = completion.choices[0].message
        calls = [orjson.loads(call.function.arguments) for call in reply.tool_calls or ()]
        usage = completion.usage
        return reply.content or "", usage.prompt_tokens, usage.completion_tokens, calls
    with client.chat.completions.stream(**kwargs, stream_options={"include_usage": True}) as chunks:
        final = chunks.get_final_completion()
    reply = final.choices[0].message
    calls = [orjson.loads(call.function.arguments) for call in reply.tool_calls or ()]
    return reply.content or "", final.usage.prompt_tokens, final.usage.completion_tokens, calls


def test_simulator_models_stream_through_the_messages_api(claude):
    with claude.messages.stream(model="sim/instant", max_tokens=64, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("Quicksort picks a pivot")
    assert final.usage.output_tokens == 20
    assert final.stop_reason == "end_turn"


def test_simulator_thinking_and_max_tokens(claude):
    thinking = {"type": "enabled", "budget_tokens": 4096}
    with claude.messages.stream(
        model="sim/instant-thinker", max_tokens=50, messages=MESSAGES, thinking=thinking
    ) as stream:
        final = stream.get_final_message()
    # effort "high" doubles the thinking, which then eats the whole 50-token budget
    assert [block.type for block in final.content] == ["thinking"]
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 50


def test_count_tokens_is_an_estimate_and_calls_no_upstream(claude, gateway):
    before = len(gateway.upstream.requests)
    raw = claude.messages.with_raw_response.count_tokens(
        model="local-model",
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello to the whole wide world, please."}],
        tools=[WEATHER_TOOL],
    )
    assert raw.headers["x-callmissed-estimate"] == "true"
    assert 40 < raw.parse().input_tokens < 120
    assert len(gateway.upstream.requests) == before


def test_count_tokens_knows_unknown_models(claude):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=MESSAGES)


def test_openai_sdk_still_gets_openai_errors(client):
    # The Anthropic renderer's statuses must not leak into the OpenAI surface.
    with pytest.raises(openai.InternalServerError) as caught:
        # A route of its own: fake/error-500's breaker may be open from the tests before.
        client.chat.completions.create(model="leak-check/error-500", messages=MESSAGES)
    assert caught.value.status_code == 502
