"""Counters and a first-token histogram, rendered as Prometheus text for `GET /metrics`.

Recording is a dict update (no locks: one event loop per worker). Each worker process keeps its
own numbers; the worker that answers a scrape asks the others for theirs (`snapshot()`, through
peers.py) and `render()` adds them up by name and labels, so with `--workers N` a scrape counts
the whole server, requests in flight included. Route health (breaker state, EWMA first-token
time, error rate) is read from health.py when rendering: that part is the answering worker's own.
Label values are bounded: models (and their routes) outside the catalog/config get their own
series up to `max_other` of them per worker; past that they are counted as model="other" and
route="<provider>:other", since clients may name any vendor/model id (docs/security.md).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from callmissed.health import CLOSED, HALF_OPEN, OPEN, RouteHealth

__all__ = ["BUCKETS", "OTHER", "Metrics"]

# name -> (type, help, label names)
_SCHEMA: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "callmissed_requests_total": (
        "counter",
        "Chat requests by model and outcome (ok, error, cancelled).",
        ("model", "outcome"),
    ),
    "callmissed_attempts_total": (
        "counter",
        "Upstream attempts by route and outcome (ok, abandoned, timeout, broken, a status).",
        ("route", "outcome"),
    ),
    "callmissed_fallbacks_total": (
        "counter",
        "Requests answered after at least one failed attempt.",
        ("model",),
    ),
    "callmissed_hedges_total": (
        "counter",
        "Hedged requests by the attempt that won (first or hedge).",
        ("model", "winner"),
    ),
    "callmissed_stream_errors_total": (
        "counter",
        "Streams that broke after their first token, by route.",
        ("route",),
    ),
    "callmissed_keepalive_streams_total": (
        "counter",
        "Streams committed early (keep-alive comments) while waiting for a first token.",
        (),
    ),
    "callmissed_ttfb_seconds": (
        "histogram",
        "Seconds from sending to an upstream to its first token, by route.",
        ("route",),
    ),
}
BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_STATES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
OTHER = "other"
# Per metric: the positions of its labels whose values clients choose (a model id, a route).
_CHOSEN = {
    name: tuple((index, label) for index, label in enumerate(names) if label in ("model", "route"))
    for name, (_, _, names) in _SCHEMA.items()
}


class Metrics:
    def __init__(
        self,
        known_models: Collection[str] = (),
        known_routes: Collection[str] = (),
        max_other: int | None = None,
    ) -> None:
        """`known_*`: the configured models and their routes ("provider:model"), always their
        own series; `max_other`: how many others may be too (None: no bound)."""
        self._counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self._histograms: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        self._known = {"model": frozenset(known_models), "route": frozenset(known_routes)}
        self._others: dict[str, set[str]] = {"model": set(), "route": set()}
        self._max_other = max_other

    def inc(self, name: str, *labels: str, value: float = 1.0) -> None:
        key = (name, labels)
        count = self._counters.get(key)
        if count is None:  # a new series, or one folded into "other"
            key = self._bounded(name, labels)
            count = self._counters.get(key, 0.0)
        self._counters[key] = count + value

    def observe(self, name: str, value: float, *labels: str) -> None:
        """Add a sample; the row is [per-bucket counts..., +Inf count, sum]."""
        row = self._histograms.get((name, labels))
        if row is None:
            key = self._bounded(name, labels)
            row = self._histograms.get(key)
            if row is None:
                row = self._histograms[key] = [0.0] * (len(BUCKETS) + 2)
        row[bisect.bisect_left(BUCKETS, value)] += 1
        row[-1] += value

    def _bounded(self, name: str, labels: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """The series `labels` count in: their own, or "other" once too many exist."""
        chosen = _CHOSEN.get(name)
        if not chosen or self._max_other is None:
            return name, labels
        values = list(labels)
        for index, label in chosen:
            values[index] = self._label(label, values[index])
        return name, tuple(values)

    def _label(self, label: str, value: str) -> str:
        others = self._others[label]
        if value in self._known[label] or value in others:
            return value
        if self._max_other is None or len(others) < self._max_other:
            others.add(value)
            return value
        return f"{value.partition(':')[0]}:{OTHER}" if label == "route" else OTHER

    def tracks_route(self, route: str) -> bool:
        """Whether `route` has its own series (its health gauges are rendered)."""
        return (
            self._max_other is None
            or route in self._known["route"]
            or route in self._others["route"]
        )

    def value(self, name: str, *labels: str) -> float:
        return self._counters.get((name, labels), 0.0)

    def snapshot(self, inflight: int) -> dict[str, Any]:
        """This worker's numbers as JSON, for the worker that answers a scrape."""
        return {
            "counters": [[name, labels, value] for (name, labels), value in self._counters.items()],
            "histograms": [[name, labels, row] for (name, labels), row in self._histograms.items()],
            "inflight": inflight,
        }

    def render(
        self,
        routes: Iterable[RouteHealth],
        inflight: int,
        peers: Sequence[Mapping[str, Any]] = (),
        unanswered: int = 0,
    ) -> str:
        """Prometheus text: this worker's numbers plus the `peers`' snapshots; `unanswered`
        counts the live workers whose numbers are missing (they did not answer in time)."""
        counters = dict(self._counters)
        histograms = {key: list(row) for key, row in self._histograms.items()}
        for snapshot in peers:
            for name, labels, value in snapshot["counters"]:
                key = (name, tuple(labels))
                counters[key] = counters.get(key, 0.0) + value
            for name, labels, row in snapshot["histograms"]:
                mine = histograms.setdefault((name, tuple(labels)), [0.0] * len(row))
                histograms[(name, tuple(labels))] = [a + b for a, b in zip(mine, row, strict=True)]
            inflight += snapshot["inflight"]
        lines: list[str] = []
        for name, (kind, help_text, label_names) in _SCHEMA.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            if kind == "counter":
                lines += _counter_lines(counters, name, label_names)
            else:
                lines += _histogram_lines(histograms, name, label_names)
        lines += [
            "# HELP callmissed_workers Worker processes whose numbers this scrape adds up.",
            "# TYPE callmissed_workers gauge",
            f"callmissed_workers {1 + len(peers)}",
            "# HELP callmissed_workers_unanswered Live workers left out of this scrape: they did"
            " not answer within 200 ms.",
            "# TYPE callmissed_workers_unanswered gauge",
            f"callmissed_workers_unanswered {unanswered}",
        ]
        tracked = [health for health in routes if self.tracks_route(health.name)]
        lines += _gauge_lines(tracked, inflight)
        return "\n".join(lines) + "\n"


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _counter_lines(
    counters: dict[tuple[str, tuple[str, ...]], float], name: str, label_names: tuple[str, ...]
) -> list[str]:
    return [
        f"{name}{_labels(label_names, labels)} {value:g}"
        for (metric, labels), value in sorted(counters.items())
        if metric == name
    ]


