"""The only module that talks to upstreams: one pooled client per provider.

Two transports, chosen per provider (docs/performance.md has the measurements):
- aiohttp for HTTP/1.1 upstreams (plain-http vLLM, Ollama, llama.cpp): ~5x less CPU per
  streamed request than httpx, which collapses under concurrency here;
- pyreqwest (Rust hyper) for HTTP/2 upstreams: https providers negotiate h2 via ALPN, so one
  multiplexed connection carries many requests. Its streamed read buffer is set to 0 so
  chunks are handed on as they arrive rather than collected into 64 KiB.
`sim` providers are answered in-process by callmissed/simulator.py.
Pools are kept warm (`warm_connections`, `warm_interval`): a HEAD at start-up and whenever an
upstream sat idle opens its connections ahead of time, so no user request pays the TLS handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from pyreqwest.client import Client as H2Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError
from pyreqwest.request import StreamRequest

from callmissed.errors import UpstreamError, UpstreamTimeout
from callmissed.providers import Provider, UpstreamRequest
from callmissed.settings import ProviderSettings, Settings, SimProfile
from callmissed.simulator import simulate

__all__ = ["Upstream", "UpstreamResponse"]


class UpstreamResponse(Protocol):
    status: int
    retry_after: float | None
    http_version: str

    async def read(self) -> bytes: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


log = logging.getLogger("callmissed")


class _Transport(Protocol):
    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse: ...

    async def warm(self, url: str, count: int) -> None: ...

    async def close(self) -> None: ...


class Upstream:
    """Sends built requests. Owns the clients; `start()` and `close()` bracket its life."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._transports: dict[str, _Transport] = {}
        self._last_used: dict[str, float] = {}
        self._warmer: asyncio.Task[None] | None = None
        self._profiles: dict[str, SimProfile] = {
            route.upstream_model: model.simulate
            for model in settings.models.values()
            if model.simulate
            for route in model.routes
        }

    async def start(self) -> None:
        for provider in self._settings.providers.values():
            if provider.type == "sim" or provider.missing:
                continue
            transport = _Http2Transport if provider.uses_http2 else _AiohttpTransport
            self._transports[provider.name] = transport(provider, self._settings)
        if self._settings.resilience.warm_connections and self._transports:
            self._warmer = asyncio.ensure_future(self._keep_warm())

    async def _keep_warm(self) -> None:
        """Warm every pool now, then each one that has sat idle for `warm_interval` seconds."""
        policy = self._settings.resilience
        while True:
            now = time.monotonic()
            idle = [
                name
                for name in self._transports
                if now - self._last_used.get(name, -math.inf) >= policy.warm_interval
            ]
            await asyncio.gather(*(self._warm(name, policy.warm_connections) for name in idle))
            if not policy.warm_interval:
                return
            await asyncio.sleep(policy.warm_interval)

    async def _warm(self, name: str, count: int) -> None:
        # Any cheap request opens the connection (and TLS, and h2); its answer does not matter.
        url = f"{self._settings.providers[name].base_url}/models"
        try:
            async with asyncio.timeout(self._settings.timeouts.connect + 5.0):
                await self._transports[name].warm(url, count)
        except Exception as exc:  # a cold pool is no error: the next request connects itself
            log.debug("could not warm %s: %s", name, type(exc).__name__)
        self._last_used[name] = time.monotonic()

    async def close(self) -> None:
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmer
        for transport in self._transports.values():
            await transport.close()
        self._transports.clear()

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        """POST the request; return once the upstream's status and headers are in."""
        if provider.type == "sim":
            profile = self._profiles.get(request.model)
            if profile is None:
                raise UpstreamError("the simulator has no such model", provider=provider.name)
            return simulate(profile, request.body)
        self._last_used[provider.name] = time.monotonic()
        return await self._transports[provider.name].send(provider, request)


def _unreachable(provider: Provider, exc: BaseException) -> UpstreamError:
    label = f"{provider.label} ({provider.name})"
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{label} did not answer in time", provider=provider.name)
    return UpstreamError(f"could not reach {label}: {type(exc).__name__}", provider=provider.name)


