"""The processes under test, each started on 127.0.0.1 and stopped by its own pid.

* `Upstream`    the fake OpenAI-compatible upstream over plain HTTP/1.1 (benchmarks/upstream.py);
* `TLSUpstream` the same answers over HTTPS, HTTP/2 or HTTP/1.1 by ALPN
                (benchmarks/upstream_tls.py): the path every built-in vendor is reached by;
* `Direct`      no process: the load generator calls the upstream itself (the floor);
* `Passthrough` a bare granian proxy with the gateway's own upstream clients
                (benchmarks/passthrough.py): the stack's floor;
* `CallMissed`  `callmissed serve` with auth on (a real key with a balance) and a TOML config
                routing `bench-*` models to the upstreams, on SQLite or PostgreSQL + Redis;
* `CallMissedOtel` the same with OpenTelemetry traces on, exported to `OtlpSink`
                (benchmarks/otlp_sink.py), for the `otel` scenario;
* `LiteLLM`     LiteLLM's proxy from its own venv (benchmarks/litellm_env.py), master key on.

Each system is reached over one upstream *path* (PATHS) at a time; CallMissed serves them all
from one process, through a provider per path. A server given `cpus` (the suite's --pin) runs
on those CPUs only, every process and thread of it.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.machine import ProcessTree, on_cpus
from benchmarks.tls import Certificates, make_certificates
from callmissed.settings import available_cores

__all__ = [
    "PATHS",
    "CallMissed",
    "CallMissedOtel",
    "Direct",
    "LiteLLM",
    "OtlpSink",
    "Passthrough",
    "Running",
    "System",
    "TLSUpstream",
    "Upstream",
    "Upstreams",
    "drop_schema",
    "free_port",
    "scale_out_env",
]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# Upstream model ids; the fake upstream picks its timing from the prefix.
MODELS = {"fast": "fast", "paced": "paced", "late": "late", "flaky": "flaky"}
# How a system reaches the upstream: plain HTTP/1.1 (a local vLLM or Ollama), HTTP/2 over TLS
# by ALPN (every built-in vendor), HTTP/1.1 over TLS (an https provider with http2 = false).
PATHS = ("http", "h2-tls", "h1-tls")
_STRIPPED_ENV = ("CLOUDFLARE_", "OPENROUTER_", "SARVAM_", "OPENAI_", "CALLMISSED_", "LITELLM_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without upstream credentials or gateway settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV)}
    env.update(extra)
    return env


def wait_healthy(
    port: int,
    path: str,
    process: subprocess.Popen[bytes],
    limit: float,
    tls: ssl.SSLContext | None = None,
) -> float:
    """Poll GET path until it answers 200; return that moment's perf_counter().

    Raise if the process exits first or `limit` seconds pass."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before it was healthy")
        conn = (
            http.client.HTTPSConnection(HOST, port, timeout=1, context=tls)
            if tls is not None
            else http.client.HTTPConnection(HOST, port, timeout=1)
        )
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return time.perf_counter()
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.005)
    raise RuntimeError(f"not healthy on {path} within {limit:.0f} s")


@dataclass
class Running:
    """A started system: where to send requests, how to authenticate, what to measure."""

    name: str
    base_url: str
    key: str
    models: dict[str, str]  # scenario model kind -> the model name to send
    startup_s: float | None
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    notes: list[str] = field(default_factory=list)
    path: str = "http"  # how it reaches the upstream (PATHS)
    client_args: list[str] = field(default_factory=list)  # load generator flags this path needs
    owns_process: bool = True  # False for a second path served by the same process

    @property
    def tree(self) -> ProcessTree | None:
        return ProcessTree(self.process.pid) if self.process else None

    def stop(self) -> None:
        if not self.owns_process or self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _spawn(
    command: list[str], env: dict[str, str], log: Path, cpus: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start `command` logging to `log`, on `cpus` if given (a server under test with --pin)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            on_cpus(command, cpus), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent
        )


