"""The access log's and the traces' settings: CALLMISSED_ACCESS_LOG and OpenTelemetry's OTEL_*.

Part of settings.py, kept in a module of its own (settings.py grew past 600 lines): read once,
at start-up, by load_settings(); nothing reads the environment later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = ["Observability", "parse_observability"]


@dataclass(frozen=True, slots=True)
class Observability:
    """The access log and OpenTelemetry traces (docs/observability.md)."""

    access_log: str = "stderr"  # CALLMISSED_ACCESS_LOG: "stderr", "off", or a file to append to
    otlp_endpoint: str | None = None  # where spans go (OTLP/HTTP); None: no traces
    otlp_headers: Mapping[str, str] = field(default_factory=dict)
    service_name: str = "callmissed"
    export_delay: float = 1.0  # seconds a batch of spans waits to fill (OTEL_BSP_SCHEDULE_DELAY)


def parse_observability(env: Mapping[str, str]) -> Observability:
    """CALLMISSED_ACCESS_LOG, and OpenTelemetry's own OTEL_* variables for traces."""
    from callmissed.settings import SettingsError  # late: settings imports this module

    access_log = env.get("CALLMISSED_ACCESS_LOG", "stderr").strip() or "stderr"
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip() or None
    if endpoint is None and (base := env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()):
        endpoint = base.rstrip("/") + "/v1/traces"  # the OTLP/HTTP signal path
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        endpoint = None
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise SettingsError(f"the OTLP endpoint must be an http(s) URL, got {endpoint!r}")
    headers = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS")
    return Observability(
        access_log=access_log,
        otlp_endpoint=endpoint,
        otlp_headers=_otlp_headers(headers or ""),
        service_name=env.get("OTEL_SERVICE_NAME", "").strip() or "callmissed",
        export_delay=_milliseconds(env, "OTEL_BSP_SCHEDULE_DELAY", 1000.0) / 1000,
    )


def _otlp_headers(text: str) -> dict[str, str]:
    """`key1=value1,key2=value2` (values URL-encoded), as the OTLP exporter spec writes them."""
    from callmissed.settings import SettingsError

    pairs = [pair.partition("=") for pair in text.split(",") if pair.strip()]
    if any(not sep or not name.strip() for name, sep, _ in pairs):
        raise SettingsError("OTEL_EXPORTER_OTLP_HEADERS must look like 'name=value,name=value'")
    return {name.strip().lower(): unquote(value.strip()) for name, _, value in pairs}


def _milliseconds(env: Mapping[str, str], name: str, default: float) -> float:
    from callmissed.settings import SettingsError

    try:
        value = float(env.get(name, default))
    except ValueError:
        raise SettingsError(f"{name} must be a number of milliseconds") from None
    if value < 0:
        raise SettingsError(f"{name} must not be negative")
    return value
