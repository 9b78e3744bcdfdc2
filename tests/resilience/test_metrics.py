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
