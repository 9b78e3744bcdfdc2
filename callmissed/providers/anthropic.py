"""Anthropic's own Messages API (`POST {base_url}/v1/messages`, `x-api-key`, `anthropic-version`).

Its whole dialect lives here. Anthropic clients pass through within it (serves_messages:
relay_messages.py reads the events, api/anthropic.py edits only the model), so thinking blocks
keep their signatures and cache_control, tool_use and every event type arrive as sent. OpenAI
clients are translated: their chat body becomes a Messages body (build_request), a Message
becomes a chat.completion (parse_completion) and the Messages events become chunks
(MessagesToChunks), usage included (cache reads and writes are parts of prompt_tokens, as
OpenAI counts them). Error bodies (`{"type": "error", "error": {"type", "message"}}`) keep
their HTTP status; an `error` event mid-stream maps its type to one (event_error).
https://docs.anthropic.com/en/api/messages and .../messages-streaming describe the wire format.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from callmissed.errors import InvalidRequest, UpstreamError
from callmissed.providers.base import Provider, StreamTranslator, UpstreamRequest, encode_body
from callmissed.providers.environment import Environment
from callmissed.settings import ModelSettings, ProviderSettings, Route

__all__ = [
    "API_VERSION",
    "Anthropic",
    "MessagesToChunks",
    "chat_usage",
    "to_messages_body",
]

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Messages requires max_tokens; a model's max_output wins
# reasoning_effort -> thinking.budget_tokens: the inverse of formats/anthropic.py's
# BUDGET_EFFORTS, so an effort that crosses both edges comes back as itself (1024 is the least
# budget the API takes).
EFFORT_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}
# reasoning_details entries (OpenRouter's convention, which OpenAI-dialect clients keep and send
# back) carry a thinking block's signature, or a redacted block's data, in this format.
DETAILS_FORMAT = "anthropic-claude-v1"
# An `error` event's type -> the HTTP status Anthropic answers the same error with.
ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class Anthropic(Provider):
    type = "anthropic"
    label = "Anthropic"
    serves_messages = True
    environment = Environment(
        "https://api.anthropic.com",
        base_url_env="ANTHROPIC_BASE_URL",
        api_key_env="ANTHROPIC_API_KEY",
        required=("ANTHROPIC_API_KEY",),
    )

    def __init__(self, settings: ProviderSettings) -> None:
        super().__init__(settings)
        self._url = f"{settings.base_url}/v1/messages"

    def extra_headers(self) -> dict[str, str]:
        return {"anthropic-version": API_VERSION}

    def credential_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def build_request(
        self, body: dict[str, Any], route: Route, model: ModelSettings
    ) -> UpstreamRequest:
        """An OpenAI chat body, translated into a Messages body. `body` is not modified."""
        messages = to_messages_body(body, route.upstream_model, model.max_output)
        return UpstreamRequest(
            self._url, self._headers, encode_body(messages), route.upstream_model
        )

    def build_get(self, path: str) -> UpstreamRequest:
        """A GET of `{base_url}/v1/{path}` (its model list, say): the API's paths carry /v1."""
        return super().build_get(f"v1/{path}")

    def build_messages_request(
        self, body: dict[str, Any], route: Route, model: ModelSettings, beta: str | None = None
    ) -> UpstreamRequest:
        """A Messages body as the client sent it, with the route's model id, and the client's
        `anthropic-beta` features (`beta`), which change what the body may hold."""
        body = {**body, "model": route.upstream_model}
        headers = self._headers if beta is None else {**self._headers, "anthropic-beta": beta}
        return UpstreamRequest(self._url, headers, encode_body(body), route.upstream_model)

    def parse_completion(self, body: bytes) -> dict[str, Any]:
        return to_completion(self.parse_message(body))

    def parse_message(self, body: bytes) -> dict[str, Any]:
        """A whole Message; UpstreamError if the answer is none (or an error in disguise)."""
        message = self.load_answer(body)
        if not isinstance(message, dict) or message.get("type") != "message":
            if isinstance(message, dict) and message.get("type") == "error":
                raise self.event_error(message)
            raise self.malformed("answered without a message")
        if not isinstance(message.get("content"), list):
            raise self.malformed("answered without content")
        return message

    def stream_translator(self) -> StreamTranslator:
        return MessagesToChunks(self)

    def event_error(self, event: dict[str, Any]) -> UpstreamError:
        """The UpstreamError an `error` event (or body) reports, with the status its type means."""
        error = event.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        message = self.error_message(event) or "the upstream failed while generating"
        return self.make_error(ERROR_STATUSES.get(str(kind), 502), message, None)


