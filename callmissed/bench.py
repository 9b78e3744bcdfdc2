"""`callmissed bench`: the Getting Started page's latency tables, measured through a gateway.

For each `--model`, requests go one at a time in the playground's way (streamed, on one reused
HTTP/2 connection) and in each way the page says costs time, one change at a time: not
streamed, a new connection per request, HTTP/1.1. Each row is a model and a way, with its route
(the gateway's `x-callmissed-route`) and first token and total percentiles; a non-streamed
answer's "first token" is its first byte. `--direct-url` runs the same against an
OpenAI-compatible upstream directly, so the difference is what the gateway adds. The table goes to
stdout, progress to stderr; `--json` and `--chart` (matplotlib, the `bench` extra) save them.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError

from callmissed.sse import SSEDecoder

__all__ = ["VARIES", "Plan", "Row", "Variant", "format_table", "run_bench", "to_json", "variants"]

VARIES = ("stream", "connection", "http")  # what `--vary` may change from the baseline


@dataclass(frozen=True, slots=True)
class Variant:
    stream: bool = True
    reused: bool = True
    http2: bool = True

    @property
    def label(self) -> str:
        return " · ".join(
            [
                "stream" if self.stream else "non-stream",
                "reused" if self.reused else "fresh",
                "HTTP/2" if self.http2 else "HTTP/1.1",
            ]
        )


def variants(vary: set[str]) -> list[Variant]:
    """The playground's way first, then each way that differs from it in one thing."""
    ways = [Variant()]
    if "stream" in vary:
        ways.append(Variant(stream=False))
    if "connection" in vary:
        ways.append(Variant(reused=False))
    if "http" in vary:
        ways.append(Variant(http2=False))
    return ways


@dataclass(frozen=True, slots=True)
class Plan:
    base_url: str  # ends in /v1
    key: str
    models: list[str]
    requests: int
    prompt: str
    max_tokens: int | None = None
    ways: list[Variant] = field(default_factory=lambda: [Variant()])
    ca_file: str | None = None
    system: str = "callmissed"  # or "direct": an upstream called without the gateway


@dataclass
class Row:
    system: str
    model: str
    variant: Variant
    routes: Counter[str] = field(default_factory=Counter)
    ttfb_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def route(self) -> str:
        return self.routes.most_common(1)[0][0] if self.routes else "-"


class _Failed(Exception):
    pass


async def run_bench(plan: Plan, progress: Callable[[str], None]) -> list[Row]:
    """Every model in every way, in turn (never at once: they would compete for the CPU)."""
    rows = []
    for model in plan.models:
        for way in plan.ways:
            row = Row(plan.system, model, way)
            progress(f"{plan.system}: {model} · {way.label}")
            await _measure(plan, row, progress)
            rows.append(row)
    return rows


async def _measure(plan: Plan, row: Row, progress: Callable[[str], None]) -> None:
    body: dict[str, Any] = {
        "model": row.model,
        "messages": [{"role": "user", "content": plan.prompt}],
        "stream": row.variant.stream,
    }
    if plan.max_tokens:
        body["max_tokens"] = plan.max_tokens
    payload = orjson.dumps(body)
    client = _client(plan, row.variant)
    try:
        if row.variant.reused:  # the connection is opened before the clock starts
            await _request(
                client, plan, payload, row.variant.stream, Row(row.system, row.model, row.variant)
            )
        for done in range(plan.requests):
            await _request(client, plan, payload, row.variant.stream, row)
            progress(f"  {done + 1}/{plan.requests}")
    finally:
        await client.close()


def _client(plan: Plan, way: Variant) -> Client:
    builder = ClientBuilder().timeout(timedelta(seconds=600)).tcp_nodelay(True)
    if way.http2:
        secure = plan.base_url.startswith("https://")
        builder = builder.http2(True) if secure else builder.http2_prior_knowledge()
    else:
        builder = builder.http1_only()
    if not way.reused:
        builder = builder.pool_max_idle_per_host(0)  # every request opens its own connection
    if plan.ca_file:
        builder = builder.add_root_certificate_pem(Path(plan.ca_file).read_bytes())
    return builder.build()


async def _request(client: Client, plan: Plan, payload: bytes, stream: bool, row: Row) -> None:
    headers = {"authorization": f"Bearer {plan.key}", "content-type": "application/json"}
    url = f"{plan.base_url.rstrip('/')}/chat/completions"
    started = time.perf_counter()
    try:
        request = (
            client.post(url).headers(headers).body_bytes(payload).streamed_read_buffer_limit(0)
        )
        async with request.build_streamed() as response:
            if response.status != 200:
                raise _Failed(f"HTTP {response.status}")
            first = await _read(response, stream)
            row.routes[response.get_header("x-callmissed-route") or "-"] += 1
    except _Failed as exc:
        row.errors[str(exc)] += 1
        return
    except (PyreqwestError, TimeoutError) as exc:
        row.errors[type(exc).__name__] += 1
        return
    row.ttfb_ms.append((first - started) * 1000)
    row.total_ms.append((time.perf_counter() - started) * 1000)


async def _read(response: Any, stream: bool) -> float:
    """Read the whole answer; when its first token (streamed) or first byte came."""
    first: float | None = None
    decoder = SSEDecoder()
    done = not stream
    while (chunk := await response.body_reader.read_chunk()) is not None:
        if not stream:
            first = first or time.perf_counter()
            continue
        for event in decoder.feed(bytes(chunk)):
            if event.data == b"[DONE]":
                done = True
            elif first is None and _has_token(event.data):
                first = time.perf_counter()
    if first is None or not done:
        raise _Failed("ended early" if first is not None else "no token")
    return first


def _has_token(data: bytes) -> bool:
    chunk = orjson.loads(data)
    if chunk.get("error"):
        raise _Failed("error event")
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if any(delta.get(k) for k in ("content", "reasoning", "reasoning_content", "tool_calls")):
            return True
    return False


# -- what it says -----------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if q == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f} ms"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def format_table(rows: list[Row]) -> str:
    """The page's table: model, route, way, first token and total (p50 / p90), failures."""
    header = ["model", "route", "way", "TTFB p50", "p90", "total p50", "p90", "ok", "failed"]
    lines = [header]
    for row in rows:
        failed = sum(row.errors.values())
        lines.append(
            [
                row.model,
                row.route if row.system == "callmissed" else row.system,
                row.variant.label,
                _cell(_percentile(row.ttfb_ms, 0.5)),
                _cell(_percentile(row.ttfb_ms, 0.9)),
                _cell(_percentile(row.total_ms, 0.5)),
                _cell(_percentile(row.total_ms, 0.9)),
                str(len(row.total_ms)),
                f"{failed} {dict(row.errors)}" if failed else "0",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in lines
    ]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in text)


def to_json(rows: list[Row], plan: Plan) -> dict[str, Any]:
    return {
        "url": plan.base_url,
        "requests": plan.requests,
        "prompt": plan.prompt,
        "rows": [
            {
                "system": row.system,
                "model": row.model,
                "route": row.route,
                "stream": row.variant.stream,
                "connection": "reused" if row.variant.reused else "fresh",
                "http": "2" if row.variant.http2 else "1.1",
                "ok": len(row.total_ms),
                "errors": dict(row.errors),
                "ttfb_ms": _summary(row.ttfb_ms),
                "total_ms": _summary(row.total_ms),
            }
            for row in rows
        ],
    }


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "p50": _percentile(values, 0.5),
        "p90": _percentile(values, 0.9),
        "samples": [round(value, 3) for value in values],
    }
