"""The inflater's bounds, on bodies as upstreams send them: a bomb stops early, real answers
come through whole, a step at a time."""

from __future__ import annotations

import gzip
import zlib

import orjson
import pytest

from callmissed.upstream.http1 import BodyTooLarge, Inflater

LIMIT = 32 * 1024 * 1024


def _event_stream(events: int) -> bytes:
    """Chat chunks whose envelopes repeat: among the most compressible answers there are."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"]
    return b"".join(
        b"data: "
        + orjson.dumps(
            {
                "id": "chatcmpl-abc123",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": "some-model",
                "choices": [{"index": 0, "delta": {"content": " " + words[n % 9]}}],
            }
        )
        + b"\n\n"
        for n in range(events)
    )


def _inflate(inflater: Inflater, body: bytes, read: int = 16384) -> bytes:
    out = []
    for start in range(0, len(body), read):
        out.append(inflater.inflate(body[start : start + read]))
        while inflater.pending:
            out.append(inflater.more())
    out.append(inflater.flush())
    assert max(map(len, out)) <= Inflater.STEP
    return b"".join(out)


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress], ids=["gzip", "deflate"])
def test_an_event_stream_compressed_whole_inflates_whole(compress):
    stream = _event_stream(50_000)  # ~8.5 MB, at ~170:1
    packed = compress(stream)
    assert len(stream) > 100 * len(packed)
    assert _inflate(Inflater(LIMIT), packed) == stream


def test_a_bomb_is_refused_after_its_first_mebibytes_not_at_the_limit():
    bomb = zlib.compress(b"a" * (300 * 1024 * 1024), 9)  # ~300 KB on the wire
    inflater = Inflater(LIMIT)
    with pytest.raises(BodyTooLarge) as refused:
        _inflate(inflater, bomb, read=65536)
    assert refused.value.limit < Inflater.FREE_BYTES + 2 * Inflater.STEP


def test_a_body_past_the_limit_is_refused_at_the_limit():
    body = bytes(range(256)) * (2 * 1024 * 1024 // 256)  # 2 MiB that compress ~100:1 at most
    with pytest.raises(BodyTooLarge) as refused:
        _inflate(Inflater(1024 * 1024), zlib.compress(body))
    assert refused.value.limit == 1024 * 1024
