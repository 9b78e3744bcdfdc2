"""An upstream's published prices (OpenRouter's `GET /models`), kept current off the request path.

Each process reads its copy from memory. The list is fetched at start-up and then every
`[pricing] refresh` seconds by one process of the whole deployment: it claims the refresh in the
store (one atomic statement), fetches, checks and saves the list there; the others pick the saved
copy up on their next look. The store keeps the last good copy, so a restart without the network
still prices, and a fetch that fails or brings garbage changes nothing. What is read is bounded
(bytes, models, field sizes): the upstream is trusted for its prices, not for its behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from callmissed.store import Store

__all__ = [
    "MAX_LIST_BYTES",
    "MAX_MODELS",
    "ListedPrice",
    "PriceList",
    "PriceListError",
    "decode_prices",
    "encode_prices",
    "parse_model_list",
]

log = logging.getLogger("callmissed")

MAX_LIST_BYTES = 16 * 1024 * 1024  # OpenRouter's whole list is ~1 MB today
MAX_MODELS = 20_000  # priced models kept from one list (~400 today)
_MAX_ID = 256  # characters in a model id
_MAX_PRICE = Decimal(1)  # USD per token ($1M per million tokens): anything dearer is garbage
_MAX_TOKENS = 100_000_000  # a context or output limit above this is garbage
FETCH_TIMEOUT = 30.0  # seconds one fetch may take, connection included
_RETRY_AFTER = 60.0  # seconds before anyone tries again after a failed fetch
_LOOK_EVERY = 60.0  # seconds between looks for a copy another process saved
_LOOK_EVERY_EMPTY = 1.0  # ... while this process has none at all

# OpenRouter's `pricing` fields read, as the names ListedPrice gives them.
_FIELDS = {
    "prompt": "prompt",
    "completion": "completion",
    "input_cache_read": "cache_read",
    "input_cache_write": "cache_write",
    "internal_reasoning": "reasoning",
    "request": "request",
}


class PriceListError(ValueError):
    """The list is not one we can use: the previous copy stays."""


@dataclass(frozen=True, slots=True)
class ListedPrice:
    """One model's published prices, USD per token (per request for `request`), as decimals."""

    prompt: Decimal
    completion: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None  # internal reasoning tokens, where priced apart
    request: Decimal = Decimal(0)
    max_output: int | None = None  # top_provider.max_completion_tokens
    context: int | None = None  # context_length


def parse_model_list(body: bytes) -> dict[str, ListedPrice]:
    """The priced models of an OpenRouter-shaped `{"data": [{id, pricing, ...}]}` body.

    Models without a usable price (a router's "-1", text that is not a decimal, a price past
    $1 a token) are left out; raise PriceListError if the body is too large, not that shape,
    or prices nothing at all."""
    if len(body) > MAX_LIST_BYTES:
        raise PriceListError(f"the model list is larger than {MAX_LIST_BYTES} bytes")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PriceListError("the model list is not JSON") from None
    models = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(models, list):
        raise PriceListError("the model list has no `data` array")
    prices: dict[str, ListedPrice] = {}
    for entry in models:
        if len(prices) >= MAX_MODELS:
            log.warning("prices: the model list prices more than %d models; kept those", MAX_MODELS)
            break
        if not isinstance(entry, dict):
            continue
        model_id = entry.get("id")
        if isinstance(model_id, str) and 0 < len(model_id) <= _MAX_ID:
            price = _listed(entry)
            if price is not None:
                prices[model_id] = price
    if not prices:
        raise PriceListError("the model list prices no model")
    return prices


def _listed(entry: Mapping[str, Any]) -> ListedPrice | None:
    pricing = entry.get("pricing")
    if not isinstance(pricing, dict):
        return None
    values: dict[str, Any] = {}
    for field, name in _FIELDS.items():
        if field in pricing:
            value = _price(pricing[field])
            if value is None:
                if name in ("prompt", "completion"):
                    return None  # "-1" (varies by route) or garbage: not a price we can hold
                continue  # an optional part we cannot read: the prompt/completion price stands
            values[name] = value
    if "prompt" not in values or "completion" not in values:
        return None
    top = entry.get("top_provider")
    if isinstance(top, dict):
        values["max_output"] = _tokens(top.get("max_completion_tokens"))
    values["context"] = _tokens(entry.get("context_length"))
    return ListedPrice(**values)


