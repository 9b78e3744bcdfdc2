"""Random mixes of requests against an upstream that obeys its limits: no key ever spends past its
credit, nothing is ever left `uncharged`, and every ledger row costs what the upstream billed.

Each seed draws a batch of requests — `n`, either or both max fields, a reasoning budget, a
request fee, streamed or not, and a client that reads to the end or walks away at a random point
(mid-stream, before the first token, before or after a whole answer's headers) — and sends them
concurrently to a gateway with two workers, on a key whose credit runs out partway. The fake
OpenRouter (tests/fakes/openrouter.py) writes every token a request allows unless told fewer, and
records its bill of every answer; the ledger is checked against those bills row by row.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.accounting import (
    BACKENDS,
    UNSPENT,
    backend_env,
    new_key,
    query,
    settle,
    start_billing_gateway,
)
from tests.conftest import Gateway, stop_gateway
from tests.fakes.upstream import FakeUpstream

# A failing seed is printed in the assertion; CALLMISSED_PROPERTY_SEED=<seed> runs that one alone.
SEED = os.environ.get("CALLMISSED_PROPERTY_SEED")
SEEDS = [int(SEED)] if SEED else [3, 1301, 1302]
REQUESTS = 48  # per seed
CONCURRENCY = 8
CREDIT = "0.004000"  # about half of what a seed's requests could cost: the key runs dry
# What a client does: read to the end (twice as likely), or walk away at one of these points.
STREAM_LEAVES = ["stays", "stays", "mid-stream", "before-first-token"]
WHOLE_LEAVES = ["stays", "stays", "before-headers", "after-headers"]


@dataclass
class Draw:
    """One request of a mix, and what its client does."""

    body: dict[str, Any]
    leaves: str
    said: str
    pause: int = 0  # mid-stream: the client leaves after this many tokens
    status: int | None = None  # what the client saw (None: it left before an answer)
    seen: int = 0


@dataclass
class Mix:
    draws: list[Draw] = field(default_factory=list)


def draw(rng: random.Random) -> Draw:
    stream = rng.random() < 0.5
    leaves = rng.choice(STREAM_LEAVES if stream else WHOLE_LEAVES)
    body: dict[str, Any] = {
        "model": rng.choice(["metered/model", "metered/fee"]),
        "n": rng.randint(1, 3),
    }
    for name in ("max_tokens", "max_completion_tokens"):
        if rng.random() < 0.6:
            body[name] = rng.randint(1, 40)
    if rng.random() < 0.3:
        body["reasoning"] = {"max_tokens": rng.randint(1, 10)}
    words = [rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(rng.randint(1, 40))]
    said = f"{' '.join(words)} {uuid.uuid4().hex}"
    if rng.random() < 0.4:
        said += f" tokens:{rng.randint(0, 30)}"
    pause = 0
    if leaves == "mid-stream":
        pause = rng.randint(1, 12)
        said += f" pause:{pause}"
    elif leaves == "before-first-token":
        said += " pause:0"
    elif leaves == "before-headers":
        said += " pause-headers:5"
    elif leaves == "after-headers":
        said += " pause-body:0.4"
    body["messages"] = [{"role": "user", "content": said}]
    if stream:
        body["stream"] = True
    return Draw(body, leaves, said, pause)


async def send(client: httpx.AsyncClient, upstream: FakeUpstream, one: Draw) -> None:
    if one.leaves == "mid-stream":
        async with client.stream("POST", "/chat/completions", json=one.body) as response:
            one.status = response.status_code
            lines = response.aiter_lines()
            while one.seen < one.pause:
                try:  # the upstream pauses after `pause` tokens, or after its last if sooner
                    line = await asyncio.wait_for(anext(lines), 0.5)
                except (TimeoutError, StopAsyncIteration):
                    break
                one.seen += line.count('"tok "')
        return  # hang up, with the upstream paused right there
    sending = asyncio.ensure_future(client.post("/chat/completions", json=one.body))
    if one.leaves == "stays":
        response = await sending
        one.status = response.status_code
        return
    deadline = time.monotonic() + 5
    while not sending.done() and time.monotonic() < deadline:
        if any(bill.said == one.said for bill in list(upstream.openrouter.bills.values())):
            await asyncio.sleep(0.05)  # the upstream has it (and, after-headers, answered them)
            break
        await asyncio.sleep(0.01)
    if sending.done():  # refused before any upstream had it (402)
        one.status = (await sending).status_code
        return
    sending.cancel()  # the client leaves
    await asyncio.gather(sending, return_exceptions=True)


async def run_mix(gateway: Gateway, key: str, mix: Mix) -> None:
    limit = asyncio.Semaphore(CONCURRENCY)

    async with httpx.AsyncClient(
        base_url=gateway.base_url,
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
        limits=httpx.Limits(max_connections=CONCURRENCY * 2),
    ) as client:

        async def one(request: Draw) -> None:
            async with limit:
                await send(client, gateway.upstream, request)

        await asyncio.gather(*(one(request) for request in mix.draws))


def micro(usd: Decimal) -> int:
    return int((usd * 1_000_000).to_integral_value(ROUND_HALF_UP))


def ledger(gateway: Gateway, key: str, key_id: int, expected: int) -> list[tuple[Any, ...]]:
    """The key's rows once `expected` are settled (both workers settle on their own)."""
    deadline = time.monotonic() + 15
    while True:
        settle(gateway, key)
        rows = query(
            gateway,
            "SELECT status, cost, uncharged, upstream_id FROM ledger WHERE key_id = ?",
            key_id,
        )
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.fixture(scope="module", params=BACKENDS)
def two_workers(request, upstream, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("property")
    journals = workdir / "ledger"
    with backend_env(request.param) as env:
        running = start_billing_gateway(
            upstream, workdir, "--workers", "2", CALLMISSED_LEDGER_DIR=str(journals), **env
        )
        try:
            deadline = time.monotonic() + 10
            while len(list(Path(journals).glob("*.journal"))) < 2:
                assert time.monotonic() < deadline, "the second worker did not start"
                time.sleep(0.05)
            yield running
        finally:
            stop_gateway(running)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_mixes_never_overspend_never_leave_uncharged_and_bill_what_the_upstream_did(
    two_workers, upstream, seed
):
    rng = random.Random(seed)
    mix = Mix([draw(rng) for _ in range(REQUESTS)])
    key, key_id = new_key(two_workers, credits=CREDIT)
    asyncio.run(run_mix(two_workers, key, mix))

    said = {one.said for one in mix.draws}
    bills = {
        answer_id: bill
        for answer_id, bill in upstream.openrouter.bills.items()
        if bill.said in said
    }
    refused = [one for one in mix.draws if one.status == 402]
    assert refused, f"seed {seed}: the key never ran dry; lower CREDIT"
    assert not {one.said for one in refused} & {bill.said for bill in bills.values()}
    rows = ledger(two_workers, key, key_id, expected=len(bills))
    assert len(rows) == len(bills), f"seed {seed}: a row for every answer an upstream billed"

    assert all(uncharged == 0 for _, _, uncharged, _ in rows), f"seed {seed}: {rows}"
    [(unspent,)] = query(two_workers, UNSPENT, key_id)
    [(granted, spent)] = query(
        two_workers, "SELECT granted, spent FROM api_keys WHERE id = ?", key_id
    )
    assert spent <= granted and unspent + spent == granted
    assert spent == sum(cost for _, cost, _, _ in rows)

    # Every row costs what the upstream billed for it. Rows of answers that never reached the
    # gateway (the client left first) carry no upstream id: they match the remaining bills.
    unmatched = dict(bills)
    for _, cost, _, answer_id in rows:
        if answer_id is not None:
            assert cost == micro(unmatched.pop(answer_id).cost), f"seed {seed}: {answer_id}"
    assert sorted(cost for _, cost, _, answer_id in rows if answer_id is None) == sorted(
        micro(bill.cost) for bill in unmatched.values()
    ), f"seed {seed}"
