"""The Store contract: keys, atomic wallet top-ups, idempotent settlement, crashed holds.

Every backend must pass the same tests: SQLite, and PostgreSQL in a throwaway schema (skipped
when no server answers, a failure under CALLMISSED_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from callmissed.store import Funding, KeyPolicy, LedgerEntry, Store, open_store
from tests.accounting import postgres_schema, query_url

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


def entry(
    request_id: str, key_id: int, cost: int, status: int = 200, wallet: str | None = None
) -> LedgerEntry:
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
        wallet=wallet,
    )


def raw_balance(url: str, key_id: int) -> int:
    """api_keys.credits itself: the balance outside every wallet."""
    return int(query_url(url, "SELECT credits FROM api_keys WHERE id = ?", key_id)[0][0])


def wallets(url: str) -> dict[str, int]:
    return dict(query_url(url, "SELECT request_id, amount FROM holds WHERE wallet"))


def execute(url: str, sql: str, *params: Any) -> None:
    query_url(url, sql, *params)


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


def test_unlimited_keys_cannot_fund_a_wallet_nor_be_topped_up(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("free", "h", "cm_x", None)
        funding = await store.fund(key.id, "w1", 10**9, 10**9, "i1")
        assert funding == Funding(0, None)
        assert await store.hold_owners() == set()
        assert await store.topup(key.id, 5) is None

    run(url, scenario)


def test_fund_takes_at_least_the_need_and_at_most_a_fair_share(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 1000)
        # wants 1600, but a quarter of the balance is the most beyond the need
        assert await store.fund(key.id, "w1", 100, 1600, "i1") == Funding(250, 750)
        assert await store.fund(key.id, "w1", 10, 20, "i1") == Funding(20, 730)
        assert await store.fund(key.id, "w1", 731, 731 * 16, "i1") == Funding(0, 730)
        assert await store.fund(key.id, "w2", 730, 730 * 16, "i2") == Funding(730, 0)
        assert await store.hold_owners() == {"i1", "i2"}
        assert raw_balance(url, key.id) == 0
        assert wallets(url) == {"w1": 270, "w2": 730}
        record = await store.get_key(key.id)  # reads add the wallets back: nothing is spent
        assert record is not None and (record.credits, record.spent) == (1000, 0)
        assert [r.credits for r in await store.list_keys()] == [1000]

    run(url, scenario)


def test_revoked_and_missing_keys_fund_nothing_and_read_as_revoked(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100)
        assert not await store.is_revoked(key.id)
        assert await store.is_revoked(12345)
        assert await store.revoke_key(key.id)
        assert await store.is_revoked(key.id)
        assert await store.fund(key.id, "w1", 1, 1, "i1") == Funding(0, None, revoked=True)
        assert await store.fund(12345, "w1", 1, 1, "i1") == Funding(0, None, revoked=True)

    run(url, scenario)


def test_is_revoked_sees_another_process_revoke_at_once(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100)
        assert not await store.is_revoked(key.id)  # now known to be active
        other = open_store(url)  # another process's store, e.g. the CLI's
        await other.start()
        try:
            assert await other.revoke_key(key.id)
        finally:
            await other.close()
        await asyncio.sleep(0.05)  # PostgreSQL: the notification's way back over loopback
        assert await store.is_revoked(key.id)

    run(url, scenario)


def test_keys_version_moves_with_every_key_change_by_another_process_only(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100)
        other = open_store(url)  # another process's store: a worker, the CLI
        await other.start()
        try:

            async def version_after(change: Awaitable[object]) -> int:
                await change
                await asyncio.sleep(0.05)  # a new pass of the loop; PostgreSQL: the NOTIFY
                return store.keys_version()

            before = await version_after(asyncio.sleep(0))
            assert await version_after(other.fund(key.id, "w1", 10, 10, "i1")) == before
            assert await version_after(other.settle([entry("r1", key.id, 5, wallet="w1")])) == (
                before
            )
            changes = [
                other.set_policy(key.id, KeyPolicy(rpm=5)),
                other.topup(key.id, 1),
                other.revoke_key(key.id),
            ]
            for change in changes:
                after = await version_after(change)
                assert after != before
                before = after
        finally:
            await other.close()

    run(url, scenario)


def test_settle_charges_the_wallet_and_is_idempotent(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 1000)
        await store.fund(key.id, "w1", 60, 60, "i1")
        await store.settle([entry("r1", key.id, 17, wallet="w1")])
        await store.settle([entry("r1", key.id, 17, wallet="w1")])  # a replayed journal
        assert (raw_balance(url, key.id), wallets(url)) == (940, {"w1": 43})
        record = await store.get_key(key.id)
        assert record is not None and (record.credits, record.spent) == (983, 17)
        [row] = await store.recent_usage(key.id, 10)
        assert (row["request_id"], row["cost"], row["uncharged"]) == ("r1", 17, 0)
        assert (row["stream"], row["status"], row["ttfb_ms"]) == (True, 200, 1.0)

    run(url, scenario)


def test_settle_takes_what_the_wallet_lacks_from_the_balance_never_below_zero(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100)
        await store.fund(key.id, "w1", 30, 30, "i1")
        # used more than the wallet holds: the rest comes from the balance, 70 of 100
        await store.settle([entry("r1", key.id, 100, wallet="w1")])
        assert (raw_balance(url, key.id), wallets(url)) == (0, {"w1": 0})
        await store.settle([entry("r2", key.id, 5, wallet="w1")])  # nothing left anywhere
        rows = {row["request_id"]: row for row in await store.recent_usage(key.id, 10)}
        assert (rows["r1"]["cost"], rows["r1"]["uncharged"]) == (100, 0)
        assert (rows["r2"]["cost"], rows["r2"]["uncharged"]) == (0, 5)
        record = await store.get_key(key.id)
        assert record is not None and (record.credits, record.spent) == (0, 100)

    run(url, scenario)


def test_an_entry_without_a_wallet_charges_the_balance(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 10)
        unlimited = await store.create_key("u", "h2", "cm_y", None)
        await store.settle(
            [entry("r1", key.id, 4), entry("r2", key.id, 9), entry("r3", unlimited.id, 9)]
        )
        rows = {row["request_id"]: row for row in await store.recent_usage(key.id, 10)}
        assert (rows["r2"]["cost"], rows["r2"]["uncharged"]) == (6, 3)
        record = await store.get_key(key.id)
        assert record is not None and (record.credits, record.spent) == (0, 10)
        record = await store.get_key(unlimited.id)
        assert record is not None and (record.credits, record.spent) == (None, 9)

    run(url, scenario)


def test_give_back_returns_the_wallet_to_the_balance(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 1000)
        await store.fund(key.id, "w1", 100, 100, "i1")
        await store.settle([entry("r1", key.id, 17, wallet="w1")])
        assert await store.give_back("w1") == 83
        assert await store.give_back("w1") == 0
        assert (raw_balance(url, key.id), wallets(url)) == (983, {})
        assert await store.hold_owners() == set()
        await store.settle([entry("r2", key.id, 5, wallet="w1")])  # settled late: the balance pays
        assert raw_balance(url, key.id) == 978

    run(url, scenario)


def test_give_back_part_of_a_wallet_keeps_the_rest(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 1000)
        await store.fund(key.id, "w1", 100, 100, "i1")
        assert await store.give_back("w1", 30) == 30
        assert await store.give_back("w1", 71) == 0  # it holds 70: nothing moves
        assert (raw_balance(url, key.id), wallets(url)) == (930, {"w1": 70})
        assert await store.give_back("nowhere", 1) == 0

    run(url, scenario)


def test_release_holds_gives_back_a_dead_instance_wallets_and_holds_only(url):
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100)
        await store.fund(key.id, "dead-wallet", 30, 30, "dead")
        await store.fund(key.id, "live-wallet", 20, 20, "live")
        # a per-request hold, as a process from before wallets left it
        execute(url, "UPDATE api_keys SET credits = credits - 10 WHERE id = ?", key.id)
        execute(
            url,
            "INSERT INTO holds (request_id, key_id, amount, instance, model, created_at)"
            " VALUES ('dead-1', ?, 10, 'dead', 'm', 1.0)",
            key.id,
        )
        assert await store.release_holds("dead") == 2
        assert await store.hold_owners() == {"live"}
        assert (raw_balance(url, key.id), wallets(url)) == (80, {"live-wallet": 20})
        [row] = await store.recent_usage(key.id, 10)  # the wallet is not a request: no row
        assert (row["request_id"], row["status"], row["error_code"], row["cost"]) == (
            "dead-1",
            500,
            "interrupted",
            0,
        )
        await store.settle([entry("dead-1", key.id, 30)])  # a late settlement is a no-op
        assert raw_balance(url, key.id) == 80

    run(url, scenario)


def test_concurrent_top_ups_and_settlements_from_many_processes_never_overdraw(url):
    # Eight stores (as eight worker processes would have), each in its own thread and event
    # loop, each topping up its own wallet and settling requests from it; SQLite drops the GIL
    # while it works and PostgreSQL serves them in parallel.
    created: list[int] = []
    run(url, lambda store: _create(store, created))
    taken: list[int] = []

    async def spend(store: Store, index: int) -> None:
        wallet = f"w{index}"
        for n in range(50):
            funding = await store.fund(created[0], wallet, 7, 7 * 16, f"i{index}")
            assert funding.taken == 0 or funding.taken >= 7
            taken.append(funding.taken)
            if funding.taken:
                await store.settle([entry(f"r{index}-{n}", created[0], 3, wallet=wallet)])

    def worker(index: int) -> None:
        run(url, lambda store: spend(store, index))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    left = raw_balance(url, created[0])
    assert 0 <= left < 7  # never below zero, and nothing refused while 7 was there
    in_wallets = sum(wallets(url).values())
    charged = 3 * sum(1 for amount in taken if amount)
    assert sum(taken) == 1000 - left
    assert left + in_wallets + charged == 1000

    async def check(store: Store) -> None:
        record = await store.get_key(created[0])
        assert record is not None and (record.credits, record.spent) == (1000 - charged, charged)

    run(url, check)


def test_a_wallet_given_back_while_it_is_topped_up_and_settled_never_deadlocks(url):
    # One process gives part of a wallet back (another worker asked for the credit) while its
    # own background top-up and ledger writer use the same wallet, each on its own connection.
    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 1_000_000)
        await store.fund(key.id, "w1", 1000, 1000, "i1")
        charged = 0
        for n in range(60):
            fund = store.fund(key.id, "w1", 10, 10, "i1")
            part = store.give_back("w1", 5)
            settle = store.settle([entry(f"r{n}", key.id, 3, wallet="w1")])
            await asyncio.gather(fund, part, settle)
            charged += 3
        assert await store.give_back("w1") > 0
        assert (raw_balance(url, key.id) + charged, wallets(url)) == (1_000_000, {})
        await store.fund(key.id, "w2", 10, 10, "i1")
        for _ in range(60):
            await asyncio.gather(store.fund(key.id, "w2", 10, 10, "i1"), store.give_back("w2"))

    run(url, scenario)


async def _create(store: Store, created: list[int]) -> None:
    created.append((await store.create_key("k", "h", "cm_x", 1000)).id)


def test_migrations_apply_once(url):
    run(url, lambda store: _create(store, []))

    async def again(store: Store) -> None:
        assert len(await store.list_keys()) == 1  # nothing to apply, nothing lost

    run(url, again)


async def _batch_setup(store: Store, url: str, p: str) -> dict[str, int]:
    """Keys A (100, 30 of it in wallet wA) and B (50, 20 in wB and 10 in a per-request hold
    pB, as a process from before wallets left it), an unlimited key U, and A's request `old`
    already settled (5 from wA); every name starts with `p`, so that two copies can coexist."""
    ids = {}
    for name, credits in (("A", 100), ("B", 50), ("U", None)):
        ids[name] = (await store.create_key(name, f"{p}{name}", "cm_x", credits)).id
    assert await store.fund(ids["A"], f"{p}wA", 30, 30, "i1") == Funding(30, 70)
    assert await store.fund(ids["B"], f"{p}wB", 20, 20, "i1") == Funding(20, 30)
    execute(url, "UPDATE api_keys SET credits = credits - 10 WHERE id = ?", ids["B"])
    execute(
        url,
        "INSERT INTO holds (request_id, key_id, amount, instance, model, created_at)"
        " VALUES (?, ?, 10, 'old', 'm', 1.0)",
        f"{p}pB",
        ids["B"],
    )
    await store.settle([entry(f"{p}old", ids["A"], 5, wallet=f"{p}wA")])
    return ids


def _batch(p: str, ids: dict[str, int]) -> list[LedgerEntry]:
    """Entries whose order matters: the caps depend on what the ones before them left."""
    wa, wb = f"{p}wA", f"{p}wB"
    return [
        entry(f"{p}a1", ids["A"], 20, wallet=wa),  # all from the wallet: 5 left in it
        entry(f"{p}old", ids["A"], 5, wallet=wa),  # settled before: skipped
        entry(f"{p}b1", ids["B"], 15, wallet=wb),  # wB 5 left
        entry(f"{p}a2", ids["A"], 50, wallet=wa),  # 5 from the wallet, 45 of A's 70
        entry(f"{p}pB", ids["B"], 12),  # releases the 10 held: B 20 + 10 - 12
        entry(f"{p}u1", ids["U"], 1000),  # unlimited: all of it
        entry(f"{p}a3", ids["A"], 40, wallet=wa),  # A has 25 left: 15 uncharged
        entry(f"{p}a1", ids["A"], 20, wallet=wa),  # twice in one batch: skipped
        entry(f"{p}b2", ids["B"], 30, wallet=wb),  # 5 from wB, B's 18: 7 uncharged
        entry(f"{p}a4", ids["A"], 3),  # nothing left anywhere
    ]


def _batch_state(url: str, p: str, ids: dict[str, int]) -> dict[str, Any]:
    """Every row the batch can touch, with `p` and the key ids replaced by the keys' names."""
    name = {key_id: key for key, key_id in ids.items()}
    keys = {
        key: query_url(url, "SELECT credits, granted, spent FROM api_keys WHERE id = ?", key_id)[0]
        for key, key_id in ids.items()
    }
    holds = query_url(url, "SELECT request_id, key_id, amount, instance, wallet FROM holds")
    ledger = query_url(
        url,
        "SELECT request_id, key_id, cost, uncharged, status, stream, prompt_tokens, ttfb_ms"
        " FROM ledger",
    )
    return {
        "keys": keys,
        "holds": sorted(
            (hold.removeprefix(p), name[key_id], amount, instance, bool(wallet))
            for hold, key_id, amount, instance, wallet in holds
            if key_id in name
        ),
        "ledger": sorted(
            (request_id.removeprefix(p), name[key_id], *rest)
            for request_id, key_id, *rest in ledger
            if key_id in name
        ),
    }


