"""A fast OTLP/HTTP trace receiver that keeps nothing: where the `otel` scenario's spans go.

A raw asyncio protocol on uvloop, loopback only, HTTP/1.1 keep-alive: it reads each request
whole (Content-Length) and answers 200 with an empty ExportTraceServiceResponse, so the
gateway's exporter pays the real cost of encoding and sending its batches and nothing more.
`GET /healthz` answers 200. Run: `python -m benchmarks.otlp_sink --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import uvloop

__all__ = ["main"]

_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) != -1:
            head = self._buffer[:end].lower()
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip() == b"content-length":
                    length = int(value)
            if len(self._buffer) < end + 4 + length:
                return  # the body is not all here yet
            self._buffer = self._buffer[end + 4 + length :]
            assert self._transport is not None
            self._transport.write(_OK)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Sink, "127.0.0.1", port)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(_serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
