"""Notice SIGTERM inside a worker, so in-flight requests get a deadline instead of forever; and
send it to a worker whose server process is gone.

On SIGTERM granian stops accepting connections and waits for the open ones to finish before it runs
the ASGI lifespan shutdown; a stream that never ends would hold the process for good. We add a
handler in front of the one the event loop installed (and still call it), and the gateway starts
its drain from there (Gateway.drain, docs/resilience.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["SERVER_PID_ENV", "on_sigterm", "stop_with_parent"]

# Set by `callmissed serve` in its own environment before granian starts the workers, which
# inherit it: the process id of the server they belong to. Not a setting.
SERVER_PID_ENV = "CALLMISSED_SERVER_PID"

log = logging.getLogger("callmissed")


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


def stop_with_parent(loop: asyncio.AbstractEventLoop, every: float = 1.0) -> Callable[[], None]:
    """SIGTERM this process, once, when the process that started it is gone; return a function
    that stops watching.

    granian's server process can exit and leave a worker running with the listening socket:
    killed, or stopped while that worker was still starting (seen in the benchmarks). The
    orphan would serve on, unsupervised, for good. Its SIGTERM goes the usual way: drain
    (Gateway.drain), then granian's own worker shutdown.

    The parent to watch is the one `callmissed serve` names in SERVER_PID_ENV, not whichever
    process is the parent by the time this runs: a worker (re)started just as its server was
    killed is already an orphan when its app starts, and would otherwise watch its new parent.
    """
    parent = int(os.environ.get(SERVER_PID_ENV) or os.getppid())
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal handle
        if os.getppid() != parent:
            handle = None
            log.warning("the server process %d is gone; this worker stops", parent)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        handle = loop.call_later(every, check)

    def stop() -> None:
        if handle is not None:
            handle.cancel()

    handle = loop.call_later(every, check)
    return stop
