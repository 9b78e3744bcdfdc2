"""Helpers for the credits, limits and admin tests: a gateway with priced fake models and an admin
token, an admin client, and direct reads of its SQLite database (exact micro-credits)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import CONFIG, Gateway, start_gateway
from tests.fakes.upstream import FakeUpstream

ADMIN_TOKEN = "admin-test-token-0123456789"

# Priced models on the fake upstream (USD per million tokens): one micro-credit per input token
# and two per output token, so costs in these tests are easy to check by hand.
PRICED = """
[models."priced"]
routes = ["local:hello"]

[models."priced-thinker"]
routes = ["local:reasoning"]

[models."priced-midstream"]
routes = ["local:midstream-error"]

[models."priced-drop"]
routes = ["local:drop-after-2"]

[models."priced-endless"]
routes = ["local:endless"]

[models."priced-slow"]
routes = ["local:slow"]

[models."priced-fails"]
routes = ["local:error-500"]

[prices.priced]
input = 1.0
output = 2.0

[prices."priced-thinker"]
input = 1.0
output = 2.0

[prices."priced-midstream"]
input = 1.0
output = 2.0

[prices."priced-drop"]
input = 1.0
output = 2.0

[prices."priced-endless"]
input = 1.0
output = 2.0

[prices."priced-slow"]
input = 1.0
output = 2.0

[prices."priced-fails"]
input = 1.0
output = 2.0
"""


def start_billing_gateway(
    upstream: FakeUpstream, workdir: Path, *serve_args: str, **env: str
) -> Gateway:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "billing.toml"
    config.write_text(CONFIG.format(upstream=upstream.url) + PRICED)
    env = {"CALLMISSED_ADMIN_TOKEN": ADMIN_TOKEN, "CALLMISSED_CONFIG": str(config), **env}
    return start_gateway(upstream, workdir, *serve_args, **env)


def admin(gateway: Gateway, method: str, path: str, **body: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{gateway.url}/admin/keys{path}",
        json=body if body else None,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )


def new_key(gateway: Gateway, **fields: Any) -> tuple[str, int]:
    """Create a key through the admin API; (the key, its id)."""
    response = admin(gateway, "POST", "", name="test", **fields)
    assert response.status_code == 201, response.text
    return response.json()["key"], response.json()["data"]["id"]


def query(gateway: Gateway, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(gateway.workdir / "gateway.sqlite3") as db:
        return db.execute(sql, params).fetchall()


def settle(gateway: Gateway, key: str) -> dict[str, Any]:
    """GET /v1/key: settles the gateway's finished requests, then reports the key."""
    response = httpx.get(
        f"{gateway.base_url}/key", headers={"authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def balance(gateway: Gateway, key_id: int) -> int:
    """The key's balance in micro-credits, straight from the database."""
    return int(query(gateway, "SELECT credits FROM api_keys WHERE id = ?", key_id)[0][0])


def chat(gateway: Gateway, key: str, model: str = "priced", **body: Any) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], **body}
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=payload,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
