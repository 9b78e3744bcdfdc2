"""Server-sent events: split an upstream byte stream into events. Knows no provider.

Follows the WHATWG rules the official SDKs follow: CR, LF or CRLF line ends, `:` comments
ignored, one leading space after the colon stripped, several `data:` lines joined with LF.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_EVENT", "EventTooLarge", "SSEDecoder", "SSEEvent", "event_data"]

DEFAULT_MAX_EVENT = 16 * 1024 * 1024  # settings.Limits.sse_event_bytes


class EventTooLarge(ValueError):
    """An event grew past the decoder's limit before its blank line came."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an event longer than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Feed raw bytes as they arrive; get back every event completed by them.

    An unfinished event is kept as the reads that brought it, joined once when it ends, so a
    long one costs its length, not its length times the reads it took; past `max_event` bytes
    it raises EventTooLarge.
    """

    __slots__ = ("_cr", "_max", "_parts", "_size")

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event
        self._parts: list[bytes] = []  # the unfinished event, LF line ends
        self._size = 0  # its length
        self._cr = False  # a CR ended the last read: the first half of a CRLF, perhaps

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events = []
        for block in self.take(chunk).split(b"\n\n")[:-1]:
            # The common case by far: one `data: {...}` line.
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(SSEEvent(block[6:]))
            elif (event := _parse_block(block)) is not None:
                events.append(event)
        return events

    def take(self, chunk: bytes) -> bytes:
        """The complete events `chunk` finishes, as one run of blank-line-terminated blocks with
        LF line ends (b"" if none); the rest waits for more. For a relay that scans the events
        itself (relay.py), reading each block with event_data()."""
        if self._cr or chunk.find(b"\r") != -1:  # not `in`: see relay.py's _accept
            chunk = self._normalise_line_ends(chunk)
        cut = chunk.rfind(b"\n\n")
        if self._parts:
            return self._finish(chunk, cut)
        if cut == -1:
            if chunk:
                self._hold(chunk)
            return b""
        end = cut + 2
        if end > self._max:  # only then can one of its events be too long
            _check_lengths(chunk, 0, end, self._max)
        if end < len(chunk):
            self._hold(chunk[end:])
        return chunk[:end]

    def _finish(self, chunk: bytes, cut: int) -> bytes:
        """`take` when an event is unfinished: whatever of `chunk` ends it, joined to it."""
        # The blank line may straddle the reads: the event's last LF, then this chunk's first.
        straddles = chunk[:1] == b"\n" and self._parts[-1].endswith(b"\n")
        if cut == -1 and not straddles:
            if chunk:
                self._hold(chunk)
            return b""
        first = 0 if straddles else chunk.find(b"\n\n")  # where the unfinished event ends
        if self._size - straddles + first > self._max:  # its last LF was the blank line's
            raise EventTooLarge(self._max)
        end = max(cut + 2, 1)
        if end - first > self._max:
            _check_lengths(chunk, first + 1 if straddles else first + 2, end, self._max)
        events = b"".join([*self._parts, chunk[:end]])
        self._parts = []
        self._size = 0
        if end < len(chunk):
            self._hold(chunk[end:])
        return events

    def _hold(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        # A last LF may be the first half of the blank line that ends the event: not counted.
        if self._size - data.endswith(b"\n") > self._max:
            raise EventTooLarge(self._max)

    def _normalise_line_ends(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
        # A trailing CR may be the first half of a CRLF split across two reads: keep it for later.
        self._cr = chunk.endswith(b"\r")
        if self._cr:
            chunk = chunk[:-1]
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated by a blank line."""
        return b"".join(self._parts) + (b"\r" if self._cr else b"")


def _check_lengths(events: bytes, start: int, end: int, limit: int) -> None:
    """Raise EventTooLarge if a blank-line-terminated event in events[start:end] is too long."""
    while start < end:
        stop = events.find(b"\n\n", start, end)
        if stop == -1:
            return  # (not reached: every range given ends with a blank line)
        if stop - start > limit:
            raise EventTooLarge(limit)
        start = stop + 2


def event_data(block: bytes) -> bytes | None:
    """The data of one event block, or None for a block without any (a comment)."""
    # The common case by far: one `data: {...}` line.
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]
    event = _parse_block(block)
    return None if event is None else event.data


def _parse_block(block: bytes) -> SSEEvent | None:
    data_lines: list[bytes] = []
    event: str | None = None
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    if not data_lines:
        return None
    return SSEEvent(b"\n".join(data_lines), event)
