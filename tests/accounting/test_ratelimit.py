"""Per-key rate limits: the sliding log's exact edges (fake clock), the same contract on Redis,
and 429s with Retry-After and x-ratelimit-* headers from the real gateway."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest

from callmissed.accounting.ratelimit import Limiter, MemoryLimiter
from callmissed.accounting.ratelimit.sqlite import SQLiteLimiter
from callmissed.errors import RateLimited
from callmissed.store import KeyPolicy
from callmissed.store.sqlite import SQLiteStore
from tests.accounting import chat, new_key, query, settle, start_billing_gateway
from tests.conftest import Gateway, require_service, stop_gateway

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


class Owners:
    """SQLiteLimiter's view of which processes are alive: the ones named here."""

    def __init__(self) -> None:
        self.alive = {"me"}

    def __call__(self, owner: str) -> bool:
        return owner in self.alive


def migrated(tmp_path) -> str:
    path = str(tmp_path / "limits.sqlite3")
    asyncio.run(SQLiteStore(path).close())  # applies the migrations, rate-limit tables included
    return path


@pytest.fixture
def sqlite_path(tmp_path):
    return migrated(tmp_path)


@pytest.fixture(params=["memory", "sqlite"])
def limiter(request, clock, sqlite_path):
    """The sliding log in memory, and in a SQLite file; the same fake-clock cases for both."""
    if request.param == "memory":
        yield MemoryLimiter(clock=clock)
        return
    shared = SQLiteLimiter(sqlite_path, "me", Owners(), clock=clock)
    yield shared
    asyncio.run(shared.close())


def refused(
    limiter: MemoryLimiter | SQLiteLimiter, policy: KeyPolicy, tokens: int = 1
) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        limiter.try_acquire(1, policy, tokens)
    return caught.value


# The sliding log, with a fake clock


def test_rpm_admits_exactly_the_limit_in_any_60_seconds(limiter, clock):
    policy = KeyPolicy(rpm=3)
    for offset in (0.0, 1.0, 2.0):
        clock.now = 1000 + offset
        limiter.try_acquire(1, policy, 1)
    clock.now = 1003
    assert refused(limiter, policy).retry_after == pytest.approx(57)  # the first leaves at 1060
    clock.now = 1059.999
    refused(limiter, policy)  # no window edge to burst across
    clock.now = 1060.0  # a request admitted at t has left the window at t + 60
    limiter.try_acquire(1, policy, 1)
    refused(limiter, policy)  # 1001, 1002 and 1060 are in (1000, 1060]
    clock.now = 1061.0
    limiter.try_acquire(1, policy, 1)


def test_tpm_counts_reservations_then_real_tokens(limiter, clock):
    policy = KeyPolicy(tpm=100)
    first = limiter.try_acquire(1, policy, 40)
    limiter.try_acquire(1, policy, 40)
    error = refused(limiter, policy, 40)  # 80 reserved + 40 > 100
    assert "80 are used or reserved" in error.message
    first.release(10)  # it used 10: 10 + 40 reserved
    limiter.try_acquire(1, policy, 40)  # 90
    refused(limiter, policy, 11)
    limiter.try_acquire(1, policy, 10)  # exactly 100 fits
    clock.now += 30
    refused(limiter, policy, 1)
    clock.now += 30  # the finished 10 leave the window 60 s after they finished
    limiter.try_acquire(1, policy, 10)


def test_a_request_larger_than_the_tpm_can_never_fit(limiter):
    error = refused(limiter, KeyPolicy(tpm=100), 101)
    assert error.retry_after is None
    assert "Lower max_tokens" in error.message


def test_concurrency_is_exact(limiter):
    policy = KeyPolicy(max_concurrent=2)
    first = limiter.try_acquire(1, policy, 5)
    limiter.try_acquire(1, policy, 5)
    refused(limiter, policy)
    first.release(5)
    first.release(5)  # a second release is a no-op
    limiter.try_acquire(1, policy, 5)
    refused(limiter, policy)


def test_keys_are_limited_independently(limiter):
    policy = KeyPolicy(rpm=1)
    limiter.try_acquire(1, policy, 1)
    limiter.try_acquire(2, policy, 1)
    refused(limiter, policy)


