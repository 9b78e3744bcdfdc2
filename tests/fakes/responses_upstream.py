"""The fake upstream's Responses API (`POST …/responses`), as OpenRouter serves it.

The upstream model name picks the behaviour, as for chat (tests/fakes/upstream.py):
  hello (any other name)  "Hello world"
  weather                 a get_weather function call; once a function_call_output is in the
                          input, an answer using it
  structured              the JSON document STRUCTURED
  thinker                 reasoning text, then "4"
  midstream-error         a delta, then response.failed
  error-<status>          that status, in OpenRouter's error shape
Streams carry OpenRouter's own `usage.cost`, which the gateway must replace with its own.
`metered/bytes` (tests/fakes/openrouter.py's PER_BYTE) answers "Hello world" billed as OpenRouter
would: a prompt token per UTF-8 byte of the instructions and input text (4 an item), 6 out, and
its bill recorded in the side's `bills`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openrouter import PER_BYTE, Bill, OpenRouterSide, byte_tokens
from tests.fakes.upstream import FAKE, STRUCTURED, Received, _error_response

__all__ = ["add_responses_routes"]

_USAGE = {
    "input_tokens": 5,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 6,
    "output_tokens_details": {"reasoning_tokens": 0},
    "total_tokens": 11,
    "cost": 0.123,  # OpenRouter's price to CallMissed
    "cost_details": {"upstream_inference_cost": 0.1},
}


def add_responses_routes(app: web.Application) -> None:
    app.router.add_post("/{dialect}/api/v1/responses", _responses)


async def _responses(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE]
    body = await request.json()
    fake.requests.append(
        Received("openrouter-responses", request.path, dict(request.headers), body)
    )
    model = str(body.get("model", ""))
    name = model.rsplit("/", 1)[-1]
    if name.startswith("error-"):
        status = int(name.removeprefix("error-"))
        return _error_response("openrouter", status, f"fake failure {status}")
    output = _output(name, body)
    usage = _per_byte(fake.openrouter, body) if model == PER_BYTE else _USAGE
    if not body.get("stream"):
        return web.json_response(_echo(body, _response(model, "completed", output, usage)))
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for number, event in enumerate(_events(model, name, output, usage)):
        if "response" in event:
            _echo(body, event["response"])
        await response.write(b"event: " + event["type"].encode() + b"\ndata: ")
        await response.write(orjson.dumps({**event, "sequence_number": number}) + b"\n\n")
        await asyncio.sleep(0)
    await response.write_eof()
    return response


def _output(name: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    if name == "weather":
        outputs = [item for item in _items(body) if item.get("type") == "function_call_output"]
        if not outputs:
            call = {"id": "fc_1", "type": "function_call", "status": "completed"}
            call |= {"call_id": "call_w1", "name": "get_weather", "arguments": '{"city":"Paris"}'}
            return [call]
        return [_message(f"It is {outputs[-1]['output']} in Paris.")]
    if name == "structured":
        return [_message(STRUCTURED)]
    if name == "thinker":
        text = [{"type": "reasoning_text", "text": "Two plus two is four."}]
        reasoning: dict[str, Any] = {"id": "rs_1", "type": "reasoning", "summary": []}
        reasoning["content"] = text
        return [reasoning, _message("4")]
    return [_message("Hello world")]


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("input")
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _message(text: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant"} | {
        "content": [part]
    }


def _response(
    model: str, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "id": "gen-fake-1",
        "object": "response",
        "created_at": 1700000000,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "store": False,
        "usage": usage,
    }


def _echo(body: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The request's settings in the Response, as a Responses API echoes them."""
    for name in ("instructions", "metadata", "tools", "tool_choice", "store", "temperature"):
        if name in body:
            response[name] = body[name]
    return response


def _per_byte(side: OpenRouterSide, body: dict[str, Any]) -> dict[str, Any]:
    """PER_BYTE's usage of a request, its bill recorded."""
    items = body["input"] if isinstance(body["input"], list) else [{"content": body["input"]}]
    prompt = byte_tokens(body.get("instructions"))
    for item in items:
        content = item.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        prompt += 4 + byte_tokens(*(part.get("text") for part in parts))
    answer_id = side.next_id()
    bill = side.bills[answer_id] = Bill(prompt, completion=6, finished=True, said=str(items[-1]))
    bill.cost = side.cost(PER_BYTE, bill)
    usage = {**_USAGE, "input_tokens": prompt, "total_tokens": prompt + 6}
    return {**usage, "cost": float(bill.cost), "cost_details": {"upstream_inference_cost": None}}


def _events(
    model: str, name: str, output: list[dict[str, Any]], usage: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    yield {"type": "response.created", "response": _response(model, "in_progress", [], None)}
    yield {"type": "response.in_progress", "response": _response(model, "in_progress", [], None)}
    for index, item in enumerate(output):
        yield from _item_events(index, item)
        if name == "midstream-error":
            failed = _response(model, "failed", [], None)
            failed["error"] = {"code": "server_error", "message": "Provider returned error"}
            yield {"type": "response.failed", "response": failed}
            return
    yield {"type": "response.completed", "response": _response(model, "completed", output, usage)}


def _item_events(index: int, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    where = {"output_index": index, "item_id": item["id"]}
    if item["type"] == "function_call":
        yield {"type": "response.output_item.added", "output_index": index, "item": item}
        for piece in ('{"city":', '"Paris"}'):
            yield {"type": "response.function_call_arguments.delta", **where, "delta": piece}
        done = {"arguments": item["arguments"]}
        yield {"type": "response.function_call_arguments.done", **where, **done}
    elif item["type"] == "reasoning":
        yield {"type": "response.output_item.added", "output_index": index, "item": item}
        text = item["content"][0]["text"]
        delta = {"content_index": 0, "delta": text}
        yield {"type": "response.reasoning_text.delta", **where, **delta}
    else:
        empty = {**item, "content": [], "status": "in_progress"}
        yield {"type": "response.output_item.added", "output_index": index, "item": empty}
        part = {"type": "output_text", "text": "", "annotations": []}
        yield {"type": "response.content_part.added", **where, "content_index": 0, "part": part}
        text = item["content"][0]["text"]
        for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
            delta = {"content_index": 0, "delta": piece, "logprobs": []}
            yield {"type": "response.output_text.delta", **where, **delta}
        done = {"content_index": 0, "text": text, "logprobs": []}
        yield {"type": "response.output_text.done", **where, **done}
        yield {
            "type": "response.content_part.done",
            **where,
            "content_index": 0,
            "part": {**part, "text": text},
        }
    yield {"type": "response.output_item.done", "output_index": index, "item": item}
