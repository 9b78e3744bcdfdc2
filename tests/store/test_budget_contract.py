"""Budgets that reset, on every store: a window's limit is spent once, whoever spends it.

The stores read the time from a clock the tests move (no waiting for midnight). Each test runs on
SQLite and on PostgreSQL (the `url` fixture, conftest.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable

import pytest

from callmissed.store import Funding, Store, open_store
from tests.accounting import query_url
from tests.store.test_budget import at
from tests.store.test_store_contract import entry, raw_balance, wallets

DAY = 86_400


class Clock:
    """The time every store of a test reads: moved by the test, never by waiting."""

    def __init__(self, now: str) -> None:
        self.now = at(now)

    def __call__(self) -> float:
        return self.now


def run(url: str, clock: Clock, scenario: Callable[[Store], Awaitable[None]]) -> None:
    async def main() -> None:
        store = open_store(url, clock=clock)
        await store.start()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def window(url: str, key_id: int) -> tuple[int, float, int]:
    """The key's raw balance, window start and window spend, as stored."""
    [row] = query_url(
        url, "SELECT credits, window_start, window_spent FROM api_keys WHERE id = ?", key_id
    )
    return int(row[0]), float(row[1]), int(row[2])


def unspent(url: str, key_id: int) -> int:
    """The balance plus every hold of the key: its window's budget not settled yet."""
    rows = query_url(url, "SELECT amount FROM holds WHERE key_id = ?", key_id)
    return raw_balance(url, key_id) + sum(int(amount) for (amount,) in rows)


def test_a_daily_limit_is_spent_once_a_day(url):
    clock = Clock("2026-03-11T15:00:00")

    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 1000, limit_reset="daily")
        assert (key.limit_reset, key.window_start) == ("daily", at("2026-03-11T00:00:00"))
        assert await store.fund(key.id, "w1", 1000, 1000, "i1") == Funding(1000, 0)
        await store.settle([entry("r1", key.id, 700, wallet="w1")])
        assert await store.give_back("w1") == 300
        assert await store.fund(key.id, "w1", 400, 400, "i1") == Funding(0, 300)
        clock.now = at("2026-03-11T23:59:59.999")
        assert await store.fund(key.id, "w1", 400, 400, "i1") == Funding(0, 300)

        clock.now = at("2026-03-12T00:00:00")  # a new day: the whole limit again, not 1300
        record = await store.get_key(key.id)
        assert record is not None
        assert (record.credits, record.granted, record.spent) == (1000, 1000, 700)
        assert await store.fund(key.id, "w1", 1000, 1000, "i1") == Funding(1000, 0)
        assert window(url, key.id) == (0, at("2026-03-12T00:00:00"), 0)
        await store.settle([entry("r2", key.id, 1000, wallet="w1")])
        assert await store.fund(key.id, "w2", 1, 1, "i2") == Funding(0, 0)
        record = await store.get_key(key.id)
        assert record is not None and (record.credits, record.spent) == (0, 1700)
        assert (record.window_start, record.window_spent) == (at("2026-03-12T00:00:00"), 1000)

    run(url, clock, scenario)


@pytest.mark.parametrize(
    ("limit_reset", "before", "after"),
    [
        ("weekly", "2026-03-15T23:59:59", "2026-03-16T00:00:00"),  # Sunday night -> Monday
        ("monthly", "2026-03-31T23:59:59", "2026-04-01T00:00:00"),
    ],
)
def test_weekly_and_monthly_limits_reset_on_monday_and_on_the_first(
    url, limit_reset, before, after
):
    clock = Clock("2026-03-11T09:00:00")

    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 500, limit_reset=limit_reset)
        assert await store.fund(key.id, "w1", 500, 500, "i1") == Funding(500, 0)
        await store.settle([entry("r1", key.id, 500, wallet="w1")])
        clock.now = at(before)
        assert await store.fund(key.id, "w1", 1, 1, "i1") == Funding(0, 0)
        clock.now = at(after)
        assert await store.fund(key.id, "w1", 500, 500, "i1") == Funding(500, 0)
        assert window(url, key.id)[1] == at(after)

    run(url, clock, scenario)


def test_a_request_in_flight_at_the_boundary_is_charged_to_the_new_window(url):
    """Its hold was taken in the old window; what a wallet holds when the window rolls counts
    against the new one, and the cost comes out of it when the request is settled."""
    clock = Clock("2026-03-11T23:59:00")

    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 1000, limit_reset="daily")
        assert await store.fund(key.id, "w1", 400, 400, "i1") == Funding(400, 600)
        await store.settle([entry("r1", key.id, 100, wallet="w1")])  # yesterday's
        clock.now = at("2026-03-12T00:00:30")
        await store.settle([entry("r2", key.id, 150, wallet="w1")])  # began yesterday
        assert window(url, key.id) == (700, at("2026-03-12T00:00:00"), 150)
        assert wallets(url) == {"w1": 150}
        record = await store.get_key(key.id)
        assert record is not None and (record.credits, record.spent) == (850, 250)
        # What a settlement cannot take from the wallet comes from the new window's balance.
        await store.settle([entry("r3", key.id, 300, wallet="w1")])
        assert window(url, key.id) == (550, at("2026-03-12T00:00:00"), 450)
        assert unspent(url, key.id) + 450 == 1000

    run(url, clock, scenario)


