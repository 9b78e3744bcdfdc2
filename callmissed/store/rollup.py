"""Usage rollups: a settling batch summed per minute, hour and day, written with its ledger rows.

The console's charts and totals read these (docs/console.md), never the ledger itself, so a
view costs the same at 5 million ledger rows as at 50. Every row settled adds to a bucket of
`usage_by_route` (by model and route) and of `usage_by_key` per period, once untagged (tag '')
and once per tag, in the same transaction as the ledger row: exact, whatever order rows settle
in, and kept when retention deletes old ledger rows (console/retention.py). A request no route
answered counts against its last attempt's route. First-token times are kept as a histogram
(TTFB_BOUNDS_MS), which sums across buckets, so percentiles can be read back.
"""

from __future__ import annotations

import bisect
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from callmissed.store.base import LedgerEntry

__all__ = [
    "CANCELLED_STATUS",
    "KEY_COLUMNS",
    "KEY_METRICS",
    "PERIODS",
    "ROUTE_COLUMNS",
    "ROUTE_METRICS",
    "TTFB_BOUNDS_MS",
    "histogram_columns",
    "is_error",
    "percentile",
    "rollup",
    "upsert_sql",
    "write_postgres",
    "write_sqlite",
]

PERIODS = (60, 3600, 21600, 86400)  # seconds: minute, hour, 6-hour and day buckets
# Upper bounds (ms) of the first-token histogram's buckets; the last bucket has none.
TTFB_BOUNDS_MS = (
    1, 2.5, 5, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 650, 800, 1000, 1300, 1600, 2000,
    2500, 3000, 4000, 5000, 7500, 10000, 20000,
)  # fmt: skip
CANCELLED_STATUS = 499  # the client went away: neither an answer nor a failure


def histogram_columns() -> list[str]:
    return [f"h{index:02d}" for index in range(len(TTFB_BOUNDS_MS) + 1)]


ROUTE_METRICS = (
    "requests", "errors", "cancelled", "cost", "uncharged", "prompt_tokens",
    "completion_tokens", "reasoning_tokens", "cached_tokens", "ttfb_sum", "total_sum",
    *histogram_columns(),
)  # fmt: skip
ROUTE_COLUMNS = ("period", "bucket", "tag", "model", "route", *ROUTE_METRICS)
KEY_METRICS = ("requests", "errors", "cost", "prompt_tokens", "completion_tokens")
KEY_COLUMNS = ("period", "bucket", "tag", "key_id", *KEY_METRICS)
_ROUTE_KEY = ("period", "tag", "bucket", "model", "route")
_KEY_KEY = ("period", "tag", "bucket", "key_id")
_HISTOGRAM_AT = ROUTE_METRICS.index("h00")
_UNTAGGED = ("",)


def is_error(status: int) -> bool:
    """Whether a ledger status counts as a failed request (a client that left does not)."""
    return status >= 400 and status != CANCELLED_STATUS


