"""The `callmissed` command: keys, config check, and serve's first key."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
import time

import httpx

from callmissed.cli import FIRST_KEY_FILE
from tests.conftest import free_port, gateway_env, start_gateway, stop_gateway


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


def test_serve_keeps_the_first_key_out_of_its_log_and_in_a_private_file(upstream, tmp_path):
    """Not on a terminal (a container's or a service manager's log keeps stdout), the first
    key goes to a file only this user can read, and the log says where."""
    first = start_gateway(upstream, tmp_path)
    stop_gateway(first)
    log = first.log.read_text()
    assert "cm_" not in log
    path = tmp_path / FIRST_KEY_FILE  # beside the database
    assert f"It is in {path}," in log
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.key
    again = start_gateway(upstream, tmp_path)  # same database: no new key
    stop_gateway(again)
    assert "first API key" not in again.log.read_text()


def test_serve_shows_the_first_key_on_a_terminal(upstream, tmp_path):
    env = gateway_env(upstream.url, tmp_path, CALLMISSED_WORKERS="1")
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "callmissed", "serve", "--port", str(free_port())]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=terminal, stderr=terminal)
    os.close(terminal)
    output = b""
    try:
        deadline = time.monotonic() + 20
        while b"CallMissed" not in output:  # the banner follows the key
            assert time.monotonic() < deadline, output.decode(errors="replace")
            if select.select([controller], [], [], 0.5)[0]:
                output += os.read(controller, 4096)
    finally:
        process.terminate()
        process.wait(10)
        os.close(controller)
    assert re.search(rb"Created your first API key .*\r?\n  cm_[\w-]{43}\r?\n", output)
    assert not (tmp_path / FIRST_KEY_FILE).exists()


def test_a_first_key_that_cannot_be_saved_is_revoked_and_serve_stops(upstream, tmp_path):
    (tmp_path / FIRST_KEY_FILE).mkdir()  # the file cannot be written
    env = gateway_env(upstream.url, tmp_path)
    command = [sys.executable, "-m", "callmissed", "serve", "--port", str(free_port())]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b"could not write the first key" in result.stderr
    assert b"cm_" not in result.stdout + result.stderr
    listing = subprocess.run(
        [sys.executable, "-m", "callmissed", "keys", "list"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert listing.stdout.rstrip().endswith("revoked")


def test_doctor_checks_store_upstreams_and_a_running_gateway(gateway):
    result = gateway.cli("doctor", "--url", gateway.url, "--key", gateway.key)
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok    database:") for line in lines)
    cloudflare = next(line for line in lines if "provider cloudflare:" in line)
    assert cloudflare.startswith("ok") and "connect" in cloudflare and "first byte" in cloudflare
    anthropic = next(line for line in lines if "provider anthropic:" in line)  # x-api-key, /v1
    assert anthropic.startswith("ok") and "model list HTTP 200" in anthropic
    assert any(
        "provider ghost: not configured (" in line and "GHOST_API_KEY" in line for line in lines
    )
    assert any(line.startswith("ok    gateway: ") for line in lines)
    assert any("streaming: gpt-oss-120b: first token after" in line for line in lines)
    assert result.returncode == 0, result.stdout


def test_doctor_fails_when_an_upstream_is_down(gateway, tmp_path):
    config = tmp_path / "down.toml"
    config.write_text('[providers.down]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n')
    result = gateway.cli("--config", str(config), "doctor")
    assert result.returncode == 1
    assert "FAIL  provider down: http://127.0.0.1:9/v1 unreachable" in result.stdout


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
