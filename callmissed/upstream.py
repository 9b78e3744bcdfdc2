"""The only module that talks to upstreams: one pooled client per provider.

Two transports, chosen per provider (docs/performance.md has the measurements):
- callmissed/http1.py for HTTP/1.1 upstreams (plain-http vLLM, Ollama, llama.cpp): our own
  asyncio.Protocol + llhttp client, because aiohttp's client (itself ~5x cheaper than httpx)
  was still ~14% of the gateway's CPU per streamed request;
- pyreqwest (Rust hyper) for HTTP/2 upstreams: https providers negotiate h2 via ALPN, so one
  multiplexed connection carries many requests. Its streamed read buffer is set to 0 so
  chunks are handed on as they arrive rather than collected into 64 KiB.
`sim` providers are answered in-process by callmissed/simulator.py (chat and embeddings).
Pools are kept warm (`warm_connections`, `warm_interval`): at start-up and whenever an upstream
sat idle, its connections are opened ahead of time (HTTP/1.1: bare TCP and TLS handshakes; h2:
a HEAD), so no user request pays the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pyreqwest.client import Client as H2Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError
from pyreqwest.request import StreamRequest

from callmissed import failures, http1
from callmissed.errors import UpstreamError, UpstreamTimeout
from callmissed.providers import Provider, UpstreamRequest
from callmissed.settings import ProviderSettings, Settings, SimProfile
from callmissed.simulator import simulate, simulate_embeddings

__all__ = ["Upstream", "UpstreamResponse"]


class UpstreamResponse(Protocol):
    status: int
    retry_after: float | None
    http_version: str
    connect_s: float | None  # seconds spent connecting for it (0.0 reused); None: not known

    async def read(self, limit: int) -> tuple[bytes, bool]:
        """Up to `limit` bytes of the body, and whether it went on past them (what follows is
        left unread). Either way the response is done with: close() or release() it."""

    async def receive(self) -> bytes:
        """The body's next bytes (all that arrived since the last call); b"" once it ended."""

    def close(self) -> None:
        """Stop the response now: the upstream sees the request cancelled."""

    def release(self) -> None:
        """The answer is complete (a stream's [DONE] arrived): keep the connection if it can be."""


log = logging.getLogger("callmissed")


class _Transport(Protocol):
    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse: ...

    async def get(self, request: UpstreamRequest) -> tuple[int, _Body]: ...

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
            transport = _Http2Transport if provider.uses_http2 else _Http1Transport
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
        # HTTP/1.1 opens bare connections to its origin; h2 sends a HEAD, whose answer is moot.
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
            await asyncio.wait([self._warmer])  # not `await` it: that would hide our own cancel
        for transport in self._transports.values():
            await transport.close()
        self._transports.clear()

    async def fetch(self, provider: Provider, path: str, max_bytes: int, seconds: float) -> bytes:
        """GET `{base_url}/{path}` (a model list): the body of a 200, read within `seconds`
        and `max_bytes`; UpstreamError for anything else. Never on a request's path."""
        transport = self._transports.get(provider.name)
        if transport is None:
            raise UpstreamError(f"{provider.label} is not configured", provider=provider.name)
        label = f"{provider.label} ({provider.name})"
        try:
            async with asyncio.timeout(seconds):
                status, body = await transport.get(provider.build_get(path))
                try:
                    if status != 200:
                        raise UpstreamError(f"{label} answered {status} to GET /{path}")
                    data, more = await _read_capped(body.receive, max_bytes)
                    if more:
                        raise UpstreamError(f"{label}'s /{path} is larger than {max_bytes} bytes")
                    return data
                finally:
                    body.close()
        except TimeoutError:
            raise UpstreamTimeout(f"{label} did not send /{path} within {seconds:g} s") from None
        except (OSError, PyreqwestError) as exc:
            raise UpstreamError(f"could not GET {label}'s /{path}: {type(exc).__name__}") from None

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        """POST the request; return once the upstream's status and headers are in."""
        if provider.type == "sim":
            if request.url.endswith("/embeddings"):
                return simulate_embeddings(request.body)
            profile = self._profiles.get(request.model)
            if profile is None:
                raise UpstreamError("the simulator has no such model", provider=provider.name)
            return simulate(profile, request.body)
        self._last_used[provider.name] = time.monotonic()
        return await self._transports[provider.name].send(provider, request)


