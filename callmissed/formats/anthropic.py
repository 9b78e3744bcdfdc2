"""Anthropic Messages requests, checked and translated into the OpenAI chat dialect we route.

Pure translation, no I/O (docs/anthropic.md has the tables). Prompt-cache breakpoints
(`cache_control` on system, message and tool blocks, or at the top level) land where OpenRouter
reads them in that dialect: on content parts and tools. The answer's way back is
formats/anthropic_message.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from callmissed.errors import InvalidRequest

__all__ = ["BUDGET_EFFORTS", "MessageRequest", "check_passthrough", "parse_message_request"]

# thinking.budget_tokens -> reasoning_effort: the first threshold the budget reaches; smaller
# budgets mean "minimal". The convention of LiteLLM's Anthropic adapter (github.com/BerriAI/litellm,
# litellm/llms/anthropic/experimental_pass_through/), so clients moving from it see the same
# efforts. The model's reasoning policy then applies as usual.
BUDGET_EFFORTS = ((4096, "high"), (2048, "medium"), (1024, "low"))
_CONFIG_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


@dataclass(frozen=True, slots=True)
class MessageRequest:
    """A checked Messages request: the OpenAI-format body to route, and what the answer needs."""

    chat: dict[str, Any]
    model: str
    stream: bool
    thinking: bool  # show the upstream's reasoning as thinking blocks
    stop_sequences: tuple[str, ...]


def parse_message_request(body: Any, *, count_only: bool = False) -> MessageRequest:
    """Check a Messages request and translate it; raise InvalidRequest naming the bad field.

    `count_only` is for count_tokens, whose body is the same but needs no max_tokens.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("model", "is required and must be a non-empty string")
    chat: dict[str, Any] = {
        "model": model,
        "messages": _build_messages(body.get("system"), body.get("messages")),
    }
    if not count_only or body.get("max_tokens") is not None:
        chat["max_tokens"] = _positive_int(body.get("max_tokens"), "max_tokens")
    stream = _optional(body, "stream", bool, "a boolean") is True
    if stream:
        chat["stream"] = True
    _add_sampling(body, chat)
    stop_sequences = _stop_sequences(body.get("stop_sequences"))
    if stop_sequences:
        chat["stop"] = list(stop_sequences)
    _add_tools(body, chat)
    cache_control = body.get("cache_control")
    if cache_control is not None:
        _mark_last_block(chat["messages"], _cache_control(cache_control, "cache_control"))
    thinking = _add_reasoning(body, chat)
    metadata = _optional(body, "metadata", dict, "an object") or {}
    if isinstance(metadata.get("user_id"), str) and metadata["user_id"]:
        chat["user"] = metadata["user_id"]
    return MessageRequest(chat, model, stream, thinking, stop_sequences)


