"""The OpenAI-compatible edge: POST /v1/chat/completions and GET /v1/models.

Framing follows docs/streaming.md: data-only SSE events, `data: [DONE]` at the
end, and a failure after the first byte sent as `data: {"error": {...}}`, which the SDK raises.
A first token slow to come commits the stream early, with `: keep-alive` comments (keepalive.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from callmissed.edge.web import Request, Response, StreamResponse, error_response, json_response
from callmissed.errors import GatewayError, to_openai
from callmissed.formats.openai import check_chat_request
from callmissed.gateway import Gateway
from callmissed.keepalive import InBand, in_band_error
from callmissed.relay import ChatStream, Chunk
from callmissed.settings import ModelSettings
from callmissed.tags import request_tags
from callmissed.timing import RequestTrace

__all__ = ["create_chat_completion", "list_models", "retrieve_model"]

log = logging.getLogger("callmissed")

_DONE = b"data: [DONE]\n\n"


async def create_chat_completion(gateway: Gateway, request: Request) -> Response | StreamResponse:
    trace = gateway.observer.begin(request.request_id, request.headers, request.path)
    try:
        return await _create(gateway, request, trace)
    except GatewayError as exc:
        gateway.observer.failed(trace, exc)
        response = error_response(exc, "openai", request.request_id)
        response.headers.append((b"server-timing", trace.server_timing(total=True)))
        return response


async def _create(
    gateway: Gateway, request: Request, trace: RequestTrace
) -> Response | StreamResponse:
    principal = request.key
    trace.key_name = principal.name
    body = request.json()
    check_chat_request(body)
    tags = request_tags(request.headers, body)
    if not body.get("stream"):
        completion, info = await gateway.complete(principal, body, trace=trace, tags=tags)
        headers = [*info.headers(), (b"server-timing", trace.server_timing(total=True))]
        return json_response(completion, headers=headers)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    request_id = request.request_id
    keepalive = gateway.keepalive(request.start_stream, [])
    opening = gateway.open_stream(principal, body, include_usage, trace=trace, tags=tags)
    try:
        stream, info = await keepalive.run(opening)
    except InBand as failed:
        gateway.observer.failed(trace, failed.error)
        return StreamResponse(in_band_error(failed.error, _error_event, request_id))
    headers = []
    if not keepalive.started:  # else the headers went out with the first comment
        headers = [*info.headers(), (b"server-timing", trace.server_timing(total=False))]
    return StreamResponse(_aiter_sse(stream, request_id, trace), headers, stream.close)


async def _aiter_sse(
    stream: ChatStream, request_id: str, trace: RequestTrace
) -> AsyncIterator[bytes]:
    complete = False
    timed = False
    try:
        async for batch in stream.aiter_batches():
            if not timed and stream.usage is not None:
                timed = _add_timings(batch, trace)
            events = b"".join([chunk.event() for chunk in batch])
            # The read that brought the upstream's [DONE] (a short answer's only one): ours goes
            # in the same write. The stream ends, and settles, on the next turn of the loop.
            complete = stream.complete
            yield events + _DONE if complete else events
    except GatewayError as exc:
        yield _error_event(exc)
        return
    except Exception:
        log.exception("stream failed (%s)", request_id)
        yield _error_event(GatewayError(f"Internal error ({request_id})."))
        return
    if not complete:
        yield _DONE


def _add_timings(batch: list[Chunk], trace: RequestTrace) -> bool:
    """Put `x_callmissed.timings` in the usage chunk, if this batch has the client's one."""
    for chunk in reversed(batch):
        if chunk.tokens is None and chunk.run is None and "usage" in chunk.json():
            parsed = chunk.json()
            parsed["x_callmissed"] = trace.stream_extra()
            chunk.data = orjson.dumps(parsed)
            return True
    return False


def _error_event(exc: GatewayError) -> bytes:
    _, payload = to_openai(exc)
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def list_models(gateway: Gateway, request: Request) -> Response:
    """GET /v1/models, as the caller's key sees them: unavailable if it could not use one."""
    metered = request.key.metered
    data = [_describe(gateway, model, metered) for model in gateway.settings.models.values()]
    return json_response({"object": "list", "data": data})


async def retrieve_model(gateway: Gateway, request: Request) -> Response:
    """GET /v1/models/{id}: any id we can route, including vendor/model ids via OpenRouter."""
    model = gateway.router.model(request.path.removeprefix("/v1/models/"))
    return json_response(_describe(gateway, model, request.key.metered))


def _describe(gateway: Gateway, model: ModelSettings, metered: bool) -> dict[str, Any]:
    route = model.routes[0]
    unavailable = gateway.router.unavailable_reason(model)
    price = gateway.accounting.prices.price(model)
    if unavailable is None and metered and price is None:
        unavailable = (
            "it has no price (neither its upstream's price list nor the config file prices it), "
            "so keys with a credit limit cannot use it (the operator can set one under [prices])"
        )
    entry: dict[str, Any] = {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": route.provider,
        "route": route.provider,
        "upstream_model": route.upstream_model,
        "routes": [f"{r.provider}:{r.upstream_model}" for r in model.routes],
        "strategy": model.strategy,
        "health": [gateway.health.describe(r) for r in model.routes],
        "available": unavailable is None,
        "capabilities": {"chat": model.embedding is None, "embedding": model.embedding is not None},
        "reasoning_effort": _reasoning_capability(gateway, model),
    }
    if model.embedding is not None:
        entry["embedding"] = _embedding_capability(gateway, model)
    if unavailable:
        entry["unavailable_reason"] = unavailable
    if model.description:
        entry["description"] = model.description
    if model.context:
        entry["context_length"] = model.context
    if price is not None:  # what its first route bills, markup included (docs/credits.md)
        rates = price.route(route).rates
        entry["pricing"] = {
            "input_per_million": rates.input / 1e6,
            "cached_input_per_million": rates.cached_input / 1e6,
            "cache_write_per_million": (
                rates.input if rates.cache_write is None else rates.cache_write
            )
            / 1e6,
            "output_per_million": rates.output / 1e6,
            "request": rates.request / 1e12,
        }
    return entry


def _embedding_capability(gateway: Gateway, model: ModelSettings) -> dict[str, Any]:
    """Its vectors' length (null: the upstream's), whether `dimensions` may ask for fewer, and
    how many inputs go to its first route at once (more are split: docs/embeddings.md)."""
    embedding = model.embedding
    assert embedding is not None
    provider = gateway.providers[model.routes[0].provider]
    return {
        "dimensions": embedding.dimensions,
        "shorten": embedding.shorten,
        "batch": embedding.batch or provider.embedding_batch,
    }


def _reasoning_capability(gateway: Gateway, model: ModelSettings) -> dict[str, Any]:
    if model.reasoning == "passthrough":
        return {"policy": "passthrough", "accepted": "any", "sent": "as-is"}
    policy = gateway.settings.reasoning_policies[model.reasoning]
    return {"policy": model.reasoning, "accepted": list(policy), "sent": dict(policy)}
