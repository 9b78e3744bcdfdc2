"""The usage ledger: journaled before the response ends, settled in batches, replayed after a
crash, flat in memory while the database is down; and a SIGKILL of the real gateway mid-traffic
loses no row of a request whose response completed."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from callmissed.accounting import ledger as ledger_module, wallet as wallet_module
from callmissed.accounting.ledger import Ledger
from callmissed.accounting.wallet import Wallet, Wallets
from callmissed.store import LedgerEntry, Store, open_store
from tests.accounting import (
    BACKENDS,
    HELLO_COST,
    backend_env,
    chat,
    in_wallets,
    new_key,
    query,
    settle,
    start_billing_gateway,
)
from tests.conftest import Gateway, stop_gateway
from tests.store.test_store_contract import entry

T = TypeVar("T")


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    yield opened
    call(opened.close())


def call(coroutine: Coroutine[Any, Any, T]) -> T:
    """SQLite's coroutines run synchronously inside, so any event loop will do."""
    return asyncio.run(coroutine)


def test_append_then_flush_settles(store, tmp_path):
    key = call(store.create_key("k", "h", "cm_x", 100))

    async def run() -> None:
        ledger = Ledger(store, tmp_path / "journal", Wallets(store))
        await ledger.start()
        wallet = await ledger.wallets.top_up(key.id, 50)
        assert isinstance(wallet, Wallet)
        ledger.begin("r1", key.id, "m", time.time())
        ledger.append(entry("r1", key.id, 17, wallet=wallet.hold_id))
        wallet.put_back(50, 17)
        waiting = ledger.pending
        assert waiting
        assert await ledger.flush(at_most=5)
        assert not ledger.pending
        await ledger.close()

    asyncio.run(run())
    record = call(store.get_key(key.id))
    assert (record.credits, record.spent) == (83, 17)
    assert call(store.hold_owners()) == set()  # the wallet went back to the balance
    assert list((tmp_path / "journal").iterdir()) == []  # a clean shutdown leaves nothing


@pytest.mark.parametrize("passes", range(4))
def test_close_ends_the_writer_even_as_it_wakes(store, tmp_path, monkeypatch, passes):
    monkeypatch.setattr(ledger_module, "_LINGER", 0)

    async def run() -> None:
        ledger = Ledger(store, tmp_path / "journal", Wallets(store))
        await ledger.start()
        await asyncio.sleep(0.05)  # the writer waits for a wake-up
        ledger._wake.set()
        await asyncio.sleep(0)  # it wakes and lingers
        ledger._wake.set()  # woken again meanwhile: it goes back to waiting already woken
        for _ in range(passes):  # the close lands at each step of that
            await asyncio.sleep(0)
        async with asyncio.timeout(2):
            await ledger.close()

    asyncio.run(run())


def test_entries_that_keep_coming_are_settled_in_batches(store, tmp_path, monkeypatch):
    """Requests that end back to back settle together: a transaction per linger of the writer,
    besides the full batches a large one splits into. Counted against the lingers that fit in
    the time the writer ran, not the requests that did: a loaded machine runs fewer requests in
    that time, not more transactions. At least 200 requests, so that a writer settling as they
    come (one transaction each) shows, however slow the loop."""
    key = call(store.create_key("k", "h", "cm_x", 10**6))
    batches: list[int] = []
    settle = store.settle

    async def counting_settle(entries: list[LedgerEntry]) -> None:
        batches.append(len(entries))
        await settle(entries)

    monkeypatch.setattr(store, "settle", counting_settle)

    async def run() -> None:
        ledger = Ledger(store, tmp_path / "journal", Wallets(store))
        loop = asyncio.get_running_loop()
        began = loop.time()
        await ledger.start()
        n = 0
        while loop.time() < began + 0.2 or n < 200:  # back-to-back requests, each waiting a
            ledger.begin(f"r{n}", key.id, "m", time.time())  # moment for its upstream
            await asyncio.sleep(0.0002)
            ledger.append(entry(f"r{n}", key.id, 1))
            n += 1
        assert await ledger.flush(at_most=5)
        await ledger.close()
        lingers = (loop.time() - began) / ledger_module._LINGER
        # A drain's last batch is its only one short of full: one per linger at most.
        short = [size for size in batches if size < ledger_module._BATCH_ENTRIES]
        assert sum(batches) == n and len(short) <= lingers + 1, (n, lingers, batches[:20])

    asyncio.run(run())