def check_passthrough(body: Any) -> bool:
    """The few checks a Messages request passed through to an upstream that speaks Messages
    needs (the upstream checks the rest, block types and server tools included): whether it
    streams."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise _invalid("messages", "must be a non-empty array")
    _positive_int(body.get("max_tokens"), "max_tokens")
    return _optional(body, "stream", bool, "a boolean") is True


def _invalid(param: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {problem}.", param=param)


def _optional(body: Mapping[str, Any], name: str, kind: type, label: str) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise _invalid(name, f"must be {label}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: Any, param: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _invalid(param, "is required and must be an integer of at least 1")
    return value


def _add_sampling(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_number(value) or not 0 <= value <= 1:
            raise _invalid(name, "must be a number between 0 and 1")
        chat[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        # Not an OpenAI field, but OpenRouter, vLLM and most OpenAI-compatible servers take it.
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
            raise _invalid("top_k", "must be a non-negative integer")
        chat["top_k"] = top_k


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid("stop_sequences", "must be an array of strings")
    return tuple(value)


# Messages -----------------------------------------------------------------------------------


def _build_messages(system: Any, messages: Any) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = []
    if system is not None:
        chat.append({"role": "system", "content": _system_content(system)})
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "must be a non-empty array")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid(param, "must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise _invalid(f"{param}.role", "must be 'user' or 'assistant'")
        if isinstance(content, str):
            chat.append({"role": role, "content": content})
        elif isinstance(content, list) and all(isinstance(block, dict) for block in content):
            if role == "user":
                chat.extend(_user_messages(content, param))
            else:
                chat.append(_assistant_message(content, param))
        else:
            raise _invalid(f"{param}.content", "must be a string or an array of content blocks")
    return chat


def _system_content(system: Any) -> str | list[dict[str, Any]]:
    if isinstance(system, str):
        return system
    if isinstance(system, list) and all(
        isinstance(block, dict) and block.get("type") == "text" for block in system
    ):
        return _content([_text_part(block, f"system[{i}]") for i, block in enumerate(system)])
    raise _invalid("system", "must be a string or an array of text blocks")


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text as one string, which every upstream takes; parts only when they are needed.

    Parts are kept for images and documents, and for cache_control breakpoints (which OpenRouter
    honours for the models that cache), as LiteLLM's adapter does.
    """
    if all(part["type"] == "text" and "cache_control" not in part for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _text_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    text = block.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{where}.text", "must be a string")
    return _cached({"type": "text", "text": text}, block, where)


def _cached(part: dict[str, Any], block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`part` with the block's cache_control breakpoint, if it has one."""
    if block.get("cache_control") is not None:
        part["cache_control"] = _cache_control(block["cache_control"], f"{where}.cache_control")
    return part


def _cache_control(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise _invalid(param, "must be an object like {'type': 'ephemeral'}")
    return value


def _mark_last_block(messages: list[dict[str, Any]], cache_control: dict[str, Any]) -> None:
    """Top-level cache_control: a breakpoint on the request's last block that can take one (the
    last non-empty content), as Anthropic's automatic caching places it."""
    for message in reversed(messages):
        content = message.get("content")
        if isinstance(content, str) and content:
            message["content"] = [{"type": "text", "text": content}]
        elif not (isinstance(content, list) and content):
            continue
        last = message["content"][-1]
        last.setdefault("cache_control", cache_control)
        return


def _user_messages(blocks: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """One user turn: its tool results as tool messages first, then the rest as a user message."""
    messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(blocks):
        where = f"{param}.content[{position}]"
        if block.get("type") == "tool_result":
            message, attachments = _tool_message(block, where)
            messages.append(message)
            parts.extend(attachments)
        else:
            parts.append(_user_part(block, where))
    if parts or not messages:
        messages.append({"role": "user", "content": _content(parts) if parts else ""})
    return messages


def _user_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return _text_part(block, where)
    if kind == "image":
        url = _source_url(block.get("source"), where)
        return _cached({"type": "image_url", "image_url": {"url": url}}, block, where)
    if kind == "document":
        return _cached(_document_part(block, where), block, where)
    raise _invalid(
        f"{where}.type", f"{kind!r} is not supported here (text, image, document, tool_result)"
    )


def _source_url(source: Any, where: str) -> str:
    if isinstance(source, dict):
        if source.get("type") == "base64":
            media_type, data = source.get("media_type"), source.get("data")
            if isinstance(media_type, str) and isinstance(data, str):
                return f"data:{media_type};base64,{data}"
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return str(source["url"])
    raise _invalid(f"{where}.source", "must be a base64 source or a url source")


def _document_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text":
        return _text_part({"text": source.get("data")}, f"{where}.source")
    filename = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
    return {
        "type": "file",
        "file": {"filename": filename, "file_data": _source_url(source, where)},
    }


def _tool_message(
    block: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A tool message for a tool_result, and any images in it (tool messages take only text).

    Its text is one string, or text parts when a breakpoint is set on the result or in it."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        raise _invalid(f"{where}.tool_use_id", "must be a string")
    content = block.get("content")
    texts: list[dict[str, Any]] = []
    attachments: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append({"type": "text", "text": content})
    elif isinstance(content, list) and all(isinstance(item, dict) for item in content):
        for position, item in enumerate(content):
            part = _user_part(item, f"{where}.content[{position}]")
            (texts if part["type"] == "text" else attachments).append(part)
    elif content is not None:
        raise _invalid(f"{where}.content", "must be a string or an array of content blocks")
    if block.get("is_error") is True:  # OpenAI tool messages have no error flag
        first = texts[0] if texts else {"type": "text", "text": ""}
        texts[:1] = [{**first, "text": f"Error: {first['text']}"}]
    if texts and texts[-1]["text"]:  # Anthropic takes no breakpoint on an empty text block
        texts[-1] = _cached(texts[-1], block, where)
    text: str | list[dict[str, Any]] = texts
    if not any("cache_control" in part for part in texts):
        text = "\n".join(part["text"] for part in texts)
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}, attachments


def _assistant_message(blocks: list[dict[str, Any]], param: str) -> dict[str, Any]:
    texts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    thoughts: list[str] = []
    for position, block in enumerate(blocks):
        where = f"{param}.content[{position}]"
        kind = block.get("type")
        if kind == "text":
            texts.append(_text_part(block, where))
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        elif kind == "thinking":
            thoughts.append(str(block.get("thinking") or ""))
        elif kind != "redacted_thinking":  # encrypted for Anthropic's models; nobody else reads it
            raise _invalid(f"{where}.type", f"{kind!r} is not supported in an assistant turn")
    message: dict[str, Any] = {"role": "assistant", "content": _content(texts)}
    if calls:
        message["tool_calls"] = calls
        if not texts:
            message["content"] = None
    if thoughts:
        # vLLM-based upstreams (Workers AI among them) read prior thinking back as `reasoning`.
        message["reasoning"] = "".join(thoughts)
    return message


def _tool_call(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise _invalid(where, "must have a string 'id' and 'name'")
    if not isinstance(arguments, dict):
        raise _invalid(f"{where}.input", "must be an object")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
    }


# Tools and reasoning ------------------------------------------------------------------------


def _add_tools(body: Mapping[str, Any], chat: dict[str, Any]) -> None:
    tools = _optional(body, "tools", list, "an array of tools")
    if not tools:
        return  # OpenAI-compatible servers reject an empty tools array and a lone tool_choice
    chat["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
    choice = _optional(body, "tool_choice", dict, "an object")
    if choice is None:
        return
    kind = choice.get("type")
    if kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _invalid("tool_choice.name", "must be a string")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in _TOOL_CHOICES:
        chat["tool_choice"] = _TOOL_CHOICES[kind]
    else:
        raise _invalid("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


def _tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise _invalid(param, "must be an object")
    if tool.get("type") not in (None, "custom"):
        raise _invalid(
            f"{param}.type",
            f"{tool['type']!r} is a server tool, which only Anthropic runs; "
            "describe it as a custom tool with an input_schema",
        )
    name, schema = tool.get("name"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{param}.name", "must be a non-empty string")
    if not isinstance(schema, dict):
        raise _invalid(f"{param}.input_schema", "must be a JSON schema object")
    function: dict[str, Any] = {"name": name}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    function["parameters"] = schema
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return _cached({"type": "function", "function": function}, tool, param)


def _add_reasoning(body: Mapping[str, Any], chat: dict[str, Any]) -> bool:
    """Set reasoning_effort for the gateway's matrix; return whether to show thinking blocks.

    Without `thinking`, the model keeps its default effort but its reasoning is not shown, as
    Anthropic shows no thinking blocks unless asked (so `content[0].text` keeps working).
    """
    thinking = _optional(body, "thinking", dict, "an object")
    config = _optional(body, "output_config", dict, "an object") or {}
    effort = _config_effort(config)
    _add_output_format(config, chat)
    show = False
    if thinking is not None:
        kind = thinking.get("type")
        if kind == "enabled":
            budget = _positive_int(thinking.get("budget_tokens"), "thinking.budget_tokens")
            effort = effort or _effort_for_budget(budget)
            show = True
        elif kind == "adaptive":
            show = True  # the effort is output_config's, else the model's default
        elif kind == "disabled":
            effort = "none"
        else:
            raise _invalid("thinking.type", "must be 'enabled', 'adaptive' or 'disabled'")
        show = show and thinking.get("display") != "omitted"
    if effort is not None:
        chat["reasoning_effort"] = effort
    return show


def _effort_for_budget(budget: int) -> str:
    for threshold, effort in BUDGET_EFFORTS:
        if budget >= threshold:
            return effort
    return "minimal"


def _config_effort(config: Mapping[str, Any]) -> str | None:
    effort = config.get("effort")
    if effort is None:
        return None
    if effort not in _CONFIG_EFFORTS:
        raise _invalid("output_config.effort", f"must be one of {', '.join(_CONFIG_EFFORTS)}")
    return _CONFIG_EFFORTS[effort]


def _add_output_format(config: Mapping[str, Any], chat: dict[str, Any]) -> None:
    output_format = config.get("format")
    if output_format is None:
        return
    schema = output_format.get("schema") if isinstance(output_format, dict) else None
    if not isinstance(schema, dict) or output_format.get("type") != "json_schema":
        raise _invalid("output_config.format", "must be {'type': 'json_schema', 'schema': {...}}")
    chat["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "structured_output", "schema": schema, "strict": True},
    }