# The request: OpenAI chat -> Messages -----------------------------------------------------


def to_messages_body(
    chat: Mapping[str, Any], upstream_model: str, max_output: int | None = None
) -> dict[str, Any]:
    """A checked OpenAI chat body (formats/openai.py) as a Messages body for `upstream_model`."""
    system, messages = _turns(chat["messages"])
    body: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if system:
        body["system"] = system
    body["max_tokens"] = _max_tokens(chat, max_output)
    for name in ("temperature", "top_p", "top_k"):
        if chat.get(name) is not None:
            body[name] = chat[name]
    stop = chat.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if chat.get("stream"):
        body["stream"] = True
    _add_tools(chat, body)
    _add_thinking(chat, body)
    _add_output_format(chat, body)
    if isinstance(chat.get("user"), str):
        body["metadata"] = {"user_id": chat["user"]}
    return body


def _max_tokens(chat: Mapping[str, Any], max_output: int | None) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = chat.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return max_output or DEFAULT_MAX_TOKENS


def _turns(chat: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system blocks, and the turns: tool results open the user turn after them."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(chat):
        role, where = message.get("role"), f"messages[{index}]"
        if role in ("system", "developer"):
            system.extend(_blocks(message.get("content"), where))
            continue
        if role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            blocks = [_tool_result(message, where)]
            role = "user"
        else:
            blocks = _blocks(message.get("content"), where)
        if not blocks:
            continue  # Messages refuses an empty turn; an empty chat message says nothing
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """User or system content as Messages blocks; empty text is left out (Messages refuses it)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for position, part in enumerate(content or ()):
        block = _block(part, f"{where}.content[{position}]")
        if block is not None:
            if isinstance(part.get("cache_control"), dict):
                block["cache_control"] = part["cache_control"]
            blocks.append(block)
    return blocks


def _block(part: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "text": part["text"]} if part.get("text") else None
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return {"type": "image", "source": _source(url, where)}
    if kind == "file":
        file = part.get("file")
        data = file.get("file_data") if isinstance(file, dict) else None
        return {"type": "document", "source": _source(data, where)}
    raise InvalidRequest(
        f"'{where}.type' {kind!r} has no Anthropic equivalent (text, image_url and file do).",
        param=f"{where}.type",
    )


def _source(url: Any, where: str) -> dict[str, Any]:
    """A data URL as a base64 source, any other URL as a url source."""
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url:
        media_type, _, data = url[5:].partition(";base64,")
        return {"type": "base64", "media_type": media_type, "data": data}
    if isinstance(url, str) and url:
        return {"type": "url", "url": url}
    raise InvalidRequest(f"'{where}' needs a URL or a data URL.", param=where)


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    # Earlier reasoning goes back only as signed thinking blocks (from reasoning_details):
    # Messages refuses thinking without Anthropic's signature; plain `reasoning` is left out.
    blocks = _thinking_blocks(message.get("reasoning_details"))
    blocks += _blocks(message.get("content"), where)
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = function.get("arguments")
        try:
            parsed = orjson.loads(arguments) if arguments else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidRequest(
                f"'{where}.tool_calls' arguments must be a JSON object for Anthropic.",
                param=f"{where}.tool_calls",
            )
        tool_use = {"type": "tool_use", "id": call.get("id"), "name": function.get("name")}
        blocks.append({**tool_use, "input": parsed})
    return blocks


def _thinking_blocks(details: Any) -> list[dict[str, Any]]:
    """Signed thinking and redacted thinking blocks from reasoning_details, whose entries may
    come as a stream's pieces (merged by `index`, as the OpenAI SDK merges them); entries in
    another vendor's format are left out (Anthropic could not read their signatures)."""
    merged: dict[Any, dict[str, Any]] = {}
    for item in details if isinstance(details, list) else ():
        if not isinstance(item, dict):
            continue
        entry = merged.setdefault(item.get("index", len(merged)), {"text": ""})
        entry["text"] += item.get("text") or ""
        keys = ("type", "signature", "data", "format")
        entry.update((key, item[key]) for key in keys if item.get(key))
    blocks = []
    for entry in merged.values():
        if entry.get("format", DETAILS_FORMAT) != DETAILS_FORMAT:
            continue
        if entry.get("type") == "reasoning.encrypted" and isinstance(entry.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": entry["data"]})
        elif isinstance(entry.get("signature"), str):
            thinking = {"type": "thinking", "thinking": entry["text"]}
            blocks.append({**thinking, "signature": entry["signature"]})
    return blocks


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    if isinstance(content, str):
        result["content"] = content
    else:
        result["content"] = _blocks(content, where)
    return result


def _add_tools(chat: Mapping[str, Any], body: dict[str, Any]) -> None:
    tools = chat.get("tools")
    if not tools:
        return
    body["tools"] = [_tool(tool) for tool in tools]
    choice = chat.get("tool_choice")
    anthropic_choice: dict[str, Any] = {"type": "auto"}
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        anthropic_choice = {"type": _TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        anthropic_choice = {"type": "tool", "name": choice["function"].get("name")}
    if chat.get("parallel_tool_calls") is False:
        anthropic_choice["disable_parallel_tool_use"] = True
    if choice is not None or "disable_parallel_tool_use" in anthropic_choice:
        body["tool_choice"] = anthropic_choice


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    result: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        result["description"] = function["description"]
    result["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    if isinstance(function.get("strict"), bool):
        result["strict"] = function["strict"]
    if isinstance(tool.get("cache_control"), dict):
        result["cache_control"] = tool["cache_control"]
    return result


def _add_thinking(chat: Mapping[str, Any], body: dict[str, Any]) -> None:
    """reasoning_effort (after the model's matrix) as a thinking budget; max_tokens is raised
    past the budget, which Messages counts inside it, so the answer keeps what was asked."""
    effort = chat.get("reasoning_effort")
    if effort == "none":
        body["thinking"] = {"type": "disabled"}
        return
    budget = EFFORT_BUDGETS.get(str(effort))
    if budget is None:
        return
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if body["max_tokens"] <= budget:
        body["max_tokens"] += budget


def _add_output_format(chat: Mapping[str, Any], body: dict[str, Any]) -> None:
    response_format = chat.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return
    schema = (response_format.get("json_schema") or {}).get("schema")
    if isinstance(schema, dict):
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}


# The answer: Message -> chat.completion ---------------------------------------------------


def to_completion(message: Mapping[str, Any]) -> dict[str, Any]:
    """A whole Message as a chat.completion: text, thinking as `reasoning` (and, signed, as
    `reasoning_details`, which a client sends back), tool_use as tool_calls (server tools and
    other blocks have no chat form and are left out)."""
    texts, thoughts, calls = [], [], []
    details: list[dict[str, Any]] = []
    for block in message["content"]:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind in ("thinking", "redacted_thinking"):
            if kind == "thinking":
                thoughts.append(str(block.get("thinking") or ""))
            details.append(_detail(len(details), block))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if thoughts:
        reply["reasoning"] = "".join(thoughts)
    if details:
        reply["reasoning_details"] = details
    if calls:
        reply["tool_calls"] = calls
    choice = {"index": 0, "message": reply, "finish_reason": _finish(message.get("stop_reason"))}
    return {
        **_envelope(message, "chat.completion"),
        "choices": [{**choice, "logprobs": None}],
        "usage": chat_usage(message.get("usage")),
    }


def _detail(index: int, block: Mapping[str, Any]) -> dict[str, Any]:
    """A thinking block as a reasoning_details entry: its text and signature, or its data."""
    if block.get("type") == "redacted_thinking":
        return {"type": "reasoning.encrypted", "data": block.get("data"), **_at(index)}
    detail = {"type": "reasoning.text", "text": block.get("thinking") or ""}
    return {**detail, "signature": block.get("signature"), **_at(index)}


def _at(index: int) -> dict[str, Any]:
    return {"format": DETAILS_FORMAT, "index": index}


def chat_usage(usage: Any) -> dict[str, Any]:
    """Messages usage as OpenAI's: prompt_tokens include cache reads and writes, which Messages
    counts apart from input_tokens (and pricing.py bills each at its own price)."""
    usage = usage if isinstance(usage, dict) else {}
    read = _count(usage.get("cache_read_input_tokens"))
    write = _count(usage.get("cache_creation_input_tokens"))
    prompt = _count(usage.get("input_tokens")) + read + write
    output = _count(usage.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _finish(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(str(stop_reason), "stop")


def _envelope(message: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {
        "id": message.get("id"),
        "object": kind,
        "created": int(time.time()),
        "model": message.get("model"),
    }


def _call(index: int, call_id: Any, name: Any) -> dict[str, Any]:
    function = {"name": name, "arguments": ""}
    return {"index": index, "id": call_id, "type": "function", "function": function}


# The stream: Messages events -> chat.completion chunks -------------------------------------


class MessagesToChunks:
    """One Messages stream as chunks (a relay StreamTranslator): text and thinking deltas as
    `content` and `reasoning`, thinking blocks also as `reasoning_details` pieces (their text,
    then their signature; `format` on a block's first piece only, since the OpenAI SDK joins the
    strings of pieces with one index), tool_use blocks as tool_calls, message_delta as the finish
    reason and the usage (message_start's input figures with its output), message_stop as
    [DONE]."""

    __slots__ = (
        "_envelope", "_formatted", "_provider", "_thought", "_thoughts", "_tool", "_tools",
        "_usage", "done",
    )  # fmt: skip

    def __init__(self, provider: Anthropic) -> None:
        self._provider = provider
        self._envelope: dict[str, Any] = {"object": "chat.completion.chunk"}
        self._usage: dict[str, Any] = {}
        self._tools = 0  # tool_use blocks seen: the next one's tool_calls index
        self._tool: int | None = None  # the open block's tool_calls index, if it is a tool_use
        self._thoughts = 0  # thinking blocks seen: the next one's reasoning_details index
        self._thought: int | None = None  # the open block's, if it is a thinking block
        self._formatted = False  # the open thinking block's `format` went out
        self.done = False

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "content_block_delta":
            return self._delta(event.get("delta"))
        if kind == "content_block_start":
            return self._start(event.get("content_block"))
        if kind == "message_start":
            message = event.get("message")
            message = message if isinstance(message, dict) else {}
            self._envelope = _envelope(message, "chat.completion.chunk")
            self._merge_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "message_delta":
            self._merge_usage(event.get("usage"))
            delta = event.get("delta")
            reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            usage = {**self._envelope, "choices": [], "usage": chat_usage(self._usage)}
            return [self._chunk({}, _finish(reason)), usage]
        if kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise self._provider.event_error(event)
        return []  # ping, content_block_stop, and events newer than this code

    def _start(self, block: Any) -> list[dict[str, Any]]:
        self._tool = self._thought = None
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in ("thinking", "redacted_thinking"):
            self._thought, self._thoughts = self._thoughts, self._thoughts + 1
            self._formatted = False
            if kind == "redacted_thinking":
                encrypted = self._piece("reasoning.encrypted", data=block.get("data"))
                return [self._chunk({"reasoning_details": [encrypted]})]
            return []
        if kind != "tool_use":
            return []
        self._tool, self._tools = self._tools, self._tools + 1
        call = _call(self._tool, block.get("id"), block.get("name"))
        return [self._chunk({"tool_calls": [call]})]

    def _piece(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A reasoning_details piece of the open thinking block."""
        piece = {"type": kind, **fields, "index": self._thought}
        if not self._formatted:
            piece["format"] = DETAILS_FORMAT
            self._formatted = True
        return piece

    def _delta(self, delta: Any) -> list[dict[str, Any]]:
        kind = delta.get("type") if isinstance(delta, dict) else None
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text")})]
        if kind == "input_json_delta" and self._tool is not None:
            call = {"index": self._tool, "function": {"arguments": delta.get("partial_json")}}
            return [self._chunk({"tool_calls": [call]})]
        if self._thought is None:
            return []  # citations_delta, and deltas newer than this code: no chat form
        if kind == "thinking_delta":
            text = delta.get("thinking")
            piece = self._piece("reasoning.text", text=text)
            return [self._chunk({"reasoning": text, "reasoning_details": [piece]})]
        if kind == "signature_delta":
            piece = self._piece("reasoning.text", signature=delta.get("signature"))
            return [self._chunk({"reasoning_details": [piece]})]
        return []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**self._envelope, "choices": [choice]}

    def _merge_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._usage.update((k, v) for k, v in usage.items() if v is not None)
