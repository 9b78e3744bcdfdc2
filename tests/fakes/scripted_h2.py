"""The scripted upstream (tests/fakes/scripted.py) over HTTP/2 with TLS, as https vendors are
reached: ALPN offers only `h2`, so a client that does not negotiate it fails its handshake.

Built on the `h2` state machine over an asyncio.Protocol, each request's answer played by a
task of its own; flow control is honoured, so large bodies wait for the client's window.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error

from tests.fakes.scripted import Abort, Answer, Scripted, wait_for_part

__all__ = ["serve_h2"]


@asynccontextmanager
async def serve_h2(
    script: Callable[[str, int], Answer], cert: Path, key: Path
) -> AsyncIterator[Scripted]:
    """Play `script` over HTTP/2 and TLS (the certificate chain `cert`, its `key`)."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    tls.set_alpn_protocols(["h2"])
    scripted = Scripted("", script)
    connections: set[_Connection] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(scripted, connections), "127.0.0.1", 0, ssl=tls
    )
    scripted.url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield scripted
    finally:
        server.close()
        for conn in list(connections):
            conn.transport.abort()
        await asyncio.sleep(0)
        await server.wait_closed()


class _Connection(asyncio.Protocol):
    transport: asyncio.Transport

    def __init__(self, scripted: Scripted, connections: set[_Connection]) -> None:
        self._scripted = scripted
        self._connections = connections
        self._h2 = H2Connection(H2Configuration(client_side=False))
        self._paths: dict[int, str] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._window = asyncio.Event()  # the client granted more room to send
        self._lost: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._port = transport.get_extra_info("peername")[1]
        self._connections.add(self)
        self._h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if not self._lost.done():
            self._lost.set_result(None)
        for task in self._tasks.values():
            task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except H2Error:
            self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._paths[event.stream_id] = dict(event.headers)[b":path"].decode()
            elif isinstance(event, DataReceived):
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                task = asyncio.ensure_future(self._answer(event.stream_id))
                self._tasks[event.stream_id] = task
            elif isinstance(event, StreamReset):
                self._reset(event.stream_id)
            elif isinstance(event, WindowUpdated):
                self._window.set()
            elif isinstance(event, ConnectionTerminated):
                self.transport.close()
        self._flush()

    def _reset(self, stream_id: int) -> None:
        task = self._tasks.pop(stream_id, None)
        if task is not None:  # the client abandoned an answer still being played
            task.cancel()
            self._scripted.cancelled.set()

    async def _answer(self, stream_id: int) -> None:
        answer = self._scripted.script(self._paths.pop(stream_id), self._port)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        headers = [(":status", str(answer.status)), *answer.headers]
        if answer.sized:
            size = sum(len(part) for part in answer.parts if isinstance(part, bytes))
            headers.append(("content-length", str(size)))
        self._h2.send_headers(stream_id, headers)
        self._flush()
        for part in answer.parts:
            if isinstance(part, bytes):
                await self._send(stream_id, part)
            elif isinstance(part, Abort):
                self.transport.abort()
                return
            else:
                await wait_for_part(part, self._lost)
        self._h2.end_stream(stream_id)
        self._flush()
        self._tasks.pop(stream_id, None)
        self._scripted.ended.set()

    async def _send(self, stream_id: int, data: bytes) -> None:
        while data:
            room = min(
                self._h2.local_flow_control_window(stream_id), self._h2.max_outbound_frame_size
            )
            if room <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            self._h2.send_data(stream_id, data[:room])
            data = data[room:]
            self._flush()

    def _flush(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self._h2.data_to_send())
