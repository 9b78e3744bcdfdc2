"""accounting/pricing.py: where each route's price comes from, the hold's worst case, the markup."""

from __future__ import annotations

from decimal import Decimal

import pytest

from callmissed.accounting.price_list import PriceList, parse_model_list
from callmissed.accounting.pricing import (
    DEFAULT_OUTPUT_CAP,
    PriceBook,
    Rates,
    TokenUsage,
    cost_of,
)
from callmissed.providers import REGISTRY
from callmissed.settings import ModelSettings, Prices, ProviderSettings, Route
from tests.fakes.openrouter import OpenRouterSide

PROVIDERS = {
    name: REGISTRY[kind](ProviderSettings(name, kind, "http://127.0.0.1:1/v1"))
    for name, kind in (("openrouter", "openrouter"), ("cloudflare", "cloudflare"), ("sim", "sim"))
}
OPENROUTER = Route("openrouter", "anthropic/claude-opus-4.5")


def book(overrides: dict[str, Prices] | None = None, markup: float = 1.0) -> PriceBook:
    listed = PriceList("openrouter", None, None, 0)  # type: ignore[arg-type]  # no store needed
    listed._adopt(parse_model_list(OpenRouterSide().listing()), 1.0)
    return PriceBook(overrides or {}, PROVIDERS, {"openrouter": listed}, markup)


def vendor(model_id: str) -> ModelSettings:
    return ModelSettings(model_id, (Route("openrouter", model_id),), "passthrough")


def test_a_listed_model_bills_at_its_list_price_and_settles_from_the_reported_cost():
    price = book().price(vendor("anthropic/claude-opus-4.5"))
    assert price is not None
    route = price.route(OPENROUTER)
    assert route.rates == Rates(5_000_000, 5_000_000, 25_000_000)  # $5 / $25 per million
    assert route.reported  # OpenRouter says what it billed: that is what settles
    assert price.output_cap == 64000  # top_provider.max_completion_tokens


def test_a_model_no_source_prices_has_no_price():
    assert book().price(vendor("openai/gpt-9")) is None
    assert book().price(vendor("openrouter/auto")) is None  # "-1": varies by route
    local = ModelSettings("m", (Route("local", "x"),), "passthrough")
    assert book().price(local) is None


def test_the_operators_prices_override_the_list_and_the_reported_cost():
    overrides = {"anthropic/claude-opus-4.5": Prices(1.0, 0.5, 2.0)}
    price = book(overrides).price(vendor("anthropic/claude-opus-4.5"))
    assert price is not None
    assert price.route(OPENROUTER).rates == Rates(1_000_000, 500_000, 2_000_000)
    assert not price.route(OPENROUTER).reported


def test_the_hold_is_the_dearest_route_and_the_dearer_of_each_price_kind():
    """gpt-5.1 on Workers AI at the catalog's price, falling back to OpenRouter's list price:
    whichever answers, the hold covered it."""
    listed = book()._lists["openrouter"]
    listed._prices["openai/gpt-5.1"] = parse_model_list(
        b'{"data": [{"id": "openai/gpt-5.1", "pricing": {"prompt": "0.000001", "completion":'
        b' "0.000001", "input_cache_write": "0.000004", "internal_reasoning": "0.00003",'
        b' "request": "0.001"}, "top_provider": {"max_completion_tokens": 100000}}]}'
    )["openai/gpt-5.1"]
    model = ModelSettings(
        "m",
        (Route("cloudflare", "@cf/x"), Route("openrouter", "openai/gpt-5.1")),
        "mandatory",
        max_output=8192,
        prices=Prices(2.0, 2.0, 10.0),
    )
    price = PriceBook({}, PROVIDERS, {"openrouter": listed}).price(model)
    assert price is not None
    # Every prompt token at the dearest prompt price (it may all be cache writes).
    assert price.hold == Rates(4_000_000, 4_000_000, 30_000_000, None, 1_000_000_000)
    assert price.route(Route("cloudflare", "@cf/x")).rates == Rates(
        2_000_000, 2_000_000, 10_000_000
    )
    assert not price.route(Route("cloudflare", "@cf/x")).reported
    assert price.output_cap == 100000


def test_the_simulator_is_free_and_an_unlisted_route_takes_the_models_own_price():
    sim = ModelSettings("sim/x", (Route("sim", "x"),), "passthrough")
    assert book().price(sim).hold == Rates(0, 0, 0)  # type: ignore[union-attr]
    catalog = ModelSettings(
        "kimi", (Route("openrouter", "moonshotai/kimi"),), "toggle", prices=Prices(0.95, 0.16, 4.0)
    )
    price = book().price(catalog)
    assert price is not None
    assert price.route(catalog.routes[0]).rates == Rates(950_000, 160_000, 4_000_000)
    assert price.route(catalog.routes[0]).reported  # OpenRouter still says what it billed
    assert price.output_cap == DEFAULT_OUTPUT_CAP


@pytest.mark.parametrize("markup", [1.25, 0.9])
def test_the_markup_multiplies_every_price_and_every_reported_cost(markup):
    priced = book(markup=markup)
    price = priced.price(vendor("openai/gpt-5-mini"))
    assert price is not None
    rates = price.route(Route("openrouter", "openai/gpt-5-mini")).rates
    assert rates.output == int(2_000_000 * Decimal(repr(markup)))
    assert priced.reported_cost(0.000123) == round(123 * markup)
    overridden = book({"m": Prices(1.0, 1.0, 1.0)}, markup).price(
        ModelSettings("m", (Route("sim", "x"),), "passthrough")
    )
    assert overridden is not None and overridden.hold.input == int(1_000_000 * markup)


@pytest.mark.parametrize("value", [None, "0.1", True, -0.5, float("nan"), float("inf"), 1e9])
def test_a_reported_cost_that_is_not_a_sane_number_is_not_used(value):
    assert book().reported_cost(value) is None


def test_the_request_fee_is_billed_once_and_only_with_the_request():
    rates = Rates(1_000_000, 1_000_000, 2_000_000, request=50_000_000)  # $0.00005 a request
    usage = TokenUsage(prompt=10, completion=5)
    assert cost_of(rates, usage) == 20
    assert cost_of(rates, usage, per_request=True) == 70


def test_a_new_list_prices_anew():
    priced = book()
    model = vendor("openai/gpt-5-mini")
    assert priced.price(model) is not None
    listed = priced._lists["openrouter"]
    listed._adopt({}, 2.0)  # the next copy no longer lists it
    assert priced.price(model) is None
