"""The Store contract: keys, atomic reservations, idempotent settlement, crashed holds.

Every backend must pass the same tests; the fixture lists them (SQLite here; a server-backed
store joins the parametrization and skips, or fails under CALLMISSED_REQUIRE_SERVICES=1, when
its server is absent).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callmissed.store import KeyPolicy, LedgerEntry, Store, open_store


def _sqlite(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    yield store
    store.close()


@pytest.fixture(params=["sqlite"])
def store(request, tmp_path) -> Iterator[Store]:
    yield from _sqlite(tmp_path)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite3'}"


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


def test_keys_round_trip(store):
    policy = KeyPolicy(rpm=10, tpm=1000, max_concurrent=2, models=("a", "b/c"))
    record = store.create_key("team", "hash1", "cm_abcd", 5_000_000, policy)
    assert record.policy == policy
    assert (record.credits, record.granted, record.spent) == (5_000_000, 5_000_000, 0)
    assert store.find_key("hash1") == record
    assert store.get_key(record.id) == record
    assert store.list_keys() == [record]
    changed = store.set_policy(record.id, KeyPolicy(rpm=1))
    assert changed is not None and changed.policy == KeyPolicy(rpm=1)
    topped = store.topup(record.id, 1)
    assert topped is not None and (topped.credits, topped.granted) == (5_000_001, 5_000_001)
    assert store.revoke_key(record.id)
    assert not store.revoke_key(record.id)
    assert store.topup(record.id, 1) is None  # revoked
    assert store.get_key(999) is None


def test_unlimited_keys_hold_nothing_and_cannot_be_topped_up(store):
    key = store.create_key("free", "h", "cm_x", None)
    held = store.reserve(key.id, "r1", 10**9, "i1", "m")
    assert held.ok and held.balance is None
    assert store.hold_owners() == set()
    assert store.topup(key.id, 5) is None


def test_reserve_takes_the_worst_case_and_refuses_below_zero(store):
    key = store.create_key("k", "h", "cm_x", 100)
    first = store.reserve(key.id, "r1", 60, "i1", "m")
    assert first.ok and first.balance == 40
    second = store.reserve(key.id, "r2", 41, "i1", "m")
    assert not second.ok and second.balance == 40 and not second.revoked
    assert store.reserve(key.id, "r3", 40, "i1", "m").ok  # exactly to zero
    assert store.hold_owners() == {"i1"}
    store.revoke_key(key.id)
    assert store.reserve(key.id, "r4", 0, "i1", "m").revoked
    assert store.reserve(key.id, "r5", 1, "i1", "m").revoked


def test_settle_releases_the_hold_charges_the_cost_and_is_idempotent(store):
    key = store.create_key("k", "h", "cm_x", 100)
    store.reserve(key.id, "r1", 60, "i1", "m")
    store.settle([entry("r1", key.id, 17)])
    store.settle([entry("r1", key.id, 17)])  # a replayed journal
    record = store.get_key(key.id)
    assert record is not None and (record.credits, record.spent) == (83, 17)
    assert store.hold_owners() == set()
    [row] = store.recent_usage(key.id, 10)
    assert (row["request_id"], row["cost"], row["uncharged"]) == ("r1", 17, 0)


def test_settle_never_takes_the_balance_below_zero(store):
    key = store.create_key("k", "h", "cm_x", 100)
    store.reserve(key.id, "r1", 30, "i1", "m")
    store.reserve(key.id, "r2", 70, "i1", "m")
    store.settle([entry("r1", key.id, 50)])  # more than its hold: takes 20 more, all there is
    record = store.get_key(key.id)
    assert record is not None and record.credits == 0
    [row] = store.recent_usage(key.id, 10)
    assert (row["cost"], row["uncharged"]) == (30, 20)
    store.settle([entry("r2", key.id, 10)])
    assert store.get_key(key.id).credits == 60


def test_release_holds_gives_back_a_dead_instance_holds_only(store):
    key = store.create_key("k", "h", "cm_x", 100)
    store.reserve(key.id, "dead-1", 30, "dead", "m")
    store.reserve(key.id, "live-1", 20, "live", "m")
    assert store.release_holds("dead") == 1
    assert store.hold_owners() == {"live"}
    assert store.get_key(key.id).credits == 80
    [row] = store.recent_usage(key.id, 10)
    assert (row["request_id"], row["status"], row["error_code"], row["cost"]) == (
        "dead-1",
        500,
        "interrupted",
        0,
    )
    store.settle([entry("dead-1", key.id, 30)])  # a late settlement of it is a no-op
    assert store.get_key(key.id).credits == 80


def test_concurrent_reservations_from_many_connections_never_overdraw(url):
    # Separate connections (as separate worker processes would have), in real threads:
    # sqlite3 drops the GIL while it works, so these race for real.
    stores = [open_store(url) for _ in range(8)]
    key = stores[0].create_key("k", "h", "cm_x", 1000)
    granted: list[bool] = []

    def worker(store: Store, index: int) -> None:
        for n in range(50):
            granted.append(store.reserve(key.id, f"r{index}-{n}", 7, f"i{index}", "m").ok)

    threads = [threading.Thread(target=worker, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = stores[0].get_key(key.id)
    assert record is not None
    assert granted.count(True) == 1000 // 7
    assert record.credits == 1000 - 7 * (1000 // 7)
    for store in stores:
        store.close()


def test_migrations_apply_once(url):
    first = open_store(url)
    first.create_key("k", "h", "cm_x", 1)
    first.close()
    again = open_store(url)  # nothing to apply, nothing lost
    assert len(again.list_keys()) == 1
    again.close()
