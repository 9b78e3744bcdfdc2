"""Serve the app to any ASGI server (uvicorn, hypercorn): kept to measure against and to embed.

`callmissed serve` uses granian's native interface instead (rsgi.py, docs/performance.md);
`python -m benchmarks run --server uvicorn` runs the real app on uvicorn through this module.
It only translates: the ASGI scope, receive() and send() to lifecycle.py's ServerCall, and the
ASGI lifespan to the app's startup and shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from callmissed.edge.collector import tune_collector
from callmissed.edge.lifecycle import ClientGone, Lifecycle
from callmissed.edge.web import App, WriteGate
from callmissed.exchange import Headers, Write
from callmissed.settings import EdgeLimits

__all__ = ["ASGIApp"]

log = logging.getLogger("callmissed")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ASGIApp:
    def __init__(self, app: App, limits: EdgeLimits | None = None) -> None:
        self._app = app
        self._lifecycle = Lifecycle(app, (limits or EdgeLimits()).body_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._lifecycle.run(_Call(scope, receive, send))
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
                tune_collector()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._app.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


class _Call:
    """One ASGI request as a lifecycle.ServerCall."""

    __slots__ = ("_receive", "_send", "headers", "method", "path", "query")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: str = scope.get("query_string", b"").decode("latin-1")
        self.headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }

    async def whole_body(self) -> bytes:
        """The server holds the body to its declared length; its messages, joined."""
        return b"".join([part async for part in self.body_parts()])

    async def body_parts(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            yield message.get("body", b"")
            if not message.get("more_body"):
                return

    def reading(self) -> Callable[[], None]:
        return _nothing  # the ASGI server keeps its own connections

    def departure(self) -> asyncio.Future[None]:
        return asyncio.ensure_future(_wait_for_disconnect(self._receive))

    async def start_stream(self, headers: Headers) -> Write:
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        return self._write

    async def _write(self, part: bytes) -> None:
        await self._send({"type": "http.response.body", "body": part, "more_body": True})

    async def end_stream(self) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await self._send({"type": "http.response.body", "body": b""})

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    def gate(self) -> WriteGate | None:
        return None  # an ASGI server's send() is its own flow control


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _nothing() -> None:
    return None