def test_headers_on_admission_and_refusal(limiter, clock):
    policy = KeyPolicy(rpm=2, tpm=1000, max_concurrent=5)
    lease = limiter.try_acquire(1, policy, 100)
    headers = dict(lease.headers())
    assert headers[b"x-ratelimit-limit-requests"] == b"2"
    assert headers[b"x-ratelimit-remaining-requests"] == b"1"
    assert headers[b"x-ratelimit-reset-requests"] == b"1m0s"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"900"
    assert headers[b"x-ratelimit-remaining-concurrency"] == b"4"
    clock.now += 0.5
    limiter.try_acquire(1, policy, 100)
    error = refused(limiter, policy)
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


# The SQLite limiter: shared between processes, bounded, and safe when one of them dies


def test_sqlite_unlimited_keys_never_touch_the_database(sqlite_path, clock):
    shared = SQLiteLimiter(sqlite_path, "me", Owners(), clock=clock)
    statements: list[str] = []
    shared._db.set_trace_callback(statements.append)
    lease = shared.try_acquire(1, KeyPolicy(), 10**9)
    lease.release(10**9)
    assert lease.headers() == []
    assert statements == []
    shared.try_acquire(1, KeyPolicy(rpm=1), 1).release(1)
    assert statements  # a limited key does pay
    asyncio.run(shared.close())


def test_sqlite_limits_are_shared_by_every_limiter_on_the_file(sqlite_path, clock):
    owners = Owners()
    owners.alive.add("other")
    mine = SQLiteLimiter(sqlite_path, "me", owners, clock=clock)
    theirs = SQLiteLimiter(sqlite_path, "other", owners, clock=clock)
    policy = KeyPolicy(rpm=3, max_concurrent=2)
    held = mine.try_acquire(1, policy, 1)
    theirs.try_acquire(1, policy, 1)
    error = refused(mine, policy)  # two in flight, one in each process
    assert "2 requests in flight" in error.message
    held.release(1)
    theirs.try_acquire(1, policy, 1)
    assert "3 requests per minute" in refused(mine, policy).message


def test_sqlite_reclaims_the_leases_of_a_dead_owner_only(sqlite_path, clock):
    owners = Owners()
    owners.alive.add("other")
    mine = SQLiteLimiter(sqlite_path, "me", owners, clock=clock)
    theirs = SQLiteLimiter(sqlite_path, "other", owners, clock=clock)
    policy = KeyPolicy(max_concurrent=1)
    theirs.try_acquire(1, policy, 1)
    refused(mine, policy)  # its owner is alive: the slot is taken
    owners.alive.discard("other")  # SIGKILLed: it will never release
    mine.try_acquire(1, policy, 1)
    refused(mine, policy)


def test_sqlite_tables_stay_bounded(sqlite_path, clock):
    shared = SQLiteLimiter(sqlite_path, "me", Owners(), clock=clock)
    for key_id in range(1, 51):  # 50 keys, used once, then idle
        shared.try_acquire(key_id, KeyPolicy(rpm=10, tpm=1000), 10).release(5)
    clock.now += 61
    shared.try_acquire(999, KeyPolicy(rpm=10), 1).release(0)  # the once-a-window sweep
    counts = [
        shared._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("rate_requests", "rate_tokens", "rate_leases")
    ]
    assert counts == [1, 0, 0]


# One contract, both limiters, real time with a short window


async def _redis_limiter(window: float) -> Limiter:
    from redis.asyncio import Redis

    from callmissed.accounting.ratelimit.redis import RedisLimiter

    probe = Redis.from_url(REDIS_URL)
    try:
        await probe.ping()
    except Exception as exc:
        require_service("Redis", f"{REDIS_URL}: {exc}")
    finally:
        await probe.aclose()
    return RedisLimiter(REDIS_URL, window=window, prefix=f"test-{uuid.uuid4().hex}")


async def _limiter(kind: str, window: float, tmp_path: Path) -> Limiter:
    if kind == "redis":
        return await _redis_limiter(window)
    if kind == "sqlite":
        path = str(tmp_path / "limits.sqlite3")
        await SQLiteStore(path).close()  # applies the migrations
        return SQLiteLimiter(path, "me", Owners(), window=window)
    return MemoryLimiter(window=window)


KINDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.services)]


@pytest.mark.parametrize("kind", KINDS)
def test_contract_rpm_edge_and_window(kind, tmp_path):
    async def run() -> None:
        limiter = await _limiter(kind, 0.5, tmp_path)
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


