"""Route health through a running gateway: breakers, hedging, /v1/models and /metrics."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import stop_gateway
from tests.resilience.conftest import launch, sdk

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]

MODELS = """
[models."breaker"]
routes = ["fa:breaker/error-500", "fb:breaker/ok"]

[models."recovers"]
routes = ["fa:recovers/fail-first-2", "fb:recovers/ok"]

[models."hedged"]
routes = ["fa:hedged/slow-first", "fb:hedged/ok"]
hedge_after_ms = 100
timeouts = { first_token = 5, total = 10 }

[models."hedged-fast"]
routes = ["fa:hedged-fast/ok", "fb:hedged-fast/ok"]
hedge_after_ms = 2000

[models."fastest"]
routes = ["fa:fastest/slowish-first", "fb:fastest/ok"]
strategy = "fastest"
"""


@pytest.fixture(scope="module")
def health_gateway(upstream, faults, tmp_path_factory):
    running = launch(
        upstream,
        faults,
        tmp_path_factory.mktemp("health"),
        MODELS,
        CALLMISSED_BREAKER_FAILURES="2",
        CALLMISSED_BREAKER_OPEN="0.5",
        CALLMISSED_EXPLORE_EVERY="3",
    )
    yield running
    stop_gateway(running)


@pytest.fixture
def client(health_gateway):
    with sdk(health_gateway) as made:
        yield made


def _ask(client: openai.OpenAI, model: str, stream: bool = False) -> str:
    if stream:
        chunks = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    answer = client.chat.completions.create(model=model, messages=MESSAGES)
    return answer.choices[0].message.content or ""


def _route_health(gateway, model: str) -> dict[str, dict[str, Any]]:
    listing = httpx.get(
        f"{gateway.base_url}/models", headers={"authorization": f"Bearer {gateway.key}"}
    ).json()
    entry = next(item for item in listing["data"] if item["id"] == model)
    return {route["route"]: route for route in entry["health"]}


def test_an_open_breaker_skips_the_dead_route(client, health_gateway, faults):
    for _ in range(3):
        assert _ask(client, "breaker") == "Hello from breaker/ok"
    # Two failures opened the breaker: the third request went straight to the second route.
    assert len(faults.for_model("breaker/error-500")) == 2
    health = _route_health(health_gateway, "breaker")
    assert health["fa:breaker/error-500"]["state"] == "open"
    assert health["fa:breaker/error-500"]["error_rate"] > 0
    assert health["fb:breaker/ok"]["state"] == "closed"
    metrics = httpx.get(f"{health_gateway.url}/metrics").text
    assert 'callmissed_route_breaker_state{route="fa:breaker/error-500"} 2' in metrics
    assert 'callmissed_fallbacks_total{model="breaker"} 2' in metrics


def test_a_half_open_probe_closes_the_breaker_when_the_route_is_back(
    client, health_gateway, faults
):
    assert _ask(client, "recovers") == "Hello from recovers/ok"
    assert _ask(client, "recovers") == "Hello from recovers/ok"
    assert _ask(client, "recovers") == "Hello from recovers/ok"  # open: not asked
    assert len(faults.for_model("recovers/fail-first-2")) == 2
    time.sleep(0.6)  # CALLMISSED_BREAKER_OPEN: the next request is the probe
    assert _ask(client, "recovers") == "Hello from recovers/fail-first-2"
    assert (
        _route_health(health_gateway, "recovers")["fa:recovers/fail-first-2"]["state"] == "closed"
    )


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_a_slow_first_route_is_hedged_and_cancelled(client, health_gateway, faults, stream):
    before = len(faults.for_model("hedged/slow-first"))
    raw = client.chat.completions.with_raw_response.create(
        model="hedged", messages=MESSAGES, stream=stream
    )
    headers = raw.headers
    parsed = raw.parse()
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
    else:
        text = parsed.choices[0].message.content
    assert text == "Hello from hedged/ok"
    # Billed: the winner only; the loser was asked, then cancelled before it answered.
    assert headers["x-callmissed-upstream-model"] == "hedged/ok"
    assert headers["x-callmissed-attempts"] == "2"
    slow = faults.for_model("hedged/slow-first")[before:]
    assert len(slow) == 1
    faults.wait_for(lambda: slow[0].disconnected is not None)
    assert slow[0].ended is None  # it never finished its answer
    metrics = httpx.get(f"{health_gateway.url}/metrics").text
    assert 'callmissed_hedges_total{model="hedged",winner="hedge"}' in metrics


def test_a_fast_first_route_is_not_hedged(client, faults):
    assert _ask(client, "hedged-fast", stream=True) == "Hello from hedged-fast/ok"
    assert len(faults.for_model("hedged-fast/ok")) == 1
    assert faults.for_model("hedged-fast/ok")[0].model == "hedged-fast/ok"


def test_fastest_prefers_the_route_with_the_better_first_token_time(client, health_gateway):
    slow, fast = "Hello from fastest/slowish-first", "Hello from fastest/ok"
    answers = [_ask(client, "fastest", stream=True) for _ in range(6)]
    # The listed order stands until the other route is measured: every third request
    # (CALLMISSED_EXPLORE_EVERY) goes to the route tried longest ago; then the faster one leads.
    assert answers == [slow, slow, fast, fast, fast, slow]
    health = _route_health(health_gateway, "fastest")
    assert health["fa:fastest/slowish-first"]["ttfb_ms"] > health["fb:fastest/ok"]["ttfb_ms"]


def test_metrics_is_prometheus_text(client, health_gateway):
    _ask(client, "breaker")
    response = httpx.get(f"{health_gateway.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "# TYPE callmissed_ttfb_seconds histogram" in text
    assert 'callmissed_ttfb_seconds_bucket{route="fb:breaker/ok",le="+Inf"}' in text
    assert 'callmissed_requests_total{model="breaker",outcome="ok"}' in text
    assert 'callmissed_attempts_total{route="fa:breaker/error-500",outcome="500"}' in text
    assert "callmissed_inflight_requests 0" in text
