"""`callmissed doctor`: is everything configured, reachable, and how fast is each hop?

For every configured upstream it times TCP connect, the TLS handshake (and which protocol ALPN
picked) and the first byte of a cheap authenticated GET, without spending tokens. With --url it
also checks a running gateway: /healthz and a streamed simulator request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from callmissed.settings import ProviderSettings, Settings
from callmissed.store import open_store

__all__ = ["Check", "run_doctor"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


async def run_doctor(settings: Settings, url: str | None, key: str | None) -> list[Check]:
    checks = [await _check_store(settings)]
    probes = [
        _check_provider(provider, settings.connect_timeout)
        for provider in settings.providers.values()
        if provider.type != "sim"
    ]
    checks += await asyncio.gather(*probes)
    if url:
        checks += await _check_gateway(url.rstrip("/"), key)
    return checks


async def _check_store(settings: Settings) -> Check:
    try:
        store = open_store(settings.database_url)
        await store.start()
        keys = [record for record in await store.list_keys() if record.active]
        await store.close()
    except Exception as exc:
        return Check("database", False, f"{settings.database_url}: {exc}")
    return Check("database", True, f"{settings.database_url}: {len(keys)} active keys")


async def _check_provider(provider: ProviderSettings, limit: float) -> Check:
    name = f"provider {provider.name}"
    if provider.missing:
        return Check(name, True, f"not configured ({provider.missing})")
    try:
        timings = await asyncio.wait_for(_time_handshakes(provider.base_url), limit)
        status, first_byte = await asyncio.wait_for(_time_get(provider), limit)
    except (OSError, TimeoutError, aiohttp.ClientError) as exc:
        return Check(name, False, f"{provider.base_url} unreachable: {type(exc).__name__} {exc}")
    verdict = {401: "credentials REJECTED", 403: "credentials refused (403)"}.get(status)
    detail = f"{timings}, GET /models HTTP {status} first byte {first_byte:.1f} ms"
    return Check(name, verdict is None, f"{verdict + '; ' if verdict else ''}{detail}")


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
    headers = {"authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.get(f"{provider.base_url}/models", headers=headers) as response:
            await response.content.read(1)
            return response.status, (time.perf_counter() - started) * 1000


async def _check_gateway(url: str, key: str | None) -> list[Check]:
    async with aiohttp.ClientSession() as session:
        try:
            started = time.perf_counter()
            async with session.get(f"{url}/healthz") as response:
                healthy = response.status == 200
            health = Check(
                "gateway",
                healthy,
                f"{url}/healthz HTTP {response.status} "
                f"in {(time.perf_counter() - started) * 1000:.1f} ms",
            )
        except aiohttp.ClientError as exc:
            return [Check("gateway", False, f"{url} unreachable: {exc}")]
        if not key:
            return [health, Check("gateway stream", True, "skipped (no --key)")]
        return [health, await _time_stream(session, url, key)]


async def _time_stream(session: aiohttp.ClientSession, url: str, key: str) -> Check:
    body = {
        "model": "sim/instant",
        "stream": True,
        "messages": [{"role": "user", "content": "ping"}],
    }
    started = time.perf_counter()
    async with session.post(
        f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as response:
        if response.status != 200:
            return Check(
                "gateway stream", False, f"HTTP {response.status}: {await response.text()}"
            )
        first = None
        async for _ in response.content.iter_any():
            first = first or time.perf_counter()
        done = time.perf_counter()
    assert first is not None
    return Check(
        "gateway stream",
        True,
        f"sim/instant first byte {(first - started) * 1000:.2f} ms, "
        f"whole answer {(done - started) * 1000:.2f} ms",
    )
