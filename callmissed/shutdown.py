"""Notice SIGTERM inside a worker, so in-flight requests get a deadline instead of forever.

On SIGTERM granian stops accepting connections and waits for the open ones to finish before it runs
the ASGI lifespan shutdown; a stream that never ends would hold the process for good. We add a
handler in front of the one the event loop installed (and still call it), and the gateway starts
its drain from there (Gateway.drain, docs/resilience.md).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["on_sigterm"]


def on_sigterm(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` on the loop when SIGTERM arrives; return a function that undoes it.

    Only a handler someone already installed is chained (the loop's, under granian); with the
    default action (terminate at once) or outside the main thread nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return _nothing
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous):
        return _nothing
    chained: Callable[[int, FrameType | None], object] = previous

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        chained(signum, frame)

    signal.signal(signal.SIGTERM, handler)

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return undo


def _nothing() -> None:
    pass
