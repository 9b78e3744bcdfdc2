"""The `callmissed` command: keys, config check, and serve's first key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx

from tests.conftest import start_gateway, stop_gateway


def test_keys_create_prints_the_key_alone_on_its_last_line(gateway):
    result = gateway.cli("keys", "create", "--name", "ci", "--credits", "5")
    assert result.returncode == 0, result.stderr
    key = result.stdout.splitlines()[-1]
    assert key.startswith("cm_") and " " not in key
    response = httpx.get(f"{gateway.base_url}/models", headers={"authorization": f"Bearer {key}"})
    assert response.status_code == 200


def test_keys_list_never_shows_a_key(gateway):
    key = gateway.create_key()
    listing = gateway.cli("keys", "list")
    assert listing.returncode == 0
    assert key not in listing.stdout
    assert key[:7] in listing.stdout


def test_config_check_reports_each_provider(gateway):
    result = gateway.cli("config", "check")
    assert result.returncode == 0
    assert "provider cloudflare (cloudflare): configured" in result.stdout
    assert "GHOST_API_KEY" in result.stdout


def test_config_check_fails_on_a_bad_config(gateway, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nroutes = ["nowhere:m"]\n')
    result = gateway.cli("--config", str(bad), "config", "check")
    assert result.returncode == 2
    assert "unknown provider 'nowhere'" in result.stderr


def test_serve_prints_a_first_key_only_once(upstream, tmp_path):
    first = start_gateway(upstream, tmp_path)
    stop_gateway(first)
    assert first.log.read_text().count("cm_") == 1
    again = start_gateway(upstream, tmp_path)  # same database
    stop_gateway(again)
    assert "cm_" not in again.log.read_text()


def test_doctor_checks_store_upstreams_and_a_running_gateway(gateway):
    result = gateway.cli("doctor", "--url", gateway.url, "--key", gateway.key)
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok    database:") for line in lines)
    cloudflare = next(line for line in lines if "provider cloudflare:" in line)
    assert cloudflare.startswith("ok") and "connect" in cloudflare and "first byte" in cloudflare
    assert any(
        "provider ghost: not configured (" in line and "GHOST_API_KEY" in line for line in lines
    )
    assert any(line.startswith("ok    gateway stream: sim/instant first byte") for line in lines)
    assert result.returncode == 0, result.stdout


def test_doctor_fails_when_an_upstream_is_down(gateway, tmp_path):
    config = tmp_path / "down.toml"
    config.write_text('[providers.down]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n')
    result = gateway.cli("--config", str(config), "doctor")
    assert result.returncode == 1
    assert "FAIL  provider down: http://127.0.0.1:9/v1 unreachable" in result.stdout


def test_bench_times_the_gateway_against_the_upstream_directly(gateway):
    result = gateway.cli(
        "bench",
        "--url",
        gateway.url,
        "--key",
        gateway.key,
        "--model",
        "local-model",
        "-n",
        "20",
        "-c",
        "2",
        "--direct-url",
        f"{gateway.upstream.url}/local/v1",
        "--direct-model",
        "hello",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "callmissed: local-model" in result.stdout
    assert "direct: hello" in result.stdout
    assert result.stdout.count("20 ok, 0 failed") == 2
    assert "added by callmissed (first token, p50):" in result.stdout


def test_bench_reports_failures(gateway):
    result = gateway.cli(
        "bench", "--url", gateway.url, "--key", gateway.key, "--model", "no-such-model", "-n", "3"
    )
    assert result.returncode == 1
    assert "0 ok, 3 failed {'HTTP 404': 3}" in result.stdout


def test_serve_refuses_a_port_another_server_listens_on(gateway):
    # granian binds with SO_REUSEPORT, which would let a second gateway share the port unseen.
    port = gateway.url.rsplit(":", 1)[1]
    second = subprocess.Popen(
        [sys.executable, "-m", "callmissed", "serve", "--port", port],
        env=gateway.env,
        cwd=gateway.workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its workers too can be stopped, should it start after all
    )
    try:
        _, stderr = second.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(second.pid, signal.SIGKILL)
        second.communicate()
        raise AssertionError("a second `callmissed serve` started on a port in use") from None
    assert second.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in stderr
