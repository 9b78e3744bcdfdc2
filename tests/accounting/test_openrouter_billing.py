"""Metered keys on OpenRouter's models, against the real gateway and a fake OpenRouter that serves
a priced model list (tests/fakes/openrouter.py): every listed model is priced, holds cover what an
upstream that obeys the request can bill, and the key pays what the upstream billed — also when
its client walked away. Each ledger row is checked against the fake's own bill for that answer.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.accounting import (
    BACKENDS,
    backend_env,
    chat,
    new_key,
    query,
    settle,
    start_billing_gateway,
)
from tests.conftest import Gateway, stop_gateway
from tests.fakes.openrouter import prompt_tokens
from tests.fakes.upstream import FakeUpstream

ROW = (
    "SELECT status, prompt_tokens, completion_tokens, cost, uncharged, upstream_id FROM ledger"
    " WHERE key_id = ? ORDER BY created_at"
)


@pytest.fixture(scope="module", params=BACKENDS)
def billing(request, upstream, tmp_path_factory):
    with backend_env(request.param) as env:
        running = start_billing_gateway(upstream, tmp_path_factory.mktemp("or-billing"), **env)
        yield running
        stop_gateway(running)


def micro(usd: Decimal, markup: str = "1") -> int:
    return int((usd * 1_000_000 * Decimal(markup)).to_integral_value(ROUND_HALF_UP))


def rows(gateway: Gateway, key: str, key_id: int, count: int = 1) -> list[tuple[Any, ...]]:
    """The key's ledger rows, once `count` of them are settled."""
    deadline = time.monotonic() + 10
    while True:
        settle(gateway, key)
        found = query(gateway, ROW, key_id)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def billed(upstream: FakeUpstream, row: tuple[Any, ...], markup: str = "1") -> int:
    """What the fake upstream billed for the answer a ledger row names, in micro-credits."""
    return micro(upstream.openrouter.bills[row[-1]].cost, markup)


@contextlib.contextmanager
def price_list(upstream: FakeUpstream, status: int) -> Iterator[None]:
    """The fake's model list answering `status` for a while."""
    upstream.openrouter.list_status = status
    try:
        yield
    finally:
        upstream.openrouter.list_status = 200


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["openai/gpt-5-mini", "anthropic/claude-opus-4.5"])
def test_a_listed_model_is_priced_and_costs_what_openrouter_billed(billing, model, stream):
    key, key_id = new_key(billing, credits=5)
    response = chat(billing, key, model=model, stream=stream, max_tokens=100)
    assert response.status_code == 200, response.text
    [row] = rows(billing, key, key_id)
    assert row[0] == 200 and row[-1].startswith("gen-")
    assert row[3] == billed(billing.upstream, row) > 0
    assert row[4] == 0
    if not stream:
        assert response.json()["usage"]["cost"] == row[3] / 1_000_000
        assert "cost_details" not in response.json()["usage"]
        assert response.json()["id"] == row[-1]  # the id to look the bill up with upstream
    shown = billing.cli("keys", "show", str(key_id))
    assert shown.returncode == 0 and row[-1] in shown.stdout


def test_only_a_model_no_source_prices_is_refused_and_only_to_metered_keys(billing):
    key, _ = new_key(billing, credits=5)
    assert chat(billing, key, model="openai/gpt-5-mini").status_code == 200  # listed
    for model in ("openai/gpt-9-unlisted", "openrouter/auto"):
        response = chat(billing, key, model=model)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "model_not_priced"
    unlimited, _ = new_key(billing)
    assert chat(billing, unlimited, model="openai/gpt-9-unlisted").status_code == 200


def test_the_price_is_published_on_the_model(billing):
    response = httpx.get(
        f"{billing.base_url}/models/anthropic/claude-opus-4.5",
        headers={"authorization": f"Bearer {billing.key}"},
    )
    assert response.json()["pricing"] == {
        "input_per_million": 5.0,
        "cached_input_per_million": 5.0,
        "cache_write_per_million": 5.0,
        "output_per_million": 25.0,
        "request": 0.0,
    }


