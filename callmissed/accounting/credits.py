"""Credits: the worst-case hold before a request, the real charge after it.

Money is integer micro-credits (1 credit = 1 USD, as OpenRouter's); prices are pricing.py's.
`Credits.begin()` is the gateway's seam before the upstream call: allow-list, price, rate limits,
revocation, then the request's worst case held from this process's wallet for the key
(wallet.py), in memory unless the wallet must be topped up from the store. The `Charge` it returns
is settled exactly once — how each way a request can end is billed is endings.py's table —
charges what was used, puts the rest of the hold back in the wallet, and journals the ledger row
before the response ends (docs/credits.md). Its only I/O is the journal's begin and end lines,
and the store calls in begin().
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from callmissed.accounting.ledger import Ledger
from callmissed.accounting.pricing import (
    DEFAULT_OUTPUT_CAP,
    MICRO,
    ModelPrice,
    PriceBook,
    Rates,
    TokenUsage,
    cost_of,
    format_credits,
    parse_credits,
    parse_usage,
    rates_of,
)
from callmissed.accounting.ratelimit import Lease, Limiter
from callmissed.accounting.wallet import Wallet
from callmissed.auth import Authenticator, Principal
from callmissed.errors import (
    AuthenticationFailed,
    GatewayError,
    InsufficientCredits,
    ModelNotPriced,
    PermissionDenied,
    ShuttingDown,
)
from callmissed.settings import ModelSettings, Route
from callmissed.store import Funding, LedgerEntry, Store
from callmissed.token_estimate import estimate_input_tokens, estimate_output_tokens

if TYPE_CHECKING:
    from callmissed.relay import Chunk
    from callmissed.timing import RequestTrace

__all__ = [
    "CLIENT_CLOSED",
    "DEFAULT_OUTPUT_CAP",
    "MICRO",
    "Charge",
    "Credits",
    "Rates",
    "TokenUsage",
    "cost_of",
    "format_credits",
    "parse_credits",
    "parse_usage",
    "rates_of",
]

log = logging.getLogger("callmissed")

CLIENT_CLOSED = 499  # the ledger's status for a request the client abandoned (nginx's code)
FIRST_LIST_WAIT = 10.0  # seconds a request may wait for a fresh install's first price list


class Credits:
    """Prices, limits and holds: the gateway's accounting, shared by every API edge."""

    def __init__(
        self, store: Store, ledger: Ledger, limiter: Limiter, auth: Authenticator, prices: PriceBook
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._limiter = limiter
        self._auth = auth
        self.prices = prices
        # Asks the server's other workers to give back what their wallets hold of a key, and
        # says how much they did (app.py wires it to peers.py; alone, there is nobody to ask).
        self.reclaim: Callable[[int], Awaitable[int]] = _nobody

    async def begin(
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
        _check_allowed(principal, model)
        price = self.prices.price(model) or await self._unpriced(principal, model)
        if tokens is None:
            tokens = (_estimate_prompt(body), _output_cap(body, price.output_cap))
        prompt, output_cap = tokens
        lease = await self._limiter.acquire(principal.key_id, principal.policy, prompt + output_cap)
        try:
            worst = TokenUsage(prompt=prompt, completion=output_cap)
            hold = cost_of(price.hold, worst, per_request=True)
            wallet = await self._hold(principal, hold)
        except BaseException:
            lease.release(0)
            raise
        key_id = principal.key_id
        charge = Charge(self._ledger, lease, key_id, model.name, request_id, price, self.prices)
        charge.prompt_estimate, charge.output_cap = prompt, output_cap
        charge._wallet, charge._hold = wallet, hold
        self._ledger.begin(request_id, key_id, model.name, charge.created_at)
        return charge

    async def _unpriced(self, principal: Principal, model: ModelSettings) -> ModelPrice:
        """A model no source prices: free for a key without a credit limit, refused to others —
        unless the price list that would price it is still on its way (a fresh install)."""
        if not principal.metered:
            return self.prices.unpriced(model)
        for price_list in self.prices.listed(model):
            if not price_list and await price_list.wait_listed(FIRST_LIST_WAIT):
                price = self.prices.price(model)
                if price is not None:
                    return price
        raise ModelNotPriced(
            f"The model {model.name!r} has no price (neither its upstream's price list nor the "
            "config file prices it), so keys with a credit limit cannot use it. The operator "
            "can set one under [prices] in the config file.",
            param="model",
        )

    async def _hold(self, principal: Principal, hold: int) -> Wallet | None:
        """Check revocation and hold `hold` from the key's wallet; None if it holds nothing."""
        if await self._store.is_revoked(principal.key_id):
            self._revoked()
        if hold <= 0 or not principal.metered:
            return None
        wallet = self._ledger.wallets.take(principal.key_id, hold)
        return wallet if wallet is not None else await self._top_up(principal.key_id, hold)

    async def _top_up(self, key_id: int, hold: int) -> Wallet:
        wallets = self._ledger.wallets
        held = await wallets.top_up(key_id, hold) if not wallets.closed else Funding(0, None)
        if isinstance(held, Wallet):
            return held
        # The wallet may undercount what its row holds (a request that cost more than its hold):
        # once this process's entries are settled, giving it back makes the next top-up exact.
        settled = not held.revoked and wallets.retirable(key_id)
        settled = settled and await self._ledger.flush(at_most=1.0) and not self._ledger.pending
        if settled and await wallets.retire(key_id):
            held = await wallets.top_up(key_id, hold)
            if isinstance(held, Wallet):
                return held
        # Other workers' wallets may hold the credit this request needs: once they gave back
        # what no request of theirs holds, the balance is all the key has left.
        if not held.revoked and not wallets.closed and await self.reclaim(key_id):
            held = await wallets.top_up(key_id, hold)
            if isinstance(held, Wallet):
                return held
        if held.revoked:
            self._revoked()
        if wallets.closed:  # after shutdown nothing may be funded: nobody would give it back
            raise ShuttingDown("The server is shutting down; send the request again.")
        left = (held.balance or 0) + wallets.free(key_id)
        raise InsufficientCredits(
            f"Insufficient credits: this key has ${format_credits(left):.6f} "
            f"left, and this request could cost up to ${format_credits(hold):.6f}. "
            "Top the key up, or lower max_tokens."
        )

    async def give_back(self, key_id: int) -> int:
        """Another worker cannot fund a request of this key: give back what this process's
        wallet holds of it and no request here does (all of it if idle); the amount."""
        wallets = self._ledger.wallets
        settled = wallets.retirable(key_id)
        settled = settled and await self._ledger.flush(at_most=0.5) and not self._ledger.pending
        return await wallets.release(key_id, settled)

    def _revoked(self) -> NoReturn:
        self._auth.forget()
        raise AuthenticationFailed("This API key has been revoked.")


async def _nobody(key_id: int) -> int:
    return 0


def _check_allowed(principal: Principal, model: ModelSettings) -> None:
    allowed = principal.policy.models
    if allowed is not None and model.name not in allowed:
        raise PermissionDenied(
            f"This API key may not use the model {model.name!r}; "
            f"it may use: {', '.join(allowed) or 'no models'}.",
            param="model",
        )


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


_NOT_ROUTED = Route("", "")  # a charge's route until one answers


class Charge:
    """One request's accounting, from its hold to its single settlement.

    The gateway tells it which route answered (routed()); it counts what reaches the client of a
    stream (on_batch(), as the stream's meter) and prices what the upstream reports. How each
    ending is billed is decided in endings.py, which calls settle() once; later calls are no-ops.
    """

    # Slots, not an instance dict: one is made per request, and its ~20 attributes are set and
    # read on the request's path.
    __slots__ = (
        "_book", "_efforts", "_error", "_hold", "_lease", "_ledger", "_priced", "_started",
        "_tags", "_trace", "_ttfb", "_wallet", "billing", "created_at", "delivered_tokens",
        "key_id", "model", "output_cap", "price", "prompt_estimate", "request_id", "route",
        "settled", "stream", "upstream_id",
    )  # fmt: skip

    def __init__(
        self,
        ledger: Ledger,
        lease: Lease,
        key_id: int,
        model: str,
        request_id: str,
        price: ModelPrice,
        book: PriceBook,
    ) -> None:
        self._ledger = ledger
        self._lease = lease
        self.key_id = key_id
        self.model = model
        self.request_id = request_id
        self.price = price
        self._book = book
        self.billing = price.unrouted  # how it bills: its route's, once one answers
        self.route = _NOT_ROUTED
        self.stream = False
        self.created_at = time.time()
        self._started = time.perf_counter()
        self._ttfb: float | None = None
        self.delivered_tokens = 0
        self.settled = False
        self.upstream_id: str | None = None  # the upstream's id for the answer
        # What Credits.begin() held for it: the prompt's estimate and the most output an upstream
        # that obeys the request may write, `_hold` in all, in `_wallet` (None: nothing held).
        self.prompt_estimate = 0
        self.output_cap = 0
        self._wallet: Wallet | None = None  # what it does not use goes back there
        self._hold = 0
        self._priced: tuple[dict[str, Any], TokenUsage, int] | None = None  # usage, priced
        # What the console shows of it (describe()), and what a failure's client was told.
        self._trace: RequestTrace | None = None
        self._efforts: tuple[str | None, str | None] = (None, None)
        self._tags: tuple[str, ...] = ()
        self._error: str | None = None

    def describe(
        self,
        trace: RequestTrace,
        effort_in: str | None,
        effort_out: str | None,
        tags: tuple[str, ...],
    ) -> None:
        """What the ledger row keeps for the console: the upstream attempts (from `trace`),
        reasoning_effort as received and as sent, the request's tags (tags.py)."""
        self._trace = trace
        self._efforts = (effort_in, effort_out)
        self._tags = tags

    def headers(self) -> list[tuple[bytes, bytes]]:
        """x-ratelimit-* headers for the response."""
        return self._lease.headers()

    def routed(self, route: Route, stream: bool) -> None:
        if route is not self.route:
            self.route = route
            self.billing = self.price.routes.get(route) or self.price.unrouted
        self.stream = stream
        if self._ttfb is None:
            self._ttfb = time.perf_counter() - self._started

    # What it cost

    def price_usage(self, usage: dict[str, Any]) -> tuple[TokenUsage, int]:
        """The upstream's usage object priced (PriceBook.bill), and `usage.cost` set to what the
        key pays. Priced once; OpenRouter's `cost_details` is removed."""
        priced = self._priced
        if priced is not None and priced[0] is usage:
            return priced[1], priced[2]
        tokens, cost = self._book.bill(self.billing, usage)
        usage["cost"] = cost / MICRO  # credits (format_credits(), without the call)
        usage.pop("cost_details", None)  # what *we* paid the upstream is not the client's business
        self._priced = (usage, tokens, cost)
        return tokens, cost

    def estimate(self, *, prompt: bool) -> tuple[TokenUsage, int]:
        """Without the upstream's usage: the output that reached the client (never more than an
        upstream that obeys the request can write), and the prompt estimate if `prompt` — an
        upstream bills the prompt of every request it took, and a request fee with it."""
        tokens = TokenUsage(
            prompt=self.prompt_estimate if prompt else 0,
            completion=min(self.delivered_tokens, self.output_cap or self.delivered_tokens),
        )
        return tokens, cost_of(self.billing.rates, tokens, per_request=prompt)

    # The non-streamed path

    def complete(self, completion: dict[str, Any], status: int = 200) -> None:
        """Price a whole answer, put `usage.cost` in it, and settle (499: nobody waited)."""
        self.upstream_id = _text(completion.get("id"))
        usage = completion.get("usage")
        if isinstance(usage, dict):
            tokens, cost = self.price_usage(usage)
        else:
            choices = completion.get("choices") or ()  # a Response has none (relay_responses.py)
            self.delivered_tokens = sum(_message_tokens(c.get("message")) for c in choices)
            tokens, cost = self.estimate(prompt=True)
        code = None if status == 200 else "client_closed"
        self.settle(status, code, tokens, cost)

    def fail(self, error: BaseException) -> None:
        """The request failed before anything was delivered: nothing is charged."""
        if isinstance(error, GatewayError):
            self.settle(error.http_status, error.code, TokenUsage(), 0, error.message)
        elif isinstance(error, Exception):
            self.settle(500, "internal_error", TokenUsage(), 0)
        else:  # cancelled: the client went away before an upstream had the request
            self.settle(CLIENT_CLOSED, "client_closed", TokenUsage(), 0)

    # The streamed path: relay.StreamMeter

    def on_batch(self, batch: list[Chunk]) -> None:
        """Chunks on their way to the client: count their tokens, price a usage chunk."""
        tokens = 0
        for chunk in batch:
            if chunk.tokens is not None:  # nothing but content (relay.Chunk): no need to walk it
                tokens += chunk.tokens
                continue
            parsed = chunk.json()
            for choice in parsed.get("choices") or ():
                delta = choice.get("delta")
                if delta:
                    tokens += _message_tokens(delta)
            usage = parsed.get("usage")
            if isinstance(usage, dict):
                self.price_usage(usage)
                chunk.data = orjson.dumps(parsed)
        self.delivered_tokens += tokens

    def settle(
        self,
        status: int,
        error_code: str | None,
        tokens: TokenUsage,
        cost: int,
        error_message: str | None = None,
    ) -> None:
        """Journal the ledger row, put back what the hold did not use, end the rate-limit lease;
        `error_message` is what a failure's client was told (for the console)."""
        if self.settled:
            return
        self.settled = True
        if error_message is not None:
            self._error = error_message
        elapsed_ms = (time.perf_counter() - self._started) * 1000
        entry = LedgerEntry(
            request_id=self.request_id,
            key_id=self.key_id,
            created_at=self.created_at,
            model=self.model,
            route=self.route.provider,
            upstream_model=self.route.upstream_model,
            stream=self.stream,
            status=status,
            error_code=error_code,
            prompt_tokens=tokens.prompt,
            completion_tokens=tokens.completion,
            reasoning_tokens=tokens.reasoning,
            cached_tokens=tokens.cached,
            cost=cost,
            ttfb_ms=None if self._ttfb is None else round(self._ttfb * 1000, 3),
            total_ms=round(elapsed_ms, 3),
            wallet=None if self._wallet is None else self._wallet.hold_id,
            upstream_id=self.upstream_id,
            effort_in=self._efforts[0],
            effort_out=self._efforts[1],
            attempts=_attempts_worth_keeping(self._trace),
            tags=list(self._tags) if self._tags else None,
            error_message=None if self._error is None else self._error[:1000],
        )
        try:
            self._ledger.append(entry)
        finally:
            if self._wallet is not None:
                self._wallet.put_back(self._hold, cost)
            self._lease.release(tokens.total)


def _text(value: Any) -> str | None:
    """An upstream-sent id, if it is a sane one (it lands in the ledger)."""
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


def _attempts_worth_keeping(trace: RequestTrace | None) -> list[dict[str, Any]] | None:
    """The attempts as the ledger keeps them, ms from the first one's start: none when the one
    attempt made answered (its route and first-token time are in the row already), so most
    rows carry nothing extra."""
    attempts = trace.attempts if trace is not None else ()
    if not attempts or (len(attempts) == 1 and attempts[0].outcome == "ok"):
        return None
    first, now = attempts[0].started, time.perf_counter()
    return [
        {
            "route": f"{a.target.route.provider}:{a.target.route.upstream_model}",
            "start_ms": round((a.started - first) * 1000, 3),
            "ms": round(((a.ended or now) - a.started) * 1000, 3),
            "outcome": a.outcome or "abandoned",
            "hedge": a.hedge,
        }
        for a in attempts
    ]


def _message_tokens(message: Any) -> int:
    """Tokens in a delta or message, estimated from its text: ~4 ASCII characters per token."""
    if not isinstance(message, dict):
        return 0
    tokens = 0
    for field in ("content", "reasoning", "reasoning_content", "refusal"):
        text = message.get(field)
        if isinstance(text, str) and text:
            tokens += estimate_output_tokens(text)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for part in (function.get("name"), function.get("arguments")):
                if isinstance(part, str) and part:
                    tokens += estimate_output_tokens(part)
    return tokens
