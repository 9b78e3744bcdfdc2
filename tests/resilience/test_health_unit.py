"""callmissed.health on its own, driven by a fake clock: breakers, cool-downs, the fastest order."""

from __future__ import annotations

from typing import Any

import pytest

from callmissed.errors import UpstreamError, UpstreamOverloaded, UpstreamRejected
from callmissed.health import CLOSED, HALF_OPEN, OPEN, Health
from callmissed.providers import REGISTRY
from callmissed.routing import Target
from callmissed.settings import ModelSettings, ProviderSettings, Resilience, Route

PROVIDER = REGISTRY["openai"](ProviderSettings(name="p", type="openai", base_url="http://up/v1"))
A, B, C = (Target(PROVIDER, Route("p", name)) for name in ("a", "b", "c"))
ORDERED = ModelSettings(name="m", routes=(A.route, B.route, C.route), reasoning="passthrough")
FASTEST = ModelSettings(
    name="f", routes=(A.route, B.route, C.route), reasoning="passthrough", strategy="fastest"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _health(clock: Clock, **policy: Any) -> Health:
    return Health(Resilience(breaker_failures=3, breaker_open=30.0, **policy), clock)


def _failure(retry_after: float | None = None) -> UpstreamError:
    return UpstreamError("down", provider="p", upstream_status=500, retry_after=retry_after)


def test_consecutive_failures_open_the_breaker_and_a_success_resets_the_count(clock):
    health = _health(clock)
    for _ in range(2):
        health.failed(A.route, _failure())
    health.succeeded(A.route, 0.1)
    for _ in range(2):
        health.failed(A.route, _failure())
    assert health.get(A.route).state == CLOSED
    health.failed(A.route, _failure())
    assert health.get(A.route).state == OPEN
    assert health.order(ORDERED, [A, B, C]) == [B, C]


def test_an_open_breaker_lets_one_probe_through_after_its_wait(clock):
    health = _health(clock)
    for _ in range(3):
        health.failed(A.route, _failure())
    clock.now += 29.9
    assert not health.acquire(A.route)
    clock.now += 0.2
    assert health.order(ORDERED, [A, B]) == [A, B]
    assert health.acquire(A.route)
    assert health.get(A.route).state == HALF_OPEN
    assert not health.acquire(A.route)  # one probe at a time
    assert health.order(ORDERED, [A, B]) == [B]
    health.succeeded(A.route, 0.2)
    assert health.get(A.route).state == CLOSED


def test_a_failed_probe_opens_the_breaker_again(clock):
    health = _health(clock)
    for _ in range(3):
        health.failed(A.route, _failure())
    clock.now += 31
    assert health.acquire(A.route)
    health.failed(A.route, _failure())
    assert health.get(A.route).state == OPEN
    assert not health.acquire(A.route)


def test_an_abandoned_probe_frees_the_probe_slot(clock):
    health = _health(clock)
    for _ in range(3):
        health.failed(A.route, _failure())
    clock.now += 31
    assert health.acquire(A.route)
    health.abandoned(A.route, 0.05)
    assert health.acquire(A.route)


def test_retry_after_keeps_a_route_out_until_it_has_passed(clock):
    health = _health(clock)
    health.failed(A.route, _failure(retry_after=10))
    assert health.order(ORDERED, [A, B]) == [B]
    clock.now += 10
    assert health.order(ORDERED, [A, B]) == [A, B]
    health.failed(A.route, _failure(retry_after=86400))  # capped
    clock.now += 301
    assert health.order(ORDERED, [A, B]) == [A, B]


def test_unavailable_repeats_the_failure_with_the_wait(clock):
    health = _health(clock)
    rejected = UpstreamRejected("slow down", provider="p", upstream_status=429, retry_after=20)
    health.failed(A.route, rejected)
    clock.now += 5
    error = health.unavailable(ORDERED, [A])
    assert isinstance(error, UpstreamRejected)
    assert error.http_status == 429
    assert error.retry_after == pytest.approx(15)
    assert "tried again in 15 s" in error.message
    assert rejected.message == "slow down"  # the stored failure is not changed


def test_unavailable_without_a_failure_is_overloaded(clock):
    health = _health(clock)
    assert isinstance(health.unavailable(ORDERED, [A]), UpstreamOverloaded)


def test_fastest_orders_by_first_token_time_and_error_rate(clock):
    health = _health(clock, explore_every=0)
    health.succeeded(A.route, 0.300)
    health.succeeded(B.route, 0.100)
    assert health.order(FASTEST, [A, B, C]) == [B, A, C]  # C unmeasured: last
    for _ in range(2):
        health.failed(B.route, _failure())
        health.succeeded(B.route, 0.1)
    assert health.get(B.route).score() > 0.1
    health.failed(B.route, _failure())
    health.failed(B.route, _failure())
    health.failed(B.route, _failure())  # open: left out altogether
    assert health.order(FASTEST, [A, B, C]) == [A, C]


def test_fastest_explores_the_stalest_route_every_nth_request(clock):
    health = _health(clock, explore_every=3)
    health.succeeded(A.route, 0.1)
    orders = []
    for _ in range(6):
        clock.now += 1
        order = health.order(FASTEST, [A, B])
        assert health.acquire(order[0].route)
        health.succeeded(order[0].route, 0.1 if order[0] is A else 0.5)
        orders.append(order[0])
    assert orders == [A, A, B, A, A, B]


def test_an_abandoned_wait_raises_the_average_but_never_lowers_it(clock):
    health = _health(clock)
    health.succeeded(A.route, 0.2)
    health.abandoned(A.route, 0.1)
    assert health.get(A.route).ttfb == pytest.approx(0.2)
    health.abandoned(A.route, 1.2)
    assert health.get(A.route).ttfb == pytest.approx(0.4)
    health.abandoned(B.route, 0.5)
    assert health.get(B.route).ttfb == pytest.approx(0.5)


def test_describe(clock):
    health = _health(clock)
    health.succeeded(A.route, 0.0123)
    health.failed(A.route, _failure(retry_after=3))
    described = health.describe(A.route)
    assert described == {
        "route": "p:a",
        "state": CLOSED,
        "ttfb_ms": 12.3,
        "error_rate": 0.1,
        "retry_after": 3.0,
    }
