"""The fake upstream's Messages API (`POST /anthropic/v1/messages`), as Anthropic serves it.

It checks what Anthropic checks that matters here: the key in `x-api-key`, an `anthropic-version`,
`max_tokens`; and, for a thinking model, that an earlier turn's thinking block comes back with
its signature unchanged (Anthropic answers 400 otherwise, which breaks multi-turn thinking with
tools). The upstream model name picks the behaviour:
  claude-thinker   first turn: a signed thinking block, then a get_weather tool_use; once a
                   tool_result is in, a text answer using it
  claude-cached    "Hello world", with cache reads and writes in its usage
  claude-broken    a text delta, then an `error` event (overloaded_error)
  claude-cut       a text delta, then the connection closes mid-answer
  error-<status>   that status, in Anthropic's error shape
  anything else    "Hello world"
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.upstream import FAKE, Received

__all__ = ["API_KEY", "SIGNATURE", "THINKING", "add_anthropic_routes"]

API_KEY = "sk-ant-fake-secret"
THINKING = "The user wants the weather in Paris: I should call get_weather."
# What Anthropic signs a thinking block with: opaque, and checked when it comes back.
SIGNATURE = "EqQBCkgIARABGAIiQL+fake/signature+with/base64=="
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def add_anthropic_routes(app: web.Application) -> None:
    app.router.add_post("/anthropic/v1/messages", _messages)
    app.router.add_get("/anthropic/v1/models", _models)


async def _models(request: web.Request) -> web.Response:
    if request.headers.get("x-api-key") != API_KEY:
        return _error(401, "invalid x-api-key")
    model = {"type": "model", "id": "claude-haiku-4-5", "display_name": "Claude Haiku 4.5"}
    return web.json_response({"data": [model], "has_more": False})


def error_body(status: int, message: str) -> dict[str, Any]:
    error = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}
    return {"type": "error", "error": error}


def _error(status: int, message: str) -> web.Response:
    return web.json_response(error_body(status, message), status=status)


async def _messages(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE]
    body = await request.json()
    fake.requests.append(Received("anthropic", request.path, dict(request.headers), body))
    if request.headers.get("x-api-key") != API_KEY:
        return _error(401, "invalid x-api-key")
    if not request.headers.get("anthropic-version") or "authorization" in request.headers:
        return _error(400, "anthropic-version is required; the key goes in x-api-key")
    if not isinstance(body.get("max_tokens"), int):
        return _error(400, "max_tokens: Field required")
    name = str(body.get("model", ""))
    if name.startswith("error-"):
        status = int(name.removeprefix("error-"))
        return _error(status, f"fake failure {status} {API_KEY}")
    problem = _signature_problem(body)
    if problem is not None:
        return _error(400, problem)
    content, stop_reason = _answer(name, body)
    usage = _usage(name)
    if not body.get("stream"):
        message = _message(name, content, stop_reason, usage)
        return web.json_response(message)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for event in _events(name, content, stop_reason, usage):
        if event is None:  # claude-cut: the connection goes mid-answer
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(b"event: " + event["type"].encode() + b"\ndata: ")
        await response.write(orjson.dumps(event) + b"\n\n")
        await asyncio.sleep(0)
    await response.write_eof()
    return response


def _signature_problem(body: dict[str, Any]) -> str | None:
    """Anthropic's checks: a thinking block sent back must be the one it signed, unchanged; and
    with thinking on, an assistant turn that used a tool must start with its thinking."""
    assistants = [m for m in body.get("messages") or () if m.get("role") == "assistant"]
    last = assistants[-1].get("content") if assistants else None
    last = last if isinstance(last, list) else []
    thinking = (body.get("thinking") or {}).get("type") == "enabled"
    used_tool = any(block.get("type") == "tool_use" for block in last)
    if thinking and used_tool and last[0].get("type") not in ("thinking", "redacted_thinking"):
        return "Expected `thinking` or `redacted_thinking`, but found `tool_use`."
    for message in body.get("messages") or ():
        content = message.get("content") if message.get("role") == "assistant" else None
        for block in content if isinstance(content, list) else ():
            if block.get("type") != "thinking":
                continue
            if block.get("signature") != SIGNATURE or block.get("thinking") != THINKING:
                return "messages.1.content.0: Invalid `signature` in `thinking` block"
    return None


def _tool_result(body: dict[str, Any]) -> str | None:
    for message in body.get("messages") or ():
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            if block.get("type") == "tool_result":
                result = block.get("content")
                return result if isinstance(result, str) else str(result[0]["text"])
    return None


def _answer(name: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    if name == "claude-thinker":
        result = _tool_result(body)
        if result is not None:
            return [{"type": "text", "text": f"It is {result} in Paris."}], "end_turn"
        thinking = {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}
        call = {"type": "tool_use", "id": "toolu_01", "name": "get_weather"}
        return [thinking, {**call, "input": {"city": "Paris"}}], "tool_use"
    return [{"type": "text", "text": "Hello world"}], "end_turn"


def _usage(name: str) -> dict[str, Any]:
    if name == "claude-cached":
        read, write = 600, 200
    else:
        read, write = 0, 0
    return {
        "input_tokens": 200 if name == "claude-cached" else 5,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": 6,
    }


def _message(
    name: str, content: list[dict[str, Any]], stop_reason: str | None, usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": "msg_fake01",
        "type": "message",
        "role": "assistant",
        "model": name,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }


def _events(
    name: str, content: list[dict[str, Any]], stop_reason: str, usage: dict[str, Any]
) -> Iterator[dict[str, Any] | None]:
    start_usage = {**usage, "output_tokens": 1}
    yield {"type": "message_start", "message": _message(name, [], None, start_usage)}
    yield {"type": "ping"}
    for index, block in enumerate(content):
        yield from _block_events(index, block)
        if name == "claude-broken":
            yield {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return
        if name == "claude-cut":
            yield None
            return
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }
    yield {"type": "message_stop"}


def _block_events(index: int, block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind = block["type"]
    if kind == "thinking":
        yield _start(index, {"type": "thinking", "thinking": "", "signature": ""})
        yield _delta(index, {"type": "thinking_delta", "thinking": THINKING[:20]})
        yield _delta(index, {"type": "thinking_delta", "thinking": THINKING[20:]})
        yield _delta(index, {"type": "signature_delta", "signature": SIGNATURE})
    elif kind == "tool_use":
        yield _start(index, {**block, "input": {}})
        arguments = orjson.dumps(block["input"]).decode()
        yield _delta(index, {"type": "input_json_delta", "partial_json": arguments[:5]})
        yield _delta(index, {"type": "input_json_delta", "partial_json": arguments[5:]})
    else:
        yield _start(index, {"type": "text", "text": ""})
        yield _delta(index, {"type": "text_delta", "text": block["text"][:5]})
        yield _delta(index, {"type": "text_delta", "text": block["text"][5:]})
    yield {"type": "content_block_stop", "index": index}


def _start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}
