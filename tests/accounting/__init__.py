"""Helpers for the credits, limits and admin tests: a gateway with priced fake models and an admin
token, an admin client, and direct reads of its SQLite database (exact micro-credits)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CONFIG, Gateway, require_service, start_gateway
from tests.fakes.upstream import FakeUpstream

POSTGRES_URL = os.environ.get(
    "CALLMISSED_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# Gateways in these tests run on each store backend; PostgreSQL ones skip without a server.
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.services)]

ADMIN_TOKEN = "admin-test-token-0123456789"
HELLO_COST = 5 * 1 + 6 * 2  # micro-credits for the fake's usual answer on a priced model

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
    upstream: FakeUpstream, workdir: Path, *serve_args: str, extra_config: str = "", **env: str
) -> Gateway:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "billing.toml"
    config.write_text(CONFIG.format(upstream=upstream.url) + PRICED + extra_config)
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


@contextlib.contextmanager
def backend_env(backend: str) -> Iterator[dict[str, str]]:
    """Environment for a gateway on `backend`: nothing extra for SQLite, a fresh schema else."""
    if backend == "sqlite":
        yield {}
        return
    with postgres_schema() as url:
        yield {"CALLMISSED_DATABASE_URL": url}


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A throwaway schema on the test server, as a URL whose search_path points at it."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    _postgres(POSTGRES_URL, f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?search_path={schema}"
    finally:
        _postgres(POSTGRES_URL, f"DROP SCHEMA {schema} CASCADE")


def _postgres(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import asyncpg

    async def fetch() -> list[tuple[Any, ...]]:
        db = await asyncpg.connect(url, timeout=5)
        try:
            return [tuple(row) for row in await db.fetch(sql, *params)]
        finally:
            await db.close()

    try:
        # From inside a test's event loop too (the store contract tests): on a thread of its own.
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            return thread.submit(asyncio.run, fetch()).result()
    except (OSError, asyncpg.PostgresError) as exc:
        require_service("PostgreSQL", f"{url}: {exc}")
        raise


def query(gateway: Gateway, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run SQL (with ? placeholders) on the gateway's own database."""
    return query_url(gateway.env["CALLMISSED_DATABASE_URL"], sql, *params)


def query_url(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run SQL (with ? placeholders) on the database at a CALLMISSED_DATABASE_URL."""
    if url.startswith("postgresql://"):
        numbered = iter(range(1, 100))
        return _postgres(url, re.sub(r"\?", lambda _: f"${next(numbered)}", sql), *params)
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
        return db.execute(sql, params).fetchall()


def settle(gateway: Gateway, key: str) -> dict[str, Any]:
    """GET /v1/key: settles the gateway's finished requests, then reports the key."""
    response = httpx.get(
        f"{gateway.base_url}/key", headers={"authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


# The key's unspent credit: its balance plus what gateway processes hold of it in wallets.
UNSPENT = (
    "SELECT credits + (SELECT COALESCE(sum(amount), 0) FROM holds"
    " WHERE holds.key_id = api_keys.id AND holds.wallet) FROM api_keys WHERE id = ?"
)


def balance(gateway: Gateway, key_id: int) -> int:
    """The key's unspent micro-credits (wallets included), straight from the database."""
    return int(query(gateway, UNSPENT, key_id)[0][0])


def in_wallets(gateway: Gateway, key_id: int) -> int:
    """Micro-credits of the key that gateway processes hold in wallets now."""
    rows = query(gateway, "SELECT sum(amount) FROM holds WHERE key_id = ? AND wallet", key_id)
    return int(rows[0][0] or 0)


def chat(
    gateway: Gateway, key: str, model: str = "priced", *, timeout: float = 30, **body: Any
) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "Say hello"}], **body}
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=payload,
        headers={"authorization": f"Bearer {key}"},
        timeout=timeout,
    )