def _broken(provider: Provider, exc: BaseException) -> UpstreamError:
    label = f"{provider.label} ({provider.name})"
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{label} stopped sending", provider=provider.name)
    return UpstreamError(
        f"{label} broke the connection mid-response ({type(exc).__name__})",
        provider=provider.name,
    )


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class _AiohttpTransport:
    def __init__(self, provider: ProviderSettings, settings: Settings) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.read_timeout
        )
        ssl_context: ssl.SSLContext | bool = True
        if provider.ca_file:
            ssl_context = ssl.create_default_context(cafile=provider.ca_file)
        connector = aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=300, keepalive_timeout=60, ssl=ssl_context
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
        )

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        try:
            response = await self._session.post(
                request.url, data=request.body, headers=request.headers
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _unreachable(provider, exc) from None
        return _AiohttpResponse(response, provider)

    async def warm(self, url: str, count: int) -> None:
        async def one() -> None:
            async with self._session.head(url, allow_redirects=False) as response:
                await response.read()

        await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)

    async def close(self) -> None:
        await self._session.close()


class _AiohttpResponse:
    __slots__ = ("_provider", "_response", "http_version", "retry_after", "status")

    def __init__(self, response: aiohttp.ClientResponse, provider: Provider) -> None:
        self._response = response
        self._provider = provider
        self.status = response.status
        self.retry_after = _retry_after(response.headers.get("retry-after"))
        version = response.version
        self.http_version = f"HTTP/{version.major}.{version.minor}" if version else "HTTP/1.1"

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _broken(self._provider, exc) from None
        finally:
            self._response.release()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _broken(self._provider, exc) from None

    def close(self) -> None:
        self._response.close()


class _Http2Transport:
    def __init__(self, provider: ProviderSettings, settings: Settings) -> None:
        builder = (
            ClientBuilder()
            .connect_timeout(timedelta(seconds=settings.connect_timeout))
            .read_timeout(timedelta(seconds=settings.read_timeout))
            .pool_idle_timeout(timedelta(seconds=90))
            .tcp_nodelay(True)
        )
        if provider.base_url.startswith("http://"):
            builder = builder.http2_prior_knowledge()  # h2c: only when asked with http2 = true
        else:
            builder = builder.http2(True).http2_adaptive_window(True)
        if provider.ca_file:
            builder = builder.add_root_certificate_pem(Path(provider.ca_file).read_bytes())
        self._client: H2Client = builder.build()

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        streamed = (
            self._client.post(request.url)
            .headers(request.headers)
            .body_bytes(request.body)
            .streamed_read_buffer_limit(0)
            .build_streamed()
        )
        try:
            response = await streamed.__aenter__()
        except (TimeoutError, PyreqwestError) as exc:
            raise _unreachable(provider, exc) from None
        return _Http2Response(streamed, response, provider)

    async def warm(self, url: str, count: int) -> None:
        # One h2 connection carries every request, so one HEAD warms the pool.
        response = await self._client.head(url).build().send()
        await response.bytes()

    async def close(self) -> None:
        await self._client.close()


class _Http2Response:
    __slots__ = (
        "_closing",
        "_provider",
        "_request",
        "_response",
        "http_version",
        "retry_after",
        "status",
    )

    def __init__(self, request: StreamRequest, response: Any, provider: Provider) -> None:
        self._request = request
        self._response = response
        self._provider = provider
        self._closing: asyncio.Future[Any] | None = None
        self.status = int(response.status)
        self.retry_after = _retry_after(response.get_header("retry-after"))
        self.http_version = str(response.version)

    async def read(self) -> bytes:
        try:
            return bytes(await self._response.body_reader.bytes())
        except (TimeoutError, PyreqwestError) as exc:
            raise _broken(self._provider, exc) from None
        finally:
            self.close()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        reader = self._response.body_reader
        try:
            while (chunk := await reader.read_chunk()) is not None:
                yield bytes(chunk)
        except (TimeoutError, PyreqwestError) as exc:
            raise _broken(self._provider, exc) from None

    def close(self) -> None:
        # Leaving the request context drops the stream (RST_STREAM on h2); it is async, and
        # close() is called from synchronous clean-up, so it runs as a task.
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._request.__aexit__(None, None, None))
            self._closing.add_done_callback(_ignore_outcome)


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it: the stream is gone anyway
