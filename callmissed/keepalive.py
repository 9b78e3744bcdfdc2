"""SSE keep-alive comments while a stream waits for its first token; any API edge can use it.

A stream's HTTP status is chosen when its first token arrives (or every attempt fails). If that
takes longer than `keepalive_after`, the edge commits a 200 and writes an SSE comment line, which
every SDK ignores, every `keepalive_interval` until it does, so a proxy's idle timeout does not cut
a long think. The price (docs/resilience.md): a failure after that moment can no longer be an HTTP
status and goes out in-band, as an error event the SDK raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from callmissed.errors import GatewayError

__all__ = ["COMMENT", "Opening", "aiter_late", "open_or_keepalive"]

log = logging.getLogger("callmissed")

T = TypeVar("T")

COMMENT = b": keep-alive\n\n"


class Opening(Generic[T]):
    """A stream still being opened when the edge committed its 200."""

    def __init__(
        self, task: asyncio.Task[T], interval: float, close_result: Callable[[T], None]
    ) -> None:
        self._task = task
        self._interval = interval
        self._close_result = close_result

    async def aiter_comments(self) -> AsyncIterator[bytes]:
        """A comment now and every `interval` seconds, until the opening is done."""
        yield COMMENT
        while not self._task.done():
            done, _ = await asyncio.wait((self._task,), timeout=self._interval)
            if not done:
                yield COMMENT

    def result(self) -> T:
        """What the opening returned (call after aiter_comments ends); raises what it raised."""
        return self._task.result()

    def close(self) -> None:
        """Stop the opening, or close what it opened: the client is gone or the stream is over."""
        _close(self._task, self._close_result)


async def open_or_keepalive(
    opening: Awaitable[T], after: float, interval: float, close_result: Callable[[T], None]
) -> T | Opening[T]:
    """Await `opening` for up to `after` seconds; past that, hand it over as an Opening.

    `close_result` closes what `opening` returns if nobody will read it (the client left).
    """
    task = asyncio.ensure_future(opening)
    try:
        done, _ = await asyncio.wait((task,), timeout=after)
    except BaseException:
        _close(task, close_result)
        raise
    if done:
        return task.result()
    return Opening(task, interval, close_result)


async def aiter_late(
    opening: Opening[T],
    aiter_opened: Callable[[T], AsyncIterator[bytes]],
    error_event: Callable[[GatewayError], bytes],
    request_id: str,
) -> AsyncIterator[bytes]:
    """Keep-alive comments until the opening is done, then its stream; a failure goes in-band.

    Each API edge passes its own stream encoder and error-event renderer.
    """
    async for comment in opening.aiter_comments():
        yield comment
    try:
        opened = opening.result()
    except GatewayError as exc:
        yield error_event(exc)
        return
    except Exception:
        log.exception("stream failed to open (%s)", request_id)
        yield error_event(GatewayError(f"Internal error ({request_id})."))
        return
    async for part in aiter_opened(opened):
        yield part


def _close(task: asyncio.Task[T], close_result: Callable[[T], None]) -> None:
    def settle(finished: asyncio.Task[T]) -> None:
        if finished.cancelled():
            return
        if finished.exception() is None:
            close_result(finished.result())

    if task.done():
        with contextlib.suppress(asyncio.CancelledError):
            settle(task)
        return
    task.cancel()
    task.add_done_callback(settle)
