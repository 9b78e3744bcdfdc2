"""The HTTP edge: a route table, credentials checked before bodies, bounded body reading, JSON
and streamed responses.

Deliberately tiny instead of a framework: on the hot path every microsecond is the user's
(docs/performance.md). Handlers raise GatewayError; this module renders it in the dialect of
the route (OpenAI or Anthropic), and turns anything unexpected into a 500 without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson

from callmissed.auth import Principal
from callmissed.edge.bodies import Bodies, BodyBudget
from callmissed.edge.turns import Turns
from callmissed.endings import CLIENT_LEFT
from callmissed.errors import (
    AuthenticationFailed,
    EndpointNotFound,
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    RequestTooLarge,
    to_anthropic,
    to_openai,
)
from callmissed.exchange import Headers, StartStream
from callmissed.nesting import MAX_DEPTH, too_deep

__all__ = [
    "App",
    "Dialect",
    "Endpoint",
    "Guard",
    "Request",
    "Response",
    "StreamResponse",
    "WriteGate",
    "error_response",
    "json_response",
    "response_headers",
    "stream_headers",
    "unless_disconnected",
    "write_stream",
]

log = logging.getLogger("callmissed")

T = TypeVar("T")
_NEVER = 1 << 62
_STARTS_PER_TURN = 16  # requests whose handlers start in one turn of the loop (edge/turns.py)

Dialect = Literal["openai", "anthropic"]


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    request_id: str
    start_stream: StartStream | None = None  # the edge's, for a stream that must start early
    principal: Principal | None = None  # the key the endpoint's guard checked
    query: str = ""  # the URL's query string, without the "?"

    @property
    def key(self) -> Principal:
        """The caller's key, checked by the edge before the body was read (Endpoint.guard)."""
        if self.principal is None:
            raise AuthenticationFailed("This endpoint checks no API key.")
        return self.principal

    def json(self) -> Any:
        try:
            parsed = orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
        if too_deep(parsed, len(self.body)):  # it could not go upstream
            raise InvalidRequest(f"The request body nests JSON deeper than {MAX_DEPTH} levels.")
        return parsed


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
# Checks a request's credential from its headers alone, before its body is read: the key it
# names, None for an operator token; raises AuthenticationFailed (or AdminDisabled).
Guard = Callable[[dict[str, str]], Awaitable[Principal | None]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route's handler, its errors' dialect, and its guard: with one, the body may be as large
    as the full limit once the guard has passed; without, only as large as the open one."""

    handler: Handler
    dialect: Dialect = "openai"
    guard: Guard | None = None


class WriteGate:
    """Holds a stream's writes back while its client has too much of the answer unread
    (rsgi.py's TCP one); `wait(sent)` returns the `sent` at which to ask again, or raises
    once the client is taken for gone. The base class never holds anything back."""

    __slots__ = ()
    first: int = _NEVER  # the `sent` at which to ask first

    async def wait(self, sent: int) -> int:
        return _NEVER


class App:
    """Dispatches (method, path) through `routes`; `startup`/`shutdown` bracket its life.

    Server-agnostic: lifecycle.py takes each request through route(), admit(), read_body()
    and respond() and writes what comes back, for rsgi.py (granian's native interface, what
    `callmissed serve` runs) and asgi.py (any ASGI server) alike.
    """

    def __init__(
        self,
        routes: dict[tuple[str, str], Endpoint],
        max_body_bytes: int,
        max_open_body_bytes: int,
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
        self.max_body_bytes = max_body_bytes
        self.max_open_body_bytes = max_open_body_bytes
        self.bodies = Bodies(max_body_bytes, max_open_body_bytes)
        self.startup = startup
        self.shutdown = shutdown
        self.turns = Turns(_STARTS_PER_TURN)

    def route(self, method: str, path: str) -> Endpoint:
        endpoint = self._routes.get((method, path)) or self._match_prefix(method, path)
        if endpoint is None:
            if path in self._paths:
                raise MethodNotAllowed(f"{method} is not allowed on {path}.")
            raise EndpointNotFound(f"There is no endpoint at {path}.{self._base_url_hint(path)}")
        return endpoint

    def _base_url_hint(self, path: str) -> str:
        """What to change when an SDK's base_url has one /v1 too few or too many."""
        if path.startswith("/v1/v1/") and self._exists(path[3:]):
            return (
                f" Did you mean {path[3:]}? The Anthropic SDK adds /v1 itself: give it the "
                "gateway's root URL as base_url, without /v1."
            )
        if not path.startswith("/v1/") and self._exists(f"/v1{path}"):
            return f" Did you mean /v1{path}? An OpenAI SDK's base_url ends in /v1."
        return ""

    def _exists(self, path: str) -> bool:
        return path in self._paths or any(
            path.startswith(prefix) and len(path) > len(prefix) for _, prefix, _ in self._prefixes
        )

    def _match_prefix(self, method: str, path: str) -> Endpoint | None:
        for route_method, prefix, endpoint in self._prefixes:
            if route_method == method and path.startswith(prefix) and len(path) > len(prefix):
                return endpoint
        return None

    async def admit(
        self, endpoint: Endpoint, headers: dict[str, str]
    ) -> tuple[Principal | None, int]:
        """Run the endpoint's guard on the headers: the key it checked, and the body limit
        (the full one past a guard, the open one without). Raises before any body is read."""
        if endpoint.guard is None:
            return None, self.max_open_body_bytes
        return await endpoint.guard(headers), self.max_body_bytes

    def budget_for(self, endpoint: Endpoint, principal: Principal | None) -> BodyBudget | None:
        """What a body counts against while it is read (bodies.py): the open budget on an
        endpoint without a guard, the key's past a key's guard, nothing for an operator's."""
        if endpoint.guard is None:
            return self.bodies.open
        return None if principal is None else self.bodies.of_key(principal.key_id)

    def check_declared_size(self, headers: dict[str, str], limit: int) -> None:
        """Refuse a body whose Content-Length is past `limit`, before reading it."""
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"The request body is larger than the {limit}-byte limit.")

    async def read_body(
        self,
        headers: dict[str, str],
        parts: AsyncIterator[bytes],
        limit: int,
        budget: BodyBudget | None = None,
    ) -> bytes:
        """The request body from the server's `parts`, refused early past `limit` (or once
        `budget` has no room for what it holds so far)."""
        self.check_declared_size(headers, limit)
        received: list[bytes] = []
        size = 0
        try:
            async for part in parts:
                if size + len(part) > limit:
                    raise RequestTooLarge(
                        f"The request body is larger than the {limit}-byte limit."
                    )
                if budget is not None:
                    budget.take(len(part))
                size += len(part)
                received.append(part)
        finally:
            if budget is not None:
                budget.give(size)
        return b"".join(received)

    async def respond(
        self, endpoint: Endpoint, request: Request, gone: asyncio.Future[Any]
    ) -> Response | StreamResponse | None:
        """The handler's response, or its error rendered; None if the client left (`gone`)."""
        try:
            return await unless_disconnected(self._handle(endpoint, request), gone)
        except GatewayError as exc:
            return error_response(exc, endpoint.dialect, request.request_id)
        except Exception:
            log.exception(
                "unhandled error in %s %s (%s)", request.method, request.path, request.request_id
            )
            return error_response(
                GatewayError("Internal error."), endpoint.dialect, request.request_id
            )

    async def _handle(
        self, endpoint: Endpoint, request: Request
    ) -> Response | StreamResponse | None:
        await self.turns.take()
        return await endpoint.handler(request)


def error_response(exc: GatewayError, dialect: Dialect, request_id: str) -> Response:
    """`exc` as a response in the client's dialect (OpenAI or Anthropic)."""
    if dialect == "anthropic":
        status, payload = to_anthropic(exc)
        payload["request_id"] = request_id  # Anthropic's error bodies carry it too (§2.6)
    else:
        status, payload = to_openai(exc)
    headers = [*exc.headers(), (b"request-id", request_id.encode())]
    return Response(status, orjson.dumps(payload), headers)


def response_headers(response: Response | StreamResponse, request_id: str) -> Headers:
    """Every header a response goes out with."""
    if isinstance(response, StreamResponse):
        return stream_headers(response.headers, request_id, response.content_type)
    return [
        (b"content-type", response.content_type),
        (b"x-request-id", request_id.encode()),
        *response.headers,
    ]


def stream_headers(
    extra: Headers, request_id: str, content_type: bytes = b"text/event-stream"
) -> Headers:
    """Every header an event stream goes out with."""
    return [
        (b"content-type", content_type),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        (b"x-request-id", request_id.encode()),
        *extra,
    ]


async def unless_disconnected(awaitable: Awaitable[T], gone: asyncio.Future[Any]) -> T | None:
    """Await in this task, cancelling it if the client disconnects (`gone` ends): None then.

    The cancellation (its message: endings.CLIENT_LEFT) reaches whatever is awaited — an upstream
    request, a stream being written — which closes it. Running in this task rather than a new
    one keeps a request's task count low.
    """
    task = asyncio.current_task()
    assert task is not None

    def cancel(_: asyncio.Future[Any]) -> None:
        if not gone.cancelled():
            task.cancel(CLIENT_LEFT)

    gone.add_done_callback(cancel)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if gone.done() and not gone.cancelled() and task.uncancel() == 0:
            return None  # the client left; nobody is waiting for an answer
        raise
    finally:
        gone.remove_done_callback(cancel)


async def write_stream(
    response: StreamResponse,
    write: Callable[[bytes], Awaitable[None]],
    gone: asyncio.Future[Any],
    request_id: str,
    gate: WriteGate | None = None,
) -> None:
    """Write the stream's parts with `write`, stopping at once if the client goes (`gone`),
    and holding back while `gate` says the client has too much unread."""
    try:
        await unless_disconnected(_pump(response.body, write, gate or _OPEN), gone)
    except Exception as exc:  # the body encoders report their own failures in-band
        log.debug("stream %s ended by the transport: %r", request_id, exc)
    finally:
        gone.cancel()
        if response.on_close is not None:
            response.on_close()


async def _pump(
    body: AsyncIterator[bytes], write: Callable[[bytes], Awaitable[None]], gate: WriteGate
) -> None:
    # Per part: an addition and a comparison; the gate is asked only every so many bytes.
    sent = 0
    ask_at = gate.first
    try:
        async for part in body:
            await write(part)
            sent += len(part)
            if sent > ask_at:
                ask_at = await gate.wait(sent)
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


_OPEN = WriteGate()
