"""A fault-injection upstream: a real aiohttp server on 127.0.0.1 that fails on purpose.

The upstream model id picks the behaviour: its last `/`-separated part names one of BEHAVIOURS (an
optional prefix such as `t3/` keeps each test's routes apart), or `error-<status>[-<code>]`
(`-ra<seconds>` adds Retry-After), or `fail-first-<n>` (a 500 for the model id's first n calls,
then answers). Two dialects, chosen by path, as real base URLs would:
  /openai/v1/chat/completions                          OpenAI-compatible errors
  /client/v4/accounts/{account}/ai/v1/chat/completions Workers AI's v4 error envelope
Every chat request is recorded (`Call`) with its model, client port, and when the gateway hung up
on it; HEAD requests (pool warming) are recorded in `warmups`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.server import serve_in_thread
from tests.fakes.upstream import sse_chunk

__all__ = ["Call", "FaultUpstream", "start_fault_upstream"]

STALL = 30.0  # "forever", as far as any test's timeouts are concerned
SLOW = 1.0  # a first token that comes, but late


@dataclass
class Call:
    model: str
    stream: bool
    port: int
    body: dict[str, Any]
    started: float
    ended: float | None = None  # when the answer was fully written
    disconnected: float | None = None  # when the gateway closed the connection on us
    reset: bool = False  # we reset the connection on purpose
    headers: dict[str, str] = field(default_factory=dict)  # what the gateway sent, names lower


@dataclass
class FaultUpstream:
    url: str = ""
    calls: list[Call] = field(default_factory=list)
    warmups: list[tuple[str, int]] = field(default_factory=list)  # (path, client port)

    def for_model(self, model: str) -> list[Call]:
        return [call for call in self.calls if call.model == model]

    def wait_for(self, predicate: Callable[[], bool], limit: float = 5.0) -> None:
        deadline = time.monotonic() + limit
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("the fault upstream did not see what was expected")
            time.sleep(0.005)


def _usage(model: str) -> bytes:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    payload = {"id": "chatcmpl-fault", "object": "chat.completion.chunk", "created": 1700000000}
    return (
        b"data: "
        + orjson.dumps({**payload, "model": model, "choices": [], "usage": usage})
        + b"\n\n"
    )


def _completion(model: str) -> bytes:
    message = {"role": "assistant", "content": f"Hello from {model}"}
    return orjson.dumps(
        {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    )


ROLE = "role"  # a frame standing for the bare role chunk
TOKEN = "token"  # ... the answer's text, one chunk
FINISH = "finish"  # ... the finish chunk, the usage chunk and [DONE]
RESET = "reset"  # abort the connection (a TCP reset)
Frame = str | float | bytes

_ENDLESS: list[Frame] = [TOKEN, 0.05] * 2000

# name -> (stream frames, non-stream frames); a float sleeps, bytes go out as they are.
BEHAVIOURS: dict[str, tuple[list[Frame], list[Frame]]] = {
    "ok": ([ROLE, TOKEN, FINISH], [TOKEN]),
    # The body's end (the chunked terminator) comes a moment after [DONE], as from vLLM.
    "late-end": ([ROLE, TOKEN, FINISH, 0.1], [TOKEN]),
    "reset-before": ([RESET], [RESET]),
    "reset-after-role": ([ROLE, 0.05, RESET], [b'{"id": "chatcmpl-fault", ', 0.05, RESET]),
    "reset-after-token": ([ROLE, TOKEN, 0.05, RESET], [RESET]),
    "stall-headers": ([STALL], [STALL]),
    "stall-mid": ([ROLE, TOKEN, STALL], [b'{"id": "chatcmpl-fault", ', STALL]),
    "bad-sse": ([b"<html><body>502 Bad Gateway</body></html>\n"], [b"<html>502</html>"]),
    "bad-json-first": ([b"data: {not json\n\n"], [b"{not json"]),
    "bad-json-after": ([ROLE, TOKEN, 0.05, b"data: {not json\n\n"], [b"{not json"]),
    "truncated": ([ROLE, b'data: {"id":"chatcmpl-fault","choices":[{"ind'], [b'{"id": "chat']),
    "truncated-after": ([ROLE, TOKEN, b'data: {"id":"chatcmpl-fault","cho'], [b'{"id": "c']),
    "slow-first": ([ROLE, SLOW, TOKEN, FINISH], [SLOW, TOKEN]),
    "slowish-first": ([ROLE, 0.3, TOKEN, FINISH], [0.3, TOKEN]),
    "slow-tokens": ([ROLE, TOKEN, 0.2, TOKEN, 0.2, TOKEN, 0.2, FINISH], [0.6, TOKEN]),
    "endless": ([ROLE, *_ENDLESS], [STALL]),
    # One event past a 64 KiB CALLMISSED_SSE_EVENT_BYTES, before any token.
    "huge-event": ([b"data: " + b"x" * 100_000 + b"\n\n"], [b"x" * 100_000]),
}

FAULTS = web.AppKey("faults", FaultUpstream)


def _parse_error(name: str) -> tuple[int, int, str | None] | None:
    """`error-<status>[-<code>][-ra<seconds>]` -> (status, Workers AI code, Retry-After)."""
    if not name.startswith("error-"):
        return None
    status, code, retry_after = 0, 0, None
    for part in name.removeprefix("error-").split("-"):
        if part.startswith("ra"):
            retry_after = part[2:]
        elif not status:
            status = int(part)
        else:
            code = int(part)
    return status, code, retry_after


def _error(cloudflare: bool, status: int, code: int, retry_after: str | None) -> web.Response:
    message = f"injected failure {status}"
    if cloudflare:
        errors = [{"code": code or 7009, "message": message}]
        payload: dict[str, Any] = {"result": None, "success": False, "errors": errors}
    else:
        payload = {"error": {"message": message, "type": "server_error", "code": None}}
    headers = {"retry-after": retry_after} if retry_after else {}
    return web.json_response(payload, status=status, headers=headers)


async def _chat(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAULTS]
    body = await request.json()
    peer = request.transport.get_extra_info("peername") if request.transport else None
    call = Call(
        body.get("model", ""),
        bool(body.get("stream")),
        peer[1] if peer else 0,
        body,
        time.monotonic(),
        headers={name.lower(): value for name, value in request.headers.items()},
    )
    fake.calls.append(call)
    name = call.model.rsplit("/", 1)[-1]
    if name.startswith("fail-first-"):
        failing = len(fake.for_model(call.model)) <= int(name.removeprefix("fail-first-"))
        name = "error-500" if failing else "ok"
    try:
        error = _parse_error(name)
        response: web.StreamResponse
        if error is not None:
            response = _error("/client/v4/" in request.path, *error)
        else:
            stream_frames, plain_frames = BEHAVIOURS[name]
            frames = stream_frames if call.stream else plain_frames
            response = await _play(request, call, frames)
    except (asyncio.CancelledError, ConnectionResetError):
        if not call.reset:
            call.disconnected = time.monotonic()
        raise
    call.ended = time.monotonic()
    return response


async def _play(request: web.Request, call: Call, frames: list[Frame]) -> web.StreamResponse:
    content_type = "text/event-stream" if call.stream else "application/json"
    response = web.StreamResponse(headers={"content-type": content_type})
    prepared = False
    for frame in frames:
        if isinstance(frame, float):
            await asyncio.sleep(frame)
            continue
        if frame == RESET:
            assert request.transport is not None
            call.reset = True
            request.transport.abort()
            await asyncio.sleep(STALL)  # aiohttp cancels us now that the connection is gone
        if not prepared:
            await response.prepare(request)
            prepared = True
        await response.write(_render(frame, call))
    if not prepared:
        await response.prepare(request)
    await response.write_eof()
    return response


def _render(frame: str | bytes, call: Call) -> bytes:
    if isinstance(frame, bytes):
        return frame
    model = call.model
    if not call.stream:
        return _completion(model)
    if frame == ROLE:
        return sse_chunk(model, {"role": "assistant", "content": ""})
    if frame == TOKEN:
        return sse_chunk(model, {"content": f"Hello from {model}"})
    usage = _usage(model) if (call.body.get("stream_options") or {}).get("include_usage") else b""
    return sse_chunk(model, {}, "stop") + usage + b"data: [DONE]\n\n"


async def _warm(request: web.Request) -> web.Response:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    request.app[FAULTS].warmups.append((request.path, peer[1] if peer else 0))
    return web.Response(status=404, text="not here")


def start_fault_upstream() -> tuple[FaultUpstream, Callable[[], None]]:
    """Run the fake in a background thread; return it and a function that stops it."""
    fake = FaultUpstream()
    app = web.Application()
    app[FAULTS] = fake
    app.router.add_post("/client/v4/accounts/{account}/ai/v1/chat/completions", _chat)
    app.router.add_post("/openai/v1/chat/completions", _chat)
    app.router.add_route("HEAD", "/{tail:.*}", _warm)
    fake.url, stop = serve_in_thread(app)
    return fake, stop
