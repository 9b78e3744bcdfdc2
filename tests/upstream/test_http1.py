"""callmissed.upstream.http1 against real servers on 127.0.0.1, under asyncio and uvloop.

aiohttp.web serves the well-behaved cases; raw asyncio servers play the odd upstreams.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from callmissed.upstream.http1 import Client, Disconnected
from tests.conftest import free_port
from tests.test_http2 import self_signed

Run = Callable[[Coroutine[Any, Any, None]], None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Raw = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request) -> Run:
    return asyncio.run if request.param == "asyncio" else uvloop.run


@asynccontextmanager
async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """An aiohttp app answering every path with `handler`; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_raw(handle: Raw) -> AsyncIterator[str]:
    """A bare TCP server: `handle` gets each connection and speaks (or mangles) HTTP itself."""
    running: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)
        try:
            await handle(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and Content-Length body, or b"" once the client hung up."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    return head + await reader.readexactly(length)


def client(url: str, **options: Any) -> Client:
    options.setdefault("connect_timeout", 5.0)
    options.setdefault("read_timeout", 5.0)
    return Client(url, **options)


async def peer_port(request: web.Request) -> web.Response:
    assert request.transport is not None
    return web.Response(text=str(request.transport.get_extra_info("peername")[1]))


async def get(http: Client, path: str = "/") -> bytes:
    response = await http.send("GET", path, {})
    return await response.read()


def test_a_content_length_body_is_read_whole_and_the_request_arrives_as_sent(run: Run):
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs, dict(request.headers), await request.read()))
        return web.Response(body=b"x" * 10_000, headers={"Retry-After": "7"})

    async def main() -> None:
        async with serve(echo) as url:
            http = client(url)
            response = await http.send("POST", "/v1/chat?a=1", {"Authorization": "Bearer k"}, b"{}")
            assert (response.status, response.http_version) == (200, "HTTP/1.1")
            assert response.header("retry-after") == "7"
            assert await response.read() == b"x" * 10_000
            await http.close()
        method, path, headers, body = seen[0]
        assert (method, path, body) == ("POST", "/v1/chat?a=1", b"{}")
        assert headers["Authorization"] == "Bearer k"
        assert headers["Host"] == url.removeprefix("http://")
        assert headers["Content-Length"] == "2"
        assert "Accept-Encoding" not in headers

    run(main())


def test_a_chunked_body_is_handed_on_piece_by_piece(run: Run):
    received = [asyncio.Event() for _ in range(3)]

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n, event in enumerate(received):
            await response.write(f"data: {n}\n\n".encode())
            await event.wait()  # the client has the piece before the next is sent
        await response.write_eof()
        return response

    async def main() -> None:
        async with serve(trickle) as url:
            http = client(url)
            response = await http.send("GET", "/", {})
            pieces = []
            async with asyncio.timeout(5):
                async for piece in response.aiter_bytes():
                    pieces.append(piece)
                    received[len(pieces) - 1].set()
            assert pieces == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
            await http.close()

    run(main())


def test_sequential_requests_reuse_one_connection(run: Run):
    async def main() -> None:
        async with serve(peer_port) as url:
            http = client(url)
            first, second = await get(http), await get(http)
            assert first == second
            both = await asyncio.gather(get(http), get(http))
            assert first in both  # the idle one served one of them; a second was opened
            await http.close()

    run(main())


def test_a_connection_the_server_closed_while_idle_is_not_used(run: Run):
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await asyncio.sleep(0.05)
        writer.close()  # as a server whose keep-alive timeout ran out

    async def main() -> None:
        async with serve_raw(answer_once) as url:
            http = client(url)
            assert await get(http) == b"ok"
            await asyncio.sleep(0.2)
            assert await get(http) == b"ok"
            await http.close()

    run(main())


async def drop_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one request per connection, then drops the next one it reads unanswered."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await read_request(reader)  # it closed just as this one was sent: never answered
    writer.close()


def test_a_request_dropped_on_a_connection_reused_after_a_pause_is_retried_once(run: Run):
    async def main() -> None:
        async with serve_raw(drop_second) as url:
            http = client(url, stale_after=0.2)
            assert await get(http) == b"ok"
            await asyncio.sleep(0.3)  # long enough for an upstream's idle timeout to race us
            assert await get(http) == b"ok"
            await http.close()

    run(main())


def test_a_request_dropped_on_a_connection_reused_at_once_is_not_sent_twice(run: Run):
    async def main() -> None:
        async with serve_raw(drop_second) as url:
            http = client(url, stale_after=10.0)
            assert await get(http) == b"ok"
            with pytest.raises(Disconnected):
                await get(http)  # the upstream read it: a POST must not be repeated
            await http.close()

    run(main())


