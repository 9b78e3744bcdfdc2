"""What store.settle() costs per entry, in the ledger writer's 64-entry batches.

Run `python -m benchmarks.settle_batch [--postgres-url URL]`. SQLite (a fresh WAL file) always;
PostgreSQL too when a server answers at the URL (a throwaway schema). Each batch mixes `--keys`
keys, each drawing from its own wallet as a gateway process's requests do, with a few entries
that hold nothing. Reports wall time and this process's CPU time per entry, of the median batch:
on SQLite they are the same work on the event loop; on PostgreSQL the difference is the server
and the network.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator

from callmissed.store import LedgerEntry, Store, open_store

__all__ = ["main"]

_BATCH = 64


def _entry(request_id: str, key_id: int, cost: int, wallet: str | None) -> LedgerEntry:
    return LedgerEntry(
        request_id, key_id, time.time(), "m", "p", "x", True, 200, None,
        12, 20, 0, 0, cost, 1.5, 3.0, wallet,
    )  # fmt: skip


async def _measure(store: Store, batches: int, keys: int) -> tuple[float, float]:
    """(wall us, CPU us) per entry of settling `batches` batches over `keys` keys: the median
    batch's, which a busy machine disturbs less than the mean."""
    ids = []
    for n in range(keys):
        key = await store.create_key(f"k{n}", f"h{n}", "cm_x", 10**15)
        await store.fund(key.id, f"w{n}", 10**13, 10**13, "bench")
        ids.append(key.id)
    walls: list[int] = []
    cpus: list[int] = []
    for b in range(batches + 5):
        entries = [
            _entry(f"r{b}-{i}", ids[i % keys], 300 + i, None if i % 16 == 0 else f"w{i % keys}")
            for i in range(_BATCH)
        ]
        began, began_cpu = time.perf_counter_ns(), time.process_time_ns()
        await store.settle(entries)
        if b >= 5:  # warm-up: statement caches, connection pool
            walls.append(time.perf_counter_ns() - began)
            cpus.append(time.process_time_ns() - began_cpu)
    return statistics.median(walls) / 1000 / _BATCH, statistics.median(cpus) / 1000 / _BATCH


@contextlib.asynccontextmanager
async def _postgres(url: str) -> AsyncIterator[str]:
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    db = await asyncpg.connect(url, timeout=5)
    try:
        await db.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{url}{'&' if '?' in url else '?'}search_path={schema}"
        finally:
            await db.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await db.close()


async def _run(url: str, batches: int, keys: int) -> tuple[float, float]:
    store = open_store(url)
    await store.start()
    try:
        return await _measure(store, batches, keys)
    finally:
        await store.close()


async def _main(args: argparse.Namespace) -> None:
    print(f"store.settle(), {_BATCH}-entry batches, {args.batches} batches, per entry:")
    for keys in args.keys:
        with tempfile.TemporaryDirectory() as folder:
            wall, cpu = await _run(f"sqlite:///{folder}/bench.sqlite3", args.batches, keys)
        print(f"  sqlite    {keys:3d} key(s)  {wall:6.1f} us wall  {cpu:6.1f} us CPU")
        try:
            async with _postgres(args.postgres_url) as url:
                wall, cpu = await _run(url, args.batches, keys)
        except OSError as exc:
            print(f"  postgres  skipped: {exc}")
            continue
        print(f"  postgres  {keys:3d} key(s)  {wall:6.1f} us wall  {cpu:6.1f} us CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--keys", type=int, nargs="+", default=[1, 8], help="keys per batch")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
