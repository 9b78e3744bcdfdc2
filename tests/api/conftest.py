"""Fixtures for the Responses API tests: a gateway whose config gives every provider type the
fake upstream's behaviours under one naming scheme."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import CONFIG, Gateway, start_gateway, stop_gateway

# The same behaviours on each provider type: `{}` is the fake's behaviour name.
PROVIDERS = {
    "cloudflare": "cf-{}",
    "sarvam": "sv-{}",
    "local": "local-{}",
    "openrouter": "fake/{}",  # any vendor/model id: OpenRouter, passed through
}
EXTRA_CONFIG = "".join(
    f'\n[models."{prefix}{name}"]\nroutes = ["{route}:{upstream}{name}"]\n'
    for prefix, route, upstream in (("cf-", "cloudflare", "@cf/"), ("sv-", "sarvam", ""))
    for name in ("hello", "weather", "structured", "midstream-error")
) + "".join(
    f'\n[models."local-{name}"]\nroutes = ["local:{name}"]\n'
    for name in ("hello", "weather", "structured", "midstream-error")
)
PRICES = """
[prices."fake/hello"]
input = 1.0
output = 2.0

[prices."local-hello"]
input = 1.0
output = 2.0
"""
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(scope="module")
def responses_gateway(upstream, tmp_path_factory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("responses")
    config = workdir / "responses.toml"
    config.write_text(CONFIG.format(upstream=upstream.url) + EXTRA_CONFIG + PRICES)
    running = start_gateway(upstream, workdir, CALLMISSED_CONFIG=str(config))
    yield running
    stop_gateway(running)


@pytest.fixture
def sdk(responses_gateway, client_for):
    return client_for(responses_gateway)
