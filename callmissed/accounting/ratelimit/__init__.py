"""Per-key rate limits: requests per minute, tokens per minute, requests in flight.

The algorithm is a sliding log, exact at the edge: a request is admitted iff, over the 60 s
ending now, fewer than `rpm` requests were admitted, and the tokens of finished requests plus
the reserved tokens of requests in flight plus this request's reservation fit in `tpm`, and
fewer than `max_concurrent` requests are in flight. A request reserves its worst case (prompt
estimate + max_tokens, as OpenAI counts it); when it ends, the reservation becomes its real
token count, dated at its end. There is no window edge, so no double burst (docs/credits.md).

`Limiter` is the interface; MemoryLimiter serves one process. SQLiteLimiter (sqlite.py)
shares the log between the processes on one SQLite file, RedisLimiter (redis.py)
between any processes and replicas; open_limiter() picks one.
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from callmissed.errors import RateLimited
from callmissed.settings import Settings
from callmissed.store import KeyPolicy

__all__ = [
    "UNLIMITED",
    "WINDOW",
    "HeldLease",
    "Lease",
    "Limiter",
    "MemoryLimiter",
    "Snapshot",
    "limited",
    "limits_warning",
    "open_limiter",
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


@dataclass(slots=True)
class _KeyLog:
    requests: deque[float] = field(default_factory=deque)  # admission times
    finished: deque[tuple[float, int]] = field(default_factory=deque)  # (end time, tokens)
    finished_tokens: int = 0
    reserved: dict[int, int] = field(default_factory=dict)  # lease id -> reserved tokens
    reserved_tokens: int = 0

    def expire(self, now: float, window: float) -> None:
        horizon = now - window
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.finished and self.finished[0][0] <= horizon:
            self.finished_tokens -= self.finished.popleft()[1]

    def snapshot(self, now: float, window: float) -> Snapshot:
        return Snapshot(
            requests=len(self.requests),
            requests_reset=self.requests[0] + window - now if self.requests else 0.0,
            tokens=self.finished_tokens + self.reserved_tokens,
            tokens_reset=self.finished[0][0] + window - now if self.finished else 0.0,
            in_flight=len(self.reserved),
        )

    @property
    def idle(self) -> bool:
        return not (self.requests or self.finished or self.reserved)


class MemoryLimiter:
    """The sliding log in this process's memory: exact for one process (one worker).

    Memory per key is bounded by what its limits admit in one window; idle keys are dropped.
    """

    def __init__(self, window: float = WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._logs: dict[int, _KeyLog] = {}
        self._next_lease = 0

    async def acquire(self, key_id: int, policy: KeyPolicy, tokens: int) -> Lease:
        return self.try_acquire(key_id, policy, tokens)

    def try_acquire(self, key_id: int, policy: KeyPolicy, tokens: int) -> Lease:
        """acquire(), synchronously: the check and the admission can't interleave."""
        if not limited(policy):
            return UNLIMITED
        now = self._clock()
        log = self._logs.get(key_id)
        if log is None:
            log = self._logs[key_id] = _KeyLog()
        log.expire(now, self._window)
        error = refusal(policy, log.snapshot(now, self._window), tokens)
        if error is not None:
            if log.idle:
                del self._logs[key_id]
            raise error
        self._next_lease += 1
        lease_id = self._next_lease
        if policy.rpm is not None:
            log.requests.append(now)
        log.reserved[lease_id] = tokens
        log.reserved_tokens += tokens
        snapshot = log.snapshot(now, self._window)
        return HeldLease(policy, snapshot, functools.partial(self._release, key_id, lease_id))

    def _release(self, key_id: int, lease_id: int, tokens: int, count_tokens: bool) -> None:
        log = self._logs.get(key_id)
        if log is None:
            return
        log.reserved_tokens -= log.reserved.pop(lease_id, 0)
        now = self._clock()
        if count_tokens and tokens > 0:
            log.finished.append((now, tokens))
            log.finished_tokens += tokens
        log.expire(now, self._window)
        if log.idle:
            del self._logs[key_id]

    async def close(self) -> None:
        self._logs.clear()


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


def open_limiter(settings: Settings, owner: str, alive: Callable[[str], bool]) -> Limiter:
    """Redis if CALLMISSED_REDIS_URL is set; else, with several workers on a SQLite file, the
    limiter in that file (exact across them; keys without limits never touch it); else memory:
    exact within one process, and ~20x cheaper per limited request than the file (two commits,
    ~170 us). limits_warning says when limits are per process. `owner`/`alive`: the leases'."""
    accounting = settings.accounting
    if accounting.redis_url:
        from callmissed.accounting.ratelimit.redis import RedisLimiter

        return RedisLimiter(accounting.redis_url, prefix=accounting.redis_prefix)
    path = _sqlite_file(settings.database_url)
    if path is not None and settings.workers > 1:
        from callmissed.accounting.ratelimit.sqlite import SQLiteLimiter

        return SQLiteLimiter(path, owner, alive)
    return MemoryLimiter()


def limits_warning(settings: Settings) -> str | None:
    """What to tell the operator at start-up when rate limits are not shared between processes."""
    if settings.accounting.redis_url or _sqlite_file(settings.database_url) is not None:
        return None
    if not settings.database_url.startswith(("postgres://", "postgresql://")):
        return None
    return (
        f"rate limits (rpm, tpm, max_concurrent) are counted per process: with "
        f"{settings.workers} worker(s) here, plus any other replica, a key can get that many "
        f"times its limits. Set CALLMISSED_REDIS_URL to share them (docs/config.md)."
    )


def _sqlite_file(url: str) -> str | None:
    if not url.startswith("sqlite://"):
        return None
    path = url.removeprefix("sqlite://").removeprefix("/")
    return None if path in ("", ":memory:") else path
