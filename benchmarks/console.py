"""The console at scale: each admin endpoint's p50/p99 over a seeded ledger, and the gateway's added
time to first token with and without a console user refreshing every second.

`python -m benchmarks.console [--rows 5000000] [--backends sqlite,postgres]`. For each backend it
seeds `--rows` ledger rows over `--days` days (200 keys, 20 models on 3 providers, failures,
cancellations, tags, fallbacks), with their rollups exactly as settling would write them
(store/rollup.py), starts `callmissed serve` (2 workers) on that database in front of the
benchmark's fake upstream, then times every endpoint the console reads (target: each page's data
under 100 ms) and c=1 streamed requests, direct and through the gateway, with and without a
poller fetching the console's pages every second (target: no measurable change).
Writes the results as JSON to `--out` if given. See docs/console.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import multiprocessing
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from benchmarks.systems import CallMissed, Upstream, Upstreams, clean_env
from callmissed.console.queries import encode_cursor
from callmissed.store import LedgerEntry, open_store
from callmissed.store.rollup import KEY_COLUMNS, ROUTE_COLUMNS, rollup, upsert_sql

__all__ = ["main"]

ADMIN = "bench-admin-token"
KEYS = 200
MODELS = [(f"model-{n:02d}", f"prov{n % 3}", f"up-{n:02d}", 120 + 70 * n) for n in range(20)]
TAGS = ["team:search", "team:support", "team:research", "team:growth", "env:prod", "env:staging"]
_CHUNK = 100_000
_LEDGER = (
    "request_id, key_id, created_at, model, route, upstream_model, stream, status, error_code,"
    " prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens, cost, uncharged,"
    " ttfb_ms, total_ms, attempts, tags"
)


def _entries(rows: int, days: float, seed: int) -> Iterator[list[LedgerEntry]]:
    """The seeded ledger, oldest first, in chunks: keys and models by a skewed popularity."""
    chance = random.Random(seed)
    end = time.time() - 60
    start = end - days * 86400
    key_weights = [1 / (n + 1) for n in range(KEYS)]
    model_weights = [1 / (n + 1) ** 0.8 for n in range(len(MODELS))]
    chunk: list[LedgerEntry] = []
    for n in range(rows):
        at = start + (end - start) * n / rows
        model, provider, upstream, median = chance.choices(MODELS, model_weights)[0]
        status = chance.choices((200, 502, 499), (97, 2, 1))[0]
        answered = status == 200
        attempts = None
        if answered and chance.random() < 0.02:
            first = {"route": f"{provider}:{upstream}-a", "start_ms": 0, "ms": 40.0,
                     "outcome": "503", "hedge": False}  # fmt: skip
            attempts = [first, {**first, "route": f"{provider}:{upstream}", "outcome": "ok"}]
        prompt, completion = chance.randint(50, 4000), chance.randint(0, 1200) if answered else 0
        ttfb = median * chance.lognormvariate(0, 0.4) if answered else None
        chunk.append(LedgerEntry(
            f"req_{int(at * 1000):012x}{chance.getrandbits(48):012x}",
            1 + int(chance.choices(range(KEYS), key_weights)[0]), at, model,
            provider if answered else "", upstream if answered else "", True, status,
            None if answered else ("upstream_error" if status == 502 else "client_closed"),
            prompt, completion, 0, 0, prompt + 3 * completion, ttfb, (ttfb or 0) + completion * 8,
            None, attempts=attempts,
            tags=chance.sample(TAGS, chance.randint(1, 2)) if chance.random() < 0.3 else None,
        ))  # fmt: skip
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ledger_row(entry: LedgerEntry) -> tuple[Any, ...]:
    return (
        entry.request_id, entry.key_id, entry.created_at, entry.model, entry.route,
        entry.upstream_model, entry.stream, entry.status, entry.error_code, entry.prompt_tokens,
        entry.completion_tokens, 0, 0, entry.cost, 0, entry.ttfb_ms, entry.total_ms,
        orjson.dumps(entry.attempts).decode() if entry.attempts else None,
        orjson.dumps(entry.tags).decode() if entry.tags else None,
    )  # fmt: skip


async def _create_keys(url: str) -> None:
    store = open_store(url)
    await store.start()
    try:
        for n in range(KEYS):
            await store.create_key(f"key-{n:03d}", f"bench-hash-{n}", "cm_seed", None)
    finally:
        await store.close()


def _seed_sqlite(path: str, rows: int, days: float) -> None:
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-400000")
    marks = ", ".join("?" * 19)
    route_sql = upsert_sql(
        "usage_by_route", ROUTE_COLUMNS, f"VALUES ({', '.join('?' * len(ROUTE_COLUMNS))})"
    )
    key_sql = upsert_sql(
        "usage_by_key", KEY_COLUMNS, f"VALUES ({', '.join('?' * len(KEY_COLUMNS))})"
    )
    for chunk in _entries(rows, days, seed=15):
        by_route, by_key = rollup((entry, entry.cost) for entry in chunk)
        db.execute("BEGIN")
        db.executemany(f"INSERT INTO ledger ({_LEDGER}) VALUES ({marks})", map(_ledger_row, chunk))
        db.executemany(
            "INSERT INTO ledger_tags VALUES (?, ?, ?)",
            [(t, e.created_at, e.request_id) for e in chunk if e.tags for t in e.tags],
        )
        db.executemany(route_sql, by_route)
        db.executemany(key_sql, by_key)
        db.execute("COMMIT")
    db.close()


async def _seed_postgres(url: str, rows: int, days: float) -> None:
    import asyncpg

    base, _, schema = url.partition("?search_path=")
    db = await asyncpg.connect(base, server_settings={"search_path": schema})
    routes = upsert_sql("usage_by_route", ROUTE_COLUMNS, "SELECT * FROM json_populate_recordset("
                        "NULL::usage_by_route, $1::json)")  # fmt: skip
    keys = upsert_sql(
        "usage_by_key",
        KEY_COLUMNS,
        "SELECT * FROM json_populate_recordset(NULL::usage_by_key, $1::json)",
    )
    try:
        for chunk in _entries(rows, days, seed=15):
            by_route, by_key = rollup((entry, entry.cost) for entry in chunk)
            columns = [name.strip() for name in _LEDGER.split(",")]
            await db.copy_records_to_table(
                "ledger", records=map(_ledger_row, chunk), columns=columns
            )
            tagged = [(t, e.created_at, e.request_id) for e in chunk if e.tags for t in e.tags]
            await db.copy_records_to_table("ledger_tags", records=tagged)
            for sql, names, rows_ in (
                (routes, ROUTE_COLUMNS, by_route),
                (keys, KEY_COLUMNS, by_key),
            ):
                await db.execute(
                    sql, orjson.dumps([dict(zip(names, r, strict=True)) for r in rows_]).decode()
                )
        await db.execute("VACUUM ANALYZE")
    finally:
        await db.close()


def _endpoints(now: float) -> dict[str, str]:
    """Every read the console makes, by the page that makes it."""
    deep = encode_cursor(now - 45 * 86400, "req_")
    since = now - 86400
    return {
        "overview 1h": "/admin/overview?range=1h",
        "overview 24h": "/admin/overview?range=24h",
        "overview 7d": "/admin/overview?range=7d",
        "overview 30d": "/admin/overview?range=30d",
        "overview 24h tag": "/admin/overview?range=24h&tag=team:search",
        "facets": "/admin/facets",
        "requests newest": "/admin/requests",
        "requests 45 days deep": f"/admin/requests?cursor={deep}",
        "requests by key": "/admin/requests?key=7",
        "requests by model": "/admin/requests?model=model-13",
        "requests by route": "/admin/requests?route=prov1:up-13",
        "requests by provider": "/admin/requests?route=prov2",
        "requests failed": "/admin/requests?status=error",
        "requests by tag": "/admin/requests?tag=team:growth",
        "requests last 24h": f"/admin/requests?since={since}&until={now}",
        "request detail": "/admin/requests/{id}",
        "keys": "/admin/keys",
        "key usage 30d": "/admin/usage/keys?range=30d",
        "routes": "/admin/routes",
        "tags 24h": "/admin/tags?range=24h",
        "tags 30d": "/admin/tags?range=30d",
        "retention": "/admin/retention",
    }


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[float, bytes]:
    began = time.perf_counter()
    conn.request("GET", path, headers={"authorization": f"Bearer {ADMIN}"})
    response = conn.getresponse()
    body = response.read()
    took = (time.perf_counter() - began) * 1000
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    return took, body


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "n": len(ordered),
    }


def _time_endpoints(port: int, calls: int) -> dict[str, dict[str, float]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    _, newest = _get(conn, "/admin/requests?limit=1")
    request_id = orjson.loads(newest)["data"][0]["id"]
    results = {}
    for name, path in _endpoints(time.time()).items():
        path = path.replace("{id}", request_id)
        for _ in range(2):
            _get(conn, path)  # warm: statement caches, the console's connections
        results[name] = _percentiles([_get(conn, path)[0] for _ in range(calls)])
        print(
            f"  {name:24s} p50 {results[name]['p50']:8.2f} ms  p99 {results[name]['p99']:8.2f} ms"
        )
    conn.close()
    return results


def _poll_console(port: int, stop: Any) -> None:
    """A console user refreshing every second: the Overview, Requests and Routes pages' data."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    paths = ["/admin/facets", "/admin/overview?range=24h", "/admin/requests", "/admin/routes"]
    while not stop.is_set():
        began = time.monotonic()
        for path in paths:
            _get(conn, path)
        stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))


