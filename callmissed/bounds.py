"""The range of every numeric setting, and the optional packages a store needs: checked once, by
settings.validate(), so `callmissed config check` refuses what `serve` could not run with.

A value out of range would otherwise fail later and worse: a negative body limit refuses every
request, a timeout of 1e300 overflows the HTTP/2 client at start-up, a price of 1e30 overflows the
ledger's 64-bit columns when a request settles. docs/config.md lists each setting and its default.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import fields
from typing import Any

from callmissed.settings import (
    EdgeLimits,
    Limits,
    ModelSettings,
    Resilience,
    ResponsesStorage,
    Settings,
    SettingsError,
    Timeouts,
)

__all__ = ["check_bounds", "check_extras"]

_KIB, _MIB, _GIB = 1024, 1024**2, 1024**3
_DAY = 86_400.0

# name as the operator sets it -> (lowest, highest)
_SETTINGS: dict[str, tuple[float, float]] = {
    "CALLMISSED_PORT": (1, 65_535),
    "CALLMISSED_WORKERS": (1, 1024),
    "CALLMISSED_MAX_BODY_BYTES": (_KIB, 2 * _GIB),
    "CALLMISSED_RETENTION_DAYS": (0, 36_500),  # 0: ledger rows are kept forever
}
_Table = Mapping[str, tuple[str, tuple[float, float]]]
_TIMEOUTS: _Table = {
    "connect": ("CALLMISSED_CONNECT_TIMEOUT", (0.001, _DAY)),
    "first_token": ("CALLMISSED_FIRST_TOKEN_TIMEOUT", (0.001, 7 * _DAY)),
    "idle": ("CALLMISSED_STREAM_IDLE_TIMEOUT", (0.001, 7 * _DAY)),
    "total": ("CALLMISSED_TOTAL_TIMEOUT", (0.001, 7 * _DAY)),
}
_RESILIENCE: _Table = {
    "max_attempts": ("CALLMISSED_MAX_ATTEMPTS", (1, 100)),
    "retry_backoff": ("CALLMISSED_RETRY_BACKOFF", (0, 60)),
    "max_retry_wait": ("CALLMISSED_MAX_RETRY_WAIT", (0.001, 3600)),
    "breaker_failures": ("CALLMISSED_BREAKER_FAILURES", (1, 1_000_000)),
    "breaker_open": ("CALLMISSED_BREAKER_OPEN", (0.001, _DAY)),
    "explore_every": ("CALLMISSED_EXPLORE_EVERY", (1, 1_000_000)),
    "keepalive_after": ("CALLMISSED_KEEPALIVE_AFTER", (0.001, _DAY)),
    "keepalive_interval": ("CALLMISSED_KEEPALIVE_INTERVAL", (0.001, _DAY)),
    "shutdown_grace": ("CALLMISSED_SHUTDOWN_GRACE", (0, _DAY)),
    "warm_connections": ("CALLMISSED_WARM_CONNECTIONS", (0, 64)),
    "warm_interval": ("CALLMISSED_WARM_INTERVAL", (0, _DAY)),
}
_LIMITS: _Table = {
    "upstream_error_body_bytes": ("CALLMISSED_UPSTREAM_ERROR_BODY_BYTES", (_KIB, 64 * _MIB)),
    "upstream_body_bytes": ("CALLMISSED_UPSTREAM_BODY_BYTES", (64 * _KIB, 2 * _GIB)),
    "sse_event_bytes": ("CALLMISSED_SSE_EVENT_BYTES", (64 * _KIB, 2 * _GIB)),
    "metrics_max_models": ("CALLMISSED_METRICS_MAX_MODELS", (0, 100_000)),
}
_EDGE: _Table = {
    "max_connections": ("CALLMISSED_MAX_CONNECTIONS", (1, 1_000_000)),
    "header_timeout": ("CALLMISSED_HEADER_TIMEOUT", (0.001, _DAY)),
    "body_timeout": ("CALLMISSED_BODY_TIMEOUT", (0.001, _DAY)),
    "idle_timeout": ("CALLMISSED_IDLE_TIMEOUT", (0.001, _DAY)),
    # hyper refuses a read buffer under 8 KiB; a request line and a few headers need ~1 KiB.
    "max_header_bytes": ("CALLMISSED_MAX_HEADER_BYTES", (8 * _KIB, 16 * _MIB)),
    "h2_max_streams": ("CALLMISSED_H2_MAX_STREAMS", (1, 100_000)),
    "max_open_body_bytes": ("CALLMISSED_MAX_OPEN_BODY_BYTES", (1, 2 * _GIB)),
    "write_buffer_bytes": ("CALLMISSED_WRITE_BUFFER_BYTES", (_KIB, _GIB)),
    "write_timeout": ("CALLMISSED_WRITE_TIMEOUT", (0.001, _DAY)),
}
_RESPONSES: _Table = {
    "retention_days": ("CALLMISSED_RESPONSES_RETENTION_DAYS", (0.001, 36_500)),
    "max_bytes": ("CALLMISSED_RESPONSES_MAX_BYTES", (1, 2 * _GIB)),
    "key_bytes": ("CALLMISSED_RESPONSES_KEY_BYTES", (1, 2**50)),
}
_MODEL_COUNTS: dict[str, tuple[float, float]] = {
    "context": (1, 100_000_000),
    "max_output": (1, 100_000_000),
}
_SIMULATE_MS: dict[str, tuple[float, float]] = {"ttfb_ms": (0, 600_000), "total_ms": (0, 600_000)}
_SIMULATE_COUNTS: dict[str, tuple[float, float]] = {
    "tokens": (0, 1_000_000),
    "thinking_tokens": (0, 1_000_000),
}

# The optional packages a store or the shared limiter needs, and the extra that installs each.
_EXTRAS = {"postgres": ("asyncpg", "PostgreSQL"), "redis": ("redis", "Redis")}


def check_bounds(settings: Settings) -> None:
    """Raise SettingsError naming the first setting whose value is out of its range."""
    top = {
        "CALLMISSED_PORT": settings.port,
        "CALLMISSED_WORKERS": settings.workers,
        "CALLMISSED_MAX_BODY_BYTES": settings.max_body_bytes,
        "CALLMISSED_RETENTION_DAYS": settings.accounting.retention_days,
    }
    for name, value in top.items():
        _check(name, value, _SETTINGS[name])
    for name, value, bounds in _grouped(settings.timeouts, _TIMEOUTS):
        _check(name, value, bounds)
    for name, value, bounds in _grouped(settings.resilience, _RESILIENCE):
        _check(name, value, bounds)
    for name, value, bounds in _grouped(settings.limits, _LIMITS):
        _check(name, value, bounds, whole=True)
    for name, value, bounds in _grouped(settings.edge, _EDGE):
        _check(name, value, bounds)
    for name, value, bounds in _grouped(settings.responses, _RESPONSES):
        _check(name, value, bounds)
    for model in settings.models.values():
        _check_model(model)


def check_extras(settings: Settings) -> None:
    """Raise SettingsError if the database or Redis URL needs a package not installed."""
    needed = []
    if settings.database_url.startswith(("postgresql://", "postgres://")):
        needed.append(("postgres", "CALLMISSED_DATABASE_URL"))
    if settings.accounting.redis_url:
        needed.append(("redis", "CALLMISSED_REDIS_URL"))
    for extra, variable in needed:
        module, label = _EXTRAS[extra]
        try:
            importlib.import_module(module)
        except ImportError:
            raise SettingsError(
                f"{variable} names {label}, which needs the optional package {module!r}: "
                f"pip install 'callmissed[{extra}]'"
            ) from None


def _grouped(
    values: Timeouts | Resilience | Limits | EdgeLimits | ResponsesStorage, table: _Table
) -> Iterator[tuple[str, Any, tuple[float, float]]]:
    for item in fields(values):
        variable, bounds = table[item.name]
        yield variable, getattr(values, item.name), bounds


def _check_model(model: ModelSettings) -> None:
    where = f"model {model.name!r}"
    for name, bounds in _MODEL_COUNTS.items():
        value = getattr(model, name)
        if value is not None:
            _check(f"{where}: {name}", value, bounds, whole=True)
    if model.timeouts is not None:
        for item in fields(model.timeouts):
            _, bounds = _TIMEOUTS[item.name]
            _check(f"{where}: timeouts.{item.name}", getattr(model.timeouts, item.name), bounds)
    if model.hedge_after_ms is not None:
        _check(f"{where}: hedge_after_ms", model.hedge_after_ms, (0.001, 7 * _DAY * 1000))
    if model.simulate is not None:
        for name, bounds in _SIMULATE_MS.items():
            _check(f"{where}: simulate.{name}", getattr(model.simulate, name), bounds)
        for name, bounds in _SIMULATE_COUNTS.items():
            _check(f"{where}: simulate.{name}", getattr(model.simulate, name), bounds, whole=True)


def _check(name: str, value: Any, bounds: tuple[float, float], whole: bool = False) -> None:
    low, high = bounds
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (whole and not isinstance(value, int)) or not low <= value <= high:
        shown = _show(value) if number else repr(value)
        kind = "a whole number" if whole else "a number"
        raise SettingsError(
            f"{name} must be {kind} from {_show(low)} to {_show(high)}, got {shown}"
        )


def _show(value: float) -> str:
    whole = math.isfinite(value) and value == int(value) and abs(value) < 1e15
    return str(int(value)) if whole else f"{value:g}"
