"""Keys, credits, limits and ledger: what they cost per request.

Run `python -m benchmarks.credits_overhead`. Issue 3's target: under 0.2 ms added p50 on the
hot path. Three views:

1. In-process, per request, on a real SQLite file (WAL) and a real journal: everything the
   gateway adds around an upstream call — the key lookup (cached, as in steady state), the
   allow-list, the price, the prompt estimate, the rate-limit check, the hold taken from the
   key's in-memory wallet (a store transaction only when it needs topping up), counting and
   pricing a 20-chunk stream, and the journal append at the end.
   Once for an unlimited key on a free model, once for a metered key with RPM/TPM/concurrency
   limits on a priced model.
2. The background writer: settling the journal into SQLite, per request, in its natural batches.
   It runs on the same event loop, so it is CPU the process spends, but off any request's path.
3. End to end against `callmissed serve` and the benchmark's fake upstream, one request at a
   time, alternating an unlimited key and a metered, rate-limited key: p50 of the streamed answer.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks.systems import ROOT, CallMissed, Upstream, Upstreams
from benchmarks.upstream import CHUNKS
from callmissed.accounting.credits import Accounting
from callmissed.accounting.ledger import Ledger
from callmissed.accounting.pricing import PriceBook
from callmissed.accounting.ratelimit import MemoryLimiter
from callmissed.accounting.wallet import Wallets
from callmissed.auth import Authenticator, create_key
from callmissed.providers import REGISTRY
from callmissed.relay import Chunk
from callmissed.settings import ModelSettings, Prices, ProviderSettings, Route
from callmissed.store import KeyPolicy, open_store

__all__ = ["main"]

_BODY = {"model": "m", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 64}
_FREE = ModelSettings("free", (Route("sim", "x"),), "passthrough")
_PRICED = ModelSettings(
    "priced", (Route("p", "x"),), "passthrough", prices=Prices(0.15, 0.075, 0.6)
)
_LIMITS = KeyPolicy(rpm=10**9, tpm=2 * 10**9, max_concurrent=10**6)
_PROVIDERS = {
    name: REGISTRY[kind](ProviderSettings(name, kind, "http://127.0.0.1:1/v1"))
    for name, kind in (("sim", "sim"), ("p", "openai"))
}


_USAGE = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 32}


def _batches() -> list[list[Chunk]]:
    envelope = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    deltas = [
        {"role": "assistant", "content": ""},
        *({"content": f"tok{i} "} for i in range(CHUNKS)),
    ]
    chunks = [{**envelope, "choices": [{"index": 0, "delta": d}]} for d in deltas]
    chunks.append({**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {**envelope, "choices": [], "usage": dict(_USAGE)}
    return [[Chunk(orjson.dumps(c), c)] for c in [*chunks, usage]]


async def _in_process(rounds: int, metered: bool, url: str | None) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as folder:
        store = open_store(url or f"sqlite:///{folder}/bench.sqlite3")
        await store.start()
        wallets = Wallets(store)
        ledger = Ledger(store, Path(folder) / "ledger", wallets)
        await ledger.start()
        auth = Authenticator(store)
        prices = PriceBook({}, _PROVIDERS, {})
        accounting = Accounting(store, ledger, wallets, MemoryLimiter(), auth, prices)
        policy = _LIMITS if metered else KeyPolicy()
        key, _ = await create_key(store, "bench", 10**15 if metered else None, policy)
        model = _PRICED if metered else _FREE
        samples = []
        for n in range(rounds + 500):
            batches = _batches()  # fresh dicts: pricing edits the usage chunk
            began = time.perf_counter_ns()
            principal = await auth.authenticate(f"Bearer {key}")
            charge = await accounting.admit(principal, model, _BODY, f"req_{n}")
            charge.routed(Route("p", "x"), stream=True)
            for batch in batches:
                charge.on_batch(batch)
            # What endings.StreamOwner.ended() does for a stream that ended with its usage.
            tokens, cost = charge.price_usage(dict(_USAGE))
            charge.settle(200, None, tokens, cost)
            elapsed = time.perf_counter_ns() - began
            if n >= 500:
                samples.append(elapsed / 1000)
            if n % 64 == 0:
                await asyncio.sleep(0)  # let the writer run, as a busy server's loop would
        writer = await _writer_cost(store, ledger)
        await ledger.close()
        await store.close()
        return samples, writer


async def _writer_cost(store: Any, ledger: Ledger) -> float:
    """Microseconds of store.settle() per journaled request, measured on the writer's batches."""
    spent: list[float] = []
    rows = [0]
    settle = store.settle

    async def timed(entries: Any) -> None:
        began = time.perf_counter_ns()
        await settle(entries)
        spent.append(time.perf_counter_ns() - began)
        rows[0] += len(entries)

    store.settle = timed
    await ledger.flush()
    return sum(spent) / 1000 / max(rows[0], 1)


