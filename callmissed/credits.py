"""Credits: prices as integers, the worst-case hold before a request, the real charge after it.

Money is integer micro-credits (1 credit = 1 USD, as OpenRouter's). `Credits.begin()` is the
gateway's seam before the upstream call: allow-list, rate limits, revocation, then the request's
worst case held from this process's wallet for the key (wallet.py), in memory unless the wallet
must be topped up from the store. The `Charge` it returns ends exactly once (completed, failed,
or the client went away), charges what was used, puts the rest of the hold back in the wallet,
and journals the ledger row before the response ends (docs/credits.md). Its only I/O is the
journal's begin and end lines, and the store calls in begin().
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

from callmissed.auth import Authenticator, Principal
from callmissed.errors import (
    AuthenticationFailed,
    GatewayError,
    InsufficientCredits,
    ModelNotPriced,
    PermissionDenied,
    ShuttingDown,
)
from callmissed.ledger import Ledger
from callmissed.ratelimit import Lease, Limiter
from callmissed.settings import ModelSettings, Prices, Route
from callmissed.store import MAX_BALANCE, Funding, LedgerEntry, Store
from callmissed.token_estimate import estimate_input_tokens, estimate_output_tokens
from callmissed.wallet import Wallet

if TYPE_CHECKING:
    from callmissed.relay import ChatStream, Chunk
    from callmissed.timing import RequestTrace

__all__ = [
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

MICRO = 1_000_000  # micro-credits per credit (USD)
DEFAULT_OUTPUT_CAP = 32_768  # output tokens assumed when neither the client nor the model says
_SCALE = 1_000_000  # a rate is USD per million tokens x 1e6: 1e-12 credits per token
CLIENT_CLOSED = 499  # the ledger's status for a request the client abandoned (nginx's code)


@dataclass(frozen=True, slots=True)
class Rates:
    """Integer prices, in 1e-12 credits per token (numerically: micro-USD per million tokens).
    `cache_write` None: prompt tokens written to the upstream's cache bill as input."""

    input: int
    cached_input: int
    output: int
    cache_write: int | None = None


FREE = Rates(0, 0, 0)


def rates_of(prices: Prices) -> Rates:
    write = None if prices.cache_write is None else _rate(prices.cache_write)
    return Rates(_rate(prices.input), _rate(prices.cached_input), _rate(prices.output), write)


def _rate(per_million: float) -> int:
    # repr() gives the decimal the operator typed (0.0605, not its binary approximation).
    exact = Decimal(repr(per_million)) * _SCALE
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
    fields input_/output_tokens); missing or odd fields count as 0. Cache reads
    (`prompt_tokens_details.cached_tokens`) and writes (`cache_write_tokens`, as OpenRouter
    reports them) are parts of prompt_tokens."""
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


def cost_of(rates: Rates, usage: TokenUsage) -> int:
    """Micro-credits for `usage`: computed exactly, rounded to the nearest, halves up."""
    cached = min(usage.cached, usage.prompt)
    written = min(usage.cache_write, usage.prompt - cached)
    write_rate = rates.input if rates.cache_write is None else rates.cache_write
    exact = (
        (usage.prompt - cached - written) * rates.input
        + cached * rates.cached_input
        + written * write_rate
        + usage.completion * rates.output
    )
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


class Credits:
    """Prices, limits and holds: the gateway's accounting, shared by every API edge."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger,
        limiter: Limiter,
        auth: Authenticator,
        price_overrides: Mapping[str, Prices],
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._limiter = limiter
        self._auth = auth
        self._overrides = price_overrides
        self._rates: dict[str, Rates | None] = {}  # Decimal maths once per model, not per request
        # Asks the server's other workers to give back what their wallets hold of a key, and
        # says how much they did (app.py wires it to peers.py; alone, there is nobody to ask).
        self.reclaim: Callable[[int], Awaitable[int]] = _nobody

    def rates_for(self, model: ModelSettings) -> Rates | None:
        """The model's prices, the config file's [prices] first; None if it has none.

        A model served only by the in-process simulator is free."""
        if model.name not in self._rates:
            if len(self._rates) > 10_000:  # any vendor/model id routes to OpenRouter
                self._rates.clear()
            self._rates[model.name] = self._price(model)
        return self._rates[model.name]

    def _price(self, model: ModelSettings) -> Rates | None:
        prices = self._overrides.get(model.name) or model.prices
        if prices is not None:
            return rates_of(prices)
        if model.routes and all(route.provider == "sim" for route in model.routes):
            return FREE
        return None

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
        rates = self.rates_for(model)
        if rates is None:
            if principal.metered:
                raise ModelNotPriced(
                    f"The model {model.name!r} has no price set, so keys with a credit limit "
                    "cannot use it. The operator can set one under [prices] in the config file.",
                    param="model",
                )
            rates = FREE
        if tokens is None:
            tokens = (_estimate_prompt(body), _output_cap(body, model))
        prompt, output_cap = tokens
        lease = await self._limiter.acquire(principal.key_id, principal.policy, prompt + output_cap)
        try:
            worst = TokenUsage(prompt=prompt, completion=output_cap)
            if (rates.cache_write or 0) > rates.input:  # the prompt may all be cache writes
                worst.cache_write = prompt
            hold = cost_of(rates, worst)
            wallet = await self._hold(principal, hold)
        except BaseException:
            lease.release(0)
            raise
        key_id = principal.key_id
        charge = Charge(
            self._ledger, lease, key_id, model.name, request_id, rates, prompt, wallet, hold
        )
        self._ledger.begin(request_id, key_id, model.name, charge.created_at)
        return charge

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


