"""callmissed.formats.openai: request checks and the chunk fixes the SDKs need."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from callmissed.errors import InvalidRequest
from callmissed.formats.openai import (
    ChunkNormaliser,
    ContentTemplate,
    check_chat_request,
    needs_normalising,
    normalise_completion,
    plain_content,
)

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_minimal_request_passes_and_unknown_fields_are_allowed():
    check_chat_request({**OK, "brand_new": {"x": 1}, "temperature": None})


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"max_completion_tokens": True}, "max_completion_tokens"),
        ({"response_format": {"schema": {}}}, "response_format"),
    ],
)
def test_bad_fields_name_their_param(extra, param):
    with pytest.raises(InvalidRequest) as caught:
        check_chat_request({**OK, **extra})
    assert caught.value.param == param


def test_plain_content_chunks_need_no_edit():
    chunk = (
        b'{"id":"x","choices":[{"index":0,"delta":{"content":"usage role"},"finish_reason":null}]}'
    )
    assert not _needs_normalising(chunk)
    assert not _needs_normalising(b'{"choices":[{"delta":{"content":"a"}}],"usage": null}')
    assert not _needs_normalising(b'{"choices":[{"delta":{"refusal":"no"},"logprobs":null}]}')


@pytest.mark.parametrize(
    "data",
    [
        b'{"choices":[{"delta":{},"finish_reason":"stop"}]}',
        b'{"choices":[{"delta":{}},{"delta":{},"finish_reason":"length"}]}',
        b'{"choices":[],"usage": {"prompt_tokens":1}}',
        b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
        b'{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}',
        b'{"choices":[{"delta":{"reasoning_content":"hm"}}]}',
        b'{"error":{"message":"upstream fell over"}}',
        b'{"choices":[{"delta":{"x":{"usage" : {"n":1}}}}]}',  # only the bytes show this one
    ],
)
def test_chunks_that_may_need_an_edit_are_caught(data):
    assert _needs_normalising(data)


def _needs_normalising(data: bytes) -> bool:
    return needs_normalising(data, orjson.loads(data))


@pytest.mark.parametrize(
    ("chunk", "text"),
    [
        ({"choices": [{"index": 0, "delta": {"content": "reasoning role"}}]}, "reasoning role"),
        ({"choices": [{"delta": {"content": "a"}, "finish_reason": None}], "usage": None}, "a"),
        ({"choices": []}, ""),
        ({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, None),
        ({"choices": [{"delta": {}, "finish_reason": "stop"}]}, None),
        ({"choices": [], "usage": {"prompt_tokens": 1}}, None),
        ({"choices": [{"delta": {"reasoning_content": "hm"}}]}, None),
        ({"choices": [{"delta": {"tool_calls": []}}]}, None),
        ({"choices": [{"delta": {"content": "a"}, "error": {"message": "x"}}]}, None),
        ({"choices": [{"delta": {"content": None}}]}, None),
        ({"choices": [{"delta": {"content": "a"}}, {"delta": {"content": "b"}}]}, None),
        ({"error": {"message": "x"}}, None),
        ({"id": "no-choices"}, None),
        ({"choices": [{"index": 0}]}, None),
    ],
)
def test_only_content_deltas_are_plain(chunk, text):
    assert plain_content(chunk) == text


def _delta(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta}]}


def test_role_only_on_the_first_delta():
    normaliser = ChunkNormaliser()
    first, second = _delta(role="assistant", content=""), _delta(role="assistant", content="a")
    normaliser.fix(first)
    normaliser.fix(second)
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert "role" not in second["choices"][0]["delta"]


def test_tool_call_deltas_are_made_sdk_safe():
    normaliser = ChunkNormaliser()
    start = _delta(
        tool_calls=[
            {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
        ]
    )
    repeat = _delta(
        tool_calls=[{"index": 0, "id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]
    )
    null_final = _delta(tool_calls=[{"id": None, "type": None, "function": {"name": None}}])
    no_index = _delta(
        tool_calls=[{"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]
    )
    for chunk in (start, repeat, null_final, no_index):
        normaliser.fix(chunk)
    assert repeat["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "function": {"arguments": '{"a":1}'}}
    ]
    assert "tool_calls" not in null_final["choices"][0]["delta"]
    assert no_index["choices"][0]["delta"]["tool_calls"][0]["index"] == 0


def test_reasoning_content_becomes_reasoning_and_details_get_indices():
    chunk = _delta(reasoning_content="hmm", reasoning_details=[{"type": "reasoning.text"}])
    ChunkNormaliser().fix(chunk)
    delta = chunk["choices"][0]["delta"]
    assert delta == {
        "reasoning": "hmm",
        "reasoning_details": [{"type": "reasoning.text", "index": 0}],
    }


def test_completion_arguments_become_strings():
    body: dict[str, Any] = {
        "choices": [
            {
                "message": {
                    "reasoning_content": "r",
                    "tool_calls": [
                        {
                            "id": "c",
                            "type": "function",
                            "function": {"name": "f", "arguments": {"x": [1]}},
                        }
                    ],
                }
            }
        ]
    }
    normalise_completion(body)
    message = body["choices"][0]["message"]
    assert message["reasoning"] == "r"
    assert message["tool_calls"][0]["function"]["arguments"] == '{"x":[1]}'


def _content_chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
    envelope = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m"}
    return orjson.dumps({**envelope, "choices": [choice]})


def _learned(text: str = "Hello") -> ContentTemplate:
    template = ContentTemplate()
    template.learn(_content_chunk(text), text)
    assert template.learned
    return template


@pytest.mark.parametrize("text", [" world", "", "café ☕", "a'b<>&", "x" * 500, "ünïcödé\x7f"])
def test_a_content_chunk_in_the_learned_envelope_is_read_without_parsing(text):
    data = _content_chunk(text)
    assert _learned().match(data) == text == plain_content(orjson.loads(data))


@pytest.mark.parametrize(
    "data",
    [
        _content_chunk('say "hi"'),  # escaped quote
        _content_chunk("a\\b"),  # escaped backslash
        _content_chunk("line\nbreak"),  # escaped control character
        _content_chunk("done", finish="stop"),  # a different envelope: finish_reason set
        _content_chunk("x").replace(b'"model":"m"', b'"model":"n"'),
        _content_chunk("x")[:-1],  # truncated
        _content_chunk("ab").replace(b"ab", b"a\xff"),  # not UTF-8
        _content_chunk("ab").replace(b"ab", b"a\x01"),  # a raw control character: invalid JSON
        b'{"choices":[]}',
    ],
)
def test_anything_else_goes_to_the_parser(data):
    assert _learned().match(data) is None


def test_no_template_is_learned_when_the_upstream_escapes_differently():
    template = ContentTemplate()
    template.learn(_content_chunk("café").replace("é".encode(), b"\\u00e9"), "café")
    assert not template.learned
    assert template.match(_content_chunk("café")) is None


def test_no_template_is_learned_from_where_the_text_also_fills_another_field():
    template = ContentTemplate()
    template.learn(_content_chunk("m"), "m")  # "m" is the model's name too, and comes first
    assert not template.learned


def _events(*chunks: bytes) -> bytes:
    return b"".join(b"data: " + chunk + b"\n\n" for chunk in chunks)


def test_a_run_of_events_in_the_envelope_is_found_without_parsing():
    run = _events(_content_chunk("Hel"), _content_chunk(""), _content_chunk("lo wörld"))
    events = _events(_content_chunk("first")) + run + _events(_content_chunk("x", finish="stop"))
    start = len(_events(_content_chunk("first")))
    end, length, pieces = _learned().scan(events, start)
    assert events[start:end] == run
    assert (length, pieces) == (len("Hello wörld".encode()), 2)
    merged = orjson.loads(_learned().merge(run))
    assert plain_content(merged) == "Hello wörld"
    assert merged == orjson.loads(_content_chunk("Hello wörld"))


@pytest.mark.parametrize(
    "other",
    [
        _content_chunk('say "hi"'),
        _content_chunk("a\\b"),
        _content_chunk("line\nbreak"),
        _content_chunk("done", finish="stop"),
        b'{"choices":[]}',
    ],
)
def test_a_run_ends_at_the_first_event_that_is_not_plain_content_in_the_envelope(other):
    run = _events(_content_chunk("a"), _content_chunk("b"))
    events = run + _events(other, _content_chunk("c"))
    assert _learned().scan(events, 0) == (len(run), 2, 2)
    assert _learned().scan(events, len(run))[0] == len(run)  # no run starts there


def test_nothing_is_a_run_before_a_template_is_learned():
    events = _events(_content_chunk("a"))
    assert ContentTemplate().scan(events, 0) == (0, 0, 0)
