"""Per-route health: first-token time and error rate (EWMA), a circuit breaker, Retry-After.

Pure bookkeeping, no I/O and no tasks: failover.py asks for the order to try a model's routes in
and reports how each attempt went; /v1/models and /metrics read the state. Time comes from the
clock passed in, so tests can drive it. docs/resilience.md explains the parameters.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from callmissed.errors import UpstreamError, UpstreamOverloaded
from callmissed.routing import Target
from callmissed.settings import ModelSettings, Resilience, Route

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Health", "RouteHealth", "route_name"]

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
TTFB_ALPHA = 0.2  # weight of the newest first-token time
ERROR_ALPHA = 0.1  # weight of the newest outcome in the error rate
COOLDOWN_CAP = 300.0  # the longest an upstream's Retry-After keeps a route out of rotation


def route_name(route: Route) -> str:
    return f"{route.provider}:{route.upstream_model}"


@dataclass(slots=True)
class RouteHealth:
    name: str
    ttfb: float | None = None  # EWMA seconds from request to first token
    error_rate: float = 0.0  # EWMA of failed (1) and answered (0) attempts
    failures_in_row: int = 0
    state: str = CLOSED
    reopen_at: float = 0.0  # an open breaker lets one probe through after this
    probing: bool = False  # a half-open probe is in flight
    cooldown_until: float = 0.0  # the upstream asked us to wait (Retry-After)
    last_failure: UpstreamError | None = None
    last_tried: float = -math.inf

    def usable(self, now: float) -> bool:
        if now < self.cooldown_until:
            return False
        if self.state == OPEN:
            return now >= self.reopen_at
        return not (self.state == HALF_OPEN and self.probing)

    def score(self) -> float:
        """Expected seconds to a first token: the mean, stretched by the odds of failing.

        A route without a measurement ranks after every measured one (the listed order stands
        among them): exploration, not optimism, is how it gets measured.
        """
        if self.ttfb is None:
            return math.inf
        return self.ttfb / (1.0 - min(self.error_rate, 0.9))

    def available_at(self) -> float:
        return max(self.cooldown_until, self.reopen_at if self.state == OPEN else 0.0)


class Health:
    """Every route's RouteHealth, created on first use."""

    def __init__(self, policy: Resilience, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._routes: dict[Route, RouteHealth] = {}
        self._requests: dict[str, int] = {}  # per "fastest" model, to pace exploration

    def get(self, route: Route) -> RouteHealth:
        health = self._routes.get(route)
        if health is None:
            health = self._routes[route] = RouteHealth(route_name(route))
        return health

    def all(self) -> Iterable[RouteHealth]:
        return self._routes.values()

    def order(self, model: ModelSettings, targets: list[Target]) -> list[Target]:
        """The targets worth trying, best first; routes that are open or cooling are left out."""
        now = self._clock()
        usable = [target for target in targets if self.get(target.route).usable(now)]
        if model.strategy == "fastest" and len(usable) > 1:
            return self._fastest(model.name, usable)
        return usable

    def _fastest(self, model: str, targets: list[Target]) -> list[Target]:
        count = self._requests[model] = self._requests.get(model, 0) + 1
        ranked = sorted(targets, key=lambda target: self.get(target.route).score())
        every = self._policy.explore_every
        if every and count % every == 0:
            # A little exploration: the route tried longest ago goes first, so a route that was
            # slow once (or never tried) gets measured again instead of being shunned forever.
            stalest = min(ranked, key=lambda target: self.get(target.route).last_tried)
            ranked.remove(stalest)
            ranked.insert(0, stalest)
        return ranked

    def acquire(self, route: Route) -> bool:
        """Claim the route for one attempt (the probe, if its breaker is open); False: unusable."""
        health = self.get(route)
        now = self._clock()
        if not health.usable(now):
            return False
        if health.state != CLOSED:
            health.state = HALF_OPEN
            health.probing = True
        health.last_tried = now
        return True

    def succeeded(self, route: Route, ttfb: float | None) -> None:
        """The route answered (ttfb None: it answered with the client's own error)."""
        health = self.get(route)
        if ttfb is not None:
            health.ttfb = ttfb if health.ttfb is None else _ewma(health.ttfb, ttfb, TTFB_ALPHA)
        health.error_rate = _ewma(health.error_rate, 0.0, ERROR_ALPHA)
        health.failures_in_row = 0
        health.state = CLOSED
        health.probing = False

    def failed(self, route: Route, error: UpstreamError) -> None:
        health = self.get(route)
        now = self._clock()
        health.error_rate = _ewma(health.error_rate, 1.0, ERROR_ALPHA)
        health.failures_in_row += 1
        health.last_failure = error
        health.probing = False
        if error.retry_after:
            health.cooldown_until = now + min(error.retry_after, COOLDOWN_CAP)
        if health.state == HALF_OPEN or health.failures_in_row >= self._policy.breaker_failures:
            health.state = OPEN
            health.reopen_at = now + self._policy.breaker_open

    def abandoned(self, route: Route, waited: float) -> None:
        """An attempt we cancelled (a hedge's loser, a client gone) before its first token.

        Its wait is a lower bound of its first-token time: it may raise the average, never lower it.
        """
        health = self.get(route)
        health.probing = False
        if health.ttfb is None or waited > health.ttfb:
            current = waited if health.ttfb is None else health.ttfb
            health.ttfb = _ewma(current, waited, TTFB_ALPHA)

    def unavailable(self, model: ModelSettings, targets: list[Target]) -> UpstreamError:
        """The error for a request none of whose routes may be tried right now.

        It repeats the failure that took the soonest-back route out, so the client sees the same
        status it would have seen from the upstream, with the time until the route is tried again.
        """
        now = self._clock()
        soonest = min((self.get(target.route) for target in targets), key=RouteHealth.available_at)
        wait = max(soonest.available_at() - now, 0.0)
        note = f"{soonest.name} is resting after failures; it is tried again in {wait:.0f} s"
        last = soonest.last_failure
        if last is None:
            return UpstreamOverloaded(f"{model.name}: {note}.", retry_after=wait)
        error = copy.copy(last)
        error.message = f"{last.message} ({note})"
        error.retry_after = wait or None
        return error

    def describe(self, route: Route) -> dict[str, Any]:
        """One route's health for /v1/models."""
        health = self.get(route)
        entry: dict[str, Any] = {
            "route": health.name,
            "state": health.state,
            "ttfb_ms": None if health.ttfb is None else round(health.ttfb * 1000, 1),
            "error_rate": round(health.error_rate, 3),
        }
        cooling = health.cooldown_until - self._clock()
        if cooling > 0:
            entry["retry_after"] = round(cooling, 1)
        return entry


def _ewma(average: float, sample: float, alpha: float) -> float:
    return average + alpha * (sample - average)
