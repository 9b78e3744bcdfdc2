"""Route health as the whole server sees it: every worker's view, asked through peers.py.

Each worker answers `route_health` with its routes as health.py describes them (breaker state,
first-token EWMA, error rate, a Retry-After wait) and its requests in flight per route
(failover.py). Whether health is kept per worker or shared, the merge reads the same: the
worst breaker state, the mean of the averages, the sum of the requests in flight, and each
worker's own view beside it, so a worker that disagrees shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from callmissed.gateway import Gateway
from callmissed.health import CLOSED, HALF_OPEN, OPEN
from callmissed.peers import Peers
from callmissed.settings import Route

__all__ = ["OP", "fleet_health", "worker_health"]

OP = "route_health"
_SEVERITY = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
_PER_WORKER = ("worker", "state", "ttfb_ms", "error_rate", "inflight")


def worker_health(gateway: Gateway) -> dict[str, Any]:
    """This worker's view: its routes' health and its requests in flight, per route."""
    health = gateway.health
    routes = [health.describe(Route.parse(route.name)) for route in list(health.all())]
    return {
        "worker": os.getpid(),
        "routes": routes,
        "inflight": gateway.failover.inflight_by_route(),
        "inflight_total": gateway.failover.inflight,
    }


async def fleet_health(gateway: Gateway, peers: Peers) -> dict[str, Any]:
    """Every worker's view (those that answer within peers' bound) and their merge by route."""
    answers = await peers.ask(OP)
    views = [worker_health(gateway), *answers.values]
    return {
        "workers": len(views),
        "workers_unanswered": answers.skipped,
        "inflight": sum(view["inflight_total"] for view in views),
        "routes": merge(views),
    }


def merge(views: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per route across the workers' views, sorted by route."""
    by_route: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        seen = set()
        for entry in view["routes"]:
            seen.add(entry["route"])
            inflight = view["inflight"].get(entry["route"], 0)
            by_route.setdefault(entry["route"], []).append(
                {**entry, "worker": view["worker"], "inflight": inflight}
            )
        for route, inflight in view["inflight"].items():
            if route not in seen:  # in flight on a route this worker has no health for yet
                by_route.setdefault(route, []).append(
                    {"route": route, "state": CLOSED, "ttfb_ms": None, "error_rate": 0.0,
                     "worker": view["worker"], "inflight": inflight}
                )  # fmt: skip
    return [_merged(route, entries) for route, entries in sorted(by_route.items())]


def _merged(route: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    timed = [entry["ttfb_ms"] for entry in entries if entry["ttfb_ms"] is not None]
    waits = [entry["retry_after"] for entry in entries if entry.get("retry_after")]
    state = max((entry["state"] for entry in entries), key=lambda name: _SEVERITY.get(name, 0))
    merged: dict[str, Any] = {
        "route": route,
        "state": state,
        "ttfb_ms": round(sum(timed) / len(timed), 1) if timed else None,
        "error_rate": round(sum(entry["error_rate"] for entry in entries) / len(entries), 3),
        "inflight": sum(entry["inflight"] for entry in entries),
        "workers": [{name: entry.get(name) for name in _PER_WORKER} for entry in entries],
    }
    if waits:
        merged["retry_after"] = max(waits)
    return merged
