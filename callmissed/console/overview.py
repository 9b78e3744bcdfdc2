"""The Overview's numbers: rollup rows over a time range turned into totals, time series, and
breakdowns by model, route, tag and key, first-token percentiles read from their histograms.

Pure: the rows come from queries.by_route_sql() / by_key_sql(); nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from callmissed.accounting.pricing import format_credits
from callmissed.errors import InvalidRequest
from callmissed.store.rollup import histogram_columns, percentile

__all__ = [
    "RANGES",
    "Range",
    "Totals",
    "build_overview",
    "describe_totals",
    "metrics_of",
    "parse_range",
]

_HISTOGRAM = histogram_columns()
_SUMMED = (
    "requests", "errors", "cancelled", "cost", "uncharged", "prompt_tokens", "completion_tokens",
    "reasoning_tokens", "cached_tokens", "ttfb_sum", "total_sum", *_HISTOGRAM,
)  # fmt: skip
_ZERO = (0.0,) * len(_SUMMED)
_HISTOGRAM_AT = _SUMMED.index(_HISTOGRAM[0])


@dataclass(frozen=True, slots=True)
class Range:
    """A time range the console shows: `points` buckets of `step` seconds (rollup rows of that
    period: one per point), the last one being the current (keys: `key_period`)."""

    name: str
    period: int
    step: int
    points: int
    key_period: int

    def since(self, now: float) -> int:
        return (int(now) // self.step - self.points + 1) * self.step

    def coarsened(self, retention_days: float) -> Range:
        """The range as retention leaves it: hourly rows older than the retention age are gone,
        so a range longer than it is read from the daily rows."""
        span = self.step * self.points
        if retention_days and self.period < 86400 and span > retention_days * 86400:
            return Range(self.name, 86400, 86400, max(1, span // 86400), 86400)
        return self


# Each reads about as many rollup rows as points times the models' routes in use: a few thousand
# at most, whatever the ledger holds (a wider GROUP BY sorts every row it reads).
RANGES = {
    "1h": Range("1h", 60, 60, 60, 60),
    "24h": Range("24h", 3600, 3600, 24, 3600),
    "7d": Range("7d", 21600, 21600, 28, 21600),
    "30d": Range("30d", 86400, 86400, 30, 86400),
    "90d": Range("90d", 86400, 86400, 90, 86400),
}


def parse_range(value: str | None) -> Range:
    range_ = RANGES.get(value or "24h")
    if range_ is None:
        raise InvalidRequest(f"'range' must be one of {', '.join(RANGES)}.", param="range")
    return range_


def metrics_of(row: Mapping[str, Any]) -> tuple[float, ...]:
    """A rollup row's sums, in _SUMMED order, to add up with Totals.add()."""
    return tuple([row[name] or 0 for name in _SUMMED])


class Totals:
    """Sums of rollup rows, and what they mean (rates, percentiles, USD). Rows are kept as they
    are added and summed column by column once, in C: a view adds each row to several."""

    __slots__ = ("_rows",)

    def __init__(self) -> None:
        self._rows: list[Sequence[float]] = []

    def add(self, metrics: Sequence[float]) -> None:
        self._rows.append(metrics)

    @property
    def values(self) -> tuple[float, ...]:
        return tuple(map(sum, zip(*self._rows, strict=True))) if self._rows else _ZERO

    def describe(self) -> dict[str, Any]:
        return describe_totals(dict(zip(_SUMMED, self.values, strict=True)))

    def point(self) -> tuple[int, int, float | None, float | None]:
        """What a breakdown's time series shows: requests, errors, cost, first-token p50."""
        values = self.values
        p50 = percentile(values[_HISTOGRAM_AT:], 0.5)
        return int(values[0]), int(values[1]), format_credits(int(values[3])), p50


