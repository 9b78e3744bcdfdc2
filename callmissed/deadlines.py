"""Many deadlines that are rarely reached, on one event-loop timer.

Every streamed request has four in the gateway's: its total timeout, its first-token timeout,
its stream watchdog and its keep-alive start; the edge keeps two in its own (edge/lifecycle.py):
its body's deadline, and when to start watching for the client leaving (20 ms). The others
are seconds to minutes away, almost never reached, yet `asyncio.timeout()` arms and cancels a
loop timer for each (on uvloop ~5 us to enter and leave one; the four came to ~5 % of a
request's instructions). `Deadlines` keeps them
in a set and arms one loop timer for the earliest: adding a later deadline, or cancelling one,
costs a set operation. When the timer fires it runs what is due and re-arms for the earliest left.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from types import TracebackType

__all__ = ["Deadline", "Deadlines", "Timeout"]

log = logging.getLogger("callmissed")

# libuv times in whole milliseconds, so the timer may fire up to a millisecond before the earliest
# deadline; what is due within this much of now counts as due, or the timer would spin until then.
_RESOLUTION = 0.001


class Deadline:
    """Something due at loop time `when`, once added, unless cancelled first; reached() says
    what. A subclass that re-arms itself changes `when` and adds itself again."""

    __slots__ = ("_owner", "when")

    def __init__(self, owner: Deadlines, when: float) -> None:
        self._owner = owner
        self.when = when

    def reached(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        self._owner._pending.discard(self)


class _Call(Deadline):
    __slots__ = ("_callback",)

    def __init__(self, owner: Deadlines, when: float, callback: Callable[[], None]) -> None:
        super().__init__(owner, when)
        self._callback = callback

    def reached(self) -> None:
        self._callback()


class Deadlines:
    """One per event loop's users (the gateway's): see the module docstring."""

    def __init__(self) -> None:
        self._pending: set[Deadline] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf  # when the timer fires

    def __len__(self) -> int:
        return len(self._pending)

    def call_at(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Run `callback` at loop time `when` (from the loop, like loop.call_at)."""
        deadline = _Call(self, when, callback)
        self.add(deadline)
        return deadline

    def timeout_at(self, when: float) -> Timeout:
        """Like asyncio.timeout_at(), as a plain `with` block inside a task."""
        return Timeout(self, when)

    def timeout(self, delay: float) -> Timeout:
        """Like asyncio.timeout(), as a plain `with` block inside a task."""
        return Timeout(self, asyncio.get_running_loop().time() + delay)

    def add(self, deadline: Deadline) -> None:
        """Arm `deadline` (one of this Deadlines') for its `when`."""
        self._pending.add(deadline)
        if deadline.when < self._armed_for:
            self._arm(deadline.when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._armed_for = None, math.inf
        now = asyncio.get_running_loop().time() + _RESOLUTION
        due = [deadline for deadline in self._pending if deadline.when <= now]
        self._pending.difference_update(due)
        for deadline in sorted(due, key=_when):
            try:
                deadline.reached()
            except Exception:
                log.exception("deadline %r failed", deadline)
        if self._pending:
            earliest = min(self._pending, key=_when).when
            if earliest < self._armed_for:  # a callback may have armed it already
                self._arm(earliest)


def _when(deadline: Deadline) -> float:
    return deadline.when


class Timeout(Deadline):
    """A `with` block of a task that is cancelled at `when`; leaving it by that cancellation
    raises TimeoutError instead, as asyncio.timeout() does (a cancel from elsewhere passes).
    Nested blocks behave like nested asyncio.timeout()s."""

    __slots__ = ("_cancelling", "_task", "expired")

    def __init__(self, deadlines: Deadlines, when: float) -> None:
        super().__init__(deadlines, when)
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self.expired = False

    def __enter__(self) -> Timeout:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Timeout works inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._owner.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._owner._pending.discard(self)
        if (
            self.expired
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def reached(self) -> None:
        self.expire()

    def expire(self) -> None:
        """Cancel the block's task now (its deadline, or shutdown ending it early)."""
        if self.expired or self._task is None:
            return
        self._owner._pending.discard(self)
        self.expired = True
        self._task.cancel()