# metered/model: $1 / $2 per million tokens, at most 48 output tokens a choice. "hi" is 4 + 1
# prompt tokens: a choice's worst case is 5 + 2 x 48 = 101 micro-credits.


@pytest.mark.parametrize(("n", "status"), [(1, 200), (2, 402), (4, 402)])
def test_the_hold_covers_every_choice(billing, n, status):
    key, key_id = new_key(billing, credits="0.000150")  # one choice's worst case, not two
    response = chat(billing, key, model="metered/model", n=n, messages=_say("hi"))
    assert response.status_code == status, response.text
    if status == 402:
        assert f"up to ${(5 + 96 * n) / 1e6:.6f}" in response.json()["error"]["message"]
    else:
        [row] = rows(billing, key, key_id)
        assert row[3] == billed(billing.upstream, row) == 5 + 96 and row[4] == 0


def test_the_hold_covers_the_larger_of_max_tokens_and_max_completion_tokens(billing):
    key, key_id = new_key(billing, credits="0.000050")
    limits = {"max_completion_tokens": 1, "max_tokens": 40}  # the upstream may write 40
    assert (
        chat(billing, key, model="metered/model", messages=_say("hi"), **limits).status_code == 402
    )
    limits = {"max_completion_tokens": 1, "max_tokens": 20}  # 5 + 40 = 45 fits
    assert (
        chat(billing, key, model="metered/model", messages=_say("hi"), **limits).status_code == 200
    )
    [row] = rows(billing, key, key_id)
    assert row[2:5] == (20, 45, 0)
    assert billed(billing.upstream, row) == 45


def test_the_hold_covers_a_reasoning_budget_and_a_request_fee(billing):
    # metered/fee: $1 / $3 per million and $0.00005 a request, at most 24 output tokens.
    key, key_id = new_key(billing, credits="0.000160")
    body: dict[str, Any] = {"messages": _say("hi"), "max_tokens": 10}
    body["reasoning"] = {"max_tokens": 30}  # 5 + (10 + 30) x 3 + 50 = 175: too much
    assert chat(billing, key, model="metered/fee", **body).status_code == 402
    body["reasoning"] = {"max_tokens": 20}  # 5 + 90 + 50 = 145 fits
    response = chat(billing, key, model="metered/fee", **body)
    assert response.status_code == 200, response.text
    [row] = rows(billing, key, key_id)
    assert row[2:5] == (30, 145, 0)  # 20 reasoning tokens and 10 more, as the budget allowed
    assert billed(billing.upstream, row) == 145


@pytest.mark.parametrize("stream", [False, True])
def test_the_anthropic_edge_holds_its_max_tokens(billing, stream):
    key, key_id = new_key(billing, credits="0.000050")

    def create(max_tokens: int) -> httpx.Response:
        return httpx.post(
            f"{billing.base_url}/messages",
            json={
                "model": "metered/model",
                "max_tokens": max_tokens,
                "stream": stream,
                "messages": [{"role": "user", "content": "hi"}],
            },
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            timeout=10,
        )

    refused = create(40)
    assert refused.status_code == 402
    assert refused.json()["error"]["type"] == "billing_error"
    assert create(20).status_code == 200
    [row] = rows(billing, key, key_id)
    assert row[3] == billed(billing.upstream, row) == 45 and row[4] == 0


