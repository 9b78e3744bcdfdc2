"""Every upstream transport keeps one contract (callmissed/upstream/contract.py), checked against
real loopback servers: http1 over plain HTTP/1.1, http2 over HTTP/2 with TLS and ALPN (a CA made
for the test session), and the in-process simulator where a case applies to it.

The servers play scripts (tests/fakes/scripted.py, scripted_h2.py); answers that echo the
client's port tell whether two requests shared a connection. On uvloop, as the gateway runs.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from callmissed.errors import (
    UpstreamBodyTooLarge,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from callmissed.providers import UpstreamRequest
from callmissed.settings import (
    Limits,
    ModelSettings,
    ProviderSettings,
    Route,
    Settings,
    SimProfile,
    Timeouts,
)
from callmissed.upstream.contract import Peer, Response, Transport
from callmissed.upstream.http1 import Inflater
from callmissed.upstream.http1_transport import Http1Transport
from callmissed.upstream.http2 import Http2Transport
from callmissed.upstream.simulator import SimulatorTransport
from tests.conftest import free_port
from tests.fakes.scripted import ABORT, Answer, Scripted, serve_http1
from tests.fakes.scripted_h2 import serve_h2
from tests.test_http2 import self_signed

NETWORK = ["http1", "http2"]
VERSIONS = {"http1": "HTTP/1.1", "http2": "HTTP/2.0", "simulator": "in-process"}
INFLATED_LIMIT = 1024 * 1024  # limits.upstream_body_bytes, for the bombs
PEER = Peer("Contract upstream", "contract")
Script = Callable[[str, int], Answer]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return self_signed(tmp_path_factory.mktemp("contract-tls"))


def settings() -> Settings:
    # The read timeout is the longest total timeout plus a second: 1.3 s.
    model = ModelSettings(
        "sim/contract",
        (Route("sim", "contract"),),
        "passthrough",
        simulate=SimProfile(ttfb_ms=0, total_ms=0, tokens=3),
    )
    return Settings(
        providers={},
        models={model.name: model},
        reasoning_policies={},
        timeouts=Timeouts(connect=2.0, total=0.3),
        limits=Limits(upstream_body_bytes=INFLATED_LIMIT),
    )


def transport(kind: str, url: str, ca: Path) -> Transport:
    if kind == "http1":
        return Http1Transport(ProviderSettings("contract", "openai", url), settings(), PEER)
    provider = ProviderSettings("contract", "openai", url, ca_file=str(ca))
    return Http2Transport(provider, settings(), PEER)


@asynccontextmanager
async def rig(
    kind: str, script: Script, tls: tuple[Path, Path, Path]
) -> AsyncIterator[tuple[Transport, Scripted]]:
    """A scripted server speaking `kind`'s protocol, and a transport to it."""
    serving = serve_http1(script) if kind == "http1" else serve_h2(script, tls[1], tls[2])
    async with serving as server:
        client = transport(kind, server.url, tls[0])
        try:
            yield client, server
        finally:
            await client.close()


def run(main: Coroutine[Any, Any, None]) -> None:
    uvloop.run(asyncio.wait_for(main, 30))


def request(url: str, path: str = "/", body: bytes = b"{}") -> UpstreamRequest:
    return UpstreamRequest(url + path, {"content-type": "application/json"}, body, "contract")


def simulated(**fields: Any) -> UpstreamRequest:
    body = orjson.dumps({"model": "contract", "messages": [], **fields})
    return UpstreamRequest("sim://v1/chat/completions", {}, body, "contract")


async def body_of(response: Response) -> bytes:
    parts = []
    while data := await response.receive():
        parts.append(data)
    return b"".join(parts)


def port_answer(path: str, port: int) -> Answer:
    return Answer(parts=(str(port).encode(),), sized=True)


# Status, headers, body


@pytest.mark.parametrize("kind", NETWORK)
def test_status_and_headers_arrive_before_the_body(kind: str, tls):
    gate = asyncio.Event()

    def script(path: str, port: int) -> Answer:
        return Answer(429, (("retry-after", "7"),), (gate, b'{"error":"slow down"}'))

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            response = await client.send(request(server.url))  # the body is still held back
            assert (response.status, response.retry_after) == (429, 7.0)
            assert response.http_version == VERSIONS[kind]
            gate.set()
            assert await response.read(1024) == (b'{"error":"slow down"}', False)

    run(main())


def test_the_simulator_answers_with_status_and_headers():
    async def main() -> None:
        response = await SimulatorTransport(settings(), PEER).send(simulated())
        assert (response.status, response.retry_after) == (200, None)
        assert response.http_version == VERSIONS["simulator"]
        body, more = await response.read(64 * 1024)
        assert not more and orjson.loads(body)["object"] == "chat.completion"

    run(main())


