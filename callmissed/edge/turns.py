"""Requests start their work a few per turn of the event loop, so a burst cannot stall streams.

Starting a streamed request — parsing it, admission, choosing a route, calling the upstream —
takes ~100-200 µs of the event loop, and clients that were started together (a batch job, a
load test, everyone after a network blip) come back together. Let through at once, 1,000 of
them hold the loop for ~150 ms, during which no stream in flight gets a chunk: a stall every
held stream sees as a gap. Here a request waits for a turn of its own once `per_turn` others
have started in the same turn of the loop; between turns the loop relays what has arrived for
the streams in flight. A request that is alone, or one of a few, never waits.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Turns"]


class Turns:
    """At most `per_turn` request starts a turn of the event loop; the rest queue, in order."""

    def __init__(self, per_turn: int) -> None:
        self._per_turn = per_turn
        self._taken = 0  # starts let through in this turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_ends = False  # a call to _next_turn is scheduled

    async def take(self) -> None:
        """Return when this request may start its work: at once unless the turn is full."""
        if self._taken < self._per_turn and not self._waiting:
            self._taken += 1
            self._end_turn_soon()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._end_turn_soon()
        await waiter  # a cancel leaves it in the queue, done: _next_turn skips it

    def _end_turn_soon(self) -> None:
        if not self._turn_ends:
            self._turn_ends = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_ends = False
        self._taken = 0
        waiting = self._waiting
        while waiting and self._taken < self._per_turn:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._taken += 1
        if self._taken:
            self._end_turn_soon()
