"""The admin API (/admin/keys…, CALLMISSED_ADMIN_TOKEN) and GET /v1/key, on the real gateway."""

from __future__ import annotations

import httpx
import pytest

from tests.accounting import (
    ADMIN_TOKEN,
    BACKENDS,
    admin,
    backend_env,
    chat,
    new_key,
    settle,
    start_billing_gateway,
)
from tests.conftest import stop_gateway


@pytest.fixture(scope="module", params=BACKENDS)
def billing(request, upstream, tmp_path_factory):
    with backend_env(request.param) as env:
        running = start_billing_gateway(upstream, tmp_path_factory.mktemp("admin"), **env)
        yield running
        stop_gateway(running)


def test_admin_api_is_off_without_a_token(gateway):
    response = httpx.get(
        f"{gateway.url}/admin/keys", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_disabled"
    assert "CALLMISSED_ADMIN_TOKEN" in response.json()["error"]["message"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {ADMIN_TOKEN}"])
def test_admin_api_needs_the_token(billing, authorization):
    headers = {"authorization": authorization} if authorization else {}
    response = httpx.get(f"{billing.url}/admin/keys", headers=headers)
    assert response.status_code == 401


def test_an_api_key_is_not_an_admin_token(billing):
    key, _ = new_key(billing)
    response = httpx.get(f"{billing.url}/admin/keys", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 401


def test_create_shows_the_key_once_and_list_never(billing):
    response = admin(
        billing,
        "POST",
        "",
        name="team",
        credits="2.5",
        rpm=5,
        tpm=900,
        max_concurrent=2,
        models=["priced"],
    )
    assert response.status_code == 201
    created = response.json()
    key, data = created["key"], created["data"]
    assert key.startswith("cm_") and data["key_prefix"] == key[:7]
    assert data["credits"] == 2.5 and data["granted"] == 2.5 and data["spent"] == 0
    assert (data["rpm"], data["tpm"], data["max_concurrent"]) == (5, 900, 2)
    assert data["models"] == ["priced"]
    listing = admin(billing, "GET", "")
    assert listing.status_code == 200
    assert key not in listing.text
    assert any(item["id"] == data["id"] for item in listing.json()["data"])
    shown = admin(billing, "GET", f"/{data['id']}")
    assert key not in shown.text


def test_show_includes_the_latest_ledger_rows(billing):
    key, key_id = new_key(billing, credits=1)
    response = chat(billing, key, max_tokens=10)
    shown = admin(billing, "GET", f"/{key_id}").json()
    assert shown["usage"][0]["request_id"] == response.headers["x-request-id"]
    assert shown["data"]["spent"] == 0.000017


def test_patch_changes_limits_for_the_next_request(billing):
    key, key_id = new_key(billing, credits=1)
    assert chat(billing, key, max_tokens=10).status_code == 200
    patched = admin(billing, "PATCH", f"/{key_id}", rpm=1, models=["priced"])
    assert patched.status_code == 200
    assert patched.json()["data"]["rpm"] == 1
    assert chat(billing, key, max_tokens=10).status_code == 200
    assert chat(billing, key, max_tokens=10).status_code == 429
    cleared = admin(billing, "PATCH", f"/{key_id}", rpm=None)
    assert cleared.json()["data"]["rpm"] is None
    assert cleared.json()["data"]["models"] == ["priced"]  # untouched fields stay
    assert chat(billing, key, max_tokens=10).status_code == 200


def test_revoke_is_immediate(billing):
    key, key_id = new_key(billing, credits=1)
    assert chat(billing, key, max_tokens=10).status_code == 200
    assert (
        httpx.get(
            f"{billing.base_url}/models", headers={"authorization": f"Bearer {key}"}
        ).status_code
        == 200
    )
    revoked = admin(billing, "POST", f"/{key_id}/revoke")
    assert revoked.json()["data"]["active"] is False
    assert chat(billing, key, max_tokens=10).status_code == 401
    models = httpx.get(f"{billing.base_url}/models", headers={"authorization": f"Bearer {key}"})
    assert models.status_code == 401  # the lookup cache was dropped too


def test_topup(billing):
    key, key_id = new_key(billing, credits=0)
    assert chat(billing, key, max_tokens=10).status_code == 402
    topped = admin(billing, "POST", f"/{key_id}/topup", credits=1)
    assert topped.json()["data"]["credits"] == 1.0
    assert chat(billing, key, max_tokens=10).status_code == 200
    _, unlimited_id = new_key(billing)
    assert admin(billing, "POST", f"/{unlimited_id}/topup", credits=1).status_code == 400


def test_top_ups_may_not_take_a_balance_past_a_billion_usd(billing):
    _, key_id = new_key(billing, credits=900_000_000)
    refused = admin(billing, "POST", f"/{key_id}/topup", credits=200_000_000)
    assert refused.status_code == 400
    assert "past 1,000,000,000 USD" in refused.json()["error"]["message"]
    assert admin(billing, "POST", f"/{key_id}/topup", credits=100_000_000).status_code == 200
    assert admin(billing, "POST", f"/{key_id}/topup", credits="0.000001").status_code == 400
    assert admin(billing, "GET", f"/{key_id}").json()["data"]["credits"] == 1_000_000_000
    listing = billing.cli("keys", "list")
    assert listing.returncode == 0, listing.stderr
    assert "$1000000000.000000" in listing.stdout
    topup = billing.cli("keys", "topup", str(key_id), "1")
    assert topup.returncode == 1 and "past 1,000,000,000 USD" in topup.stderr
    assert billing.cli("keys", "create", "--credits", "1e20").returncode != 0
    assert "at most 1,000,000,000 USD" in billing.cli("keys", "create", "--credits", "1e20").stderr


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/999999", {}, 404),
        ("GET", "/abc", {}, 404),
        ("GET", "/%C2%B2", {}, 404),  # "²" is a digit to str.isdigit(), not to int()
        ("GET", "/99999999999999999999", {}, 404),  # past 64 bits
        ("POST", "", {"credits": 1e20}, 400),
        ("POST", "", {"credits": "1000000000.000001"}, 400),
        ("POST", "", {"credits": -1}, 400),
        ("POST", "", {"credits": "lots"}, 400),
        ("POST", "", {"rpm": 0}, 400),
        ("POST", "", {"tpm": 2**31}, 400),
        ("POST", "", {"models": "priced"}, 400),
        ("POST", "", {"name": ""}, 400),
        ("POST", "/1/explode", {}, 400),
    ],
)
def test_bad_admin_requests(billing, method, path, body, status):
    response = admin(billing, method, path, **body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_v1_key_in_openrouter_shape(billing):
    key, _ = new_key(billing, credits=3, rpm=60, models=["priced"])
    chat(billing, key, max_tokens=10)
    data = settle(billing, key)
    assert data["label"] == "test"
    assert data["limit"] == 3.0
    assert data["usage"] == 0.000017
    assert data["limit_remaining"] == 2.999983
    assert data["rate_limit"]["requests"] == 60
    assert data["models"] == ["priced"]
    unlimited, _ = new_key(billing)
    data = settle(billing, unlimited)
    assert data["limit"] is None and data["limit_remaining"] is None and data["usage"] == 0


def test_cli_and_admin_api_share_the_store(billing):
    result = billing.cli(
        "keys", "create", "--name", "cli", "--credits", "1", "--rpm", "7", "--models", "priced,a"
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.splitlines()[-1]
    assert key.startswith("cm_") and " " not in key
    key_id = int(result.stdout.split()[2])
    data = admin(billing, "GET", f"/{key_id}").json()["data"]
    assert (data["rpm"], data["models"], data["credits"]) == (7, ["priced", "a"], 1.0)
    assert chat(billing, key, max_tokens=10).status_code == 200
    shown = billing.cli("keys", "show", str(key_id))
    assert "7 rpm" in shown.stdout and "priced, a" in shown.stdout and "$0.000017" in shown.stdout
    assert billing.cli("keys", "show", "99999").returncode == 1
