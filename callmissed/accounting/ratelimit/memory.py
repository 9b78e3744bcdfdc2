"""MemoryLimiter: the sliding log in this process's memory, exact for one process (one worker)."""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from callmissed.accounting.ratelimit.base import (
    UNLIMITED,
    WINDOW,
    HeldLease,
    Lease,
    Snapshot,
    limited,
    refusal,
)
from callmissed.store import KeyPolicy

__all__ = ["MemoryLimiter"]


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