class Upstream:
    def __init__(
        self,
        workdir: Path,
        pace_ms: float,
        late_pct: float,
        late_ms: float,
        fail_pct: float = 30.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}/v1"
        command = [sys.executable, "-m", "benchmarks.upstream", "--port", str(self.port)]
        command += ["--pace-ms", str(pace_ms), "--late-pct", str(late_pct)]
        command += ["--late-ms", str(late_ms), "--fail-pct", str(fail_pct)]
        self.process = _spawn(command, clean_env(PYTHONPATH=str(ROOT)), workdir / "upstream.log")
        wait_healthy(self.port, "/v1/models", self.process, 10)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class TLSUpstream:
    """The fake upstream over HTTPS (HTTP/2 or HTTP/1.1 by ALPN), with its own throwaway CA."""

    def __init__(
        self, workdir: Path, pace_ms: float, late_pct: float, late_ms: float, fail_pct: float
    ) -> None:
        self.certificates: Certificates = make_certificates(workdir / "tls")
        self.port = free_port()
        self.url = f"https://{HOST}:{self.port}/v1"
        command = [sys.executable, "-m", "benchmarks.upstream_tls", "--port", str(self.port)]
        command += ["--cert", str(self.certificates.cert), "--key", str(self.certificates.key)]
        command += ["--pace-ms", str(pace_ms), "--late-pct", str(late_pct)]
        command += ["--late-ms", str(late_ms), "--fail-pct", str(fail_pct)]
        env = clean_env(PYTHONPATH=str(ROOT))
        self.process = _spawn(command, env, workdir / "upstream-tls.log")
        context = ssl.create_default_context(cafile=self.certificates.ca)
        wait_healthy(self.port, "/v1/models", self.process, 30, context)

    @property
    def ca(self) -> str:
        return str(self.certificates.ca)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@dataclass
class Upstreams:
    """The plain upstream, and the HTTPS one when a TLS path is measured."""

    plain: Upstream
    tls: TLSUpstream | None = None

    def url(self, path: str) -> str:
        if path == "http":
            return self.plain.url
        assert self.tls is not None, f"path {path} needs the TLS upstream"
        return self.tls.url

    def stop(self) -> None:
        self.plain.stop()
        if self.tls is not None:
            self.tls.stop()


class System:
    name = "system"

    def start(self, upstreams: Upstreams, workdir: Path, path: str = "http") -> Running:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop what start() launched that no Running owns (by default there is nothing)."""


class Direct(System):
    name = "direct"

    def start(self, upstreams: Upstreams, workdir: Path, path: str = "http") -> Running:
        args: list[str] = []
        if path != "http":
            assert upstreams.tls is not None
            args = ["--cafile", upstreams.tls.ca] + (["--http2"] if path == "h2-tls" else [])
        url = upstreams.url(path)
        return Running(
            self.name, url, "none", dict(MODELS), startup_s=None, path=path, client_args=args
        )


class Passthrough(System):
    name = "passthrough"

    def __init__(
        self, workers: int = available_cores(), server: str = "granian", cpus: tuple[int, ...] = ()
    ) -> None:
        self.workers = workers
        self.server = server
        self.cpus = cpus

    def start(self, upstreams: Upstreams, workdir: Path, path: str = "http") -> Running:
        port = free_port()
        command = [sys.executable, "-m", "benchmarks.passthrough", "--port", str(port)]
        command += ["--upstream", upstreams.url(path), "--workers", str(self.workers)]
        command += ["--server", self.server]
        if upstreams.tls is not None and path != "http":
            command += ["--ca-file", upstreams.tls.ca]
        if path == "h2-tls":
            command.append("--upstream-http2")
        log = workdir / f"passthrough-{path}.log"
        started = time.perf_counter()
        process = _spawn(command, clean_env(PYTHONPATH=str(ROOT)), log, self.cpus)
        healthy = wait_healthy(port, "/healthz", process, 30)
        base_url = f"http://{HOST}:{port}/v1"
        return Running(
            self.name,
            base_url,
            "none",
            dict(MODELS),
            healthy - started,
            process,
            log,
            path=path,
        )


def hedging_available() -> bool:
    """Whether this checkout's callmissed has per-model `hedge_after_ms` (issue 5)."""
    from callmissed import settings

    fields = getattr(settings.ModelSettings, "__dataclass_fields__", {})
    return "hedge_after_ms" in fields


