"""Responses API requests, checked, and translated into the OpenAI chat dialect we route.

Pure translation, no I/O. parse_response_request() checks a `POST /v1/responses` body and keeps
what the answer must echo; build_chat() turns it, with the items of the conversation so far, into
the chat body a chat-only upstream takes. Which fields are translated, dropped or refused is
docs/responses.md's table. The answer's way back is formats/responses_output.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from callmissed.errors import InvalidRequest

__all__ = [
    "REFUSED",
    "ResponseRequest",
    "build_chat",
    "check_for_chat",
    "new_id",
    "parse_response_request",
]

# Request fields a chat upstream cannot honour and that change what the client gets: refused
# with a 400 naming the field. Everything else the table in docs/responses.md lists as dropped.
REFUSED = {
    "background": "background responses are not supported; send the request without it",
    "conversation": "conversations are not supported; use previous_response_id",
    "prompt": "stored prompt templates are not supported; send the prompt as input",
}
# Known fields that have no chat equivalent and do not change the answer's content: dropped.
_DROPPED = frozenset(
    {
        "include",
        "max_tool_calls",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "service_tier",
        "stream_options",
        "top_logprobs",
        "truncation",
        "context_management",
    }
)
# Fields this module reads itself; any other field is forwarded to the chat upstream as it came.
_HANDLED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "max_output_tokens",
        "temperature",
        "top_p",
        "metadata",
        "user",
        "store",
        "stream",
        "previous_response_id",
    }
)
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TOOL_CHOICES = frozenset({"auto", "none", "required"})


def new_id(prefix: str) -> str:
    """An OpenAI-style id (`resp_…`, `msg_…`, `fc_…`, `rs_…`): the prefix and 48 hex digits."""
    return prefix + os.urandom(24).hex()


@dataclass(slots=True)
class ResponseRequest:
    """A checked Responses request: what to route, and what the answer echoes."""

    body: dict[str, Any]  # as the client sent it
    model: str
    stream: bool
    store: bool
    previous_response_id: str | None
    items: list[dict[str, Any]]  # this request's input items (what is stored)
    instructions: str | None
    chat_extra: dict[str, Any] = field(default_factory=dict)  # chat fields besides messages


def parse_response_request(body: Any) -> ResponseRequest:
    """Check what every route needs of a Responses request (model, input, state); raise
    InvalidRequest naming the first bad field. What a chat upstream needs more is
    check_for_chat()'s."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "is required and must be a non-empty string")
    instructions = _optional(body, "instructions", str, "a string")
    previous = _optional(body, "previous_response_id", str, "a string")
    stream = _optional(body, "stream", bool, "a boolean") is True
    store = _optional(body, "store", bool, "a boolean") is not False
    _optional(body, "metadata", dict, "an object")
    items = _input_items(body.get("input"))
    if not items and previous is None:
        raise _invalid("input", "must be a non-empty string or array of items")
    return ResponseRequest(body, model, stream, store, previous, items, instructions)


def check_for_chat(request: ResponseRequest) -> None:
    """Check `request` for a chat upstream, which cannot honour every field (REFUSED, and only
    function tools and the item types chat has), and work out its chat fields."""
    body = request.body
    for name, reason in REFUSED.items():
        if body.get(name) not in (None, False):
            raise _invalid(name, reason)
    request.items = [_check_item(item, f"input[{n}]") for n, item in enumerate(request.items)]
    chat = request.chat_extra
    _add_sampling(body, chat)
    _add_tools(body, chat)
    _add_text_format(body, chat)
    _add_reasoning(body, chat)
    for name, value in body.items():
        if name not in _HANDLED and name not in _DROPPED:
            chat[name] = value  # unknown to us: the upstream may know it (docs/responses.md)