def describe_totals(values: Mapping[str, float]) -> dict[str, Any]:
    """Rollup sums as the API shows them (money in USD, first-token times in ms)."""
    requests = int(values["requests"])
    histogram = [values[name] for name in _HISTOGRAM]
    timed = sum(histogram)
    return {
        "requests": requests,
        "errors": int(values["errors"]),
        "cancelled": int(values["cancelled"]),
        "error_rate": round(values["errors"] / requests, 4) if requests else 0.0,
        "cost": format_credits(int(values["cost"])),
        "uncharged": format_credits(int(values["uncharged"])),
        "prompt_tokens": int(values["prompt_tokens"]),
        "completion_tokens": int(values["completion_tokens"]),
        "reasoning_tokens": int(values["reasoning_tokens"]),
        "cached_tokens": int(values["cached_tokens"]),
        "ttfb_avg_ms": round(values["ttfb_sum"] / timed, 1) if timed else None,
        "ttfb_p50_ms": percentile(histogram, 0.5),
        "ttfb_p99_ms": percentile(histogram, 0.99),
        "total_avg_ms": round(values["total_sum"] / requests, 1) if requests else None,
    }


def build_overview(
    range_: Range,
    now: float,
    cells: Iterable[Sequence[Any]],
    keys: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The Overview for `range_` from queries.cells_sql() rows, as tuples (at, model, route,
    then the sums in ROUTE_METRICS order), and by_key_sql() rows."""
    since = range_.since(now)
    points = [since + index * range_.step for index in range(range_.points)]
    slot = {at: index for index, at in enumerate(points)}
    total = Totals()
    series = [Totals() for _ in points]
    models, routes = _Breakdown("model", len(points)), _Breakdown("route", len(points))
    for cell in cells:
        index = slot.get(cell[0])
        if index is None:
            continue  # a bucket from before the range's first point
        metrics = cell[3:]
        total.add(metrics)
        series[index].add(metrics)
        models.add(cell[1], index, metrics)
        routes.add(cell[2], index, metrics)
    route_list = routes.describe()
    timed = [route for route in route_list if route["route"] and route["ttfb_p50_ms"] is not None]
    return {
        "range": range_.name,
        "step": range_.step,
        "since": since,
        "until": since + range_.step * range_.points,
        "totals": total.describe(),
        "series": [{"at": at, **part.describe()} for at, part in zip(points, series, strict=True)],
        "models": models.describe(),
        "routes": route_list,
        "slowest_routes": sorted(
            timed, key=lambda route: (-(route["ttfb_p99_ms"] or 0), -(route["ttfb_p50_ms"] or 0))
        )[:5],
        "top_keys": [_key(row) for row in keys],
    }


class _Breakdown:
    """Totals per model (or route), and per point of the range for the busiest few."""

    _CHARTED = 8  # the busiest this many get a time series each
    _METRICS = ("requests", "errors", "cost", "ttfb_p50_ms")

    def __init__(self, label: str, points: int) -> None:
        self._label = label
        self._points = points
        self._whole: dict[str, Totals] = {}
        self._parts: dict[tuple[str, int], Totals] = {}

    def add(self, name: str, index: int, metrics: Sequence[float]) -> None:
        whole = self._whole.get(name) or self._whole.setdefault(name, Totals())
        whole.add(metrics)
        part = self._parts.get((name, index)) or self._parts.setdefault((name, index), Totals())
        part.add(metrics)

    def describe(self) -> list[dict[str, Any]]:
        entries = [{self._label: name, **whole.describe()} for name, whole in self._whole.items()]
        entries.sort(key=lambda entry: (-entry["requests"], entry[self._label]))
        empty = Totals().point()
        for entry in entries[: self._CHARTED]:
            parts = [self._parts.get((entry[self._label], index)) for index in range(self._points)]
            points = [part.point() if part else empty for part in parts]
            entry["series"] = {
                metric: [point[at] for point in points] for at, metric in enumerate(self._METRICS)
            }
        return entries


def _key(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "key_id": row["key_id"],
        "name": row["key_name"],
        "requests": int(row["requests"]),
        "errors": int(row["errors"]),
        "cost": format_credits(int(row["cost"])),
        "prompt_tokens": int(row["prompt_tokens"]),
        "completion_tokens": int(row["completion_tokens"]),
    }
