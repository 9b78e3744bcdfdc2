"""callmissed.health on its own, driven by a fake clock: breakers, cool-downs, the fastest order."""

from __future__ import annotations

from typing import Any

import pytest

from callmissed.errors import (
    RoutesResting,
    UpstreamError,
    UpstreamRejected,
    to_anthropic,
    to_openai,
)
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


def test_unavailable_says_every_route_is_resting_and_when_one_is_back(clock):
    health = _health(clock)
    rejected = UpstreamRejected("slow down", provider="p", upstream_status=429, retry_after=20)
    health.failed(A.route, rejected)
    for _ in range(3):
        health.failed(B.route, _failure())
    clock.now += 5
    error = health.unavailable(ORDERED, [A, B])
    assert isinstance(error, RoutesResting)
    assert (error.http_status, error.code) == (503, "routes_resting")
    assert error.retry_after == pytest.approx(15)
    assert error.headers() == [(b"retry-after", b"15")]
    assert "Every route of m is resting, so nothing was sent upstream" in error.message
    assert "p:a: its upstream asked for a pause (Retry-After)" in error.message
    assert "p:b: circuit breaker open after repeated failures" in error.message
    assert "the last failure (500) was 5 s ago" in error.message
    assert "slow down" not in error.message  # not the stale upstream text
    assert error.message.endswith("The first is tried again in 15 s.")


def test_routes_resting_is_a_503_in_both_dialects():
    error = RoutesResting("resting", retry_after=0.2)
    assert to_openai(error)[0] == 503 and to_openai(error)[1]["error"]["code"] == "routes_resting"
    assert to_anthropic(error)[0] == 503
    assert error.headers() == [(b"retry-after", b"1")]


def _exchange(one: Health, other: Health) -> tuple[list[Any], list[Any]]:
    """Wire two workers' Health together the way health_peers.py does; their outboxes."""
    sent: tuple[list[Any], list[Any]] = ([], [])
    one.subscribe(lambda event, urgent: sent[0].append(event))
    other.subscribe(lambda event, urgent: sent[1].append(event))
    return sent


def test_failures_at_two_workers_open_the_breaker_at_both(clock):
    one, other = _health(clock), _health(clock)
    to_other, to_one = _exchange(one, other)
    one.failed(A.route, _failure())
    other.failed(A.route, _failure())
    one.apply(to_one)
    other.apply(to_other)
    to_one.clear()
    to_other.clear()
    one.failed(A.route, _failure())  # the third failure in a row, counted over both
    assert one.get(A.route).state == OPEN
    other.apply(to_other)
    assert other.get(A.route).state == OPEN
    assert other.get(A.route).reopen_at == one.get(A.route).reopen_at == clock.now + 30
    assert other.order(ORDERED, [A, B]) == [B]
    assert other.get(A.route).error_rate == one.get(A.route).error_rate


def test_a_success_reported_late_does_not_close_a_breaker_opened_after_it(clock):
    one, other = _health(clock), _health(clock)
    to_other, _ = _exchange(one, other)
    one.succeeded(A.route, 0.1)  # held back in a batch ...
    late = list(to_other)
    clock.now += 1
    for _ in range(3):
        other.failed(A.route, _failure())
    other.apply(late)  # ... and delivered after the breaker opened
    assert other.get(A.route).state == OPEN
    assert other.get(A.route).ttfb == pytest.approx(0.1)


def test_successes_summed_by_another_worker_move_the_averages_as_one_by_one(clock):
    one, other = _health(clock), _health(clock)
    for health in (one, other):
        health.failed(A.route, _failure())
        health.succeeded(A.route, 0.4)
    for _ in range(5):
        one.succeeded(A.route, 0.1)
    other.apply([["oks", "p", "a", clock.now, 5, 0.1, 5]])
    assert other.get(A.route).error_rate == pytest.approx(one.get(A.route).error_rate)
    assert other.get(A.route).ttfb == pytest.approx(one.get(A.route).ttfb)


def test_a_probe_that_succeeds_closes_the_breaker_at_every_worker(clock):
    one, other = _health(clock), _health(clock)
    to_other, _ = _exchange(one, other)
    for _ in range(3):
        one.failed(A.route, _failure())
    other.apply(to_other)
    to_other.clear()
    clock.now += 31
    assert one.acquire(A.route)
    one.succeeded(A.route, 0.05)
    other.apply(to_other)
    assert other.get(A.route).state == CLOSED
    assert other.order(ORDERED, [A, B]) == [A, B]


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
