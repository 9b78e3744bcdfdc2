"""A fast fake OpenAI-compatible upstream: a raw asyncio protocol on uvloop, loopback only.

Every streamed answer is a role chunk, 20 content chunks, a finish chunk, a usage chunk (when
asked for) and `[DONE]`. The upstream model name picks the timing, so one process serves every
scenario:

* `fast…`   the whole answer in one write (the overhead and throughput scenarios);
* `paced…`  `--pace-ms` between content chunks (held streams);
* `late…`   like fast, but `--late-pct` percent of answers send their first chunk `--late-ms`
            after the headers (the hedging scenario);
* `flaky…`  like fast, but `--fail-pct` percent of requests get a 503 (the failover scenario).

Run: `python -m benchmarks.upstream --port P`; it prints `READY` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
from typing import cast

import orjson
import uvloop

__all__ = [
    "CHUNKS",
    "COMPLETION",
    "MODELS",
    "UNAVAILABLE",
    "Behaviour",
    "is_streamed",
    "main",
    "stream_events",
]

CHUNKS = 20
_ID = "chatcmpl-bench"
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_MODEL = re.compile(rb'"model"\s*:\s*"([^"]*)"')
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def _chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
    payload = {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


_ROLE = _chunk({"role": "assistant", "content": ""})
_CONTENT = [_chunk({"content": f"tok{i} "}) for i in range(CHUNKS)]
_FINISH = _chunk({}, "stop")
_USAGE_CHUNK = (
    b"data: "
    + orjson.dumps(
        {
            "id": _ID,
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "bench",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 32},
        }
    )
    + b"\n\n"
)
_DONE = b"data: [DONE]\n\n"
COMPLETION = orjson.dumps(
    {
        "id": _ID,
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(f"tok{i} " for i in range(20))},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 32},
    }
)
UNAVAILABLE = b'{"error":{"message":"injected failure","type":"server_error","code":null}}'
MODELS = orjson.dumps({"object": "list", "data": [{"id": "fast", "object": "model"}]})


def stream_events(body: bytes) -> tuple[bytes, list[bytes]]:
    """The model a streamed request names, and its answer's SSE events in order: the role,
    CHUNKS content events, the finish, the usage (when asked for) and [DONE]."""
    match = _MODEL.search(body)
    model = match.group(1) if match else b"fast"
    tail = [_FINISH, _USAGE_CHUNK] if _USAGE.search(body) else [_FINISH]
    return model, [_ROLE, *_CONTENT, *tail, _DONE]


def is_streamed(body: bytes) -> bool:
    return _STREAM.search(body) is not None


def _framed(data: bytes) -> bytes:
    """One HTTP/1.1 chunk of the chunked transfer coding."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _plain(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        content_type,
        len(body),
        body,
    )


class Behaviour:
    """Timing knobs shared by every connection."""

    def __init__(
        self, pace_ms: float, late_pct: float, late_ms: float, seed: int, fail_pct: float = 30.0
    ) -> None:
        self.pace = pace_ms / 1000
        self.late_fraction = late_pct / 100
        self.late = late_ms / 1000
        self.fail_fraction = fail_pct / 100
        self.random = random.Random(seed)

    def fails(self, body: bytes) -> bool:
        """Whether this request to a `flaky…` model gets a 503 (seeded, so runs repeat)."""
        match = _MODEL.search(body)
        if match is None or not match.group(1).startswith(b"flaky"):
            return False
        return self.random.random() < self.fail_fraction


class UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time per connection (as clients use it)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._next_request()

    def _next_request(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end == -1:
            return
        head = self._buffer[:end]
        length = _content_length(head)
        if len(self._buffer) < end + 4 + length:
            return
        body = self._buffer[end + 4 : end + 4 + length]
        self._buffer = self._buffer[end + 4 + length :]
        self._answer(head.split(b" ", 2), body)

    def _answer(self, request_line: list[bytes], body: bytes) -> None:
        method, path = request_line[0], request_line[1]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            if self._behaviour.fails(body):
                self._write(_plain("503 Service Unavailable", UNAVAILABLE))
                self._next_request()
                return
            if is_streamed(body):
                self._stream(body)
                return
            self._write(_plain("200 OK", COMPLETION))
        elif method == b"GET" and path.endswith(b"/models"):
            self._write(_plain("200 OK", MODELS))
        else:
            self._write(_plain("404 Not Found", b'{"error":{"message":"not found"}}'))
        self._next_request()

    def _stream(self, body: bytes) -> None:
        model, events = stream_events(body)
        behaviour = self._behaviour
        if model.startswith(b"paced") and behaviour.pace > 0:
            self._busy = True
            self._write(_STREAM_HEAD + _framed(_ROLE + _CONTENT[0]))
            self._pace(events[2:], behaviour.pace)
        elif model.startswith(b"late") and behaviour.random.random() < behaviour.late_fraction:
            self._busy = True
            self._write(_STREAM_HEAD)
            loop = asyncio.get_running_loop()
            loop.call_later(behaviour.late, self._finish_stream, b"".join(events))
        else:
            self._write(_STREAM_HEAD + _framed(b"".join(events)) + b"0\r\n\r\n")

    def _pace(self, events: list[bytes], pace: float) -> None:
        """Send one content chunk per `pace` seconds; the finish, usage and [DONE] ride with
        the last one."""
        loop = asyncio.get_running_loop()
        last = CHUNKS - 2  # index in `events` of the last content chunk

        def send_next(index: int) -> None:
            if self._transport is None:
                return
            if index == last:
                self._finish_stream(b"".join(events[index:]))
                return
            self._write(_framed(events[index]))
            loop.call_later(pace, send_next, index + 1)

        loop.call_later(pace, send_next, 0)

    def _finish_stream(self, data: bytes) -> None:
        self._write(_framed(data) + b"0\r\n\r\n")
        self._busy = False
        self._next_request()

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def serve(host: str, port: int, behaviour: Behaviour) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(behaviour), host, port, backlog=4096, reuse_address=True
    )
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pace-ms", type=float, default=20.0)
    parser.add_argument("--late-pct", type=float, default=5.0)
    parser.add_argument("--late-ms", type=float, default=500.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fail-pct", type=float, default=30.0)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the fake upstream listens on loopback only")
    behaviour = Behaviour(args.pace_ms, args.late_pct, args.late_ms, args.seed, args.fail_pct)
    uvloop.run(serve(args.host, args.port, behaviour))


if __name__ == "__main__":
    main()