def rollup(
    rows: Iterable[tuple[LedgerEntry, int]],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The usage_by_route and usage_by_key rows (in ROUTE_COLUMNS / KEY_COLUMNS order) that
    settling `rows` (each entry with what it was charged) adds, summed so that each bucket
    appears once, sorted by primary key (PostgreSQL then locks them in one order).

    Written out rather than looped over columns: it runs for every settled row (~1 us each)."""
    routes: dict[tuple[Any, ...], list[float]] = {}
    keys: dict[tuple[Any, ...], list[int]] = {}
    for entry, charged in rows:
        route = f"{entry.route}:{entry.upstream_model}" if entry.route else _failed_on(entry)
        minute = int(entry.created_at // 60 * 60)
        status = entry.status
        error = 1 if status >= 400 and status != CANCELLED_STATUS else 0
        ttfb = entry.ttfb_ms
        for tag in ("", *entry.tags) if entry.tags else _UNTAGGED:
            sums = routes.get((tag, minute, entry.model, route))
            if sums is None:
                sums = routes[(tag, minute, entry.model, route)] = [0] * len(ROUTE_METRICS)
            sums[0] += 1
            sums[1] += error
            sums[2] += status == CANCELLED_STATUS
            sums[3] += charged
            sums[4] += entry.cost - charged
            sums[5] += entry.prompt_tokens
            sums[6] += entry.completion_tokens
            sums[7] += entry.reasoning_tokens
            sums[8] += entry.cached_tokens
            sums[10] += entry.total_ms
            if ttfb is not None:
                sums[9] += ttfb
                sums[_HISTOGRAM_AT + bisect.bisect_right(TTFB_BOUNDS_MS, ttfb)] += 1
            totals = keys.get((tag, minute, entry.key_id))
            if totals is None:
                totals = keys[(tag, minute, entry.key_id)] = [0] * len(KEY_METRICS)
            totals[0] += 1
            totals[1] += error
            totals[2] += charged
            totals[3] += entry.prompt_tokens
            totals[4] += entry.completion_tokens
    return _periods(routes), _periods(keys)


def _failed_on(entry: LedgerEntry) -> str:
    """A request no route answered counts against the route of its last attempt, if any."""
    return str(entry.attempts[-1]["route"]) if entry.attempts else ""


def _add(sums: dict[tuple[Any, ...], Any], group: tuple[Any, ...], values: Sequence[Any]) -> None:
    total = sums.get(group)
    if total is None:
        sums[group] = list(values)
    else:
        for index, value in enumerate(values):
            total[index] += value


def _periods(minutes: dict[tuple[Any, ...], Any]) -> list[tuple[Any, ...]]:
    """Rows for every period from the per-minute sums (group = tag, minute, *dimensions)."""
    rows: dict[tuple[Any, ...], Any] = {}
    for (tag, minute, *dimensions), values in minutes.items():
        for period in PERIODS:
            _add(rows, (period, tag, minute // period * period, *dimensions), values)
    return [
        (period, bucket, tag, *dimensions, *values)
        for (period, tag, bucket, *dimensions), values in sorted(rows.items())
    ]


def upsert_sql(table: str, columns: Sequence[str], source: str) -> str:
    """INSERT … ON CONFLICT that adds to a rollup row's metrics; `source` is `VALUES (?, …)`
    (SQLite) or a SELECT (PostgreSQL)."""
    key = _ROUTE_KEY if table == "usage_by_route" else _KEY_KEY
    metrics = [name for name in columns if name not in key]
    updates = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in metrics)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) {source}"
        f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


def percentile(histogram: Sequence[float], fraction: float) -> float | None:
    """The `fraction` quantile (0-1) of a first-token histogram, in ms, interpolated within its
    bucket; the open-ended last bucket reads as its lower bound. None if it is empty."""
    total = sum(histogram)
    if total <= 0:
        return None
    rank = fraction * total
    seen = 0.0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = TTFB_BOUNDS_MS[index - 1] if index else 0.0
            if index == len(TTFB_BOUNDS_MS):
                return float(low)
            high = TTFB_BOUNDS_MS[index]
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    return float(TTFB_BOUNDS_MS[-1])


# How each backend adds a batch's rollups and tags, inside the transaction that settles it.
_TAGS_SQLITE = "INSERT OR IGNORE INTO ledger_tags (tag, created_at, request_id) VALUES (?, ?, ?)"
_ROUTES_SQLITE = upsert_sql(
    "usage_by_route", ROUTE_COLUMNS, f"VALUES ({', '.join('?' * len(ROUTE_COLUMNS))})"
)
_KEYS_SQLITE = upsert_sql(
    "usage_by_key", KEY_COLUMNS, f"VALUES ({', '.join('?' * len(KEY_COLUMNS))})"
)
# Last in PostgreSQL's settling transaction: rows every key shares are locked until its commit,
# in primary-key order (so two settlements never deadlock on them).
_POSTGRES = f"""
WITH by_route AS ({upsert_sql(
    "usage_by_route", ROUTE_COLUMNS, "SELECT * FROM json_populate_recordset(NULL::usage_by_route,"
    " $1::json) ORDER BY period, tag, bucket, model, route")}
), by_key AS ({upsert_sql(
    "usage_by_key", KEY_COLUMNS, "SELECT * FROM json_populate_recordset(NULL::usage_by_key,"
    " $2::json) ORDER BY period, tag, bucket, key_id")}
)
INSERT INTO ledger_tags (tag, created_at, request_id)
SELECT * FROM unnest($3::text[], $4::float8[], $5::text[])
    ON CONFLICT DO NOTHING
"""  # fmt: skip


def write_sqlite(db: sqlite3.Connection, rows: list[tuple[LedgerEntry, int]]) -> None:
    """Add settled `rows` (entry, charged) to the rollups and index their tags (SQLite)."""
    by_route, by_key = rollup(rows)
    db.executemany(_ROUTES_SQLITE, by_route)
    db.executemany(_KEYS_SQLITE, by_key)
    tagged = _tagged(rows)
    if tagged:
        db.executemany(_TAGS_SQLITE, tagged)


async def write_postgres(db: Any, rows: list[tuple[LedgerEntry, int]]) -> None:
    """The same on an asyncpg connection, in one statement (a batch's rows go as JSON)."""
    if not rows:
        return
    by_route, by_key = rollup(rows)
    tagged = _tagged(rows)
    await db.execute(
        _POSTGRES,
        orjson.dumps([dict(zip(ROUTE_COLUMNS, row, strict=True)) for row in by_route]).decode(),
        orjson.dumps([dict(zip(KEY_COLUMNS, row, strict=True)) for row in by_key]).decode(),
        [tag for tag, _, _ in tagged], [at for _, at, _ in tagged], [i for _, _, i in tagged],
    )  # fmt: skip


def _tagged(rows: list[tuple[LedgerEntry, int]]) -> list[tuple[str, float, str]]:
    return [(tag, e.created_at, e.request_id) for e, _ in rows if e.tags for tag in e.tags]
