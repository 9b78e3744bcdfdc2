"""Accounting's one entry point: `Accounting.admit()` returns a request's `Charge`, or raises.

Money is integer micro-credits (1 credit = 1 USD, as OpenRouter's); prices are pricing.py's.
admit() is the gateway's seam before the upstream call: admission (allow-list, price, rate
limits, revocation: admission.py), then the request's worst case held from this process's wallet
for the key (holds.py), in memory unless the wallet must be topped up from the store. The
`Charge` it returns (settlement.py) is settled exactly once — how each way a request can end is
billed is endings.py's table — charges what was used, puts the rest of the hold back in the
wallet, and journals the ledger row before the response ends (docs/credits.md). Its only I/O is
the journal's begin line, and the store calls of admission and holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from callmissed.accounting.admission import Admission
from callmissed.accounting.holds import Holds
from callmissed.accounting.ledger import Ledger
from callmissed.accounting.pricing import PriceBook, TokenUsage, cost_of
from callmissed.accounting.ratelimit import Limiter
from callmissed.accounting.settlement import Charge, Held
from callmissed.accounting.wallet import Wallets
from callmissed.auth import Authenticator, Principal
from callmissed.peers import Peers
from callmissed.settings import ModelSettings
from callmissed.store import Store
from callmissed.token_estimate import estimate_input_tokens

__all__ = ["Accounting"]


class Accounting:
    """Admission, holds and the charge: the gateway's accounting, shared by every API edge.

    `peers` (None: a process alone) are the server's other workers, asked for a key's idle
    credit before a 402 and answered when they ask the same."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        wallets: Wallets,
        limiter: Limiter,
        auth: Authenticator,
        prices: PriceBook,
        peers: Peers | None = None,
    ) -> None:
        self._ledger = ledger
        self.prices = prices
        self._admission = Admission(store, limiter, auth, prices)
        self._holds = Holds(ledger, wallets, self._admission.revoked, peers)

    async def admit(
        self,
        principal: Principal,
        model: ModelSettings,
        body: Mapping[str, Any],
        request_id: str,
        *,
        tokens: tuple[int, int] | None = None,
    ) -> Charge:
        """Check the allow-list and limits, then hold the worst case; raise if any refuses.

        `tokens` (prompt, output cap) stands in for a chat body's estimate (embeddings)."""
        admission = self._admission
        price = await admission.price(principal, model)
        if tokens is None:
            tokens = (_estimate_prompt(body), _output_cap(body, price.output_cap))
        prompt, output_cap = tokens
        lease = await admission.lease(principal, prompt + output_cap)
        try:
            await admission.check_revoked(principal)
            worst = TokenUsage(prompt=prompt, completion=output_cap)
            hold = cost_of(price.hold, worst, per_request=True)
            wallet = await self._holds.take(principal, hold)
        except BaseException:
            lease.release(0)
            raise
        key_id = principal.key_id
        held = Held(prompt, output_cap, wallet, hold)
        charge = Charge(
            self._ledger, lease, key_id, model.name, request_id, price, self.prices, held
        )
        self._ledger.begin(request_id, key_id, model.name, charge.created_at)
        return charge


def _estimate_prompt(body: Mapping[str, Any]) -> int:
    try:
        return estimate_input_tokens(body)
    except (KeyError, TypeError, AttributeError):
        # A shape the estimator does not know: a byte is never less than a token's worth.
        # A Responses body (relay_responses.py) has `input` and `instructions` instead.
        text = body.get("messages") or [body.get("input"), body.get("instructions")]
        return len(orjson.dumps(text)) + len(orjson.dumps(body.get("tools")))


def _output_cap(body: Mapping[str, Any], default: int) -> int:
    """The output tokens an upstream that obeys the request may write: each of its `n` choices
    up to the larger of max_tokens and max_completion_tokens (else the model's limit), plus a
    reasoning budget an upstream may add on top (OpenRouter's reasoning.max_tokens)."""
    # Inline checks, not a helper per field: this runs for every request.
    limit = 0
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):  # the last: Responses
        value = body.get(name)
        if value.__class__ is int and value > limit:
            limit = value
    limit = limit or default
    reasoning = body.get("reasoning")
    if reasoning.__class__ is dict:
        budget = reasoning.get("max_tokens")
        if budget.__class__ is int and budget > 0:
            limit += budget
    n = body.get("n")
    return limit * n if n.__class__ is int and n > 1 else limit
