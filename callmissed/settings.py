"""Settings: read once at start-up from CALLMISSED_* / provider env vars and one optional TOML file.

Each built-in provider declares its own variables and default URL (providers/environment.py).

Everything is parsed into frozen dataclasses and validated here; nothing reads os.environ later.
The built-in catalog (catalog.toml beside this file) is merged under the config file's entries.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from callmissed.accounting.pricing_settings import Prices, Pricing, parse_prices, parse_pricing
from callmissed.observability_settings import Observability, parse_observability

__all__ = [
    "Accounting",
    "EdgeLimits",
    "EmbeddingSettings",
    "Limits",
    "ModelSettings",
    "Observability",
    "Prices",
    "Pricing",
    "ProviderSettings",
    "Resilience",
    "ResponsesStorage",
    "Route",
    "Settings",
    "SettingsError",
    "SimProfile",
    "Timeouts",
    "available_cores",
    "load_settings",
]

CATALOG_PATH = Path(__file__).with_name("catalog.toml")
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
EFFORT_VALUES = ("none", "minimal", "low", "medium", "high")
STRATEGIES = ("ordered", "fastest")


class SettingsError(ValueError):
    """The environment or the config file is inconsistent; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    name: str
    type: str
    base_url: str
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    missing: str | None = None  # why the provider can't be used, naming the variable to set
    http2: bool | None = None  # None: HTTP/2 via ALPN for https upstreams, HTTP/1.1 for http
    ca_file: str | None = None  # extra CA certificates (PEM) to trust, for private upstreams

    @property
    def uses_http2(self) -> bool:
        return self.base_url.startswith("https://") if self.http2 is None else self.http2


class Route(NamedTuple):
    """A provider and the model name it knows (a tuple: health.py looks its state up by route
    several times a request, and a tuple hashes in C where a dataclass runs Python)."""

    provider: str
    upstream_model: str

    @classmethod
    def parse(cls, text: str) -> Route:
        provider, sep, upstream_model = text.partition(":")
        if not sep or not provider or not upstream_model:
            raise SettingsError(f"route {text!r} must look like 'provider:upstream-model'")
        return cls(provider, upstream_model)


@dataclass(frozen=True, slots=True)
class Accounting:
    """Credits, limits and admin settings (docs/credits.md)."""

    admin_token: str | None = None  # CALLMISSED_ADMIN_TOKEN; None: /admin is closed
    metrics_token: str | None = None  # CALLMISSED_METRICS_TOKEN; None: /metrics is open
    redis_url: str | None = None  # CALLMISSED_REDIS_URL: share rate limits across processes
    redis_prefix: str = "callmissed"  # CALLMISSED_REDIS_PREFIX: one per database sharing Redis
    ledger_dir: str | None = None  # CALLMISSED_LEDGER_DIR; default: beside the SQLite file
    prices: Mapping[str, Prices] = field(default_factory=dict)  # the config file's [prices]
    pricing: Pricing = field(default_factory=Pricing)  # the markup, how often lists are read
    retention_days: float = 90.0  # CALLMISSED_RETENTION_DAYS: ledger rows kept (0: forever)


@dataclass(frozen=True, slots=True)
class SimProfile:
    ttfb_ms: float
    total_ms: float
    tokens: int
    thinking_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; docs/resilience.md. Defaults suit reasoning models: a long think is no failure."""

    connect: float = 10.0  # TCP + TLS to the upstream
    first_token: float = 120.0  # request sent -> first token, per attempt
    idle: float = 120.0  # silence between upstream reads once streaming
    total: float = 1800.0  # the whole request, every attempt included


@dataclass(frozen=True, slots=True)
class Resilience:
    """Fallback, health, keep-alive and shutdown knobs (docs/resilience.md)."""

    max_attempts: int = 3  # upstream attempts per request, across all routes
    retry_backoff: float = 0.1  # base of the jittered backoff before retrying the same route
    max_retry_wait: float = 1.0  # the longest backoff or Retry-After the gateway waits itself
    breaker_failures: int = 5  # consecutive failures that open a route's breaker
    breaker_open: float = 30.0  # seconds an open breaker waits before a half-open probe
    explore_every: int = 20  # every Nth request of a "fastest" model tries the stalest route
    keepalive_after: float = 5.0  # waiting this long for a first token commits the 200 ...
    keepalive_interval: float = 15.0  # ... and sends an SSE comment this often
    shutdown_grace: float = 20.0  # SIGTERM: in-flight requests may finish for this long
    warm_connections: int = 1  # pre-established connections per upstream
    warm_interval: float = 30.0  # re-warm an idle upstream this often (0: only at start-up)


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one client connection may hold of a worker (docs/security.md): the `[server]` table
    of the config file, each overridden by its CALLMISSED_* variable. Seconds and bytes."""

    max_connections: int = 1000  # open connections per worker; more wait in the listen backlog
    header_timeout: float = 10.0  # a connection's first bytes to a whole request head
    body_timeout: float = 30.0  # a request's head to the end of its body (408 past it)
    idle_timeout: float = 30.0  # a connection with nothing in flight and no bytes either way
    max_header_bytes: int = 65536  # a request head, HTTP/1.1 (431) and HTTP/2's header list
    h2_max_streams: int = 100  # concurrent streams on one HTTP/2 connection
    max_open_body_bytes: int = 65536  # bodies of requests no key or token checked yet
    write_buffer_bytes: int = 262144  # answer bytes a stream may have waiting for a slow client
    write_timeout: float = 30.0  # a client taking none of its answer this long is gone


