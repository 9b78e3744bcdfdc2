"""A lean HTTP/1.1 client for upstreams: asyncio.Protocol plus llhttp (httptools), pooled.

One `Client` per origin keeps idle keep-alive connections and reuses the most recent first.
Per request it costs one `transport.write`, one `Response` and a future per wait for bytes:
no tasks, no timers per read (the read timeout is one lazily re-armed handle per connection).
Bodies are handed on as they arrive, never collected to fill a buffer, so SSE passes through.
Failures are plain exceptions: `OSError`s (`ConnectionError` when the upstream broke the
connection, `BodyTooLarge` when a gzip/deflate body inflates past `max_inflated`) and
`TimeoutError`; callers map them to their own errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["BodyTooLarge", "Client", "Disconnected", "Inflater", "ProtocolError", "Response"]

_HIGH_WATER = 256 * 1024  # buffered unread body bytes before the socket stops being read
_SWEEP_EVERY = 5.0  # seconds between looks for connections idle past keepalive_timeout
_LINGER = 1.0  # seconds a released response may take to end before its connection is closed
_KEPT = frozenset(
    (b"connection", b"content-encoding", b"content-length", b"retry-after", b"transfer-encoding")
)
_VERSIONS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}


class Disconnected(ConnectionError):
    """The connection ended before the response did."""


class ProtocolError(ConnectionError):
    """The upstream sent something that is not an HTTP/1.1 response."""


class BodyTooLarge(ProtocolError):
    """A compressed body inflated past the limit it was given."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the body inflates to more than {limit} bytes")
        self.limit = limit


class Inflater:
    """Decodes a gzip or deflate (zlib) body, refusing to produce more than `limit` bytes.

    A compressed body is no bigger on the wire for being huge inflated (deflate reaches about
    1,000:1), so its inflated size is bounded here rather than by what the socket delivers.
    One read's worth of input can inflate to the whole limit, so it comes out STEP bytes at a
    time (`pending` says more of it is due): the reader yields to the event loop between
    steps. And past FREE_BYTES, a body may inflate to at most MAX_RATIO times the compressed
    bytes it came from: real answers compress less (an event stream compressed whole, its
    envelopes alike, about 170:1; JSON far less), so a bomb is refused after a few
    milliseconds of work rather than after the limit's worth.
    """

    STEP = 256 * 1024
    FREE_BYTES = 4 * 1024 * 1024
    MAX_RATIO = 300  # deflate tops out near 1,032:1; an event stream compressed whole, ~170:1

    __slots__ = ("_consumed", "_flushed", "_room", "_tail", "_zlib", "limit")

    def __init__(self, limit: int) -> None:
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or a zlib header
        self._room = self.limit = limit
        self._tail = b""
        self._consumed = 0  # compressed bytes inflated so far
        self._flushed = False

    async def pull(self, read: Callable[[], Awaitable[bytes]]) -> bytes:
        """The body's next inflated bytes, reading compressed ones with `read` (b"" at their end)
        only once none are pending, yielding to the loop between steps; b"" at the body's end."""
        while True:
            if self._tail:
                await asyncio.sleep(0)  # the loop's other work, between steps
                data = self.more()
            elif compressed := await read():
                data = self.inflate(compressed)
            elif self._flushed:
                return b""
            else:
                self._flushed = True
                return self.flush()
            if data:  # a step may inflate to nothing (a gzip header alone): not the end
                return data

    @property
    def pending(self) -> bool:
        """Input taken by inflate() is not all inflated yet: more() gives its next step."""
        return bool(self._tail)

    def inflate(self, data: bytes) -> bytes:
        """The first step of `data` inflated (call only when nothing is pending)."""
        self._tail = data
        return self.more()

    def more(self) -> bytes:
        room, tail = self._room, self._tail
        try:
            # One byte past the room, when the room is the smaller: enough to know it is crossed.
            out = self._zlib.decompress(tail, self.STEP if room >= self.STEP else room + 1)
        except zlib.error as exc:
            raise ProtocolError(f"a malformed compressed body: {exc}") from None
        if len(out) > room:
            raise BodyTooLarge(self.limit)
        self._tail = self._zlib.unconsumed_tail
        self._consumed += len(tail) - len(self._tail)
        self._room = room - len(out)
        inflated = self.limit - self._room
        if inflated > self.FREE_BYTES and inflated > self._consumed * self.MAX_RATIO:
            raise BodyTooLarge(inflated)  # a bomb: it would go on at this ratio to the limit
        return out

    def flush(self) -> bytes:
        """What is left at the body's end (call once nothing is pending, so it is little)."""
        try:
            out = self._zlib.flush()
        except zlib.error as exc:
            raise ProtocolError(f"a malformed compressed body: {exc}") from None
        if len(out) > self._room:
            raise BodyTooLarge(self.limit)
        self._room -= len(out)
        return out