class _Body(Protocol):
    async def receive(self) -> bytes: ...

    def close(self) -> None: ...


def _unreachable(provider: Provider, exc: BaseException) -> UpstreamError:
    label = f"{provider.label} ({provider.name})"
    if isinstance(exc, TimeoutError):
        message = f"{label} did not answer in time"
        return failures.failure(failures.FIRST_TOKEN_TIMEOUT, message, provider=provider.name)
    message = f"could not reach {label}: {type(exc).__name__}"
    return failures.failure(failures.UNREACHABLE, message, provider=provider.name)


def _broken(provider: Provider, exc: BaseException) -> UpstreamError:
    label = f"{provider.label} ({provider.name})"
    kind, message = failures.BROKEN, f"{label} broke the connection mid-response"
    if isinstance(exc, TimeoutError):
        kind, message = failures.IDLE_TIMEOUT, f"{label} stopped sending"
    elif isinstance(exc, http1.BodyTooLarge):
        kind, message = failures.TOO_LARGE, f"{label} sent a compressed body that inflates past"
        message += f" {exc.limit} bytes"
    elif isinstance(exc, http1.ProtocolError):
        kind, message = failures.MALFORMED, f"{label} sent {exc}"
    else:
        message += f" ({type(exc).__name__})"
    return failures.failure(kind, message, provider=provider.name)


async def _read_capped(receive: Callable[[], Awaitable[bytes]], limit: int) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    room = limit
    while data := await receive():
        if len(data) > room:
            parts.append(data[:room])
            return b"".join(parts), True
        parts.append(data)
        room -= len(data)
    return b"".join(parts), False


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class _Http1Transport:
    """callmissed.http1: one pooled client per origin the provider's URLs name."""

    def __init__(self, provider: ProviderSettings, settings: Settings) -> None:
        self._ca_file = provider.ca_file
        self._settings = settings
        self._clients: dict[str, http1.Client] = {}  # by origin
        self._routes: dict[str, tuple[http1.Client, str]] = {}  # by URL: client, request target

    def _route(self, url: str) -> tuple[http1.Client, str]:
        route = self._routes.get(url)
        if route is None:
            parts = urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
            client = self._clients.get(origin)
            if client is None:
                client = self._clients[origin] = http1.Client(
                    origin,
                    connect_timeout=self._settings.connect_timeout,
                    read_timeout=self._settings.read_timeout,
                    ca_file=self._ca_file,
                    max_inflated=self._settings.limits.upstream_body_bytes,
                )
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if len(self._routes) > 1000:  # URLs that name the model each time
                self._routes.clear()
            route = self._routes[url] = (client, target)
        return route

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        client, target = self._route(request.url)
        try:
            response = await client.send("POST", target, request.headers, request.body)
        except OSError as exc:  # refused, reset, TLS, timeouts (TimeoutError is an OSError)
            raise _unreachable(provider, exc) from None
        return _Http1Response(response, provider)

    async def get(self, request: UpstreamRequest) -> tuple[int, _Body]:
        client, target = self._route(request.url)
        response = await client.send("GET", target, request.headers)
        return response.status, response

    async def warm(self, url: str, count: int) -> None:
        await self._route(url)[0].warm(count)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        self._routes.clear()


class _Http1Response:
    __slots__ = ("_provider", "_response", "connect_s", "http_version", "retry_after", "status")

    def __init__(self, response: http1.Response, provider: Provider) -> None:
        self._response = response
        self._provider = provider
        self.status = response.status
        self.retry_after = _retry_after(response.header("retry-after"))
        self.http_version = response.http_version
        self.connect_s: float | None = response.connect_s

    async def read(self, limit: int) -> tuple[bytes, bool]:
        return await _read_capped(self.receive, limit)

    async def receive(self) -> bytes:
        try:
            return await self._response.receive()
        except OSError as exc:
            raise _broken(self._provider, exc) from None

    def close(self) -> None:
        self._response.close()

    def release(self) -> None:
        self._response.release()


