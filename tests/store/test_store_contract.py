"""The Store contract: keys, atomic reservations, idempotent settlement, crashed holds.

Every backend must pass the same tests: SQLite, and PostgreSQL in a throwaway schema (skipped
when no server answers, a failure under CALLMISSED_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from callmissed.store import KeyPolicy, LedgerEntry, Store, open_store
from tests.accounting import postgres_schema

Scenario = Callable[[Store], Awaitable[None]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def url(request, tmp_path) -> Iterator[str]:
    """A database URL per test, for each backend: a fresh file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    with postgres_schema() as schema_url:
        yield schema_url


def run(url: str, scenario: Scenario) -> None:
    """Open a store on `url`, run `scenario` with it in one event loop, close it."""

    async def main() -> None:
        store = open_store(url)
        await store.start()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def entry(request_id: str, key_id: int, cost: int, status: int = 200) -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id,
        key_id=key_id,
        created_at=time.time(),
        model="m",
        route="local",
        upstream_model="up",
        stream=True,
        status=status,
        error_code=None,
        prompt_tokens=5,
        completion_tokens=6,
        reasoning_tokens=0,
        cached_tokens=0,
        cost=cost,
        ttfb_ms=1.0,
        total_ms=2.0,
    )


def test_keys_round_trip(url):
    async def scenario(store: Store) -> None:
        policy = KeyPolicy(rpm=10, tpm=1000, max_concurrent=2, models=("a", "b/c"))
        record = await store.create_key("team", "hash1", "cm_abcd", 5_000_000, policy)
        assert record.policy == policy
        assert (record.credits, record.granted, record.spent) == (5_000_000, 5_000_000, 0)
        assert await store.find_key("hash1") == record
        assert await store.get_key(record.id) == record
        assert await store.list_keys() == [record]
        changed = await store.set_policy(record.id, KeyPolicy(rpm=1))
        assert changed is not None and changed.policy == KeyPolicy(rpm=1)
        topped = await store.topup(record.id, 1)
        assert topped is not None and (topped.credits, topped.granted) == (5_000_001, 5_000_001)
        assert await store.revoke_key(record.id)
        assert not await store.revoke_key(record.id)
        assert await store.topup(record.id, 1) is None  # revoked
        assert await store.get_key(999) is None
        assert await store.find_key("nope") is None

    run(url, scenario)


def test_unlimited_keys_hold_nothing_and_cannot_be_topped_up(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("free", "h", "cm_x", None)
        held = await store.reserve(key.id, "r1", 10**9, "i1", "m")
        assert held.ok and held.balance is None
        assert await store.hold_owners() == set()
        assert await store.topup(key.id, 5) is None

    run(url, scenario)


def test_reserve_takes_the_worst_case_and_refuses_below_zero(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100)
        first = await store.reserve(key.id, "r1", 60, "i1", "m")
        assert first.ok and first.balance == 40
        second = await store.reserve(key.id, "r2", 41, "i1", "m")
        assert not second.ok and second.balance == 40 and not second.revoked
        assert (await store.reserve(key.id, "r3", 40, "i1", "m")).ok  # exactly to zero
        assert await store.hold_owners() == {"i1"}
        await store.revoke_key(key.id)
        assert (await store.reserve(key.id, "r4", 0, "i1", "m")).revoked
        assert (await store.reserve(key.id, "r5", 1, "i1", "m")).revoked
        assert (await store.reserve(12345, "r6", 1, "i1", "m")).revoked  # no such key

    run(url, scenario)


def test_settle_releases_the_hold_charges_the_cost_and_is_idempotent(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100)
        await store.reserve(key.id, "r1", 60, "i1", "m")
        await store.settle([entry("r1", key.id, 17)])
        await store.settle([entry("r1", key.id, 17)])  # a replayed journal
        record = await store.get_key(key.id)
        assert record is not None and (record.credits, record.spent) == (83, 17)
        assert await store.hold_owners() == set()
        [row] = await store.recent_usage(key.id, 10)
        assert (row["request_id"], row["cost"], row["uncharged"]) == ("r1", 17, 0)
        assert (row["stream"], row["status"], row["ttfb_ms"]) == (True, 200, 1.0)

    run(url, scenario)


def test_settle_never_takes_the_balance_below_zero(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100)
        await store.reserve(key.id, "r1", 30, "i1", "m")
        await store.reserve(key.id, "r2", 70, "i1", "m")
        # r1 used more than its hold: it takes 20 more, all there is
        await store.settle([entry("r1", key.id, 50)])
        record = await store.get_key(key.id)
        assert record is not None and record.credits == 0
        [row] = await store.recent_usage(key.id, 10)
        assert (row["cost"], row["uncharged"]) == (30, 20)
        await store.settle([entry("r2", key.id, 10)])
        record = await store.get_key(key.id)
        assert record is not None and record.credits == 60

    run(url, scenario)


def test_release_holds_gives_back_a_dead_instance_holds_only(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100)
        await store.reserve(key.id, "dead-1", 30, "dead", "m")
        await store.reserve(key.id, "live-1", 20, "live", "m")
        assert await store.release_holds("dead") == 1
        assert await store.hold_owners() == {"live"}
        record = await store.get_key(key.id)
        assert record is not None and record.credits == 80
        [row] = await store.recent_usage(key.id, 10)
        assert (row["request_id"], row["status"], row["error_code"], row["cost"]) == (
            "dead-1",
            500,
            "interrupted",
            0,
        )
        await store.settle([entry("dead-1", key.id, 30)])  # a late settlement is a no-op
        record = await store.get_key(key.id)
        assert record is not None and record.credits == 80

    run(url, scenario)


def test_concurrent_reservations_from_many_connections_never_overdraw(url):
    # Eight stores (as eight worker processes would have), each in its own thread and event
    # loop; SQLite drops the GIL while it works and PostgreSQL serves them in parallel.
    created: list[int] = []
    run(url, lambda store: _create(store, created))
    granted: list[bool] = []

    async def reserve_many(store: Store, index: int) -> None:
        for n in range(50):
            held = await store.reserve(created[0], f"r{index}-{n}", 7, f"i{index}", "m")
            granted.append(held.ok)

    def worker(index: int) -> None:
        run(url, lambda store: reserve_many(store, index))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 1000 // 7

    async def check(store: Store) -> None:
        record = await store.get_key(created[0])
        assert record is not None and record.credits == 1000 - 7 * (1000 // 7)

    run(url, check)


async def _create(store: Store, created: list[int]) -> None:
    created.append((await store.create_key("k", "h", "cm_x", 1000)).id)


def test_migrations_apply_once(url):
    run(url, lambda store: _create(store, []))

    async def again(store: Store) -> None:
        assert len(await store.list_keys()) == 1  # nothing to apply, nothing lost

    run(url, again)