@pytest.mark.parametrize("kind", NETWORK)
def test_a_streamed_body_is_handed_on_as_it_arrives(kind: str, tls):
    received = [asyncio.Event() for _ in range(3)]

    def script(path: str, port: int) -> Answer:
        parts: list[bytes | asyncio.Event] = []
        for n, event in enumerate(received):
            parts += [f"data: {n}\n\n".encode(), event]  # the next waits for this one's arrival
        return Answer(headers=(("content-type", "text/event-stream"),), parts=tuple(parts))

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            response = await client.send(request(server.url))
            for n, event in enumerate(received):
                assert await response.receive() == f"data: {n}\n\n".encode()
                event.set()
            assert await response.receive() == b""
            response.release()

    run(main())


def test_the_simulator_streams_its_events_and_then_ends():
    async def main() -> None:
        response = await SimulatorTransport(settings(), PEER).send(simulated(stream=True))
        events = [event async for event in _events(response)]
        assert events[-1] == b"data: [DONE]\n\n" and len(events) > 3
        assert await response.receive() == b""

    run(main())


async def _events(response: Response) -> AsyncIterator[bytes]:
    while data := await response.receive():
        yield data


# How a response ends: release() keeps the connection, close() cancels the request


@pytest.mark.parametrize("kind", NETWORK)
def test_release_before_the_body_ended_keeps_the_connection_for_the_next_request(kind: str, tls):
    def script(path: str, port: int) -> Answer:
        # The content, then (a moment later, as vLLM and friends do) the body's end.
        return (
            Answer(parts=(str(port).encode(), 0.05))
            if path == "/stream"
            else port_answer(path, port)
        )

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            first = await client.send(request(server.url, "/stream"))
            port = await first.receive()
            first.release()
            if kind == "http1":  # it reads the body's end on the same connection, then reuses it
                await asyncio.wait_for(server.ended.wait(), 5)
                await asyncio.sleep(0.05)  # for the client to read what the server wrote
            second = await client.send(request(server.url))
            assert await body_of(second) == port
            second.release()
            if kind == "http2":  # it reset the stream, the connection carrying on
                await asyncio.wait_for(server.cancelled.wait(), 5)
            else:
                assert not server.cancelled.is_set()

    run(main())


@pytest.mark.parametrize("kind", NETWORK)
def test_close_cancels_the_request_and_http1_does_not_reuse_its_connection(kind: str, tls):
    def script(path: str, port: int) -> Answer:
        return (
            Answer(parts=(str(port).encode(), 10.0, b"never"))
            if path == "/stream"
            else port_answer(path, port)
        )

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            first = await client.send(request(server.url, "/stream"))
            port = await first.receive()
            first.close()
            await asyncio.wait_for(server.cancelled.wait(), 5)  # the upstream saw it end
            second = await client.send(request(server.url))
            # HTTP/1.1 cancels by closing the connection; HTTP/2 resets only the stream.
            assert (await body_of(second) == port) is (kind == "http2")
            second.release()

    run(main())


# Failures: one set of errors, whichever transport


@pytest.mark.parametrize("kind", NETWORK)
def test_a_refused_connection_is_unreachable(kind: str, tls):
    async def main() -> None:
        scheme = "http" if kind == "http1" else "https"
        client = transport(kind, f"{scheme}://127.0.0.1:{free_port()}", tls[0])
        try:
            with pytest.raises(UpstreamUnreachable, match="could not reach Contract upstream"):
                await client.send(request(f"{scheme}://127.0.0.1:{free_port()}"))
        finally:
            await client.close()

    run(main())


@pytest.mark.parametrize("kind", NETWORK)
def test_a_server_that_drops_the_connection_mid_body_breaks_the_response(kind: str, tls):
    def script(path: str, port: int) -> Answer:
        return Answer(parts=(b"data: 0\n\n", 0.05, ABORT))

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            response = await client.send(request(server.url))
            assert await response.receive() == b"data: 0\n\n"
            with pytest.raises(UpstreamBroken) as broken:
                await response.receive()
            assert type(broken.value) is UpstreamBroken
            response.close()

    run(main())


@pytest.mark.parametrize("kind", NETWORK)
@pytest.mark.parametrize("when", ["before the headers", "mid-body"])
def test_an_upstream_silent_past_the_read_timeout_times_out(kind: str, when: str, tls):
    def script(path: str, port: int) -> Answer:
        if when == "before the headers":
            return Answer(parts=(b"late",), delay=5.0)
        return Answer(parts=(b"data: 0\n\n", 5.0, b"late"))

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            if when == "before the headers":
                with pytest.raises(UpstreamTimeout, match="did not answer in time"):
                    await client.send(request(server.url))
                return
            response = await client.send(request(server.url))
            assert await response.receive() == b"data: 0\n\n"
            with pytest.raises(UpstreamTimeout, match="stopped sending"):
                await response.receive()
            response.close()

    run(main())


