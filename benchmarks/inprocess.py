"""The gateway's own cost per streamed request, without the HTTP server.

Run: `python -m benchmarks.inprocess`.

Drives `web.App` directly (what rsgi.py calls for each request) against the benchmark's fake
upstream, one request at a time, with auth, a metered key, the ledger and failover on, and
prints the best wall and CPU time per request of three rounds. Machine speed here drifts by
tens of percent between runs, so compare two checkouts in alternating runs, or count
instructions, which do not drift:

    python -m benchmarks.inprocess --requests 2000                       # time
    python -m benchmarks.inprocess --profile                             # where (cProfile)
    python -m benchmarks.inprocess --tail                                # what the slowest 1 % met
    python -m benchmarks.inprocess --held 1000                           # held streams, see below
    python -m benchmarks.inprocess --messages 20                         # a longer conversation
    valgrind --tool=callgrind python -m benchmarks.inprocess --requests 50 --linger 5  # then 250:
        # (Ir at 250 - Ir at 50) / 600 = instructions per request, start-up cancelled out

`--held N` runs N concurrent streams paced 20 ms apart instead, in rounds, and prints the CPU
per relayed chunk and the garbage collector's share and longest pause, with the collector tuned
as a served worker's is (edge/collector.py); `--default-gc` leaves CPython's defaults.

`--store postgres` runs it on PostgreSQL + Redis on 127.0.0.1 (a throwaway schema), as
`callmissed serve` runs in scale-out mode; with `--tail`, what its slowest requests met.

`--linger 5` makes the ledger writer settle in full 64-entry batches whatever the speed: under
valgrind a request takes ~50x longer, so the usual 20 ms linger would settle a batch of one or
two requests at random moments, and the counts would swing by several percent between runs.
It holds the access log's batches (observe.py) as long, for the same reason.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import uvloop

from benchmarks.systems import ROOT, drop_schema, free_port, scale_out_env, wait_healthy

__all__ = ["main"]

_QUESTION = {"role": "user", "content": "Say hello in five words, please."}
_ANSWER = {"role": "assistant", "content": "Hello there, how are you?"}


def _body(messages: int) -> bytes:
    """A streamed chat request whose conversation has `messages` turns, the last a question."""
    turns = [_QUESTION if (messages - index) % 2 else _ANSWER for index in range(messages)]
    return orjson.dumps({"model": "bench-fast", "stream": True, "messages": turns})


_CONFIG = """
[providers.bench]
type = "openai"
base_url = "http://127.0.0.1:{port}/v1"

[models."bench-fast"]
routes = ["bench:fast"]
prices = {{ input = 0.15, cached_input = 0.075, output = 0.6 }}

