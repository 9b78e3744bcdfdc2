"""A hostile upstream: a real aiohttp server on 127.0.0.1 that abuses a gateway's trust.

The upstream model name picks the abuse (any dialect's path, OpenAI-compatible bodies):
  flood-error          a 400 whose body goes on for FLOOD bytes
  deflate-bomb         a 200 completion, deflate-encoded: BOMB bytes once inflated
  deflate-bomb-stream  a stream whose first token comes plain, then a deflate bomb
  endless-event        a stream whose first token is followed by one event that never ends
  deep-answer          a completion with a field nested 1,000 deep (JSON parses it, orjson
                       cannot encode it again)
Anything else gets a short, well-behaved answer. `sent` records how many body bytes each
request got out before the gateway hung up (or all of them), once its handler is done.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.fakes.server import serve_in_thread
from tests.fakes.upstream import sse_chunk

__all__ = ["BOMB", "FLOOD", "HostileUpstream", "deflate_bomb", "start_hostile_upstream"]

FLOOD = 100 * 1024 * 1024  # an error body, or an event, that would never be read whole
BOMB = 40 * 1024 * 1024  # what the bomb inflates to: past the 32 MiB default limit
_PIECE = 64 * 1024


@dataclass
class HostileUpstream:
    url: str = ""
    sent: dict[str, int] = field(default_factory=dict)  # model -> body bytes written


def _completion(model: str, content: str) -> bytes:
    message = {"role": "assistant", "content": content}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    usage = {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    answer = {"id": "chatcmpl-h", "object": "chat.completion", "created": 1700000000}
    return orjson.dumps({**answer, "model": model, "choices": [choice], "usage": usage})


@functools.cache
def deflate_bomb(model: str, wbits: int = zlib.MAX_WBITS) -> bytes:
    """A completion of about 40 KB that inflates to BOMB bytes (wbits 15: zlib, 31: gzip)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head, tail = _completion(model, "{}").split(b"{}")
    return b"".join([*_inflating(compressor, head, tail), compressor.flush()])


@functools.cache
def _bomb_stream(model: str) -> tuple[bytes, bytes]:
    """A deflate-encoded event stream in two parts: a plain first token, then the bomb."""
    compressor = zlib.compressobj(9)
    first = sse_chunk(model, {"role": "assistant", "content": "Hello"})
    opening = compressor.compress(first) + compressor.flush(zlib.Z_SYNC_FLUSH)
    head, tail = sse_chunk(model, {"content": "{}"}).split(b"{}")
    return opening, b"".join([*_inflating(compressor, head, tail), compressor.flush()])


def _inflating(compressor: zlib._Compress, head: bytes, tail: bytes) -> list[bytes]:
    piece = b"a" * (1024 * 1024)
    parts = [compressor.compress(head)]
    parts += [compressor.compress(piece) for _ in range(BOMB // len(piece))]
    return [*parts, compressor.compress(tail)]


async def _chat(request: web.Request) -> web.StreamResponse:
    model = str((await request.json()).get("model", ""))
    if model == "flood-error":
        response = web.StreamResponse(status=400, headers={"content-type": "application/json"})
        return await _pour(request, response, model, b'{"error":{"message":"', b"x")
    if model == "deep-answer":
        deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
        body = _completion(model, "Hello")[:-1] + b',"provider_extra":' + deep + b"}"
        return web.Response(body=body, headers={"content-type": "application/json"})
    if model == "deflate-bomb":
        headers = {"content-type": "application/json", "content-encoding": "deflate"}
        return web.Response(body=deflate_bomb(model), headers=headers)
    stream = web.StreamResponse(headers={"content-type": "text/event-stream"})
    first = sse_chunk(model, {"role": "assistant", "content": "Hello"})
    if model == "deflate-bomb-stream":
        stream.headers["content-encoding"] = "deflate"
        return await _send(request, stream, model, list(_bomb_stream(model)))
    if model == "endless-event":
        return await _pour(request, stream, model, first + b'data: {"choices":"', b"a")
    finish = sse_chunk(model, {}, "stop")
    return await _send(request, stream, model, [first, finish, b"data: [DONE]\n\n"])


async def _send(
    request: web.Request, response: web.StreamResponse, model: str, parts: list[bytes]
) -> web.StreamResponse:
    hostile: HostileUpstream = request.app[HOSTILE]
    sent = 0
    try:
        await response.prepare(request)
        for part in parts:
            await response.write(part)
            sent += len(part)
        await response.write_eof()
    except ConnectionError:
        pass
    finally:
        hostile.sent[model] = sent
    return response


async def _pour(
    request: web.Request, response: web.StreamResponse, model: str, head: bytes, byte: bytes
) -> web.StreamResponse:
    """`head`, then `byte` repeated until FLOOD bytes went out or the gateway hung up."""
    hostile: HostileUpstream = request.app[HOSTILE]
    sent = 0
    piece = byte * _PIECE
    try:
        await response.prepare(request)
        await response.write(head)
        sent = len(head)
        while sent < FLOOD:
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
    except ConnectionError:
        pass
    finally:
        hostile.sent[model] = sent
    return response


HOSTILE = web.AppKey("hostile", HostileUpstream)


def start_hostile_upstream() -> tuple[HostileUpstream, Callable[[], None]]:
    """Run it in a background thread; return it and a function that stops it."""
    hostile = HostileUpstream()
    app = web.Application()
    app[HOSTILE] = hostile
    app.router.add_post("/{tail:.*}/chat/completions", _chat)
    hostile.url, stop = serve_in_thread(app)
    return hostile, stop
