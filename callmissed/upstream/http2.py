"""HTTP/2 upstreams (every https vendor, ALPN; h2c when a provider asks for `http2 = true`)
through pyreqwest (Rust hyper), held to the transport contract (contract.py).

A connection carries up to _STREAMS_PER_CONNECTION requests at once, multiplexed; past that a
request goes over another connection (a pyreqwest client of its own: hyper keeps one h2
connection per client and queues what its server's SETTINGS_MAX_CONCURRENT_STREAMS leaves no
room for, so a worker holding more streams than that made the rest wait their turn, or time
out). Each request goes to the least busy connection. The streamed read buffer is set to 0 so
chunks are handed on as they arrive rather than collected into 64 KiB, and a compressed body is
inflated by us (callmissed/upstream/http1.py's Inflater), within limits.upstream_body_bytes:
reqwest's own decoders have no such bound.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError
from pyreqwest.request import StreamRequest

from callmissed.providers import UpstreamRequest
from callmissed.settings import ProviderSettings, Settings
from callmissed.upstream import http1
from callmissed.upstream.contract import Peer, Response, read_capped, retry_after

__all__ = ["Http2Response", "Http2Transport"]

# RFC 9113 §6.5.2 asks servers to allow at least 100 concurrent streams; most allow 100-256.
_STREAMS_PER_CONNECTION = 100
_MOST_CONNECTIONS = 64  # per worker and upstream: past 6,400 streams, hyper's queue


class _Lane:
    """One pyreqwest client (one h2 connection) and the streams open on it now."""

    __slots__ = ("client", "streams")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.streams = 0


class Http2Transport:
    def __init__(self, provider: ProviderSettings, settings: Settings, peer: Peer) -> None:
        self._provider = provider
        self._settings = settings
        self._lanes = [_Lane(self._build())]
        self._peer = peer
        self._max_inflated = settings.limits.upstream_body_bytes

    def _build(self) -> Client:
        provider, settings = self._provider, self._settings
        builder = (
            ClientBuilder()
            .connect_timeout(timedelta(seconds=settings.connect_timeout))
            .read_timeout(timedelta(seconds=settings.read_timeout))
            .pool_idle_timeout(timedelta(seconds=90))
            .tcp_nodelay(True)
            # No Accept-Encoding, as on HTTP/1.1: a body compressed anyway is inflated by us.
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
        client: Client = builder.build()
        return client

    def _lane(self) -> _Lane:
        """The least busy connection; a new one if every connection is full."""
        lanes = self._lanes
        lane = lanes[0] if len(lanes) == 1 else min(lanes, key=_streams)
        if lane.streams >= _STREAMS_PER_CONNECTION and len(lanes) < _MOST_CONNECTIONS:
            lane = _Lane(self._build())
            lanes.append(lane)
        return lane

    async def send(self, request: UpstreamRequest, method: str = "POST") -> Response:
        lane = self._lane()
        builder = lane.client.request(method, request.url).headers(request.headers)
        if request.body:
            builder = builder.body_bytes(request.body)
        streamed = builder.streamed_read_buffer_limit(0).build_streamed()
        lane.streams += 1
        try:
            response = await streamed.__aenter__()
        except BaseException as exc:
            lane.streams -= 1
            if isinstance(exc, TimeoutError | PyreqwestError):
                raise self._peer.failure(exc, begun=False) from None
            raise
        encoding = (response.get_header("content-encoding") or "").lower()
        inflater = http1.Inflater(self._max_inflated) if encoding in ("gzip", "deflate") else None
        return Http2Response(streamed, response, self._peer, lane, inflater)

    async def warm(self, url: str, count: int) -> None:
        # One h2 connection carries the first hundred requests, so one HEAD warms the pool.
        response = await self._lanes[0].client.head(url).build().send()
        await response.bytes()

    async def close(self) -> None:
        for lane in self._lanes:
            await lane.client.close()


def _streams(lane: _Lane) -> int:
    return lane.streams


class Http2Response:
    __slots__ = (
        "_closing",
        "_inflater",
        "_lane",
        "_peer",
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
        peer: Peer,
        lane: _Lane,
        inflater: http1.Inflater | None = None,
    ) -> None:
        self._request = request
        self._response = response
        self._peer = peer
        self._lane = lane
        self._inflater = inflater
        self._closing: asyncio.Future[Any] | None = None
        self.status = int(response.status)
        self.retry_after = retry_after(response.get_header("retry-after"))
        self.http_version = str(response.version)
        self.connect_s: float | None = None  # hyper's pool does not say whether it connected

    async def read(self, limit: int) -> tuple[bytes, bool]:
        try:
            return await read_capped(self.receive, limit)
        finally:
            self.close()  # release and close are one on h2: the stream ends, the connection stays

    async def receive(self) -> bytes:
        try:
            if self._inflater is not None:
                return await self._inflater.pull(self._chunk)
            chunk = await self._response.body_reader.read_chunk()  # inline: once per read
        except (TimeoutError, PyreqwestError, http1.ProtocolError) as exc:
            raise self._peer.failure(exc, begun=True) from None
        return b"" if chunk is None else bytes(chunk)

    async def _chunk(self) -> bytes:
        chunk = await self._response.body_reader.read_chunk()
        return b"" if chunk is None else bytes(chunk)

    def close(self) -> None:
        # Leaving the request context drops the stream (RST_STREAM if it had not ended); it is
        # async, and close() is called from synchronous clean-up, so it runs as a task.
        if self._closing is None:
            self._lane.streams -= 1
            self._closing = asyncio.ensure_future(self._request.__aexit__(None, None, None))
            self._closing.add_done_callback(_ignore_outcome)

    def release(self) -> None:
        self.close()  # an h2 stream ends by itself; the connection stays either way


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it: the stream is gone anyway
