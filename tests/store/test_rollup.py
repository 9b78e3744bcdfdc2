"""Usage rollups: summed per minute, hour and day as rows settle, exactly once, on every backend;
percentiles read back from their first-token histograms; the migration's backfill agrees."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from callmissed.store import LedgerEntry, Store
from callmissed.store.rollup import (
    KEY_COLUMNS,
    PERIODS,
    ROUTE_COLUMNS,
    TTFB_BOUNDS_MS,
    histogram_columns,
    percentile,
    rollup,
)
from tests.accounting import query_url
from tests.store.test_store_contract import entry, run, url  # noqa: F401 - the url fixture

MIGRATIONS = Path(__file__).resolve().parents[2] / "callmissed" / "store" / "migrations"
NOON = 1_800_000_000 // 86400 * 86400 + 12 * 3600  # a UTC noon, so buckets are easy to name


def _at(entry_: LedgerEntry, seconds: float, **changes: object) -> LedgerEntry:
    return dataclasses.replace(entry_, created_at=NOON + seconds, **changes)  # type: ignore[arg-type]


def _sample(key_id: int) -> list[LedgerEntry]:
    return [
        _at(entry("r1", key_id, 100), 5, ttfb_ms=30.0, tags=["team:a"]),
        _at(entry("r2", key_id, 50), 30, ttfb_ms=3000.0, tags=["team:a", "beta"]),
        _at(entry("r3", key_id, 0, status=502), 70, ttfb_ms=None, route="", upstream_model="",
            attempts=[{"route": "p:x", "start_ms": 0, "ms": 9, "outcome": "502", "hedge": False}]),
        _at(entry("r4", key_id, 0, status=499), 3700, ttfb_ms=1.0),
    ]  # fmt: skip


def test_a_batch_is_summed_per_bucket_and_tag():
    by_route, by_key = rollup([(e, e.cost) for e in _sample(7)])
    routes = {row[:5]: dict(zip(ROUTE_COLUMNS, row, strict=True)) for row in by_route}
    minute = routes[(60, NOON, "", "m", "local:up")]
    assert (minute["requests"], minute["cost"], minute["prompt_tokens"]) == (2, 150, 10)
    assert minute["ttfb_sum"] == 3030.0 and minute["total_sum"] == 4.0
    histogram = [minute[name] for name in histogram_columns()]
    assert sum(histogram) == 2
    assert histogram[TTFB_BOUNDS_MS.index(50)] == 1  # 30 ms: the bucket below 50 ms
    day = routes[(86400, NOON - 12 * 3600, "", "m", "local:up")]
    assert (day["requests"], day["errors"], day["cancelled"]) == (3, 0, 1)
    # No route answered r3: it counts against the route its attempt failed on.
    failed = routes[(60, NOON + 60, "", "m", "p:x")]
    assert (failed["requests"], failed["errors"]) == (1, 1)
    assert routes[(3600, NOON, "team:a", "m", "local:up")]["requests"] == 2
    assert routes[(3600, NOON, "beta", "m", "local:up")]["requests"] == 1
    keys = {row[:4]: dict(zip(KEY_COLUMNS, row, strict=True)) for row in by_key}
    assert keys[(3600, NOON, "", 7)]["requests"] == 3
    assert keys[(86400, NOON - 12 * 3600, "", 7)]["cost"] == 150
    assert by_route == sorted(by_route, key=lambda row: (row[0], row[2], row[1], *row[3:5]))


def test_percentiles_interpolate_within_their_bucket():
    histogram = [0] * (len(TTFB_BOUNDS_MS) + 1)
    assert percentile(histogram, 0.5) is None
    at = TTFB_BOUNDS_MS.index(200)  # the bucket from 150 to 200 ms
    histogram[at] = 10
    assert percentile(histogram, 0.5) == 175.0
    assert percentile(histogram, 1.0) == 200.0
    histogram[-1] = 10  # beyond the last bound: read as that bound
    assert percentile(histogram, 0.99) == TTFB_BOUNDS_MS[-1]


def _rows(url_: str, table: str) -> dict[tuple[object, ...], tuple[object, ...]]:
    rows = query_url(url_, f"SELECT * FROM {table}")
    width = 5 if table == "usage_by_route" else 4
    return {row[:width]: tuple(float(v) for v in row[width:]) for row in rows}


def test_settling_writes_rollups_once(url):  # noqa: F811 - the fixture
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", None)
        sample = _sample(key.id)
        await store.settle(sample)
        await store.settle(sample)  # a replayed journal: settled already, counted once

    run(url, scenario)
    routes = _rows(url, "usage_by_route")
    expected, keys = rollup([(e, e.cost) for e in _sample(1)])
    assert routes == {row[:5]: tuple(float(v) for v in row[5:]) for row in expected}
    assert _rows(url, "usage_by_key") == {row[:4]: tuple(float(v) for v in row[4:]) for row in keys}
    tags = query_url(url, "SELECT tag, request_id FROM ledger_tags ORDER BY tag, request_id")
    assert tags == [("beta", "r2"), ("team:a", "r1"), ("team:a", "r2")]


def test_the_backfill_sums_older_rows_as_settling_does(url):  # noqa: F811 - the fixture
    """Migration 0010 sums the rows settled before it; it must agree with store/rollup.py."""

    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", None)
        untagged = [dataclasses.replace(e, tags=None, attempts=None) for e in _sample(key.id)]
        await store.settle(untagged)

    run(url, scenario)
    settled = (_rows(url, "usage_by_route"), _rows(url, "usage_by_key"))
    dialect = "sqlite" if url.startswith("sqlite") else "postgres"
    sql = (MIGRATIONS / f"0010_console_rollups.{dialect}.sql").read_text()
    backfill = sql[sql.index("-- Rows settled before this migration") :]
    query_url(url, "DELETE FROM usage_by_route")
    query_url(url, "DELETE FROM usage_by_key")
    code = "\n".join(line for line in backfill.splitlines() if not line.startswith("--"))
    for statement in filter(str.strip, code.split(";")):
        query_url(url, statement)
    assert (_rows(url, "usage_by_route"), _rows(url, "usage_by_key")) == settled
    assert len(settled[0]) == 2 * len(PERIODS) + 2  # r4 is in another minute and hour


def test_the_migration_histogram_matches_the_bounds():
    for dialect in ("sqlite", "postgres"):
        sql = (MIGRATIONS / f"0010_console_rollups.{dialect}.sql").read_text()
        for bound in TTFB_BOUNDS_MS:
            assert f"ttfb_ms < {bound} THEN" in sql
        assert sql.count("ttfb_ms >= ") == len(PERIODS) * len(TTFB_BOUNDS_MS)


@pytest.mark.parametrize("now", [time.time()])
def test_bucket_starts_are_whole_periods(now):
    by_route, _ = rollup([(dataclasses.replace(entry("r", 1, 1), created_at=now), 1)])
    for period, bucket, *_ in by_route:
        assert bucket % period == 0 and bucket <= now < bucket + period
