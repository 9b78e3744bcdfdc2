"""A gateway for the embeddings tests: the usual config plus embedding models on the fakes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.accounting import ADMIN_TOKEN
from tests.conftest import CONFIG, Gateway, start_gateway, stop_gateway
from tests.fakes.embeddings import fake_vector
from tests.fakes.upstream import FakeUpstream

EMBEDDING_CONFIG = """
[models."local-embed"]
routes = ["local:embedder"]
embedding = true

[models."local-embed-floats"]
routes = ["local:floats-only"]
embedding = true

[models."local-embed-batch"]
routes = ["local:batch-4"]
embedding = { batch = 4 }

[models."local-embed-no-usage"]
routes = ["local:no-usage"]
embedding = true

[models."local-embed-one-short"]
routes = ["local:one-short"]
embedding = true
prices = { input = 1.0, output = 0.0 }

[models."local-embed-rejects"]
routes = ["local:error-400"]
embedding = true

[models."embed-failover"]
routes = ["cloudflare:@cf/error-503-7009", "openrouter:vendor/fallback-embedder"]
embedding = { dimensions = 8 }

[models."priced-embed"]
routes = ["local:embedder"]
embedding = true
prices = { input = 1.0, output = 0.0 }

[models."priced-embed-no-usage"]
routes = ["local:no-usage"]
embedding = true
prices = { input = 1.0, output = 0.0 }
"""


def start_embedding_gateway(upstream: FakeUpstream, workdir: Path) -> Gateway:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "embeddings.toml"
    config.write_text(CONFIG.format(upstream=upstream.url) + EMBEDDING_CONFIG)
    env = {"CALLMISSED_ADMIN_TOKEN": ADMIN_TOKEN, "CALLMISSED_CONFIG": str(config)}
    return start_gateway(upstream, workdir, **env)


@pytest.fixture(scope="module")
def embedding_gateway(upstream, tmp_path_factory) -> Iterator[Gateway]:
    running = start_embedding_gateway(upstream, tmp_path_factory.mktemp("embeddings"))
    yield running
    stop_gateway(running)


def unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector]


def shortened(text: str, dimensions: int) -> list[float]:
    """What the gateway makes of a fake vector asked for with fewer `dimensions`."""
    return unit(fake_vector(text)[:dimensions])
