"""What the Anthropic edge costs over the OpenAI one: `python -m benchmarks.anthropic_overhead`.

Issue 4's target is that translation adds at most 0.3 ms p50 over the OpenAI path. Two views:

1. CPU in-process, per request, for the benchmark's 20-chunk stream: the work each edge does
   beyond the shared gateway (OpenAI: check the body, frame each chunk; Anthropic: translate the
   body, encode each chunk as Messages events, build message_start/message_delta).
2. End to end against `callmissed serve` and the benchmark's fake upstream, one request at a
   time, alternating endpoints: p50 time to the complete streamed answer.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.systems import ROOT, CallMissed, Upstream, Upstreams
from benchmarks.upstream import CHUNKS
from callmissed.formats.anthropic import parse_message_request
from callmissed.formats.anthropic_message import MessageStreamEncoder
from callmissed.formats.openai import check_chat_request

__all__ = ["main"]

_PROMPT = [{"role": "user", "content": "Say hello"}]
_OPENAI = {"model": "bench-fast", "messages": _PROMPT, "stream": True, "max_tokens": 64}
_ANTHROPIC = {"model": "bench-fast", "messages": _PROMPT, "stream": True, "max_tokens": 64}


def _chunks() -> list[tuple[bytes, dict[str, Any]]]:
    """The chunks as the relay hands them to an edge: bytes, already parsed."""
    envelope = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [{"role": "assistant", "content": ""}]
    deltas += [{"content": f"tok{i} "} for i in range(CHUNKS)]
    chunks = [{**envelope, "choices": [{"index": 0, "delta": d}]} for d in deltas]
    chunks.append({**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return [(orjson.dumps(chunk), chunk) for chunk in chunks]


def _openai_edge(chunks: list[tuple[bytes, dict[str, Any]]]) -> bytes:
    body = orjson.loads(orjson.dumps(_OPENAI))
    check_chat_request(body)
    framed = [b"data: " + data + b"\n\n" for data, _ in chunks]
    return b"".join(framed) + b"data: [DONE]\n\n"


def _anthropic_edge(chunks: list[tuple[bytes, dict[str, Any]]]) -> bytes:
    request = parse_message_request(orjson.loads(orjson.dumps(_ANTHROPIC)))
    encoder = MessageStreamEncoder(request)
    events = [encoder.start()] + [encoder.feed(chunk) for _, chunk in chunks]
    usage = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 32}
    return b"".join(events) + encoder.finish(usage)


def _cpu_us(edge: Callable[[list[tuple[bytes, dict[str, Any]]]], bytes], rounds: int) -> float:
    chunks = _chunks()
    for _ in range(200):
        edge(chunks)
    samples = []
    for _ in range(rounds):
        began = time.perf_counter_ns()
        edge(chunks)
        samples.append(time.perf_counter_ns() - began)
    return statistics.median(samples) / 1000


def _end_to_end_ms(base: str, key: str, requests: int) -> tuple[float, float]:
    openai_ms: list[float] = []
    anthropic_ms: list[float] = []
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(headers=headers, timeout=30) as client:
        for n in range(requests + 50):
            for url, body, sink in (
                (f"{base}/v1/chat/completions", _OPENAI, openai_ms),
                (f"{base}/v1/messages", _ANTHROPIC, anthropic_ms),
            ):
                began = time.perf_counter()
                with client.stream("POST", url, json=body) as reply:
                    reply.read()
                    assert reply.status_code == 200, reply.text
                if n >= 50:  # warm-up
                    sink.append((time.perf_counter() - began) * 1000)
    return statistics.median(openai_ms), statistics.median(anthropic_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="in-process repetitions")
    parser.add_argument("--requests", type=int, default=500, help="end-to-end requests per API")
    args = parser.parse_args()
    openai_us = _cpu_us(_openai_edge, args.rounds)
    anthropic_us = _cpu_us(_anthropic_edge, args.rounds)
    print(f"edge CPU per request, {CHUNKS}-chunk stream (p50):")
    print(f"  openai     {openai_us:7.1f} us")
    print(f"  anthropic  {anthropic_us:7.1f} us   (+{anthropic_us - openai_us:.1f} us)")

    workdir = ROOT / "benchmarks" / "results" / "tmp" / f"anthropic-{time.strftime('%H%M%S')}"
    workdir.mkdir(parents=True)
    upstream = Upstream(Path(workdir), 0.0, 0.0, 0.0)
    try:  # the upstream is stopped however the gateway's start or the run ends
        gateway = CallMissed().start(Upstreams(upstream), workdir)
        try:
            base = gateway.base_url.removesuffix("/v1")
            openai_ms, anthropic_ms = _end_to_end_ms(base, gateway.key, args.requests)
        finally:
            gateway.stop()
    finally:
        upstream.stop()
    print(f"end to end, streamed, one at a time (p50 of {args.requests}):")
    print(f"  openai     {openai_ms:7.3f} ms")
    print(f"  anthropic  {anthropic_ms:7.3f} ms   (+{anthropic_ms - openai_ms:.3f} ms)")


if __name__ == "__main__":
    main()
