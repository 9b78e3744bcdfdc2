"""A native Anthropic upstream (providers/anthropic.py), driven by the official SDKs end to end.

The anthropic SDK passes through within the dialect: the fake upstream (tests/fakes/
anthropic_upstream.py) refuses a thinking block whose signature did not come back unchanged,
as Anthropic does, so multi-turn thinking with tools works only if nothing was rewritten.
The openai SDK is translated, streamed and not, against the same models.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.accounting import balance, new_key, settle, start_billing_gateway
from tests.conftest import stop_gateway
from tests.fakes.anthropic_upstream import API_KEY, SIGNATURE, THINKING

WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
OPENAI_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": WEATHER_TOOL["input_schema"],
    },
}
ASK: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
THINK: dict[str, Any] = {"type": "enabled", "budget_tokens": 1024}


@pytest.fixture
def claude(gateway):
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0) as sdk:
        yield sdk


def _second_turn(first: anthropic.types.Message) -> list[Any]:
    """The conversation with the first answer sent back as the SDK returned it."""
    assistant = {"role": "assistant", "content": [block.model_dump() for block in first.content]}
    tool_use = first.content[1]
    assert isinstance(tool_use, anthropic.types.ToolUseBlock)
    result = {"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}
    return [*ASK, assistant, {"role": "user", "content": [result]}]


def _check_first_turn(message: anthropic.types.Message) -> None:
    thinking, tool_use = message.content
    assert thinking.type == "thinking" and tool_use.type == "tool_use"
    assert (thinking.thinking, thinking.signature) == (THINKING, SIGNATURE)
    assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    assert message.model == "claude-thinker"


@pytest.mark.parametrize("stream", [False, True])
def test_multi_turn_thinking_with_tools_keeps_the_signature(claude, gateway, stream):
    ask: dict[str, Any] = {"model": "claude-thinker", "max_tokens": 2048, "thinking": THINK}
    ask["tools"] = [WEATHER_TOOL]
    if stream:
        with claude.messages.stream(messages=ASK, **ask) as events:
            first = events.get_final_message()
    else:
        first = claude.messages.create(messages=ASK, **ask)
    _check_first_turn(first)
    messages = _second_turn(first)
    if stream:
        with claude.messages.stream(messages=messages, **ask) as events:
            text = "".join(events.text_stream)
            second = events.get_final_message()
    else:
        second = claude.messages.create(messages=messages, **ask)
        text = second.content[0].text
    assert text == "It is sunny in Paris."
    assert second.stop_reason == "end_turn"
    received = gateway.upstream.last("claude-thinker")
    assert received.dialect == "anthropic"
    assert received.headers["x-api-key"] == API_KEY
    assert received.headers["anthropic-version"] == "2023-06-01"
    assert not {"authorization", "anthropic-beta"} & {name.lower() for name in received.headers}
    sent = {**ask, "messages": messages, **({"stream": True} if stream else {})}
    assert received.body == sent  # passed through: only the model would change, and it did not


def test_the_route_renames_the_model_both_ways_and_beta_features_reach_it(claude, gateway):
    beta = "interleaved-thinking-2025-05-14"
    raw = claude.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=ASK,
        metadata={"user_id": "u1"},
        extra_headers={"anthropic-beta": beta},
    )
    assert raw.headers["x-callmissed-route"] == "anthropic"
    message = raw.parse()
    assert message.model == "claude-haiku-4-5"
    assert message.content[0].text == "Hello world"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 6)
    received = gateway.upstream.last("claude-haiku-4-5")
    assert received.body["metadata"] == {"user_id": "u1"}
    assert received.headers["anthropic-beta"] == beta


def test_an_anthropic_stream_passes_every_event_through(gateway):
    body = {"model": "claude-thinker", "max_tokens": 2048, "thinking": THINK, "stream": True}
    body |= {"messages": ASK, "tools": [WEATHER_TOOL]}
    headers = {"x-api-key": gateway.key, "anthropic-version": "2023-06-01"}
    reply = httpx.post(f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=10)
    assert reply.status_code == 200
    names = [line[7:] for line in reply.text.splitlines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"]
    assert names.count("content_block_delta") == 5  # two thinking, a signature, two json
    assert names[-2:] == ["message_delta", "message_stop"]
    assert '"signature_delta"' in reply.text and SIGNATURE in reply.text


def _openai_turn(client: openai.OpenAI, messages: list[Any], stream: bool) -> Any:
    """One answer of claude-thinker with thinking on, as the SDK gives it (streamed: as its
    stream helper accumulates the chunks)."""
    ask: dict[str, Any] = {"model": "claude-thinker", "messages": messages}
    ask |= {"tools": [OPENAI_TOOL], "reasoning_effort": "low"}
    if not stream:
        return client.chat.completions.create(**ask).choices[0]
    with client.chat.completions.stream(**ask) as events:
        return events.get_final_completion().choices[0]


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_multi_turn_thinking_with_tools(client, gateway, stream):
    """Translated both ways: the thinking block's signature travels in reasoning_details (as
    OpenRouter's do), so the second turn sends it back signed and unchanged."""
    choice = _openai_turn(client, ASK, stream)
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.function.name, call.function.arguments) == (
        "toolu_01",
        "get_weather",
        '{"city":"Paris"}',
    )
    extra = choice.message.model_extra or {}
    assert extra["reasoning"] == THINKING
    (detail,) = extra["reasoning_details"]
    assert (detail["text"], detail["signature"]) == (THINKING, SIGNATURE)
    assert detail["format"] == "anthropic-claude-v1"
    sent = gateway.upstream.last("claude-thinker").body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["max_tokens"] == 4096  # Messages requires it: the default, past the budget
    assert sent["tools"] == [WEATHER_TOOL]
    tool = {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
    turn = [*ASK, choice.message.model_dump(exclude_none=True), tool]
    second = _openai_turn(client, turn, stream)
    assert second.message.content == "It is sunny in Paris."
    assert second.finish_reason == "stop"
    sent = gateway.upstream.last("claude-thinker").body
    assert sent["messages"][1]["content"] == [
        {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert sent["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny"}],
    }


def test_openai_sdk_streams_text_tools_and_usage(client, gateway):
    stream = client.chat.completions.create(
        model="claude-haiku-4-5",
        messages=[{"role": "system", "content": "Be brief."}, *ASK],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=32,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 6)
    sent = gateway.upstream.last("claude-haiku-4-5").body
    assert sent["system"] == [{"type": "text", "text": "Be brief."}]
    assert (sent["max_tokens"], sent["stream"]) == (32, True)
    calls: dict[int, str] = {}
    for chunk in client.chat.completions.create(
        model="claude-thinker", messages=ASK, tools=[OPENAI_TOOL], stream=True
    ):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            calls[delta.index] = calls.get(delta.index, "") + (delta.function.arguments or "")
    assert calls == {0: '{"city":"Paris"}'}


@pytest.mark.parametrize(
    ("model", "anthropic_error", "openai_error"),
    [
        ("claude-overloaded", anthropic.InternalServerError, openai.InternalServerError),
        ("claude-refused", anthropic.BadRequestError, openai.BadRequestError),
    ],
)
def test_upstream_errors_keep_their_meaning(claude, client, model, anthropic_error, openai_error):
    with pytest.raises(anthropic_error) as caught:
        claude.messages.create(model=model, max_tokens=64, messages=ASK)
    assert API_KEY not in str(caught.value.body)
    with pytest.raises(openai_error) as raised:
        client.chat.completions.create(model=model, messages=ASK)
    assert API_KEY not in str(raised.value.body)
    if model == "claude-overloaded":
        assert (caught.value.status_code, raised.value.status_code) == (529, 503)


@pytest.mark.parametrize("model", ["claude-broken", "claude-cut"])
def test_a_broken_stream_ends_with_an_error_each_sdk_raises(claude, client, model):
    with (
        pytest.raises(anthropic.APIStatusError),
        claude.messages.stream(model=model, max_tokens=64, messages=ASK) as events,
    ):
        for _ in events:
            pass
    stream = client.chat.completions.create(model=model, messages=ASK, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


PRICES = """
[models."claude-priced"]
routes = ["anthropic:claude-cached"]

[prices."claude-priced"]
input = 1.0
cached_input = 0.5
cache_write = 2.0
output = 2.0
"""
# The fake's cached usage: 200 input, 600 read from the cache, 200 written to it, 6 output.
CACHED_COST = 200 * 1 + 600 // 2 + 200 * 2 + 6 * 2


@pytest.fixture(scope="module")
def billing(upstream, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("anthropic-billing")
    running = start_billing_gateway(upstream, workdir, extra_config=PRICES)
    yield running
    stop_gateway(running)


def test_a_metered_key_pays_cache_reads_and_writes_at_their_prices(billing):
    key, key_id = new_key(billing, credits=1)
    with anthropic.Anthropic(base_url=billing.url, api_key=key, max_retries=0) as claude:
        message = claude.messages.create(model="claude-priced", max_tokens=64, messages=ASK)
        usage = message.usage
        assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (600, 200)
        with claude.messages.stream(model="claude-priced", max_tokens=64, messages=ASK) as s:
            assert "".join(s.text_stream) == "Hello world"
        with pytest.raises(anthropic.PermissionDeniedError, match="has no price"):
            claude.messages.create(model="claude-thinker", max_tokens=64, messages=ASK)
    with openai.OpenAI(base_url=billing.base_url, api_key=key, max_retries=0) as sdk:
        answer = sdk.chat.completions.create(model="claude-priced", messages=ASK)
        assert answer.usage is not None and answer.usage.prompt_tokens == 1000
        assert (answer.usage.model_extra or {})["cost"] == CACHED_COST / 1_000_000
    settle(billing, key)
    assert balance(billing, key_id) == 1_000_000 - 3 * CACHED_COST
