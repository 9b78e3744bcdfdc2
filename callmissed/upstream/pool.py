"""One transport per provider, pooled and kept warm; the gateway's only way to an upstream.

Which transport a provider gets is the provider's to say (`Provider.transport`), and its
settings': contract.py defines what every one of them does and raises.
- http1_transport.py for HTTP/1.1 upstreams (plain-http vLLM, Ollama, llama.cpp): our own
  asyncio.Protocol + llhttp client (http1.py), because aiohttp's client (itself ~5x cheaper
  than httpx) was still ~14% of the gateway's CPU per streamed request (docs/performance.md);
- http2.py, pyreqwest (Rust hyper), for HTTP/2 upstreams: https providers negotiate h2 via
  ALPN, so one multiplexed connection carries many requests;
- simulator.py answers `sim/...` models in-process (chat and embeddings).
Pools are kept warm (`warm_connections`, `warm_interval`): at start-up and whenever an upstream
sat idle, its connections are opened ahead of time (HTTP/1.1: bare TCP and TLS handshakes; h2:
a HEAD), so no user request pays the handshake.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from callmissed.errors import UpstreamError, UpstreamTimeout
from callmissed.providers import REGISTRY, Provider, UpstreamRequest
from callmissed.settings import ProviderSettings, Settings
from callmissed.upstream.contract import Peer, Response, Transport
from callmissed.upstream.http1_transport import Http1Transport
from callmissed.upstream.http2 import Http2Transport
from callmissed.upstream.simulator import SimulatorTransport

__all__ = ["Upstream", "UpstreamResponse"]

UpstreamResponse = Response  # what relay and failover read: the contract's response

log = logging.getLogger("callmissed")


def _transport(provider: ProviderSettings, settings: Settings) -> Transport:
    kind = REGISTRY[provider.type]
    peer = Peer(kind.label, provider.name)
    if kind.transport == "simulator":
        return SimulatorTransport(settings, peer)
    if provider.uses_http2:
        return Http2Transport(provider, settings, peer)
    return Http1Transport(provider, settings, peer)


class Upstream:
    """Sends built requests. Owns the clients; `start()` and `close()` bracket its life."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._transports: dict[str, Transport] = {}
        self._last_used: dict[str, float] = {}
        self._warmer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for provider in self._settings.providers.values():
            if not provider.missing:
                self._transports[provider.name] = _transport(provider, self._settings)
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
                response = await transport.send(provider.build_get(path), "GET")
                try:
                    if response.status != 200:
                        raise UpstreamError(f"{label} answered {response.status} to GET /{path}")
                    data, more = await response.read(max_bytes)
                finally:
                    response.close()
        except TimeoutError:
            raise UpstreamTimeout(f"{label} did not send /{path} within {seconds:g} s") from None
        if more:
            raise UpstreamError(f"{label}'s /{path} is larger than {max_bytes} bytes")
        return data

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        """POST the request; return once the upstream's status and headers are in."""
        self._last_used[provider.name] = time.monotonic()
        return await self._transports[provider.name].send(request)
