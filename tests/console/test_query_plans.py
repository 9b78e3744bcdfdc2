"""Every console query is served by an index or a rollup: EXPLAIN on SQLite and PostgreSQL.

The ledger gets enough rows (spread over keys, models, routes, statuses and tags) that
PostgreSQL's planner, which weighs table sizes, would rather scan a table than use an index that
does not fit; SQLite (never ANALYZEd by the gateway) chooses by the shape of the query.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from callmissed.console import queries
from callmissed.console.queries import RequestFilter
from callmissed.console.retention import _OLDEST, _ROLLUP_KEYS
from callmissed.store import LedgerEntry, open_store
from callmissed.store.rollup import KEY_COLUMNS, ROUTE_COLUMNS, rollup
from tests.accounting import postgres_schema, query_url

ROWS = 40_000
# The index each single filter is meant to be read through (migration 0010).
FILTERS = {
    "newest": RequestFilter(),
    "key": RequestFilter(key_id=3),
    "model": RequestFilter(model="model-4"),
    "route": RequestFilter(provider="p1", upstream_model="u-7"),
    "provider": RequestFilter(provider="p1"),
    "failed": RequestFilter(status="error"),
    "status": RequestFilter(status="502"),
    "answered": RequestFilter(status="ok"),
    "cancelled": RequestFilter(status="cancelled"),
    "tag": RequestFilter(tag="team:a"),
    "window": RequestFilter(since=time.time() - 3600, until=time.time()),
    "key+model": RequestFilter(key_id=3, model="model-4"),
    "tag+key": RequestFilter(tag="team:a", key_id=3),
}

INDEXES = {
    "newest": "ledger_by_time", "key": "ledger_by_key", "model": "ledger_by_model",
    "route": "ledger_by_route", "provider": "ledger_by_time", "failed": "ledger_failures",
    "status": "ledger_failures", "cancelled": "ledger_failures", "window": "ledger_by_time",
}  # fmt: skip


def _entries(now: float) -> Iterator[LedgerEntry]:
    chance = random.Random(15)
    for n in range(ROWS):
        status = chance.choice([200] * 48 + [502, 499])
        yield LedgerEntry(
            f"req_{n:08d}", 1 + n % 50, now - (ROWS - n) * 6.0, f"model-{n % 10}",
            f"p{n % 3}", f"u-{n % 10}", True, status, None if status == 200 else "upstream_error",
            10, 20, 0, 0, 5, 100.0 + n % 700, 900.0, None,
            tags=[f"team:{'abcdefghij'[n // 5 % 10]}"] if n % 5 == 0 else None,
        )  # fmt: skip


def _seed(url: str) -> None:
    """Keys, ledger rows, their tags and rollups, written directly (settling 40,000 rows one
    batch at a time would take the test far longer), then ANALYZE on PostgreSQL."""

    async def main() -> None:
        store = open_store(url)
        await store.start()
        try:
            for n in range(50):
                await store.create_key(f"k{n}", f"hash{n}", "cm_x", None)
        finally:
            await store.close()

    asyncio.run(main())
    entries = list(_entries(time.time()))
    rows = [(e, e.cost) for e in entries]
    by_route, by_key = rollup(rows)
    ledger = [
        (e.request_id, e.key_id, e.created_at, e.model, e.route, e.upstream_model, e.stream,
         e.status, e.error_code, 10, 20, 0, 0, e.cost, 0, e.ttfb_ms, e.total_ms)
        for e in entries
    ]  # fmt: skip
    tags = [("team:a", e.created_at, e.request_id) for e in entries if e.tags]
    _insert(url, {"ledger": ledger, "ledger_tags": tags, "usage_by_route": by_route,
                  "usage_by_key": by_key})  # fmt: skip


def _insert(url: str, data: dict[str, list[tuple[Any, ...]]]) -> None:
    columns = {
        "ledger": "request_id, key_id, created_at, model, route, upstream_model, stream, status,"
        " error_code, prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens, cost,"
        " uncharged, ttfb_ms, total_ms",
        "ledger_tags": "tag, created_at, request_id",
        "usage_by_route": ", ".join(ROUTE_COLUMNS),
        "usage_by_key": ", ".join(KEY_COLUMNS),
    }
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            for table, rows in data.items():
                marks = ", ".join("?" * len(rows[0]))
                db.executemany(f"INSERT INTO {table} ({columns[table]}) VALUES ({marks})", rows)
        return

    async def copy() -> None:
        import asyncpg

        base, _, schema = url.partition("?search_path=")
        db = await asyncpg.connect(base, server_settings={"search_path": schema})
        try:
            for table, rows in data.items():
                names = [name.strip() for name in columns[table].split(",")]
                await db.copy_records_to_table(table, records=rows, columns=names)
            await db.execute("ANALYZE")
        finally:
            await db.close()

    asyncio.run(copy())


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)]
)
def seeded(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('plans') / 'plans.sqlite3'}"
        _seed(url)
        yield url
        return
    with postgres_schema() as url:
        _seed(url)
        yield url


def _plan(url: str, sql: str, *params: Any) -> str:
    if url.startswith("sqlite"):
        rows = query_url(url, f"EXPLAIN QUERY PLAN {sql}", *params)
        return "\n".join(str(row[3]) for row in rows)
    return "\n".join(row[0] for row in query_url(url, f"EXPLAIN {sql}", *params))


def _reads_no_whole_table(url: str, plan: str, *tables: str) -> None:
    for table in tables:
        if url.startswith("sqlite"):
            assert f"SCAN {table}\n" not in plan + "\n", plan  # a scan with no index at all
        else:
            assert not re.search(rf"Seq Scan on {table}\b", plan), plan


@pytest.mark.parametrize("name", list(FILTERS))
@pytest.mark.parametrize("deep", [False, True], ids=["first-page", "later-page"])
def test_a_requests_page_reads_an_index_in_order(seeded, name, deep):
    after = (time.time() - 3600 * 24, "req_00030000") if deep else None
    sql, params = queries.requests_sql(FILTERS[name], after, 51)
    plan = _plan(seeded, sql, *params)
    _reads_no_whole_table(seeded, plan, "ledger", "l")
    if name != "tag+key" or seeded.startswith("sqlite"):
        # (With a key too, PostgreSQL may rather hash-join the key's few rows with this test's
        # small tag table read whole; it reads the tag's index once the table is large.)
        _reads_no_whole_table(seeded, plan, "ledger_tags", "t")
    if name in INDEXES and seeded.startswith("sqlite"):  # PostgreSQL weighs its statistics
        assert INDEXES[name] in plan, plan
    # In index order: no sort of every matching row before the first 51 come out (PostgreSQL
    # may sort a few it expects from a narrow filter: a sort of few rows is cheap).
    if seeded.startswith("sqlite"):
        assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
    else:
        sorted_rows = [int(n) for n in re.findall(r"(?m)^\s*->  Sort  \(cost=\S+ rows=(\d+)", plan)]
        assert all(rows <= 1_000 for rows in sorted_rows), plan


def test_one_request_is_read_by_its_id(seeded):
    plan = _plan(seeded, queries.request_sql(), "req_00000001")
    _reads_no_whole_table(seeded, plan, "ledger", "l")


NOW = int(time.time())


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        (queries.cells_sql(), (60, "", NOW - 3600)),
        (queries.cells_sql(), (86400, "", NOW - 30 * 86400)),
        (queries.cells_sql(), (3600, "team:a", NOW - 86400)),
        (queries.by_route_sql(60), (60, "", NOW - 3600)),
        (queries.by_route_sql(3600), (3600, "", NOW - 86400)),
        (queries.by_route_sql(21600), (3600, "", NOW - 30 * 86400)),
        (queries.by_route_sql(60, "route"), (60, "", NOW - 3600)),
        (queries.by_route_sql(3600), (3600, "team:a", NOW - 86400)),
        (queries.by_key_sql(10), (86400, "", NOW - 30 * 86400)),
        (queries.by_key_sql(10), (60, "", NOW - 3600)),
        (queries.key_usage_sql(), (86400, NOW - 30 * 86400)),
        (queries.facets_sql("model"), (NOW - 30 * 86400,)),
        (queries.facets_sql("tag"), (NOW - 30 * 86400,)),
        ("SELECT min(bucket) AS at FROM usage_by_route WHERE period = 86400", ()),
    ],
    ids=[
        "cells-1h", "cells-30d", "cells-tag", "1h", "24h", "30d", "routes", "tag",
        "top-keys-30d", "top-keys-1h", "key-usage", "models", "tags", "daily-since",
    ],
)  # fmt: skip
def test_sums_read_the_rollups_by_key(seeded, sql, params):
    plan = _plan(seeded, sql, *params)
    _reads_no_whole_table(seeded, plan, "usage_by_route", "usage_by_key", "u", "ledger")


def test_tags_are_summed_by_bucket(seeded):
    dialect = "sqlite" if seeded.startswith("sqlite") else "postgres"
    plan = _plan(seeded, queries.tags_sql(dialect), 3600, NOW - 86400)
    _reads_no_whole_table(seeded, plan, "usage_by_route")


def test_last_use_is_one_index_descent_per_key(seeded):
    plan = _plan(seeded, queries.last_used_sql())
    _reads_no_whole_table(seeded, plan, "ledger", "l")
    assert "ledger_by_key" in plan


def test_retention_finds_old_rows_by_time(seeded):
    for sql in (_OLDEST, "SELECT min(created_at) AS at FROM ledger"):
        params = (0.0, 500) if "?" in sql else ()
        plan = _plan(seeded, sql, *params)
        _reads_no_whole_table(seeded, plan, "ledger")
    for table, key in _ROLLUP_KEYS.items():
        sql = f"SELECT {key} FROM {table} WHERE period = ? AND bucket < ? LIMIT 2000"
        _reads_no_whole_table(seeded, _plan(seeded, sql, 60, 0), table)
