"""Settlement: one request's `Charge`, from its hold to its single settle.

The gateway tells the charge which route answered (routed()); as a stream's meter it counts what
reaches the client (on_batch()) and prices the usage the upstream reports. How each way a request
can end is billed is decided in endings.py, which calls settle() once: the ledger row is
journaled (ledger.py), what the hold did not use goes back to the wallet (wallet.py), the
rate-limit lease ends. Billing reads the stream through `Delivered` alone: the relay depends on
these types, never the reverse.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import orjson

from callmissed.accounting.ledger import Ledger
from callmissed.accounting.pricing import MICRO, ModelPrice, PriceBook, TokenUsage, cost_of
from callmissed.accounting.ratelimit import Lease
from callmissed.accounting.wallet import Wallet
from callmissed.errors import GatewayError
from callmissed.settings import Route
from callmissed.store import LedgerEntry
from callmissed.token_estimate import estimate_output_tokens

if TYPE_CHECKING:
    from callmissed.timing import RequestTrace

__all__ = ["CLIENT_CLOSED", "Charge", "Delivered", "Held", "StreamMeter"]

CLIENT_CLOSED = 499  # the ledger's status for a request the client abandoned (nginx's code)


class Delivered(Protocol):
    """What billing reads of one chunk on its way to the client (relay.Chunk is one): `tokens`
    when the relay counted a content-only chunk already, else the parsed JSON, whose usage gets
    its `cost`; `data` is what goes out, rewritten when that usage was priced."""

    data: bytes
    tokens: int | None

    def json(self) -> dict[str, Any]: ...


class StreamMeter(Protocol):
    """Accounting for one stream (Charge is one): sees what reaches the client."""

    def on_batch(self, batch: Sequence[Delivered]) -> None:
        """Chunks about to go to the client; may edit them (usage.cost)."""


_NOT_ROUTED = Route("", "")  # a charge's route until one answers


class Held(NamedTuple):
    """What admission held for a request: the prompt's estimate (the hold is on its bound), its
    output cap, and `amount` micro-credits in all from `wallet` (None: nothing held)."""

    prompt: int
    output_cap: int
    wallet: Wallet | None
    amount: int


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
        held: Held,
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
        # What admission held it on: the prompt's estimate (its bound was held) and the most
        # output an upstream that obeys the request may write, `_hold` in all, in `_wallet`
        # (None: nothing held).
        self.prompt_estimate = held.prompt
        self.output_cap = held.output_cap
        self._wallet = held.wallet  # what it does not use goes back there
        self._hold = held.amount
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

    # The streamed path: StreamMeter

    def on_batch(self, batch: Sequence[Delivered]) -> None:
        """Chunks on their way to the client: count their tokens, price a usage chunk."""
        tokens = 0
        for chunk in batch:
            if chunk.tokens is not None:  # nothing but content: no need to walk it
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
        # Positional: 23 keywords cost ~3x the call itself (LedgerEntry's fields, in order).
        entry = LedgerEntry(
            self.request_id, self.key_id, self.created_at, self.model, self.route.provider,
            self.route.upstream_model, self.stream, status, error_code, tokens.prompt,
            tokens.completion, tokens.reasoning, tokens.cached, cost,
            None if self._ttfb is None else _ms(self._ttfb),
            _ms(time.perf_counter() - self._started),
            None if self._wallet is None else self._wallet.hold_id, self.upstream_id,
            self._efforts[0], self._efforts[1], _attempts_worth_keeping(self._trace),
            list(self._tags) if self._tags else None,
            None if self._error is None else self._error[:1000],
        )  # fmt: skip
        try:
            self._ledger.append(entry)
        finally:
            if self._wallet is not None:
                self._wallet.put_back(self._hold, cost)
            self._lease.release(tokens.total)


def _ms(seconds: float) -> float:
    """Milliseconds to three decimals: round(ms, 3) but for an ulp at a tie, without its trip
    through dtoa and back (~2,700 instructions, where this takes ~1,200)."""
    return round(seconds * 1_000_000) / 1000


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
