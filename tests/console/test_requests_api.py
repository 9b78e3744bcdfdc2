"""GET /admin/requests and /admin/requests/{id}: the ledger, filtered, paged, one request whole.

Real gateways on SQLite and PostgreSQL, real fault-injection upstreams, the OpenAI SDK."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.accounting import ADMIN_TOKEN, BACKENDS, backend_env, new_key, settle
from tests.conftest import stop_gateway
from tests.console.conftest import admin_get, ask, sdk, start_console_gateway


@pytest.fixture(scope="module", params=BACKENDS)
def console(request, upstream, faults, tmp_path_factory):
    with backend_env(request.param) as env:
        running = start_console_gateway(
            upstream, faults, tmp_path_factory.mktemp("requests"), **env
        )
        yield running
        stop_gateway(running)


def _detail(gateway, request_id: str) -> dict[str, Any]:
    detail: dict[str, Any] = admin_get(gateway, f"/admin/requests/{request_id}")["data"]
    return detail


def test_a_request_shows_its_route_times_tokens_cost_and_tags(console):
    key, key_id = new_key(console, credits=1)
    with sdk(console, key, **{"x-callmissed-tags": "team:search, nightly"}) as client:
        request_id = ask(client, "plain", stream=True, stream_options={"include_usage": True})
    row = _detail(console, request_id)
    assert row["id"] == request_id
    assert row["key"] == {"id": key_id, "name": "test"}
    assert (row["model"], row["route"], row["upstream_model"]) == (
        "plain", "fa:console/ok", "console/ok",
    )  # fmt: skip
    assert row["stream"] is True and row["status"] == 200 and row["error"] is None
    assert row["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 2, "reasoning_tokens": 0, "cached_tokens": 0,
    }  # fmt: skip
    assert row["cost"] == (5 * 1 + 2 * 2) / 1e6
    assert 0 < row["ttfb_ms"] <= row["total_ms"]
    assert row["tags"] == ["team:search", "nightly"]
    # One attempt, which answered: the row itself describes it.
    assert row["attempts"] == [
        {"route": "fa:console/ok", "start_ms": 0.0, "ms": row["ttfb_ms"], "outcome": "ok",
         "hedge": False},
    ]  # fmt: skip


def test_metadata_entries_become_tags(console):
    with sdk(console) as client:
        request_id = ask(client, "plain", metadata={"team": "billing", "run": "42"})
    assert _detail(console, request_id)["tags"] == ["team:billing", "run:42"]


def test_the_reasoning_effort_received_and_sent(console):
    with sdk(console) as client:
        mapped = ask(client, "thinker", reasoning_effort="none")
        unsent = ask(client, "thinker")
    assert _detail(console, mapped)["reasoning_effort"] == {"received": "none", "sent": "low"}
    assert _detail(console, unsent)["reasoning_effort"] == {"received": None, "sent": None}


def test_a_fallback_keeps_every_attempt_with_its_timing(console):
    with sdk(console) as client:
        request_id = ask(client, "falls-back")
    row = _detail(console, request_id)
    assert row["route"] == "fb:console-fallback/ok"
    first, second = row["attempts"]
    assert (first["route"], first["outcome"], first["hedge"]) == (
        "fa:console-fallback/error-500", "500", False,
    )  # fmt: skip
    assert (second["route"], second["outcome"], second["hedge"]) == (
        "fb:console-fallback/ok", "ok", False,
    )  # fmt: skip
    assert 0 <= first["start_ms"] < 1  # it began as routing did
    assert second["start_ms"] >= first["start_ms"] + first["ms"]


def test_a_hedge_shows_both_racers(console):
    with sdk(console) as client:
        request_id = ask(client, "hedged", stream=True)
    attempts = _detail(console, request_id)["attempts"]
    by_route = {attempt["route"]: attempt for attempt in attempts}
    slow, fast = by_route["fa:console-hedge/slow-first"], by_route["fb:console-hedge/ok"]
    assert (slow["outcome"], slow["hedge"]) == ("abandoned", False)
    assert (fast["outcome"], fast["hedge"]) == ("ok", True)
    # The hedge started once the first attempt had waited (hedge_after_ms = 100); the first
    # attempt was abandoned only after the hedge had answered.
    assert fast["start_ms"] > slow["start_ms"] + 50
    assert slow["start_ms"] + slow["ms"] >= fast["start_ms"] + fast["ms"]


def test_a_failure_keeps_its_error(console):
    with sdk(console) as client, pytest.raises(openai.BadRequestError):
        ask(client, "refused")
    page = admin_get(console, "/admin/requests", model="refused", limit=1)["data"]
    row = _detail(console, page[0]["id"])
    assert row["status"] == 400
    assert row["error"]["code"] == "upstream_rejected"
    assert "injected failure 400" in row["error"]["message"]
    assert row["cost"] == 0
    assert [attempt["outcome"] for attempt in row["attempts"]] == ["400"]


def test_filters_narrow_the_list(console):
    key, key_id = new_key(console)
    with sdk(console, key, **{"x-callmissed-tags": "filter-test"}) as client:
        plain = ask(client, "plain")
        fallback = ask(client, "falls-back")
        with pytest.raises(openai.BadRequestError):
            ask(client, "refused")
    settle(console, key)

    def ids(**filters) -> list[str]:
        return [row["id"] for row in admin_get(console, "/admin/requests", **filters)["data"]]

    mine = ids(key=key_id)
    assert mine[1:] == [fallback, plain] and len(mine) == 3  # the refused one is the newest
    assert ids(key=key_id, model="plain") == [plain]
    assert ids(key=key_id, route="fb:console-fallback/ok") == [fallback]
    assert ids(key=key_id, route="fb") == [fallback]
    assert ids(key=key_id, status="ok") == [fallback, plain]
    assert ids(key=key_id, status="error") == mine[:1]
    assert ids(key=key_id, status="400") == mine[:1]
    assert ids(key=key_id, status="cancelled") == []
    assert ids(tag="filter-test") == mine
    assert ids(tag="filter-test", model="plain") == [plain]
    assert ids(key=key_id, since=time.time() + 60) == []
    assert ids(key=key_id, until=time.time() - 3600) == []


def test_pages_follow_each_other_without_gaps_or_repeats(console):
    key, key_id = new_key(console)
    with sdk(console, key) as client:
        made = [ask(client, "plain") for _ in range(7)]
    settle(console, key)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = admin_get(console, "/admin/requests", key=key_id, limit=3, cursor=cursor)
        seen += [row["id"] for row in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]


@pytest.mark.parametrize(
    "params",
    [{"key": "x"}, {"status": "bad"}, {"since": "yesterday"}, {"limit": "0"}, {"cursor": "!!"}],
)
def test_bad_filters_are_refused(console, params):
    response = httpx.get(
        f"{console.url}/admin/requests",
        params=params,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_an_unknown_request_is_a_404(console):
    response = httpx.get(
        f"{console.url}/admin/requests/req_nope",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "request_not_found"


def test_a_bad_tags_header_is_refused(console):
    tags = ",".join(f"t{n}" for n in range(9))
    with (
        sdk(console, **{"x-callmissed-tags": tags}) as client,
        pytest.raises(openai.BadRequestError, match="at most 8"),
    ):
        ask(client, "plain")