def test_a_stream_released_before_its_terminator_keeps_its_connection(run: Run):
    async def late_terminator(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = str(writer.get_extra_info("peername")[1]).encode()
        while await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n" % (len(port), port))
            await writer.drain()
            await asyncio.sleep(0.05)  # vLLM and friends end the chunked body in a later write
            writer.write(b"0\r\n\r\n")

    async def main() -> None:
        async with serve_raw(late_terminator) as url:
            http = client(url)
            first = await http.send("POST", "/", {})
            port = await first.receive()
            first.release()  # all its content is in; the terminator is still on its way
            await asyncio.sleep(0.2)
            second = await http.send("POST", "/", {})
            assert await second.receive() == port
            second.close()
            await http.close()

    run(main())


def test_a_request_that_fails_on_a_fresh_connection_is_not_retried(run: Run):
    connections = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.close()

    async def main() -> None:
        async with serve_raw(drop) as url:
            http = client(url)
            with pytest.raises(Disconnected):
                await get(http)
            assert connections == 1
            await http.close()

    run(main())


def test_connection_close_responses_do_not_go_back_to_the_pool(run: Run):
    async def closing(request: web.Request) -> web.Response:
        response = await peer_port(request)
        response.force_close()
        return response

    async def main() -> None:
        async with serve(closing) as url:
            http = client(url)
            first = await http.send("GET", "/", {})
            assert first.header("connection") == "close"
            port = await first.read()
            assert await get(http) != port
            await http.close()

    run(main())


def test_a_connection_idle_past_keepalive_timeout_is_closed(run: Run):
    async def main() -> None:
        async with serve(peer_port) as url:
            http = client(url, keepalive_timeout=0.1)
            first = await get(http)
            await asyncio.sleep(0.3)
            assert await get(http) != first
            await http.close()

    run(main())


def test_a_response_closed_mid_body_closes_its_connection(run: Run):
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        assert request.transport is not None
        await response.write(str(request.transport.get_extra_info("peername")[1]).encode())
        await asyncio.sleep(10)
        return response

    async def main() -> None:
        async with serve(endless) as url:
            http = client(url)
            response = await http.send("GET", "/", {})
            port = await anext(response.aiter_bytes())
            response.close()
            with pytest.raises(Disconnected):
                await response.read()
            again = await http.send("GET", "/", {})
            assert await anext(again.aiter_bytes()) != port
            again.close()
            await http.close()

    run(main())


@pytest.mark.parametrize("framing", ["Content-Length: 100", "Transfer-Encoding: chunked"])
def test_a_server_that_dies_mid_body_makes_the_read_raise(run: Run, framing: str):
    async def die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b"a\r\n0123456789\r\n" if "chunked" in framing else b"0123456789"
        writer.write(f"HTTP/1.1 200 OK\r\n{framing}\r\n\r\n".encode() + body)
        await asyncio.sleep(0.05)
        writer.close()

    async def main() -> None:
        async with serve_raw(die) as url:
            http = client(url)
            response = await http.send("GET", "/", {})
            pieces = []
            with pytest.raises(ConnectionError):
                async for piece in response.aiter_bytes():
                    pieces.append(piece)
            assert pieces == [b"0123456789"]
            with pytest.raises(ConnectionError):
                await get(http)
            await http.close()

    run(main())


def test_a_body_without_a_length_ends_with_the_connection(run: Run):
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async def main() -> None:
        async with serve_raw(until_close) as url:
            http = client(url)
            assert await get(http) == b"all of it"
            await http.close()

    run(main())


def test_a_refused_connection_raises_at_once(run: Run):
    async def main() -> None:
        http = client(f"http://127.0.0.1:{free_port()}")
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            await get(http)
        assert time.monotonic() - started < 1
        await http.close()

    run(main())


def test_an_upstream_that_goes_quiet_times_out(run: Run):
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await read_request(reader)  # until the client hangs up
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await read_request(reader)
        writer.close()

    async def main() -> None:
        async with serve_raw(silent) as url:
            http = client(url, read_timeout=0.2)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await get(http)
            assert 0.15 < time.monotonic() - started < 1
            await http.close()
        async with serve_raw(stall) as url:
            http = client(url, read_timeout=0.2)
            response = await http.send("GET", "/", {})
            reads = response.aiter_bytes()
            assert await anext(reads) == b"hi"
            with pytest.raises(TimeoutError):
                await anext(reads)
            await http.close()

    run(main())


def test_https_with_a_private_ca(run: Run, tmp_path: Path):
    ca, cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def main() -> None:
        async with serve(peer_port, tls) as url:
            http = client(url, ca_file=str(ca))
            assert await get(http) == await get(http)
            await http.close()
            untrusting = client(url)
            with pytest.raises(ssl.SSLCertVerificationError):
                await get(untrusting)
            await untrusting.close()

    run(main())


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_is_decoded(run: Run, encoding: str):
    text = b"hello " * 5000
    packed = gzip.compress(text) if encoding == "gzip" else zlib.compress(text)

    async def compressed(request: web.Request) -> web.Response:
        return web.Response(body=packed, headers={"Content-Encoding": encoding})

    async def main() -> None:
        async with serve(compressed) as url:
            http = client(url)
            assert await get(http) == text
            assert await get(http) == text  # the connection was fit for reuse
            await http.close()

    run(main())


@pytest.mark.parametrize("chunked", [False, True])
def test_a_large_body_read_slowly_arrives_intact(run: Run, chunked: bool):
    body = os.urandom(6 * 1024 * 1024)

    async def large(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body)
        response = web.StreamResponse()
        await response.prepare(request)
        for start in range(0, len(body), 100_000):
            await response.write(body[start : start + 100_000])
        await response.write_eof()
        return response

    async def main() -> None:
        async with serve(large) as url:
            http = client(url)
            response = await http.send("GET", "/", {})
            pieces = []
            async for piece in response.aiter_bytes():
                pieces.append(piece)
                await asyncio.sleep(0.002)  # a slow reader: the socket is paused meanwhile
            assert b"".join(pieces) == body
            assert max(map(len, pieces)) <= 1024 * 1024  # it did not all pile up unread
            assert await get(http) == body
            await http.close()

    run(main())


def test_warm_opens_connections_that_requests_then_use(run: Run):
    accepted = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        while await read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        writer.close()

    async def main() -> None:
        async with serve_raw(keep_alive) as url:
            http = client(url)
            await http.warm(2)
            await asyncio.sleep(0.05)
            assert accepted == 2
            await http.warm(2)  # already warm: nothing more to open
            assert list(await asyncio.gather(get(http), get(http))) == [b"ok", b"ok"]
            await asyncio.sleep(0.05)
            assert accepted == 2
            await http.close()

    run(main())
