"""callmissed.sse: byte streams split into events the way the official SDKs split them."""

from __future__ import annotations

import pytest

from callmissed.sse import SSEDecoder, SSEEvent


def _decode(*parts: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    return [event for part in parts for event in decoder.feed(part)]


def test_one_data_line_per_event():
    assert _decode(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [
        SSEEvent(b'{"a":1}'),
        SSEEvent(b"[DONE]"),
    ]


def test_comments_are_skipped():
    assert _decode(b": OPENROUTER PROCESSING\n\n: keepalive\n\ndata: x\n\n") == [SSEEvent(b"x")]


def test_event_names_and_multiline_data():
    assert _decode(b"event: message_start\ndata: a\ndata: b\n\n") == [
        SSEEvent(b"a\nb", "message_start")
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_any_split_and_crlf_line_ends(size):
    raw = b"data: one\r\n\r\ndata: two\r\n\r\n: c\r\n\r\ndata:three\r\n\r\n"
    parts = [raw[i : i + size] for i in range(0, len(raw), size)]
    assert [event.data for event in _decode(*parts)] == [b"one", b"two", b"three"]


def test_unterminated_event_stays_pending():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: half") == []
    assert decoder.pending == b"data: half"
    assert decoder.feed(b"\n\n") == [SSEEvent(b"half")]
