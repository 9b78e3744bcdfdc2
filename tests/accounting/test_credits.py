"""Credits against the real gateway, on SQLite and PostgreSQL: prices, wallets, settlement, 402,
usage.cost.

Every balance is checked to the micro-credit straight from the database, wallets included. The
priced fake models (tests/accounting/__init__.py) cost 1 micro-credit per input token and 2 per
output token; the fake upstream reports 5 prompt and 6 completion tokens unless its behaviour says
otherwise.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from callmissed.accounting.pricing import (
    Rates,
    TokenUsage,
    cost_of,
    format_credits,
    parse_credits,
    parse_usage,
    rates_of,
)
from callmissed.settings import Prices
from tests.accounting import (
    BACKENDS,
    HELLO_COST,
    backend_env,
    balance,
    chat,
    in_wallets,
    new_key,
    query,
    settle,
    start_billing_gateway,
)
from tests.conftest import Gateway, stop_gateway

HOLD_50 = 7 + 2 * 50  # the worst case of chat(max_tokens=50): 7 prompt-estimate tokens, 50 out


def per_request_holds(gateway: Gateway, key_id: int) -> int:
    """Holds that are not a wallet: there are none since wallets (one per request before)."""
    rows = query(gateway, "SELECT count(*) FROM holds WHERE key_id = ? AND NOT wallet", key_id)
    return int(rows[0][0])


@pytest.fixture(scope="module", params=BACKENDS)
def billing(request, upstream, tmp_path_factory):
    with backend_env(request.param) as env:
        running = start_billing_gateway(upstream, tmp_path_factory.mktemp("billing"), **env)
        yield running
        stop_gateway(running)


# Pricing, pure


def test_rates_keep_the_decimal_the_operator_typed():
    assert rates_of(Prices(0.0605, 0.0605, 0.40)) == Rates(60_500, 60_500, 400_000)
    assert rates_of(Prices(3.0, 0.3, 15.0)) == Rates(3_000_000, 300_000, 15_000_000)


def test_cost_counts_cached_and_reasoning_tokens():
    rates = rates_of(Prices(input=3.0, cached_input=0.3, output=15.0))
    usage = parse_usage(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "prompt_tokens_details": {"cached_tokens": 800},
            "completion_tokens_details": {"reasoning_tokens": 400},
        }
    )
    assert usage == TokenUsage(prompt=1000, completion=500, reasoning=400, cached=800)
    # 200 uncached x $3/M + 800 cached x $0.30/M + 500 output (reasoning included) x $15/M
    assert cost_of(rates, usage) == 600 + 240 + 7500


def test_cache_writes_bill_at_their_own_price_and_never_more_tokens_than_the_prompt():
    rates = rates_of(Prices(input=3.0, cached_input=0.3, output=15.0, cache_write=3.75))
    assert rates == Rates(3_000_000, 300_000, 15_000_000, 3_750_000)
    usage = parse_usage(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300},
        }
    )
    assert (usage.cached, usage.cache_write) == (600, 300)
    # 100 uncached x $3/M + 600 reads x $0.30/M + 300 writes x $3.75/M + 10 x $15/M
    assert cost_of(rates, usage) == 300 + 180 + 1125 + 150
    # without a cache_write price, writes are prompt tokens like any other
    assert cost_of(rates_of(Prices(3.0, 0.3, 15.0)), usage) == 300 + 180 + 900 + 150
    # an upstream that reports more cached than prompt tokens is billed for the prompt only
    odd = TokenUsage(prompt=100, cached=80, cache_write=80)
    assert cost_of(rates, odd) == (80 * 300_000 + 20 * 3_750_000 + 500_000) // 1_000_000


def test_cost_rounds_to_the_nearest_micro_credit_halves_up():
    rates = rates_of(Prices(0.5, 0.5, 0.5))
    assert cost_of(rates, TokenUsage(prompt=1)) == 1  # 0.5 -> 1
    assert cost_of(rates, TokenUsage(prompt=2)) == 1
    assert cost_of(rates_of(Prices(0.4, 0.4, 0.4)), TokenUsage(prompt=1)) == 0


def test_reasoning_beyond_completion_tokens_is_still_billed():
    usage = parse_usage(
        {
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "completion_tokens_details": {"reasoning_tokens": 9},
        }
    )
    assert usage.completion == 9


def test_credits_parse_exactly():
    assert parse_credits("5") == 5_000_000
    assert parse_credits(0.1) == 100_000
    assert parse_credits("0.000001") == 1
    for bad in ("-1", "x", "0.0000001", True, "nan"):
        with pytest.raises(ValueError):
            parse_credits(bad)
    assert format_credits(17) == 0.000017


# Through the gateway


def test_zero_balance_is_402_with_the_balance_in_the_message(billing):
    key, _ = new_key(billing, credits=0)
    response = chat(billing, key)
    assert response.status_code == 402
    error = response.json()["error"]
    assert error["code"] == "insufficient_credits"
    assert "$0.000000 left" in error["message"]


def test_402_before_any_upstream_call(billing):
    key, _ = new_key(billing, credits="0.00005")  # less than the 32768-token default cap costs
    before = len(billing.upstream.requests)
    assert chat(billing, key).status_code == 402
    assert len(billing.upstream.requests) == before
    assert chat(billing, key, max_tokens=10).status_code == 200  # a smaller worst case fits


def test_balance_is_limit_minus_settled_cost_to_the_micro_credit(billing):
    key, key_id = new_key(billing, credits=1)
    response = chat(billing, key, max_tokens=100)
    assert response.status_code == 200
    assert response.json()["usage"]["cost"] == format_credits(HELLO_COST)
    data = settle(billing, key)
    assert balance(billing, key_id) == 1_000_000 - HELLO_COST
    assert data["limit"] == 1.0
    assert data["usage"] == format_credits(HELLO_COST)
    assert data["limit_remaining"] == format_credits(1_000_000 - HELLO_COST)
    assert per_request_holds(billing, key_id) == 0


def test_stream_final_usage_chunk_carries_the_cost(billing, client_for):
    key, key_id = new_key(billing, credits=1)
    sdk = client_for(billing)
    stream = sdk.with_options(api_key=key).chat.completions.create(
        model="priced",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.model_extra["cost"] == format_credits(HELLO_COST)
    settle(billing, key)
    assert balance(billing, key_id) == 1_000_000 - HELLO_COST


def test_reasoning_tokens_are_billed_as_output(billing):
    key, key_id = new_key(billing, credits=1)
    response = chat(billing, key, model="priced-thinker", stream=True)
    assert response.status_code == 200
    settle(billing, key)
    cost = 5 * 1 + 9 * 2  # 9 completion tokens, 7 of them reasoning
    assert balance(billing, key_id) == 1_000_000 - cost
    row = query(
        billing,
        "SELECT completion_tokens, reasoning_tokens, cost FROM ledger WHERE key_id = ?",
        key_id,
    )
    assert row == [(9, 7, cost)]


def test_ledger_row_has_every_field(billing):
    key, key_id = new_key(billing, credits=1)
    response = chat(billing, key, max_tokens=50)
    settle(billing, key)
    rows = query(
        billing,
        "SELECT request_id, model, route, upstream_model, stream, status, prompt_tokens,"
        " completion_tokens, cost, ttfb_ms, total_ms FROM ledger WHERE key_id = ?",
        key_id,
    )
    request_id, model, route, upstream, stream, status, prompt, completion, cost, ttfb, total = (
        rows[0]
    )
    assert request_id == response.headers["x-request-id"]
    assert (model, route, upstream, stream, status) == ("priced", "local", "hello", 0, 200)
    assert (prompt, completion, cost) == (5, 6, HELLO_COST)
    assert 0 < ttfb <= total


def test_midstream_failure_is_billed_only_for_delivered_tokens(billing):
    key, key_id = new_key(billing, credits=1)
    response = chat(billing, key, model="priced-midstream", stream=True)
    assert '"error"' in response.text  # the failure went out in-band
    settle(billing, key)
    # Delivered: "" and "Hello" (one token); the prompt is not billed for a failed request.
    rows = query(
        billing,
        "SELECT status, prompt_tokens, completion_tokens, cost FROM ledger WHERE key_id = ?",
        key_id,
    )
    assert rows == [(502, 0, 1, 2)]
    assert balance(billing, key_id) == 1_000_000 - 2


def test_a_dropped_upstream_connection_is_billed_only_for_delivered_tokens(billing):
    key, key_id = new_key(billing, credits=1)
    chat(billing, key, model="priced-drop", stream=True)
    settle(billing, key)
    assert query(
        billing, "SELECT completion_tokens, cost FROM ledger WHERE key_id = ?", key_id
    ) == [(1, 2)]
    assert balance(billing, key_id) == 1_000_000 - 2


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_failure_before_any_token_costs_nothing(billing, stream):
    key, key_id = new_key(billing, credits=1)
    response = chat(billing, key, model="priced-fails", stream=stream, max_tokens=10)
    assert response.status_code == 502
    settle(billing, key)
    rows = query(billing, "SELECT status, cost FROM ledger WHERE key_id = ?", key_id)
    assert rows == [(502, 0)]
    assert balance(billing, key_id) == 1_000_000


def test_a_client_that_leaves_a_stream_pays_its_prompt_and_what_was_delivered(billing):
    """The upstream bills the prompt as soon as it has it: so does the key (issue 13)."""
    key, key_id = new_key(billing, credits=1)
    payload = {
        "model": "priced-endless",
        "stream": True,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "count"}],
    }
    seen = 0
    with httpx.stream(
        "POST",
        f"{billing.base_url}/chat/completions",
        json=payload,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        for line in response.iter_lines():
            if '"content":"."' in line:
                seen += 1
                if seen == 5:
                    break
    rows: list[tuple[int, ...]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = query(
            billing,
            "SELECT status, prompt_tokens, completion_tokens, cost FROM ledger WHERE key_id = ?",
            key_id,
        )
        if rows:
            break
        settle(billing, key)
        time.sleep(0.05)
    status, prompt, delivered, cost = rows[0]
    assert status == 499
    assert prompt == 4 + 2  # the estimate of one message of five characters
    assert 5 <= delivered <= 7  # what reached the client; at most a chunk or two in flight
    assert cost == prompt * 1 + delivered * 2
    assert balance(billing, key_id) == 1_000_000 - cost


def test_200_concurrent_requests_never_overdraw_and_every_success_is_billed(billing):
    # Each request holds 7 (prompt estimate) + 2 x 50 (max_tokens) = 107 micro-credits and
    # really costs 17: the balance covers ten holds at a time.
    key, key_id = new_key(billing, credits="0.00107")

    async def one(client: httpx.AsyncClient) -> int:
        response = await client.post(
            "/chat/completions",
            json={
                "model": "priced-slow",
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": "Say hello"}],
            },
        )
        return response.status_code

    async def run() -> list[int]:
        async with httpx.AsyncClient(
            base_url=billing.base_url,
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
            limits=httpx.Limits(max_connections=200),
        ) as client:
            return await asyncio.gather(*(one(client) for _ in range(200)))

    statuses = asyncio.run(run())
    assert set(statuses) <= {200, 402}
    successes = statuses.count(200)
    assert 10 <= successes < 200
    settle(billing, key)
    left = balance(billing, key_id)
    assert left >= 0
    rows = query(
        billing,
        "SELECT count(*), sum(cost) FROM ledger WHERE key_id = ? AND status = 200",
        key_id,
    )
    assert rows == [(successes, successes * HELLO_COST)]
    assert left == 1070 - successes * HELLO_COST
    assert per_request_holds(billing, key_id) == 0


def test_a_balance_that_covers_exactly_n_requests_gets_n_then_402(billing):
    # Each request must find its worst case (107) unspent; each really costs 17.
    key, key_id = new_key(billing, credits=(HELLO_COST * 4 + HOLD_50) / 1_000_000)
    statuses = [chat(billing, key, max_tokens=50).status_code for _ in range(6)]
    assert statuses == [200] * 5 + [402]
    left = HOLD_50 - HELLO_COST  # 90: less than one worst case
    refused = chat(billing, key, max_tokens=50).json()["error"]
    assert f"${format_credits(left):.6f} left" in refused["message"]
    assert chat(billing, key, max_tokens=41).status_code == 200  # 7 + 82 = 89 fits
    settle(billing, key)
    assert balance(billing, key_id) == left - HELLO_COST
    assert query(billing, "SELECT count(*), sum(cost) FROM ledger WHERE key_id = ?", key_id) == [
        (6, 6 * HELLO_COST)
    ]


def test_requests_that_cost_more_than_their_hold_are_charged_as_before(billing):
    # max_tokens=1 holds 7 + 2 = 9, but the fake answers 6 tokens: each costs 17. The wallet pays
    # what it can and the balance the rest; the wallet's own count of what it has left falls
    # behind the store's, which must not turn a request the key can pay for into a 402.
    key, key_id = new_key(billing, credits="0.00005")
    statuses = [chat(billing, key, max_tokens=1).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 402]  # 50 - 17 - 17 = 16 still covers a hold of 9
    settle(billing, key)
    assert balance(billing, key_id) == 0
    rows = query(billing, "SELECT cost, uncharged FROM ledger WHERE key_id = ?", key_id)
    assert sorted(rows) == [(16, 1), (17, 0), (17, 0)]  # never below zero


def test_many_requests_settle_to_exactly_the_expected_balance(billing):
    key, key_id = new_key(billing, credits=1)

    async def one(client: httpx.AsyncClient, n: int) -> int:
        body = {"model": "priced", "max_tokens": 50, "stream": n % 2 == 0}
        body["messages"] = [{"role": "user", "content": "Say hello"}]
        response = await client.post("/chat/completions", json=body)
        return response.status_code

    async def run() -> list[int]:
        async with httpx.AsyncClient(
            base_url=billing.base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            return await asyncio.gather(*(one(client, n) for n in range(300)))

    assert asyncio.run(run()) == [200] * 300
    data = settle(billing, key)
    assert balance(billing, key_id) == 1_000_000 - 300 * HELLO_COST
    assert data["limit_remaining"] == format_credits(1_000_000 - 300 * HELLO_COST)
    assert data["usage"] == format_credits(300 * HELLO_COST)
    assert query(billing, "SELECT count(*), sum(cost) FROM ledger WHERE key_id = ?", key_id) == [
        (300, 300 * HELLO_COST)
    ]
    assert per_request_holds(billing, key_id) == 0


def test_an_idle_wallet_gives_its_credit_back_to_the_balance(billing):
    key, key_id = new_key(billing, credits=1)
    assert chat(billing, key, max_tokens=50).status_code == 200
    data = settle(billing, key)
    assert in_wallets(billing, key_id) > 0  # kept for the key's next request
    assert data["limit_remaining"] == format_credits(1_000_000 - HELLO_COST)  # wallets count
    deadline = time.monotonic() + 10
    while in_wallets(billing, key_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_wallets(billing, key_id) == 0  # idle for ~2 s: back in the balance
    [(credits,)] = query(billing, "SELECT credits FROM api_keys WHERE id = ?", key_id)
    assert credits == 1_000_000 - HELLO_COST
    assert settle(billing, key)["limit_remaining"] == format_credits(1_000_000 - HELLO_COST)
    assert chat(billing, key, max_tokens=50).status_code == 200  # and a new wallet opens
    settle(billing, key)
    assert balance(billing, key_id) == 1_000_000 - 2 * HELLO_COST


def test_topup_makes_room(billing):
    key, key_id = new_key(billing, credits=0)
    assert chat(billing, key, max_tokens=10).status_code == 402
    result = billing.cli("keys", "topup", str(key_id), "0.5")
    assert result.returncode == 0, result.stderr
    assert chat(billing, key, max_tokens=10).status_code == 200
    data = settle(billing, key)
    assert data["limit"] == 0.5
    assert balance(billing, key_id) == 500_000 - HELLO_COST


def test_a_model_without_a_price_is_refused_for_metered_keys_only(billing):
    key, _ = new_key(billing, credits=1)
    response = chat(billing, key, model="local-model")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_priced"
    unlimited, _ = new_key(billing)
    response = chat(billing, unlimited, model="local-model")
    assert response.status_code == 200
    assert response.json()["usage"]["cost"] == 0


def test_models_show_the_prices_billed_and_what_a_metered_key_cannot_use(billing):
    metered, _ = new_key(billing, credits=1)
    unlimited, _ = new_key(billing)

    def described(key: str) -> dict[str, dict[str, Any]]:
        listed = httpx.get(f"{billing.base_url}/models", headers={"authorization": f"Bearer {key}"})
        return {model["id"]: model for model in listed.json()["data"]}

    for models in (described(metered), described(unlimited)):
        # "priced" has no prices of its own: the config file's [prices] table sets them.
        assert models["priced"]["pricing"] == {
            "input_per_million": 1.0,
            "cached_input_per_million": 1.0,
            "cache_write_per_million": 1.0,
            "output_per_million": 2.0,
            "request": 0.0,
        }
        assert models["priced"]["available"] is True
        assert models["sim/instant"]["available"] is True  # free, so anyone's
    refused = described(metered)["local-model"]  # no price: 403 model_not_priced for this key
    assert refused["available"] is False
    assert "no price" in refused["unavailable_reason"]
    assert described(unlimited)["local-model"]["available"] is True
    one = httpx.get(
        f"{billing.base_url}/models/local-model", headers={"authorization": f"Bearer {metered}"}
    )
    assert one.json() == refused


def test_simulator_models_are_free(billing):
    key, key_id = new_key(billing, credits=0)
    response = chat(billing, key, model="sim/instant")
    assert response.status_code == 200
    assert response.json()["usage"]["cost"] == 0
    settle(billing, key)
    assert query(billing, "SELECT cost FROM ledger WHERE key_id = ?", key_id) == [(0,)]


def test_model_outside_the_allow_list_is_403(billing):
    key, _ = new_key(billing, credits=1, models=["priced"])
    assert chat(billing, key, max_tokens=10).status_code == 200
    response = chat(billing, key, model="priced-thinker")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert "priced" in response.json()["error"]["message"]


def test_revoked_key_is_401_on_the_next_request(billing):
    key, key_id = new_key(billing, credits=1)
    assert chat(billing, key, max_tokens=10).status_code == 200
    result = billing.cli("keys", "revoke", str(key_id))  # another process: no cache to clear
    assert result.returncode == 0
    response = chat(billing, key, max_tokens=10)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]
    assert (
        httpx.get(f"{billing.base_url}/key", headers={"authorization": f"Bearer {key}"}).status_code
        == 401
    )


@pytest.mark.parametrize("stream", [False, True])
def test_the_anthropic_edge_is_billed_the_same_way(billing, stream):
    key, key_id = new_key(billing, credits=1)
    response = httpx.post(
        f"{billing.base_url}/messages",
        json={
            "model": "priced",
            "max_tokens": 50,
            "stream": stream,
            "messages": [{"role": "user", "content": "Say hello"}],
        },
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        timeout=10,
    )
    assert response.status_code == 200
    settle(billing, key)
    rows = query(billing, "SELECT request_id, status, cost FROM ledger WHERE key_id = ?", key_id)
    assert rows == [(response.headers["request-id"], 200, HELLO_COST)]
    assert balance(billing, key_id) == 1_000_000 - HELLO_COST


def test_keepalive_streams_settle_too(upstream, tmp_path):
    """A first token slower than CALLMISSED_KEEPALIVE_AFTER commits the 200 early: the charge
    still settles once, both when the stream completes and when the client leaves first (then
    for the prompt its upstream had: 4 + 1 tokens of "hi")."""
    running = start_billing_gateway(upstream, tmp_path, CALLMISSED_KEEPALIVE_AFTER="0.05")
    try:
        key, key_id = new_key(running, credits=1)
        response = chat(running, key, model="priced-slow", stream=True, max_tokens=10)
        assert response.text.startswith(": keep-alive")
        settle(running, key)
        assert balance(running, key_id) == 1_000_000 - HELLO_COST
        payload = {
            "model": "priced-slow",
            "stream": True,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
        }
        with httpx.stream(
            "POST",
            f"{running.base_url}/chat/completions",
            json=payload,
            headers={"authorization": f"Bearer {key}"},
        ) as leaving:
            next(leaving.iter_lines())  # the first keep-alive comment, then hang up
        time.sleep(0.5)
        settle(running, key)
        rows = query(
            running, "SELECT status, cost FROM ledger WHERE key_id = ? ORDER BY created_at", key_id
        )
        assert rows == [(200, HELLO_COST), (499, 5)]
        assert balance(running, key_id) == 1_000_000 - HELLO_COST - 5
        assert per_request_holds(running, key_id) == 0
    finally:
        stop_gateway(running)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_worker_processes_share_a_key_without_overdrawing_it(upstream, tmp_path, backend):
    """Each worker has its own wallet for the key: together they never spend more than it has,
    settle to the micro-credit, give their wallets back when idle, and both refuse the key as
    soon as another process revokes it."""
    journals = tmp_path / "ledger"
    with backend_env(backend) as env:
        running = start_billing_gateway(
            upstream, tmp_path, "--workers", "2", CALLMISSED_LEDGER_DIR=str(journals), **env
        )
        try:
            deadline = time.monotonic() + 10
            while len(list(journals.glob("*.journal"))) < 2:  # both workers are up and serving
                assert time.monotonic() < deadline, "the second worker did not start"
                time.sleep(0.05)
            key, key_id = new_key(running, credits="0.00107")  # ten worst cases at a time

            async def burst() -> list[int]:
                async with httpx.AsyncClient(
                    base_url=running.base_url,
                    headers={"authorization": f"Bearer {key}"},
                    timeout=30,
                    limits=httpx.Limits(max_connections=100),
                ) as client:
                    body = {"model": "priced-slow", "max_tokens": 50, "stream": True}
                    body["messages"] = [{"role": "user", "content": "Say hello"}]
                    responses = await asyncio.gather(
                        *(client.post("/chat/completions", json=body) for _ in range(100))
                    )
                    return [response.status_code for response in responses]

            statuses = asyncio.run(burst())
            assert set(statuses) <= {200, 402} and 200 in statuses
            successes = statuses.count(200)
            deadline = time.monotonic() + 15
            while in_wallets(running, key_id) and time.monotonic() < deadline:
                time.sleep(0.1)  # both workers settle, then give their idle wallets back
            assert in_wallets(running, key_id) == 0
            [(credits, spent)] = query(
                running, "SELECT credits, spent FROM api_keys WHERE id = ?", key_id
            )
            assert (credits, spent) == (1070 - successes * HELLO_COST, successes * HELLO_COST)
            assert query(
                running, "SELECT count(*), sum(cost) FROM ledger WHERE key_id = ?", key_id
            ) == [(successes, successes * HELLO_COST)]
            assert running.cli("keys", "revoke", str(key_id)).returncode == 0
            after = [chat(running, key, max_tokens=10).status_code for _ in range(6)]
            assert after == [401] * 6  # whichever worker answers
        finally:
            stop_gateway(running)