def _end_to_end(base: str, keys: dict[str, str], requests: int) -> dict[str, float]:
    body = {
        "model": "bench-fast",
        "stream": True,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello"}],
    }
    times: dict[str, list[float]] = {name: [] for name in keys}
    with httpx.Client(timeout=30) as client:
        for n in range(requests + 50):
            for name, key in keys.items():
                began = time.perf_counter()
                headers = {"authorization": f"Bearer {key}"}
                with client.stream(
                    "POST", f"{base}/v1/chat/completions", json=body, headers=headers
                ) as reply:
                    reply.read()
                    assert reply.status_code == 200, reply.text
                if n >= 50:
                    times[name].append((time.perf_counter() - began) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def _percentile(samples: list[float], q: float) -> float:
    return sorted(samples)[int(len(samples) * q)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000, help="in-process requests per case")
    parser.add_argument("--requests", type=int, default=300, help="end-to-end requests per key")
    parser.add_argument(
        "--database-url", help="in-process store (default: a fresh SQLite file), e.g. postgresql://"
    )
    parser.add_argument("--in-process-only", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    print(f"accounting per request, in-process, {CHUNKS}-chunk stream:")
    for label, metered in (("unlimited key, free model", False), ("metered + limits", True)):
        samples, writer = asyncio.run(_in_process(args.rounds, metered, args.database_url))
        print(
            f"  {label:28} p50 {statistics.median(samples):6.1f} us  "
            f"p99 {_percentile(samples, 0.99):6.1f} us   + writer {writer:5.1f} us/request"
        )
    if args.in_process_only:
        return
    workdir = ROOT / "benchmarks" / "results" / "tmp" / f"credits-{time.strftime('%H%M%S')}"
    workdir.mkdir(parents=True)
    upstream = Upstream(Path(workdir), 0.0, 0.0, 0.0)
    system = CallMissed()
    try:
        gateway = system.start(Upstreams(upstream), workdir)
    except BaseException:  # the upstream stopped however the gateway's start fails
        upstream.stop()
        raise
    try:
        unlimited = _cli_key(system.env, [])
        limited = _cli_key(
            system.env,
            [
                "--credits",
                "1000",
                "--rpm",
                "1000000",
                "--tpm",
                "1000000000",
                "--max-concurrent",
                "1000",
            ],
        )
        base = gateway.base_url.removesuffix("/v1")
        p50 = _end_to_end(base, {"unlimited": unlimited, "metered": limited}, args.requests)
    finally:
        gateway.stop()
        upstream.stop()
    print(f"end to end, streamed, one at a time (p50 of {args.requests}):")
    print(f"  unlimited key               {p50['unlimited']:7.3f} ms")
    print(
        f"  metered + limits            {p50['metered']:7.3f} ms   "
        f"({(p50['metered'] - p50['unlimited']) * 1000:+.0f} us)"
    )


def _cli_key(env: dict[str, str], options: list[str]) -> str:
    import subprocess

    command = [str(ROOT / ".venv" / "bin" / "callmissed"), "keys", "create", "--name", "b"]
    result = subprocess.run(
        [*command, *options], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    main()