def _say(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_stream_left_midway_pays_its_prompt_and_the_tokens_it_got(billing):
    key, key_id = new_key(billing, credits=1)
    messages = _say("count pause:3")
    body = {"model": "metered/model", "stream": True, "messages": messages, "max_tokens": 40}
    with httpx.stream(
        "POST",
        f"{billing.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.count('"tok "')
            if seen == 3:
                break
    [row] = rows(billing, key, key_id)
    prompt = prompt_tokens({"messages": messages})
    assert row[:5] == (499, prompt, 3, prompt + 3 * 2, 0)
    assert billed(billing.upstream, row) == row[3]


@pytest.mark.parametrize(
    ("pause", "completion"),
    [("pause-body:0.6", 10), ("pause-headers:5", 0)],
    ids=["after-its-headers", "before-its-headers"],
)
def test_a_whole_answer_left_waiting_pays_what_the_upstream_billed(billing, pause, completion):
    """Left after the upstream accepted it (its headers came): the answer is read on and billed.
    Left before: the upstream is told at once, and the key pays the prompt it took."""
    key, key_id = new_key(billing, credits=1)
    said = f"hi {pause} {uuid.uuid4().hex}"
    with contextlib.suppress(httpx.ReadTimeout):
        chat(billing, key, model="metered/model", messages=_say(said), max_tokens=10, timeout=0.3)
    [row] = rows(billing, key, key_id)
    prompt = prompt_tokens({"messages": _say(said)})
    assert row[:5] == (499, prompt, completion, prompt + completion * 2, 0)
    bill = billing.upstream.openrouter.bill_for(said)
    deadline = time.monotonic() + 5
    while not bill.cost and time.monotonic() < deadline:
        time.sleep(0.05)  # the fake records its bill as its handler ends
    assert micro(bill.cost) == row[3]


def test_markup_multiplies_and_operator_prices_override(upstream, tmp_path):
    config = '\n[pricing]\nmarkup = 1.5\n\n[prices."openai/gpt-5.1"]\ninput = 1.0\noutput = 2.0\n'
    running = start_billing_gateway(upstream, tmp_path, extra_config=config)
    try:
        key, key_id = new_key(running, credits=5)
        mini = chat(running, key, model="openai/gpt-5-mini", max_tokens=100)
        assert chat(running, key, model="openai/gpt-5.1", max_tokens=100).status_code == 200
        reported, overridden = rows(running, key, key_id, count=2)
        assert reported[3] == billed(upstream, reported, markup="1.5")
        assert mini.json()["usage"]["cost"] == reported[3] / 1_000_000
        assert overridden[3] == micro(Decimal(5 * 1 + 6 * 2) / 1_000_000, "1.5")  # not OpenRouter's
    finally:
        stop_gateway(running)


def test_a_restart_without_the_price_list_still_prices(upstream, tmp_path):
    running = start_billing_gateway(upstream, tmp_path)
    key, _ = new_key(running, credits=5)
    assert chat(running, key, model="openai/gpt-5-mini").status_code == 200
    stop_gateway(running)
    with price_list(upstream, 503):
        again = start_billing_gateway(upstream, tmp_path)
        try:
            assert chat(again, key, model="openai/gpt-5-mini").status_code == 200
        finally:
            stop_gateway(again)


def test_without_any_copy_of_the_list_a_metered_key_gets_a_clear_403_at_once(upstream, tmp_path):
    with price_list(upstream, 503):
        running = start_billing_gateway(upstream, tmp_path)
        try:
            key, _ = new_key(running, credits=5)
            started = time.monotonic()
            response = chat(running, key, model="openai/gpt-5-mini")
            assert response.status_code == 403
            assert "neither its upstream's price list nor" in response.json()["error"]["message"]
            assert time.monotonic() - started < 5  # the failed fetch is not waited out
        finally:
            stop_gateway(running)


def test_two_workers_fetch_the_list_once(upstream, tmp_path):
    journals = tmp_path / "ledger"
    before = upstream.openrouter.list_requests
    running = start_billing_gateway(
        upstream, tmp_path, "--workers", "2", CALLMISSED_LEDGER_DIR=str(journals)
    )
    try:
        deadline = time.monotonic() + 10
        while len(list(Path(journals).glob("*.journal"))) < 2:
            assert time.monotonic() < deadline, "the second worker did not start"
            time.sleep(0.05)
        key, _ = new_key(running, credits=5)
        statuses = {chat(running, key, model="openai/gpt-5-mini").status_code for _ in range(6)}
        assert statuses == {200}  # whichever worker answers prices it
        assert upstream.openrouter.list_requests - before == 1
    finally:
        stop_gateway(running)
