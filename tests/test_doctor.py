"""`callmissed doctor --url … --key …` runs the Getting Started checklist against a real gateway
(the simulator models, whose timings come from the page, and the fake upstreams)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.test_http2 import self_signed


def _doctor(gateway: Gateway, *args: str) -> tuple[int, dict[str, str]]:
    result = gateway.cli("doctor", "--url", gateway.url, "--key", gateway.key, *args)
    items = {}
    for line in result.stdout.splitlines():
        status, _, rest = line.partition("  ")
        name, _, detail = rest.strip().partition(": ")
        items[name] = f"{status.strip()}: {detail}"
    return result.returncode, items


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text!r}"
    return float(match[1])


def test_the_checklist_passes_with_measured_numbers(gateway):
    code, items = _doctor(gateway, "--model", "sim/gpt-oss-120b", "--kimi-model", "sim/kimi-k2.6")
    assert code == 0, items
    streaming = items["streaming"]
    assert streaming.startswith("ok: sim/gpt-oss-120b: first token after")
    first_token = _number(r"first token after (\d+) ms", streaming)
    whole = _number(r"whole answer after (\d+) ms", streaming)
    assert 50 <= first_token < whole and whole >= 1500  # the simulator's profile
    assert items["model"].startswith("ok: sim/gpt-oss-120b -> sim:gpt-oss-120b (closed,")
    assert "recent first token" in items["model"]
    kimi = items["kimi reasoning"]
    assert kimi.startswith("ok: sim/kimi-k2.6: 101 completion tokens by default, 9 with")
    reuse = items["connection reuse"]
    assert reuse.startswith("ok: 3 calls on one connection: ")
    assert "a new connection each: " in reuse
    assert items["HTTP/2"].startswith("ok: h2c prior knowledge: the gateway speaks HTTP/2")


def test_a_failing_item_fails_the_doctor_and_a_missing_kimi_only_warns(gateway):
    code, items = _doctor(gateway, "--model", "cf-capacity", "--kimi-model", "unconfigured-model")
    assert code == 1
    assert items["streaming"].startswith("FAIL: HTTP 429")
    assert items["kimi reasoning"].startswith("warn: unconfigured-model: not checked")
    assert items["HTTP/2"].startswith("ok")


def test_a_big_model_is_a_warning_not_a_failure(gateway):
    code, items = _doctor(
        gateway, "--model", "sim/claude-sonnet-4.6", "--kimi-model", "sim/instant-thinker"
    )
    assert items["model"].startswith("warn: sim/claude-sonnet-4.6 -> ")
    assert "prefer gpt-oss-120b" in items["model"]
    assert code == 0


@pytest.fixture(scope="module")
def https_gateway(upstream, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("doctor-tls")
    ca, cert, key = self_signed(workdir)
    running = start_gateway(upstream, workdir, "--tls-cert", str(cert), "--tls-key", str(key))
    yield running, ca
    stop_gateway(running)


def test_over_https_http2_is_checked_with_alpn(https_gateway):
    gateway, ca = https_gateway
    code, items = _doctor(
        gateway, "--model", "local-model", "--kimi-model", "local-thinker", "--ca-file", str(ca)
    )
    assert items["HTTP/2"].startswith("ok: ALPN: the gateway speaks HTTP/2"), items
    assert items["connection reuse"].startswith("ok: 3 calls on one connection"), items
    assert code == 0, items
