"""Serve the app over granian's native RSGI interface: what `callmissed serve` runs.

granian's ASGI interface hands every message across from Rust as a dict and a future; RSGI
hands over the request once and takes the response in one call (or a stream transport).
Measured with a bare pass-through (docs/performance.md) it saves ~0.15 ms of time to first byte
and CPU per streamed request. This module only translates RSGI to web.App's calls and its
init/del hooks to the app's startup and shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from callmissed.app import build_app
from callmissed.deadlines import Deadlines
from callmissed.errors import GatewayError
from callmissed.settings import load_settings
from callmissed.shutdown import stop_with_parent
from callmissed.web import (
    App,
    Dialect,
    Headers,
    Request,
    Response,
    StreamResponse,
    Write,
    error_response,
    new_request_id,
    response_headers,
    stream_headers,
    write_stream,
)

__all__ = ["RSGIApp", "create_app"]

# Watching for the client to leave (granian's client_disconnect(): a future on its Rust side,
# handed back when it ends) starts this long into a request, so one over sooner never pays for it:
# 5 % of req/s at c=64 and 0.06 ms of added TTFB at c=1 against the benchmark's instant upstream
# (docs/performance.md). A slower one starts it while waiting for its upstream, and a client
# already gone by then is noticed at once.
_WATCH_AFTER = 0.02  # seconds


class RSGIApp:
    """granian calls `__rsgi_init__(loop)`, then `__rsgi__` per request, then `__rsgi_del__`."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._deadlines = Deadlines()
        self._unwatch: Callable[[], None] | None = None

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self._app.startup())
        self._unwatch = stop_with_parent(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._unwatch is not None:
            self._unwatch()
        loop.run_until_complete(self._app.shutdown())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        app = self._app
        request_id = new_request_id()
        method: str = scope.method
        path: str = scope.path
        dialect: Dialect = "openai"
        try:
            endpoint = app.route(method, path)
            dialect = endpoint.dialect
            headers: dict[str, str] = dict(scope.headers.items())  # names come lower-cased
            if "content-length" in headers:  # granian reads it whole, at most that long
                app.check_declared_size(headers)
                body = await protocol()
            else:
                body = await app.read_body(headers, _body_parts(protocol))
        except GatewayError as exc:
            _send_response(protocol, error_response(exc, dialect, request_id), request_id)
            return
        # From here on the client may leave at any moment; the upstream call stops with it.
        gone = _departure(protocol, self._deadlines)
        early = _EarlyStream(protocol, request_id)
        request = Request(method, path, headers, body, request_id, early.start, scope.query_string)
        response = await app.respond(endpoint, request, gone)
        if isinstance(response, StreamResponse):
            transport = early.transport or protocol.response_stream(
                200, _latin1(response_headers(response, request_id))
            )
            # granian ends the response when its transport object goes; a failure's traceback
            # can keep `early` alive in a reference cycle, so it must not hold the transport.
            early.transport = None
            await write_stream(response, transport.send_bytes, gone, request_id)
            return
        gone.cancel()
        if response is not None and early.transport is None:
            _send_response(protocol, response, request_id)


class _EarlyStream:
    """Request.start_stream: the event stream started before the handler returns (keep-alives)."""

    __slots__ = ("_protocol", "_request_id", "transport")

    def __init__(self, protocol: Any, request_id: str) -> None:
        self._protocol = protocol
        self._request_id = request_id
        self.transport: Any = None

    async def start(self, headers: Headers) -> Write:
        out = _latin1(stream_headers(headers, self._request_id))
        self.transport = self._protocol.response_stream(200, out)
        send: Write = self.transport.send_bytes
        return send


def _departure(protocol: Any, deadlines: Deadlines) -> asyncio.Future[None]:
    """A future that ends when the client disconnects, watched from _WATCH_AFTER on; whoever
    holds it cancels it when the request is over, which stops the watch."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    start = deadlines.call_at(loop.time() + _WATCH_AFTER, lambda: _watch(protocol, gone))
    gone.add_done_callback(lambda _: start.cancel())
    return gone


def _watch(protocol: Any, gone: asyncio.Future[None]) -> None:
    if gone.done():  # over, its done-callbacks not yet run
        return
    watch = asyncio.ensure_future(protocol.client_disconnect())
    watch.add_done_callback(lambda _: _left(watch, gone))
    gone.add_done_callback(lambda _: watch.cancel())


def _left(watch: asyncio.Future[None], gone: asyncio.Future[None]) -> None:
    if not watch.cancelled():
        watch.exception()  # retrieved: granian failing to watch counts as the client leaving
        if not gone.done():
            gone.set_result(None)


def _send_response(protocol: Any, response: Response, request_id: str) -> None:
    headers = _latin1(response_headers(response, request_id))
    protocol.response_bytes(response.status, headers, response.body)


def _latin1(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


async def _body_parts(protocol: Any) -> AsyncIterator[bytes]:
    """A body without a Content-Length, chunk by chunk, so the app's limit still stops it early."""
    chunks = protocol.__aiter__()
    while True:
        try:
            # Not anext(iterator, default): that crashes granian 2.8's body iterator.
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        yield chunk


def create_app() -> RSGIApp:
    """The factory `callmissed serve` hands to granian: settings from the environment."""
    return RSGIApp(build_app(load_settings()))
