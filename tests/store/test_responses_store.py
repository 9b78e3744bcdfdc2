"""The stored-Responses contract (store/responses.py), on SQLite and PostgreSQL alike: rows owned
by a key, expiry, purge in batches, and a byte budget per key that drops the oldest first."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from callmissed.errors import RateLimited
from callmissed.history import History, Readers
from callmissed.settings import ResponsesStorage
from callmissed.store import Store
from callmissed.store.responses import (
    PostgresResponses,
    ResponseStore,
    SQLiteResponses,
    StoredResponse,
)
from callmissed.store.sqlite import connect as sqlite_connect
from tests.store.test_store_contract import Scenario, run, url  # noqa: F401 (the fixture)

HOUR = 3600.0


def stored(response_id: str, created_at: float, size: int = 10) -> StoredResponse:
    return StoredResponse(response_id, created_at, "r" * size, "[]")


async def two_keys(store: Store) -> tuple[int, int]:
    first = await store.create_key("a", "hash-a", "cm_a", None)
    second = await store.create_key("b", "hash-b", "cm_b", None)
    return first.id, second.id


def test_a_row_is_its_keys_alone(url):  # noqa: F811
    async def scenario(store: Store) -> None:
        mine, theirs = await two_keys(store)
        rows = store.responses()
        now = time.time()
        await rows.save(mine, stored("resp_1", now), now + HOUR, 10**9)
        assert await rows.load(mine, "resp_1", now) == stored("resp_1", now)
        assert await rows.load(theirs, "resp_1", now) is None
        assert await rows.delete(theirs, "resp_1") is False
        assert await rows.delete(mine, "resp_1") is True
        assert await rows.load(mine, "resp_1", now) is None
        assert await rows.delete(mine, "resp_1") is False

    run(url, scenario)


def test_expired_rows_are_not_read_and_are_purged_in_batches(url):  # noqa: F811
    async def scenario(store: Store) -> None:
        key, _ = await two_keys(store)
        rows = store.responses()
        now = time.time()
        for n in range(5):
            await rows.save(key, stored(f"old_{n}", now - 2 * HOUR), now - HOUR, 10**9)
        await rows.save(key, stored("fresh", now), now + HOUR, 10**9)
        assert await rows.load(key, "old_0", now) is None
        assert await rows.purge(now, limit=2) == 2
        assert await rows.purge(now, limit=10) == 3
        assert await rows.purge(now, limit=10) == 0
        assert await rows.load(key, "fresh", now) is not None

    run(url, scenario)


def test_a_key_past_its_budget_loses_its_oldest_rows_first(url):  # noqa: F811
    async def scenario(store: Store) -> None:
        key, other = await two_keys(store)
        rows = store.responses()
        now = time.time()
        await rows.save(other, stored("theirs", now - 10, size=98), now + HOUR, 300)
        for n in range(3):  # 100 bytes each ("r" * 98 and "[]")
            await rows.save(key, stored(f"resp_{n}", now + n, size=98), now + HOUR, 300)
        await rows.save(key, stored("resp_3", now + 3, size=148), now + HOUR, 300)
        kept = [n for n in range(4) if await rows.load(key, f"resp_{n}", now) is not None]
        assert kept == [2, 3]  # 150 + 100 <= 300; dropping resp_0 alone would leave 350
        assert await rows.load(other, "theirs", now) is not None  # another key's are untouched
        await rows.delete(key, "resp_2")
        await rows.save(key, stored("resp_4", now + 4, size=98), now + HOUR, 300)
        kept = [n for n in range(5) if await rows.load(key, f"resp_{n}", now) is not None]
        assert kept == [3, 4]  # the deletion gave its bytes back: nothing else had to go

    run(url, scenario)


def test_history_keeps_no_response_larger_than_one_may_be(url):  # noqa: F811
    async def scenario(store: Store) -> None:
        key, _ = await two_keys(store)
        history = History(store, ResponsesStorage(max_bytes=2_000))
        small = {"id": "resp_small", "created_at": 1, "output": []}
        large = {"id": "resp_large", "created_at": 1, "output": [{"text": "x" * 2_000}]}
        assert await history.save(key, small, []) is True
        assert await history.save(key, large, []) is False
        assert large["store"] is False
        assert (await history.load(key, "resp_small")).id == "resp_small"
        with pytest.raises(Exception, match="No response found"):
            await history.load(key, "resp_large")

    run(url, scenario)


def test_history_purges_what_the_retention_let_expire(url):  # noqa: F811
    async def scenario(store: Store) -> None:
        key, _ = await two_keys(store)
        history = History(store, ResponsesStorage(retention_days=1e-6))  # ~86 ms
        for n in range(3):
            await history.save(key, {"id": f"resp_{n}", "created_at": 1, "output": []}, [])
        await asyncio.sleep(0.2)
        assert await history.purge() == 3

    run(url, scenario)


def test_a_key_at_its_budget_reads_only_the_rows_it_drops(url):  # noqa: F811
    """Past its budget, a save reads the key's oldest rows until enough bytes are free, not
    every row the key has: reading them all took ~3 s a save at 250,000 small responses (a
    256 MiB budget), with SQLite's write lock held and the worker's event loop blocked."""

    async def work_of_one_save(rows_before: int) -> int:
        async with _metered_rows(url) as (rows, fill, work):
            await fill(rows_before)
            before = await work()
            await rows.save(1, stored("resp_new", 1e9, size=98), 2e9, rows_before * 100)
            return await work() - before

    async def scenario(store: Store) -> None:
        await store.create_key("a", "hash-a", "cm_a", None)
        few, many = await work_of_one_save(100), await work_of_one_save(5_000)
        assert many < 2 * few + 50, (few, many)

    run(url, scenario)


# A key's rows, a way to give it `n` of 100 bytes each, and a meter of the database's work.
Metered = tuple[ResponseStore, Callable[[int], Awaitable[None]], Callable[[], Awaitable[int]]]


@contextlib.asynccontextmanager
async def _metered_rows(url: str) -> AsyncIterator[Metered]:  # noqa: F811
    """A ResponseStore for key 1 on `url`, a way to give that key `n` rows of 100 bytes (the
    oldest first, its quota row to match), and a meter of the work the database has done:
    SQLite's virtual-machine steps (in hundreds), PostgreSQL's rows read in the transaction
    the whole block runs in (each save is a savepoint in it)."""
    rows_sql = "INSERT INTO responses VALUES ({}, 1, {}, 2e9, 100, {}, '[]')"
    if url.startswith("sqlite"):
        db = sqlite_connect(url.removeprefix("sqlite:///"))
        steps = [0]

        def step() -> int:
            steps[0] += 1
            return 0  # go on

        db.set_progress_handler(step, 100)
        db.execute("DELETE FROM responses")
        db.execute("DELETE FROM response_quota")

        async def fill_sqlite(n: int) -> None:
            sql = rows_sql.format("?", "?", "?")
            db.executemany(sql, ((f"old_{i}", float(i), "r" * 98) for i in range(n)))
            db.execute("INSERT INTO response_quota VALUES (1, ?)", (n * 100,))

        async def sqlite_work() -> int:
            return steps[0]

        try:
            yield SQLiteResponses(db), fill_sqlite, sqlite_work
        finally:
            db.close()
        return
    import asyncpg

    connection = await asyncpg.connect(url)
    outer = connection.transaction()
    await outer.start()

    async def fill_postgres(n: int) -> None:
        sql = rows_sql.format("$1", "$2", "$3")
        await connection.executemany(sql, [(f"old_{i}", float(i), "r" * 98) for i in range(n)])
        await connection.execute("INSERT INTO response_quota VALUES (1, $1)", n * 100)
        await connection.execute("ANALYZE responses")  # as autovacuum would have by then

    async def postgres_work() -> int:
        read = await connection.fetchval(
            "SELECT seq_tup_read + COALESCE(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
            " WHERE relname = 'responses' AND schemaname = current_schema()"
        )
        return int(read)

    class OneConnection:
        @contextlib.asynccontextmanager
        async def acquire(self) -> AsyncIterator[Any]:
            yield connection

    try:
        yield PostgresResponses(OneConnection()), fill_postgres, postgres_work
    finally:
        await outer.rollback()
        await connection.close()


def test_a_save_at_its_budget_and_a_delete_of_its_oldest_row_both_finish(url):  # noqa: F811
    """PostgreSQL: a DELETE locks its row and then the key's quota row; a save past the budget
    holds the quota row and drops the oldest rows. It skips a row another transaction holds
    instead of waiting for it, which was a deadlock (one of the two failed after a second)."""
    if not url.startswith("postgres"):
        pytest.skip("SQLite runs one writer at a time: there is no lock to wait for")

    async def scenario(store: Store) -> None:
        import asyncpg

        key, _ = await two_keys(store)
        rows = store.responses()
        for n in range(3):
            await rows.save(key, stored(f"old_{n}", n, size=98), 2e9, 300)
        deleter = await asyncpg.connect(url)
        try:
            async with deleter.transaction():  # PostgresResponses.delete, one statement at a time
                await deleter.execute("DELETE FROM responses WHERE id = 'old_0'")
                save = asyncio.ensure_future(rows.save(key, stored("new", 10, size=98), 2e9, 300))
                await asyncio.wait([save], timeout=0.5)
                await deleter.execute(
                    "UPDATE response_quota SET bytes = bytes - 100 WHERE key_id = $1", key
                )
            await save
        finally:
            await deleter.close()
        kept = [n for n in range(3) if await rows.load(key, f"old_{n}", 0) is not None]
        assert kept == [2]  # old_0 deleted, old_1 dropped for the new row
        assert await rows.load(key, "new", 0) is not None

    run(url, scenario)


def test_a_keys_reads_in_flight_are_bounded_and_given_back_once():
    readers = Readers(limit=100)
    first = readers.take(1, 60)
    readers.take(2, 100)  # another key's reads count for that key alone
    with pytest.raises(RateLimited):
        readers.take(1, 60)
    first()
    first()  # a second give-back changes nothing
    second = readers.take(1, 60)
    readers.take(1, 40)
    with pytest.raises(RateLimited):
        readers.take(1, 1)
    second()
    readers.take(3, 1_000)  # one read alone always goes, however large