class Response:
    """Status and headers are in; the body follows through `aiter_bytes()` or `read()`."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_decoder",
        "_done",
        "_error",
        "_size",
        "_waiter",
        "begun",
        "connect_s",
        "headers",
        "http_version",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: Inflater | None = None
        self.begun = False  # a byte of the response arrived: the upstream saw the request
        self.connect_s = 0.0  # seconds spent opening its connection (0.0: a pooled one)
        self.status = 0
        self.http_version = "HTTP/1.1"
        self.headers: dict[bytes, bytes] = {}  # lower-cased names, only those in _KEPT

    def header(self, name: str) -> str | None:
        value = self.headers.get(name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    async def receive(self) -> bytes:
        """The body's next bytes (all that arrived since the last call); b"" at its end."""
        if self._decoder is None:
            return await self._receive_raw()
        try:
            return await self._decoder.pull(self._receive_raw)
        except ProtocolError as exc:
            if self._conn is not None:
                self._conn.fail(exc)
            raise

    async def _receive_raw(self) -> bytes:
        while not self._chunks:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while data := await self.receive():
            yield data

    async def read(self) -> bytes:
        parts = []
        while data := await self.receive():
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        """Done with the response; an unfinished body closes its connection."""
        if self._conn is not None:
            self._conn.fail(Disconnected("the response was closed"))

    def release(self) -> None:
        """Done with a response whose content is complete though its body may not have ended
        yet (a stream's `[DONE]` usually comes before the chunked terminator): the connection
        reads the rest for up to a second and is then reused, rather than closed."""
        if self._conn is not None:
            self._conn.linger(self)

    async def _until_headers(self) -> None:
        try:
            while not self.status:
                if self._error is not None:
                    raise self._error
                await self._wait()
        except BaseException:
            self.close()
            raise

    async def _wait(self) -> None:
        conn = self._conn
        if conn is None:
            raise Disconnected("the response was closed")
        self._waiter = waiter = conn.loop.create_future()
        conn.arm()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, body: bytes) -> None:
        self._chunks.append(body)
        self._size += len(body)
        conn = self._conn
        if self._size > _HIGH_WATER and conn is not None and not conn.paused:
            conn.pause()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._conn = None
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._conn = None
        self._wake()


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_parser",
        "_pool",
        "_timer",
        "closed",
        "idle_since",
        "last_data",
        "loop",
        "paused",
        "response",
        "transport",
    )
    transport: asyncio.Transport

    def __init__(self, pool: Client) -> None:
        self._pool = pool
        self.loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self._timer: asyncio.TimerHandle | None = None
        self.response: Response | None = None
        self.closed = self.paused = False
        self.idle_since = self.last_data = 0.0

    def start(self, request: bytes) -> Response:
        self.response = response = Response(self)
        if self.closed:  # it was lost between connecting and now
            self.fail(Disconnected("the upstream closed the connection"))
            return response
        self.last_data = self.loop.time()
        self.transport.write(request)
        return response

    def close(self) -> None:
        self.closed = True
        self.transport.close()

    def linger(self, response: Response) -> None:
        self.loop.call_later(_LINGER, self._end_lingering, response)

    def _end_lingering(self, response: Response) -> None:
        if self.response is response:  # its message never ended
            self.fail(Disconnected("the response did not end"))

    def pause(self) -> None:
        self.paused = True
        self.transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        self.last_data = self.loop.time()  # time spent paused is not the upstream's silence
        self.transport.resume_reading()

    def arm(self) -> None:
        """Make sure a waiting read fails once nothing arrived for read_timeout seconds."""
        if self._timer is None:
            self._timer = self.loop.call_at(self.last_data + self._pool.read_timeout, self._due)

    def _due(self) -> None:
        self._timer = None
        response = self.response
        if response is None or response._waiter is None:
            return
        if self.loop.time() < self.last_data + self._pool.read_timeout:
            self.arm()  # bytes came since it was armed
            return
        self.fail(TimeoutError(f"the upstream sent nothing for {self._pool.read_timeout} s"))

    def fail(self, error: BaseException) -> None:
        response, self.response = self.response, None
        if response is not None:
            response._fail(error)
        self.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(ProtocolError(f"malformed response: {exc}"))

    def eof_received(self) -> None:
        self.closed = True  # the transport closes itself; connection_lost ends any response

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        response, self.response = self.response, None
        if response is None:
            return
        headers = response.headers
        if (
            exc is None
            and response.status
            and not (b"content-length" in headers or b"transfer-encoding" in headers)
        ):
            response._finish()  # a body without a length ends when the connection does
        else:
            response._fail(exc or Disconnected("the upstream closed the connection"))

    # httptools callbacks (it looks up only those that exist)

    def on_message_begin(self) -> None:
        if self.response is None:
            raise ProtocolError("a response nobody asked for")
        self.response.begun = True

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _KEPT and self.response is not None:
            self.response.headers[name] = value

    def on_headers_complete(self) -> None:
        response = self.response
        status = self._parser.get_status_code()
        if response is None or status < 200:  # 1xx: an interim answer; the real one follows
            if response is not None:
                response.headers.clear()
            return
        version = self._parser.get_http_version()
        response.http_version = _VERSIONS.get(version) or f"HTTP/{version}"
        encoding = response.headers.get(b"content-encoding", b"").lower()
        if encoding in (b"gzip", b"deflate"):
            response._decoder = Inflater(self._pool.max_inflated)
        response.status = status
        response._wake()

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or not response.status:  # after a 1xx, or already closed
            return
        self.response = None
        response._finish()
        if self.closed or not self._parser.should_keep_alive():
            self.close()
            return
        if self.paused:
            self.resume()
        self.idle_since = self.last_data
        self._pool._release(self)


