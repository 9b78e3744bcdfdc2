"""`callmissed bench`: time streamed chat completions through a running gateway, as users see them.

N requests at concurrency C, each timed from just before it is sent: first byte, first content
token, whole answer, and the gap between tokens. `--direct-url` runs the same requests against an
OpenAI-compatible upstream directly, in the same run, so the difference is what the gateway adds.
For the project's full load suite (fake upstream, LiteLLM side by side) see benchmarks/.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from callmissed.sse import SSEDecoder

__all__ = ["BenchResult", "Target", "format_report", "run_bench"]


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    base_url: str  # ends in /v1
    key: str
    model: str


@dataclass
class BenchResult:
    target: Target
    ttfb_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    seconds: float = 0.0


async def run_bench(
    targets: list[Target], requests: int, concurrency: int, prompt: str, max_tokens: int | None
) -> list[BenchResult]:
    """Run each target in turn (never at once, so they don't compete for the CPU)."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
    }
    if max_tokens:
        body["max_tokens"] = max_tokens
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        return [
            await _bench_one(session, target, body, requests, concurrency) for target in targets
        ]


async def _bench_one(
    session: aiohttp.ClientSession,
    target: Target,
    body: dict[str, Any],
    requests: int,
    concurrency: int,
) -> BenchResult:
    result = BenchResult(target)
    payload = orjson.dumps({**body, "model": target.model})
    headers = {"authorization": f"Bearer {target.key}", "content-type": "application/json"}
    url = f"{target.base_url.rstrip('/')}/chat/completions"
    await _one_request(session, url, payload, headers, BenchResult(target))  # warm the connection
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            await _one_request(session, url, payload, headers, result)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def _one_request(
    session: aiohttp.ClientSession,
    url: str,
    payload: bytes,
    headers: dict[str, str],
    result: BenchResult,
) -> None:
    started = time.perf_counter()
    first: float | None = None
    decoder = SSEDecoder()
    try:
        async with session.post(url, data=payload, headers=headers) as response:
            if response.status != 200:
                result.errors[f"HTTP {response.status}"] += 1
                return
            async for raw in response.content.iter_any():
                for event in decoder.feed(raw):
                    if event.data == b"[DONE]":
                        result.total_ms.append((time.perf_counter() - started) * 1000)
                        if first is not None:
                            result.ttfb_ms.append((first - started) * 1000)
                        return
                    if _has_content(event.data):
                        first = first or time.perf_counter()
                        result.tokens += 1
        result.errors["stream ended without [DONE]"] += 1
    except aiohttp.ClientError as exc:
        result.errors[type(exc).__name__] += 1


def _has_content(data: bytes) -> bool:
    chunk = orjson.loads(data)
    if chunk.get("error"):
        raise aiohttp.ClientPayloadError(str(chunk["error"].get("message")))
    return any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or ())


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return f"p50 {statistics.median(ordered):8.2f}  p90 {at(0.9):8.2f}  p99 {at(0.99):8.2f}"


def format_report(results: list[BenchResult]) -> str:
    lines = []
    for result in results:
        done = len(result.total_ms)
        rate = done / result.seconds if result.seconds else 0.0
        lines += [
            f"{result.target.label}: {result.target.model} at {result.target.base_url}",
            f"  requests   {done} ok, {sum(result.errors.values())} failed "
            f"{dict(result.errors) or ''}  {rate:.1f} req/s",
            f"  first token ms  {_percentiles(result.ttfb_ms)}",
            f"  whole answer ms {_percentiles(result.total_ms)}",
        ]
    if len(results) == 2 and results[0].ttfb_ms and results[1].ttfb_ms:
        added = statistics.median(results[0].ttfb_ms) - statistics.median(results[1].ttfb_ms)
        lines.append(f"added by {results[0].target.label} (first token, p50): {added:+.2f} ms")
    return "\n".join(lines)
