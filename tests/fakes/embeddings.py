"""Fake embeddings upstreams, served by the fake in tests/fakes/upstream.py on the same port.

  /client/v4/accounts/{account}/ai/run/{model}   Workers AI's native API: {"text": [...]} in,
                                                  {"result": {"shape", "data"}} out, <= 100 texts
  /{dialect}/api/v1/embeddings, /{dialect}/v1/embeddings   the OpenAI shape (OpenRouter, local)

Vectors come from `fake_vector(text)`: eight multiples of 1/8, exact in float32, so a test can
check a base64 round trip to the bit. The upstream model name picks the behaviour:
"error-<status>[-<code>]" fails like the chat fake; "floats-only" ignores encoding_format;
"no-usage" counts no tokens; "bytes" (OpenRouter's `metered/bytes`) counts a token per UTF-8
byte and 2 an input, costed from the fake's model list; "batch-4" refuses more than 4 inputs;
"one-short" answers one vector too few; the names in _HOSTILE send malformed vectors.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.fakes.openrouter import Bill
from tests.fakes.upstream import ERROR_PREFIX, FAKE, Received, _dialect, _error_response

__all__ = ["add_embedding_routes", "fake_vector", "text_of"]

CLOUDFLARE_MAX_TEXTS = 100
FAKE_DIMENSIONS = 8


def fake_vector(text: str, dimensions: int = FAKE_DIMENSIONS) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest() * (dimensions // 32 + 1)
    return [(digest[i] % 16 - 8) / 8 for i in range(dimensions)]


def text_of(item: Any) -> str:
    """The text a fake vector is made from: the text itself, or a token array spelled out."""
    return item if isinstance(item, str) else "tokens:" + ",".join(map(str, item))


def _name(model: str) -> str:
    return model.rsplit("/", 1)[-1].removeprefix("@cf/")


def _failure(dialect: str, name: str) -> web.Response | None:
    if not name.startswith(ERROR_PREFIX):
        return None
    status_text, _, code_text = name.removeprefix(ERROR_PREFIX).partition("-")
    status = int(status_text)
    return _error_response(dialect, status, f"fake failure {status}", int(code_text or 0))


async def _cloudflare_run(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[FAKE].requests.append(
        Received("cloudflare", request.path, dict(request.headers), body)
    )
    failure = _failure("cloudflare", _name(request.match_info["model"]))
    if failure is not None:
        return failure
    texts = body.get("text")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or len(texts) > CLOUDFLARE_MAX_TEXTS:
        message = f"Type mismatch of '/text': at most {CLOUDFLARE_MAX_TEXTS} items"
        return _error_response("cloudflare", 400, message, 5006)
    data = [fake_vector(text) for text in texts]
    result = {"shape": [len(data), FAKE_DIMENSIONS], "data": data, "pooling": "mean"}
    return web.json_response({"result": result, "success": True, "errors": [], "messages": []})


async def _openai_embeddings(request: web.Request) -> web.Response:
    dialect = _dialect(request.path)
    body = await request.json()
    request.app[FAKE].requests.append(Received(dialect, request.path, dict(request.headers), body))
    name = _name(str(body.get("model", "")))
    failure = _failure(dialect, name)
    if failure is not None:
        return failure
    inputs = body["input"]
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    if name == "batch-4" and len(inputs) > 4:
        return _error_response(dialect, 400, "at most 4 inputs")
    dimensions = body.get("dimensions") or FAKE_DIMENSIONS
    base64_wanted = body.get("encoding_format") == "base64" and name != "floats-only"
    data = [
        {"object": "embedding", "index": index, "embedding": _encoded(vector, base64_wanted)}
        for index, vector in enumerate(fake_vector(text_of(item), dimensions) for item in inputs)
    ]
    if name == "one-short":
        data.pop()
    hostile = _HOSTILE.get(name)
    if hostile is not None:
        for index, item in enumerate(data):
            item["embedding"] = hostile(index, fake_vector(text_of(inputs[index])))
    data.reverse()  # answered out of order: `index` is what counts
    answer: dict[str, Any] = {"object": "list", "data": data, "model": body["model"]}
    if name != "no-usage":
        tokens = sum(len(text_of(item).split()) for item in inputs)
        if name == "bytes":
            tokens = sum(2 + len(text_of(item).encode()) for item in inputs)
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        if dialect == "openrouter":
            cost = 0.5 if name != "bytes" else _per_byte_cost(request, body["model"], tokens)
            answer.update(id="gen-emb-fake", provider="Fake")
            answer["usage"].update(cost=cost, is_byok=False, cost_details={"upstream": 0.4})
    return web.json_response(answer)


def _per_byte_cost(request: web.Request, model: str, tokens: int) -> float:
    side = request.app[FAKE].openrouter
    return float(side.cost(model, Bill(tokens)))


# Vectors a hostile or broken upstream sends, whatever the encoding asked for: (index, the
# honest vector) -> what it sends instead.
_HOSTILE: dict[str, Callable[[int, list[float]], Any]] = {
    "huge-floats": lambda index, vector: [1e300] * len(vector),  # no float32 holds them
    "not-numbers": lambda index, vector: ["a", None, {"x": 1}, [0.5]],
    "ragged": lambda index, vector: vector[: len(vector) - index],  # lengths differ
    "nan-base64": lambda index, vector: _encoded([math.nan, *vector[1:]], True),
    "bad-base64": lambda index, vector: "!!not base64!!",
    "too-wide": lambda index, vector: [0.25] * 100_000,  # no model makes such vectors
}


def _encoded(vector: list[float], as_base64: bool) -> list[float] | str:
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def add_embedding_routes(app: web.Application) -> None:
    app.router.add_post("/client/v4/accounts/{account}/ai/run/{model:.+}", _cloudflare_run)
    app.router.add_post("/{dialect}/api/v1/embeddings", _openai_embeddings)
    app.router.add_post("/{dialect}/v1/embeddings", _openai_embeddings)
