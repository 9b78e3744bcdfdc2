"""Route health shared by a server's workers: each tells the others what happened to its routes.

health.Health hands every local outcome to this module as a small event; the events go to the
other workers over peers.py's Unix sockets, off the request path, and each applies them to its
own Health, so a breaker opens and closes for the whole server and the EWMAs and error rates
agree. A change of a breaker goes out at once (the next loop turn); plain successes, one per
request, are summed per route and go out every _BATCH_EVERY seconds (health.Health.apply folds a
sum into the averages at once). A worker that starts (or is started again) asks the others for
their routes' state first. docs/resilience.md has the numbers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from callmissed.health import Event, Health
from callmissed.peers import Peers

__all__ = ["HealthPeers"]

log = logging.getLogger("callmissed")

_BATCH_EVERY = 0.25  # seconds: plain outcomes reach the other workers at most this late
_MAX_BATCH = 4096  # events per message: a flood is cut into messages of this many


class HealthPeers:
    """Connects a worker's Health to its peers. Made before peers.start(); start() after it."""

    def __init__(self, health: Health, peers: Peers) -> None:
        self._health = health
        self._peers = peers
        self._pending: list[Event] = []
        self._successes: dict[tuple[str, str], list[Any]] = {}  # route -> its "oks" event
        self._timer: asyncio.Handle | None = None
        self._urgent = False
        self._sending: set[asyncio.Task[None]] = set()
        health.subscribe(self._heard)
        peers.serve("health", self._receive)
        peers.serve("health_state", self._state)

    async def start(self) -> None:
        """Take over what the other workers know of every route (this one knows nothing yet)."""
        answers = await self._peers.ask("health_state", within=0.5)
        for state in answers.values:
            self._health.restore(state)

    def _heard(self, event: Event, urgent: bool) -> None:
        if event[0] == "ok" and not urgent:
            self._add_success(event)
        else:
            self._pending.append(event)
        loop = asyncio.get_running_loop()
        if urgent and not self._urgent:
            self._urgent = True
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_soon(self._send)
        elif self._timer is None:
            self._timer = loop.call_later(_BATCH_EVERY, self._send)

    def _add_success(self, event: Event) -> None:
        _, provider, model, at, ttfb = event
        summed = self._successes.get((provider, model))
        if summed is None:
            summed = self._successes[(provider, model)] = ["oks", provider, model, at, 0, 0.0, 0]
        summed[3] = at
        summed[4] += 1
        if ttfb is not None:
            summed[5] += ttfb
            summed[6] += 1

    def _send(self) -> None:
        self._timer, self._urgent = None, False
        for summed in self._successes.values():  # ["oks", p, m, at, count, ttfb sum, measured]
            if summed[6]:
                summed[5] /= summed[6]  # the mean first-token time of the measured ones
            self._pending.append(summed)
        self._successes = {}
        events, self._pending = self._pending, []
        for start in range(0, len(events), _MAX_BATCH):
            task = asyncio.ensure_future(self._tell(events[start : start + _MAX_BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _tell(self, events: list[Event]) -> None:
        answers = await self._peers.ask("health", events, within=1.0)
        if answers.skipped:
            log.debug(
                "route health: %d workers did not take %d events", answers.skipped, len(events)
            )

    async def _receive(self, events: Any) -> bool:
        if isinstance(events, list):
            self._health.apply(events)
        return True

    async def _state(self, _: Any) -> list[list[Any]]:
        return self._health.snapshot()
