"""The OpenAI Chat Completions wire format: request checks and the fixes upstream output needs.

Pass-through is the rule (docs/streaming.md): we check the fields we know, forward everything,
and edit upstream chunks only where an official SDK would otherwise break
(the table in docs/streaming.md): one reasoning field name, integer tool-call indices, tool-call
id/type/name only on a call's first delta, `role` only on a choice's first delta, string arguments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from callmissed.errors import InvalidRequest

__all__ = [
    "ChunkNormaliser",
    "ContentTemplate",
    "check_chat_request",
    "needs_normalising",
    "normalise_completion",
    "plain_content",
]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Made once: `isinstance(x, str | list)` makes its union anew each time it runs.
_NUMBER = (int, float)
_CONTENT = (str, list)


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be a boolean"


def _integer(low: int | None = None, high: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be an integer"
        if low is not None and value < low:
            return f"must be at least {low}"
        if high is not None and value > high:
            return f"must be at most {high}"
        return None

    return check


def _number(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, _NUMBER) or isinstance(value, bool):
            return "must be a number"
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}"
        return None

    return check


def _of_type(kind: type, name: str) -> Callable[[Any], str | None]:
    return lambda value: None if isinstance(value, kind) else f"must be {name}"


def _stop(value: Any) -> str | None:
    if isinstance(value, str):
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return None if len(value) <= 4 else "must hold at most 4 sequences"
    return "must be a string or an array of strings"


def _tool_choice(value: Any) -> str | None:
    if isinstance(value, str | dict):
        return None
    return "must be 'none', 'auto', 'required' or an object naming a tool"


def _tools(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        return "must be an array of tool objects"
    return None


def _response_format(value: Any) -> str | None:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        return "must be an object with a string 'type'"
    return None


def _effort(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


# Known fields and their checks, in the order of OpenAI's API reference; a body's are checked in
# its own order. null is always allowed for optional fields; unknown fields are forwarded as-is.
_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "frequency_penalty": _number(-2.0, 2.0),
    "logit_bias": _of_type(dict, "an object"),
    "logprobs": _bool,
    "max_completion_tokens": _integer(1),
    "max_tokens": _integer(1),
    "metadata": _of_type(dict, "an object"),
    "n": _integer(1, 128),
    "parallel_tool_calls": _bool,
    "presence_penalty": _number(-2.0, 2.0),
    "reasoning_effort": _effort,
    "response_format": _response_format,
    "seed": _integer(),
    "stop": _stop,
    "stream": _bool,
    "stream_options": _of_type(dict, "an object"),
    "temperature": _number(0.0, 2.0),
    "tool_choice": _tool_choice,
    "tools": _tools,
    "top_logprobs": _integer(0, 20),
    "top_p": _number(0.0, 1.0),
    "user": _of_type(str, "a string"),
}


def check_chat_request(body: Any) -> None:
    """Raise InvalidRequest naming the first field that is missing or of the wrong shape."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string.", param="model")
    _check_messages(body.get("messages"))
    for name, value in body.items():  # a body has a few fields; _CHECKS knows some 25
        check = _CHECKS.get(name)
        if check is None or value is None:
            continue
        problem = check(value)
        if problem:
            raise InvalidRequest(f"'{name}' {problem}.", param=name)
    options = body.get("stream_options")
    if options is not None and not body.get("stream"):
        raise InvalidRequest(
            "'stream_options' is only allowed when 'stream' is true.", param="stream_options"
        )


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        # The message's name (messages[i]) is made only for an error: this runs per message.
        if not isinstance(message, dict):
            param = f"messages[{index}]"
            raise InvalidRequest(f"'{param}' must be an object.", param=param)
        if message.get("role") not in _ROLES:
            param = f"messages[{index}].role"
            raise InvalidRequest(
                f"'{param}' must be one of {', '.join(sorted(_ROLES))}.", param=param
            )
        content = message.get("content")
        if content is not None and not isinstance(content, _CONTENT):
            param = f"messages[{index}].content"
            raise InvalidRequest(
                f"'{param}' must be a string or an array of content parts.", param=param
            )


# Chunks whose bytes contain none of these need no edit and are forwarded as they came.
_TRIGGERS = re.compile(rb'"error"|tool_calls|reasoning|"role"')
# These keys appear as null on most chunks; only a non-null value needs a look.
_NULLABLE_TRIGGERS = (b'"finish_reason"', b'"usage"')


