"""Serve the app over granian's native RSGI interface: what `callmissed serve` runs.

granian's ASGI interface hands every message across from Rust as a dict and a future; RSGI
hands over the request once and takes the response in one call (or a stream transport).
Measured with a bare pass-through (docs/performance.md) it saves ~0.15 ms of time to first byte
and CPU per streamed request. This module translates RSGI to web.App's calls and its
init/del hooks to the app's startup and shutdown, and keeps the limits granian leaves to the
app: a deadline on reading a body, an end to an aborted HTTP/2 body, and (connections.py) idle
connections and clients that stop reading (docs/security.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from callmissed.app import build_app
from callmissed.deadlines import Deadlines
from callmissed.edge.bodies import BodyBudget
from callmissed.edge.connections import Connections
from callmissed.edge.web import (
    App,
    Dialect,
    Request,
    Response,
    StreamResponse,
    WriteGate,
    error_response,
    response_headers,
    stream_headers,
    write_stream,
)
from callmissed.errors import GatewayError, RequestTimeout
from callmissed.exchange import Headers, Write, new_request_id
from callmissed.settings import EdgeLimits, load_settings
from callmissed.shutdown import stop_with_parent

__all__ = ["RSGIApp", "create_app"]

# Watching for the client to leave (granian's client_disconnect(): a future on its Rust side,
# handed back when it ends) starts this long into a request, so one over sooner never pays for it:
# 5 % of req/s at c=64 and 0.06 ms of added TTFB at c=1 against the benchmark's instant upstream
# (docs/performance.md). A slower one starts it while waiting for its upstream, and a client
# already gone by then is noticed at once.
_WATCH_AFTER = 0.02  # seconds
# A body whose length is declared may take a second longer than the body timeout per this many
# bytes: a slow mobile uplink's pace, so that a large upload over one is not taken for a client
# that stalls (a 32 MiB body may take 30 s + 512 s; one of the open limit's 64 KiB, 31 s).
_SLOW_LINK = 64 * 1024  # bytes a second


class _ClientGone(Exception):
    """The client went away while its request's body was being read."""


class RSGIApp:
    """granian calls `__rsgi_init__(loop)`, then `__rsgi__` per request, then `__rsgi_del__`."""

    def __init__(self, app: App, connections: Connections | None = None) -> None:
        self._app = app
        self._deadlines = Deadlines()
        self._unwatch: Callable[[], None] | None = None
        self._connections = connections
        limits = connections.limits if connections else EdgeLimits()
        self._body_timeout = limits.body_timeout

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self._app.startup())
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
            principal, limit = await app.admit(endpoint, headers)  # before reading any body
            budget = app.budget_for(endpoint, principal)
            body = await self._read_body(protocol, headers, limit, budget)
        except GatewayError as exc:
            _send_response(protocol, error_response(exc, dialect, request_id), request_id)
            return
        except _ClientGone:
            return
        # From here on the client may leave at any moment; the upstream call stops with it.
        gone = _departure(protocol, self._deadlines, self._connections, scope)
        early = _EarlyStream(protocol, request_id)
        request = Request(
            method, path, headers, body, request_id, early.start, principal, scope.query_string
        )
        response = await app.respond(endpoint, request, gone)
        if isinstance(response, StreamResponse):
            transport = early.transport or protocol.response_stream(
                200, _latin1(response_headers(response, request_id))
            )
            # granian ends the response when its transport object goes; a failure's traceback
            # can keep `early` alive in a reference cycle, so it must not hold the transport.
            early.transport = None
            gate = self._gate(scope)
            await write_stream(response, transport.send_bytes, gone, request_id, gate)
            return
        gone.cancel()
        if response is not None and early.transport is None:
            _send_response(protocol, response, request_id)

    async def _read_body(
        self, protocol: Any, headers: dict[str, str], limit: int, budget: BodyBudget | None
    ) -> bytes:
        """The body, within `limit` bytes, `budget` and its time (408 past it): the body
        timeout, and a second more per _SLOW_LINK bytes its Content-Length declares."""
        declared = headers.get("content-length")
        if declared == "0":
            return b""
        size = None if declared is None else int(declared)  # granian checked it is a number
        self._app.check_declared_size(headers, limit)
        allowed = self._body_timeout + (size or 0) / _SLOW_LINK
        task = asyncio.current_task()
        assert task is not None
        late = _Late(task)
        loop = asyncio.get_running_loop()
        deadline = self._deadlines.call_at(loop.time() + allowed, late)
        try:
            if size is not None:  # granian reads it whole, at most that long
                return await _whole_body(protocol, size, budget)
            return await self._app.read_body(headers, _body_parts(protocol), limit, budget)
        except asyncio.CancelledError:
            if not late.fired or task.uncancel() > 0:
                raise
            raise RequestTimeout(f"The request body did not arrive within {allowed:g} s.") from None
        finally:
            deadline.cancel()

    def _gate(self, scope: Any) -> WriteGate | None:
        if self._connections is None:
            return None
        return self._connections.gate(scope.server, scope.client)


class _Late:
    """Cancels the task that reads a body when the body timeout is reached, and says so."""

    __slots__ = ("_task", "fired")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self._task.cancel()


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


def _departure(
    protocol: Any, deadlines: Deadlines, connections: Connections | None, scope: Any
) -> asyncio.Future[None]:
    """A future that ends when the client disconnects, watched from _WATCH_AFTER on; whoever
    holds it cancels it when the request is over, which stops the watch."""
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    start = deadlines.call_at(
        loop.time() + _WATCH_AFTER, lambda: _watch(protocol, gone, connections, scope)
    )
    gone.add_done_callback(lambda _: start.cancel())
    return gone


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


def _send_response(protocol: Any, response: Response, request_id: str) -> None:
    headers = _latin1(response_headers(response, request_id))
    protocol.response_bytes(response.status, headers, response.body)


def _latin1(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


async def _whole_body(protocol: Any, size: int, budget: BodyBudget | None) -> bytes:
    """A body of a declared `size` (granian has checked it is a number), held against
    `budget` while it arrives."""
    if budget is not None:
        budget.take(size)
    try:
        body: bytes = await protocol()
    except Exception:  # granian's error for a body cut short: the client reset or closed
        raise _ClientGone from None
    finally:
        if budget is not None:
            budget.give(size)
    return body


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
                raise _ClientGone
            empty = True
            continue
        empty = False
        yield chunk


def create_app() -> RSGIApp:
    """The factory `callmissed serve` hands to granian: settings from the environment."""
    settings = load_settings()
    return RSGIApp(build_app(settings), Connections(settings.edge, settings.port))
