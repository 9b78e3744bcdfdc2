"""The Responses API through the official Node SDK (the `openai` npm package), unchanged, on
every provider type: create, stream, a function-tool round trip, parse, and a continuation."""

from __future__ import annotations

import json
import subprocess

from tests.api.conftest import PROVIDERS
from tests.test_js_sample import JS, node  # noqa: F401 (the fixture)


def test_the_node_sdk_passes_on_every_provider_type(responses_gateway, node):  # noqa: F811
    env = {
        **responses_gateway.env,
        "CALLMISSED_KEY": responses_gateway.key,
        "CALLMISSED_BASE_URL": responses_gateway.base_url,
        "CALLMISSED_MODELS": ",".join(PROVIDERS.values()),
    }
    result = subprocess.run(
        [node, "responses.mjs"],
        cwd=JS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = {
        "text": "Hello world",
        "streamed": "Hello world",
        "deltas": "Hello world",
        "firstEvent": "response.created",
        "lastEvent": "response.completed",
        "call": {"name": "get_weather", "arguments": {"city": "Paris"}},
        "answer": "It is 21C in Paris.",
        "parsed": {"city": "Paris", "temperature_c": 21},
        "continued": True,
    }
    assert json.loads(result.stdout) == dict.fromkeys(PROVIDERS.values(), expected)
