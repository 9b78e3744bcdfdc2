"""callmissed.relay: an upstream read becomes chunks; plain content runs go out as they came."""

from __future__ import annotations

import orjson
import pytest

from callmissed.errors import UpstreamError
from callmissed.providers.openai import OpenAICompatible
from callmissed.relay import ChatStream, Chunk
from callmissed.settings import ProviderSettings
from callmissed.token_estimate import estimate_output_tokens


def _event(text: str) -> bytes:
    chunk = {"id": "c1", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _read(stream: ChatStream, raw: bytes) -> list[Chunk]:
    chunks: list[Chunk] = []
    assert stream._read(raw, chunks) is None
    return chunks


def _stream() -> ChatStream:
    provider = OpenAICompatible(ProviderSettings("local", "openai", "http://127.0.0.1:1/v1"))
    return ChatStream(provider, None, include_usage=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("texts", [["Hel", "lo", " world"], ["नमस्ते", " दु", "निया"], ["a", "", "b"]])
def test_a_run_goes_out_as_it_came_with_the_tokens_of_its_text_alone(texts):
    stream = _stream()
    first = _read(stream, _event("learn"))  # the first plain chunk teaches the envelope
    run = b"".join(_event(text) for text in texts)
    chunks = _read(stream, run)
    assert len(first) == 1 and len(chunks) == 1
    assert chunks[0].event() == run
    pieces = sum(1 for text in texts if text)
    assert chunks[0].tokens == estimate_output_tokens("".join(texts), pieces)
    assert chunks[0].json()["choices"][0]["delta"]["content"] == "".join(texts)


def test_chunks_that_need_no_edit_go_out_as_the_upstream_sent_them():
    stream = _stream()
    role = b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    finish = b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    chunks = _read(stream, role + _event("Hi") + finish)
    assert b"".join(chunk.event() for chunk in chunks) == role + _event("Hi") + finish
    again = _read(stream, role)  # a repeated role is edited out: that one is re-encoded
    assert again[0].json()["choices"][0]["delta"] == {}


@pytest.mark.parametrize("kind", ["role", "content", "finish"])
def test_a_chunk_split_over_several_data_lines_goes_out_on_one(kind):
    """SSE joins a multi-line `data:` field with line feeds, which JSON reads as spaces; sent on
    as they came they would end the event early, so such a chunk goes out re-encoded."""
    delta = {"role": {"role": "assistant"}, "content": {"content": "Hi"}, "finish": {}}[kind]
    choice = {"index": 0, "delta": delta, "finish_reason": "stop" if kind == "finish" else None}
    data = orjson.dumps({"id": "c1", "choices": [choice]})
    split = data.replace(b'"choices":', b'"choices":\ndata: ')
    stream = _stream()
    chunks = _read(stream, b"data: " + split + b"\n\n")
    assert len(chunks) == 1 and chunks[0].event() == b"data: " + data + b"\n\n"


def test_an_error_in_the_read_that_brought_content_goes_out_after_that_content():
    stream = _stream()
    error = {"error": {"message": "the model crashed", "code": 500}}
    raw = _event("Hel") + _event("lo") + b"data: " + orjson.dumps(error) + b"\n\n"
    chunks: list[Chunk] = []
    failure = stream._read(raw, chunks)
    assert isinstance(failure, UpstreamError)
    assert b"".join(chunk.event() for chunk in chunks).count(b'"content"') == 2


def test_an_error_alone_in_its_read_is_raised_at_once():
    stream = _stream()
    error = {"error": {"message": "the model crashed", "code": 500}}
    with pytest.raises(UpstreamError):
        stream._read(b"data: " + orjson.dumps(error) + b"\n\n", [])
