"""accounting/price_list.py: OpenRouter's model list read, bounded, checked, kept in the store,
refreshed by one process, and never replaced by a failed or garbled fetch."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from callmissed.accounting.price_list import (
    MAX_LIST_BYTES,
    MAX_MODELS,
    ListedPrice,
    PriceList,
    PriceListError,
    decode_prices,
    encode_prices,
    parse_model_list,
)
from callmissed.store import open_store
from tests.fakes.openrouter import OpenRouterSide


def _listing(*entries: object) -> bytes:
    return orjson.dumps({"data": list(entries)})


def test_prices_are_read_as_the_decimals_openrouter_writes():
    prices = parse_model_list(OpenRouterSide().listing())
    assert prices["openai/gpt-5.1"] == ListedPrice(
        prompt=Decimal("0.00000125"),
        completion=Decimal("0.00001"),
        cache_read=Decimal("0.000000125"),
        request=Decimal(0),
        context=200000,
    )
    assert prices["anthropic/claude-opus-4.5"].max_output == 64000
    assert prices["metered/fee"].request == Decimal("0.00005")


@pytest.mark.parametrize(
    "pricing",
    [
        {"prompt": "-1", "completion": "-1"},  # a router: what it costs depends on the route
        {"prompt": "0.000001"},  # no completion price
        {"prompt": "soon", "completion": "0.000002"},
        {"prompt": "NaN", "completion": "0.000002"},
        {"prompt": "1e999", "completion": "0.000002"},
        {"prompt": "2", "completion": "0.000002"},  # $2M per million tokens: garbage
        {"prompt": True, "completion": "0.000002"},
        {"prompt": "0." + "0" * 50 + "1", "completion": "0.000002"},  # too long to be a price
        "n/a",
    ],
)
def test_a_model_without_a_usable_price_is_left_out(pricing):
    body = _listing(
        {"id": "x/unpriced", "pricing": pricing},
        {"id": "x/priced", "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
    )
    assert list(parse_model_list(body)) == ["x/priced"]


def test_an_optional_price_that_does_not_read_leaves_the_model_priced():
    pricing = {"prompt": "0.000001", "completion": "0.000002", "input_cache_read": "varies"}
    [(model_id, price)] = parse_model_list(_listing({"id": "x/y", "pricing": pricing})).items()
    assert (model_id, price.cache_read) == ("x/y", None)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"data": {}}',
        _listing(),  # prices nothing at all: a broken list, not a free-for-all
        _listing({"id": "x/y", "pricing": {"prompt": "-1", "completion": "-1"}}),
        _listing({"id": "x" * 300, "pricing": {"prompt": "0", "completion": "0"}}),
        _listing("not an object", {"pricing": {"prompt": "0", "completion": "0"}}),
    ],
)
def test_a_list_we_cannot_use_is_refused_whole(body):
    with pytest.raises(PriceListError):
        parse_model_list(body)


def test_what_is_read_is_bounded():
    with pytest.raises(PriceListError):
        parse_model_list(b" " * (MAX_LIST_BYTES + 1))
    many = [
        {"id": f"v/m{n}", "pricing": {"prompt": "0.000001", "completion": "0.000002"}}
        for n in range(MAX_MODELS + 10)
    ]
    assert len(parse_model_list(_listing(*many))) == MAX_MODELS


def test_the_stored_form_reads_back_exactly():
    prices = parse_model_list(OpenRouterSide().listing())
    assert decode_prices(encode_prices(prices)) == prices
    with pytest.raises(PriceListError):
        decode_prices(b'{"x/y": {"completion": "1"}}')


def test_a_variant_costs_what_its_model_does_unless_listed_itself():
    async def main() -> None:
        prices = PriceList("openrouter", None, None, 0)  # type: ignore[arg-type]
        prices._adopt(parse_model_list(OpenRouterSide().listing()), 1.0)
        assert prices.get("openai/gpt-5.1:nitro") == prices.get("openai/gpt-5.1")
        assert prices.get("openai/gpt-9") is None

    asyncio.run(main())


class _Network:
    """Stands in for the upstream's GET /models: a body, or a failure."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.fetches = 0
        self.failing = False

    async def fetch(self) -> bytes:
        self.fetches += 1
        await asyncio.sleep(0.01)
        if self.failing:
            raise OSError("unreachable")
        return self.body


def test_one_fetch_among_processes_and_the_rest_read_the_stored_copy(tmp_path: Path):
    network = _Network(OpenRouterSide().listing())

    async def main() -> None:
        stores = [open_store(f"sqlite:///{tmp_path / 'db.sqlite3'}") for _ in range(4)]
        lists = [PriceList("openrouter", store, network.fetch, 3600) for store in stores]
        await asyncio.gather(*(prices.refresh() for prices in lists))
        assert network.fetches == 1
        await asyncio.gather(*(prices.refresh() for prices in lists))  # the others adopt it
        assert network.fetches == 1
        assert all(prices.get("openai/gpt-5.1") is not None for prices in lists)
        for store in stores:
            await store.close()

    asyncio.run(main())


def _lapse_claims(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE price_lists SET claimed_until = 0")


def test_a_failed_or_garbled_refresh_changes_nothing_and_a_restart_still_prices(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    network = _Network(OpenRouterSide().listing())

    async def main() -> None:
        store = open_store(url)
        prices = PriceList("openrouter", store, network.fetch, 0.05)
        await prices.refresh()
        good = prices.generation
        for fetches, trouble in enumerate(("down", "garbled"), start=2):
            network.failing = trouble == "down"
            network.body = b'{"data": []}'
            await asyncio.sleep(0.06)  # stale: due for a fetch
            await prices.refresh()
            assert network.fetches == fetches
            assert prices.generation == good
            assert prices.get("openai/gpt-5.1") is not None
            _lapse_claims(tmp_path / "db.sqlite3")  # as a minute would
        await store.close()
        restarted = open_store(url)  # a new process, with no network at all
        offline = PriceList("openrouter", restarted, None, 3600)
        await offline.start()
        assert offline.get("openai/gpt-5.1") is not None
        assert await offline.wait_listed(0.1)
        await offline.close()
        await restarted.close()

    asyncio.run(main())