class _Http2Transport:
    def __init__(self, provider: ProviderSettings, settings: Settings) -> None:
        builder = (
            ClientBuilder()
            .connect_timeout(timedelta(seconds=settings.connect_timeout))
            .read_timeout(timedelta(seconds=settings.read_timeout))
            .pool_idle_timeout(timedelta(seconds=90))
            .tcp_nodelay(True)
            # No Accept-Encoding, as on HTTP/1.1: a body compressed anyway is inflated by us,
            # within limits.upstream_body_bytes (reqwest's own decoders have no such bound).
            .gzip(False)
            .deflate(False)
            .brotli(False)
            .zstd(False)
        )
        if provider.base_url.startswith("http://"):
            builder = builder.http2_prior_knowledge()  # h2c: only when asked with http2 = true
        else:
            builder = builder.http2(True).http2_adaptive_window(True)
        if provider.ca_file:
            builder = builder.add_root_certificate_pem(Path(provider.ca_file).read_bytes())
        self._client: H2Client = builder.build()
        self._max_inflated = settings.limits.upstream_body_bytes

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
        encoding = (response.get_header("content-encoding") or "").lower()
        inflater = http1.Inflater(self._max_inflated) if encoding in ("gzip", "deflate") else None
        return _Http2Response(streamed, response, provider, inflater)

    async def get(self, request: UpstreamRequest) -> tuple[int, _Body]:
        streamed = self._client.get(request.url).headers(request.headers).build_streamed()
        response = await streamed.__aenter__()
        return int(response.status), _Http2Body(streamed, response)

    async def warm(self, url: str, count: int) -> None:
        # One h2 connection carries every request, so one HEAD warms the pool.
        response = await self._client.head(url).build().send()
        await response.bytes()

    async def close(self) -> None:
        await self._client.close()


class _Http2Response:
    __slots__ = (
        "_closing",
        "_inflater",
        "_provider",
        "_request",
        "_response",
        "connect_s",
        "http_version",
        "retry_after",
        "status",
    )

    def __init__(
        self,
        request: StreamRequest,
        response: Any,
        provider: Provider,
        inflater: http1.Inflater | None = None,
    ) -> None:
        self._request = request
        self._response = response
        self._provider = provider
        self._inflater = inflater
        self._closing: asyncio.Future[Any] | None = None
        self.status = int(response.status)
        self.retry_after = _retry_after(response.get_header("retry-after"))
        self.http_version = str(response.version)
        self.connect_s: float | None = None  # hyper's pool does not say whether it connected

    async def read(self, limit: int) -> tuple[bytes, bool]:
        try:
            return await _read_capped(self.receive, limit)
        finally:
            self.close()

    async def receive(self) -> bytes:
        if self._inflater is not None:
            return await self._receive_inflated(self._inflater)
        try:
            chunk = await self._response.body_reader.read_chunk()
        except (TimeoutError, PyreqwestError) as exc:
            raise _broken(self._provider, exc) from None
        return b"" if chunk is None else bytes(chunk)

    async def _receive_inflated(self, inflater: http1.Inflater) -> bytes:
        try:
            # A chunk may inflate to nothing (a gzip header alone): that is not the end.
            while (chunk := await self._response.body_reader.read_chunk()) is not None:
                if data := inflater.inflate(bytes(chunk)):
                    return data
            return inflater.flush()
        except (TimeoutError, PyreqwestError, http1.ProtocolError) as exc:
            raise _broken(self._provider, exc) from None

    def close(self) -> None:
        # Leaving the request context drops the stream (RST_STREAM on h2); it is async, and
        # close() is called from synchronous clean-up, so it runs as a task.
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._request.__aexit__(None, None, None))
            self._closing.add_done_callback(_ignore_outcome)

    def release(self) -> None:
        self.close()  # an h2 stream ends by itself; the connection stays either way


class _Http2Body:
    """A GET's body over h2, chunk by chunk (so its size can be bounded while it is read)."""

    def __init__(self, request: StreamRequest, response: Any) -> None:
        self._request = request
        self._response = response
        self._closing: asyncio.Future[Any] | None = None

    async def receive(self) -> bytes:
        chunk = await self._response.body_reader.read_chunk()
        return b"" if chunk is None else bytes(chunk)

    def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._request.__aexit__(None, None, None))
            self._closing.add_done_callback(_ignore_outcome)


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it: the stream is gone anyway
