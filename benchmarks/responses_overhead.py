"""What the Responses edge costs over chat's: `python -m benchmarks.responses_overhead`.

Issue 14's target is that the Responses edge adds at most 0.1 ms over the chat path. Two views,
as benchmarks/anthropic_overhead.py takes them:

1. CPU in-process, per request, for the benchmark's 20-chunk stream: the work each edge does
   beyond the shared gateway (chat: check the body, frame each chunk; Responses: check and
   translate the body, encode each chunk as Responses events, build response.created and
   response.completed with the whole Response).
2. End to end against `callmissed serve` and the benchmark's fake upstream, one request at a
   time, alternating endpoints: p50 time to the complete streamed answer (`store: false`, as
   Codex sends it, so no database write is timed; a stored response adds one).
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

from benchmarks.anthropic_overhead import _chunks, _openai_edge
from benchmarks.systems import ROOT, CallMissed, Upstream, Upstreams
from benchmarks.upstream import CHUNKS
from callmissed.formats.responses import build_chat, check_for_chat, parse_response_request
from callmissed.formats.responses_output import ResponseEncoder

__all__ = ["main"]

_PROMPT = [{"role": "user", "content": "Say hello"}]
_CHAT = {"model": "bench-fast", "messages": _PROMPT, "stream": True, "max_tokens": 64}
_RESPONSES = {
    "model": "bench-fast",
    "input": "Say hello",
    "stream": True,
    "store": False,
    "max_output_tokens": 64,
}


def _responses_edge(chunks: list[tuple[bytes, dict[str, Any]]]) -> bytes:
    request = parse_response_request(orjson.loads(orjson.dumps(_RESPONSES)))
    check_for_chat(request)
    build_chat(request, [])
    encoder = ResponseEncoder(request)
    events = [encoder.start()] + [encoder.feed(chunk) for _, chunk in chunks]
    usage = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 32}
    return b"".join(events) + encoder.finish(usage)


def _cpu_us(edge: Callable[[list[tuple[bytes, dict[str, Any]]]], bytes], rounds: int) -> float:
    chunks = _chunks()
    for _ in range(min(rounds, 200)):
        edge(chunks)
    samples = []
    for _ in range(rounds):
        began = time.perf_counter_ns()
        edge(chunks)
        samples.append(time.perf_counter_ns() - began)
    return statistics.median(samples) / 1000


def _end_to_end_ms(base: str, key: str, requests: int, warmup: int) -> tuple[float, float]:
    chat_ms: list[float] = []
    responses_ms: list[float] = []
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(headers=headers, timeout=30) as client:
        for n in range(requests + warmup):
            for url, body, sink in (
                (f"{base}/v1/chat/completions", _CHAT, chat_ms),
                (f"{base}/v1/responses", _RESPONSES, responses_ms),
            ):
                began = time.perf_counter()
                with client.stream("POST", url, json=body) as reply:
                    reply.read()
                    assert reply.status_code == 200, reply.text
                if n >= warmup:
                    sink.append((time.perf_counter() - began) * 1000)
    return statistics.median(chat_ms), statistics.median(responses_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20_000, help="in-process repetitions")
    parser.add_argument("--requests", type=int, default=500, help="end-to-end requests per API")
    parser.add_argument("--warmup", type=int, default=50, help="end-to-end requests not timed")
    args = parser.parse_args()
    chat_us = _cpu_us(_openai_edge, args.rounds)
    responses_us = _cpu_us(_responses_edge, args.rounds)
    print(f"edge CPU per request, {CHUNKS}-chunk stream (p50):")
    print(f"  chat       {chat_us:7.1f} us")
    print(f"  responses  {responses_us:7.1f} us   (+{responses_us - chat_us:.1f} us)")

    workdir = ROOT / "benchmarks" / "results" / "tmp" / f"responses-{time.strftime('%H%M%S')}"
    workdir.mkdir(parents=True)
    upstream = Upstream(Path(workdir), 0.0, 0.0, 0.0)
    try:  # the upstream is stopped however the gateway's start or the run ends
        gateway = CallMissed().start(Upstreams(upstream), workdir)
        try:
            base = gateway.base_url.removesuffix("/v1")
            chat_ms, responses_ms = _end_to_end_ms(base, gateway.key, args.requests, args.warmup)
        finally:
            gateway.stop()
    finally:
        upstream.stop()
    print(f"end to end, streamed, one at a time (p50 of {args.requests}):")
    print(f"  chat       {chat_ms:7.3f} ms")
    print(f"  responses  {responses_ms:7.3f} ms   (+{responses_ms - chat_ms:.3f} ms)")


if __name__ == "__main__":
    main()
