"""Per-key rate limits: the sliding log's exact edges (fake clock), the same contract on Redis,
and 429s with Retry-After and x-ratelimit-* headers from the real gateway."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx
import pytest

from callmissed.errors import RateLimited
from callmissed.ratelimit import Limiter, MemoryLimiter
from callmissed.store import KeyPolicy
from tests.accounting import chat, new_key, settle, start_billing_gateway
from tests.conftest import require_service, stop_gateway

REDIS_URL = os.environ.get("CALLMISSED_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def memory(clock):
    return MemoryLimiter(clock=clock)


def refused(limiter: MemoryLimiter, policy: KeyPolicy, tokens: int = 1) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        limiter.try_acquire(1, policy, tokens)
    return caught.value


# The sliding log, with a fake clock


def test_rpm_admits_exactly_the_limit_in_any_60_seconds(memory, clock):
    policy = KeyPolicy(rpm=3)
    for offset in (0.0, 1.0, 2.0):
        clock.now = 1000 + offset
        memory.try_acquire(1, policy, 1)
    clock.now = 1003
    assert refused(memory, policy).retry_after == pytest.approx(57)  # the first leaves at 1060
    clock.now = 1059.999
    refused(memory, policy)  # no window edge to burst across
    clock.now = 1060.0  # a request admitted at t has left the window at t + 60
    memory.try_acquire(1, policy, 1)
    refused(memory, policy)  # 1001, 1002 and 1060 are in (1000, 1060]
    clock.now = 1061.0
    memory.try_acquire(1, policy, 1)


def test_tpm_counts_reservations_then_real_tokens(memory, clock):
    policy = KeyPolicy(tpm=100)
    first = memory.try_acquire(1, policy, 40)
    memory.try_acquire(1, policy, 40)
    error = refused(memory, policy, 40)  # 80 reserved + 40 > 100
    assert "80 are used or reserved" in error.message
    first.release(10)  # it used 10: 10 + 40 reserved
    memory.try_acquire(1, policy, 40)  # 90
    refused(memory, policy, 11)
    memory.try_acquire(1, policy, 10)  # exactly 100 fits
    clock.now += 30
    refused(memory, policy, 1)
    clock.now += 30  # the finished 10 leave the window 60 s after they finished
    memory.try_acquire(1, policy, 10)


def test_a_request_larger_than_the_tpm_can_never_fit(memory):
    error = refused(memory, KeyPolicy(tpm=100), 101)
    assert error.retry_after is None
    assert "Lower max_tokens" in error.message


def test_concurrency_is_exact(memory):
    policy = KeyPolicy(max_concurrent=2)
    first = memory.try_acquire(1, policy, 5)
    memory.try_acquire(1, policy, 5)
    refused(memory, policy)
    first.release(5)
    first.release(5)  # a second release is a no-op
    memory.try_acquire(1, policy, 5)
    refused(memory, policy)


def test_keys_are_limited_independently(memory):
    policy = KeyPolicy(rpm=1)
    memory.try_acquire(1, policy, 1)
    memory.try_acquire(2, policy, 1)
    refused(memory, policy)


def test_headers_on_admission_and_refusal(memory, clock):
    policy = KeyPolicy(rpm=2, tpm=1000, max_concurrent=5)
    lease = memory.try_acquire(1, policy, 100)
    headers = dict(lease.headers())
    assert headers[b"x-ratelimit-limit-requests"] == b"2"
    assert headers[b"x-ratelimit-remaining-requests"] == b"1"
    assert headers[b"x-ratelimit-reset-requests"] == b"1m0s"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"900"
    assert headers[b"x-ratelimit-remaining-concurrency"] == b"4"
    clock.now += 0.5
    memory.try_acquire(1, policy, 100)
    error = refused(memory, policy)
    refusal = dict(error.headers())
    assert refusal[b"retry-after"] == b"60"  # 59.5 s, rounded up
    assert refusal[b"retry-after-ms"] == b"59500"
    assert refusal[b"x-ratelimit-remaining-requests"] == b"0"


def test_unlimited_keys_cost_nothing_and_idle_keys_are_forgotten(memory, clock):
    lease = memory.try_acquire(1, KeyPolicy(), 10**9)
    assert lease.headers() == []
    limited = memory.try_acquire(1, KeyPolicy(tpm=100), 10)
    limited.release(10)
    clock.now += 61
    memory.try_acquire(2, KeyPolicy(rpm=1), 1)  # expiry happens on access
    memory.try_acquire(1, KeyPolicy(rpm=1), 1).release(0)
    clock.now += 61
    memory.try_acquire(1, KeyPolicy(rpm=1), 1).release(0)
    assert set(memory._logs) <= {1, 2}


# One contract, both limiters, real time with a short window


async def _redis_limiter(window: float) -> Limiter:
    from redis.asyncio import Redis

    from callmissed.ratelimit_redis import RedisLimiter

    probe = Redis.from_url(REDIS_URL)
    try:
        await probe.ping()
    except Exception as exc:
        require_service("Redis", f"{REDIS_URL}: {exc}")
    finally:
        await probe.aclose()
    return RedisLimiter(REDIS_URL, window=window, prefix=f"test-{uuid.uuid4().hex}")


async def _limiter(kind: str, window: float) -> Limiter:
    if kind == "redis":
        return await _redis_limiter(window)
    return MemoryLimiter(window=window)


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.services)])
def test_contract_rpm_edge_and_window(kind):
    async def run() -> None:
        limiter = await _limiter(kind, window=0.5)
        try:
            policy = KeyPolicy(rpm=3)
            for _ in range(3):
                await limiter.acquire(7, policy, 1)
            with pytest.raises(RateLimited) as caught:
                await limiter.acquire(7, policy, 1)
            retry_after = caught.value.retry_after
            assert retry_after is not None and 0 < retry_after <= 0.5
            await asyncio.sleep(0.55)
            await limiter.acquire(7, policy, 1)
        finally:
            await limiter.close()

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.services)])
def test_contract_concurrency_and_tokens_under_a_burst(kind):
    async def attempt(limiter: Limiter, policy: KeyPolicy, tokens: int) -> bool:
        try:
            await limiter.acquire(8 if policy.tpm is None else 80, policy, tokens)
        except RateLimited:
            return False
        return True

    async def run() -> None:
        limiter = await _limiter(kind, window=60)
        try:
            burst = [attempt(limiter, KeyPolicy(max_concurrent=5), 1) for _ in range(40)]
            assert sum(await asyncio.gather(*burst)) == 5
            burst = [attempt(limiter, KeyPolicy(tpm=100), 30) for _ in range(40)]
            assert sum(await asyncio.gather(*burst)) == 3  # 90 fits, 120 does not
        finally:
            await limiter.close()

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["memory", pytest.param("redis", marks=pytest.mark.services)])
def test_contract_release_turns_a_reservation_into_real_tokens(kind):
    async def run() -> None:
        limiter = await _limiter(kind, window=60)
        try:
            policy = KeyPolicy(tpm=100, max_concurrent=10)
            lease = await limiter.acquire(9, policy, 90)
            with pytest.raises(RateLimited):
                await limiter.acquire(9, policy, 20)
            lease.release(5)
            await asyncio.sleep(0.05)  # Redis releases in the background
            await limiter.acquire(9, policy, 95)  # 5 used + 95 = 100
            with pytest.raises(RateLimited):
                await limiter.acquire(9, policy, 1)
        finally:
            await limiter.close()

    asyncio.run(run())


@pytest.mark.services
def test_redis_gives_back_a_lease_whose_caller_was_cancelled():
    async def run() -> None:
        limiter = await _redis_limiter(window=60)
        try:
            policy = KeyPolicy(max_concurrent=1)
            waiting = asyncio.ensure_future(limiter.acquire(11, policy, 1))
            await asyncio.sleep(0)  # the script is on its way to Redis
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await asyncio.sleep(0.1)
            await limiter.acquire(11, policy, 1)  # the slot came back
        finally:
            await limiter.close()

    asyncio.run(run())


# Through the gateway


@pytest.fixture(scope="module")
def limited(upstream, tmp_path_factory):
    running = start_billing_gateway(upstream, tmp_path_factory.mktemp("limits"))
    yield running
    stop_gateway(running)


def test_rpm_at_the_edge_is_429_with_retry_after_and_headers(limited):
    key, _ = new_key(limited, credits=1, rpm=3)
    for remaining in ("2", "1", "0"):
        response = chat(limited, key, max_tokens=10)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-requests"] == remaining
    response = chat(limited, key, max_tokens=10)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 58 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-ratelimit-limit-requests"] == "3"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_tpm_at_the_edge(limited):
    # Each request reserves 7 (prompt estimate) + 50 (max_tokens) = 57 tokens and really uses 11.
    key, _ = new_key(limited, credits=1, tpm=114)
    statuses = [chat(limited, key, max_tokens=50).status_code for _ in range(7)]
    # used 11 per finished request: 11k + 57 <= 114 holds for k = 0..5, not for k = 6
    assert statuses == [200] * 6 + [429]
    assert chat(limited, key, max_tokens=2).status_code == 200  # 66 + 9 fits


def test_concurrency_at_the_edge(limited):
    key, _ = new_key(limited, credits=1, max_concurrent=2)

    async def run() -> list[int]:
        async with httpx.AsyncClient(
            base_url=limited.base_url, headers={"authorization": f"Bearer {key}"}, timeout=10
        ) as client:
            body = {
                "model": "priced-slow",
                "max_tokens": 10,
                "stream": True,  # the slow fake's delay is before its first token
                "messages": [{"role": "user", "content": "hi"}],
            }
            responses = await asyncio.gather(
                *(client.post("/chat/completions", json=body) for _ in range(6))
            )
            return sorted(response.status_code for response in responses)

    assert asyncio.run(run()) == [200, 200, 429, 429, 429, 429]
    assert chat(limited, key, max_tokens=10).status_code == 200  # released when they ended


def test_v1_key_reports_the_limits(limited):
    key, _ = new_key(limited, credits=2, rpm=10, tpm=1000, max_concurrent=3)
    assert settle(limited, key)["rate_limit"] == {
        "requests": 10,
        "tokens": 1000,
        "concurrent": 3,
        "interval": "1m",
    }


@pytest.mark.services
def test_redis_makes_limits_exact_across_worker_processes(upstream, tmp_path):
    import redis

    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.RedisError as exc:
        require_service("Redis", f"{REDIS_URL}: {exc}")
    running = start_billing_gateway(
        upstream,
        tmp_path,
        "--workers",
        "2",
        CALLMISSED_REDIS_URL=REDIS_URL,
        CALLMISSED_REDIS_PREFIX=f"test-{uuid.uuid4().hex}",
    )
    try:
        journals = tmp_path / "gateway.sqlite3.ledger"
        deadline = time.monotonic() + 10
        while len(list(journals.glob("*.journal"))) < 2:  # both workers are up and serving
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.05)
        key, _ = new_key(running, credits=1, rpm=5)

        async def run() -> list[int]:
            async with httpx.AsyncClient(
                base_url=running.base_url, headers={"authorization": f"Bearer {key}"}, timeout=10
            ) as client:
                body = {
                    "model": "priced",
                    "max_tokens": 10,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                responses = await asyncio.gather(
                    *(client.post("/chat/completions", json=body) for _ in range(20))
                )
                return [response.status_code for response in responses]

        statuses = asyncio.run(run())
        assert statuses.count(200) == 5
        assert statuses.count(429) == 15
    finally:
        stop_gateway(running)