@dataclass(frozen=True, slots=True)
class ResponsesStorage:
    """What POST /v1/responses keeps for previous_response_id, and how long (docs/responses.md)."""

    retention_days: float = 30.0  # a stored response is purged this long after it was made
    max_bytes: int = 8 * 1024 * 1024  # one response with its input items; larger: not stored
    key_bytes: int = 256 * 1024 * 1024  # all of one key's; past it, its oldest go first


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    """What an embedding model makes (docs/embeddings.md)."""

    dimensions: int | None = None  # its vectors' length; None: whatever the upstream returns
    shorten: bool = False  # trained for it (Matryoshka): `dimensions` may ask for fewer
    batch: int | None = None  # inputs per upstream request; None: the provider's own limit


@dataclass(frozen=True, slots=True)
class Limits:
    """What an upstream may make the gateway hold, and how many series /metrics may grow to
    (docs/security.md): the `[limits]` table, each overridden by its CALLMISSED_* variable."""

    upstream_error_body_bytes: int = 64 * 1024  # read of an upstream's error answer; rest unread
    upstream_body_bytes: int = 32 * 1024 * 1024  # an answer read whole, or any one inflated
    sse_event_bytes: int = 16 * 1024 * 1024  # one upstream server-sent event
    metrics_max_models: int = 100  # models outside the catalog/config with their own series


@dataclass(frozen=True, slots=True)
class ModelSettings:
    name: str
    routes: tuple[Route, ...]
    reasoning: str  # a policy name in Settings.reasoning_policies, or "passthrough"
    description: str = ""
    context: int | None = None
    max_output: int | None = None
    prices: Prices | None = None
    simulate: SimProfile | None = None
    strategy: str = "ordered"  # or "fastest": the healthy route with the best first-token time
    hedge_after_ms: float | None = None  # start the next route too if no first token by then
    timeouts: Timeouts | None = None  # None: the global ones
    embedding: EmbeddingSettings | None = None  # an embedding model (None: a chat model)


@dataclass(frozen=True)
class Settings:
    providers: Mapping[str, ProviderSettings]
    models: Mapping[str, ModelSettings]
    reasoning_policies: Mapping[str, Mapping[str, str]]
    database_url: str = "sqlite:///callmissed.sqlite3"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = field(default_factory=lambda: available_cores())
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeouts: Timeouts = Timeouts()
    resilience: Resilience = Resilience()
    config_path: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    accounting: Accounting = Accounting()
    edge: EdgeLimits = EdgeLimits()
    responses: ResponsesStorage = ResponsesStorage()
    observability: Observability = field(default_factory=Observability)
    limits: Limits = Limits()

    @property
    def connect_timeout(self) -> float:
        return self.timeouts.connect

    @property
    def read_timeout(self) -> float:
        """A transport's own read timeout: a backstop that never fires before the gateway's."""
        every = [self.timeouts, *(m.timeouts for m in self.models.values() if m.timeouts)]
        return max(t.total for t in every) + 1.0


