"""GET /metrics: open by default (Prometheus' usual scrape), behind a bearer token once
CALLMISSED_METRICS_TOKEN is set, so a gateway on a public port need not publish its traffic."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import start_gateway, stop_gateway

TOKEN = "metrics-secret-token"


@pytest.fixture(scope="module")
def guarded(upstream, tmp_path_factory):
    running = start_gateway(
        upstream, tmp_path_factory.mktemp("metrics"), CALLMISSED_METRICS_TOKEN=TOKEN
    )
    yield running
    stop_gateway(running)


def test_metrics_are_open_without_a_token(gateway):
    response = httpx.get(f"{gateway.url}/metrics")
    assert response.status_code == 200
    assert "callmissed_inflight_requests" in response.text


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}"])
def test_a_metrics_token_keeps_others_out(guarded, authorization):
    headers = {"authorization": authorization} if authorization else {}
    response = httpx.get(f"{guarded.url}/metrics", headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert "CALLMISSED_METRICS_TOKEN" in error["message"] and TOKEN not in error["message"]
    assert "callmissed_" not in response.text


def test_the_metrics_token_lets_a_scraper_in(guarded):
    response = httpx.get(f"{guarded.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "callmissed_inflight_requests" in response.text


def test_invented_model_ids_fold_into_one_other_series(upstream, tmp_path, client_for):
    """Any vendor/model id reaches OpenRouter, so clients choose label values: past the limit,
    models outside the catalog/config are counted as model="other", their routes as
    route="openrouter:other", and get no route gauges of their own."""
    running = start_gateway(upstream, tmp_path, CALLMISSED_METRICS_MAX_MODELS="2")
    try:
        client = client_for(running)
        for n in range(5):
            client.chat.completions.create(
                model=f"vendor/invented-{n}", messages=[{"role": "user", "content": "hi"}]
            )
        client.chat.completions.create(
            model="local-model", messages=[{"role": "user", "content": "hi"}]
        )
        text = httpx.get(f"{running.url}/metrics").text
    finally:
        stop_gateway(running)
    requests = [line for line in text.splitlines() if line.startswith("callmissed_requests_total")]
    assert sorted(requests) == [
        'callmissed_requests_total{model="local-model",outcome="ok"} 1',  # configured: its own
        'callmissed_requests_total{model="other",outcome="ok"} 3',
        'callmissed_requests_total{model="vendor/invented-0",outcome="ok"} 1',
        'callmissed_requests_total{model="vendor/invented-1",outcome="ok"} 1',
    ]
    assert 'callmissed_attempts_total{route="openrouter:other",outcome="ok"} 3' in text
    assert 'callmissed_ttfb_seconds_count{route="openrouter:other"} 3' in text
    assert "invented-4" not in text
    gauges = [line for line in text.splitlines() if line.startswith("callmissed_route_error_rate")]
    assert 'callmissed_route_error_rate{route="openrouter:vendor/invented-1"} 0' in gauges
    assert not any("invented-2" in line or "other" in line for line in gauges)