class Client:
    """Pooled HTTP/1.1 connections to one origin (scheme, host, port); no limit on their number.

    Built inside the running event loop that will use it.
    """

    def __init__(
        self,
        origin: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        ca_file: str | None = None,
        keepalive_timeout: float = 60.0,
        stale_after: float = 1.0,
        max_inflated: int = 32 * 1024 * 1024,
    ) -> None:
        """`max_inflated`: the most bytes a gzip/deflate body may inflate to (BodyTooLarge past
        it). `stale_after`: a kept-alive connection idle at least this long may have been closed
        by the upstream just as we reused it, so a request that then fails before any response
        byte is sent again, once. Sooner than that, the failure is the upstream's own (it read
        the request) and a POST is not repeated."""
        url = urlsplit(origin)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {origin}")
        tls = url.scheme == "https"
        self.loop = asyncio.get_running_loop()
        self.read_timeout = read_timeout
        self.max_inflated = max_inflated
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive_timeout
        self._stale_after = stale_after
        self._host = url.hostname
        self._port = url.port or (443 if tls else 80)
        name = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = name if url.port in (None, 443 if tls else 80) else f"{name}:{url.port}"
        self._ssl = ssl.create_default_context(cafile=ca_file) if tls else None
        self._idle: list[_Connection] = []  # most recently used last
        self._open: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    async def send(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Response:
        """Send the request; return once the response's status and headers are in."""
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {self._authority}\r\n"
            f"Content-Length: {len(body)}\r\n{lines}\r\n"
        )
        if head.count("\n") != len(headers) + 4 or head.count("\r") != len(headers) + 4:
            raise ValueError("a line break inside the request line or a header")
        request = head.encode("latin-1") + body
        conn = self._checkout()
        if conn is not None:
            idle = self.loop.time() - conn.idle_since
            response = conn.start(request)
            try:
                await response._until_headers()
                return response
            except ConnectionError:
                if response.begun or idle < self._stale_after:
                    raise
                # The upstream had closed this kept-alive connection before it read the request.
        began = time.perf_counter()
        response = (await self._connect()).start(request)
        response.connect_s = time.perf_counter() - began  # Server-Timing's `connect`
        await response._until_headers()
        return response

    async def warm(self, count: int) -> None:
        """Have `count` idle connections open (TCP and TLS handshakes done, no request sent)."""
        missing = count - len([conn for conn in self._idle if not conn.closed])
        opened = await asyncio.gather(
            *(self._connect() for _ in range(missing)), return_exceptions=True
        )
        for conn in opened:
            if isinstance(conn, BaseException):
                continue
            conn.idle_since = self.loop.time()
            self._release(conn)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.fail(Disconnected("the client was closed"))
            conn.transport.abort()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports report connection_lost

    async def _connect(self) -> _Connection:
        async with asyncio.timeout(self._connect_timeout):
            transport, conn = await self.loop.create_connection(
                lambda: _Connection(self),
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )
        conn.transport = transport  # uvloop can return before it calls connection_made
        self._open.add(conn)
        return conn

    def _checkout(self) -> _Connection | None:
        idle = self._idle
        stale = self.loop.time() - self._keepalive
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport.is_closing():
                continue
            if conn.idle_since < stale:
                conn.close()
                continue
            return conn
        return None

    def _release(self, conn: _Connection) -> None:
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(min(_SWEEP_EVERY, self._keepalive), self._sweep)

    def _sweep(self) -> None:
        stale = self.loop.time() - self._keepalive
        kept = []
        for conn in self._idle:
            if conn.idle_since >= stale and not conn.closed:
                kept.append(conn)
            elif not conn.closed:
                conn.close()
        self._idle = kept
        self._sweeper = None
        if kept:
            self._sweeper = self.loop.call_later(min(_SWEEP_EVERY, self._keepalive), self._sweep)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
