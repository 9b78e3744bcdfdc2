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