def build_chat(request: ResponseRequest, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat body for a request check_for_chat() passed, after the stored items of the
    conversation so far (checked again: an earlier turn may have been passed through)."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    earlier = [_check_item(item, "previous_response_id") for item in history]
    messages += chat_messages([*earlier, *request.items])
    if not messages:
        raise _invalid("input", "must hold at least one message")
    chat: dict[str, Any] = {"model": request.model, "messages": messages, **request.chat_extra}
    if request.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _invalid(param: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {problem}.", param=param)


def _optional(body: Mapping[str, Any], name: str, kind: type, label: str) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise _invalid(name, f"must be {label}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _add_sampling(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    for name, high in (("temperature", 2.0), ("top_p", 1.0)):
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not 0 <= value <= high:
            raise _invalid(name, f"must be a number between 0 and {high:g}")
        chat[name] = value
    cap = body.get("max_output_tokens")
    if cap is not None:
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise _invalid("max_output_tokens", "must be an integer of at least 1")
        chat["max_tokens"] = cap
    user = _optional(body, "user", str, "a string")
    if user:
        chat["user"] = user
    parallel = _optional(body, "parallel_tool_calls", bool, "a boolean")
    if parallel is not None:
        chat["parallel_tool_calls"] = parallel


# Input items -> chat messages ------------------------------------------------------------


def _input_items(value: Any) -> list[dict[str, Any]]:
    """The input as items: a string is one user message (with an id, as OpenAI lists it)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_message_item("user", [{"type": "input_text", "text": value}])]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _invalid("input", "must be a string or an array of items")
    return value


def _message_item(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": new_id("msg_"), "type": "message", "role": role, "content": content}


def _check_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _invalid(where, "must be an object")
    kind = item.get("type", "message")
    check = _ITEM_CHECKS.get(kind)
    if check is None:
        raise _invalid(
            f"{where}.type",
            f"{kind!r} is not supported (message, function_call, function_call_output, reasoning)",
        )
    return check(item, where)


def _check_message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role, content = item.get("role"), item.get("content")
    if role not in _ROLES:
        raise _invalid(f"{where}.role", "must be 'user', 'assistant', 'system' or 'developer'")
    if isinstance(content, str):
        part_type = "output_text" if role == "assistant" else "input_text"
        content = [{"type": part_type, "text": content}]
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise _invalid(f"{where}.content", "must be a string or an array of content parts")
    for position, part in enumerate(content):
        _chat_part(part, f"{where}.content[{position}]")
    return {**item, "id": item.get("id") or new_id("msg_"), "type": "message", "content": content}


def _check_function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    for name in ("call_id", "name", "arguments"):
        if not isinstance(item.get(name), str):
            raise _invalid(f"{where}.{name}", "must be a string")
    return {**item, "id": item.get("id") or new_id("fc_")}


def _check_function_call_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(item.get("call_id"), str):
        raise _invalid(f"{where}.call_id", "must be a string")
    _output_text(item.get("output"), f"{where}.output")
    return {**item, "id": item.get("id") or new_id("fco_")}


def _check_reasoning(item: dict[str, Any], where: str) -> dict[str, Any]:
    return {**item, "id": item.get("id") or new_id("rs_")}


_ITEM_CHECKS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "message": _check_message,
    "function_call": _check_function_call,
    "function_call_output": _check_function_call_output,
    "reasoning": _check_reasoning,
}


def chat_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for checked items: an assistant turn's text, reasoning and function calls
    become one assistant message; each function_call_output a tool message."""
    messages: list[dict[str, Any]] = []
    thinking: list[str] = []
    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            thinking.append(_reasoning_text(item))
            continue
        if kind == "function_call_output":
            text = _output_text(item.get("output"), "output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
            continue
        if kind == "message" and item["role"] != "assistant":
            messages.append(_user_message(item))
            continue
        turn = _assistant_turn(messages)
        if kind == "function_call":
            turn.setdefault("tool_calls", []).append(_tool_call(item))
        else:
            text = "".join(_chat_part(part, "content")["text"] for part in item["content"])
            turn["content"] = (turn.get("content") or "") + text
        if thinking:
            turn["reasoning"] = (turn.get("reasoning") or "") + "".join(thinking)
            thinking = []
    return messages


def _assistant_turn(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message being built (the last one, until another role comes)."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    turn: dict[str, Any] = {"role": "assistant", "content": None}
    messages.append(turn)
    return turn


def _user_message(item: Mapping[str, Any]) -> dict[str, Any]:
    parts = [_chat_part(part, "content") for part in item["content"]]
    role = _ROLES[item["role"]]
    if all(part["type"] == "text" for part in parts):
        return {"role": role, "content": "".join(part["text"] for part in parts)}
    return {"role": role, "content": parts}


def _chat_part(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "refusal"):
        text = part.get("refusal") if kind == "refusal" else part.get("text")
        if not isinstance(text, str):
            raise _invalid(f"{where}.text", "must be a string")
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise _invalid(
                f"{where}.image_url", "must be a URL or a data URL (file_id is not supported)"
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str):
            raise _invalid(
                f"{where}.file_data", "must be a data URL (file_id and file_url are not supported)"
            )
        return {
            "type": "file",
            "file": {"filename": part.get("filename") or "file", "file_data": data},
        }
    raise _invalid(
        f"{where}.type", f"{kind!r} is not supported (input_text, input_image, input_file)"
    )


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(part, dict) for part in output):
        return "".join(_chat_part(part, where)["text"] for part in output if "text" in part)
    raise _invalid(where, "must be a string or an array of content parts")


def _reasoning_text(item: Mapping[str, Any]) -> str:
    # The model's own words where the client kept them, else its summary. encrypted_content is
    # opaque to every chat upstream, so it is not sent.
    for name in ("content", "summary"):
        parts = item.get(name)
        if isinstance(parts, list):
            text = "".join(
                p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
            if text:
                return text
    return ""


def _tool_call(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }


# Tools, output format, reasoning --------------------------------------------------------


def _add_tools(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    tools = _optional(body, "tools", list, "an array of tools")
    if tools:
        chat["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = body.get("tool_choice")
    if choice is None or not tools:
        return  # OpenAI-compatible servers reject a lone tool_choice
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise _invalid("tool_choice.name", "must be a string")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise _invalid("tool_choice", "must be 'auto', 'none', 'required' or a function")


def _tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise _invalid(param, "must be an object")
    if tool.get("type") != "function":
        raise _invalid(
            f"{param}.type",
            f"{tool.get('type')!r} is a hosted tool, which this model's upstream cannot run; "
            "describe it as a function tool",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{param}.name", "must be a non-empty string")
    function: dict[str, Any] = {"name": name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _add_text_format(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    text = _optional(body, "text", dict, "an object") or {}
    output_format = text.get("format")
    if output_format is None:
        return
    kind = output_format.get("type") if isinstance(output_format, dict) else None
    if kind == "text":
        return
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
        return
    if kind != "json_schema" or not isinstance(output_format.get("schema"), dict):
        raise _invalid("text.format", "must be text, json_object, or json_schema with a schema")
    schema: dict[str, Any] = {"name": output_format.get("name") or "response"}
    if isinstance(output_format.get("description"), str):
        schema["description"] = output_format["description"]
    schema["schema"] = output_format["schema"]
    if isinstance(output_format.get("strict"), bool):
        schema["strict"] = output_format["strict"]
    chat["response_format"] = {"type": "json_schema", "json_schema": schema}


def _add_reasoning(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    """reasoning.effort becomes reasoning_effort, which the gateway's matrix then maps."""
    reasoning = _optional(body, "reasoning", dict, "an object")
    if reasoning is None or "effort" not in reasoning:
        return
    effort = reasoning["effort"]
    if effort is not None and not isinstance(effort, str):
        raise _invalid("reasoning.effort", "must be a string")
    chat["reasoning_effort"] = effort
