"""What a request may cost and what it did: integer prices from every source, and usage priced.

Money is integer micro-credits (1 credit = 1 USD); a price is an integer in 1e-12 credits per token,
so a cost is computed exactly and rounded once. Where a route's price comes from, first match wins
(docs/credits.md): the config file's `[prices]`; the upstream's published list (price_list.py) for
a route to a provider that publishes one; the model's own `prices` (catalog.toml, `[models.X]`);
the in-process simulator is free. A route to an upstream that reports what it billed
(`usage.cost`, OpenRouter) is settled from that report. The markup multiplies all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from callmissed.accounting.price_list import ListedPrice, PriceList
from callmissed.providers import Provider
from callmissed.settings import ModelSettings, Prices, Route
from callmissed.store import MAX_BALANCE

__all__ = [
    "DEFAULT_OUTPUT_CAP",
    "FREE",
    "MICRO",
    "ModelPrice",
    "PriceBook",
    "Rates",
    "RoutePrice",
    "TokenUsage",
    "cost_of",
    "format_credits",
    "parse_credits",
    "parse_usage",
    "rates_of",
]

MICRO = 1_000_000  # micro-credits per credit (USD)
DEFAULT_OUTPUT_CAP = 32_768  # output tokens assumed when neither the client nor a source says
_SCALE = 1_000_000  # rate units per micro-credit: a rate is 1e-12 credits per token
_PER_USD = Decimal(10**12)  # rate units per USD
_MAX_REPORTED = Decimal(1_000_000)  # USD: a reported cost above this is garbage


@dataclass(frozen=True, slots=True)
class Rates:
    """Integer prices, in 1e-12 credits per token (numerically: micro-USD per million tokens).
    `cache_write` None: prompt tokens written to the upstream's cache bill as input; `request`
    is a fixed fee per request in the same unit."""

    input: int
    cached_input: int
    output: int
    cache_write: int | None = None
    request: int = 0


FREE = Rates(0, 0, 0)


def rates_of(prices: Prices, markup: Decimal = Decimal(1)) -> Rates:
    """An operator's or the catalog's prices (USD per million tokens) as Rates."""
    input_rate, output_rate = _rate(prices.input, markup), _rate(prices.output, markup)
    write = None if prices.cache_write is None else _rate(prices.cache_write, markup)
    return Rates(input_rate, _rate(prices.cached_input, markup), output_rate, write)


def _rate(per_million: float, markup: Decimal) -> int:
    # repr() gives the decimal the operator typed (0.0605, not its binary approximation).
    return _units(Decimal(repr(per_million)) * _SCALE * markup)


def _units(exact: Decimal) -> int:
    return int(exact.to_integral_value(ROUND_HALF_UP))


# Not frozen: one or more is made per request, and a frozen dataclass is ~5x slower to make.
@dataclass(slots=True)
class TokenUsage:
    prompt: int = 0
    completion: int = 0  # includes reasoning
    reasoning: int = 0
    cached: int = 0  # part of prompt: read from the upstream's prompt cache
    cache_write: int = 0  # part of prompt: written to it

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def parse_usage(usage: Mapping[str, Any]) -> TokenUsage:
    """An OpenAI usage object (docs/credits.md), chat's or the Responses API's (which names its
    fields input_/output_tokens), or Anthropic's (its cache fields tell it apart: without
    them it reads the same); missing or odd fields count as 0. Cache reads
    (`prompt_tokens_details.cached_tokens`) and writes (`cache_write_tokens`, as OpenRouter
    reports them) are parts of prompt_tokens."""
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        return _parse_messages_usage(usage)
    if "input_tokens" in usage:
        return _parse_responses_usage(usage)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    reasoning = _count(completion_details.get("reasoning_tokens"))
    return TokenUsage(
        prompt=_count(usage.get("prompt_tokens")),
        # completion_tokens includes reasoning by the spec; never bill less than the reasoning.
        completion=max(_count(usage.get("completion_tokens")), reasoning),
        reasoning=reasoning,
        cached=_count(prompt_details.get("cached_tokens")),
        cache_write=_count(prompt_details.get("cache_write_tokens")),
    )


def _parse_messages_usage(usage: Mapping[str, Any]) -> TokenUsage:
    """Anthropic's Messages usage (providers/anthropic.py): its input_tokens leave out the cache
    reads and writes, which are counted, and billed, apart."""
    read = _count(usage.get("cache_read_input_tokens"))
    write = _count(usage.get("cache_creation_input_tokens"))
    return TokenUsage(
        prompt=_count(usage.get("input_tokens")) + read + write,
        completion=_count(usage.get("output_tokens")),
        cached=read,
        cache_write=write,
    )


def _parse_responses_usage(usage: Mapping[str, Any]) -> TokenUsage:
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    reasoning = _count(output_details.get("reasoning_tokens"))
    return TokenUsage(
        prompt=_count(usage.get("input_tokens")),
        completion=max(_count(usage.get("output_tokens")), reasoning),
        reasoning=reasoning,
        cached=_count(input_details.get("cached_tokens")),
    )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def cost_of(rates: Rates, usage: TokenUsage, *, per_request: bool = False) -> int:
    """Micro-credits for `usage` (and the request fee if `per_request`): computed exactly,
    rounded to the nearest, halves up."""
    cached = min(usage.cached, usage.prompt)
    written = min(usage.cache_write, usage.prompt - cached)
    write_rate = rates.input if rates.cache_write is None else rates.cache_write
    exact = (
        (usage.prompt - cached - written) * rates.input
        + cached * rates.cached_input
        + written * write_rate
        + usage.completion * rates.output
    )
    if per_request:
        exact += rates.request
    return (exact + _SCALE // 2) // _SCALE


def parse_credits(value: object) -> int:
    """USD as typed by a person ("5", 2.5) -> micro-credits; ValueError unless a number from 0
    to MAX_BALANCE's billion USD with at most six decimals."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("credits must be a number of USD")
    try:
        amount = Decimal(value if isinstance(value, str) else repr(value)) * MICRO
    except ArithmeticError:
        raise ValueError(f"credits must be a number of USD, got {value!r}") from None
    if not amount.is_finite() or amount < 0 or amount != amount.to_integral_value():
        raise ValueError(f"credits must be >= 0 with at most 6 decimals, got {value!r}")
    if amount > MAX_BALANCE:
        raise ValueError(f"credits may be at most {MAX_BALANCE // MICRO:,} USD, got {value!r}")
    return int(amount)


