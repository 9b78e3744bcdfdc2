"""providers/anthropic.py's own quirks: the chat -> Messages translation, usage, error events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from callmissed.accounting.pricing import TokenUsage, parse_usage
from callmissed.errors import InvalidRequest, UpstreamOverloaded
from callmissed.providers.anthropic import Anthropic, chat_usage, to_messages_body
from callmissed.settings import ModelSettings, ProviderSettings, Route

MODEL = ModelSettings(name="m", routes=(Route("a", "claude-x"),), reasoning="passthrough")


def _translate(**chat: Any) -> dict[str, Any]:
    return to_messages_body({"model": "m", **chat}, "claude-x")


def test_system_and_tool_turns_become_blocks_and_one_user_turn():
    call = {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    body = _translate(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call], "reasoning": "hmm"},
            {"role": "tool", "tool_call_id": "t1", "content": "42"},
            {"role": "user", "content": [{"type": "text", "text": "and?"}]},
        ]
    )
    assert body["system"] == [{"type": "text", "text": "Be brief."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                {"type": "text", "text": "and?"},
            ],
        },
    ]
    assert body["max_tokens"] == 4096  # required by Messages: the default without one


def test_images_tools_choices_stops_and_cache_breakpoints_translate():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    text = {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = _translate(
        messages=[{"role": "user", "content": [image, text]}],
        tools=[tool],
        tool_choice="required",
        parallel_tool_calls=False,
        stop="END",
        max_completion_tokens=10,
        user="u1",
    )
    source = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    assert body["messages"][0]["content"] == [{"type": "image", "source": source}, text]
    assert body["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert (body["stop_sequences"], body["max_tokens"]) == (["END"], 10)
    assert body["metadata"] == {"user_id": "u1"}


@pytest.mark.parametrize(
    ("effort", "thinking", "max_tokens"),
    [
        ("none", {"type": "disabled"}, 100),
        ("low", {"type": "enabled", "budget_tokens": 1024}, 1124),
        ("high", {"type": "enabled", "budget_tokens": 4096}, 4196),
        (None, None, 100),
    ],
)
def test_reasoning_effort_becomes_a_thinking_budget_inside_max_tokens(effort, thinking, max_tokens):
    chat: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    if effort is not None:
        chat["reasoning_effort"] = effort
    body = _translate(**chat)
    assert body.get("thinking") == thinking
    assert body["max_tokens"] == max_tokens


def test_a_part_messages_cannot_carry_is_the_clients_400():
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(InvalidRequest):
        _translate(messages=[{"role": "user", "content": [audio]}])


def test_cache_reads_and_writes_are_parts_of_the_prompt_for_both_readers():
    usage = {
        "input_tokens": 200,
        "cache_read_input_tokens": 600,
        "cache_creation_input_tokens": 100,
        "output_tokens": 7,
    }
    expected = TokenUsage(prompt=900, completion=7, cached=600, cache_write=100)
    assert parse_usage(usage) == expected
    assert parse_usage(chat_usage(usage)) == expected


def test_an_error_event_keeps_the_status_its_type_means():
    provider = Anthropic(ProviderSettings("a", "anthropic", "http://up", api_key="sk-secret"))
    event = {"type": "error", "error": {"type": "overloaded_error", "message": "sk-secret busy"}}
    error = provider.event_error(event)
    assert isinstance(error, UpstreamOverloaded) and error.upstream_status == 529
    assert "sk-secret" not in error.message
    with pytest.raises(UpstreamOverloaded):
        provider.parse_message(orjson.dumps(event))


def test_signed_reasoning_details_go_back_as_thinking_blocks_and_others_are_left_out():
    details = [
        {"type": "reasoning.text", "text": "Hmm, ", "format": "anthropic-claude-v1", "index": 0},
        {"type": "reasoning.text", "text": "yes.", "index": 0},
        {"type": "reasoning.text", "signature": "sig==", "index": 0},
        {"type": "reasoning.encrypted", "data": "opaque", "format": "anthropic-claude-v1"},
        {"type": "reasoning.text", "text": "x", "signature": "s", "format": "openai-v1"},
        {"type": "reasoning.text", "text": "unsigned", "index": 7},
    ]
    assistant = {"role": "assistant", "content": "ok", "reasoning_details": details}
    body = _translate(messages=[{"role": "user", "content": "hi"}, assistant])
    assert body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Hmm, yes.", "signature": "sig=="},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "ok"},
    ]
