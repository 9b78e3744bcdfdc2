"""Serve the app over granian's native RSGI interface: what `callmissed serve` runs.

granian's ASGI interface hands every message across from Rust as a dict and a future; RSGI
hands over the request once and takes the response in one call (or a stream transport).
Measured with a bare pass-through (docs/performance.md) it saves ~0.15 ms of time to first byte
and CPU per streamed request. This module hands each request to lifecycle.py as a ServerCall
and its init/del hooks to the app's startup and shutdown, and keeps the limits granian leaves to
the app that only its interface can: an end to an aborted HTTP/2 body, and (connections.py) idle
connections and clients that stop reading (docs/security.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from callmissed.deadlines import Deadlines
from callmissed.edge.collector import tune_collector
from callmissed.edge.connections import Connections
from callmissed.edge.lifecycle import ClientGone, Lifecycle
from callmissed.edge.web import App, WriteGate
from callmissed.exchange import Headers, Write
from callmissed.settings import EdgeLimits
from callmissed.shutdown import stop_with_parent

__all__ = ["RSGIApp"]

# Watching for the client to leave (granian's client_disconnect(): a future on its Rust side,
# handed back when it ends), like marking a body still arriving as a request in flight (for the
# idle sweep), starts this long into a request, so one over sooner never pays for it:
# 5 % of req/s at c=64 and 0.06 ms of added TTFB at c=1 against the benchmark's instant upstream
# (docs/performance.md). A slower one starts it while waiting for its upstream, and a client
# already gone by then is noticed at once.
_WATCH_AFTER = 0.02  # seconds


class RSGIApp:
    """granian calls `__rsgi_init__(loop)`, then `__rsgi__` per request, then `__rsgi_del__`."""

    def __init__(self, app: App, connections: Connections | None = None) -> None:
        self._app = app
        limits = connections.limits if connections else EdgeLimits()
        self._lifecycle = Lifecycle(app, limits.body_timeout)
        self._unwatch: Callable[[], None] | None = None
        self._connections = connections

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self._app.startup())
        tune_collector()
        self._unwatch = stop_with_parent(loop)
        if self._connections is not None:
            self._connections.start(loop)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._unwatch is not None:
            self._unwatch()
        if self._connections is not None:
            self._connections.stop()
        loop.run_until_complete(self._app.shutdown())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto == "http":
            lifecycle = self._lifecycle
            await lifecycle.run(_Call(scope, protocol, lifecycle.deadlines, self._connections))


class _Call:
    """One granian request as a lifecycle.ServerCall."""

    __slots__ = (
        "_connections",
        "_deadlines",
        "_protocol",
        "_scope",
        "headers",
        "method",
        "path",
        "query",
    )

    def __init__(
        self, scope: Any, protocol: Any, deadlines: Deadlines, connections: Connections | None
    ) -> None:
        self._scope = scope
        self._protocol = protocol
        self._deadlines = deadlines
        self._connections = connections
        self.method: str = scope.method
        self.path: str = scope.path
        self.query: str = scope.query_string
        self.headers: dict[str, str] = dict(scope.headers.items())  # names come lower-cased

    async def whole_body(self) -> bytes:
        """granian has checked that the Content-Length is a number, and reads that much."""
        try:
            body: bytes = await self._protocol()
        except Exception:  # granian's error for a body cut short: the client reset or closed
            raise ClientGone from None
        return body

    def body_parts(self) -> AsyncIterator[bytes]:
        return _body_parts(self._protocol)

    def reading(self) -> Callable[[], None]:
        """A body still arriving _WATCH_AFTER in marks its connection busy until it is read,
        so that the idle sweep (connections.py) leaves it to the body timeout's 408."""
        connections = self._connections
        if connections is None:
            return _nothing
        client = self._scope.client
        marks: list[Callable[[], None]] = []
        loop = asyncio.get_running_loop()
        start = self._deadlines.call_at(
            loop.time() + _WATCH_AFTER, lambda: marks.append(connections.busy(client))
        )

        def over() -> None:
            start.cancel()
            for unmark in marks:
                unmark()

        return over

    def departure(self) -> asyncio.Future[None]:
        """Watched from _WATCH_AFTER on; cancelling it stops the watch."""
        protocol, connections, scope = self._protocol, self._connections, self._scope
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()
        start = self._deadlines.call_at(
            loop.time() + _WATCH_AFTER, lambda: _watch(protocol, gone, connections, scope)
        )
        gone.add_done_callback(lambda _: start.cancel())
        return gone

    async def start_stream(self, headers: Headers) -> Write:
        # Only the send method is kept: granian ends the response when its transport goes.
        send: Write = self._protocol.response_stream(200, _latin1(headers)).send_bytes
        return send

    async def end_stream(self) -> None:
        return None  # granian ends it when the transport goes

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        self._protocol.response_bytes(status, _latin1(headers), body)

    def gate(self) -> WriteGate | None:
        if self._connections is None:
            return None
        return self._connections.gate(self._scope.server, self._scope.client)


def _watch(
    protocol: Any, gone: asyncio.Future[None], connections: Connections | None, scope: Any
) -> None:
    if gone.done():  # over, its done-callbacks not yet run
        return
    watch = asyncio.ensure_future(protocol.client_disconnect())
    watch.add_done_callback(lambda _: _left(watch, gone))
    gone.add_done_callback(lambda _: watch.cancel())
    if connections is not None:  # its connection is not idle, however quiet, until it ends
        done = connections.busy(scope.client)
        gone.add_done_callback(lambda _: done())


def _left(watch: asyncio.Future[None], gone: asyncio.Future[None]) -> None:
    if not watch.cancelled():
        watch.exception()  # retrieved: granian failing to watch counts as the client leaving
        if not gone.done():
            gone.set_result(None)


def _latin1(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


async def _body_parts(protocol: Any) -> AsyncIterator[bytes]:
    """A body without a Content-Length, chunk by chunk, so the app's limit still stops it early.

    granian (2.8.9, the latest tried) ends a body with an empty chunk and then
    StopAsyncIteration; when an HTTP/2 client resets its stream mid-body it yields empty chunks
    forever instead (tests/edge/test_granian_h2_body.py), which spun a worker at 100 % CPU. So an
    empty chunk followed by another means the client has gone.
    """
    chunks = protocol.__aiter__()
    empty = False
    while True:
        try:
            # Not anext(iterator, default): that crashes granian 2.8's body iterator.
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        if not chunk:
            if empty:
                raise ClientGone
            empty = True
            continue
        empty = False
        yield chunk


def _nothing() -> None:
    return None
