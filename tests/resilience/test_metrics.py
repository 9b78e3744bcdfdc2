"""callmissed.metrics: Prometheus text as a scraper reads it."""

from __future__ import annotations

from callmissed.health import OPEN, RouteHealth
from callmissed.metrics import Metrics


def test_counters_histograms_and_route_gauges_render_as_prometheus_text():
    metrics = Metrics()
    metrics.inc("callmissed_requests_total", "m", "ok")
    metrics.inc("callmissed_requests_total", "m", "ok")
    metrics.inc("callmissed_attempts_total", 'we"ird\\route', "500")
    for seconds in (0.01, 0.2, 0.2, 500.0):
        metrics.observe("callmissed_ttfb_seconds", seconds, "p:a")
    routes = [RouteHealth("p:a", ttfb=0.05, error_rate=0.25, state=OPEN), RouteHealth("p:b")]
    lines = metrics.render(routes, inflight=3).splitlines()
    assert "# TYPE callmissed_requests_total counter" in lines
    assert 'callmissed_requests_total{model="m",outcome="ok"} 2' in lines
    assert 'callmissed_attempts_total{route="we\\"ird\\\\route",outcome="500"} 1' in lines
    assert 'callmissed_ttfb_seconds_bucket{route="p:a",le="0.025"} 1' in lines
    assert 'callmissed_ttfb_seconds_bucket{route="p:a",le="0.25"} 3' in lines
    assert 'callmissed_ttfb_seconds_bucket{route="p:a",le="120.0"} 3' in lines
    assert 'callmissed_ttfb_seconds_bucket{route="p:a",le="+Inf"} 4' in lines
    assert 'callmissed_ttfb_seconds_count{route="p:a"} 4' in lines
    assert 'callmissed_ttfb_seconds_sum{route="p:a"} 500.41' in lines
    assert "callmissed_inflight_requests 3" in lines
    assert 'callmissed_route_breaker_state{route="p:a"} 2' in lines
    assert 'callmissed_route_breaker_state{route="p:b"} 0' in lines
    assert 'callmissed_route_error_rate{route="p:a"} 0.25' in lines
    assert not any(
        line.startswith('callmissed_route_ttfb_ewma_seconds{route="p:b"}') for line in lines
    )
    assert metrics.value("callmissed_requests_total", "m", "ok") == 2


def test_past_the_limit_unknown_models_and_routes_share_one_other_series():
    metrics = Metrics(known_models={"m"}, known_routes={"p:m"}, max_other=1)
    for model in ("x/a", "x/b", "x/c", "m"):
        metrics.inc("callmissed_requests_total", model, "ok")
        metrics.observe("callmissed_ttfb_seconds", 0.1, f"openrouter:{model}")
    lines = metrics.render([], inflight=0).splitlines()
    assert 'callmissed_requests_total{model="x/a",outcome="ok"} 1' in lines
    assert 'callmissed_requests_total{model="other",outcome="ok"} 2' in lines
    assert 'callmissed_requests_total{model="m",outcome="ok"} 1' in lines  # known: never folded
    assert 'callmissed_ttfb_seconds_count{route="openrouter:x/a"} 1' in lines
    assert 'callmissed_ttfb_seconds_count{route="openrouter:other"} 3' in lines
    assert not any("x/b" in line or "x/c" in line for line in lines)
