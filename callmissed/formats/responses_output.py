"""Responses API answers, translated from the OpenAI chat dialect a chat-only upstream speaks.

Pure translation, no I/O. ResponseEncoder turns chat.completion chunks into the Responses
streaming events the official SDKs parse (response.created … response.completed, a
`sequence_number` on each), and keeps the output items it sent, so the same object gives the
final Response; a non-streamed chat.completion goes through it as one chunk. The Response
object's fields follow OpenAI's API reference (https://platform.openai.com/docs/api-reference/responses).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from callmissed.formats.responses import ResponseRequest, new_id

__all__ = ["ResponseEncoder", "build_usage", "event", "response_object"]

# A chat finish reason that cut the answer short, and how the Response says so.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def event(payload: dict[str, Any]) -> bytes:
    """One SSE event: `event:` names its type, as OpenAI's own stream does."""
    name: str = payload["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def build_usage(usage: Any) -> dict[str, Any] | None:
    """Responses usage for chat usage (`cost` kept: it is what CallMissed charged)."""
    if not isinstance(usage, dict):
        return None
    prompt = _dict(usage.get("prompt_tokens_details"))
    completion = _dict(usage.get("completion_tokens_details"))
    result: dict[str, Any] = {
        "input_tokens": _count(usage.get("prompt_tokens")),
        "input_tokens_details": {
            "cached_tokens": _count(prompt.get("cached_tokens")),
            "cache_write_tokens": _count(prompt.get("cache_write_tokens")),
        },
        "output_tokens": _count(usage.get("completion_tokens")),
        "output_tokens_details": {"reasoning_tokens": _count(completion.get("reasoning_tokens"))},
    }
    result["total_tokens"] = result["input_tokens"] + result["output_tokens"]
    if "cost" in usage:
        result["cost"] = usage["cost"]
    return result


def response_object(
    request: ResponseRequest,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    **details: Any,
) -> dict[str, Any]:
    """A Response object, its request's settings echoed; `details` sets error or
    incomplete_details (both null otherwise)."""
    body = request.body
    text = _dict(body.get("text"))
    reasoning = _dict(body.get("reasoning"))
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": details.get("error"),
        "incomplete_details": details.get("incomplete_details"),
        "instructions": request.instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "model": request.model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": request.store,
        "temperature": body.get("temperature"),
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ResponseEncoder:
    """Chat chunks in, Responses events out, for one response. Fresh for every request.

    start() first, feed() each normalised chunk, then finish() with the chat usage, or fail()
    if the upstream broke. Items open one at a time, each with the next output_index: a
    reasoning item for the model's thinking, a message for its text, a function_call per tool
    call. `output` holds the items as sent, for the final Response and for the store.
    """

    __slots__ = (
        "_call",
        "_created",
        "_finish",
        "_item",
        "_pieces",
        "_request",
        "_sequence",
        "_text_prefix",
        "output",
        "response",
        "response_id",
    )

    def __init__(self, request: ResponseRequest, response_id: str | None = None) -> None:
        self._request = request
        self.response_id = response_id or new_id("resp_")
        self._created = int(time.time())
        self._sequence = 0
        self._item: dict[str, Any] | None = None  # the open item
        self._pieces: list[str] = []  # its text (or arguments) so far
        self._call: Any = None  # the upstream tool-call index of the open function_call
        self._text_prefix = b""  # an output_text.delta event up to its delta, for the open item
        self._finish: Any = None
        self.output: list[dict[str, Any]] = []
        self.response: dict[str, Any] | None = None  # the final Response, once finished

    def start(self) -> bytes:
        """response.created and response.in_progress (one Response, encoded once)."""
        response = orjson.dumps(self._snapshot("in_progress", []))
        events = [
            b"event: "
            + kind
            + b'\ndata: {"type":"'
            + kind
            + b'","response":'
            + response
            + b',"sequence_number":'
            + str(n).encode()
            + b"}\n\n"
            for n, kind in enumerate((b"response.created", b"response.in_progress"))
        ]
        self._sequence = 2
        return b"".join(events)

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        """The events for one normalised chat.completion.chunk (often none)."""
        choices = chunk.get("choices")
        if not choices:
            return b""
        choice = choices[0]
        delta = choice.get("delta") if choice.__class__ is dict else None
        if delta.__class__ is not dict:
            return b""
        content = delta.get("content")
        if len(delta) == 1 and content.__class__ is str and choice.get("finish_reason") is None:
            return self._text("message", content)  # the common chunk: text and nothing else
        events: list[bytes] = []
        reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            events.append(self._text("reasoning", reasoning))
        if isinstance(content, str) and content:
            events.append(self._text("message", content))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._tool_call(call, events)
        if choice.get("finish_reason"):
            self._finish = choice["finish_reason"]
        return b"".join(events)

    def finish(self, usage: Any) -> bytes:
        """Close the open item; response.completed (or response.incomplete) with the usage."""
        return self.conclude(usage) + self.final_event()

    def conclude(self, usage: Any) -> bytes:
        """Close the open item and make `response`, the whole Response with the usage: the
        events up to the last, which final_event() writes from `response` as it then is (the
        edge stores it first, and it may say `store: false` by then)."""
        events: list[bytes] = []
        self._close(events)
        if not self.output:  # an empty answer is still a message
            self._open(self._new_message(), events)
            self._close(events)
        reason = _INCOMPLETE.get(self._finish)
        status = "completed" if reason is None else "incomplete"
        details = {"incomplete_details": {"reason": reason}} if reason else {}
        self.response = self._snapshot(status, self.output, build_usage(usage), **details)
        return b"".join(events)

    def final_event(self) -> bytes:
        """response.completed (or response.incomplete) with the Response conclude() made."""
        assert self.response is not None
        status = self.response["status"]
        return self._event({"type": f"response.{status}", "response": self.response})

    def fail(self, code: str, message: str) -> bytes:
        """The upstream broke: response.failed, then the `error` event the SDKs raise.

        The error event carries its fields flat (as the API reference documents them) and
        nested under `error` (as OpenAI sends them), and the nested object is what makes the
        official SDKs raise instead of yielding the event."""
        error = {"code": code, "message": message}
        events = [self._event({"type": "response.failed", "response": self._failed(error)})]
        nested = {"type": "server_error", "code": code, "message": message, "param": None}
        events.append(
            self._event(
                {"type": "error", "code": code, "message": message, "param": None, "error": nested}
            )
        )
        return b"".join(events)

    def _failed(self, error: dict[str, Any]) -> dict[str, Any]:
        if self._item is not None:
            self._settle_text(self._item)
            self._item["status"] = "incomplete"
            self.output.append(self._item)
            self._item = None
        self.response = self._snapshot("failed", self.output, error=error)
        return self.response

    def _snapshot(
        self, status: str, output: list[dict[str, Any]], *args: Any, **details: Any
    ) -> dict[str, Any]:
        return response_object(
            self._request, self.response_id, self._created, status, output, *args, **details
        )

    def _event(self, payload: dict[str, Any]) -> bytes:
        payload["sequence_number"] = self._sequence
        self._sequence += 1
        return event(payload)

    # Items --------------------------------------------------------------------------------

    def _text(self, kind: str, text: str) -> bytes:
        if not text:
            return b""
        item = self._item
        opened: list[bytes] = []
        if item is None or item["type"] != kind:
            item = self._new_message() if kind == "message" else self._new_reasoning()
            self._open(item, opened)
        self._pieces.append(text)  # joined when the item closes: += would copy it each time
        # The common event, built from bytes: ~1 us less than a dict through orjson.
        sequence = self._sequence
        self._sequence += 1
        delta = (
            self._text_prefix
            + orjson.dumps(text)
            + b',"sequence_number":'
            + str(sequence).encode()
            + b"}\n\n"
        )
        return b"".join(opened) + delta if opened else delta

    def _new_message(self) -> dict[str, Any]:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        item = {"id": new_id("msg_"), "type": "message", "status": "in_progress"}
        return {**item, "role": "assistant", "content": [part]}

    def _new_reasoning(self) -> dict[str, Any]:
        part = {"type": "reasoning_text", "text": ""}
        item = {"id": new_id("rs_"), "type": "reasoning", "status": "in_progress"}
        return {**item, "summary": [], "content": [part], "encrypted_content": None}

    def _tool_call(self, call: Mapping[str, Any], events: list[bytes]) -> None:
        function = _dict(call.get("function"))
        index = call.get("index", 0)
        item = self._item
        if item is None or item["type"] != "function_call" or self._call != index:
            item = {
                "id": new_id("fc_"),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call.get("id") or new_id("call_"),
                "name": function.get("name") or "",
            }
            self._open(item, events)
            self._call = index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self._pieces.append(arguments)
            delta = {
                "type": "response.function_call_arguments.delta",
                "item_id": item["id"],
                "output_index": len(self.output),
                "delta": arguments,
            }
            events.append(self._event(delta))

    def _open(self, item: dict[str, Any], events: list[bytes]) -> None:
        self._close(events)
        self._item = item
        self._pieces = []
        index = len(self.output)
        empty = {**item, "content": []} if "content" in item else item
        events.append(
            self._event(
                {"type": "response.output_item.added", "output_index": index, "item": empty}
            )
        )
        if item["type"] == "function_call":
            return
        part = item["content"][0]
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        events.append(self._event({"type": "response.content_part.added", **where, "part": part}))
        kind = "output_text" if item["type"] == "message" else "reasoning_text"
        head = {"type": f"response.{kind}.delta", **where}
        if kind == "output_text":
            head["logprobs"] = []
        self._text_prefix = event(head)[: -len(b"}\n\n")] + b',"delta":'

    def _settle_text(self, item: dict[str, Any]) -> None:
        """Put the open item's text (or arguments) in it, from its pieces."""
        if item["type"] == "function_call":
            item["arguments"] = "".join(self._pieces)
        else:
            item["content"] = [{**item["content"][0], "text": "".join(self._pieces)}]

    def _close(self, events: list[bytes]) -> None:
        item = self._item
        if item is None:
            return
        self._item = None
        self._settle_text(item)
        index = len(self.output)
        item["status"] = "completed"
        if item["type"] == "function_call":
            done = {"item_id": item["id"], "output_index": index, "name": item["name"]}
            done["arguments"] = item["arguments"]
            events.append(self._event({"type": "response.function_call_arguments.done", **done}))
        else:
            part = item["content"][0]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            kind = "output_text" if item["type"] == "message" else "reasoning_text"
            text_done: dict[str, Any] = {
                "type": f"response.{kind}.done",
                **where,
                "text": part["text"],
            }
            if kind == "output_text":
                text_done["logprobs"] = []
            events.append(self._event(text_done))
            events.append(
                self._event({"type": "response.content_part.done", **where, "part": part})
            )
        self.output.append(item)
        events.append(
            self._event({"type": "response.output_item.done", "output_index": index, "item": item})
        )