@pytest.mark.parametrize("kind", KINDS)
def test_contract_concurrency_and_tokens_under_a_burst(kind, tmp_path):
    async def attempt(limiter: Limiter, policy: KeyPolicy, tokens: int) -> bool:
        try:
            await limiter.acquire(8 if policy.tpm is None else 80, policy, tokens)
        except RateLimited:
            return False
        return True

    async def run() -> None:
        limiter = await _limiter(kind, 60, tmp_path)
        try:
            burst = [attempt(limiter, KeyPolicy(max_concurrent=5), 1) for _ in range(40)]
            assert sum(await asyncio.gather(*burst)) == 5
            burst = [attempt(limiter, KeyPolicy(tpm=100), 30) for _ in range(40)]
            assert sum(await asyncio.gather(*burst)) == 3  # 90 fits, 120 does not
        finally:
            await limiter.close()

    asyncio.run(run())


@pytest.mark.parametrize("kind", KINDS)
def test_contract_release_turns_a_reservation_into_real_tokens(kind, tmp_path):
    async def run() -> None:
        limiter = await _limiter(kind, 60, tmp_path)
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
        wait_for_workers(tmp_path, 2)
        key, _ = new_key(running, credits=1, rpm=5)
        statuses = burst(running, key, "priced", 20)
        assert statuses.count(200) == 5
        assert statuses.count(429) == 15
    finally:
        stop_gateway(running)


def wait_for_workers(workdir: Path, count: int) -> None:
    journals = workdir / "gateway.sqlite3.ledger"
    deadline = time.monotonic() + 10
    while len(list(journals.glob("*.journal"))) < count:  # each worker is up and serving
        assert time.monotonic() < deadline, "not every worker started"
        time.sleep(0.05)


def burst(running: Gateway, key: str, model: str, count: int) -> list[int]:
    """`count` requests at once (streamed: a slow fake's delay is before its first token)."""

    async def run() -> list[int]:
        async with httpx.AsyncClient(
            base_url=running.base_url, headers={"authorization": f"Bearer {key}"}, timeout=10
        ) as client:
            body = {
                "model": model,
                "max_tokens": 10,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            }
            responses = await asyncio.gather(
                *(client.post("/chat/completions", json=body) for _ in range(count))
            )
            return [response.status_code for response in responses]

    return asyncio.run(run())


def test_sqlite_makes_limits_exact_across_worker_processes(upstream, tmp_path):
    running = start_billing_gateway(upstream, tmp_path, "--workers", "2")
    try:
        wait_for_workers(tmp_path, 2)
        key, _ = new_key(running, credits=1, rpm=5)
        statuses = burst(running, key, "priced", 20)
        assert (statuses.count(200), statuses.count(429)) == (5, 15)
        key, _ = new_key(running, credits=1, max_concurrent=3)
        statuses = burst(running, key, "priced-slow", 12)
        assert (statuses.count(200), statuses.count(429)) == (3, 9)
        assert chat(running, key, max_tokens=10).status_code == 200  # all were released
        assert query(running, "SELECT count(*) FROM rate_leases") == [(0,)]
    finally:
        stop_gateway(running)


def test_sqlite_reclaims_the_lease_of_a_killed_gateway(upstream, tmp_path):
    running = start_billing_gateway(upstream, tmp_path, "--workers", "2")
    wait_for_workers(tmp_path, 2)
    key, _ = new_key(running, credits=1, max_concurrent=1)
    body = {
        "model": "priced-endless",
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    headers = {"authorization": f"Bearer {key}"}
    with (
        contextlib.suppress(httpx.HTTPError),
        httpx.stream(
            "POST", f"{running.base_url}/chat/completions", json=body, headers=headers, timeout=10
        ) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()  # kept: a dropped iterator closes the response
        next(lines)  # the lease is held: the request is in flight
        assert chat(running, key, max_tokens=10).status_code == 429
        kill_all(running.process.pid)  # SIGKILL: nothing is released, no journal is closed
    running.process.wait(5)
    assert query(running, "SELECT count(*) FROM rate_leases") == [(1,)]
    restarted = start_billing_gateway(upstream, tmp_path, "--workers", "2")
    try:
        assert chat(restarted, key, max_tokens=10).status_code == 200  # the slot came back
    finally:
        stop_gateway(restarted)


def kill_all(pid: int) -> None:
    """SIGKILL a process and its children (granian's workers), the children first. It is
    stopped (SIGSTOP) before, so it cannot start a worker in place of one killed."""
    os.kill(pid, signal.SIGSTOP)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in [*map(int, children), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
