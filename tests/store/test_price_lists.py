"""The Store contract for upstream price lists and the ledger's upstream ids, on every backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from callmissed.auth import create_key
from callmissed.store import Store
from tests.accounting import postgres_schema
from tests.store.test_store_contract import entry, run


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
        return
    with postgres_schema() as schema_url:
        yield schema_url


def test_a_saved_list_is_loaded_only_if_newer_than_the_copy_in_hand(url):
    async def scenario(store: Store) -> None:
        assert await store.load_price_list("openrouter", 0.0) is None
        await store.save_price_list("openrouter", 100.0, b'{"a/b": {}}')
        assert await store.load_price_list("openrouter", 0.0) == (100.0, b'{"a/b": {}}')
        assert await store.load_price_list("openrouter", 100.0) is None
        await store.save_price_list("openrouter", 200.0, b"{}")
        assert await store.load_price_list("openrouter", 100.0) == (200.0, b"{}")
        assert await store.load_price_list("elsewhere", 0.0) is None

    run(url, scenario)


def test_one_claim_at_a_time_and_only_for_a_stale_list(url):
    async def scenario(store: Store) -> None:
        now = time.time()
        claims = await asyncio.gather(
            *(store.claim_price_refresh("openrouter", now, now + 60, now - 10) for _ in range(8))
        )
        assert claims.count(True) == 1  # a fresh install: one of them fetches
        assert not await store.claim_price_refresh("openrouter", now + 1, now + 61, now - 9)
        # The claim lapses after a failed fetch, and someone tries again.
        assert await store.claim_price_refresh("openrouter", now + 61, now + 121, now + 51)
        await store.save_price_list("openrouter", now + 70, b"{}")  # saving ends the claim
        assert not await store.claim_price_refresh("openrouter", now + 71, now + 131, now + 60)
        assert await store.claim_price_refresh("openrouter", now + 71, now + 131, now + 71)

    run(url, scenario)


def test_the_ledger_keeps_the_upstreams_answer_id(url):
    async def scenario(store: Store) -> None:
        _, key = await create_key(store, "k", 1000)
        row = entry("req_1", key.id, 10)
        row.upstream_id = "gen-1234"
        await store.settle([row, entry("req_2", key.id, 5)])
        ids = {
            usage["request_id"]: usage["upstream_id"]
            for usage in await store.recent_usage(key.id, 5)
        }
        assert ids == {"req_1": "gen-1234", "req_2": None}

    run(url, scenario)
