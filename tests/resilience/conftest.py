"""Resilience fixtures: the fault-injection upstream, and gateways with short timeouts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import Gateway, free_port, start_gateway
from tests.fakes.faults import FaultUpstream, start_fault_upstream
from tests.fakes.upstream import FakeUpstream

PROVIDERS = """
[providers.fa]
type = "openai"
base_url = "{url}/openai/v1"

[providers.fb]
type = "openai"
base_url = "{url}/openai/v1"

[providers.cf]
type = "cloudflare"
base_url = "{url}/client/v4/accounts/acct/ai/v1"

[providers.dead]   # nothing listens there: connection refused
type = "openai"
base_url = "http://127.0.0.1:{dead}/v1"
"""

# Every timeout short, so a fault costs a test well under a second or two.
FAST = {
    "CALLMISSED_CONNECT_TIMEOUT": "1",
    "CALLMISSED_FIRST_TOKEN_TIMEOUT": "0.5",
    "CALLMISSED_STREAM_IDLE_TIMEOUT": "0.5",
    "CALLMISSED_TOTAL_TIMEOUT": "2",
    "CALLMISSED_KEEPALIVE_AFTER": "30",
    "CALLMISSED_RETRY_BACKOFF": "0.01",
}
# The SDK's own timeout: a gateway that hangs past its configured limits fails the test.
CLIENT_TIMEOUT = 6.0


@pytest.fixture(scope="session")
def faults() -> Iterator[FaultUpstream]:
    fake, stop = start_fault_upstream()
    yield fake
    stop()


def launch(
    upstream: FakeUpstream, faults: FaultUpstream, workdir: Path, models: str, **env: str
) -> Gateway:
    """A gateway whose config has the fault providers plus `models`, with FAST timeouts."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "resilience.toml"
    config.write_text(PROVIDERS.format(url=faults.url, dead=free_port()) + models)
    return start_gateway(upstream, workdir, CALLMISSED_CONFIG=str(config), **{**FAST, **env})


def sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.key, max_retries=0, timeout=CLIENT_TIMEOUT
    )
