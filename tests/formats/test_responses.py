"""Pure translation of the Responses API to chat and back (formats/responses*.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from callmissed.errors import InvalidRequest
from callmissed.formats.responses import build_chat, check_for_chat, parse_response_request
from callmissed.formats.responses_output import ResponseEncoder


def _chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    request = parse_response_request({"model": "m", **body})
    check_for_chat(request)
    return build_chat(request, history or [])


def _events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(block.split(b"\ndata: ")[1]) for block in raw.strip().split(b"\n\n")]


def test_an_assistant_turn_becomes_one_message_with_its_reasoning_and_calls():
    items = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Two cities."}]},
        {"role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "21C"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "25C"}],
        },
    ]
    messages = _chat({"input": items, "instructions": "Be brief."})["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[2]["content"] == "Checking."
    assert messages[2]["reasoning"] == "Two cities."
    assert [call["id"] for call in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "c1", "content": "21C"},
        {"role": "tool", "tool_call_id": "c2", "content": "25C"},
    ]


def test_images_and_request_fields_translate():
    image = {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}
    chat = _chat(
        {
            "input": [
                {"role": "developer", "content": [{"type": "input_text", "text": "Look:"}, image]}
            ],
            "max_output_tokens": 50,
            "text": {"format": {"type": "json_object"}},
            "tool_choice": {"type": "function", "name": "w"},
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "reasoning": {"effort": "high", "summary": "auto"},
            "stream": True,
        }
    )
    assert chat["messages"][0]["role"] == "system"
    assert chat["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
    }
    assert chat["max_tokens"] == 50 and chat["response_format"] == {"type": "json_object"}
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "w"}}
    assert chat["reasoning_effort"] == "high"
    assert chat["stream_options"] == {"include_usage": True}


def test_a_missing_input_is_refused():
    with pytest.raises(InvalidRequest, match="'input'"):
        parse_response_request({"model": "m"})


def test_parallel_tool_calls_stream_as_items_in_order_and_a_cut_answer_is_incomplete():
    request = parse_response_request({"model": "m", "input": "hi", "stream": True})
    encoder = ResponseEncoder(request)
    raw = encoder.start()
    for call in (
        {"index": 0, "id": "c1", "function": {"name": "a", "arguments": '{"x":'}},
        {"index": 1, "id": "c2", "function": {"name": "b", "arguments": "{}"}},
    ):
        raw += encoder.feed({"choices": [{"delta": {"tool_calls": [call]}}]})
    raw += encoder.feed({"choices": [{"delta": {}, "finish_reason": "length"}]})
    raw += encoder.finish({"prompt_tokens": 3, "completion_tokens": 4})
    events = _events(raw)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["call_id"]) for e in added] == [(0, "c1"), (1, "c2")]
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [item["arguments"] for item in final["response"]["output"]] == ['{"x":', "{}"]
    assert final["response"]["usage"]["total_tokens"] == 7


def test_a_broken_stream_fails_with_what_was_said_so_far():
    request = parse_response_request({"model": "m", "input": "hi", "stream": True})
    encoder = ResponseEncoder(request)
    raw = encoder.start() + encoder.feed({"choices": [{"delta": {"content": "Hel"}}]})
    events = _events(raw + encoder.fail("upstream_error", "it broke"))
    failed, error = events[-2], events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["output"][0]["content"][0]["text"] == "Hel"
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert error["message"] == error["error"]["message"] == "it broke"
