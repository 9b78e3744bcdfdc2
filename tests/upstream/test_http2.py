"""Upstreams that speak HTTP/2 are reached over HTTP/2 (ALPN), through one pooled client."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import ROOT, Gateway, free_port, start_gateway, stop_gateway, wait_healthy
from tests.test_http2 import self_signed


@pytest.fixture(scope="module")
def h2_gateway(upstream, tmp_path_factory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("h2-upstream")
    ca, cert, key = self_signed(workdir)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ssl-certificate",
            str(cert),
            "--ssl-keyfile",
            str(key),
            "--no-ws",
            "--log-level",
            "warning",
            "tests.fakes.h2_upstream:app",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_healthy(f"https://127.0.0.1:{port}", server, None, path="/")
        config = _config(workdir, f"https://127.0.0.1:{port}/v1", ca)
        running = start_gateway(upstream, workdir, CALLMISSED_CONFIG=str(config))
        yield running
        stop_gateway(running)
    finally:
        server.terminate()
        server.wait(10)


def _config(workdir: Path, base_url: str, cert: Path) -> Path:
    path = workdir / "h2.toml"
    path.write_text(
        f'[providers.secure]\ntype = "openai"\nbase_url = "{base_url}"\nca_file = "{cert}"\n\n'
        '[models."secure-model"]\nroutes = ["secure:h2-model"]\n'
        '[models."secure-bomb"]\nroutes = ["secure:h2-bomb"]\n\n'
        # An upstream that publishes its prices, as OpenRouter does (accounting/price_list.py).
        f'[providers.listed]\ntype = "openrouter"\nbase_url = "{base_url}"\nca_file = "{cert}"\n\n'
        '[models."listed-model"]\nroutes = ["listed:h2-model"]\n'
    )
    return path


def test_https_upstream_is_reached_over_http2(h2_gateway, client_for):
    client = client_for(h2_gateway)
    stream = client.chat.completions.create(
        model="secure-model", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "Hello over HTTP/2"
    completion = client.chat.completions.create(
        model="secure-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Hello over HTTP/2"


def test_a_compressed_answer_over_http2_inflates_only_so_far(h2_gateway, client_for):
    """HTTP/2 bodies are inflated by us, within the same limit as HTTP/1.1 ones (the HTTP/2
    client's own decoders have none): a gzip bomb is a 502, not 40 MiB relayed."""
    client = client_for(h2_gateway)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model="secure-bomb", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 502
    assert "sent a compressed body that inflates past" in raised.value.message


def test_an_upstreams_price_list_is_read_over_http2(h2_gateway, client_for):
    """The list arrives in many HTTP/2 data frames; a key with a credit limit may then use the
    model it prices, billed at its price: 1 + 2 x 3 micro-credits."""
    key = h2_gateway.create_key("--credits", "1")
    client = client_for(h2_gateway).with_options(api_key=key)
    completion = client.chat.completions.create(
        model="listed-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.usage is not None
    assert completion.usage.model_extra["cost"] == 0.000007
