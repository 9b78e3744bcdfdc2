"""One request's life at the edge, whatever server runs it.

The steps, in order: route the method and path; run the endpoint's guard on the headers alone;
read the body within its limit, budget (bodies.py) and deadline; from then on watch for the
client leaving; run the handler; send its response, or write its stream (which keepalive.py may
have started early); end. A failure before the handler is rendered in the route's dialect.

rsgi.py (granian's native interface, what `callmissed serve` runs) and asgi.py (any ASGI server)
only translate: each hands a request over as a ServerCall and `Lifecycle.run` does the rest, so
a client meets the same limits on either.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from callmissed.deadlines import Deadlines
from callmissed.edge.bodies import BodyBudget
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

__all__ = ["ClientGone", "Lifecycle", "ServerCall"]

# A body whose length is declared may take a second longer than the body timeout per this many
# bytes: a slow mobile uplink's pace, so that a large upload over one is not taken for a client
# that stalls (a 32 MiB body may take 30 s + 512 s; one of the open limit's 64 KiB, 31 s).
_SLOW_LINK = 64 * 1024  # bytes a second


class ClientGone(Exception):
    """The client went away while its request's body was being read."""


class ServerCall(Protocol):
    """One HTTP request as a server hands it over, and the ways to answer it."""

    method: str
    path: str
    query: str  # the URL's query string, without the "?"
    headers: dict[str, str]  # names lower-cased

    def whole_body(self) -> Awaitable[bytes]:
        """All of a body whose Content-Length was declared; ClientGone if it is cut short."""
        ...

    def body_parts(self) -> AsyncIterator[bytes]:
        """A body without a Content-Length, part by part; ClientGone if the client goes."""
        ...

    def reading(self) -> Callable[[], None]:
        """A body begins to arrive; the call returned says it is over (its request is in
        flight meanwhile, however quiet the connection)."""
        ...

    def departure(self) -> asyncio.Future[None]:
        """Ends when the client disconnects; the lifecycle cancels it when the request is over."""
        ...

    def start_stream(self, headers: Headers) -> Awaitable[Write]:
        """Send a 200 with `headers`; what writes the stream's parts."""
        ...

    async def end_stream(self) -> None:
        """After the stream's last part."""

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response."""

    def gate(self) -> WriteGate | None:
        """What holds a stream's writes back while its client reads too little, if anything."""
        ...


class Lifecycle:
    """Runs every request a server hands over through `app`; the module doc has the steps."""

    def __init__(self, app: App, body_timeout: float) -> None:
        self.app = app
        self.deadlines = Deadlines()
        self._body_timeout = body_timeout

    async def run(self, call: ServerCall) -> None:
        app = self.app
        request_id = new_request_id()
        dialect: Dialect = "openai"
        try:
            endpoint = app.route(call.method, call.path)
            dialect = endpoint.dialect
            principal, limit = await app.admit(endpoint, call.headers)  # before reading any body
            body = await self._read_body(call, limit, app.budget_for(endpoint, principal))
        except GatewayError as exc:
            await _send(call, error_response(exc, dialect, request_id), request_id)
            return
        except ClientGone:
            return
        # From here on the client may leave at any moment; the upstream call stops with it.
        gone = call.departure()
        early = _EarlyStream(call, request_id)
        request = Request(
            call.method,
            call.path,
            call.headers,
            body,
            request_id,
            early.start,
            principal,
            call.query,
        )
        response = await app.respond(endpoint, request, gone)
        if isinstance(response, StreamResponse):
            write = early.write or await call.start_stream(response_headers(response, request_id))
            # A server may end the response when what writes it goes (granian's transport); a
            # failure's traceback can keep `early` alive in a reference cycle, so it lets go.
            early.write = None
            await write_stream(response, write, gone, request_id, call.gate())
            await call.end_stream()
            return
        gone.cancel()
        if response is not None and early.write is None:
            headers = response_headers(response, request_id)
            await call.send(response.status, headers, response.body)

    async def _read_body(self, call: ServerCall, limit: int, budget: BodyBudget | None) -> bytes:
        """The body, within `limit` bytes, `budget` and its time (408 past it): the body
        timeout, and a second more per _SLOW_LINK bytes its Content-Length declares."""
        declared = call.headers.get("content-length")
        if declared == "0":
            return b""
        self.app.check_declared_size(call.headers, limit)
        size = int(declared) if declared and declared.isdigit() else None
        allowed = self._body_timeout + (size or 0) / _SLOW_LINK
        task = asyncio.current_task()
        assert task is not None
        late = _Late(task)
        loop = asyncio.get_running_loop()
        deadline = self.deadlines.call_at(loop.time() + allowed, late)
        read = call.reading()
        try:
            if size is not None:  # the server reads it whole, at most that long
                return await _whole_body(call, size, budget)
            return await self.app.read_body(call.headers, call.body_parts(), limit, budget)
        except asyncio.CancelledError:
            if not late.fired or task.uncancel() > 0:
                raise
            raise RequestTimeout(f"The request body did not arrive within {allowed:g} s.") from None
        finally:
            deadline.cancel()
            read()


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

    __slots__ = ("_call", "_request_id", "write")

    def __init__(self, call: ServerCall, request_id: str) -> None:
        self._call = call
        self._request_id = request_id
        self.write: Write | None = None

    async def start(self, headers: Headers) -> Write:
        self.write = await self._call.start_stream(stream_headers(headers, self._request_id))
        return self.write


async def _whole_body(call: ServerCall, size: int, budget: BodyBudget | None) -> bytes:
    """A body of a declared `size`, held against `budget` while it arrives."""
    if budget is None:
        return await call.whole_body()
    budget.take(size)
    try:
        return await call.whole_body()
    finally:
        budget.give(size)


async def _send(call: ServerCall, response: Response, request_id: str) -> None:
    await call.send(response.status, response_headers(response, request_id), response.body)
