"""Admission: whether a key may send this request now, before any credit is held.

The key's allow-list, its model's price (a model no source prices is refused to a key with a
credit limit), its rate limits (the request's place in them is a `Lease`, ratelimit/), and
whether the key was revoked since it was authenticated. Each refusal is raised, shaped as the
client's API renders it (errors.py).
"""

from __future__ import annotations

from typing import NoReturn

from callmissed.accounting.pricing import ModelPrice, PriceBook
from callmissed.accounting.ratelimit import Lease, Limiter
from callmissed.auth import Authenticator, Principal
from callmissed.errors import AuthenticationFailed, ModelNotPriced, PermissionDenied
from callmissed.settings import ModelSettings
from callmissed.store import Store

__all__ = ["FIRST_LIST_WAIT", "Admission"]

FIRST_LIST_WAIT = 10.0  # seconds a request may wait for a fresh install's first price list


class Admission:
    """The checks a request passes before its hold, in the order admit() runs them."""

    def __init__(
        self, store: Store, limiter: Limiter, auth: Authenticator, prices: PriceBook
    ) -> None:
        self._store = store
        self._limiter = limiter
        self._auth = auth
        self._prices = prices

    async def price(self, principal: Principal, model: ModelSettings) -> ModelPrice:
        """The price the request is admitted at, if the key may use `model`; else raise."""
        _check_allowed(principal, model)
        return self._prices.price(model) or await self._unpriced(principal, model)

    async def lease(self, principal: Principal, tokens: int) -> Lease:
        """The request's place in the key's rate limits, for up to `tokens`; or RateLimited."""
        return await self._limiter.acquire(principal.key_id, principal.policy, tokens)

    async def check_revoked(self, principal: Principal) -> None:
        """Raise if the key was revoked since its principal was cached."""
        if await self._store.is_revoked(principal.key_id):
            self.revoked()

    def revoked(self) -> NoReturn:
        """The key is revoked (the store said so): no worker's cache may keep it."""
        self._auth.forget()
        raise AuthenticationFailed("This API key has been revoked.")

    async def _unpriced(self, principal: Principal, model: ModelSettings) -> ModelPrice:
        """A model no source prices: free for a key without a credit limit, refused to others —
        unless the price list that would price it is still on its way (a fresh install)."""
        if not principal.metered:
            return self._prices.unpriced(model)
        for price_list in self._prices.listed(model):
            if not price_list and await price_list.wait_listed(FIRST_LIST_WAIT):
                price = self._prices.price(model)
                if price is not None:
                    return price
        raise ModelNotPriced(
            f"The model {model.name!r} has no price (neither its upstream's price list nor the "
            "config file prices it), so keys with a credit limit cannot use it. The operator "
            "can set one under [prices] in the config file.",
            param="model",
        )


def _check_allowed(principal: Principal, model: ModelSettings) -> None:
    allowed = principal.policy.models
    if allowed is not None and model.name not in allowed:
        raise PermissionDenied(
            f"This API key may not use the model {model.name!r}; "
            f"it may use: {', '.join(allowed) or 'no models'}.",
            param="model",
        )