def test_starts_are_journaled_together_once_the_loop_is_free(store, tmp_path):
    key = call(store.create_key("k", "h", "cm_x", 100))

    async def run() -> None:
        ledger = Ledger(store, tmp_path / "journal", Wallets(store))
        await ledger.start()
        for request_id in ("a", "b", "gone"):
            ledger.begin(request_id, key.id, "m", time.time())
        ledger.append(entry("gone", key.id, 0))  # it ended before the loop was free: no start
        assert b'"begin"' not in ledger._path.read_bytes()
        await asyncio.sleep(0)
        lines = ledger._path.read_bytes().splitlines()
        begun = [line["begin"] for line in map(orjson.loads, lines) if "begin" in line]
        assert begun == ["a", "b"]
        ledger.append(entry("a", key.id, 0))
        ledger.append(entry("b", key.id, 0))
        await ledger.close()

    asyncio.run(run())


def _crash(ledger: Ledger) -> None:
    """What SIGKILL leaves behind: the journal file, unlocked, its writer gone."""
    assert ledger._writer is not None
    ledger._writer.cancel()
    os.close(ledger._fd)


async def _hold(ledger: Ledger, key_id: int, request_id: str, amount: int) -> Wallet:
    """What Accounting.admit does for a metered request: hold from the wallet, journal the start."""
    wallet = ledger.wallets.take(key_id, amount) or await ledger.wallets.top_up(key_id, amount)
    assert isinstance(wallet, Wallet)
    ledger.begin(request_id, key_id, "m", time.time())
    await asyncio.sleep(0)  # it waits for its upstream: meanwhile the loop journals its start
    return wallet


def test_a_dead_process_journal_is_replayed_and_its_wallets_given_back(store, tmp_path):
    key = call(store.create_key("k", "h", "cm_x", 1000))
    directory = tmp_path / "journal"

    async def die() -> None:
        ledger = Ledger(store, directory, Wallets(store))
        await ledger.start()
        wallet = await _hold(ledger, key.id, "done", 100)
        await _hold(ledger, key.id, "in-flight", 100)
        ledger.append(entry("done", key.id, 17, wallet=wallet.hold_id))  # journaled, unsettled
        _crash(ledger)

    async def restart() -> None:
        ledger = Ledger(store, directory, Wallets(store))
        await ledger.start()  # replays the dead journal first
        await ledger.close()

    asyncio.run(die())
    assert call(store.hold_owners()) != set()  # the dead process's wallet, until recovery
    asyncio.run(restart())
    record = call(store.get_key(key.id))
    assert record is not None and (record.credits, record.spent) == (1000 - 17, 17)
    rows = {row["request_id"]: row for row in call(store.recent_usage(key.id, 10))}
    assert rows["done"]["cost"] == 17 and rows["done"]["status"] == 200
    assert rows["in-flight"]["error_code"] == "interrupted" and rows["in-flight"]["cost"] == 0
    assert rows["in-flight"]["status"] == 500
    assert call(store.hold_owners()) == set()
    assert list(directory.iterdir()) == []


def test_a_clean_close_writes_requests_in_flight_as_interrupted(store, tmp_path):
    key = call(store.create_key("k", "h", "cm_x", 1000))

    async def run() -> None:
        ledger = Ledger(store, tmp_path / "journal", Wallets(store))
        await ledger.start()
        wallet = await _hold(ledger, key.id, "done", 100)
        await _hold(ledger, key.id, "in-flight", 100)
        ledger.append(entry("done", key.id, 17, wallet=wallet.hold_id))
        wallet.put_back(100, 17)
        await ledger.close()
        # the straggler ends after shutdown: its row is written already, so nothing changes
        ledger.append(entry("in-flight", key.id, 40, wallet=wallet.hold_id))
        await asyncio.sleep(0.05)

    asyncio.run(run())
    record = call(store.get_key(key.id))
    assert record is not None and (record.credits, record.spent) == (1000 - 17, 17)
    rows = {row["request_id"]: row for row in call(store.recent_usage(key.id, 10))}
    assert (rows["in-flight"]["error_code"], rows["in-flight"]["cost"]) == ("interrupted", 0)
    assert call(store.hold_owners()) == set()