def test_a_batch_charges_each_entry_from_what_the_ones_before_it_left(url):
    async def scenario(store: Store) -> None:
        ids = await _batch_setup(store, url, "")
        await store.settle(_batch("", ids))
        costs = {
            row["request_id"]: (row["cost"], row["uncharged"])
            for key in ("A", "B", "U")
            for row in await store.recent_usage(ids[key], 20)
        }
        assert costs == {
            "old": (5, 0),
            "a1": (20, 0),
            "b1": (15, 0),
            "a2": (50, 0),
            "pB": (12, 0),
            "u1": (1000, 0),
            "a3": (25, 15),
            "b2": (23, 7),
            "a4": (0, 3),
        }
        assert (raw_balance(url, ids["A"]), raw_balance(url, ids["B"])) == (0, 0)
        assert wallets(url) == {"wA": 0, "wB": 0}
        assert await store.hold_owners() == {"i1"}  # the per-request hold is released
        a, b, u = [await store.get_key(ids[key]) for key in ("A", "B", "U")]
        assert a is not None and (a.credits, a.spent) == (0, 100)
        assert b is not None and (b.credits, b.spent) == (0, 50)
        assert u is not None and (u.credits, u.spent) == (None, 1000)
        await store.settle(_batch("", ids))  # the whole batch again: a replayed journal
        assert (await store.get_key(ids["U"])) == u
        assert len(await store.recent_usage(ids["A"], 20)) == 5

    run(url, scenario)


def test_a_batch_ends_where_its_entries_settled_one_at_a_time_do(url):
    async def scenario(store: Store) -> None:
        together = await _batch_setup(store, url, "t-")
        alone = await _batch_setup(store, url, "s-")
        await store.settle(_batch("t-", together))
        for one in _batch("s-", alone):
            await store.settle([one])
        assert _batch_state(url, "t-", together) == _batch_state(url, "s-", alone)

    run(url, scenario)