def _price(value: Any) -> Decimal | None:
    """A price as OpenRouter writes it (a decimal string; a number is taken too), if sane."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = value if isinstance(value, str) else repr(value)
    if len(text) > 40:
        return None
    try:
        price = Decimal(text)
    except InvalidOperation:
        return None
    if not price.is_finite() or price < 0 or price > _MAX_PRICE:
        return None
    return price


def _tokens(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_TOKENS:
        return value
    return None


def encode_prices(prices: Mapping[str, ListedPrice]) -> bytes:
    """The checked list as the store keeps it: decimals as text, so nothing is rounded."""
    return orjson.dumps(
        {
            model_id: {
                key: (str(value) if isinstance(value, Decimal) else value)
                for key, value in (
                    ("prompt", price.prompt),
                    ("completion", price.completion),
                    ("cache_read", price.cache_read),
                    ("cache_write", price.cache_write),
                    ("reasoning", price.reasoning),
                    ("request", price.request),
                    ("max_output", price.max_output),
                    ("context", price.context),
                )
                if value is not None
            }
            for model_id, price in prices.items()
        }
    )


def decode_prices(body: bytes) -> dict[str, ListedPrice]:
    """encode_prices() read back; raise PriceListError if it does not read."""
    try:
        stored = orjson.loads(body)
        return {model_id: _stored(fields) for model_id, fields in stored.items()}
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError, InvalidOperation) as exc:
        raise PriceListError(f"the stored price list does not read: {exc!r}") from None


def _stored(fields: Mapping[str, Any]) -> ListedPrice:
    def decimal(name: str) -> Decimal | None:
        value = fields.get(name)
        return None if value is None else Decimal(value)

    prompt, completion = decimal("prompt"), decimal("completion")
    if prompt is None or completion is None:
        raise KeyError("prompt" if prompt is None else "completion")
    return ListedPrice(
        prompt=prompt,
        completion=completion,
        cache_read=decimal("cache_read"),
        cache_write=decimal("cache_write"),
        reasoning=decimal("reasoning"),
        request=decimal("request") or Decimal(0),
        max_output=fields.get("max_output"),
        context=fields.get("context"),
    )


class PriceList:
    """One upstream's prices in this process; see the module docstring.

    `generation` changes whenever the copy does, so that a cache of prices computed from it
    (pricing.PriceBook) knows to start over. start() loads the stored copy and starts the loop
    that keeps it current; close() stops it.
    """

    def __init__(
        self,
        source: str,
        store: Store,
        fetch: Callable[[], Awaitable[bytes]] | None,
        every: float,
    ) -> None:
        self.source = source
        self._store = store
        self._fetch = fetch if every > 0 else None
        self._every = every
        self._prices: dict[str, ListedPrice] = {}
        self.fetched_at = 0.0  # when the copy in use was fetched (by whichever process)
        self.generation = 0
        self._listed = asyncio.Event()  # set once there is a copy
        # Set once there is a copy, or none is on its way (our fetch failed, or none is allowed):
        # until then a request for a model only the list can price may wait for it.
        self._settled = asyncio.Event()
        self._waited_out = False  # a request waited for a first copy in vain: nobody waits again
        self._task: asyncio.Task[None] | None = None

    def get(self, model_id: str) -> ListedPrice | None:
        """The listed price of an upstream model id; a variant (`vendor/model:nitro`) that is
        not listed itself costs what its model does."""
        price = self._prices.get(model_id)
        if price is None and ":" in model_id:
            price = self._prices.get(model_id.partition(":")[0])
        return price

    def __len__(self) -> int:
        return len(self._prices)

    async def start(self) -> None:
        """Adopt the stored copy, if any, then keep it current in the background."""
        with contextlib.suppress(Exception):
            await self._adopt_stored()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"prices-{self.source}"
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    async def wait_listed(self, seconds: float) -> bool:
        """Whether there is a copy, waiting up to `seconds` for a first one while a fetch (by
        this process or another) may still bring it; once a wait was in vain, no more waits."""
        if self._listed.is_set():
            return True
        if not self._waited_out:
            try:
                async with asyncio.timeout(seconds):
                    await self._settled.wait()
            except TimeoutError:
                self._waited_out = True
        return self._listed.is_set()

    async def refresh(self) -> None:
        """One look: adopt a newer stored copy; if the copy is stale, claim, fetch and save."""
        await self._adopt_stored()
        now = time.time()
        if self._fetch is None:
            self._settled.set()
            return
        if now - self.fetched_at < self._every:
            return
        stale_before = now - self._every
        claimed = await self._store.claim_price_refresh(
            self.source, now, now + _RETRY_AFTER, stale_before
        )
        if not claimed:
            return  # fresh after all, or another process is fetching it right now
        try:
            prices = parse_model_list(await self._fetch())
        except Exception as exc:  # the network, the upstream, the list: none may change a price
            log.warning("prices: could not refresh %s's price list: %s", self.source, exc)
            self._settled.set()
            return
        body = encode_prices(prices)
        await self._store.save_price_list(self.source, now, body)
        self._adopt(prices, now)
        log.info("prices: %s's price list refreshed, %d models", self.source, len(prices))

    async def _adopt_stored(self) -> None:
        stored = await self._store.load_price_list(self.source, self.fetched_at)
        if stored is None:
            return
        fetched_at, body = stored
        try:
            self._adopt(decode_prices(body), fetched_at)
        except PriceListError as exc:
            log.warning("prices: %s", exc)

    def _adopt(self, prices: dict[str, ListedPrice], fetched_at: float) -> None:
        self._prices = prices
        self.fetched_at = fetched_at
        self.generation += 1
        self._listed.set()
        self._settled.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the store is down: try again on the next look
                log.warning("prices: could not look at %s's price list: %s", self.source, exc)
                self._settled.set()
            wait = _LOOK_EVERY if self._prices else _LOOK_EVERY_EMPTY
            await asyncio.sleep(min(wait, self._every or wait) * random.uniform(0.8, 1.0))
