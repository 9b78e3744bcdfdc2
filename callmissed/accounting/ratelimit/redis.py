"""RedisLimiter: the sliding log (ratelimit/__init__.py) kept in Redis, shared by every process
and replica.

Each check is one Lua script (one round-trip, atomic in Redis), using Redis's clock so replicas
with skewed clocks still share one window. Per key: a sorted set of admission times, a sorted
set of finished requests' tokens (plus their running sum), and a hash of the requests in flight
with an expiry, so a crashed process's leases cannot hold a key's concurrency forever.
If Redis is unreachable the limiter admits (fail-open) and logs: credits are enforced by the
database regardless, and an outage of the limiter should not become an outage of the gateway.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from callmissed.accounting.ratelimit.base import (
    UNLIMITED,
    WINDOW,
    HeldLease,
    Lease,
    Snapshot,
    refusal,
)
from callmissed.store import KeyPolicy

__all__ = ["RedisLimiter"]

log = logging.getLogger("callmissed")

LEASE_TTL_MS = 45 * 60 * 1000  # an in-flight entry older than this is a crashed process's

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, maxc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local need, lease, ttl, window = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local horizon = now - window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
local finished = tonumber(redis.call('GET', KEYS[3]) or '0')
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)
if #old > 0 then
  for _, member in ipairs(old) do
    finished = finished - tonumber(string.match(member, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
  redis.call('SET', KEYS[3], finished)
end
local reserved, flying = 0, 0
local flight = redis.call('HGETALL', KEYS[4])
for i = 1, #flight, 2 do
  local tokens, expires = string.match(flight[i + 1], '(%d+):(%d+)')
  if tonumber(expires) <= now then
    redis.call('HDEL', KEYS[4], flight[i])
  else
    reserved = reserved + tonumber(tokens)
    flying = flying + 1
  end
end
local requests = redis.call('ZCARD', KEYS[1])
local verdict = 0
if rpm >= 0 and requests >= rpm then verdict = 1
elseif tpm >= 0 and finished + reserved + need > tpm then verdict = 2
elseif maxc >= 0 and flying >= maxc then verdict = 3 end
if verdict == 0 then
  if rpm >= 0 then
    redis.call('ZADD', KEYS[1], now, lease)
    requests = requests + 1
  end
  redis.call('HSET', KEYS[4], lease, need .. ':' .. (now + ttl))
  reserved = reserved + need
  flying = flying + 1
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], window + ttl) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local last = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {verdict, requests, first[2] or -1, finished + reserved, last[2] or -1, flying, now}
"""

_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HDEL', KEYS[3], ARGV[1])
local tokens = tonumber(ARGV[2])
if ARGV[3] == '1' and tokens > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[1] .. ':' .. tokens)
  redis.call('INCRBY', KEYS[2], tokens)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
return 1
"""


def _keys(prefix: str, key_id: int) -> list[str]:
    # One hash tag per API key: all four keys live on one Redis Cluster slot.
    prefix = f"{prefix}:rl:{{{key_id}}}"
    return [
        f"{prefix}:requests",
        f"{prefix}:finished",
        f"{prefix}:finished_sum",
        f"{prefix}:flight",
    ]


class RedisLimiter:
    """The Limiter protocol over Redis; exact across any number of gateway processes."""

    def __init__(self, url: str, window: float = WINDOW, prefix: str = "callmissed") -> None:
        self._window_ms = int(window * 1000)
        self._prefix = prefix
        self._redis: Redis = Redis.from_url(url)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)
        self._pending: set[asyncio.Task[None]] = set()
        self._last_warning = 0.0

    async def acquire(self, key_id: int, policy: KeyPolicy, tokens: int) -> Lease:
        if policy.rpm is None and policy.tpm is None and policy.max_concurrent is None:
            return UNLIMITED
        lease = uuid.uuid4().hex
        args: list[int | str] = [
            _or_none(policy.rpm),
            _or_none(policy.tpm),
            _or_none(policy.max_concurrent),
            tokens,
            lease,
            LEASE_TTL_MS,
            self._window_ms,
        ]  # fmt: skip
        call = asyncio.ensure_future(self._acquire(keys=_keys(self._prefix, key_id), args=args))
        try:
            # Shielded: if our caller is cancelled (the client left) while Redis decides, a
            # lease Redis granted is still handed back, or it would hold a slot for LEASE_TTL.
            reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(lambda done: self._return_unused(done, key_id, lease))
            raise
        except RedisError as exc:
            self._warn(exc)
            return UNLIMITED
        verdict, snapshot = _read(reply, self._window_ms)
        if verdict != 0:
            error = refusal(policy, snapshot, tokens)
            if error is not None:
                raise error
        give_back = functools.partial(self._schedule_release, key_id, lease)
        return HeldLease(policy, snapshot, give_back)

    def _return_unused(self, call: asyncio.Future[Any], key_id: int, lease: str) -> None:
        if not call.cancelled() and call.exception() is None and int(call.result()[0]) == 0:
            self._schedule_release(key_id, lease, 0, False)

    def _schedule_release(self, key_id: int, lease: str, tokens: int, count: bool) -> None:
        keys = _keys(self._prefix, key_id)
        lifetime = self._window_ms + LEASE_TTL_MS  # how long an idle key's entries are kept
        args: list[int | str] = [lease, tokens, "1" if count else "0", lifetime]
        task = asyncio.get_running_loop().create_task(self._run_release(keys[1:], args))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _run_release(self, keys: list[str], args: list[int | str]) -> None:
        try:
            await self._release(keys=keys, args=args)
        except RedisError as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.error("rate limits are not enforced: Redis failed (%s)", exc)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._redis.aclose()


def _or_none(limit: int | None) -> int:
    return -1 if limit is None else limit


def _read(reply: list[Any], window_ms: int) -> tuple[int, Snapshot]:
    verdict, requests, first, tokens, last, flying, now = (int(float(x)) for x in reply)
    snapshot = Snapshot(
        requests=requests,
        requests_reset=max(first + window_ms - now, 0) / 1000 if first >= 0 else 0.0,
        tokens=tokens,
        tokens_reset=max(last + window_ms - now, 0) / 1000 if last >= 0 else 0.0,
        in_flight=flying,
    )
    return verdict, snapshot
