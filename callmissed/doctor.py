"""`callmissed doctor`: is everything configured, reachable, and how fast is each hop?

For every configured upstream it times TCP connect, the TLS handshake (and which protocol ALPN
picked) and the first byte of a cheap authenticated GET, without spending tokens. With --url it
also checks a running gateway's /healthz, and with --key runs the Getting Started page's
checklist against it (checklist.py). Each check is ok, warn or FAIL; only a FAIL fails it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from callmissed.checklist import FAIL, OK, Check, Gateway, run_checklist
from callmissed.providers import REGISTRY
from callmissed.settings import ProviderSettings, Settings
from callmissed.store import open_store

__all__ = ["Check", "GatewayOptions", "run_doctor"]


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    """What `--url` and friends ask of a running gateway."""

    url: str
    key: str | None = None
    model: str = "gpt-oss-120b"
    kimi_model: str = "kimi-k2.6"
    ca_file: str | None = None


async def run_doctor(settings: Settings, gateway: GatewayOptions | None) -> list[Check]:
    checks = [await _check_store(settings)]
    probes = [
        _check_provider(provider, settings.connect_timeout)
        for provider in settings.providers.values()
        if REGISTRY[provider.type].transport != "simulator"
    ]
    checks += await asyncio.gather(*probes)
    if gateway is not None:
        checks += await _check_gateway(gateway)
    return checks


async def _check_store(settings: Settings) -> Check:
    try:
        store = open_store(settings.database_url)
        await store.start()
        keys = [record for record in await store.list_keys() if record.active]
        await store.close()
    except Exception as exc:
        return Check("database", FAIL, f"{settings.database_url}: {exc}")
    return Check("database", OK, f"{settings.database_url}: {len(keys)} active keys")


async def _check_provider(provider: ProviderSettings, limit: float) -> Check:
    name = f"provider {provider.name}"
    if provider.missing:
        return Check(name, OK, f"not configured ({provider.missing})")
    try:
        timings = await asyncio.wait_for(_time_handshakes(provider.base_url), limit)
        status, first_byte = await asyncio.wait_for(_time_get(provider), limit)
    except (OSError, TimeoutError, aiohttp.ClientError) as exc:
        return Check(name, FAIL, f"{provider.base_url} unreachable: {type(exc).__name__} {exc}")
    verdict = {401: "credentials REJECTED", 403: "credentials refused (403)"}.get(status)
    detail = f"{timings}, GET its model list HTTP {status} first byte {first_byte:.1f} ms"
    return Check(
        name, OK if verdict is None else FAIL, f"{verdict + '; ' if verdict else ''}{detail}"
    )


async def _time_handshakes(base_url: str) -> str:
    parts = urlsplit(base_url)
    secure = parts.scheme == "https"
    host, port = parts.hostname or "", parts.port or (443 if secure else 80)
    started = time.perf_counter()
    _, writer = await asyncio.open_connection(host, port)
    connect_ms = (time.perf_counter() - started) * 1000
    writer.close()
    if not secure:
        return f"connect {connect_ms:.1f} ms (plain http)"
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    started = time.perf_counter()
    _, writer = await asyncio.open_connection(host, port, ssl=context)
    tls_ms = (time.perf_counter() - started) * 1000 - connect_ms
    ssl_object = writer.get_extra_info("ssl_object")
    protocol = ssl_object.selected_alpn_protocol() if ssl_object else None
    writer.close()
    return f"connect {connect_ms:.1f} ms, TLS {max(tls_ms, 0):.1f} ms, ALPN {protocol or 'none'}"


async def _time_get(provider: ProviderSettings) -> tuple[int, float]:
    # The provider knows where its model list is and how it takes our key.
    request = REGISTRY[provider.type](provider).build_get("models")
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.get(request.url, headers=request.headers) as response:
            await response.content.read(1)
            return response.status, (time.perf_counter() - started) * 1000


async def _check_gateway(options: GatewayOptions) -> list[Check]:
    url = options.url.rstrip("/")
    context = ssl.create_default_context(cafile=options.ca_file) if options.ca_file else None
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context or True)
    ) as session:
        try:
            started = time.perf_counter()
            async with session.get(f"{url}/healthz") as response:
                healthy = response.status == 200
            took = (time.perf_counter() - started) * 1000
            health = Check(
                "gateway",
                OK if healthy else FAIL,
                f"{url}/healthz HTTP {response.status} in {took:.1f} ms",
            )
        except aiohttp.ClientError as exc:
            return [Check("gateway", FAIL, f"{url} unreachable: {exc}")]
    if not options.key:
        return [health, Check("checklist", OK, "skipped (no --key)")]
    gateway = Gateway(url, options.key, context)
    return [health, *await run_checklist(gateway, options.model, options.kimi_model)]
