"""GET /admin/overview, /admin/tags, /admin/usage/keys and /admin/facets: sums from the rollups,
exact against the requests made, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.accounting import ADMIN_TOKEN, BACKENDS, backend_env, new_key, settle
from tests.conftest import stop_gateway
from tests.console.conftest import admin_get, ask, sdk, start_console_gateway

PLAIN_COST = 5 * 1 + 3 * 2  # micro-credits: the fault upstream's non-streamed usage


@pytest.fixture(scope="module", params=BACKENDS)
def traffic(request, upstream, faults, tmp_path_factory):
    """A fresh gateway, and what was sent through it: 3 tagged and 2 untagged plain requests
    by one key, a failed one by another."""
    with backend_env(request.param) as env:
        gateway = start_console_gateway(upstream, faults, tmp_path_factory.mktemp("usage"), **env)
        try:
            yield (gateway, *_send(gateway))
        finally:
            stop_gateway(gateway)


def _send(gateway) -> tuple[int, int]:
    spender, spender_id = new_key(gateway, credits=1)
    other, other_id = new_key(gateway)
    with sdk(gateway, spender, **{"x-callmissed-tags": "team:search"}) as client:
        for _ in range(3):
            ask(client, "plain")
    with sdk(gateway, spender) as client:
        for _ in range(2):
            ask(client, "plain")
    with sdk(gateway, other) as client, pytest.raises(openai.BadRequestError):
        ask(client, "refused")
    settle(gateway, spender)
    return spender_id, other_id


def test_overview_totals_match_the_requests(traffic):
    gateway, spender_id, _ = traffic
    overview = admin_get(gateway, "/admin/overview", range="1h")
    totals = overview["totals"]
    assert totals["requests"] == 5 + 1  # five answered, one refused by the upstream
    assert totals["errors"] == 1
    assert totals["cost"] == pytest.approx(5 * PLAIN_COST / 1e6)
    assert totals["prompt_tokens"] == 5 * 5
    assert totals["completion_tokens"] == 5 * 3
    assert totals["ttfb_p50_ms"] is not None and totals["ttfb_p99_ms"] >= totals["ttfb_p50_ms"]
    assert len(overview["series"]) == 60 and overview["step"] == 60
    assert sum(point["requests"] for point in overview["series"]) == totals["requests"]
    models = {entry["model"]: entry for entry in overview["models"]}
    assert models["plain"]["requests"] == 5 and models["refused"]["errors"] == 1
    assert len(models["plain"]["series"]["requests"]) == 60
    routes = {entry["route"]: entry for entry in overview["routes"]}
    assert routes["fa:console/ok"]["requests"] == 5
    assert [key["key_id"] for key in overview["top_keys"]][:1] == [spender_id]
    assert overview["top_keys"][0]["cost"] == pytest.approx(5 * PLAIN_COST / 1e6)
    assert overview["slowest_routes"]


def test_ok_requests_are_not_counted_as_errors_nor_cancelled(traffic):
    gateway, _, _ = traffic
    totals = admin_get(gateway, "/admin/overview", range="24h")["totals"]
    assert (totals["errors"], totals["cancelled"]) == (1, 0)
    assert totals["error_rate"] == pytest.approx(1 / 6, abs=1e-3)


def test_the_overview_can_be_narrowed_to_a_tag(traffic):
    gateway, spender_id, _ = traffic
    tagged = admin_get(gateway, "/admin/overview", range="30d", tag="team:search")
    assert tagged["totals"]["requests"] == 3
    assert tagged["totals"]["cost"] == pytest.approx(3 * PLAIN_COST / 1e6)
    assert [key["key_id"] for key in tagged["top_keys"]] == [spender_id]
    assert [model["model"] for model in tagged["models"]] == ["plain"]


def test_tags_are_summed(traffic):
    gateway, _, _ = traffic
    tags = admin_get(gateway, "/admin/tags", range="24h")["data"]
    assert [(tag["tag"], tag["requests"]) for tag in tags] == [("team:search", 3)]
    assert tags[0]["cost"] == pytest.approx(3 * PLAIN_COST / 1e6)


def test_key_usage_and_last_use(traffic):
    gateway, spender_id, other_id = traffic
    usage = {row["key_id"]: row for row in admin_get(gateway, "/admin/usage/keys")["data"]}
    assert usage[spender_id]["requests"] == 5
    assert usage[spender_id]["cost"] == pytest.approx(5 * PLAIN_COST / 1e6)
    assert usage[other_id]["errors"] == 1
    newest = admin_get(gateway, "/admin/requests", key=spender_id, limit=1)["data"][0]
    assert usage[spender_id]["last_used_at"] == pytest.approx(newest["created_at"])
    assert usage[1]["last_used_at"] is None  # the key `serve` printed: never used


def test_facets_list_what_was_seen(traffic):
    gateway, _, _ = traffic
    facets = admin_get(gateway, "/admin/facets")
    assert facets["models"] == ["plain", "refused"]
    assert set(facets["routes"]) == {"fa:console/ok", "fa:console-refused/error-400"}
    assert facets["tags"] == ["team:search"]


def test_an_unknown_range_is_refused(traffic):
    gateway, _, _ = traffic
    response = httpx.get(
        f"{gateway.url}/admin/overview",
        params={"range": "forever"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 400
