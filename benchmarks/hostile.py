"""A hostile OpenAI-compatible upstream on 127.0.0.1, for `python -m benchmarks abuse`.

The requested model picks its behaviour: `error-body` (a 500 whose body is `--mb` MB),
`deflate-bomb` (a stream compressed with deflate that inflates to `--mb` MB), `sse-unterminated`
(one SSE event of `--mb` MB that never ends), `flood` (a stream of 100,000 tokens as fast as it
is read); anything else gets a short, well-formed stream. Run as
`python -m benchmarks.hostile PORT MB`; it stops when its parent's stdin closes.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import zlib

import orjson

__all__ = ["main"]

_MB = 1 << 20


def _chunk(text: str) -> bytes:
    payload = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    payload["choices"] = [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
    return b"data: " + orjson.dumps(payload) + b"\n\n"


_DONE = b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m","choices":[],'
_DONE += b'"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\ndata: [DONE]\n\n'
_SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mb: int) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        body = orjson.loads(await reader.readexactly(length)) if length else {}
        model = str(body.get("model", "")).rsplit("/", 1)[-1]
        await _BEHAVIOURS.get(model, _good)(writer, mb)
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def _good(writer: asyncio.StreamWriter, mb: int) -> None:
    writer.write(_SSE_HEAD + b"\r\n" + _chunk("Hello") + _chunk(" there") + _DONE)
    await writer.drain()


async def _error_body(writer: asyncio.StreamWriter, mb: int) -> None:
    head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
    writer.write(f"{head}content-length: {mb * _MB}\r\n\r\n".encode())
    block = b"x" * _MB
    for _ in range(mb):
        writer.write(block)
        await writer.drain()


@functools.cache
def _bomb(mb: int) -> bytes:
    """The compressed stream, built once: compressing it per request would stall this one-process
    upstream, and with it the good client's answers, for seconds."""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS)
    event = _chunk("a" * 4000)
    block = event * (_MB // len(event))
    parts = [squeeze.compress(block) for _ in range(mb)]
    parts.append(squeeze.flush())
    return b"".join(parts)


async def _deflate_bomb(writer: asyncio.StreamWriter, mb: int) -> None:
    writer.write(_SSE_HEAD + b"content-encoding: deflate\r\n\r\n" + _bomb(mb))
    await writer.drain()


async def _sse_unterminated(writer: asyncio.StreamWriter, mb: int) -> None:
    writer.write(_SSE_HEAD + b"\r\ndata: ")
    block = b"x" * (64 * 1024)
    for _ in range(mb * 16):
        writer.write(block)
        await writer.drain()


async def _flood(writer: asyncio.StreamWriter, mb: int) -> None:
    writer.write(_SSE_HEAD + b"\r\n")
    chunk = _chunk("flood ")
    for _ in range(1000):
        writer.write(chunk * 100)
        await writer.drain()
    writer.write(_DONE)
    await writer.drain()


_BEHAVIOURS = {
    "error-body": _error_body,
    "deflate-bomb": _deflate_bomb,
    "sse-unterminated": _sse_unterminated,
    "flood": _flood,
}


async def _main(port: int, mb: int) -> None:
    _bomb(mb)  # before the port opens: the harness starts measuring once it answers
    server = await asyncio.start_server(lambda r, w: _serve(r, w, mb), "127.0.0.1", port)
    async with server:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # until the harness goes


def main() -> None:
    asyncio.run(_main(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()
