"""The stored-Responses contract (store/responses.py), on SQLite and PostgreSQL alike: rows owned
by a key, expiry, purge in batches, and a byte budget per key that drops the oldest first."""

from __future__ import annotations

import asyncio
import time

import pytest

from callmissed.history import History
from callmissed.settings import ResponsesStorage
from callmissed.store import Store
from callmissed.store.responses import StoredResponse
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
