"""Shared fixtures: a fake upstream (real HTTP server) and the real gateway as a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from callmissed.cli import FIRST_KEY_FILE
from tests.fakes.anthropic_upstream import API_KEY as ANTHROPIC_KEY
from tests.fakes.upstream import FakeUpstream, start_fake_upstream

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SERVICES = os.environ.get("CALLMISSED_REQUIRE_SERVICES") == "1"

# Every process this run starts inherits this mark, so the end of the run can find any gateway
# it left behind (tests/test_workers.py reads /proc the same way).
RUN_MARK = "PYTEST_CALLMISSED_RUN"
os.environ[RUN_MARK] = f"{os.getpid()}-{time.time_ns()}"

CONFIG = """
[providers.local]
type = "openai"
base_url = "{upstream}/local/v1"

[models."local-model"]
routes = ["local:hello"]
description = "A custom OpenAI-compatible upstream from the config file"

[models."local-tools"]
routes = ["local:tools"]

[models."local-thinker"]
routes = ["local:reasoning"]
reasoning = "toggle"

[models."cf-capacity"]
routes = ["cloudflare:@cf/error-429-3040"]

[models."cf-no-such-model"]
routes = ["cloudflare:@cf/error-400-5007"]

[models."cf-bad-input"]
routes = ["cloudflare:@cf/error-400-5006"]

[models."sim/instant-thinker"]
routes = ["sim:instant-thinker"]
reasoning = "toggle"
simulate = {{ ttfb_ms = 0, total_ms = 0, tokens = 9, thinking_tokens = 92 }}

[models."claude-thinker"]
routes = ["anthropic:claude-thinker"]

[models."claude-cached"]
routes = ["anthropic:claude-cached"]

[models."claude-broken"]
routes = ["anthropic:claude-broken"]

[models."claude-cut"]
routes = ["anthropic:claude-cut"]

[models."claude-overloaded"]
routes = ["anthropic:error-529"]

[models."claude-refused"]
routes = ["anthropic:error-400"]

[models."unconfigured-model"]
routes = ["ghost:whatever"]

[providers.ghost]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "GHOST_API_KEY"
"""


# The environment's own vendor settings never reach a test gateway: gateway_env sets its own.
VENDOR_PREFIXES = ("CALLMISSED_", "CLOUDFLARE_", "OPENROUTER_", "SARVAM_", "ANTHROPIC_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Gateway:
    """A running `callmissed serve` process."""

    url: str
    key: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    upstream: FakeUpstream
    workdir: Path
    log: Path
    extra_keys: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "callmissed", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def create_key(self, *args: str) -> str:
        result = self.cli("keys", "create", "--name", "test", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]


def gateway_env(upstream_url: str, workdir: Path, **extra: str) -> dict[str, str]:
    config = workdir / "callmissed.toml"
    config.write_text(CONFIG.format(upstream=upstream_url))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("CALLMISSED_", "CLOUDFLARE_", "OPENROUTER_", "SARVAM_", "ANTHROPIC_")
        )
    }
    env.update(
        CALLMISSED_DATABASE_URL=f"sqlite:///{workdir / 'gateway.sqlite3'}",
        CALLMISSED_CONFIG=str(config),
        CLOUDFLARE_BASE_URL=f"{upstream_url}/client/v4",
        CLOUDFLARE_ACCOUNT_ID="acct123",
        CLOUDFLARE_API_TOKEN="cf-secret-token",
        OPENROUTER_BASE_URL=f"{upstream_url}/openrouter/api/v1",
        OPENROUTER_API_KEY="sk-or-secret",
        SARVAM_BASE_URL=f"{upstream_url}/sarvam/v1",
        SARVAM_API_KEY="sarvam-secret",
        ANTHROPIC_BASE_URL=f"{upstream_url}/anthropic",
        ANTHROPIC_API_KEY=ANTHROPIC_KEY,
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def start_gateway(
    upstream: FakeUpstream, workdir: Path, *serve_args: str, **extra_env: str
) -> Gateway:
    """`callmissed serve` on a free port. One worker unless `--workers` or CALLMISSED_WORKERS
    says otherwise (the suite's many gateways stay cheap); CALLMISSED_WORKERS="" leaves the
    variable unset: one worker per core, the default."""
    workdir.mkdir(parents=True, exist_ok=True)
    extra_env = {"CALLMISSED_WORKERS": "1", **extra_env}
    env = gateway_env(upstream.url, workdir, **extra_env)
    if not env["CALLMISSED_WORKERS"]:
        del env["CALLMISSED_WORKERS"]
    port = free_port()
    log = workdir / "gateway.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "callmissed", "serve", "--port", str(port), *serve_args],
            env=env,
            cwd=workdir,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    scheme = "https" if "--tls-cert" in serve_args else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    wait_healthy(url, process, log)
    gateway = Gateway(url, _first_key(log, workdir) or "", env, process, upstream, workdir, log)
    if not gateway.key:  # a restart on an existing database prints no key
        gateway.key = gateway.create_key()
    return gateway


def wait_healthy(
    url: str, process: subprocess.Popen[bytes], log: Path | None, path: str = "/healthz"
) -> None:
    """Poll `url + path` until it answers 200; fail early if the process dies."""

    def output() -> str:
        return log.read_text() if log else "(no log)"

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{output()}")
        try:
            if httpx.get(f"{url}{path}", verify=False, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server did not become healthy:\n{output()}")


def _first_key(log: Path, workdir: Path) -> str | None:
    """The key `serve` created at this start, if it did: its output is no terminal, so the
    key is in a file beside the database (or, for PostgreSQL, in the working directory)."""
    if "Created your first API key" not in log.read_text():
        return None
    return (workdir / FIRST_KEY_FILE).read_text().strip()


def stop_gateway(gateway: Gateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(10)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait(5)


@pytest.fixture(scope="session", autouse=True)
def no_gateway_left_behind() -> Iterator[None]:
    """Fail the run if a `callmissed serve` it started (a server or one of its workers) still
    runs once every test is done; stop it either way, so the run leaves nothing behind."""
    yield
    deadline = time.monotonic() + 15  # an orphaned worker notices and drains within seconds
    while (left := gateways_left_behind()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if left:
        pytest.fail(f"the tests left `callmissed serve` processes running: {left}")


def gateways_left_behind() -> dict[int, str]:
    """Live `callmissed serve` processes this run started (by RUN_MARK), pid -> command line."""
    mark = f"{RUN_MARK}={os.environ[RUN_MARK]}".encode()
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if b"callmissed" not in b" ".join(command) or b"serve" not in command:
                continue
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited; its parent has yet to reap it
        except OSError:
            continue
        found[int(entry.name)] = b" ".join(command).decode(errors="replace")
    return found


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake, stop = start_fake_upstream()
    yield fake
    stop()


@pytest.fixture(scope="session")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    running = start_gateway(upstream, tmp_path_factory.mktemp("gateway"))
    yield running
    stop_gateway(running)


@pytest.fixture
def client(gateway: Gateway):
    import openai

    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.key, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def client_for():
    """Make an openai SDK client for any running Gateway; all are closed after the test."""
    import openai

    clients: list[openai.OpenAI] = []

    def make(running: Gateway) -> openai.OpenAI:
        sdk = openai.OpenAI(base_url=running.base_url, api_key=running.key, max_retries=0)
        clients.append(sdk)
        return sdk

    yield make
    for sdk in clients:
        sdk.close()


def require_service(name: str, reason: str) -> None:
    """Skip (or, with CALLMISSED_REQUIRE_SERVICES=1, fail) when a service is missing."""
    message = f"{name} is not available: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)
