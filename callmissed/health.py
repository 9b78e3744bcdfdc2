"""Per-route health: first-token time and error rate (EWMA), a circuit breaker, Retry-After.

Pure bookkeeping, no I/O and no tasks: failover.py asks for the order to try a model's routes in
and reports how each attempt went; /v1/models and /metrics read the state. Each outcome is also
handed to a subscriber as a small event, and events from the server's other workers are applied
with `apply()` (health_peers.py carries them), so every worker sees one state per route. Time
comes from the clock passed in (CLOCK_MONOTONIC: one clock for every process on the machine).
docs/resilience.md explains the parameters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from callmissed import failures
from callmissed.errors import RoutesResting, UpstreamError
from callmissed.routing import Target
from callmissed.settings import ModelSettings, Resilience, Route

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "Event", "Health", "RouteHealth", "route_name"]

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
TTFB_ALPHA = 0.2  # weight of the newest first-token time
ERROR_ALPHA = 0.1  # weight of the newest outcome in the error rate
COOLDOWN_CAP = 300.0  # the longest an upstream's Retry-After keeps a route out of rotation


# One outcome, as JSON for the other workers: [kind, provider, upstream model, when, *details]:
# ["ok", p, m, at, ttfb | None], ["failed", p, m, at, retry_after | None, outcome, opened],
# ["abandoned", p, m, at, waited]; and from health_peers.py, successes summed per route:
# ["oks", p, m, latest at, count, mean ttfb of the measured ones, how many were measured].
Event = list[Any]
# Hears each local outcome; `urgent` when it changed a breaker (the others should know at once).
Listener = Callable[[Event, bool], None]


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
    last_outcome: str = ""  # how the latest failure went: a status, "timeout", "broken"
    failed_at: float = -math.inf
    changed_at: float = -math.inf  # when the breaker last opened or closed
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
        self._listener: Listener | None = None

    def subscribe(self, listener: Listener) -> None:
        """Hand every local outcome to `listener` from now on (health_peers.py)."""
        self._listener = listener

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
        now = self._clock()
        was = health.state
        self._succeeded(health, ttfb, now)
        if self._listener is not None:
            self._listener(["ok", *route, now, ttfb], was != CLOSED)

    def failed(self, route: Route, error: UpstreamError) -> None:
        """An attempt failed with `error`; the failure table (failures.py) says how it counts:
        the client's own bad request is the route answering."""
        if failures.rule(error).breaker is failures.Breaker.SUCCESS:
            self.succeeded(route, None)
            return
        health = self.get(route)
        now = self._clock()
        outcome = failures.outcome(error)
        self._failed(health, now, error.retry_after, outcome, opened=False)
        opened = health.state == OPEN and health.changed_at == now  # it opened, or again
        if self._listener is not None:
            self._listener(["failed", *route, now, error.retry_after, outcome, opened], opened)

    def abandoned(self, route: Route, waited: float) -> None:
        """An attempt we cancelled (a hedge's loser, a client gone) before its first token.

        Its wait is a lower bound of its first-token time: it may raise the average, never lower it.
        """
        health = self.get(route)
        health.probing = False
        _raise_ttfb(health, waited)
        if self._listener is not None:
            self._listener(["abandoned", *route, self._clock(), waited], False)

    def apply(self, events: list[Event]) -> None:
        """Outcomes at the server's other workers, as their listeners heard them."""
        for kind, provider, model, at, *details in events:
            health = self.get(Route(provider, model))
            if kind == "ok":
                self._succeeded(health, details[0], at)
            elif kind == "oks":
                count, ttfb, measured = details
                self._succeeded_many(health, count, ttfb if measured else None, measured, at)
            elif kind == "failed":
                retry_after, outcome, opened = details
                self._failed(health, at, retry_after, outcome, opened)
            elif kind == "abandoned":
                _raise_ttfb(health, details[0])

    def snapshot(self) -> list[list[Any]]:
        """Every route's state as JSON, for a worker just started (restore())."""
        return [[*route, *_fields(h)] for route, h in self._routes.items()]

    def restore(self, state: list[list[Any]]) -> None:
        """Take over another worker's snapshot() for the routes this one has not seen yet."""
        for provider, model, *fields in state:
            if Route(provider, model) in self._routes:
                continue
            health = self.get(Route(provider, model))
            health.ttfb, health.error_rate, health.failures_in_row, state_ = fields[:4]
            health.reopen_at, health.cooldown_until, health.last_outcome = fields[4:7]
            health.failed_at, health.changed_at = _time(fields[7]), _time(fields[8])
            # Half-open: the sender's probe is in flight. Here the route is open, and may be
            # probed once its wait is over.
            health.state = OPEN if state_ == HALF_OPEN else state_

    def _succeeded(self, health: RouteHealth, ttfb: float | None, at: float) -> None:
        if ttfb is not None:
            health.ttfb = ttfb if health.ttfb is None else _ewma(health.ttfb, ttfb, TTFB_ALPHA)
        health.error_rate = _ewma(health.error_rate, 0.0, ERROR_ALPHA)
        self._succeeded_state(health, at)

    def _succeeded_state(self, health: RouteHealth, at: float) -> None:
        if at >= health.failed_at:  # a success another worker reports late changes nothing newer
            health.failures_in_row = 0
        if health.state != CLOSED and at >= health.changed_at:
            health.state = CLOSED
            health.changed_at = at
        health.probing = False

    def _succeeded_many(
        self, health: RouteHealth, count: int, ttfb: float | None, measured: int, at: float
    ) -> None:
        """`count` successes at once: each average moves as far as that many samples would
        move it (their mean standing for each of them)."""
        if ttfb is not None:
            weight = 1 - (1 - TTFB_ALPHA) ** measured
            health.ttfb = (
                ttfb if health.ttfb is None else health.ttfb + weight * (ttfb - health.ttfb)
            )
        health.error_rate *= (1 - ERROR_ALPHA) ** count
        self._succeeded_state(health, at)

    def _failed(
        self, health: RouteHealth, at: float, retry_after: float | None, outcome: str, opened: bool
    ) -> None:
        health.error_rate = _ewma(health.error_rate, 1.0, ERROR_ALPHA)
        health.failures_in_row += 1
        health.last_outcome = outcome
        health.failed_at = max(health.failed_at, at)
        health.probing = False
        if retry_after:
            health.cooldown_until = max(health.cooldown_until, at + min(retry_after, COOLDOWN_CAP))
        breaks = (
            health.state == HALF_OPEN or health.failures_in_row >= self._policy.breaker_failures
        )
        if opened or breaks:
            health.state = OPEN
            health.reopen_at = max(health.reopen_at, at + self._policy.breaker_open)
            health.changed_at = max(health.changed_at, at)

    def unavailable(self, model: ModelSettings, targets: list[Target]) -> RoutesResting:
        """The error for a request none of whose routes may be tried right now: it says so, why,
        and when the first of them is tried again (its Retry-After)."""
        now = self._clock()
        routes = [self.get(target.route) for target in targets]
        soonest = min(routes, key=RouteHealth.available_at)
        wait = max(soonest.available_at() - now, 0.0)
        reasons = "; ".join(_resting(health, now) for health in routes)
        return RoutesResting(
            f"Every route of {model.name} is resting, so nothing was sent upstream ({reasons}). "
            f"The first is tried again in {math.ceil(wait)} s.",
            retry_after=wait,
        )

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