def test_an_idle_wallet_goes_back_to_the_balance(store, tmp_path, monkeypatch):
    monkeypatch.setattr(wallet_module, "IDLE", 0.2)
    key = call(store.create_key("k", "h", "cm_x", 1000))

    async def run() -> None:
        ledger = Ledger(store, tmp_path / "journal", Wallets(store))
        await ledger.start()
        wallet = await _hold(ledger, key.id, "r1", 100)
        ledger.append(entry("r1", key.id, 17, wallet=wallet.hold_id))
        wallet.put_back(100, 17)
        await ledger.flush(at_most=5)
        assert await store.hold_owners() == {ledger.instance}  # kept for the next request
        await asyncio.sleep(1.0)  # idle for longer than IDLE, and the writer looked
        assert await store.hold_owners() == set()
        assert len(ledger.wallets) == 0
        again = await _hold(ledger, key.id, "r2", 100)  # the next request opens a new one
        assert again is not wallet and again.hold_id != wallet.hold_id
        ledger.append(entry("r2", key.id, 17, wallet=again.hold_id))
        again.put_back(100, 17)
        await ledger.close()

    asyncio.run(run())
    record = call(store.get_key(key.id))
    assert record is not None and (record.credits, record.spent) == (1000 - 34, 34)


def test_a_wallet_in_use_is_not_given_back(store, tmp_path, monkeypatch):
    monkeypatch.setattr(wallet_module, "IDLE", 0.0)
    key = call(store.create_key("k", "h", "cm_x", 1000))

    async def run() -> None:
        ledger = Ledger(store, tmp_path / "journal", Wallets(store))
        await ledger.start()
        wallet = await _hold(ledger, key.id, "long", 100)
        await asyncio.sleep(1.0)  # the writer looked, twice: a request still holds part of it
        assert await store.hold_owners() == {ledger.instance}
        ledger.append(entry("long", key.id, 90, wallet=wallet.hold_id))
        wallet.put_back(100, 90)
        await asyncio.sleep(1.0)
        assert await store.hold_owners() == set()
        await ledger.close()

    asyncio.run(run())
    record = call(store.get_key(key.id))
    assert record is not None and (record.credits, record.spent) == (910, 90)


def test_replay_is_idempotent_and_ignores_a_torn_last_line(store, tmp_path):
    key = call(store.create_key("k", "h", "cm_x", 1000))
    directory = tmp_path / "journal"
    directory.mkdir()
    line = b'{"request_id":"r1","key_id":%d' % key.id
    good = Ledger(store, directory, Wallets(store))
    journal = directory / "dead.journal"
    journal.write_bytes(_line(entry("r1", key.id, 10)) * 2 + line)  # twice, then a torn write
    call(store.settle([entry("r1", key.id, 10)]))  # and it was settled already, before the crash

    async def run() -> None:
        await good.start()
        await good.close()

    asyncio.run(run())
    assert call(store.get_key(key.id)).credits == 990
    assert not journal.exists()


def _line(item: LedgerEntry) -> bytes:
    return orjson.dumps(item) + b"\n"