def test_a_settlement_is_what_rolls_a_key_nobody_funded_since_the_boundary(url):
    clock = Clock("2026-03-11T12:00:00")

    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 100, limit_reset="daily")
        await store.settle([entry("r1", key.id, 100)])  # drained, with no hold at all
        await store.settle([entry("r2", key.id, 10)])
        clock.now += DAY
        await store.settle([entry("r3", key.id, 10)])
        rows = {row["request_id"]: row for row in await store.recent_usage(key.id, 10)}
        assert [(rows[r]["cost"], rows[r]["uncharged"]) for r in ("r1", "r2", "r3")] == [
            (100, 0),
            (0, 10),
            (10, 0),
        ]
        assert window(url, key.id) == (90, at("2026-03-12T00:00:00"), 10)

    run(url, clock, scenario)


def test_a_limit_reset_switched_on_counts_today_and_switched_off_keeps_what_is_left(url):
    clock = Clock("2026-03-11T12:00:00")

    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 1000)
        assert key.limit_reset is None and key.window_start is None
        yesterday = dataclasses.replace(entry("r1", key.id, 300), created_at=clock.now - DAY)
        await store.settle([yesterday, entry("r2", key.id, 200)])
        assert await store.fund(key.id, "w1", 100, 100, "i1") == Funding(100, 400)

        daily = await store.set_limit_reset(key.id, "daily")
        assert daily is not None and daily.limit_reset == "daily"
        assert (daily.credits, daily.granted, daily.window_spent) == (800, 1000, 200)
        assert window(url, key.id) == (700, at("2026-03-11T00:00:00"), 200)
        monthly = await store.set_limit_reset(key.id, "monthly")
        assert monthly is not None and (monthly.credits, monthly.window_spent) == (500, 500)
        assert monthly.window_start == at("2026-03-01T00:00:00")

        await store.settle([entry("r3", key.id, 50, wallet="w1")])
        never = await store.set_limit_reset(key.id, None)  # 450 left: for good
        assert never is not None and never.limit_reset is None
        assert (never.credits, never.granted, never.spent) == (450, 1000, 550)
        assert query_url(url, "SELECT window_start, window_spent FROM api_keys") == [(None, 0)]
        assert await store.set_limit_reset(12345, "daily") is None
        unlimited = await store.create_key("u", "h2", "cm_y", None)
        with pytest.raises(ValueError, match="unlimited"):
            await store.set_limit_reset(unlimited.id, "daily")
        with pytest.raises(ValueError, match="unlimited"):
            await store.create_key("u2", "h3", "cm_z", None, limit_reset="daily")

    run(url, clock, scenario)


def test_spent_since_sums_the_ledger_from_each_start(url):
    clock = Clock("2026-03-11T12:00:00")

    async def scenario(store: Store) -> None:
        key = await store.create_key("k", "h", "cm_x", 1000)
        dated = [
            ("a", 5 * DAY, 1),  # Friday 6 March: this month, last week
            ("b", DAY, 10),  # Tuesday: this week
            ("c", 0, 100),  # today
            ("d", 40 * DAY, 1000),  # January
        ]
        await store.settle(
            [
                dataclasses.replace(entry(name, key.id, cost), created_at=clock.now - ago)
                for name, ago, cost in dated
            ]
        )
        day, week, month = (at(f"2026-03-{d}T00:00:00") for d in ("11", "09", "01"))
        assert await store.spent_since(key.id, [day, week, month]) == [100, 110, 111]
        assert await store.spent_since(key.id, [clock.now + 1]) == [0]

    run(url, clock, scenario)


def test_processes_racing_across_midnights_never_spend_a_window_twice(url):
    """Eight stores (as eight workers or replicas), each in its own thread and event loop,
    drain one daily key's window, cross midnight together, and drain the next one: four days.
    Any roll that two of them could both apply would leave more than the limit to spend."""
    clock = Clock("2026-03-11T23:00:00")
    created: list[int] = []

    async def create(store: Store) -> None:
        created.append((await store.create_key("k", "h", "cm_x", 300, limit_reset="daily")).id)

    run(url, clock, create)
    key_id = created[0]
    midnight = threading.Barrier(8, action=lambda: setattr(clock, "now", clock.now + DAY))
    settled = [[0] * 4 for _ in range(8)]  # per store, per day: requests settled

    async def spend(store: Store, index: int) -> None:
        wallet, free = f"w{index}", 0  # what the wallet holds that no request used yet
        for day in range(4):
            if day:
                await asyncio.to_thread(midnight.wait)
            while True:
                if free < 3:  # as a worker does: top up only when the wallet runs short
                    funding = await store.fund(key_id, wallet, 3 - free, 7, f"i{index}")
                    if not funding.taken:
                        break
                    free += funding.taken
                free -= 3
                n = settled[index][day]
                await store.settle([entry(f"r{index}-{day}-{n}", key_id, 3, wallet=wallet)])
                settled[index][day] = n + 1

    threads = [
        threading.Thread(target=run, args=(url, clock, lambda store, i=i: spend(store, i)))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    days = [sum(counts[day] for counts in settled) for day in range(4)]
    balance, start, window_spent = window(url, key_id)
    assert start == at("2026-03-14T00:00:00")
    assert window_spent == 3 * days[3] <= 300  # what the last day charged, once
    assert unspent(url, key_id) + window_spent == 300
    assert 0 <= balance < 3  # each day was drained: nothing refused while 3 was there
    assert all(3 * count >= 300 - 8 * 7 for count in days)

    async def check(store: Store) -> None:
        record = await store.get_key(key_id)
        assert record is not None
        assert record.spent == 3 * sum(days)
        assert record.credits == 300 - window_spent

    run(url, clock, check)