def load_settings(env: Mapping[str, str] | None = None, config_path: str | None = None) -> Settings:
    """Build validated Settings from the environment and the optional TOML config file."""
    from callmissed.providers import builtin_providers  # late: providers import settings

    env = os.environ if env is None else env
    config_path = config_path or env.get("CALLMISSED_CONFIG") or None
    catalog = _read_toml(CATALOG_PATH)
    config = _read_toml(Path(config_path)) if config_path else {}
    policies = {**catalog.get("reasoning", {}), **config.get("reasoning", {})}
    providers = builtin_providers(env)
    for name, table in config.get("providers", {}).items():
        providers[name] = _parse_provider(name, table, env)
    timeouts = _from_env(Timeouts(), env, _TIMEOUT_ENV)
    models = {
        name: _parse_model(name, table, timeouts)
        for name, table in {**catalog["models"], **config.get("models", {})}.items()
    }
    settings = Settings(
        providers=providers,
        models=models,
        reasoning_policies=policies,
        database_url=env.get("CALLMISSED_DATABASE_URL", "sqlite:///callmissed.sqlite3"),
        host=env.get("CALLMISSED_HOST", "127.0.0.1"),
        port=_int(env, "CALLMISSED_PORT", 8080),
        workers=_int(env, "CALLMISSED_WORKERS", available_cores()),
        max_body_bytes=_int(env, "CALLMISSED_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        timeouts=timeouts,
        resilience=_from_env(Resilience(), env, _RESILIENCE_ENV),
        config_path=config_path,
        tls_cert=env.get("CALLMISSED_TLS_CERT") or None,
        tls_key=env.get("CALLMISSED_TLS_KEY") or None,
        accounting=_parse_accounting(env, config),
        edge=_parse_limits("server", EdgeLimits(), _EDGE_ENV, env, config),
        responses=_from_env(ResponsesStorage(), env, _RESPONSES_ENV),
        observability=parse_observability(env),
        limits=_parse_limits("limits", Limits(), _LIMITS_ENV, env, config),
    )
    validate(settings)
    return settings


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a container's cpuset):
    the default number of workers, since each worker's event loop uses at most one."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def validate(settings: Settings) -> None:
    """SettingsError for an unknown provider or policy, a number out of range, a missing package."""
    from callmissed.bounds import check_bounds, check_extras  # late: they read Settings
    from callmissed.providers import REGISTRY  # late: providers import settings

    if settings.workers < 1:
        raise SettingsError(f"CALLMISSED_WORKERS must be at least 1, got {settings.workers}")
    check_bounds(settings)
    check_extras(settings)

    for provider in settings.providers.values():
        if provider.type not in REGISTRY:
            known = ", ".join(sorted(REGISTRY))
            raise SettingsError(
                f"provider {provider.name!r} has unknown type {provider.type!r} (known: {known})"
            )
    for model in settings.models.values():
        if not model.routes:
            raise SettingsError(f"model {model.name!r} has no routes")
        for route in model.routes:
            if route.provider not in settings.providers:
                raise SettingsError(
                    f"model {model.name!r} routes to unknown provider {route.provider!r}"
                )
        if model.reasoning != "passthrough" and model.reasoning not in settings.reasoning_policies:
            raise SettingsError(
                f"model {model.name!r} has unknown reasoning policy {model.reasoning!r}"
            )
        _validate_resilience(model)
    for name, policy in settings.reasoning_policies.items():
        missing = [value for value in EFFORT_VALUES if value not in policy]
        if missing:
            raise SettingsError(f"reasoning policy {name!r} does not say what to do with {missing}")


def _missing_text(label: str, variables: list[str]) -> str | None:
    if not variables:
        return None
    return f"{label} is not configured: set {' and '.join(variables)}"


def _parse_provider(
    name: str, table: Mapping[str, Any], env: Mapping[str, str]
) -> ProviderSettings:
    if "base_url" not in table:
        raise SettingsError(f"provider {name!r} needs a base_url")
    key_env = table.get("api_key_env")
    api_key = env.get(key_env) if key_env else None
    missing = None
    if key_env and not api_key:
        missing = _missing_text(f"provider {name!r}", [key_env])
    return ProviderSettings(
        name=name,
        type=table.get("type", "openai"),
        base_url=str(table["base_url"]).rstrip("/"),
        api_key=api_key or None,
        headers=dict(table.get("headers", {})),
        missing=missing,
        http2=table.get("http2"),
        ca_file=table.get("ca_file"),
    )


def _parse_model(name: str, table: Mapping[str, Any], defaults: Timeouts) -> ModelSettings:
    prices = table.get("prices")
    simulate = table.get("simulate")
    timeouts = table.get("timeouts")
    if timeouts is not None and not isinstance(timeouts, dict):
        raise SettingsError(f"model {name!r}: timeouts must be a table of seconds")
    return ModelSettings(
        name=name,
        routes=tuple(Route.parse(text) for text in table.get("routes", [])),
        reasoning=table.get("reasoning", "passthrough"),
        description=table.get("description", ""),
        context=table.get("context"),
        max_output=table.get("max_output"),
        prices=parse_prices(f"model {name!r}", prices) if prices else None,
        simulate=_parse_simulate(name, simulate) if simulate else None,
        strategy=table.get("strategy", "ordered"),
        hedge_after_ms=_positive(name, "hedge_after_ms", table.get("hedge_after_ms")),
        timeouts=_with_timeouts(name, defaults, timeouts) if timeouts else None,
        embedding=_parse_embedding(name, table.get("embedding")),
    )


def _parse_embedding(model: str, value: Any) -> EmbeddingSettings | None:
    """`embedding = true`, or a table of dimensions, shorten and batch; absent: a chat model."""
    if value is None or value is False:
        return None
    if value is True:
        return EmbeddingSettings()
    if not isinstance(value, dict):
        raise SettingsError(f"model {model!r}: embedding must be true or a table")
    unknown = value.keys() - {"dimensions", "shorten", "batch"}
    if unknown:
        raise SettingsError(f"model {model!r}: unknown embedding setting {sorted(unknown)[0]!r}")
    for key in ("dimensions", "batch"):
        item = value.get(key)
        if item is not None and (not isinstance(item, int) or isinstance(item, bool) or item < 1):
            raise SettingsError(f"model {model!r}: embedding.{key} must be a positive integer")
    if not isinstance(value.get("shorten", False), bool):
        raise SettingsError(f"model {model!r}: embedding.shorten must be true or false")
    if value.get("shorten") and value.get("dimensions") is None:
        raise SettingsError(f"model {model!r}: embedding.shorten needs embedding.dimensions")
    return EmbeddingSettings(
        value.get("dimensions"), value.get("shorten", False), value.get("batch")
    )


def _parse_simulate(model: str, table: Any) -> SimProfile:
    known = {item.name for item in fields(SimProfile)}
    if not isinstance(table, dict) or not {"ttfb_ms", "total_ms", "tokens"} <= table.keys():
        raise SettingsError(f"model {model!r}: simulate needs ttfb_ms, total_ms and tokens")
    if unknown := table.keys() - known:
        raise SettingsError(f"model {model!r}: unknown simulate field {sorted(unknown)[0]!r}")
    return SimProfile(**table)


# Global timeouts and resilience knobs, each from one environment variable.
_TIMEOUT_ENV = {
    "connect": "CALLMISSED_CONNECT_TIMEOUT",
    "first_token": "CALLMISSED_FIRST_TOKEN_TIMEOUT",
    "idle": "CALLMISSED_STREAM_IDLE_TIMEOUT",
    "total": "CALLMISSED_TOTAL_TIMEOUT",
}
_RESILIENCE_ENV = {
    "max_attempts": "CALLMISSED_MAX_ATTEMPTS",
    "retry_backoff": "CALLMISSED_RETRY_BACKOFF",
    "max_retry_wait": "CALLMISSED_MAX_RETRY_WAIT",
    "breaker_failures": "CALLMISSED_BREAKER_FAILURES",
    "breaker_open": "CALLMISSED_BREAKER_OPEN",
    "explore_every": "CALLMISSED_EXPLORE_EVERY",
    "keepalive_after": "CALLMISSED_KEEPALIVE_AFTER",
    "keepalive_interval": "CALLMISSED_KEEPALIVE_INTERVAL",
    "shutdown_grace": "CALLMISSED_SHUTDOWN_GRACE",
    "warm_connections": "CALLMISSED_WARM_CONNECTIONS",
    "warm_interval": "CALLMISSED_WARM_INTERVAL",
}
_RESPONSES_ENV = {
    "retention_days": "CALLMISSED_RESPONSES_RETENTION_DAYS",
    "max_bytes": "CALLMISSED_RESPONSES_MAX_BYTES",
    "key_bytes": "CALLMISSED_RESPONSES_KEY_BYTES",
}
_MAY_BE_ZERO = frozenset(
    {"warm_connections", "warm_interval", "shutdown_grace", "retry_backoff", "metrics_max_models"}
)


def _from_env(defaults: Any, env: Mapping[str, str], names: Mapping[str, str]) -> Any:
    """`defaults` with each field its environment variable sets; all must be positive numbers."""
    values: dict[str, Any] = {}
    for item in fields(defaults):
        name = names[item.name]
        default = getattr(defaults, item.name)
        value = _int(env, name, default) if isinstance(default, int) else _float(env, name, default)
        if value < 0 or (value == 0 and item.name not in _MAY_BE_ZERO):
            raise SettingsError(f"{name} must be positive")
        values[item.name] = value
    return replace(defaults, **values)


def _with_timeouts(model: str, defaults: Timeouts, table: Mapping[str, Any]) -> Timeouts:
    known = {item.name for item in fields(Timeouts)}
    for key, value in table.items():
        if key not in known:
            raise SettingsError(f"model {model!r}: unknown timeout {key!r} (known: {known})")
        _positive(model, f"timeouts.{key}", value)
    return replace(defaults, **table)


def _positive(model: str, name: str, value: Any) -> Any:
    if value is not None and (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 < value < math.inf  # also refuses TOML's nan
    ):
        raise SettingsError(f"model {model!r}: {name} must be a positive number")
    return value


def _validate_resilience(model: ModelSettings) -> None:
    if model.strategy not in STRATEGIES:
        raise SettingsError(
            f"model {model.name!r} has unknown strategy {model.strategy!r} (known: {STRATEGIES})"
        )
    if model.hedge_after_ms is not None and len(model.routes) < 2:
        raise SettingsError(f"model {model.name!r}: hedge_after_ms needs at least two routes")


_EDGE_ENV = {
    "max_connections": "CALLMISSED_MAX_CONNECTIONS",
    "header_timeout": "CALLMISSED_HEADER_TIMEOUT",
    "body_timeout": "CALLMISSED_BODY_TIMEOUT",
    "idle_timeout": "CALLMISSED_IDLE_TIMEOUT",
    "max_header_bytes": "CALLMISSED_MAX_HEADER_BYTES",
    "h2_max_streams": "CALLMISSED_H2_MAX_STREAMS",
    "max_open_body_bytes": "CALLMISSED_MAX_OPEN_BODY_BYTES",
    "write_buffer_bytes": "CALLMISSED_WRITE_BUFFER_BYTES",
    "write_timeout": "CALLMISSED_WRITE_TIMEOUT",
}


def _parse_limits(
    section: str, defaults: Any, names: Mapping[str, str], env: Mapping[str, str], config: Any
) -> Any:
    """`defaults` with the config file's `[section]` table, then CALLMISSED_* over it; every
    limit must be a number > 0 (bounds.py checks each one's range)."""
    table = config.get(section, {})
    if not isinstance(table, dict):
        raise SettingsError(f"[{section}] must be a table of limits")
    unknown = table.keys() - names.keys()
    if unknown:
        raise SettingsError(
            f"[{section}]: unknown limit {sorted(unknown)[0]!r} (known: {list(names)})"
        )
    values: dict[str, Any] = {}
    for name, value in table.items():
        whole = isinstance(getattr(defaults, name), int)
        if not isinstance(value, int if whole else (int, float)) or isinstance(value, bool):
            raise SettingsError(f"[{section}] {name} must be a {'whole ' if whole else ''}number")
        values[name] = value if whole else float(value)
    return _from_env(replace(defaults, **values), env, names)


def _parse_accounting(env: Mapping[str, str], config: Mapping[str, Any]) -> Accounting:
    prices = config.get("prices", {})
    if not isinstance(prices, dict):
        raise SettingsError("[prices] must be a table of model names")
    return Accounting(
        admin_token=env.get("CALLMISSED_ADMIN_TOKEN") or None,
        metrics_token=env.get("CALLMISSED_METRICS_TOKEN") or None,
        redis_url=env.get("CALLMISSED_REDIS_URL") or None,
        redis_prefix=env.get("CALLMISSED_REDIS_PREFIX") or "callmissed",
        ledger_dir=env.get("CALLMISSED_LEDGER_DIR") or None,
        prices={name: parse_prices(f"[prices.{name!r}]", table) for name, table in prices.items()},
        pricing=parse_pricing(env, config),
        retention_days=_float(env, "CALLMISSED_RETENTION_DAYS", 90.0),
    )


_LIMITS_ENV = {item.name: f"CALLMISSED_{item.name.upper()}" for item in fields(Limits)}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise SettingsError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        raise SettingsError(f"{name} must be a whole number") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name, default))
    except ValueError:
        raise SettingsError(f"{name} must be a number") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number")
    return value