def _ttfb(url: str, key: str, model: str, conn: http.client.HTTPConnection) -> float:
    parts = urlsplit(url)
    body = orjson.dumps(
        {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    began = time.perf_counter()
    conn.request("POST", f"{parts.path}/chat/completions", body, {
        "authorization": f"Bearer {key}", "content-type": "application/json"})  # fmt: skip
    response = conn.getresponse()
    seen = b""
    first = None
    while chunk := response.read1(65536):
        seen += chunk
        if first is None and b'"content":"tok' in seen:
            first = (time.perf_counter() - began) * 1000
    if first is None:
        raise RuntimeError(f"no content from {url}: {seen[:300]!r}")
    return first


def _added_ttfb(upstream: str, gateway: str, key: str, requests: int) -> dict[str, Any]:
    """c=1 streamed requests, alternating direct and through the gateway."""
    direct_conn = http.client.HTTPConnection(urlsplit(upstream).netloc, timeout=30)
    gateway_conn = http.client.HTTPConnection(urlsplit(gateway).netloc, timeout=30)
    direct, through = [], []
    for n in range(requests + 20):
        d = _ttfb(upstream, "none", "fast", direct_conn)
        g = _ttfb(gateway, key, "bench-fast", gateway_conn)
        if n >= 20:  # warm-up
            direct.append(d)
            through.append(g)
    added = [g - d for g, d in zip(through, direct, strict=True)]
    return {
        "direct": _percentiles(direct),
        "gateway": _percentiles(through),
        "added": _percentiles(added),
    }


@contextlib.contextmanager
def _database(backend: str, workdir: Path, postgres: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'console.sqlite3'}"
        return
    import asyncpg

    schema = f"bench_console_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> None:
        db = await asyncpg.connect(postgres)
        try:
            await db.execute(sql)
        finally:
            await db.close()

    asyncio.run(run(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{postgres}?search_path={schema}"
    finally:
        asyncio.run(run(f"DROP SCHEMA {schema} CASCADE"))


def _run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with _database(backend, workdir, args.postgres_url) as url:
        began = time.perf_counter()
        asyncio.run(_create_keys(url))
        if backend == "sqlite":
            _seed_sqlite(url.removeprefix("sqlite:///"), args.rows, args.days)
        else:
            asyncio.run(_seed_postgres(url, args.rows, args.days))
        seeded = time.perf_counter() - began
        print(f"{backend}: seeded {args.rows:,} rows in {seeded:.0f} s")
        upstream = Upstream(workdir, pace_ms=0, late_pct=0, late_ms=0)
        system = CallMissed(workers=2)
        try:
            (workdir / "bench.toml").write_text(system.config(Upstreams(upstream)))
            env = clean_env(
                CALLMISSED_DATABASE_URL=url, CALLMISSED_CONFIG=str(workdir / "bench.toml"),
                CALLMISSED_ADMIN_TOKEN=ADMIN, CALLMISSED_RETENTION_DAYS="0",
                CALLMISSED_LEDGER_DIR=str(workdir / f"ledger-{backend}"),
            )  # fmt: skip
            key = CallMissed._create_key(env)
            running = system.launch(env, workdir / f"serve-{backend}.log")
            try:
                port = urlsplit(running.base_url).port or 80
                endpoints = _time_endpoints(port, args.calls)
                quiet = _added_ttfb(upstream.url, running.base_url, key, args.requests)
                stop = multiprocessing.Event()
                poller = multiprocessing.Process(target=_poll_console, args=(port, stop))
                poller.start()
                try:
                    busy = _added_ttfb(upstream.url, running.base_url, key, args.requests)
                finally:
                    stop.set()
                    poller.join(30)
            finally:
                running.stop()
        finally:
            upstream.stop()
    for label, numbers in (("no console", quiet), ("console every 1 s", busy)):
        added = numbers["added"]
        print(f"  added TTFB, {label:18s} p50 {added['p50']:6.2f} ms  p99 {added['p99']:6.2f} ms")
    return {
        "seed_s": round(seeded, 1),
        "endpoints": endpoints,
        "ttfb": {"quiet": quiet, "console": busy},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--days", type=float, default=90.0)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per endpoint")
    parser.add_argument("--requests", type=int, default=300, help="timed streams per TTFB phase")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"rows": args.rows, "days": args.days}
    with tempfile.TemporaryDirectory(prefix="callmissed-console-bench-") as folder:
        for backend in args.backends.split(","):
            results[backend] = _run_backend(backend, args, Path(folder))
    if args.out:
        Path(args.out).write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