def needs_normalising(data: bytes, chunk: dict[str, Any]) -> bool:
    """Whether a chunk (`data`, parsed as `chunk`) that is not plain content may need an edit,
    or be an error. A stream's last chunks carry a finish or the usage: the parsed chunk says
    so at once. Otherwise the bytes tell: without a trigger there is nothing to edit."""
    if chunk.get("usage") is not None or _finishes(chunk):
        return True
    if _TRIGGERS.search(data) is not None:
        return True
    return any(_has_non_null(data, key) for key in _NULLABLE_TRIGGERS)


def _finishes(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices")
    if choices.__class__ is list:
        for choice in choices:
            if choice.__class__ is dict and choice.get("finish_reason") is not None:
                return True
    return False


def plain_content(chunk: dict[str, Any]) -> str | None:
    """The text of a parsed chunk of the common kind that needs no edit, else None.

    The common kind: no choice or one, whose delta is only `content` (a string), with no
    finish, usage or error. It never answers for a chunk the normaliser would change, and costs
    a few dict lookups where needs_normalising() scans the bytes (~2 us a chunk, once the
    largest cost of relaying a stream; docs/performance.md). Anything else, several choices
    included, goes to needs_normalising().
    """
    if "error" in chunk or chunk.get("usage") is not None:
        return None
    choices = chunk.get("choices")
    if choices.__class__ is not list:
        return None
    if not choices:
        return ""
    if len(choices) != 1:
        return None
    choice = choices[0]
    if choice.__class__ is not dict or "error" in choice or choice.get("finish_reason") is not None:
        return None
    delta = choice.get("delta")
    if delta.__class__ is not dict or len(delta) != 1:
        return None
    text = delta.get("content")
    return text if text.__class__ is str else None


class ContentTemplate:
    """Recognises a stream's plain content chunks from their bytes, without parsing them.

    An upstream sends every content chunk of a stream in the same envelope, e.g.
    `{"id":"…","choices":[{"index":0,"delta":{"content":"` TEXT `"},"finish_reason":null}]}`.
    learn() takes the envelope's two halves from a chunk already parsed and found plain, and
    proves them by parsing the halves around a probe text. Then match() gives the TEXT of one
    chunk in that envelope, and scan() finds a run of whole `data: ` events in it, so a relay can
    forward the run as it came. A chunk it matches is valid JSON and as plain as the learned
    one: TEXT is accepted only without a quote, backslash or control character, so it stays
    inside the string the probe showed to be the content, and only as UTF-8 (which, for a run,
    is the caller's to check: all of it at once).
    """

    __slots__ = ("_head", "_prefix", "_suffix", "_tail", "learned")

    def __init__(self) -> None:
        self._head = self._tail = self._prefix = self._suffix = b""
        self.learned = False

    def learn(self, data: bytes, text: str) -> None:
        literal = orjson.dumps(text)  # "TEXT", as JSON
        start = data.find(literal)
        if start == -1:
            return  # the upstream escaped it differently
        head, tail = data[: start + 1], data[start + len(literal) - 1 :]
        try:
            probe = orjson.loads(head + b"x" + tail)
        except orjson.JSONDecodeError:
            return
        if probe.__class__ is dict and plain_content(probe) == "x":
            self._head, self._tail, self.learned = head, tail, True
            self._prefix, self._suffix = b"data: " + head, tail + b"\n\n"

    def match(self, data: bytes) -> str | None:
        """The TEXT of one chunk's data in the envelope, else None."""
        if not self.learned or not data.startswith(self._head) or not data.endswith(self._tail):
            return None
        end = len(data) - len(self._tail)
        if end < len(self._head):
            return None  # head and tail overlap: not this envelope
        text = data[len(self._head) : end]
        if _UNSAFE_IN_STRING.search(text) is not None:
            return None
        try:
            return text.decode()
        except UnicodeDecodeError:
            return None

    def scan(self, events: bytes, start: int) -> tuple[int, int, int]:
        """The run of `data: ` events in the envelope at `start` in `events` (whole events, as
        sse.SSEDecoder.take gives them): where it ends (`start` if there is none), the length of
        its TEXTs together, and how many are not empty."""
        prefix, suffix, unsafe = self._prefix, self._suffix, _UNSAFE_IN_STRING
        end = start
        length = pieces = 0
        while self.learned and events.startswith(prefix, end):
            text = end + len(prefix)
            stop = events.find(suffix, text)
            if stop == -1 or unsafe.search(events, text, stop) is not None:
                break
            length += stop - text
            pieces += stop > text
            end = stop + len(suffix)
        return end, length, pieces

    def text(self, run: bytes) -> bytes:
        """The TEXT of a run that scan() found, all of it together."""
        return b"".join([event[len(self._prefix) :] for event in run.split(self._suffix)])

    def merge(self, run: bytes) -> bytes:
        """A run that scan() found, as one chunk carrying all its TEXT."""
        return self._head + self.text(run) + self._tail


# What may not appear raw inside a JSON string: a quote, a backslash, a control character.
_UNSAFE_IN_STRING = re.compile(rb'["\\\x00-\x1f]')


def _has_non_null(data: bytes, key: bytes) -> bool:
    start = data.find(key)
    while start != -1:
        value = data[start + len(key) :].lstrip(b": ")
        if not value.startswith(b"null"):
            return True
        start = data.find(key, start + len(key))
    return False


class ChunkNormaliser:
    """Per-stream state for fixing upstream chunks in place. Fresh for every stream."""

    __slots__ = ("_seen_calls", "_seen_roles")

    def __init__(self) -> None:
        self._seen_roles: set[int] = set()
        self._seen_calls: set[tuple[int, int]] = set()

    def fix(self, chunk: dict[str, Any]) -> bool:
        """Fix `chunk` in place; whether anything may have changed (else its bytes still hold)."""
        changed = False
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            index = choice.get("index", 0)
            if "role" in delta:
                if index in self._seen_roles:
                    del delta["role"]
                    changed = True
                else:
                    self._seen_roles.add(index)
            changed = _rename_reasoning(delta) or changed
            if "tool_calls" in delta:
                self._fix_tool_deltas(index, delta)
                changed = True
        return changed

    def _fix_tool_deltas(self, choice: int, delta: dict[str, Any]) -> None:
        calls = delta["tool_calls"]
        if not isinstance(calls, list):
            del delta["tool_calls"]
            return
        fixed = []
        for position, call in enumerate(calls):
            if not isinstance(call, dict) or _is_null_finalisation(call):
                continue
            if not isinstance(call.get("index"), int):
                call["index"] = position
            _stringify_arguments(call)
            key = (choice, call["index"])
            if key in self._seen_calls:
                for repeated in ("id", "type"):
                    call.pop(repeated, None)
                function = call.get("function")
                if isinstance(function, dict):
                    function.pop("name", None)
            else:
                self._seen_calls.add(key)
            fixed.append(call)
        if fixed:
            delta["tool_calls"] = fixed
        else:
            del delta["tool_calls"]


def normalise_completion(body: dict[str, Any]) -> None:
    """Fix a non-streamed chat.completion in place (same rules as for chunks)."""
    for choice in body.get("choices") or ():
        message = choice.get("message")
        if not isinstance(message, dict):
            continue
        _rename_reasoning(message)
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                _stringify_arguments(call)


def _rename_reasoning(delta: dict[str, Any]) -> bool:
    # Upstreams name thinking text `reasoning_content` (DeepSeek, Kimi K2.5, Sarvam) or
    # `reasoning` (OpenRouter, vLLM, Kimi K2.6); our clients always get `reasoning`.
    changed = False
    if "reasoning_content" in delta:
        text = delta.pop("reasoning_content")
        if delta.get("reasoning") is None:
            delta["reasoning"] = text
        changed = True
    details = delta.get("reasoning_details")
    if isinstance(details, list):
        for position, item in enumerate(details):
            if isinstance(item, dict) and not isinstance(item.get("index"), int):
                item["index"] = position
                changed = True
    return changed


def _is_null_finalisation(call: dict[str, Any]) -> bool:
    # Workers AI ends a tool call with {id: null, type: null, function: {name: null}}.
    function = call.get("function") or {}
    return (
        call.get("id") is None
        and call.get("type") is None
        and isinstance(function, dict)
        and function.get("name") is None
        and not function.get("arguments")
    )


def _stringify_arguments(call: dict[str, Any]) -> None:
    function = call.get("function")
    if isinstance(function, dict) and isinstance(function.get("arguments"), dict | list):
        function["arguments"] = orjson.dumps(function["arguments"]).decode()
