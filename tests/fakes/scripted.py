"""Scripted upstreams for the transport contract (tests/upstream/test_transport_contract.py).

Each test gives the server a script: for a request's path and the client's port (which tells
connections apart), the answer to play, part by part: bytes to send, seconds to wait, an
asyncio.Event to wait for, or ABORT to drop the connection there. The same script is played over
plain HTTP/1.1 (here) and over HTTP/2 with TLS and ALPN (tests/fakes/scripted_h2.py), in the
test's own event loop, so a test can hold an answer until its client has read a part.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ABORT", "Abort", "Answer", "Part", "Scripted", "serve_http1", "wait_for_part"]


class Abort:
    """Drop the connection here, mid-answer."""


ABORT = Abort()
Part = bytes | float | asyncio.Event | Abort


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    parts: tuple[Part, ...] = ()
    sized: bool = False  # a Content-Length (the byte parts' sum), not a body of unknown length
    delay: float = 0.0  # seconds before the status and headers go out


@dataclass
class Scripted:
    """A running scripted server: its URL, and what its clients did."""

    url: str
    script: Callable[[str, int], Answer]
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)  # an answer abandoned
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # an answer played to its end


async def wait_for_part(part: asyncio.Event | float, gone: asyncio.Future[Any]) -> bool:
    """Wait out one script part; False if the client went away (`gone` completed) first."""
    waiting = asyncio.ensure_future(
        part.wait() if isinstance(part, asyncio.Event) else asyncio.sleep(part)
    )
    done, _ = await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    return waiting in done


@asynccontextmanager
async def serve_http1(script: Callable[[str, int], Answer]) -> AsyncIterator[Scripted]:
    """Play `script` over plain HTTP/1.1 with keep-alive on 127.0.0.1."""
    running: set[asyncio.Task[None]] = set()
    scripted = Scripted("", script)

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        running.add(task)
        port = writer.get_extra_info("peername")[1]
        try:
            while (path := await _read_request(reader)) is not None:
                if not await _play(scripted, script(path, port), reader, writer):
                    return
        except ConnectionError:
            scripted.cancelled.set()
        except asyncio.CancelledError:
            return  # the server is closing; a cancelled handler would be logged as an error
        finally:
            writer.close()

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    scripted.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield scripted
    finally:
        server.close()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    """One request's path (its body read and dropped), or None once the client hung up."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:")),
        0,
    )
    await reader.readexactly(length)
    return lines[0].split(" ")[1]


async def _play(
    scripted: Scripted, answer: Answer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Write one answer; False if the connection must end (dropped, or the client left)."""
    if answer.delay:
        await asyncio.sleep(answer.delay)
    size = sum(len(part) for part in answer.parts if isinstance(part, bytes))
    framing = f"Content-Length: {size}" if answer.sized else "Transfer-Encoding: chunked"
    lines = "".join(f"{name}: {value}\r\n" for name, value in answer.headers)
    writer.write(f"HTTP/1.1 {answer.status} Scripted\r\n{lines}{framing}\r\n\r\n".encode())
    gone = asyncio.ensure_future(reader.read(1))  # b"": the client closed the connection
    try:
        for part in answer.parts:
            if isinstance(part, bytes):
                writer.write(part if answer.sized else b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            elif isinstance(part, Abort):
                writer.transport.abort()
                return False
            elif not await wait_for_part(part, gone):
                scripted.cancelled.set()
                return False
        if not answer.sized:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        scripted.ended.set()
        return True
    finally:
        gone.cancel()
        with suppress(asyncio.CancelledError, ConnectionError):
            await gone