def _output_cap(body: Mapping[str, Any], model: ModelSettings) -> int:
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return model.max_output or DEFAULT_OUTPUT_CAP


_NOT_ROUTED = Route("", "")  # a charge's route until one answers


class Charge:
    """One request's accounting, from its hold to its single settlement.

    The gateway calls routed() once a route answers, then either complete() (non-stream) or
    attaches the charge to the ChatStream as its meter. fail() and on_close() end it otherwise;
    whichever comes first wins, the rest are no-ops.
    """

    def __init__(
        self,
        ledger: Ledger,
        lease: Lease,
        key_id: int,
        model: str,
        request_id: str,
        rates: Rates,
        prompt_estimate: int,
        wallet: Wallet | None = None,
        hold: int = 0,
    ) -> None:
        self._ledger = ledger
        self._lease = lease
        self.key_id = key_id
        self.model = model
        self.request_id = request_id
        self.rates = rates
        self.prompt_estimate = prompt_estimate
        self.route = _NOT_ROUTED
        self.stream = False
        self.created_at = time.time()
        self._started = time.perf_counter()
        self._ttfb: float | None = None
        self.delivered_tokens = 0
        self.settled = False
        self._wallet = wallet  # holds `hold` for it; what it does not use goes back at the end
        self._hold = hold
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
        self.route = route
        self.stream = stream
        if self._ttfb is None:
            self._ttfb = time.perf_counter() - self._started

    # The non-streamed path

    def complete(self, completion: dict[str, Any]) -> None:
        """Price the completion, put `usage.cost` in it, and settle."""
        usage = completion.get("usage")
        if isinstance(usage, dict):
            tokens = parse_usage(usage)
        else:
            choices = completion.get("choices") or ()  # a Response has none (relay_responses.py)
            delivered = sum(_message_tokens(c.get("message")) for c in choices)
            tokens = TokenUsage(prompt=self.prompt_estimate, completion=delivered)
        cost = cost_of(self.rates, tokens)
        if isinstance(usage, dict):
            _put_cost(usage, cost)
        self._settle(200, None, tokens, cost)

    def fail(self, error: BaseException) -> None:
        """The request failed before a response: charge what was delivered (nothing)."""
        if isinstance(error, GatewayError):
            self._error = error.message
            self._settle(error.http_status, error.code, TokenUsage(), 0)
        elif isinstance(error, Exception):
            self._settle(500, "internal_error", TokenUsage(), 0)
        else:  # cancelled: the client went away while we waited
            self._settle(CLIENT_CLOSED, "client_closed", TokenUsage(), 0)

    # The streamed path: relay.StreamMeter

    def on_batch(self, batch: list[Chunk]) -> None:
        """Chunks on their way to the client: count their tokens, price a usage chunk."""
        if self._ttfb is None:
            self._ttfb = time.perf_counter() - self._started
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
            if "usage" in parsed:
                usage = parsed["usage"]
                if isinstance(usage, dict) and "cost" not in usage:
                    _put_cost(usage, cost_of(self.rates, parse_usage(usage)))
                    chunk.data = orjson.dumps(parsed)
        self.delivered_tokens += tokens

    def on_close(self, stream: ChatStream) -> None:
        """The stream ended: used up, broken, or abandoned by the client."""
        if self.settled:
            return
        if stream.failure is None and (stream.finished or stream.usage is not None):
            if stream.usage is not None:
                tokens = parse_usage(stream.usage)
            else:
                tokens = TokenUsage(prompt=self.prompt_estimate, completion=self.delivered_tokens)
            self._settle(200, None, tokens, cost_of(self.rates, tokens))
            return
        # Broken or cancelled: only what reached the client is billed (the prompt is not).
        tokens = TokenUsage(completion=self.delivered_tokens)
        if stream.failure is not None:
            failure = stream.failure
            self._error = failure.message
            self._settle(failure.http_status, failure.code, tokens, cost_of(self.rates, tokens))
        else:
            self._settle(CLIENT_CLOSED, "client_closed", tokens, cost_of(self.rates, tokens))

    def _settle(self, status: int, error_code: str | None, tokens: TokenUsage, cost: int) -> None:
        if self.settled:
            return
        self.settled = True
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


def _put_cost(usage: dict[str, Any], cost: int) -> None:
    usage["cost"] = format_credits(cost)
    # OpenRouter's breakdown of what *we* paid it is not the client's business.
    usage.pop("cost_details", None)


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