def format_credits(micro: int | None) -> float | None:
    """Credits (USD) as a JSON number, like OpenRouter's `usage.cost`."""
    return None if micro is None else micro / MICRO


@dataclass(frozen=True, slots=True)
class RoutePrice:
    """How a request answered by one route is billed."""

    rates: Rates
    reported: bool  # settle from the upstream's usage.cost (x markup) when it sends one


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A model's prices: what a request holds before it is routed, and how each route bills.

    `hold` is the dearest of its routes, part by part (prompt tokens at the dearer of input and
    cache writes, output at the dearer of output and reasoning), so that whichever route answers
    the hold covers it. `output_cap` is what an upstream may write when the client sets no limit."""

    hold: Rates
    routes: Mapping[Route, RoutePrice]
    output_cap: int
    unrouted: RoutePrice  # how a request bills before a route answers: at the hold's rates

    def route(self, route: Route) -> RoutePrice:
        """How `route` bills; a route it does not know at the hold's rates."""
        return self.routes.get(route) or self.unrouted


class PriceBook:
    """Every model's ModelPrice, from the sources in the module docstring; computed once per
    model and price-list copy, then read from memory."""

    def __init__(
        self,
        overrides: Mapping[str, Prices],
        providers: Mapping[str, Provider],
        lists: Mapping[str, PriceList],
        markup: float = 1.0,
    ) -> None:
        self._overrides = overrides
        self._providers = providers
        self._lists = lists  # by provider name
        self._watched = tuple(lists.values())
        self.markup = Decimal(repr(markup))
        self._cache: dict[str, ModelPrice | None] = {}
        self._generation = 0  # of the lists' copies, summed: a new copy prices anew

    def price(self, model: ModelSettings) -> ModelPrice | None:
        """The model's prices; None if a route of it has none (keys with a credit limit may not
        use it)."""
        generation = 0
        for price_list in self._watched:  # a loop, not sum(): this runs for every request
            generation += price_list.generation
        if generation != self._generation:
            self._generation = generation
            self._cache.clear()
        cache = self._cache
        name = model.name
        if name not in cache:
            if len(cache) > 10_000:  # any vendor/model id routes to OpenRouter
                cache.clear()
            cache[name] = self._price(model)
        return cache[name]

    def unpriced(self, model: ModelSettings) -> ModelPrice:
        """A model no source prices, for keys without a credit limit: it holds nothing, and
        costs what an upstream that reports its costs billed (else nothing)."""
        routes = {route: RoutePrice(FREE, self._reports(route)) for route in model.routes}
        return ModelPrice(FREE, routes, model.max_output or DEFAULT_OUTPUT_CAP, _UNROUTED_FREE)

    def listed(self, model: ModelSettings) -> list[PriceList]:
        """The price lists that could price this model's routes."""
        return [self._lists[r.provider] for r in model.routes if r.provider in self._lists]

    def bill(self, billing: RoutePrice, usage: Mapping[str, Any]) -> tuple[TokenUsage, int]:
        """An upstream's usage object, priced: its tokens, and what they cost — what the
        upstream reported it billed (markup included) if the route says to trust that, else the
        tokens at the route's prices, with its request fee."""
        tokens = parse_usage(usage)
        cost = self.reported_cost(usage.get("cost")) if billing.reported else None
        if cost is None:
            cost = cost_of(billing.rates, tokens, per_request=True)
        return tokens, cost

    def reported_cost(self, value: Any) -> int | None:
        """An upstream's `usage.cost` (USD) in micro-credits, markup included; None if it is not
        a sane number."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        try:
            usd = Decimal(repr(value))
        except InvalidOperation:
            return None
        if not usd.is_finite() or not 0 <= usd <= _MAX_REPORTED:
            return None
        return _units(usd * MICRO * self.markup)

    def _price(self, model: ModelSettings) -> ModelPrice | None:
        override = self._overrides.get(model.name)
        routes: dict[Route, RoutePrice] = {}
        worst: list[Rates] = []
        caps: list[int] = []
        for route in model.routes:
            listed = self._listed(route)
            if override is not None:
                rates = rates_of(override, self.markup)
            elif listed is not None:
                rates = self._listed_rates(listed)
            elif model.prices is not None:
                rates = rates_of(model.prices, self.markup)
            elif self._is_simulated(route):
                rates = FREE
            else:
                return None
            worst_rates = _dearest(rates, listed if override is None else None, self.markup)
            routes[route] = RoutePrice(rates, override is None and self._reports(route))
            worst.append(worst_rates)
            listed_cap = listed and (listed.max_output or listed.context)
            caps.append(listed_cap or model.max_output or DEFAULT_OUTPUT_CAP)
        if not routes:
            return None
        hold = Rates(
            max(r.input for r in worst),
            max(r.cached_input for r in worst),
            max(r.output for r in worst),
            None,
            max(r.request for r in worst),
        )
        return ModelPrice(hold, routes, max(caps), RoutePrice(hold, False))

    def _listed(self, route: Route) -> ListedPrice | None:
        price_list = self._lists.get(route.provider)
        return None if price_list is None else price_list.get(route.upstream_model)

    def _listed_rates(self, listed: ListedPrice) -> Rates:
        """A listed price as the route bills it."""
        prompt = _per_token(listed.prompt, self.markup)
        cached = prompt if listed.cache_read is None else _per_token(listed.cache_read, self.markup)
        write = None if listed.cache_write is None else _per_token(listed.cache_write, self.markup)
        output = _per_token(listed.completion, self.markup)
        return Rates(prompt, cached, output, write, _per_token(listed.request, self.markup))

    def _reports(self, route: Route) -> bool:
        provider = self._providers.get(route.provider)
        return provider is not None and provider.reports_cost

    def _is_simulated(self, route: Route) -> bool:
        provider = self._providers.get(route.provider)
        return provider is not None and provider.transport == "simulator"


_UNROUTED_FREE = RoutePrice(FREE, False)


def _per_token(usd: Decimal | None, markup: Decimal) -> int:
    return 0 if usd is None else _units(usd * _PER_USD * markup)


def _dearest(rates: Rates, listed: ListedPrice | None, markup: Decimal) -> Rates:
    """`rates` at their dearest, for a hold: every prompt token at the dearest prompt price
    (it may all be cache writes), output at the dearer of output and internal reasoning."""
    prompt = max(rates.input, rates.cached_input, rates.cache_write or 0)
    output = rates.output
    if listed is not None and listed.reasoning is not None:
        output = max(output, _per_token(listed.reasoning, markup))
    return Rates(prompt, prompt, output, None, rates.request)
