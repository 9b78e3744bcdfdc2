"""Server-Timing on every chat response, and a stream's totals in its last event: the numbers
must add up against an upstream whose delays are known (tests/fakes/faults.py's slowish-first
sends its first token 300 ms in). No assertion here is about how fast the gateway is."""

from __future__ import annotations

import re
import time
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from tests.conftest import stop_gateway
from tests.resilience.conftest import faults, launch

DELAY_MS = 300.0  # the fault upstream's slowish-first: first token (or whole answer) this late
SLACK = 0.05  # each number is rounded to 0.01 ms

__all__ = ["faults"]  # the fault upstream fixture, shared with tests/resilience

MODELS = """
[models."slowish"]
routes = ["fa:timing/slowish-first"]

[models."falls-back"]
routes = ["fa:timing/error-500", "fb:timing/slowish-first"]
"""

METRIC = re.compile(r'^(\w+);dur=(\d+(?:\.\d+)?)(?:;desc="([^"]*)")?$')


@pytest.fixture(scope="module")
def timed(upstream, faults, tmp_path_factory):
    running = launch(upstream, faults, tmp_path_factory.mktemp("timing"), MODELS)
    yield running
    stop_gateway(running)


def server_timing(header: str) -> dict[str, tuple[float, str | None]]:
    """`Server-Timing` as {name: (ms, desc)}, checking every entry's shape on the way."""
    metrics = {}
    for entry in header.split(", "):
        match = METRIC.match(entry)
        assert match, f"not a Server-Timing metric: {entry!r} in {header!r}"
        metrics[match[1]] = (float(match[2]), match[3])
    return metrics


def _post(gateway, path: str, body: dict[str, Any], **headers: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = httpx.post(
        f"{gateway.url}{path}",
        json=body,
        headers={"authorization": f"Bearer {gateway.key}", **headers},
        timeout=10,
    )
    return response, (time.perf_counter() - started) * 1000


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello"}], **extra}


def test_a_whole_answer_says_gateway_connect_upstream_and_total(timed):
    response, elapsed = _post(timed, "/v1/chat/completions", _chat("slowish"))
    assert response.status_code == 200
    metrics = server_timing(response.headers["server-timing"])
    assert list(metrics) == ["gw", "connect", "upstream", "total"]
    (gw, _), (connect, _), (upstream, route), (total, _) = metrics.values()
    assert route == "fa"
    assert upstream >= DELAY_MS
    assert connect <= upstream
    assert gw + upstream <= total + SLACK
    assert total <= elapsed


def test_a_stream_says_what_it_knows_at_its_headers_and_the_rest_in_its_usage_chunk(timed):
    body = _chat("slowish", stream=True, stream_options={"include_usage": True})
    response, elapsed = _post(timed, "/v1/chat/completions", body)
    assert response.status_code == 200
    metrics = server_timing(response.headers["server-timing"])
    assert list(metrics) == ["gw", "connect", "upstream"]  # the total is not known yet
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
    usage_chunk = orjson.loads(events[-1])
    assert usage_chunk["usage"]["total_tokens"] == 7 and usage_chunk["choices"] == []
    timings = usage_chunk["x_callmissed"]["timings"]
    assert timings["gw_ms"] == metrics["gw"][0]
    assert timings["upstream_ms"] == metrics["upstream"][0] >= DELAY_MS
    assert timings["gw_ms"] + timings["upstream_ms"] <= timings["first_token_ms"] + SLACK
    assert timings["first_token_ms"] <= timings["total_ms"] <= elapsed


def test_the_sdk_reads_the_timings_of_a_stream(timed):
    with openai.OpenAI(base_url=timed.base_url, api_key=timed.key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="slowish",
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        last = list(stream)[-1]
    assert last.usage is not None and last.usage.total_tokens == 7
    extra = last.model_extra or {}
    assert extra["x_callmissed"]["timings"]["upstream_ms"] >= DELAY_MS


def test_attempts_before_the_winner_show_as_failover(timed):
    response, elapsed = _post(timed, "/v1/chat/completions", _chat("falls-back"))
    assert response.status_code == 200
    metrics = server_timing(response.headers["server-timing"])
    assert list(metrics) == ["gw", "failover", "connect", "upstream", "total"]
    assert metrics["failover"][1] == "2"  # attempts made
    assert metrics["upstream"][1] == "fb" and metrics["upstream"][0] >= DELAY_MS
    parts = metrics["gw"][0] + metrics["failover"][0] + metrics["upstream"][0]
    assert parts <= metrics["total"][0] + SLACK
    assert metrics["total"][0] <= elapsed


def test_the_anthropic_dialect_has_them_too(timed):
    body = {"model": "slowish", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]}
    response, elapsed = _post(timed, "/v1/messages", body)
    assert response.status_code == 200
    metrics = server_timing(response.headers["server-timing"])
    assert metrics["upstream"][0] >= DELAY_MS and metrics["total"][0] <= elapsed
    client = anthropic.Anthropic(base_url=timed.url, api_key=timed.key, max_retries=0)
    with client.messages.stream(
        model="slowish", max_tokens=20, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        events = list(stream)
        headers = stream.response.headers
    delta = next(event for event in events if event.type == "message_delta")
    timings = (delta.model_extra or {})["x_callmissed"]["timings"]
    streamed = server_timing(headers["server-timing"])
    assert timings["upstream_ms"] == streamed["upstream"][0] >= DELAY_MS
    assert timings["first_token_ms"] <= timings["total_ms"]


def test_a_refused_request_says_how_long_the_gateway_took(timed):
    response, elapsed = _post(timed, "/v1/chat/completions", _chat("no-such-model"))
    assert response.status_code == 404
    metrics = server_timing(response.headers["server-timing"])
    assert list(metrics) == ["gw", "total"]
    assert metrics["gw"][0] <= metrics["total"][0] <= elapsed
