"""HTTP/1.1 upstreams (plain-http vLLM, Ollama, llama.cpp) through callmissed/upstream/http1.py,
held to the transport contract (contract.py): one pooled client per origin the provider's URLs
name, and the client's plain exceptions turned into the contract's errors.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from callmissed.providers import UpstreamRequest
from callmissed.settings import ProviderSettings, Settings
from callmissed.upstream import http1
from callmissed.upstream.contract import Peer, Response, read_capped, retry_after

__all__ = ["Http1Response", "Http1Transport"]


class Http1Transport:
    """callmissed.upstream.http1: one pooled client per origin the provider's URLs name."""

    def __init__(self, provider: ProviderSettings, settings: Settings, peer: Peer) -> None:
        self._ca_file = provider.ca_file
        self._settings = settings
        self._peer = peer
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

    async def send(self, request: UpstreamRequest, method: str = "POST") -> Response:
        client, target = self._route(request.url)
        try:
            response = await client.send(method, target, request.headers, request.body)
        except OSError as exc:  # refused, reset, TLS, timeouts (TimeoutError is an OSError)
            raise self._peer.failure(exc, begun=False) from None
        return Http1Response(response, self._peer)

    async def warm(self, url: str, count: int) -> None:
        await self._route(url)[0].warm(count)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        self._routes.clear()


class Http1Response:
    __slots__ = ("_peer", "_response", "connect_s", "http_version", "retry_after", "status")

    def __init__(self, response: http1.Response, peer: Peer) -> None:
        self._response = response
        self._peer = peer
        self.status = response.status
        self.retry_after = retry_after(response.header("retry-after"))
        self.http_version = response.http_version
        self.connect_s: float | None = response.connect_s

    async def read(self, limit: int) -> tuple[bytes, bool]:
        try:
            body, more = await read_capped(self.receive, limit)
        except BaseException:
            self.close()
            raise
        if more:
            self.close()  # the rest is unread: the connection cannot carry another request
        return body, more

    async def receive(self) -> bytes:
        try:
            return await self._response.receive()
        except OSError as exc:
            raise self._peer.failure(exc, begun=True) from None

    def close(self) -> None:
        self._response.close()

    def release(self) -> None:
        self._response.release()
