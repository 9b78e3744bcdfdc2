"""The fake upstream's OpenRouter side: a model list with prices, and answers billed from it.

`GET /openrouter/api/v1/models` serves `MODELS` in OpenRouter's shape (USD per token as decimal
strings). Every OpenRouter-dialect answer for a listed model carries OpenRouter's `usage.cost`
and a `gen-N` id, and its bill is recorded in `OpenRouterSide.bills` under that id. Models named
`metered/…` obey the request as an upstream must: `n` choices, each at most the larger of
`max_tokens` / `max_completion_tokens` (else the list's max output) plus a `reasoning.max_tokens`
budget spent first, one token per chunk. They write every token they may, unless the last
message says `tokens:K` (at most K a choice); `pause:K` holds the answer after K tokens until the
client leaves, and a non-streamed answer's headers go out at once while its body waits
`pause-body:S` seconds (`pause-headers:S` holds the headers instead). A request whose client
leaves is billed for its prompt and the tokens sent. Prompt tokens are counted as
callmissed.token_estimate counts plain text: 4 a message plus one per 4 characters — except by
`metered/bytes` (PER_BYTE), whose tokenizer makes a token of every UTF-8 byte: 4 a message plus
one per byte, the most a real tokenizer can count ("x x x", Devanagari run close to it).
"""

from __future__ import annotations

import asyncio
import itertools
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

__all__ = ["MODELS", "PER_BYTE", "Bill", "OpenRouterSide", "byte_tokens", "prompt_tokens"]

PER_BYTE = "metered/bytes"

# USD per token (per request for `request`), as OpenRouter writes them.
MODELS: dict[str, dict[str, Any]] = {
    "openai/gpt-5.1": {"prompt": "0.00000125", "completion": "0.00001", "cache": "0.000000125"},
    "openai/gpt-5-mini": {"prompt": "0.00000025", "completion": "0.000002"},
    "anthropic/claude-sonnet-4.6": {"prompt": "0.000003", "completion": "0.000015"},
    "anthropic/claude-opus-4.5": {"prompt": "0.000005", "completion": "0.000025", "max": 64000},
    "anthropic/claude-haiku-4.5": {"prompt": "0.000001", "completion": "0.000005"},
    "openrouter/auto": {"prompt": "-1", "completion": "-1"},  # a router: no price of its own
    "metered/model": {"prompt": "0.000001", "completion": "0.000002", "max": 48},
    PER_BYTE: {"prompt": "0.000001", "completion": "0.000002", "max": 16},
    "metered/fee": {
        "prompt": "0.000001",
        "completion": "0.000003",
        "request": "0.00005",
        "max": 24,
    },
}


@dataclass
class Bill:
    """What the fake upstream billed for one answer (its id is the key in `bills`)."""

    prompt: int
    completion: int = 0
    reasoning: int = 0
    cost: Decimal = Decimal(0)
    finished: bool = False  # written to the end (else: the client left first)
    said: str = ""  # the request's last message, to find the bill of an answer never seen


@dataclass
class OpenRouterSide:
    models: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(MODELS))
    bills: dict[str, Bill] = field(default_factory=dict)
    list_requests: int = 0
    list_status: int = 200  # a test may break the list for a while
    list_body: bytes | None = None  # ... or serve something else in its place
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_id(self) -> str:
        return f"gen-{next(self._ids)}"

    def bill_for(self, said: str) -> Bill:
        """The bill of the request whose last message was `said`."""
        [bill] = [bill for bill in self.bills.values() if bill.said == said]
        return bill

    def listing(self) -> bytes:
        data = []
        for model_id, price in self.models.items():
            pricing = {"prompt": price["prompt"], "completion": price["completion"]}
            pricing["request"] = price.get("request", "0")
            if "cache" in price:
                pricing["input_cache_read"] = price["cache"]
            entry: dict[str, Any] = {"id": model_id, "context_length": 200000, "pricing": pricing}
            entry["top_provider"] = {"max_completion_tokens": price.get("max")}
            data.append(entry)
        return orjson.dumps({"data": data})

    def cost(self, model: str, bill: Bill) -> Decimal:
        price = self.models[model]
        return (
            bill.prompt * Decimal(price["prompt"])
            + bill.completion * Decimal(price["completion"])
            + Decimal(price.get("request", "0"))
        )

    def charge(self, model: str, usage: dict[str, Any], answer_id: str) -> None:
        """Bill a finished answer's usage, as OpenRouter's `usage.cost`."""
        bill = self.bills.get(answer_id) or Bill(usage["prompt_tokens"])
        bill.completion = usage["completion_tokens"]
        bill.finished = True
        bill.cost = self.cost(model, bill)
        usage["cost"] = float(bill.cost)
        usage["cost_details"] = {"upstream_inference_cost": None}
        self.bills[answer_id] = bill