class _FlakyStore:
    """A store whose settle() fails while `down` is set, like a database that went away."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = True
        self.calls = 0

    async def settle(self, entries: Any) -> None:
        self.calls += 1
        if self.down:
            raise OSError("database is down")
        await self.inner.settle(entries)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_database_outage_grows_the_journal_not_memory_and_loses_nothing(store, tmp_path):
    key = call(store.create_key("k", "h", "cm_x", None))
    flaky = _FlakyStore(store)

    async def run() -> None:
        ledger = Ledger(flaky, tmp_path / "journal", Wallets(flaky))
        await ledger.start()
        for n in range(2000):
            ledger.append(entry(f"r{n}", key.id, 1))
        await asyncio.sleep(0.2)
        assert ledger.pending and flaky.calls >= 1
        assert not await ledger.flush(at_most=0.05)  # nothing is lost, nothing settles
        assert ledger._path.stat().st_size > 2000 * 200  # on disk, not in a queue
        flaky.down = False
        assert await ledger.flush(at_most=10)
        await ledger.close()

    asyncio.run(run())
    assert call(store.get_key(key.id)).spent == 2000
    assert len(call(store.recent_usage(key.id, 5000))) == 2000


def test_past_its_memory_bound_the_writer_reads_the_journal_and_loses_nothing(
    store, tmp_path, monkeypatch
):
    """Unsettled entries are settled from memory up to a bound; past it (a long outage) they
    are read back from the journal, and once caught up memory takes over again."""
    monkeypatch.setattr(ledger_module, "_MIRROR_ENTRIES", 500)
    key = call(store.create_key("k", "h", "cm_x", None))
    flaky = _FlakyStore(store)
    read_back: list[int] = []
    parse = ledger_module._parse

    def counting_parse(data: bytes, *args: Any, **kwargs: Any) -> Any:
        parsed = parse(data, *args, **kwargs)
        read_back.append(len(parsed[0]))
        return parsed

    monkeypatch.setattr(ledger_module, "_parse", counting_parse)

    async def run() -> None:
        ledger = Ledger(flaky, tmp_path / "journal", Wallets(flaky))
        await ledger.start()
        for n in range(2000):
            ledger.append(entry(f"r{n}", key.id, 1))
        assert _mirrored(ledger) is None  # given up at 500: memory stays bounded
        flaky.down = False
        assert await ledger.flush(at_most=10)
        assert sum(read_back) == 2000  # all of them from the journal
        await asyncio.sleep(0.05)  # the writer ends its pass: caught up, it mirrors again
        for n in range(2000, 2100):
            ledger.append(entry(f"r{n}", key.id, 1))
        assert _mirrored(ledger) == 100
        assert await ledger.flush(at_most=10)
        assert sum(read_back) == 2000 and _mirrored(ledger) == 0  # the new ones from memory
        await ledger.close()

    asyncio.run(run())
    assert call(store.get_key(key.id)).spent == 2100
    assert len(call(store.recent_usage(key.id, 5000))) == 2100


def _mirrored(ledger: Ledger) -> int | None:
    """How many unsettled entries the ledger holds in memory; None: it reads its journal."""
    return None if ledger._mirror is None else len(ledger._mirror)


def test_a_settled_journal_starts_over(store, tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "_TRUNCATE_AT", 10_000)
    key = call(store.create_key("k", "h", "cm_x", None))

    async def run() -> None:
        ledger = Ledger(store, tmp_path / "journal", Wallets(store))
        await ledger.start()
        for n in range(100):
            ledger.append(entry(f"r{n}", key.id, 1))
        await ledger.flush(at_most=5)
        await asyncio.sleep(0.05)
        assert ledger._path.stat().st_size == 0
        ledger.append(entry("after", key.id, 1))  # appends go on at the start of the file
        await ledger.flush(at_most=5)
        await ledger.close()

    asyncio.run(run())
    assert call(store.get_key(key.id)).spent == 101


class _CountingStore:
    """A real store that counts the wallet top-ups asked of it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.funds = 0

    async def fund(self, *args: Any) -> Any:
        self.funds += 1
        return await self.inner.fund(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_busy_wallet_is_topped_up_in_the_background_in_growing_batches(store):
    key = call(store.create_key("k", "h", "cm_x", 10**12))
    counting = _CountingStore(store)
    wallets = Wallets(counting, "i1")

    async def run() -> None:
        first = await wallets.top_up(key.id, 100)  # the wallet was empty: the request waits
        assert isinstance(first, Wallet)
        first.put_back(100, 40)
        for _ in range(2000):
            wallet = wallets.take(key.id, 100)
            assert wallet is not None  # never short: refills landed in time
            wallet.put_back(100, 40)
            await asyncio.sleep(0)  # other requests, and a refill, run in between
        assert counting.funds <= 8  # 16, 32, 64... worst cases per top-up, not 16 each time
        await wallets.close()
        assert await store.release_holds("i1") == 1  # one row, however many top-ups

    asyncio.run(run())
    record = call(store.get_key(key.id))
    assert record is not None and record.credits == 10**12  # nothing journaled, nothing spent


def test_a_journal_that_starts_over_keeps_the_requests_in_flight(store, tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "_TRUNCATE_AT", 10_000)
    key = call(store.create_key("k", "h", "cm_x", 10_000))
    directory = tmp_path / "journal"

    async def die() -> None:
        ledger = Ledger(store, directory, Wallets(store))
        await ledger.start()
        await _hold(ledger, key.id, "in-flight", 100)
        for n in range(100):
            ledger.append(entry(f"r{n}", key.id, 1))
        await ledger.flush(at_most=5)
        await asyncio.sleep(0.05)
        assert ledger._path.read_bytes().startswith(b'{"begin":"in-flight"')
        assert not ledger.pending
        _crash(ledger)

    async def restart() -> None:
        ledger = Ledger(store, directory, Wallets(store))
        await ledger.start()
        await ledger.close()

    asyncio.run(die())
    asyncio.run(restart())
    rows = {row["request_id"]: row for row in call(store.recent_usage(key.id, 200))}
    assert rows["in-flight"]["error_code"] == "interrupted"
    record = call(store.get_key(key.id))
    assert record is not None and (record.credits, record.spent) == (10_000 - 100, 100)


# The real gateway, killed


def _children(pid: int) -> list[int]:
    found = []
    for entry_ in Path("/proc").iterdir():
        if entry_.name.isdigit():
            try:
                stat = (entry_ / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry_.name))
    return found


