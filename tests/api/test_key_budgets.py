"""Budgets that reset, end to end: the admin API, the CLI, GET /v1/key, and a window rolling
over under live traffic, on one worker and on two, on SQLite and PostgreSQL.

Midnight is not waited for: moving a key's stored window start back by a window is what the
clock passing midnight looks like to every statement that reads it (store/budget.py).
"""

from __future__ import annotations

import concurrent.futures
import time
from datetime import UTC, datetime

import httpx
import pytest

from callmissed.store.budget import window_start
from tests.accounting import (
    BACKENDS,
    HELLO_COST,
    PRICED,
    admin,
    backend_env,
    chat,
    new_key,
    query,
    settle,
    start_billing_gateway,
)
from tests.conftest import CONFIG, Gateway, stop_gateway
from tests.test_workers import HOLD_50, two_workers

DAY = 86_400
LIMIT = HELLO_COST * 4 + HOLD_50  # five requests with max_tokens=50, as in test_workers.py
GATED = """
[models."priced-gated"]
routes = ["local:gated"]

[prices."priced-gated"]
input = 1.0
output = 2.0
"""


@pytest.fixture(scope="module", params=BACKENDS)
def billing(request, upstream, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("budgets")
    config = workdir / "budgets.toml"
    config.write_text(CONFIG.format(upstream=upstream.url) + PRICED + GATED)
    with backend_env(request.param) as env:
        running = start_billing_gateway(upstream, workdir, CALLMISSED_CONFIG=str(config), **env)
        yield running
        stop_gateway(running)


def midnight(gateway: Gateway, key_id: int, days: int = 1) -> None:
    """As if the clock had passed the end of the key's window: its start moves back."""
    query(
        gateway,
        "UPDATE api_keys SET window_start = window_start - ? WHERE id = ?",
        float(days * DAY),
        key_id,
    )


def test_a_daily_limit_buys_the_same_requests_every_day(billing):
    key, key_id = new_key(billing, credits=LIMIT / 1_000_000, limit_reset="daily")
    for _ in range(3):
        codes = [chat(billing, key, max_tokens=50).status_code for _ in range(7)]
        assert codes == [200] * 5 + [402] * 2
        data = settle(billing, key)
        assert data["limit"] == LIMIT / 1_000_000
        assert data["limit_remaining"] == (LIMIT - 5 * HELLO_COST) / 1_000_000
        midnight(billing, key_id)
        assert settle(billing, key)["limit_remaining"] == LIMIT / 1_000_000  # before any request
    assert settle(billing, key)["usage"] == 15 * HELLO_COST / 1_000_000
    [(uncharged,)] = query(billing, "SELECT sum(uncharged) FROM ledger WHERE key_id = ?", key_id)
    assert uncharged == 0


def test_v1_key_reports_the_reset_and_the_day_week_and_month_in_openrouter_shape(billing):
    key, key_id = new_key(billing, credits=1, limit_reset="monthly")
    for _ in range(4):
        assert chat(billing, key, max_tokens=10).status_code == 200
    settle(billing, key)
    now = time.time()
    day, week, month = (window_start(reset, now) for reset in ("daily", "weekly", "monthly"))
    # Three of the four rows move back: to just before today, this week and this month began.
    rows = query(billing, "SELECT request_id FROM ledger WHERE key_id = ?", key_id)
    dates = [day - 1, week - 1, month - 1, now]
    for (request_id,), created_at in zip(rows, dates, strict=True):
        query(
            billing, "UPDATE ledger SET created_at = ? WHERE request_id = ?", created_at, request_id
        )
    data = settle(billing, key)
    cost = HELLO_COST / 1_000_000
    assert data["limit_reset"] == "monthly"
    assert data["usage"] == 4 * cost
    for field, start in (("usage_daily", day), ("usage_weekly", week), ("usage_monthly", month)):
        assert data[field] == pytest.approx(cost * sum(date >= start for date in dates)), field
    assert data["usage_daily"] == cost
    assert data["limit_remaining"] == 1 - 4 * cost  # the window's budget: settled, not dated
    assert list(data)[:8] == [
        "label", "usage", "usage_daily", "usage_weekly", "usage_monthly", "limit",
        "limit_remaining", "limit_reset",
    ]  # fmt: skip
    plain, _ = new_key(billing, credits=1)
    data = settle(billing, plain)
    assert data["limit_reset"] is None and data["usage_daily"] == 0


def test_the_admin_api_sets_and_changes_a_reset(billing):
    created = admin(billing, "POST", "", name="team", credits=2, limit_reset="weekly")
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert data["limit_reset"] == "weekly"
    assert data["window_start"] == window_start("weekly", time.time())
    key, key_id = created.json()["key"], data["id"]
    assert chat(billing, key, max_tokens=10).status_code == 200
    settle(billing, key)
    daily = admin(billing, "PATCH", f"/{key_id}", limit_reset="daily", rpm=9)
    assert daily.status_code == 200, daily.text
    assert (daily.json()["data"]["limit_reset"], daily.json()["data"]["rpm"]) == ("daily", 9)
    assert daily.json()["data"]["credits"] == 2 - HELLO_COST / 1_000_000  # today's request
    never = admin(billing, "PATCH", f"/{key_id}", limit_reset=None).json()["data"]
    assert never["limit_reset"] is None and never["window_start"] is None
    assert never["credits"] == 2 - HELLO_COST / 1_000_000
    assert never["granted"] == 2  # what is left, plus what was spent: for good
    assert admin(billing, "PATCH", f"/{key_id}", rpm=5).json()["data"]["limit_reset"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"credits": 1, "limit_reset": "hourly"},
        {"credits": 1, "limit_reset": 1},
        {"limit_reset": "daily"},  # an unlimited key has nothing to reset
    ],
)
def test_bad_limit_resets_are_400(billing, body):
    response = admin(billing, "POST", "", **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "limit_reset"


def test_an_unlimited_key_cannot_get_a_reset_later(billing):
    _, key_id = new_key(billing)
    response = admin(billing, "PATCH", f"/{key_id}", limit_reset="monthly")
    assert response.status_code == 400
    assert "unlimited" in response.json()["error"]["message"]


def test_the_cli_creates_and_updates_a_reset(billing):
    result = billing.cli("keys", "create", "--credits", "1", "--limit-reset", "monthly")
    assert result.returncode == 0, result.stderr
    assert "credits $1.000000 of $1.000000 monthly" in result.stdout
    key = result.stdout.splitlines()[-1]
    key_id = int(result.stdout.split()[2])
    assert chat(billing, key, max_tokens=10).status_code == 200
    settle(billing, key)
    updated = billing.cli("keys", "update", str(key_id), "--limit-reset", "daily", "--rpm", "3")
    assert updated.returncode == 0, updated.stderr
    assert "$0.999983 of $1.000000 daily" in updated.stdout and "3 rpm" in updated.stdout
    shown = billing.cli("keys", "show", str(key_id))
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert f"this window (since {today} 00:00 UTC): spent $0.000017" in shown.stdout
    never = billing.cli("keys", "update", str(key_id), "--limit-reset", "none", "--rpm", "none")
    assert never.returncode == 0, never.stderr
    assert "credits $0.999983, limits none" in never.stdout
    assert admin(billing, "GET", f"/{key_id}").json()["data"]["limit_reset"] is None
    refused = billing.cli("keys", "create", "--limit-reset", "daily")
    assert refused.returncode != 0 and "--credits" in refused.stderr
    assert billing.cli("keys", "update", "99999", "--rpm", "1").returncode == 1


def test_a_stream_in_flight_at_midnight_is_charged_to_the_new_day(billing):
    key, key_id = new_key(billing, credits=LIMIT / 1_000_000, limit_reset="daily")
    for _ in range(4):  # the day's last request, the fifth, is still streaming at midnight
        assert chat(billing, key, max_tokens=50).status_code == 200
    payload = {"model": "priced-gated", "stream": True, "max_tokens": 50,
               "messages": [{"role": "user", "content": "Say hello"}]}  # fmt: skip
    billing.upstream.gate.clear()
    with httpx.stream(
        "POST",
        f"{billing.base_url}/chat/completions",
        json=payload,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    ) as response:
        lines = response.iter_lines()
        assert any("Hello" in line for line in lines)  # the first token: it is under way, waiting
        midnight(billing, key_id)
        billing.upstream.gate.set()
        assert [line for line in lines if line][-1] == "data: [DONE]"
    data = settle(billing, key)
    assert data["limit_remaining"] == (LIMIT - HELLO_COST) / 1_000_000
    assert data["usage"] == 5 * HELLO_COST / 1_000_000


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_workers_never_both_spend_a_window(upstream, tmp_path, backend):
    """Both workers serve the key before and after midnight: each day buys five requests,
    in turns and when they all come at once."""
    with backend_env(backend) as env:
        running = start_billing_gateway(upstream, tmp_path, "--workers", "2", **env)
        try:
            with two_workers(running) as clients:
                key, key_id = new_key(running, credits=LIMIT / 1_000_000, limit_reset="daily")

                def one(n: int) -> int:
                    payload = {"model": "priced", "max_tokens": 50,
                               "messages": [{"role": "user", "content": "Say hello"}]}  # fmt: skip
                    headers = {"authorization": f"Bearer {key}"}
                    response = clients[n % 2].post("/v1/chat/completions", json=payload,
                                                   headers=headers)  # fmt: skip
                    return response.status_code

                assert [one(n) for n in range(7)] == [200] * 5 + [402] * 2
                midnight(running, key_id)
                assert [one(n) for n in range(7)] == [200] * 5 + [402] * 2
                midnight(running, key_id)
                with concurrent.futures.ThreadPoolExecutor(8) as pool:
                    codes = list(pool.map(one, range(16)))
                assert 1 <= codes.count(200) <= 5 and set(codes) <= {200, 402}
            settle(running, key)
            [(count, cost, uncharged)] = query(
                running,
                "SELECT count(*), sum(cost), sum(uncharged) FROM ledger WHERE key_id = ?",
                key_id,
            )
            assert (count, cost, uncharged) == (10 + codes.count(200), count * HELLO_COST, 0)
            [(window_spent,)] = query(
                running, "SELECT window_spent FROM api_keys WHERE id = ?", key_id
            )
            assert window_spent == codes.count(200) * HELLO_COST <= LIMIT
        finally:
            stop_gateway(running)
