"""Server-sent events: split an upstream byte stream into events. Knows no provider.

Follows the WHATWG rules the official SDKs follow: CR, LF or CRLF line ends, `:` comments
ignored, one leading space after the colon stripped, several `data:` lines joined with LF.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEDecoder", "SSEEvent", "event_data"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Feed raw bytes as they arrive; get back every event completed by them."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        events = []
        for block in self._blocks(chunk):
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
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            buffer = _normalise_line_ends(buffer)
        cut = buffer.rfind(b"\n\n")
        if cut == -1:
            self._buffer = buffer
            return b""
        self._buffer = buffer[cut + 2 :]
        return buffer[: cut + 2]

    def _blocks(self, chunk: bytes) -> list[bytes]:
        """The blank-line-terminated blocks `chunk` completes; the rest waits for more."""
        buffer = self._buffer + chunk
        if b"\r" in buffer:
            buffer = _normalise_line_ends(buffer)
        *blocks, self._buffer = buffer.split(b"\n\n")
        return blocks

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated by a blank line."""
        return self._buffer


def _normalise_line_ends(buffer: bytes) -> bytes:
    # A trailing CR may be the first half of a CRLF split across two reads: keep it for later.
    tail = b""
    if buffer.endswith(b"\r"):
        buffer, tail = buffer[:-1], b"\r"
    return buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail


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