[models."bench-paced"]
routes = ["bench:paced"]
prices = {{ input = 0.15, cached_input = 0.075, output = 0.6 }}
"""
_PACED_BODY = orjson.dumps({**orjson.loads(_body(1)), "model": "bench-paced"})


class _Tail:
    """Each request's time to its first write, and the settles and collections that ran: which of
    them the slowest 1 % overlapped (the c=1 p99, docs/performance.md)."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, float]] = []  # (start, seconds to the first write)
        self.events: list[tuple[str, float, float]] = []  # (kind, start, seconds)
        self._gc_started = 0.0

    def watch(self, store: Any) -> None:
        settle = store.settle

        async def timed_settle(entries: list[Any]) -> None:
            started = time.perf_counter()
            await settle(entries)
            self.events.append(("settle", started, time.perf_counter() - started))

        store.settle = timed_settle
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            took = time.perf_counter() - self._gc_started
            self.events.append((f"gc{info['generation']}", self._gc_started, took))

    def report(self) -> str:
        took = sorted(seconds for _, seconds in self.requests)
        at = [took[int(len(took) * share)] * 1e6 for share in (0.5, 0.9, 0.99, 0.999)]
        slowest = [(start, seconds) for start, seconds in self.requests if seconds >= at[2] / 1e6]
        met: Counter[str] = Counter()
        for start, seconds in slowest:
            ends = start + seconds
            kinds = {
                kind
                for kind, began, lasted in self.events
                if began < ends and began + lasted > start
            }
            met[",".join(sorted(kinds)) or "nothing"] += 1
        p50, p90, p99, p999 = at
        lines = [
            f"to the first write, us: p50 {p50:.0f}, p90 {p90:.0f}, p99 {p99:.0f}, p99.9 {p999:.0f}"
        ]
        lines.append(f"the slowest 1 % ({len(slowest)}) overlapped: {dict(met.most_common())}")
        for kind in sorted({kind for kind, _, _ in self.events}):
            lasted = sorted(seconds for k, _, seconds in self.events if k == kind)
            median, longest = lasted[len(lasted) // 2] * 1e6, lasted[-1] * 1e6
            lines.append(f"{kind}: {len(lasted)}, median {median:.0f} us, max {longest:.0f} us")
        return "\n".join(lines)


async def _measure(
    requests: int,
    profile: cProfile.Profile | None,
    tail: _Tail | None = None,
    body: bytes = _body(1),
) -> tuple[float, float]:
    # Imported here: the environment names the config and database before settings load.
    from callmissed.app import build_app
    from callmissed.auth import create_key
    from callmissed.edge.web import Request, StreamResponse, write_stream
    from callmissed.gateway import Gateway
    from callmissed.settings import load_settings

    settings = load_settings()
    gateway = Gateway(settings)
    app = build_app(settings, gateway)
    await app.startup()
    key, _ = await create_key(gateway.store, "inprocess", 10**12)
    if tail is not None:
        tail.watch(gateway.store)
    headers = {"authorization": f"Bearer {key}", "content-length": str(len(body))}
    endpoint = app.route("POST", "/v1/chat/completions")
    loop = asyncio.get_running_loop()

    started = first_write = 0.0

    async def discard(part: bytes) -> None:
        nonlocal first_write
        first_write = first_write or time.perf_counter()

    async def one() -> None:
        nonlocal started, first_write
        gone: asyncio.Future[None] = loop.create_future()
        request_id = "req_" + os.urandom(8).hex()
        started, first_write = time.perf_counter(), 0.0
        principal, _ = await app.admit(endpoint, headers)  # as rsgi.py does, before the body
        request = Request(
            "POST", "/v1/chat/completions", headers, body, request_id, None, principal
        )
        response = await app.respond(endpoint, request, gone)
        assert isinstance(response, StreamResponse), response
        await write_stream(response, discard, gone, request_id)
        if tail is not None:
            tail.requests.append((started, first_write - started))

    for _ in range(300):  # warm: pools, caches, the wallet
        await one()
    best_wall = best_cpu = float("inf")
    for _ in range(3):
        if profile is not None:
            profile.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests):
            await one()
        best_wall = min(best_wall, (time.perf_counter() - wall) / requests * 1e6)
        best_cpu = min(best_cpu, (time.process_time() - cpu) / requests * 1e6)
        if profile is not None:
            profile.disable()
    await app.shutdown()
    return best_wall, best_cpu