def _histogram_lines(
    histograms: dict[tuple[str, tuple[str, ...]], list[float]],
    name: str,
    label_names: tuple[str, ...],
) -> list[str]:
    lines = []
    for (metric, labels), row in sorted(histograms.items()):
        if metric != name:
            continue
        cumulative = 0.0
        for bound, count in zip([*BUCKETS, "+Inf"], row[:-1], strict=True):
            cumulative += count
            le = f'le="{bound}"'
            lines.append(f"{name}_bucket{_labels(label_names, labels, le)} {cumulative:g}")
        lines.append(f"{name}_sum{_labels(label_names, labels)} {row[-1]:g}")
        lines.append(f"{name}_count{_labels(label_names, labels)} {cumulative:g}")
    return lines


def _gauge_lines(routes: Iterable[RouteHealth], inflight: int) -> list[str]:
    lines = [
        "# HELP callmissed_inflight_requests Chat requests being served right now.",
        "# TYPE callmissed_inflight_requests gauge",
        f"callmissed_inflight_requests {inflight}",
    ]
    rows = sorted(routes, key=lambda health: health.name)
    for name, help_text, read in _ROUTE_GAUGES:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for health in rows:
            value = read(health)
            if value is not None:
                lines.append(f'{name}{{route="{_escape(health.name)}"}} {value:g}')
    return lines


_ROUTE_GAUGES: tuple[tuple[str, str, Callable[[RouteHealth], float | None]], ...] = (
    (
        "callmissed_route_breaker_state",
        "Breaker state: 0 closed, 1 half-open, 2 open.",
        lambda health: _STATES[health.state],
    ),
    (
        "callmissed_route_ttfb_ewma_seconds",
        "EWMA of the route's first-token time.",
        lambda health: health.ttfb,
    ),
    (
        "callmissed_route_error_rate",
        "EWMA of the route's attempt failures (0 to 1).",
        lambda health: health.error_rate,
    ),
)
