"""Anthropic Messages answers, translated from the OpenAI chat dialect our upstreams speak.

Pure translation, no I/O (docs/anthropic.md has the tables): build_message turns a chat.completion
into a Message, and MessageStreamEncoder turns chat.completion chunks into the Messages events.
Finish reasons map to stop reasons; usage maps with cache reads and writes kept apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from callmissed.formats.anthropic import MessageRequest

__all__ = ["MessageStreamEncoder", "build_message", "build_usage"]

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",  # a convention; neither vendor documents it (§6)
}


def build_message(
    completion: Mapping[str, Any], request: MessageRequest, input_estimate: int = 0
) -> dict[str, Any]:
    """A Messages `message` for a normalised chat.completion (see relay.read_completion);
    `input_estimate` is its input_tokens if the upstream reported no usage."""
    choices = completion.get("choices") or [{}]
    choice = _dict(choices[0])
    message = _dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning")
    if request.thinking and isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict):
            content.append(_tool_use_block(call))
    stop_reason, stop_sequence = _stop_reason(
        choice.get("finish_reason"), choice.get("stop_reason"), request.stop_sequences
    )
    return {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": build_usage(completion.get("usage"), input_estimate),
    }


def build_usage(usage: Any, input_estimate: int = 0) -> dict[str, Any]:
    """Anthropic usage for OpenAI usage. input_tokens excludes cache reads and writes (§2.7);
    without usage it is `input_estimate`, the prompt as the gateway estimated (and billed) it."""
    if not isinstance(usage, dict):
        return {"input_tokens": input_estimate, "output_tokens": 0}
    details = _dict(usage.get("prompt_tokens_details"))
    read, write = details.get("cached_tokens"), details.get("cache_write_tokens")
    cached = _count(read) + _count(write)
    result: dict[str, Any] = {"input_tokens": max(_count(usage.get("prompt_tokens")) - cached, 0)}
    if write is not None:
        result["cache_creation_input_tokens"] = _count(write)
    if read is not None:
        result["cache_read_input_tokens"] = _count(read)
    result["output_tokens"] = _count(usage.get("completion_tokens"))
    thinking = _count(_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    if thinking:
        result["output_tokens_details"] = {"thinking_tokens": thinking}
    return result


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _tool_use_block(call: Mapping[str, Any]) -> dict[str, Any]:
    function = _dict(call.get("function"))
    arguments = function.get("arguments")
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        parsed = {}  # the model's malformed arguments; `input` must still be an object
    return {
        "type": "tool_use",
        "id": call.get("id") or _new_id("toolu_"),
        "name": function.get("name") or "",
        "input": parsed if isinstance(parsed, dict) else {},
    }


def _stop_reason(
    finish_reason: Any, matched: Any, stop_sequences: tuple[str, ...]
) -> tuple[str, str | None]:
    # vLLM-based upstreams name the stop string that ended generation in `stop_reason`; other
    # upstreams don't say, so their stops read as end_turn.
    if finish_reason == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _STOP_REASONS.get(finish_reason, "end_turn"), None


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_EMPTY_BLOCKS: dict[str, dict[str, Any]] = {
    "text": {"type": "text", "text": ""},
    "thinking": {"type": "thinking", "thinking": "", "signature": ""},
}


def _event(payload: dict[str, Any]) -> bytes:
    """`event:` and `data:` on every event: the SDK dispatches on the event name (§2.5)."""
    name: str = payload["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class MessageStreamEncoder:
    """Chat chunks in, Messages SSE events out, for one stream. Fresh for every request.

    start() first, feed() each normalised chunk, finish() with the upstream usage once the
    chunks end. Blocks open one at a time with dense indices, as the SDK's accumulator needs
    (docs/anthropic.md, Streaming); the finish reason is held until the usage is known.
    `input_estimate` is the prompt's estimated tokens: message_start's input_tokens, which agents
    read to track their context before the upstream's exact figures end the stream.
    """

    __slots__ = ("_block", "_finish", "_index", "_input", "_matched", "_request", "_tool")

    def __init__(self, request: MessageRequest, input_estimate: int = 0) -> None:
        self._request = request
        self._input = input_estimate
        self._index = 0  # the open block's index, or the next block's
        self._block: str | None = None  # the open block's type
        self._tool: Any = None  # the upstream tool-call index of the open tool_use block
        self._finish: Any = None
        self._matched: Any = None

    def start(self) -> bytes:
        """message_start, with the estimated input_tokens (upstreams report usage only at the
        end; message_delta overwrites it with theirs), then a ping."""
        message: dict[str, Any] = {
            "id": _new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self._request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self._input,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return _event({"type": "message_start", "message": message}) + _PING

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        """The events for one normalised chat.completion.chunk (often none)."""
        choices = chunk.get("choices")
        if not choices:
            return b""
        choice = _dict(choices[0])
        delta = _dict(choice.get("delta"))
        events: list[bytes] = []
        if self._request.thinking:
            self._text("thinking", delta.get("reasoning"), events)
        self._text("text", delta.get("content"), events)
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._tool_call(call, events)
        if choice.get("finish_reason"):
            self._finish, self._matched = choice["finish_reason"], choice.get("stop_reason")
        return b"".join(events)

    def finish(self, usage: Any, extra: Mapping[str, Any] | None = None) -> bytes:
        """Close the open block; message_delta with the stop reason and usage; message_stop.

        `extra` goes in message_delta as `x_callmissed` (timing.py's totals): the SDKs keep
        fields they do not know."""
        events: list[bytes] = []
        self._close(events)
        stop_reason, stop_sequence = _stop_reason(
            self._finish, self._matched, self._request.stop_sequences
        )
        delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        usage = build_usage(usage, self._input)
        message_delta: dict[str, Any] = {"type": "message_delta", "delta": delta, "usage": usage}
        if extra is not None:
            message_delta["x_callmissed"] = extra
        events.append(_event(message_delta))
        events.append(_MESSAGE_STOP)
        return b"".join(events)

    def _text(self, kind: str, text: Any, events: list[bytes]) -> None:
        if not isinstance(text, str) or not text:
            return
        if self._block != kind:
            self._open(_EMPTY_BLOCKS[kind], events)
        delta = {"type": f"{kind}_delta", kind: text}
        events.append(_event({"type": "content_block_delta", "index": self._index, "delta": delta}))

    def _tool_call(self, call: Mapping[str, Any], events: list[bytes]) -> None:
        function = _dict(call.get("function"))
        index = call.get("index", 0)
        if self._block != "tool_use" or self._tool != index:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or _new_id("toolu_"),
                "name": function.get("name") or "",
                "input": {},
            }
            self._open(block, events)
            self._tool = index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            events.append(
                _event({"type": "content_block_delta", "index": self._index, "delta": delta})
            )

    def _open(self, block: dict[str, Any], events: list[bytes]) -> None:
        self._close(events)
        events.append(
            _event({"type": "content_block_start", "index": self._index, "content_block": block})
        )
        self._block = block["type"]

    def _close(self, events: list[bytes]) -> None:
        if self._block is None:
            return
        events.append(_event({"type": "content_block_stop", "index": self._index}))
        self._index += 1
        self._block = None
        self._tool = None
