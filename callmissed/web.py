"""The ASGI edge: a route table, bounded body reading, JSON and streamed responses.

Deliberately tiny instead of a framework: on the hot path every microsecond is the user's
(docs/performance.md). Handlers raise GatewayError; this module renders it in the dialect of
the route (OpenAI or Anthropic), and turns anything unexpected into a 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson

from callmissed.errors import (
    EndpointNotFound,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    RequestTooLarge,
    to_anthropic,
    to_openai,
)

__all__ = ["ASGIApp", "Endpoint", "Request", "Response", "StreamResponse", "json_response"]

log = logging.getLogger("callmissed")

T = TypeVar("T")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Dialect = Literal["openai", "anthropic"]


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    request_id: str

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"application/json"


@dataclass(slots=True)
class StreamResponse:
    body: AsyncIterator[bytes]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    on_close: Callable[[], None] | None = None
    content_type: bytes = b"text/event-stream"


def json_response(
    payload: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    return Response(status, orjson.dumps(payload), headers or [])


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    handler: Handler
    dialect: Dialect = "openai"


class ASGIApp:
    """Dispatches (method, path) through `routes`; `startup`/`shutdown` run in the lifespan."""

    def __init__(
        self,
        routes: dict[tuple[str, str], Endpoint],
        max_body_bytes: int,
        startup: Callable[[], Awaitable[None]],
        shutdown: Callable[[], Awaitable[None]],
    ) -> None:
        # A path ending in "/*" matches everything below it (e.g. model ids with slashes).
        self._routes = {key: value for key, value in routes.items() if not key[1].endswith("*")}
        self._prefixes = [
            (method, path[:-1], endpoint)
            for (method, path), endpoint in routes.items()
            if path.endswith("*")
        ]
        self._paths = {path for _, path in self._routes}
        self._max_body_bytes = max_body_bytes
        self._startup = startup
        self._shutdown = shutdown

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
                    await self._startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = "req_" + os.urandom(12).hex()
        path: str = scope["path"]
        endpoint = self._routes.get((scope["method"], path)) or self._match_prefix(
            scope["method"], path
        )
        dialect: Dialect = endpoint.dialect if endpoint else "openai"
        watch: asyncio.Task[None] | None = None
        response: Response | StreamResponse | None = None
        try:
            if endpoint is None:
                raise _not_routed(scope["method"], path, path in self._paths)
            headers = {
                name.decode("latin-1").lower(): value.decode("latin-1")
                for name, value in scope["headers"]
            }
            body = await self._read_body(headers, receive)
            request = Request(scope["method"], path, headers, body, request_id)
            # From here on the client may leave at any moment; the upstream call stops with it.
            watch = asyncio.ensure_future(_wait_for_disconnect(receive))
            response = await _unless_disconnected(endpoint.handler(request), watch)
        except GatewayError as exc:
            await _send_error(send, exc, dialect, request_id)
            return
        except Exception:
            log.exception("unhandled error in %s %s (%s)", scope["method"], path, request_id)
            await _send_error(send, GatewayError("Internal error."), dialect, request_id)
            return
        finally:
            if watch is not None and not isinstance(response, StreamResponse):
                watch.cancel()
        if isinstance(response, StreamResponse):
            assert watch is not None
            await _send_stream(send, watch, response, request_id)
        elif response is not None:
            await _send_response(send, response, request_id)

    def _match_prefix(self, method: str, path: str) -> Endpoint | None:
        for route_method, prefix, endpoint in self._prefixes:
            if route_method == method and path.startswith(prefix) and len(path) > len(prefix):
                return endpoint
        return None

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self._max_body_bytes
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"The request body is larger than the {limit}-byte limit.")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                raise RequestTooLarge(f"The request body is larger than the {limit}-byte limit.")
            parts.append(part)
            if not message.get("more_body"):
                return b"".join(parts)


def _not_routed(method: str, path: str, path_exists: bool) -> GatewayError:
    if path_exists:
        return MethodNotAllowed(f"{method} is not allowed on {path}.")
    return EndpointNotFound(f"There is no endpoint at {path}.")


async def _send_response(send: Send, response: Response, request_id: str) -> None:
    headers = [
        (b"content-type", response.content_type),
        (b"x-request-id", request_id.encode()),
        *response.headers,
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


async def _send_error(send: Send, exc: GatewayError, dialect: Dialect, request_id: str) -> None:
    if dialect == "anthropic":
        status, payload = to_anthropic(exc)
        payload["request_id"] = request_id  # Anthropic's error bodies carry it too (§2.6)
    else:
        status, payload = to_openai(exc)
    headers = [*exc.headers(), (b"request-id", request_id.encode())]
    await _send_response(send, Response(status, orjson.dumps(payload), headers), request_id)


async def _unless_disconnected(awaitable: Awaitable[T], watch: asyncio.Task[None]) -> T | None:
    """Await in this task, cancelling it if the client disconnects (None then).

    The cancellation reaches whatever is awaited — an upstream request, a stream being written —
    which closes it. Running in this task rather than a new one keeps a request's task count low.
    """
    task = asyncio.current_task()
    assert task is not None

    def cancel(_: asyncio.Task[None]) -> None:
        if not watch.cancelled():
            task.cancel()

    watch.add_done_callback(cancel)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled() and task.uncancel() == 0:
            return None  # the client left; nobody is waiting for an answer
        raise
    finally:
        watch.remove_done_callback(cancel)


async def _send_stream(
    send: Send, watch: asyncio.Task[None], response: StreamResponse, request_id: str
) -> None:
    """Write the stream; if the client goes away first (`watch` ends), stop at once."""
    headers = [
        (b"content-type", response.content_type),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        (b"x-request-id", request_id.encode()),
        *response.headers,
    ]
    try:
        await _unless_disconnected(_pump(send, response, headers), watch)
    except Exception as exc:  # the body encoders report their own failures in-band
        log.debug("stream %s ended by the transport: %r", request_id, exc)
    finally:
        watch.cancel()
        if response.on_close is not None:
            response.on_close()


async def _pump(send: Send, response: StreamResponse, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        async for part in response.body:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        aclose = getattr(response.body, "aclose", None)
        if aclose is not None:
            await aclose()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
