"""How each edge frames a stream's end: exactly one `[DONE]` (OpenAI) or `message_stop`
(Anthropic), in the same write as the last events when the upstream's `[DONE]` came with them."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from callmissed.api.anthropic import _aiter_events
from callmissed.api.openai import _aiter_sse
from callmissed.formats.anthropic import parse_message_request
from callmissed.formats.anthropic_message import MessageStreamEncoder
from callmissed.providers.openai import OpenAICompatible
from callmissed.relay import ChatStream
from callmissed.settings import ProviderSettings
from callmissed.timing import RequestTrace


def _event(delta: dict[str, str], finish: str | None = None) -> bytes:
    chunk = {"id": "c1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
ANSWER = [
    _event({"role": "assistant", "content": ""}),
    _event({"content": "Hel"}),
    _event({"content": "lo"}),
    _event({}, "stop"),
    b"data: " + orjson.dumps({"id": "c1", "choices": [], "usage": USAGE}) + b"\n\n",
    b"data: [DONE]\n\n",
]
ONE_READ = [b"".join(ANSWER)]
DONE_ALONE = [b"".join(ANSWER[:-1]), ANSWER[-1]]
READ_BY_READ = ANSWER


class Reads:
    """An upstream body arriving in the given reads."""

    status: int = 200
    retry_after: float | None = None
    http_version: str = "HTTP/1.1"
    connect_s: float | None = 0.0

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = list(reads)

    async def read(self, limit: int) -> tuple[bytes, bool]:
        body = b"".join(self._reads)
        return body[:limit], len(body) > limit

    async def receive(self) -> bytes:
        return self._reads.pop(0) if self._reads else b""

    def close(self) -> None:
        pass

    def release(self) -> None:
        pass


def _parts(reads: list[bytes], edge: str) -> list[bytes]:
    async def collect() -> list[bytes]:
        provider = OpenAICompatible(ProviderSettings("local", "openai", "http://127.0.0.1:1/v1"))
        stream = ChatStream(provider, Reads(reads), include_usage=True)
        await stream.start()
        if edge == "openai":
            parts = _aiter_sse(stream, "req_test", RequestTrace("req_test"))
        else:
            request = parse_message_request(
                {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
            )
            trace = RequestTrace("req_test")
            parts = _aiter_events(stream, MessageStreamEncoder(request), trace)
        return [part async for part in parts]

    return asyncio.run(collect())


@pytest.mark.parametrize(
    ("edge", "end"), [("openai", b"data: [DONE]"), ("anthropic", b"event: message_stop")]
)
def test_a_short_answer_read_at_once_goes_out_in_one_write_with_its_end(edge, end):
    [part] = _parts(ONE_READ, edge)
    assert part.count(end) == 1 and part.index(b"lo") < part.index(end)


@pytest.mark.parametrize("reads", [DONE_ALONE, READ_BY_READ], ids=["done-alone", "read-by-read"])
@pytest.mark.parametrize(
    ("edge", "end"), [("openai", b"data: [DONE]"), ("anthropic", b"event: message_stop")]
)
def test_an_answer_over_several_reads_ends_once_after_everything(reads, edge, end):
    parts = _parts(reads, edge)
    body = b"".join(parts)
    assert body.count(end) == 1
    assert end in parts[-1] and body.index(b"lo") < body.index(end)
    if edge == "openai":
        assert body.endswith(b"data: [DONE]\n\n")