def prompt_tokens(body: dict[str, Any]) -> int:
    per_byte = body.get("model") == PER_BYTE
    total = 0
    for message in body["messages"]:
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        total += 4 + (byte_tokens(content) if per_byte else (len(content) + 3) // 4)
    return total


def byte_tokens(*texts: Any) -> int:
    """PER_BYTE's count of some strings (anything else counts nothing): a token a byte."""
    return sum(len(text.encode()) for text in texts if isinstance(text, str))


def _directive(body: dict[str, Any], name: str) -> float | None:
    text = body["messages"][-1].get("content")
    match = re.search(rf"\b{name}:([0-9.]+)", text) if isinstance(text, str) else None
    return float(match.group(1)) if match else None


def _positive(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class _Plan:
    """What one metered answer writes: per choice, reasoning tokens then content tokens."""

    choices: list[tuple[int, int]]

    @classmethod
    def of(cls, body: dict[str, Any], listed_max: int) -> _Plan:
        limit = max(_positive(body.get("max_tokens")), _positive(body.get("max_completion_tokens")))
        limit = limit or listed_max
        reasoning = body.get("reasoning")
        budget = _positive(reasoning.get("max_tokens")) if isinstance(reasoning, dict) else 0
        wanted = _directive(body, "tokens")
        each = limit + budget if wanted is None else min(int(wanted), limit + budget)
        thinking = min(budget, each)
        return cls([(thinking, each - thinking)] * (_positive(body.get("n")) or 1))

    def tokens(self) -> list[tuple[int, str]]:
        return [
            (index, kind)
            for index, (thinking, content) in enumerate(self.choices)
            for kind in ["reasoning"] * thinking + ["content"] * content
        ]


async def metered(
    request: web.Request, side: OpenRouterSide, body: dict[str, Any]
) -> web.StreamResponse:
    """An answer from a `metered/…` model (see the module docstring)."""
    model = body["model"]
    answer_id = side.next_id()
    bill = side.bills[answer_id] = Bill(prompt_tokens(body), said=body["messages"][-1]["content"])
    plan = _Plan.of(body, side.models[model].get("max") or 32)
    try:
        if body.get("stream"):
            return await _stream(request, side, body, answer_id, plan)
        return await _whole(request, side, body, answer_id, plan)
    finally:
        bill.cost = side.cost(model, bill)


def _envelope(body: dict[str, Any], answer_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": answer_id, "created": 1700000000, "model": body["model"], **fields}


async def _stream(
    request: web.Request, side: OpenRouterSide, body: dict[str, Any], answer_id: str, plan: _Plan
) -> web.StreamResponse:
    bill = side.bills[answer_id]
    pause = _directive(body, "pause")
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)

    async def send(chunk: dict[str, Any]) -> None:
        payload = _envelope(body, answer_id, object="chat.completion.chunk", **chunk)
        await response.write(b"data: " + orjson.dumps(payload) + b"\n\n")

    try:
        for index in range(len(plan.choices)):
            await send({"choices": [{"index": index, "delta": {"role": "assistant"}}]})
        for sent, (index, kind) in enumerate(plan.tokens()):
            if pause is not None and sent == int(pause):
                await asyncio.sleep(30)  # until the client leaves
            await send({"choices": [{"index": index, "delta": {kind: "tok "}}]})
            bill.completion += 1
            bill.reasoning += kind == "reasoning"
        if pause is not None and len(plan.tokens()) <= int(pause):
            await asyncio.sleep(30)
        ended = [
            {"index": i, "delta": {}, "finish_reason": "length"} for i in range(len(plan.choices))
        ]
        await send({"choices": ended})
        usage = _usage(bill)
        side.charge(body["model"], usage, answer_id)
        await send({"choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left: billed for what was sent (metered()'s finally)
    return response


async def _whole(
    request: web.Request, side: OpenRouterSide, body: dict[str, Any], answer_id: str, plan: _Plan
) -> web.StreamResponse:
    bill = side.bills[answer_id]
    await asyncio.sleep(_directive(body, "pause-headers") or 0)  # cancelled if the client leaves
    response = web.StreamResponse(headers={"content-type": "application/json"})
    await response.prepare(request)  # accepted: the headers are out
    await asyncio.sleep(_directive(body, "pause-body") or 0)
    choices = []
    for index, (thinking, content) in enumerate(plan.choices):
        message = {"role": "assistant", "content": "tok " * content}
        if thinking:
            message["reasoning"] = "tok " * thinking
        choices.append({"index": index, "message": message, "finish_reason": "length"})
        bill.completion += thinking + content
        bill.reasoning += thinking
    usage = _usage(bill)
    side.charge(body["model"], usage, answer_id)
    completion = _envelope(body, answer_id, object="chat.completion", choices=choices, usage=usage)
    try:
        await response.write(orjson.dumps(completion))
        await response.write_eof()
    except ConnectionResetError:
        pass
    return response


def _usage(bill: Bill) -> dict[str, Any]:
    return {
        "prompt_tokens": bill.prompt,
        "completion_tokens": bill.completion,
        "total_tokens": bill.prompt + bill.completion,
        "completion_tokens_details": {"reasoning_tokens": bill.reasoning},
    }


def bill_listed(side: OpenRouterSide, body: dict[str, Any], frames: list[bytes | float]) -> None:
    """Give a scripted answer of a listed model OpenRouter's id and `usage.cost`, in place."""
    answer_id = side.next_id()
    for position, frame in enumerate(frames):
        if not isinstance(frame, bytes) or not frame.startswith(b"data: {"):
            continue
        chunk = orjson.loads(frame[6:])
        chunk["id"] = answer_id
        if chunk.get("usage"):
            side.charge(body["model"], chunk["usage"], answer_id)
        frames[position] = b"data: " + orjson.dumps(chunk) + b"\n\n"


def bill_completion(side: OpenRouterSide, body: dict[str, Any], completion: dict[str, Any]) -> None:
    completion["id"] = side.next_id()
    side.charge(body["model"], completion["usage"], completion["id"])