def _sigkill(gateway: Gateway) -> None:
    """SIGKILL the server and its worker processes (ours, by pid), workers first. The server is
    stopped (SIGSTOP) before: a server that sees its worker die starts another, which would
    outlive it."""
    os.kill(gateway.process.pid, signal.SIGSTOP)
    for child in _children(gateway.process.pid):
        os.kill(child, signal.SIGKILL)
    gateway.process.kill()
    gateway.process.wait(10)


def _traffic(gateway: Gateway, key: str, stop: threading.Event, done: list[str]) -> None:
    body = {"model": "priced", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gateway.base_url, headers=headers, timeout=5) as client:
        n = 0
        while not stop.is_set():
            n += 1
            stream = n % 2 == 0
            try:
                response = client.post("/chat/completions", json={**body, "stream": stream})
            except httpx.HTTPError:
                return  # the server died under us: this request did not complete
            complete = response.status_code == 200 and (
                not stream or response.text.endswith("data: [DONE]\n\n")
            )
            if complete:
                done.append(response.headers["x-request-id"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_traffic_loses_no_completed_row(upstream, tmp_path, backend):
    with backend_env(backend) as env:
        _kill_and_restart(upstream, tmp_path, env)


def _kill_and_restart(upstream: Any, tmp_path: Path, env: dict[str, str]) -> None:
    first = start_billing_gateway(upstream, tmp_path, **env)
    key, key_id = new_key(first, credits=10)
    stop = threading.Event()
    done: list[str] = []
    threads = [threading.Thread(target=_traffic, args=(first, key, stop, done)) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20  # traffic, not time, decides when to kill: a busy machine
    while len(done) <= 50 and time.monotonic() < deadline:  # completes fewer requests a second
        time.sleep(0.05)
    _sigkill(first)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert len(done) > 50
    second = start_billing_gateway(upstream, tmp_path, **env)  # same database and journals
    try:
        settle(second, key)
        rows = dict(query(second, "SELECT request_id, status FROM ledger WHERE key_id = ?", key_id))
        missing = [request_id for request_id in done if rows.get(request_id) != 200]
        assert not missing, f"{len(missing)} completed requests have no ledger row"
        assert query(second, "SELECT count(*) FROM holds") == [(0,)]
        [(credits, spent, granted)] = query(
            second, "SELECT credits, spent, granted FROM api_keys WHERE id = ?", key_id
        )
        [(charged,)] = query(second, "SELECT sum(cost) FROM ledger WHERE key_id = ?", key_id)
        assert spent == charged  # every micro-credit spent is in the ledger
        assert credits + spent == granted  # and none was created or lost
    finally:
        stop_gateway(second)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_mid_stream_with_a_wallet_out(upstream, tmp_path, backend):
    """Killed while a stream holds part of its key's wallet: after a restart the balance is the
    grant minus what completed requests cost, and the stream is in the ledger as interrupted."""
    with backend_env(backend) as env:
        first = start_billing_gateway(upstream, tmp_path, **env)
        key, key_id = new_key(first, credits=1)
        done = [chat(first, key, max_tokens=20) for _ in range(3)]
        assert [response.status_code for response in done] == [200] * 3
        body = {"model": "priced-endless", "stream": True, "max_tokens": 1000}
        body["messages"] = [{"role": "user", "content": "count"}]
        headers = {"authorization": f"Bearer {key}"}
        with httpx.stream(
            "POST", f"{first.base_url}/chat/completions", json=body, headers=headers, timeout=10
        ) as streaming:
            lines = streaming.iter_lines()  # kept open: closing it would hang up
            while '"content":"."' not in next(lines):
                pass  # until a token reached us: the stream holds its worst case
            interrupted = streaming.headers["x-request-id"]
            assert in_wallets(first, key_id) > 0
            _sigkill(first)
        second = start_billing_gateway(upstream, tmp_path, **env)
        try:
            settle(second, key)
            rows = query(
                second, "SELECT status, error_code, cost FROM ledger WHERE request_id = ?",
                interrupted,
            )  # fmt: skip
            assert rows == [(500, "interrupted", 0)]
            assert query(second, "SELECT count(*) FROM holds") == [(0,)]  # wallets given back
            costs = query(
                second, "SELECT count(*), sum(cost) FROM ledger WHERE key_id = ? AND status = 200",
                key_id,
            )  # fmt: skip
            assert costs == [(3, 3 * HELLO_COST)]
            [(credits, spent)] = query(
                second, "SELECT credits, spent FROM api_keys WHERE id = ?", key_id
            )
            assert (credits, spent) == (1_000_000 - 3 * HELLO_COST, 3 * HELLO_COST)
        finally:
            stop_gateway(second)
