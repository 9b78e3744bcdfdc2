"""Console fixtures: a gateway with an admin token and models that fall back, hedge and fail on
the fault-injection upstream, an admin client that speaks both auth forms, and Chromium."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.accounting import ADMIN_TOKEN
from tests.browser import Browser
from tests.conftest import Gateway, require_service, start_gateway
from tests.fakes.faults import FaultUpstream, start_fault_upstream
from tests.fakes.upstream import FakeUpstream
from tests.resilience.conftest import FAST, PROVIDERS

MODELS = """
[models."plain"]
routes = ["fa:console/ok"]

[models."falls-back"]
routes = ["fa:console-fallback/error-500", "fb:console-fallback/ok"]

[models."hedged"]
routes = ["fa:console-hedge/slow-first", "fb:console-hedge/ok"]
hedge_after_ms = 100
timeouts = { first_token = 5, total = 10 }

[models."thinker"]
routes = ["fa:console-think/ok"]
reasoning = "mandatory"

[models."refused"]
routes = ["fa:console-refused/error-400"]

[models."endless"]
routes = ["fa:console-endless/endless"]
"""
PRICES = "".join(
    f'\n[prices."{name}"]\ninput = 1.0\noutput = 2.0\n'
    for name in ("plain", "falls-back", "hedged", "thinker", "refused", "endless")
)
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="session")
def faults() -> Iterator[FaultUpstream]:
    fake, stop = start_fault_upstream()
    yield fake
    stop()


def start_console_gateway(
    upstream: FakeUpstream, faults: FaultUpstream, workdir: Path, *serve_args: str, **env: str
) -> Gateway:
    """A gateway with the console's models and CALLMISSED_ADMIN_TOKEN, fast timeouts."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "console.toml"
    config.write_text(PROVIDERS.format(url=faults.url, dead=9) + MODELS + PRICES)
    env = {"CALLMISSED_ADMIN_TOKEN": ADMIN_TOKEN, "CALLMISSED_CONFIG": str(config), **FAST, **env}
    return start_gateway(upstream, workdir, *serve_args, **env)


def admin_get(gateway: Gateway, path: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(
        f"{gateway.url}{path}",
        params={name: value for name, value in params.items() if value is not None},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def sdk(gateway: Gateway, key: str | None = None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.base_url,
        api_key=key or gateway.key,
        max_retries=0,
        timeout=10,
        default_headers=headers or None,
    )


def ask(client: openai.OpenAI, model: str, stream: bool = False, **extra: Any) -> str:
    """One chat request; its x-request-id."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=stream, **extra
    )
    parsed = raw.parse()
    if stream:
        for _ in parsed:
            pass
    return raw.headers["x-request-id"]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = next(
        (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
    )
    if executable is None:
        require_service("Chromium", "install Debian's chromium package (scripts/setup does)")
    assert executable is not None
    with Browser(executable) as running:
        yield running