def _fields(h: RouteHealth) -> list[Any]:
    """snapshot()'s fields of one route, in the order restore() reads them."""
    times = (_json_time(h.failed_at), _json_time(h.changed_at))
    state = (h.ttfb, h.error_rate, h.failures_in_row, h.state, h.reopen_at, h.cooldown_until)
    return [*state, h.last_outcome, *times]


def _json_time(at: float) -> float | None:
    return None if at == -math.inf else at  # JSON has no infinity


def _time(at: float | None) -> float:
    return -math.inf if at is None else at


def _raise_ttfb(health: RouteHealth, waited: float) -> None:
    if health.ttfb is None or waited > health.ttfb:
        current = waited if health.ttfb is None else health.ttfb
        health.ttfb = _ewma(current, waited, TTFB_ALPHA)


def _resting(health: RouteHealth, now: float) -> str:
    """Why one route may not be tried now, for RoutesResting's message."""
    ago = f"{now - health.failed_at:.0f} s ago" if health.failed_at > -math.inf else "earlier"
    last = f"the last failure ({health.last_outcome or 'unknown'}) was {ago}"
    if now < health.cooldown_until:
        return f"{health.name}: its upstream asked for a pause (Retry-After); {last}"
    if health.state == OPEN:
        return f"{health.name}: circuit breaker open after repeated failures; {last}"
    if health.state == HALF_OPEN:
        return f"{health.name}: a probe request is testing it; {last}"
    return f"{health.name}: not tried"
