"""Embeddings on one route: the inputs in batches the upstream accepts, merged back in order.

A route's attempt sends every batch (a few at once) and either merges all their vectors, indexed
as the client's inputs, or fails as a whole, so that failover.py may try the next route. Vectors
are shortened (`dimensions`, for Matryoshka-trained models) and encoded (float or base64) here,
the same whichever route answered. gateway.embed() wires this to routing and credits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from callmissed import failures
from callmissed.errors import InvalidRequest
from callmissed.failover import Failover
from callmissed.formats.embeddings import EmbeddingBatch, EmbeddingRequest, finish_vector
from callmissed.routing import Target
from callmissed.settings import ModelSettings
from callmissed.token_estimate import estimate_embedding_tokens

__all__ = ["MAX_BATCHES_AT_ONCE", "EmbeddingPlan", "embed_on", "plan_embedding"]

T = TypeVar("T")

MAX_BATCHES_AT_ONCE = 4  # upstream requests one client request may have in flight
# One vector of 3,072 floats as JSON is about 60 KB: 2,048 of them (one OpenAI batch) pass
# the 32 MiB default upstream_body_bytes, so a batch may have this much per input.
ANSWER_BYTES_PER_INPUT = 64 * 1024


@dataclass(frozen=True, slots=True)
class EmbeddingPlan:
    """A request resolved against its model: what each route is sent, and what we do after."""

    request: EmbeddingRequest
    body: dict[str, Any]  # the client's body as routes get it
    shorten_to: int | None  # vectors longer than this are shortened here


def plan_embedding(model: ModelSettings, request: EmbeddingRequest) -> EmbeddingPlan:
    """Where the catalog knows a model's vector length, the gateway owns `dimensions`: no route
    is sent it, and vectors are shortened here, so every route answers alike. Elsewhere (any
    vendor/model id, a config model without one) `dimensions` reaches the upstream as sent.
    InvalidRequest if the model cannot make vectors of the length asked for."""
    wanted = request.dimensions
    settings = model.embedding
    native = settings.dimensions if settings is not None else None
    if wanted is None or settings is None or native is None:
        return EmbeddingPlan(request, request.body, None)
    if wanted > native:
        raise InvalidRequest(
            f"{model.name} makes {native}-dimensional vectors: 'dimensions' may be at most "
            f"{native}.",
            param="dimensions",
        )
    if wanted < native and not settings.shorten:
        raise InvalidRequest(
            f"{model.name} cannot shorten its {native}-dimensional vectors (it was not trained "
            "for it): leave 'dimensions' out.",
            param="dimensions",
        )
    body = {key: value for key, value in request.body.items() if key != "dimensions"}
    return EmbeddingPlan(request, body, wanted if wanted < native else None)


async def embed_on(
    failover: Failover, target: Target, model: ModelSettings, plan: EmbeddingPlan
) -> dict[str, Any]:
    """The whole create-embedding response from `target`'s upstream, `usage` included (the
    upstream's token counts, or our estimate for a batch it did not count)."""
    provider = target.provider
    size = provider.embedding_batch
    if model.embedding is not None and model.embedding.batch is not None:
        size = min(size, model.embedding.batch)  # this model's upstream takes fewer
    inputs: list[Any] = plan.request.inputs
    batches = [inputs[start : start + size] for start in range(0, len(inputs), size)]
    answers = await _gather([_send(failover, target, model, plan, batch) for batch in batches])
    return _merge(target, plan, batches, answers)


async def _send(
    failover: Failover, target: Target, model: ModelSettings, plan: EmbeddingPlan, batch: list[Any]
) -> EmbeddingBatch:
    provider = target.provider
    request = provider.build_embedding_request(plan.body, batch, target.route, model)
    response = await failover.send(provider, request)
    # Read whole, within limits.upstream_body_bytes or what the batch's vectors may fill, if more.
    limit = max(failover.limits.upstream_body_bytes, len(batch) * ANSWER_BYTES_PER_INPUT)
    try:
        body, more = await response.read(limit)
    finally:
        response.close()
    if more:
        label = f"{provider.label} ({provider.name})"
        message = f"{label} answered with more than {limit} bytes"
        raise failures.failure(failures.TOO_LARGE, message, provider=provider.name)
    return provider.parse_embeddings(body)


async def _gather(jobs: list[Awaitable[T]]) -> list[T]:
    """Every job's result in order, at most MAX_BATCHES_AT_ONCE at once; the first failure
    cancels the rest and is raised as it is (failures.py says what follows it)."""
    if len(jobs) == 1:
        return [await jobs[0]]  # the usual case: no task to make
    slots = asyncio.Semaphore(MAX_BATCHES_AT_ONCE)

    async def limited(job: Awaitable[T]) -> T:
        async with slots:
            return await job

    tasks = [asyncio.ensure_future(limited(job)) for job in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failures = [task.exception() for task in tasks if task.done() and not task.cancelled()]
        for failure in failures:
            if failure is not None:
                raise failure
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()


def _merge(
    target: Target, plan: EmbeddingPlan, batches: list[list[Any]], answers: list[EmbeddingBatch]
) -> dict[str, Any]:
    provider = target.provider
    label = f"{provider.label} ({provider.name})"
    request = plan.request
    data: list[dict[str, Any]] = []
    prompt = 0
    lengths: set[int] = set()
    for batch, answer in zip(batches, answers, strict=True):
        if len(answer.vectors) != len(batch):
            raise failures.failure(
                failures.MALFORMED,
                f"{label} answered {len(answer.vectors)} embeddings for {len(batch)} inputs",
                provider=provider.name,
            )
        counted = answer.prompt_tokens
        prompt += counted if counted is not None else estimate_embedding_tokens(batch)
        for vector in answer.vectors:
            try:
                finished = finish_vector(vector, request.encoding, plan.shorten_to)
                lengths.add(len(finished))  # all in one encoding: equal lengths, equal vectors
                if len(lengths) > 1:  # one model's vectors all have its length
                    raise ValueError("its vectors have different lengths")
            except ValueError as exc:
                message = f"{label} sent a malformed embedding: {exc}"
                raise failures.failure(
                    failures.MALFORMED, message, provider=provider.name
                ) from None
            data.append({"object": "embedding", "index": len(data), "embedding": finished})
    envelope = answers[0].envelope
    return {
        **envelope,
        "object": "list",
        "data": data,
        "model": envelope.get("model") or target.route.upstream_model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
