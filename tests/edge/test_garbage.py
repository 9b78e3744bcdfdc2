"""A finished request's objects are freed when it ends, not left to the garbage collector.

A reference cycle through a request's stream (its failover bookkeeping, its watchdog) once left
~37 objects a request for the collector: a young-generation collection every ~20 requests,
~0.2 ms each on the event loop, in the middle of other requests' answers. This drives the real
app in-process, through the edge's one request lifecycle (edge/lifecycle.py, as rsgi.py hands it
each request), against the fake upstream over loopback.
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from callmissed.app import build_app
from callmissed.auth import create_key
from callmissed.edge.lifecycle import Lifecycle
from callmissed.exchange import Headers, Write
from callmissed.gateway import Gateway
from callmissed.settings import load_settings
from tests.conftest import gateway_env
from tests.fakes.upstream import FakeUpstream

REQUESTS = 30
_PRICED = """
[models."priced-model"]
routes = ["local:hello"]
prices = { input = 0.15, cached_input = 0.075, output = 0.6 }

[models."priced-claude"]
routes = ["anthropic:claude-haiku-4-5"]
prices = { input = 0.15, cached_input = 0.075, output = 0.6 }
"""


# An OpenAI upstream's chunks, and Anthropic's events translated (providers/anthropic.py).
@pytest.mark.parametrize("model", ["priced-model", "priced-claude"])
def test_a_streamed_request_leaves_no_reference_cycles(
    upstream: FakeUpstream, tmp_path: Path, model: str
):
    env = gateway_env(upstream.url, tmp_path)
    with Path(env["CALLMISSED_CONFIG"]).open("a") as config:  # priced: a metered key is charged
        config.write(_PRICED)
    answers, garbage = asyncio.run(_stream_requests(env, REQUESTS, model))
    assert len(answers) == REQUESTS and all(b"data: [DONE]" in answer for answer in answers)
    # What the collector finds is from start-up, not a cycle per request.
    assert sum(garbage.values()) < REQUESTS, garbage


async def _stream_requests(
    env: dict[str, str], count: int, model: str
) -> tuple[list[bytes], Counter[str]]:
    """`count` streamed answers, and the objects the collector freed meanwhile, by type."""
    settings = load_settings(env=env)
    gateway = Gateway(settings)
    app = build_app(settings, gateway)
    await app.startup()
    try:
        key, _ = await create_key(gateway.store, "garbage", 10**9)
        body = orjson.dumps({"model": model, "stream": True, "messages": [_HELLO]})
        headers = {"authorization": f"Bearer {key}", "content-length": str(len(body))}
        lifecycle = Lifecycle(app, settings.edge.body_timeout)
        answers = [await _one(lifecycle, headers, body)]  # warm: pools, caches, wallet
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            answers = [await _one(lifecycle, headers, body) for _ in range(count)]
            gc.collect()
            garbage = Counter(type(thing).__name__ for thing in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        return answers, garbage
    finally:
        await app.shutdown()


_HELLO = {"role": "user", "content": "Hello"}


async def _one(lifecycle: Lifecycle, headers: dict[str, str], body: bytes) -> bytes:
    call = _MemoryCall(headers, body)
    await lifecycle.run(call)
    assert call.status == 200, call.written
    return b"".join(call.written)


class _MemoryCall:
    """A POST /v1/chat/completions as a server would hand it over; what comes back is kept."""

    method = "POST"
    path = "/v1/chat/completions"
    query = ""

    def __init__(self, headers: dict[str, str], body: bytes) -> None:
        self.headers = headers
        self._body = body
        self.status = 0
        self.written: list[bytes] = []

    async def whole_body(self) -> bytes:
        return self._body

    async def body_parts(self) -> AsyncIterator[bytes]:
        yield self._body

    def reading(self) -> Callable[[], None]:
        return lambda: None

    def departure(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()  # the client stays

    async def start_stream(self, headers: Headers) -> Write:
        self.status = 200
        return self._write

    async def _write(self, part: bytes) -> None:
        self.written.append(part)

    async def end_stream(self) -> None:
        return None

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.written.append(body)

    def gate(self) -> None:
        return None
