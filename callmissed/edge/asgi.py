"""Serve the app to any ASGI server (uvicorn, hypercorn): kept for comparison and embedding.

`callmissed serve` uses granian's native interface instead (rsgi.py, docs/performance.md).
This module only translates: the ASGI scope, receive() and send() to web.App's calls, and the
ASGI lifespan to its startup and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from callmissed.edge.web import (
    App,
    Request,
    Response,
    StreamResponse,
    error_response,
    response_headers,
    stream_headers,
    write_stream,
)
from callmissed.errors import GatewayError
from callmissed.exchange import Headers, Write, new_request_id

__all__ = ["ASGIApp"]

log = logging.getLogger("callmissed")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ASGIApp:
    def __init__(self, app: App) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._app.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._app.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app
        request_id = new_request_id()
        method: str = scope["method"]
        path: str = scope["path"]
        dialect: Any = "openai"
        try:
            endpoint = app.route(method, path)
            dialect = endpoint.dialect
            headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in scope["headers"]
            }
            principal, limit = await app.admit(endpoint, headers)  # before reading any body
            body = await app.read_body(
                headers, _body_parts(receive), limit, app.budget_for(endpoint, principal)
            )
        except GatewayError as exc:
            await _send_response(send, error_response(exc, dialect, request_id), request_id)
            return
        # From here on the client may leave at any moment; the upstream call stops with it.
        gone = asyncio.ensure_future(_wait_for_disconnect(receive))
        early = _EarlyStream(send, request_id)
        query = scope.get("query_string", b"").decode("latin-1")
        request = Request(method, path, headers, body, request_id, early.start, principal, query)
        response = await app.respond(endpoint, request, gone)
        if isinstance(response, StreamResponse):
            if not early.started:
                start = {"type": "http.response.start", "status": 200}
                await send({**start, "headers": response_headers(response, request_id)})
            await write_stream(response, early.write, gone, request_id)
            with contextlib.suppress(Exception):  # the client may be gone already
                await send({"type": "http.response.body", "body": b""})
            return
        gone.cancel()
        if response is not None and not early.started:
            await _send_response(send, response, request_id)


class _EarlyStream:
    """Request.start_stream: the event stream started before the handler returns (keep-alives)."""

    __slots__ = ("_request_id", "_send", "started")

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._request_id = request_id
        self.started = False

    async def start(self, headers: Headers) -> Write:
        start = {"type": "http.response.start", "status": 200}
        await self._send({**start, "headers": stream_headers(headers, self._request_id)})
        self.started = True
        return self.write

    async def write(self, part: bytes) -> None:
        await self._send({"type": "http.response.body", "body": part, "more_body": True})


async def _send_response(send: Send, response: Response, request_id: str) -> None:
    headers = response_headers(response, request_id)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _body_parts(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
