"""The one contract every upstream transport keeps (http1, http2, the simulator).

A `Transport` sends a built request and returns a `Response` once its status and headers are
in. The response's body then comes through `receive()` (a stream) or `read(limit)` (a bounded
whole), and the response ends in one of two ways, each defined here once:

- `release()`: the answer is complete as far as we care (a stream's `[DONE]` arrived, a body
  was read to its end). The transport keeps the connection for the next request if it can:
  HTTP/1.1 reads what is left of the body for up to a second first; HTTP/2 ends the stream
  and its connection carries on.
- `close()`: abandon the answer. The upstream sees the request cancelled: HTTP/1.1 closes the
  connection (unless the body had already ended, when there is nothing to cancel), HTTP/2
  resets the stream (the connection, shared by other streams, stays).

Either may be called any number of times; the first one counts. `read(limit)` ends the response
itself (released if the body ended within `limit`, closed if it went on past it).

Every failure is one of errors.py's upstream errors, whichever transport raised it:
`UpstreamUnreachable` (no answer began), `UpstreamBroken` (it began and broke; a compressed
body inflating too far is `UpstreamBodyTooLarge`), `UpstreamTimeout` (nothing arrived for the
read timeout, or no connection within the connect timeout). tests/upstream/
test_transport_contract.py runs each transport against real loopback servers to hold them to it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from callmissed.errors import (
    UpstreamBodyTooLarge,
    UpstreamBroken,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from callmissed.providers import UpstreamRequest
from callmissed.upstream.http1 import BodyTooLarge, ProtocolError

__all__ = ["Peer", "Response", "Transport", "read_capped", "retry_after"]


class Response(Protocol):
    status: int
    retry_after: float | None  # the Retry-After header in seconds, if it had one
    http_version: str
    connect_s: float | None  # seconds spent connecting for it (0.0 reused); None: not known

    async def read(self, limit: int) -> tuple[bytes, bool]:
        """Up to `limit` bytes of the body, and whether it went on past them (what follows is
        left unread). The response is ended by it: released, or closed if it went on."""

    async def receive(self) -> bytes:
        """The body's next bytes (all that arrived since the last call); b"" once it ended."""

    def close(self) -> None:
        """Abandon the response now: the upstream sees the request cancelled."""

    def release(self) -> None:
        """The answer is complete: keep the connection for the next request if it can be."""


class Transport(Protocol):
    """One provider's upstream: its connections and how requests travel over them."""

    async def send(self, request: UpstreamRequest, method: str = "POST") -> Response:
        """Send the request; return once the status and headers are in (any status)."""

    async def warm(self, url: str, count: int) -> None:
        """Open connections ahead of requests, so none of them pays the handshake."""

    async def close(self) -> None:
        """Close every connection; the transport is not used again."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Whom a transport talks to, as its errors name it: the provider's label and name."""

    label: str
    name: str

    def unreachable(self, cause: BaseException) -> UpstreamUnreachable:
        return UpstreamUnreachable(
            f"could not reach {self}: {type(cause).__name__}", provider=self.name
        )

    def broken(self, what: str) -> UpstreamBroken:
        return UpstreamBroken(f"{self} {what}", provider=self.name)

    def too_large(self, limit: int) -> UpstreamBodyTooLarge:
        return UpstreamBodyTooLarge(
            f"{self} sent a compressed body that inflates past {limit} bytes",
            provider=self.name,
            limit=limit,
        )

    def timeout(self, begun: bool) -> UpstreamTimeout:
        what = "stopped sending" if begun else "did not answer in time"
        return UpstreamTimeout(f"{self} {what}", provider=self.name)

    def failure(self, exc: BaseException, *, begun: bool) -> UpstreamError:
        """The contract's error for a client's own (an OSError, pyreqwest's, the inflater's):
        `begun` once the body was being read."""
        if isinstance(exc, TimeoutError):  # pyreqwest's RequestTimeoutError is one too
            return self.timeout(begun)
        if isinstance(exc, BodyTooLarge):
            return self.too_large(exc.limit)
        if isinstance(exc, ProtocolError):
            return self.broken(f"sent {exc}")
        if begun:
            return self.broken(f"broke the connection mid-response ({type(exc).__name__})")
        return self.unreachable(exc)

    def __str__(self) -> str:
        return f"{self.label} ({self.name})"


async def read_capped(receive: Callable[[], Awaitable[bytes]], limit: int) -> tuple[bytes, bool]:
    """Bytes from `receive` until the body ends or `limit` is passed, and whether it was."""
    parts: list[bytes] = []
    room = limit
    while data := await receive():
        if len(data) > room:
            parts.append(data[:room])
            return b"".join(parts), True
        parts.append(data)
        room -= len(data)
    return b"".join(parts), False


def retry_after(value: str | None) -> float | None:
    """A Retry-After header's seconds (its date form is not used by upstreams we know)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