class _Collector:
    """The garbage collector's passes while entered: how many, their time, the longest."""

    def __init__(self) -> None:
        self.passes = 0
        self.seconds = self.longest = 0.0
        self._began = 0.0

    def __enter__(self) -> _Collector:
        gc.callbacks.append(self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._seen)

    def _seen(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        lasted = time.perf_counter() - self._began
        self.passes += 1
        self.seconds += lasted
        self.longest = max(self.longest, lasted)


async def _longest_lag() -> float:
    """Until cancelled: the most a 1 ms sleep overslept, i.e. the longest the loop was busy."""
    loop = asyncio.get_running_loop()
    longest = 0.0
    try:
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            longest = max(longest, loop.time() - before - 0.001)
    except asyncio.CancelledError:
        return longest


async def _held(streams: int, rounds: int, tune: bool) -> list[str]:
    """`rounds` of `streams` concurrent paced answers (after one unmeasured): a line each."""
    from callmissed.app import build_app
    from callmissed.auth import create_key
    from callmissed.edge.collector import tune_collector
    from callmissed.edge.web import Request, StreamResponse, write_stream
    from callmissed.gateway import Gateway
    from callmissed.settings import load_settings

    settings = load_settings()
    gateway = Gateway(settings)
    app = build_app(settings, gateway)
    await app.startup()
    if tune:
        tune_collector()  # as edge/rsgi.py does once the worker has started
    key, _ = await create_key(gateway.store, "inprocess", 10**12)
    headers = {"authorization": f"Bearer {key}", "content-length": str(len(_PACED_BODY))}
    endpoint = app.route("POST", "/v1/chat/completions")
    loop = asyncio.get_running_loop()
    events = 0

    async def count(part: bytes) -> None:
        nonlocal events
        events += part.count(b"data: ")

    async def one() -> None:
        gone: asyncio.Future[None] = loop.create_future()
        request_id = "req_" + os.urandom(8).hex()
        principal, _ = await app.admit(endpoint, headers)
        request = Request(
            "POST", "/v1/chat/completions", headers, _PACED_BODY, request_id, None, principal
        )
        response = await app.respond(endpoint, request, gone)
        assert isinstance(response, StreamResponse), response
        await write_stream(response, count, gone, request_id)

    lines = []
    for round_ in range(rounds + 1):
        events = 0
        cpu = time.process_time()
        lag = asyncio.ensure_future(_longest_lag())
        with _Collector() as collector:
            await asyncio.gather(*[one() for _ in range(streams)])
        cpu = time.process_time() - cpu
        lag.cancel()
        stall = await lag
        if round_ == 0:
            continue  # warming: pools, caches, the wallet
        chunks = streams * 20
        lines.append(
            f"{streams} held streams: {cpu / chunks * 1e6:.2f} us CPU per content chunk "
            f"({events} events); collector {collector.passes} passes, "
            f"{collector.seconds * 1e3:.1f} ms ({collector.seconds / cpu:.0%} of CPU), "
            f"longest {collector.longest * 1e3:.1f} ms; longest loop stall {stall * 1e3:.1f} ms"
        )
    await app.shutdown()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per round (3 rounds)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile table")
    parser.add_argument("--tail", action="store_true", help="what the slowest 1 %% overlapped")
    parser.add_argument(
        "--messages", type=int, default=1, help="turns in the request's conversation (1)"
    )
    parser.add_argument(
        "--linger", type=float, help="seconds the ledger and the access log gather a batch (20 ms)"
    )
    parser.add_argument("--held", type=int, help="N concurrent paced streams instead")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=3, help="--held: measured rounds")
    parser.add_argument(
        "--default-gc", action="store_true", help="--held: CPython's collector settings"
    )
    args = parser.parse_args()
    if args.linger is not None:
        from callmissed import observe
        from callmissed.accounting import ledger

        ledger._LINGER = observe._LINGER = args.linger
    home = Path(tempfile.mkdtemp(prefix="callmissed-inprocess-"))
    schema: str | None = None
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.upstream", "--port", str(port)]
    upstream = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_healthy(port, "/v1/models", upstream, 10)
        (home / "inprocess.toml").write_text(_CONFIG.format(port=port))
        os.environ["CALLMISSED_CONFIG"] = str(home / "inprocess.toml")
        os.environ["CALLMISSED_DATABASE_URL"] = f"sqlite:///{home / 'inprocess.sqlite3'}"
        if args.store == "postgres":
            schema = f"inprocess_{os.urandom(6).hex()}"
            os.environ.update(scale_out_env(schema))
        os.environ.setdefault("CALLMISSED_ACCESS_LOG", str(home / "access.log"))
        if args.held:
            print("\n".join(uvloop.run(_held(args.held, args.rounds, not args.default_gc))))
            return
        profile = cProfile.Profile() if args.profile else None
        tail = _Tail() if args.tail else None
        body = _body(args.messages)
        wall, cpu = uvloop.run(_measure(args.requests, profile, tail, body))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
        if schema is not None:
            drop_schema(schema)
        shutil.rmtree(home, ignore_errors=True)  # its database and ledger journal
    print(
        f"per streamed request: {wall:.1f} us wall, {cpu:.1f} us CPU (best of 3 x {args.requests})"
    )
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
    if tail is not None:
        print(tail.report())


if __name__ == "__main__":
    main()
