"""Per-key rate limits: requests per minute, tokens per minute, requests in flight.

The algorithm is a sliding log, exact at the edge: a request is admitted iff, over the 60 s
ending now, fewer than `rpm` requests were admitted, and the tokens of finished requests plus
the reserved tokens of requests in flight plus this request's reservation fit in `tpm`, and
fewer than `max_concurrent` requests are in flight. A request reserves its worst case (prompt
estimate + max_tokens, as OpenAI counts it); when it ends, the reservation becomes its real
token count, dated at its end. There is no window edge, so no double burst (docs/credits.md).

`Limiter` is the interface (base.py); MemoryLimiter (memory.py) serves one process,
SQLiteLimiter (sqlite.py) the processes on one SQLite file, RedisLimiter (redis.py) any
processes and replicas; open_limiter() picks one.
"""

from __future__ import annotations

from collections.abc import Callable

from callmissed.accounting.ratelimit.base import (
    UNLIMITED,
    WINDOW,
    HeldLease,
    Lease,
    Limiter,
    Snapshot,
    limited,
    rate_limit_headers,
    refusal,
)
from callmissed.accounting.ratelimit.memory import MemoryLimiter
from callmissed.settings import Settings

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
