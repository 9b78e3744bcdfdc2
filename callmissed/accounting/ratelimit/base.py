"""The rate limiter's interface and what every limiter shares: the sliding log's decision
(refusal()), OpenAI's x-ratelimit-* headers, and the lease a granted request holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from callmissed.errors import RateLimited
from callmissed.store import KeyPolicy

__all__ = [
    "UNLIMITED",
    "WINDOW",
    "Headers",
    "HeldLease",
    "Lease",
    "Limiter",
    "Snapshot",
    "limited",
    "rate_limit_headers",
    "refusal",
]

WINDOW = 60.0
Headers = list[tuple[bytes, bytes]]


class Lease(Protocol):
    """An admitted request's place in its key's limits; release() exactly once, at its end."""

    def headers(self) -> Headers: ...

    def release(self, tokens: int) -> None: ...


class Limiter(Protocol):
    async def acquire(self, key_id: int, policy: KeyPolicy, tokens: int) -> Lease:
        """Admit a request that may use up to `tokens`, or raise RateLimited."""

    async def close(self) -> None: ...


class _NoLease:
    def headers(self) -> Headers:
        return []

    def release(self, tokens: int) -> None:
        pass


UNLIMITED: Lease = _NoLease()


def limited(policy: KeyPolicy) -> bool:
    """Whether the key has any limit; a key without one never costs the limiter anything."""
    return policy.rpm is not None or policy.tpm is not None or policy.max_concurrent is not None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A key's usage at a decision, after admitting the request if it was admitted."""

    requests: int = 0  # admitted in the window
    requests_reset: float = 0.0  # seconds until the oldest of them leaves the window
    tokens: int = 0  # finished in the window + reserved in flight
    tokens_reset: float = 0.0
    in_flight: int = 0


def refusal(policy: KeyPolicy, now: Snapshot, tokens: int) -> RateLimited | None:
    """The RateLimited error for a request needing `tokens`, given usage before it; or None."""
    if policy.rpm is not None and now.requests >= policy.rpm:
        message = f"Rate limit reached: {policy.rpm} requests per minute for this key."
        return _error(message, now.requests_reset, policy, now)
    if policy.tpm is not None and now.tokens + tokens > policy.tpm:
        if tokens > policy.tpm:
            message = (
                f"This request may use up to {tokens} tokens, more than this key's "
                f"{policy.tpm} tokens per minute. Lower max_tokens."
            )
            return _error(message, None, policy, now)
        message = (
            f"Rate limit reached: {policy.tpm} tokens per minute for this key; "
            f"{now.tokens} are used or reserved and this request may use up to {tokens}."
        )
        return _error(message, now.tokens_reset or 1.0, policy, now)
    if policy.max_concurrent is not None and now.in_flight >= policy.max_concurrent:
        message = f"Rate limit reached: {policy.max_concurrent} requests in flight for this key."
        return _error(message, 1.0, policy, now)
    return None


def _error(
    message: str, retry_after: float | None, policy: KeyPolicy, now: Snapshot
) -> RateLimited:
    return RateLimited(
        message, retry_after=retry_after, headers=rate_limit_headers(policy, now, retry_after)
    )


def rate_limit_headers(
    policy: KeyPolicy, now: Snapshot, retry_after: float | None = None
) -> Headers:
    """OpenAI's x-ratelimit-* headers (plus concurrency), and retry-after-ms when refusing."""
    headers: Headers = []
    if policy.rpm is not None:
        headers += _triple("requests", policy.rpm, policy.rpm - now.requests, now.requests_reset)
    if policy.tpm is not None:
        headers += _triple("tokens", policy.tpm, policy.tpm - now.tokens, now.tokens_reset)
    if policy.max_concurrent is not None:
        remaining = max(policy.max_concurrent - now.in_flight, 0)
        headers += [
            (b"x-ratelimit-limit-concurrency", str(policy.max_concurrent).encode()),
            (b"x-ratelimit-remaining-concurrency", str(remaining).encode()),
        ]
    if retry_after is not None:
        headers.append((b"retry-after-ms", str(math.ceil(retry_after * 1000)).encode()))
    return headers


def _triple(name: str, limit: int, remaining: int, reset: float) -> Headers:
    return [
        (f"x-ratelimit-limit-{name}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{name}".encode(), str(max(remaining, 0)).encode()),
        (f"x-ratelimit-reset-{name}".encode(), _duration(reset).encode()),
    ]


def _duration(seconds: float) -> str:
    """Like OpenAI's reset headers: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


class HeldLease:
    """A granted lease: its headers, and a release that gives it back exactly once."""

    __slots__ = ("_done", "_give_back", "_policy", "_snapshot")

    def __init__(
        self, policy: KeyPolicy, at: Snapshot, give_back: Callable[[int, bool], None]
    ) -> None:
        self._policy = policy
        self._snapshot = at
        self._give_back = give_back  # (tokens used, whether tokens are counted)
        self._done = False

    def headers(self) -> Headers:
        return rate_limit_headers(self._policy, self._snapshot)

    def release(self, tokens: int) -> None:
        if self._done:
            return
        self._done = True
        self._give_back(tokens, self._policy.tpm is not None)
