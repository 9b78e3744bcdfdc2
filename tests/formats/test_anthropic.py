"""formats.anthropic and formats.anthropic_message: pure translation, JSON in, JSON out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from callmissed.errors import InvalidRequest
from callmissed.formats.anthropic import MessageRequest, parse_message_request
from callmissed.formats.anthropic_message import (
    MessageStreamEncoder,
    build_message,
    build_usage,
)

OK: dict[str, Any] = {
    "model": "m",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "hi"}],
}


def _chat(**extra: Any) -> dict[str, Any]:
    return parse_message_request({**OK, **extra}).chat


def test_a_minimal_request_and_unknown_fields():
    request = parse_message_request({**OK, "service_tier": "auto", "container": None})
    assert request.chat == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100,
    }
    assert (request.model, request.stream, request.thinking) == ("m", False, False)


def test_stream_and_stop_sequences():
    request = parse_message_request({**OK, "stream": True, "stop_sequences": ["a", "b"]})
    assert request.chat["stream"] is True
    assert request.chat["stop"] == ["a", "b"]
    assert request.stop_sequences == ("a", "b")


def test_system_blocks_become_one_string_unless_they_carry_cache_control():
    blocks = [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]
    assert _chat(system=blocks)["messages"][0] == {"role": "system", "content": "One.\nTwo."}
    cached = [{**blocks[0], "cache_control": {"type": "ephemeral"}}, blocks[1]]
    assert _chat(system=cached)["messages"][0]["content"] == [
        {"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Two."},
    ]


CACHE = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}


def test_cache_breakpoints_land_on_openrouters_content_parts_and_tools():
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": image, "cache_control": CACHE},
                {"type": "document", "source": pdf, "title": "a.pdf", "cache_control": CACHE},
                {"type": "document", "source": {"type": "text", "data": "Notes"},
                 "cache_control": HOUR},
                {"type": "text", "text": "Read these.", "cache_control": CACHE},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "On it.", "cache_control": CACHE},
                {"type": "tool_use", "id": "t1", "name": "look", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "found it",
                 "cache_control": HOUR},
            ],
        },
    ]  # fmt: skip
    tool = {"name": "look", "input_schema": {"type": "object"}, "cache_control": CACHE}
    chat = _chat(messages=messages, tools=[tool])
    assert chat["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image['data']}"},
         "cache_control": CACHE},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;"
                                  "base64,JVBERi0="}, "cache_control": CACHE},
        {"type": "text", "text": "Notes", "cache_control": HOUR},
        {"type": "text", "text": "Read these.", "cache_control": CACHE},
    ]  # fmt: skip
    assert chat["messages"][1]["content"] == [
        {"type": "text", "text": "On it.", "cache_control": CACHE}
    ]
    assert chat["messages"][2] == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": [{"type": "text", "text": "found it", "cache_control": HOUR}],
    }
    assert chat["tools"][0]["cache_control"] == CACHE
    assert "cache_control" not in chat  # placed on the blocks, not passed on as a field


def test_a_tool_result_keeps_its_inner_breakpoints_and_its_error_prefix():
    result = {
        "type": "tool_result",
        "tool_use_id": "t1",
        "is_error": True,
        "content": [
            {"type": "text", "text": "bad city", "cache_control": CACHE},
            {"type": "text", "text": "try again"},
        ],
    }
    [tool] = _chat(messages=[{"role": "user", "content": [result]}])["messages"]
    assert tool["content"] == [
        {"type": "text", "text": "Error: bad city", "cache_control": CACHE},
        {"type": "text", "text": "try again"},
    ]
    plain = {**result, "content": [{"type": "text", "text": "bad city"}]}
    [tool] = _chat(messages=[{"role": "user", "content": [plain]}])["messages"]
    assert tool["content"] == "Error: bad city"  # no breakpoint: one string, as before
    empty = {"type": "tool_result", "tool_use_id": "t1", "content": "", "cache_control": CACHE}
    [tool] = _chat(messages=[{"role": "user", "content": [empty]}])["messages"]
    assert tool["content"] == ""  # Anthropic takes no breakpoint on an empty block


def test_top_level_cache_control_marks_the_last_block():
    messages = [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "An answer"},
        {"role": "user", "content": "Second question"},
    ]
    chat = _chat(messages=messages, cache_control=HOUR)
    assert chat["messages"][-1]["content"] == [
        {"type": "text", "text": "Second question", "cache_control": HOUR}
    ]
    assert chat["messages"][0]["content"] == "First question"
    marked = [{"type": "text", "text": "Q", "cache_control": CACHE}]
    chat = _chat(messages=[{"role": "user", "content": marked}], cache_control=HOUR)
    assert chat["messages"][0]["content"] == marked  # already a breakpoint there: kept
    with pytest.raises(InvalidRequest, match="cache_control"):
        _chat(cache_control="ephemeral")
    with pytest.raises(InvalidRequest, match=r"tools\[0\]\.cache_control"):
        _chat(tools=[{"name": "x", "input_schema": {}, "cache_control": True}])


def test_tool_results_come_before_the_rest_of_their_user_turn():
    image = {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}}
    content = [
        {"type": "text", "text": "Here you go."},
        {"type": "tool_result", "tool_use_id": "t1", "content": "18C"},
        {
            "type": "tool_result",
            "tool_use_id": "t2",
            "content": [{"type": "text", "text": "no such city"}, image],
            "is_error": True,
        },
    ]
    messages = _chat(messages=[{"role": "user", "content": content}])["messages"]
    assert messages == [
        {"role": "tool", "tool_call_id": "t1", "content": "18C"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error: no such city"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here you go."},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png"}},
            ],
        },
    ]


def test_assistant_blocks_become_content_tool_calls_and_reasoning():
    content = [
        {"type": "thinking", "thinking": "Look it up.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    messages = _chat(
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": content},
        ]
    )["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "t1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
        "reasoning": "Look it up.",
    }


def test_documents_become_files_or_text():
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}
    content = [
        {"type": "document", "source": pdf, "title": "report.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
    ]
    parts = _chat(messages=[{"role": "user", "content": content}])["messages"][0]["content"]
    assert parts == [
        {
            "type": "file",
            "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
        },
        {"type": "text", "text": "x"},
    ]


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice(choice, sent):
    tools = [{"name": "f", "input_schema": {"type": "object"}, "strict": True}]
    chat = _chat(tools=tools, tool_choice=choice)
    assert chat["tool_choice"] == sent
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object"}, "strict": True},
        }
    ]
    assert "parallel_tool_calls" not in chat


def test_no_tools_means_no_tool_fields():
    assert "tool_choice" not in _chat(tools=[], tool_choice={"type": "auto"})


@pytest.mark.parametrize(
    ("budget", "effort"),
    [
        (1, "minimal"),
        (1023, "minimal"),
        (1024, "low"),
        (2047, "low"),
        (2048, "medium"),
        (4095, "medium"),
        (4096, "high"),
        (128_000, "high"),
    ],
)
def test_thinking_budget_thresholds(budget, effort):
    request = parse_message_request(
        {**OK, "thinking": {"type": "enabled", "budget_tokens": budget}}
    )
    assert request.chat["reasoning_effort"] == effort
    assert request.thinking is True


@pytest.mark.parametrize(
    ("thinking", "config", "effort", "shown"),
    [
        (None, None, None, False),
        ({"type": "disabled"}, None, "none", False),
        ({"type": "disabled"}, {"effort": "high"}, "none", False),
        ({"type": "adaptive"}, None, None, True),
        ({"type": "adaptive"}, {"effort": "max"}, "high", True),
        ({"type": "enabled", "budget_tokens": 1024}, {"effort": "medium"}, "medium", True),
        ({"type": "enabled", "budget_tokens": 9000, "display": "omitted"}, None, "high", False),
        (None, {"effort": "low"}, "low", False),
    ],
)
def test_thinking_and_effort(thinking, config, effort, shown):
    body = {**OK, "thinking": thinking, "output_config": config}
    request = parse_message_request(body)
    assert request.chat.get("reasoning_effort") == effort
    assert request.thinking is shown


def test_output_format_becomes_a_json_schema_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = _chat(output_config={"format": {"type": "json_schema", "schema": schema}})
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "structured_output", "schema": schema, "strict": True},
    }


def test_count_only_needs_no_max_tokens():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert "max_tokens" not in parse_message_request(body, count_only=True).chat
    with pytest.raises(InvalidRequest):
        parse_message_request(body)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "messages[0].content[0].type",
        ),
        ({"system": [{"type": "image"}]}, "system"),
        ({"temperature": 2}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"stream": "yes"}, "stream"),
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        (
            {"tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "x"}},
            "tool_choice.type",
        ),
        ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
        ({"output_config": {"format": {"type": "text"}}}, "output_config.format"),
    ],
)
def test_bad_fields_name_their_param(extra, param):
    with pytest.raises(InvalidRequest) as caught:
        parse_message_request({**OK, **extra})
    assert caught.value.param == param


# Answers ------------------------------------------------------------------------------------

REQUEST = MessageRequest({}, "kimi", stream=False, thinking=True, stop_sequences=("###",))


def _completion(message: dict[str, Any], finish: str = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


def test_build_message_orders_thinking_text_and_tool_use():
    message = {
        "role": "assistant",
        "content": "Checking.",
        "reasoning": "Need the weather.",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"a":1}'}},
            {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "{oops"}},
        ],
    }
    built = build_message(_completion(message, "tool_calls"), REQUEST)
    assert built["id"].startswith("msg_")
    assert (built["type"], built["role"], built["model"]) == ("message", "assistant", "kimi")
    assert built["content"] == [
        {"type": "thinking", "thinking": "Need the weather.", "signature": ""},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "c1", "name": "w", "input": {"a": 1}},
        {"type": "tool_use", "id": "c2", "name": "w", "input": {}},
    ]
    assert (built["stop_reason"], built["stop_sequence"]) == ("tool_use", None)
    assert built["usage"] == {"input_tokens": 10, "output_tokens": 4}


def test_reasoning_is_hidden_when_thinking_was_not_asked_for():
    hidden = MessageRequest({}, "kimi", stream=False, thinking=False, stop_sequences=())
    message = {"role": "assistant", "content": "4", "reasoning": "2+2"}
    assert build_message(_completion(message), hidden)["content"] == [{"type": "text", "text": "4"}]


@pytest.mark.parametrize(
    ("finish", "choice", "stop_reason", "stop_sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("stop", {"stop_reason": "###"}, "stop_sequence", "###"),
        ("stop", {"stop_reason": 151643}, "end_turn", None),  # vLLM: a stop token id
        ("length", {}, "max_tokens", None),
        ("tool_calls", {}, "tool_use", None),
        ("function_call", {}, "tool_use", None),
        ("content_filter", {}, "refusal", None),
        ("something_new", {}, "end_turn", None),
    ],
)
def test_finish_reasons(finish, choice, stop_reason, stop_sequence):
    built = build_message(_completion({"content": "x"}, finish, **choice), REQUEST)
    assert (built["stop_reason"], built["stop_sequence"]) == (stop_reason, stop_sequence)


def test_usage_keeps_cache_reads_and_writes_apart_from_input():
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 30,
        "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    assert build_usage(usage) == {
        "input_tokens": 30,
        "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 60,
        "output_tokens": 30,
        "output_tokens_details": {"thinking_tokens": 12},
    }
    assert build_usage(None) == {"input_tokens": 0, "output_tokens": 0}
    # No usage from the upstream: the prompt as estimated (and billed) stands for it.
    assert build_usage(None, 42) == {"input_tokens": 42, "output_tokens": 0}


# Streaming ----------------------------------------------------------------------------------


def _events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.decode().strip().split("\n\n"):
        name, data = block.split("\n")
        payload = orjson.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        events.append(payload)
    return events


def _delta(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _call(index: int, call_id: str | None = None, name: str | None = None, args: str = ""):
    call: dict[str, Any] = {"index": index, "function": {"arguments": args}}
    if call_id:
        call["id"], call["type"] = call_id, "function"
        call["function"]["name"] = name
    return _delta(tool_calls=[call])


def _stream(request: MessageRequest, chunks: list[dict[str, Any]], usage: Any) -> bytes:
    encoder = MessageStreamEncoder(request)
    return encoder.start() + b"".join(encoder.feed(c) for c in chunks) + encoder.finish(usage)


def test_stream_blocks_have_dense_indices_and_open_one_at_a_time():
    chunks = [
        _delta(role="assistant", content=""),
        _delta(reasoning="Think"),
        _delta(reasoning="ing."),
        _delta(content="Two calls."),
        _call(0, "c1", "w", '{"city":'),
        _call(0, args='"Paris"}'),
        _call(1, "c2", "w", "{}"),
        _delta("tool_calls"),
    ]
    usage = {"prompt_tokens": 7, "completion_tokens": 20}
    events = _events(_stream(REQUEST, chunks, usage))
    summary = [
        (e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type"))
        for e in events
    ]
    assert summary == [
        ("message_start", None, None),
        ("ping", None, None),
        ("content_block_start", 0, "thinking"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"),
        ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"),
        ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert events[9]["content_block"] == {"type": "tool_use", "id": "c1", "name": "w", "input": {}}
    assert events[10]["delta"]["partial_json"] == '{"city":'
    assert events[16]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[16]["usage"] == {"input_tokens": 7, "output_tokens": 20}


def test_stream_without_thinking_skips_reasoning_and_catches_a_stop_sequence():
    request = MessageRequest({}, "m", stream=True, thinking=False, stop_sequences=("###",))
    chunks = [
        _delta(reasoning="hidden"),
        _delta(content="Hi"),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "###"}]},
        {"choices": []},
    ]
    events = _events(_stream(request, chunks, None))
    assert [e["type"] for e in events[2:]] == [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2]["index"] == 0
    assert events[5]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "###"}
    assert events[5]["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_message_start_carries_the_prompt_estimate_until_the_upstream_counts():
    encoder = MessageStreamEncoder(REQUEST, input_estimate=1234)
    usage = {"prompt_tokens": 1300, "completion_tokens": 2,
             "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 0}}  # fmt: skip
    raw = encoder.start() + encoder.feed(_delta("stop", content="Hi")) + encoder.finish(usage)
    events = _events(raw)
    assert events[0]["message"]["usage"] == {
        "input_tokens": 1234,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 0,
    }
    assert events[-2]["usage"] == {
        "input_tokens": 300,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 1000,
        "output_tokens": 2,
    }
    unreported = MessageStreamEncoder(REQUEST, input_estimate=1234)
    raw = unreported.start() + unreported.finish(None)
    assert _events(raw)[-2]["usage"] == {"input_tokens": 1234, "output_tokens": 0}


def test_an_empty_answer_is_still_a_complete_message():
    events = _events(_stream(REQUEST, [_delta("length", content="")], None))
    assert [e["type"] for e in events] == ["message_start", "ping", "message_delta", "message_stop"]
    assert events[0]["message"]["id"].startswith("msg_")
    assert events[2]["delta"]["stop_reason"] == "max_tokens"
