"""callmissed.sse: byte streams split into events the way the official SDKs split them."""

from __future__ import annotations

import pytest

from callmissed.sse import EventTooLarge, SSEDecoder, SSEEvent, event_data


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


def _take_all(*parts: bytes) -> list[bytes | None]:
    decoder = SSEDecoder()
    events = b"".join(decoder.take(part) for part in parts)
    assert events.endswith(b"\n\n") or not events
    return [event_data(block) for block in events.split(b"\n\n")[:-1] if block.strip(b"\n")]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_take_gives_whole_events_only_whatever_the_split(size):
    raw = b"data: one\r\n\r\ndata: two\r\n\r\n: c\r\n\r\ndata:three\r\n\r\ndata: fo"
    parts = [raw[i : i + size] for i in range(0, len(raw), size)]
    assert _take_all(*parts) == [b"one", b"two", None, b"three"]


def test_take_keeps_an_unterminated_event_for_later():
    decoder = SSEDecoder()
    assert decoder.take(b"data: a\n\ndata: half") == b"data: a\n\n"
    assert decoder.pending == b"data: half"
    assert decoder.take(b"\n") == b""
    assert decoder.take(b"\n") == b"data: half\n\n"


def test_event_data_reads_one_block_like_feed():
    assert event_data(b'data: {"a":1}') == b'{"a":1}'
    assert event_data(b": OPENROUTER PROCESSING") is None
    assert event_data(b"event: x\ndata: a\ndata: b") == b"a\nb"


@pytest.mark.parametrize("size", [1, 3, 64, 1000])
def test_an_event_is_whole_up_to_the_limit_whatever_the_split(size):
    event = b"data: " + b"x" * (100 - 6) + b"\r\n\r\n"  # 100 bytes before its blank line
    raw = event + b"data: next\n\n"
    decoder = SSEDecoder(max_event=100)
    events = b"".join(decoder.take(raw[i : i + size]) for i in range(0, len(raw), size))
    assert [event_data(block) for block in events.split(b"\n\n")[:-1]] == [b"x" * 94, b"next"]


@pytest.mark.parametrize("size", [1, 3, 64, 1000])
def test_an_event_past_the_limit_is_refused_whatever_the_split(size):
    raw = b"data: ok\n\n" + b"data: " + b"x" * 95 + b"\n\n"  # the second is 101 bytes
    decoder = SSEDecoder(max_event=100)
    with pytest.raises(EventTooLarge):
        for i in range(0, len(raw), size):
            decoder.take(raw[i : i + size])


def test_an_unterminated_event_is_refused_once_past_the_limit():
    decoder = SSEDecoder(max_event=1000)
    decoder.take(b"data: ")
    for _ in range(9):
        assert decoder.take(b"y" * 100) == b""
    with pytest.raises(EventTooLarge, match="longer than 1000 bytes"):
        decoder.take(b"y" * 100)


def test_a_long_event_is_joined_once_not_once_per_read():
    """Each read of an unfinished event is kept as it came; the event is joined when it ends."""
    decoder = SSEDecoder()
    reads = [b"data: "] + [b"z" * 65536 for _ in range(64)]
    for read in reads:
        assert decoder.take(read) == b""
    assert decoder.pending == b"".join(reads)
    assert decoder.take(b"\n\ndata: more") == b"".join(reads) + b"\n\n"
    assert decoder.pending == b"data: more"