class CallMissed(System):
    name = "callmissed"

    def __init__(
        self,
        workers: int = available_cores(),
        hedge_after_ms: float = 50.0,
        server: str = "granian",
        extra_env: dict[str, str] | None = None,
        store: str = "sqlite",
        cpus: tuple[int, ...] = (),
    ) -> None:
        self.env: dict[str, str] = {}
        self.cpus = cpus
        self.workers = workers
        self.server = server
        self.extra_env = extra_env or {}
        self.hedge_after_ms = hedge_after_ms
        self.store = store
        self._running: Running | None = None
        self._schema: str | None = None

    def config(self, upstreams: Upstreams) -> str:
        prices = "prices = { input = 0.15, cached_input = 0.075, output = 0.6 }"
        lines = [f'[providers.bench]\ntype = "openai"\nbase_url = "{upstreams.plain.url}"\n']
        for kind, model in MODELS.items():
            lines.append(f'[models."bench-{kind}"]\nroutes = ["bench:{model}"]\n{prices}\n')
        if upstreams.tls is not None:
            lines += _tls_config(upstreams.tls, prices)
        if hedging_available():
            lines.append(
                '[models."bench-hedged"]\nroutes = ["bench:late-a", "bench:late-b"]\n'
                f"hedge_after_ms = {self.hedge_after_ms:g}\n{prices}\n"
            )
        # The failover scenario: a first route failing --fail-pct of requests, a healthy second.
        lines.append(
            '[models."bench-failover"]\nroutes = ["bench:flaky", "bench:fast-fallback"]\n'
            f"{prices}\n"
        )
        return "\n".join(lines)

    def start(self, upstreams: Upstreams, workdir: Path, path: str = "http") -> Running:
        """The gateway reached over `path`: launched on the first call, shared after it."""
        if self._running is None:
            self._running = self._start(upstreams, workdir)
        if path == "http":
            return self._running
        models = {kind: f"bench-{path}-{kind}" for kind in MODELS}
        return dataclasses.replace(
            self._running, models=models, path=path, owns_process=False, startup_s=None
        )

    def _start(self, upstreams: Upstreams, workdir: Path) -> Running:
        home = workdir / self.name
        home.mkdir(parents=True, exist_ok=True)
        (home / "bench.toml").write_text(self.config(upstreams))
        env = clean_env(CALLMISSED_CONFIG=str(home / "bench.toml"), **self._store_env(home))
        env.update(self.extra_env)
        key = self._create_key(env)
        self.env = env
        running = self.launch(env, home / "serve.log")
        running.key = key
        if self.store == "postgres":
            running.notes.append("PostgreSQL + Redis on 127.0.0.1 (a fresh schema and prefix)")
        return running

    def _store_env(self, home: Path) -> dict[str, str]:
        if self.store == "sqlite":
            return {"CALLMISSED_DATABASE_URL": f"sqlite:///{home / 'bench.sqlite3'}"}
        self._schema = f"bench_{secrets.token_hex(6)}"
        return scale_out_env(self._schema)

    def stop(self) -> None:
        """Stop the gateway this system launched, then drop the schema a postgres run made
        (its Redis keys expire by themselves)."""
        if self._running is not None:
            self._running.stop()
            self._running = None
        if self._schema is not None:
            drop_schema(self._schema)
            self._schema = None

    def launch(self, env: dict[str, str], log: Path) -> Running:
        port = free_port()
        started = time.perf_counter()
        command = self._command(port)
        process = _spawn(command, env, log, self.cpus)
        healthy = wait_healthy(port, "/healthz", process, 30)
        models = {kind: f"bench-{kind}" for kind in MODELS}
        if hedging_available():
            models["hedged"] = "bench-hedged"
        models["failover"] = "bench-failover"
        return Running(
            self.name, f"http://{HOST}:{port}/v1", "", models, healthy - started, process, log
        )

    def _command(self, port: int) -> list[str]:
        if self.server == "uvicorn":  # for comparison only: uvicorn has no HTTP/2
            command = [str(ROOT / ".venv" / "bin" / "python"), "-m", "uvicorn"]
            command += ["callmissed.app:create_app", "--factory", "--host", HOST]
            command += ["--loop", "uvloop", "--http", "httptools", "--no-access-log"]
            command += ["--log-level", "warning"]
        else:
            command = [str(ROOT / ".venv" / "bin" / "callmissed"), "serve"]
        return [*command, "--port", str(port), "--workers", str(self.workers)]

    @staticmethod
    def _create_key(env: dict[str, str]) -> str:
        command = [str(ROOT / ".venv" / "bin" / "callmissed"), "keys", "create", "--name", "bench"]
        command += ["--credits", "1000000"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"callmissed keys create failed: {result.stderr.strip()[-2000:]}")
        return result.stdout.strip().splitlines()[-1]


POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def scale_out_env(schema: str) -> dict[str, str]:
    """A gateway's environment for PostgreSQL + Redis on 127.0.0.1: in `schema`, made here, and
    under a Redis prefix of that name (its keys expire by themselves). drop_schema() after."""
    _postgres(f"CREATE SCHEMA {schema}")
    return {
        "CALLMISSED_DATABASE_URL": f"{POSTGRES_URL}?search_path={schema}",
        "CALLMISSED_REDIS_URL": REDIS_URL,
        "CALLMISSED_REDIS_PREFIX": schema,
    }


def drop_schema(schema: str) -> None:
    _postgres(f"DROP SCHEMA {schema} CASCADE")


def _postgres(sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(POSTGRES_URL)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def _tls_config(tls: TLSUpstream, prices: str) -> list[str]:
    """A provider and `bench-<path>-<kind>` models for each TLS path to the HTTPS upstream."""
    lines = []
    for path, http2 in (("h2-tls", "true"), ("h1-tls", "false")):
        provider = f"bench_{path.replace('-', '_')}"
        lines.append(
            f'[providers.{provider}]\ntype = "openai"\nbase_url = "{tls.url}"\n'
            f'ca_file = "{tls.ca}"\nhttp2 = {http2}\n'
        )
        for kind, model in MODELS.items():
            lines.append(
                f'[models."bench-{path}-{kind}"]\nroutes = ["{provider}:{model}"]\n{prices}\n'
            )
    return lines


class OtlpSink:
    """An OTLP/HTTP receiver that answers every export and keeps nothing."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        command = [sys.executable, "-m", "benchmarks.otlp_sink", "--port", str(self.port)]
        self.process = _spawn(command, clean_env(PYTHONPATH=str(ROOT)), workdir / "otlp.log")
        deadline = time.perf_counter() + 10
        while True:  # listening once a connection is accepted
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                break
            except OSError:
                if time.perf_counter() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the OTLP sink did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class CallMissedOtel(CallMissed):
    """`callmissed serve` exactly as CallMissed, with traces on (the `otel` extra)."""

    name = "callmissed-otel"
    _sink: OtlpSink | None = None

    @classmethod
    def like(cls, other: CallMissed) -> CallMissedOtel:
        return cls(
            other.workers,
            other.hedge_after_ms,
            other.server,
            dict(other.extra_env),
            other.store,
            other.cpus,
        )

    def _start(self, upstreams: Upstreams, workdir: Path) -> Running:
        self._sink = OtlpSink(workdir)
        self.extra_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self._sink.url
        running = super()._start(upstreams, workdir)
        running.notes.append("OpenTelemetry on: every request's spans exported over OTLP/HTTP")
        return running

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self._sink is not None:
                self._sink.stop()
                self._sink = None


class LiteLLM(System):
    name = "litellm"

    def __init__(self, cpus: tuple[int, ...] = ()) -> None:
        self.cpus = cpus

    def config(self, upstream_url: str, master_key: str) -> str:
        lines = ["model_list:"]
        for kind, model in MODELS.items():
            lines += [
                f"  - model_name: bench-{kind}",
                "    litellm_params:",
                f"      model: openai/{model}",
                f"      api_base: {upstream_url}",
                "      api_key: bench",
            ]
        lines += ["general_settings:", f"  master_key: {master_key}"]
        return "\n".join(lines) + "\n"

    def start(self, upstreams: Upstreams, workdir: Path, path: str = "http") -> Running:
        from benchmarks.litellm_env import ensure_litellm, litellm_python

        version = ensure_litellm()
        home = workdir / "litellm"
        home.mkdir(parents=True, exist_ok=True)
        master_key = "sk-bench-" + secrets.token_hex(16)
        (home / "config.yaml").write_text(self.config(upstreams.url(path), master_key))
        port = free_port()
        command = [str(litellm_python().parent / "litellm"), "--config", str(home / "config.yaml")]
        command += ["--host", HOST, "--port", str(port), "--num_workers", "1"]
        env = clean_env(
            LITELLM_LOCAL_MODEL_COST_MAP="True",  # no download of the cost map at start-up
            LITELLM_TELEMETRY="False",
            HF_HUB_OFFLINE="1",
        )
        started = time.perf_counter()
        process = _spawn(command, env, home / "litellm.log", self.cpus)
        healthy = wait_healthy(port, "/health/liveliness", process, 120)
        running = Running(
            self.name,
            f"http://{HOST}:{port}/v1",
            master_key,
            {kind: f"bench-{kind}" for kind in MODELS},
            healthy - started,
            process,
            home / "litellm.log",
        )
        running.notes.append(f"LiteLLM {version}, 1 worker, default settings, no database")
        return running
