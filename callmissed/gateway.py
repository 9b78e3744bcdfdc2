"""The use-cases behind every API edge: route a chat request and relay the upstream's answer.

Each edge (api/openai.py, api/anthropic.py) authenticates and parses its own dialect, then calls
`complete()` or `open_stream()` with an OpenAI-format body. Until the first chunk arrives any
failure is raised as a normal error (a real HTTP status); after that it travels in-band.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from callmissed.auth import Authenticator, Principal
from callmissed.providers import REGISTRY, Provider
from callmissed.reasoning import apply_reasoning_effort
from callmissed.relay import ChatStream, read_completion
from callmissed.routing import Router, Target
from callmissed.settings import Settings
from callmissed.store import Store, open_store
from callmissed.upstream import Upstream, UpstreamResponse

__all__ = ["Gateway", "RouteInfo"]


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """Where a request went; sent back to the client as headers."""

    provider: str
    upstream_model: str
    reasoning_effort: str | None

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"x-callmissed-route", self.provider.encode()),
            (b"x-callmissed-upstream-model", self.upstream_model.encode()),
        ]
        if self.reasoning_effort is not None:
            headers.append((b"x-callmissed-reasoning-effort", self.reasoning_effort.encode()))
        return headers


class Gateway:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.providers: dict[str, Provider] = {
            name: REGISTRY[provider.type](provider) for name, provider in settings.providers.items()
        }
        self.router = Router(settings, self.providers)
        self.store = store or open_store(settings.database_url)
        self.auth = Authenticator(self.store)
        self.upstream = Upstream(settings)

    async def start(self) -> None:
        await self.upstream.start()

    async def close(self) -> None:
        await self.upstream.close()
        self.store.close()

    async def complete(
        self, principal: Principal, body: dict[str, Any]
    ) -> tuple[dict[str, Any], RouteInfo]:
        """A whole chat.completion for a checked OpenAI-format body."""
        target, response, info = await self._send(body)
        return await read_completion(target.provider, response), info

    async def open_stream(
        self, principal: Principal, body: dict[str, Any], include_usage: bool
    ) -> tuple[ChatStream, RouteInfo]:
        """A started ChatStream: its first chunks are already in, so nothing can fail silently."""
        target, response, info = await self._send(body)
        stream = ChatStream(target.provider, response, include_usage)
        try:
            await stream.start()
        except BaseException:
            stream.close()
            raise
        return stream, info

    async def _send(self, body: dict[str, Any]) -> tuple[Target, UpstreamResponse, RouteInfo]:
        model, targets = self.router.resolve(body["model"])
        effort = apply_reasoning_effort(body, model, self.settings.reasoning_policies)
        target = targets[0]
        request = target.provider.build_request(body, target.route, model)
        response = await self.upstream.send(target.provider, request)
        if response.status >= 400:
            try:
                error_body = await response.read()
            finally:
                response.close()
            raise target.provider.parse_error(response.status, error_body, response.retry_after)
        return (
            target,
            response,
            RouteInfo(target.provider.name, target.route.upstream_model, effort),
        )