@pytest.mark.parametrize("kind", NETWORK)
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_that_inflates_past_the_limit_is_refused(kind: str, encoding: str, tls):
    inflated = b"\0" * (INFLATED_LIMIT * 8)  # 8 MiB of zeros, a few KiB on the wire
    bomb = gzip.compress(inflated) if encoding == "gzip" else zlib.compress(inflated)

    def script(path: str, port: int) -> Answer:
        return Answer(headers=(("content-encoding", encoding),), parts=(bomb,), sized=True)

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            response = await client.send(request(server.url))
            with pytest.raises(UpstreamBodyTooLarge, match=f"inflates past {INFLATED_LIMIT}"):
                await response.read(len(inflated) + 1)
            response = await client.send(request(server.url))
            with pytest.raises(UpstreamBodyTooLarge):  # streamed, as it is bounded too
                await body_of(response)
            response.close()

    run(main())


@pytest.mark.parametrize("kind", NETWORK)
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_comes_out_a_bounded_step_at_a_time(kind: str, encoding: str, tls):
    """A few bytes on the wire may inflate to the whole limit: inflating it in one go would hold
    the event loop, and every other request on it, for as long (a deflate bomb's attack)."""
    inflated = b"\0" * (INFLATED_LIMIT - 1)  # within the limit, ~1 KiB on the wire
    packed = gzip.compress(inflated) if encoding == "gzip" else zlib.compress(inflated)

    def script(path: str, port: int) -> Answer:
        return Answer(headers=(("content-encoding", encoding),), parts=(packed,), sized=True)

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            response = await client.send(request(server.url))
            parts = []
            while part := await response.receive():
                parts.append(part)
            assert b"".join(parts) == inflated
            assert max(map(len, parts)) <= Inflater.STEP < len(inflated)

    run(main())


# Error bodies: read only so far, and the connection after them


@pytest.mark.parametrize("kind", NETWORK)
def test_an_error_body_is_read_only_up_to_the_limit_and_the_next_request_is_answered(kind, tls):
    def script(path: str, port: int) -> Answer:
        if path == "/error":  # a megabyte of error, the last part held back past the read
            return Answer(500, parts=(b"e" * 1024 * 1024, 10.0, b"never"))
        return port_answer(path, port)

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            response = await client.send(request(server.url, "/error"))
            assert response.status == 500
            assert await response.read(1024) == (b"e" * 1024, True)
            # read() ended the response: the rest was not waited for, the request was cancelled
            await asyncio.wait_for(server.cancelled.wait(), 5)
            second = await client.send(request(server.url))
            assert (await body_of(second)).isdigit()
            second.release()

    run(main())


@pytest.mark.parametrize("kind", NETWORK)
def test_an_error_body_read_whole_leaves_its_connection_for_the_next_request(kind, tls):
    def script(path: str, port: int) -> Answer:
        return Answer(503, parts=(str(port).encode(),), sized=True)

    async def main() -> None:
        async with rig(kind, script, tls) as (client, server):
            first = await client.send(request(server.url))
            port, more = await first.read(1024)
            assert first.status == 503 and not more
            first.close()  # as failover does after reading an error: nothing left to cancel
            await asyncio.sleep(0.05)
            second = await client.send(request(server.url))
            assert await second.read(1024) == (port, False)
            second.close()

    run(main())


def test_the_simulators_error_body_is_read_only_up_to_the_limit():
    async def main() -> None:
        embeddings = UpstreamRequest(
            "sim://v1/embeddings", {}, orjson.dumps({"input": ["hi"], "dimensions": 0}), "x"
        )
        response = await SimulatorTransport(settings(), PEER).send(embeddings)
        assert response.status == 400
        body, more = await response.read(10)
        assert len(body) == 10 and more
        response.close()

    run(main())


def test_more_streams_than_one_http2_connection_allows_go_over_another_connection(tls):
    """The scripted server allows 100 streams at once on a connection (h2's default, as many
    vendors do): 150 held open at once are all answered, over more than one connection."""
    release = asyncio.Event()

    def script(path: str, port: int) -> Answer:
        return Answer(parts=(str(port).encode(), release, b"."))

    async def main() -> None:
        async with rig("http2", script, tls) as (client, server):
            sending = [client.send(request(server.url)) for _ in range(150)]
            responses = await asyncio.wait_for(asyncio.gather(*sending), 10)
            ports = {await response.receive() for response in responses}
            release.set()
            for response in responses:
                assert await body_of(response) == b"."
                response.release()
            assert len(ports) >= 2

    run(main())
