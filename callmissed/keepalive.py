"""SSE keep-alive comments while a stream waits for its first token; any API edge can use it.

A stream's HTTP status is chosen when its first token arrives (or every attempt fails). If that
takes longer than `keepalive_after`, the edge commits a 200 and writes an SSE comment line, which
every SDK ignores, every `keepalive_interval` until it does, so a proxy's idle timeout does not cut
a long think. The price (docs/resilience.md): a failure after that moment can no longer be an HTTP
status and goes out in-band, as an error event the SDK raises.

The request's own task keeps waiting for the first token; a KeepAlive costs one deadline
(deadlines.py) until it is reached, and only then starts the response (through the edge's
Request.start_stream) and a task of its own for the comments.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from callmissed.deadlines import Deadline, Deadlines
from callmissed.errors import GatewayError
from callmissed.exchange import Headers, StartStream

__all__ = ["COMMENT", "InBand", "KeepAlive", "in_band_error"]

T = TypeVar("T")

log = logging.getLogger("callmissed")

COMMENT = b": keep-alive\n\n"


class InBand(Exception):
    """Opening the stream failed after its 200 went out: send `error` as an event instead."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class KeepAlive:
    """Comments from `after` seconds on, every `interval`, until stop(); see the module doc."""

    def __init__(
        self,
        start_stream: StartStream | None,
        headers: Headers,
        after: float,
        interval: float,
        on_start: Callable[[], None],
        deadlines: Deadlines,
    ) -> None:
        self._start_stream = start_stream
        self._headers = headers
        self._interval = interval
        self._on_start = on_start
        self._writer: asyncio.Task[None] | None = None
        self._started = False  # the 200 went out: what follows must go in-band
        self._stopping = False
        self._nap: asyncio.Future[None] | None = None  # the wait between two comments
        self._timer: Deadline | None = None
        if start_stream is not None:
            when = asyncio.get_running_loop().time() + after
            self._timer = deadlines.call_at(when, self._begin)

    def _begin(self) -> None:
        self._timer = None
        self._writer = asyncio.ensure_future(self._write_comments())

    async def _write_comments(self) -> None:
        # Never cancelled: granian's writes do not take a cancel well. stop() ends the nap instead.
        assert self._start_stream is not None
        write = await self._start_stream(self._headers)
        self._started = True
        self._on_start()
        while not self._stopping:
            await write(COMMENT)
            await self._pause()

    async def _pause(self) -> None:
        """`interval` seconds, or until stop()."""
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._nap = loop.create_future()
        wake = loop.call_later(self._interval, _resolve, self._nap)
        await self._nap
        wake.cancel()

    @property
    def started(self) -> bool:
        """Whether the 200 went out: what follows, a failure included, must go in-band."""
        return self._started

    async def run(self, opening: Awaitable[T]) -> T:
        """Await `opening` with comments meanwhile; a failure after the start raises InBand."""
        try:
            result = await opening
        except Exception as exc:
            if await self.stop():
                raise InBand(exc) from exc
            raise
        except BaseException:
            await self.stop()
            raise
        await self.stop()
        return result

    async def stop(self) -> bool:
        """No more comments; whether the response was started (`started`)."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        writer = self._writer
        if writer is None:
            return False
        if self._nap is not None:
            _resolve(self._nap)
        await asyncio.wait((writer,))  # its last write is over; our own cancel still reaches us
        if writer.exception() is not None:
            log.debug("keep-alive comments stopped: %r", writer.exception())  # the client left
        return self._started


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def in_band_error(
    error: Exception, error_event: Callable[[GatewayError], bytes], request_id: str
) -> AsyncIterator[bytes]:
    """The body of a stream that failed after its 200 went out: one error event the SDK raises."""
    if not isinstance(error, GatewayError):
        log.error("stream failed to open (%s)", request_id, exc_info=error)
        error = GatewayError(f"Internal error ({request_id}).")
    yield error_event(error)
