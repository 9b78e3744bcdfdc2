"""The only module that talks to upstreams: one pooled aiohttp session per provider.

aiohttp was chosen by benchmark over httpx (docs/performance.md): streamed through a proxy,
httpx costs ~1.6 ms of CPU per request here and collapses under concurrency. `sim` providers
are answered in-process by callmissed/simulator.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp

from callmissed.errors import UpstreamError, UpstreamTimeout
from callmissed.providers import Provider, UpstreamRequest
from callmissed.settings import Settings, SimProfile
from callmissed.simulator import simulate

__all__ = ["Upstream", "UpstreamResponse"]


class UpstreamResponse(Protocol):
    status: int
    retry_after: float | None

    async def read(self) -> bytes: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Upstream:
    """Sends built requests. Owns the sessions; `start()` and `close()` bracket its life."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._profiles: dict[str, SimProfile] = {
            route.upstream_model: model.simulate
            for model in settings.models.values()
            if model.simulate
            for route in model.routes
        }

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._settings.connect_timeout,
            sock_read=self._settings.read_timeout,
        )
        for provider in self._settings.providers.values():
            if provider.type == "sim" or provider.missing:
                continue
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
            self._sessions[provider.name] = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                skip_auto_headers=("User-Agent",),
                auto_decompress=True,
            )

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        """POST the request; return once the upstream's status and headers are in."""
        if provider.type == "sim":
            profile = self._profiles.get(request.model)
            if profile is None:
                raise UpstreamError("the simulator has no such model", provider=provider.name)
            return simulate(profile, request.body)
        session = self._sessions[provider.name]
        try:
            response = await session.post(request.url, data=request.body, headers=request.headers)
        except TimeoutError:
            raise UpstreamTimeout(
                f"{provider.label} ({provider.name}) did not answer in time", provider=provider.name
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"could not reach {provider.label} ({provider.name}): {type(exc).__name__}",
                provider=provider.name,
            ) from None
        return _AiohttpResponse(response, provider)


class _AiohttpResponse:
    __slots__ = ("_provider", "_response", "retry_after", "status")

    def __init__(self, response: aiohttp.ClientResponse, provider: Provider) -> None:
        self._response = response
        self._provider = provider
        self.status = response.status
        self.retry_after = _retry_after(response.headers)

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._broken(exc) from None
        finally:
            self._response.release()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._broken(exc) from None

    def close(self) -> None:
        self._response.close()

    def _broken(self, exc: BaseException) -> UpstreamError:
        label = f"{self._provider.label} ({self._provider.name})"
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamTimeout(f"{label} stopped sending", provider=self._provider.name)
        return UpstreamError(
            f"{label} broke the connection mid-response ({type(exc).__name__})",
            provider=self._provider.name,
        )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
