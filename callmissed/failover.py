"""Which route answers a request: fallback, same-route retries, hedging, and its time limits.

A model's routes are tried best first (health.py orders them). The first attempt to produce a first
token wins and is committed to; before that, a failure moves on to the next route or goes straight
to the client, and may have its route tried again, as the failure table says (failures.py): a
bounded number of attempts, and a route is retried only after a jittered backoff that honours its
Retry-After. With `hedge_after_ms`, a slow first attempt gets a second one racing it; the loser
is cancelled. After commit nothing switches: the stream belongs to its owner (endings.py), which
ends a silent or overdue one with an error the SDK raises and settles every ending. relay.py
decodes; upstream/ does the I/O.
docs/resilience.md has the rules and the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from callmissed import failures
from callmissed.accounting.settlement import Charge
from callmissed.deadlines import Deadlines, Timeout
from callmissed.endings import (
    StreamOwner,
    client_left,
    discard_loser,
    settle_abandoned,
    settle_unanswered,
)
from callmissed.errors import GatewayError, UpstreamError
from callmissed.health import Health, route_name
from callmissed.metrics import Metrics
from callmissed.providers import Provider, UpstreamRequest
from callmissed.relay import CHAT_COMPLETIONS, ChatStream, UpstreamAPI
from callmissed.routing import Target
from callmissed.settings import Limits, ModelSettings, Route, Settings
from callmissed.timing import RequestTrace
from callmissed.upstream import Upstream, UpstreamResponse

__all__ = ["Failover", "Won"]

T = TypeVar("T")


# Not frozen: one or more is made per request, and a frozen dataclass is ~5x slower to make.
@dataclass(slots=True)
class Won(Generic[T]):
    """The attempt that answered, and what it took: the basis for billing and RouteInfo."""

    target: Target
    result: T
    attempts: int  # upstream requests made, the winner and any hedge loser included
    failed: tuple[str, ...]  # "provider:model status" of each failed attempt, in order
    hedged: bool


class _Inflight:
    """One request the gateway is serving, so shutdown can end it."""

    __slots__ = ("answer", "cut_short", "deadline", "owner", "reason", "route", "scope")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.route: Route | None = None  # the route of its latest attempt, or the one answering
        self.reason: GatewayError | None = None  # why it was ended early, if it was
        self.scope: Timeout | None = None
        self.owner: StreamOwner | None = None  # its committed stream's
        self.cut_short = False  # cancelled while an attempt was in flight: an upstream had it
        # An accepted whole answer still being read after its client left, and its route.
        self.answer: tuple[asyncio.Task[dict[str, Any]], Route] | None = None

    def abort(self, reason: GatewayError) -> None:
        self.reason = reason
        if self.owner is not None:
            self.owner.abort(reason)
        elif self.scope is not None:
            self.scope.expire()


class Failover:
    """Runs requests over their routes. One per gateway; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        health: Health,
        metrics: Metrics,
        deadlines: Deadlines,
    ) -> None:
        self._timeouts = settings.timeouts
        self._limits = settings.limits
        self._deadlines = deadlines
        self._policy = settings.resilience
        self._upstream = upstream
        self._health = health
        self._metrics = metrics
        self._active: set[_Inflight] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._reading_on: set[asyncio.Task[None]] = set()  # answers whose clients left

    @property
    def limits(self) -> Limits:
        """What an upstream answer may hold (settings.Limits)."""
        return self._limits

    @property
    def inflight(self) -> int:
        return len(self._active)

    def inflight_by_route(self) -> dict[str, int]:
        """Requests in flight per route: the one answering them, or the one they wait on (a
        hedged request counts once, under its latest attempt). Counted when asked (console)."""
        counts: dict[str, int] = {}
        for request in self._active:
            if request.route is not None:
                name = route_name(request.route)
                counts[name] = counts.get(name, 0) + 1
        return counts

    async def complete(
        self,
        model: ModelSettings,
        targets: list[Target],
        body: dict[str, Any],
        charge: Charge,
        trace: RequestTrace,
        api: UpstreamAPI = CHAT_COMPLETIONS,
    ) -> Won[dict[str, Any]]:
        """A whole chat.completion (or `api`'s answer) from the first route that gives one; the
        caller settles `charge` for it. A failure, or the client leaving, settles `charge` here
        (endings.py): an answer its upstream had accepted (its headers came) is read on, and
        billed.

        The whole answer is its first token, so only the total timeout bounds an attempt
        (upstreams send a non-streamed answer's headers when it is done; see resilience.md).
        """

        async def attempt(target: Target) -> dict[str, Any]:
            response = await self._send(target, body, model, api, trace)
            return await self._answer(request, target, response, api)

        request = self._enter(model)
        try:
            won = await self._run(request, model, targets, attempt, trace)
        except BaseException as exc:
            if request.answer is not None:
                self._read_on(request, charge, *request.answer)
            else:
                self._leave(request)
                settle_unanswered(charge, exc, upstream_had_it=request.cut_short)
            raise
        self._leave(request)
        self._metrics.inc("callmissed_requests_total", model.name, "ok")
        return won

    async def call(
        self,
        model: ModelSettings,
        targets: list[Target],
        attempt: Callable[[Target], Awaitable[T]],
        trace: RequestTrace | None = None,
    ) -> Won[T]:
        """The first route whose `attempt` gives a whole answer (embeddings), with the same
        fallback, retries, hedging, total timeout and bookkeeping as complete(); `trace` records
        the attempts (timing.py)."""
        request = self._enter(model)
        try:
            won = await self._run(request, model, targets, attempt, trace or RequestTrace(""))
        finally:
            self._leave(request)
        self._metrics.inc("callmissed_requests_total", model.name, "ok")
        return won

    async def _answer(
        self, request: _Inflight, target: Target, response: UpstreamResponse, api: UpstreamAPI
    ) -> dict[str, Any]:
        """Read an accepted answer; if its client leaves meanwhile, keep the read for _read_on."""
        limit = self._limits.upstream_body_bytes
        reading = asyncio.ensure_future(api.read(target.provider, response, limit))
        try:
            return await asyncio.shield(reading)
        except asyncio.CancelledError as exc:
            if client_left(exc):
                request.answer = (reading, target.route)
            else:  # our own timeout, shutdown, or a lost race: nobody will pay for it
                reading.cancel()
            raise

    def _read_on(
        self, request: _Inflight, charge: Charge, reading: asyncio.Task[Any], route: Route
    ) -> None:
        """Settle `charge` from an answer read for a client that left, within the request's total
        timeout (and shutdown: drain() ends it as any request)."""

        async def read_on() -> None:
            try:
                with self._deadlines.timeout_at(request.deadline) as request.scope:
                    await settle_abandoned(reading, charge, route)
            finally:
                request.scope = None
                self._leave(request)

        task = asyncio.ensure_future(read_on())
        self._reading_on.add(task)
        task.add_done_callback(self._reading_on.discard)

    async def close(self) -> None:
        """Stop reading answers for clients that left: each settles for its prompt."""
        for task in list(self._reading_on):
            task.cancel()
        if self._reading_on:
            await asyncio.wait(self._reading_on)

    async def open_stream(
        self,
        model: ModelSettings,
        targets: list[Target],
        body: dict[str, Any],
        include_usage: bool,
        charge: Charge,
        trace: RequestTrace,
        api: UpstreamAPI = CHAT_COMPLETIONS,
    ) -> Won[ChatStream]:
        """A started ChatStream (its first token is in), handed to its owner (endings.py), which
        settles `charge` however it ends. A failure to open it settles `charge` here."""
        timeouts = model.timeouts or self._timeouts

        async def attempt(target: Target) -> ChatStream:
            try:
                with self._deadlines.timeout(timeouts.first_token):
                    response = await self._send(target, body, model, api, trace)
                    stream = api.stream(
                        target.provider, response, include_usage, self._limits.sse_event_bytes
                    )
                    try:
                        await stream.start()
                    except BaseException:
                        stream.close()
                        raise
            except TimeoutError:
                label = f"{target.provider.label} ({target.provider.name})"
                raise failures.failure(
                    failures.FIRST_TOKEN_TIMEOUT,
                    f"{label} sent no first token within {timeouts.first_token:g} s",
                    provider=target.provider.name,
                ) from None
            return stream

        request = self._enter(model)
        try:
            won = await self._run(request, model, targets, attempt, trace)
        except BaseException as exc:
            self._leave(request)
            settle_unanswered(charge, exc, upstream_had_it=request.cut_short)
            raise
        route = won.target.route
        charge.routed(route, stream=True)
        request.owner = StreamOwner(
            won.result,
            charge,
            route,
            model.name,
            (self._health, self._metrics, self._deadlines),
            timeouts.idle,
            request.deadline,
            functools.partial(self._leave, request),
        )
        return won

    async def _send(
        self,
        target: Target,
        body: dict[str, Any],
        model: ModelSettings,
        api: UpstreamAPI,
        trace: RequestTrace,
    ) -> UpstreamResponse:
        request = api.build(target.provider, body, target.route, model)
        parent = trace.upstream_headers(target)
        if parent is not None:  # a copy: the provider's headers are shared by every request
            request.headers = {**request.headers, **parent}
        response = await self.send(target.provider, request)
        trace.connected(target, response.connect_s)
        return response

    async def send(self, provider: Provider, request: UpstreamRequest) -> UpstreamResponse:
        """POST a built request; the provider's UpstreamError if the upstream answers >= 400."""
        response = await self._upstream.send(provider, request)
        if response.status >= 400:
            try:  # enough of it to read the error: a hostile upstream's may never end
                error_body, _ = await response.read(self._limits.upstream_error_body_bytes)
            finally:
                response.close()
            raise provider.parse_error(response.status, error_body, response.retry_after)
        return response

    async def _run(
        self,
        request: _Inflight,
        model: ModelSettings,
        targets: list[Target],
        attempt: Callable[[Target], Awaitable[T]],
        trace: RequestTrace,
    ) -> Won[T]:
        """The route loop, within the request's total timeout (or until shutdown ends it)."""
        plan = _Plan(self, model, targets, request, trace)
        try:
            with self._deadlines.timeout_at(request.deadline) as request.scope:
                if model.hedge_after_ms:
                    won = await _race(plan, attempt, model.hedge_after_ms / 1000)
                else:
                    won = await _one_by_one(plan, attempt)
        except TimeoutError:
            self._metrics.inc("callmissed_requests_total", model.name, "error")
            total = (model.timeouts or self._timeouts).total
            raise request.reason or failures.failure(
                failures.TOTAL_TIMEOUT,
                f"{model.name} produced no answer within the {total:g} s total timeout",
            ) from None
        except GatewayError:
            self._metrics.inc("callmissed_requests_total", model.name, "error")
            raise
        except asyncio.CancelledError:
            request.cut_short = plan.cut_short
            self._metrics.inc("callmissed_requests_total", model.name, "cancelled")
            raise
        finally:
            request.scope = None
        if won.failed:
            self._metrics.inc("callmissed_fallbacks_total", model.name)
        return won

    # -- bookkeeping ----------------------------------------------------------------------------

    def _enter(self, model: ModelSettings) -> _Inflight:
        loop = asyncio.get_running_loop()
        request = _Inflight(loop.time() + (model.timeouts or self._timeouts).total)
        self._active.add(request)
        self._idle.clear()
        return request

    def _leave(self, request: _Inflight) -> None:
        self._active.discard(request)
        if not self._active:
            self._idle.set()

    async def drain(self, grace: float, reason: GatewayError) -> None:
        """Let in-flight requests finish for `grace` seconds, then end the rest with `reason`."""
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
            return
        except TimeoutError:
            pass
        for request in list(self._active):
            request.abort(reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):  # their error events still have to be written
                await self._idle.wait()


async def _one_by_one(plan: _Plan, attempt: Callable[[Target], Awaitable[T]]) -> Won[T]:
    while (target := await plan.next()) is not None:
        started = asyncio.get_running_loop().time()
        try:
            result = await attempt(target)
        except UpstreamError as exc:
            plan.failed(target, exc)
            continue
        except BaseException:
            plan.abandoned(target, started)
            raise
        return plan.won(target, result, started)
    raise plan.exhausted()


class _Plan:
    """The attempts of one request: which route next, and what happened to the others."""

    def __init__(
        self,
        failover: Failover,
        model: ModelSettings,
        targets: list[Target],
        request: _Inflight,
        trace: RequestTrace,
    ) -> None:
        self._deadline = request.deadline
        self._request = request
        self._trace = trace
        self._health = failover._health
        self._metrics = failover._metrics
        self._policy = failover._policy
        self._model = model
        self._targets = targets
        self._queue = deque(self._health.order(model, targets))
        self._retry: list[tuple[Target, UpstreamError]] = []
        self._round = 0
        self.attempts = 0
        self.failures: list[tuple[Target, UpstreamError]] = []
        self.hedge: Target | None = None  # the attempt started to race a slow one
        self.cut_short = False  # an attempt in flight was abandoned: its upstream had the request

    def can_hedge(self) -> bool:
        return bool(self._queue) and self._round == 0 and self.attempts < self._policy.max_attempts

    def next_now(self) -> Target | None:
        """The next untried route, if one may be tried right now (no backoff wait)."""
        while self.can_hedge():
            target = self._queue.popleft()
            if self._health.acquire(target.route):
                self.attempts += 1
                self._trace.begin_attempt(target, hedge=True)
                self._request.route = target.route
                return target
        return None

    async def next(self) -> Target | None:
        """The next route to try, after the backoff a retry needs; None when there is none."""
        while self.attempts < self._policy.max_attempts:
            if not self._queue:
                if not self._retry:
                    return None
                self._round += 1
                await self._backoff()
                continue
            target = self._queue.popleft()
            if self._health.acquire(target.route):
                self.attempts += 1
                self._trace.begin_attempt(target)
                self._request.route = target.route
                return target
        return None

    async def _backoff(self) -> None:
        """Queue the routes worth retrying, after a jittered wait that honours Retry-After."""
        cap = self._policy.max_retry_wait
        delay = min(cap, self._policy.retry_backoff * 2 ** (self._round - 1))
        delay *= random.uniform(0.5, 1.0)  # jitter: retries from many requests spread out
        retry = [(t, e) for t, e in self._retry if e.retry_after is None or e.retry_after <= cap]
        self._retry = []
        delay = max([delay, *(e.retry_after or 0.0 for _, e in retry)])
        if not retry or asyncio.get_running_loop().time() + delay >= self._deadline:
            return  # nothing may be retried, or not before the request's time is up
        await asyncio.sleep(delay)
        self._queue.extend(target for target, _ in retry)

    def failed(self, target: Target, error: UpstreamError) -> None:
        """Record a failed attempt; raise `error` if no other route should be tried after it."""
        rule = failures.rule(error)
        self._health.failed(target.route, error)
        self.failures.append((target, error))
        outcome = failures.outcome(error)
        self._trace.end_attempt(target, outcome)
        self._metrics.inc("callmissed_attempts_total", route_name(target.route), outcome)
        if not rule.fallback:
            raise error
        if rule.retry:
            self._retry.append((target, error))

    def abandoned(self, target: Target, started: float) -> None:
        self.cut_short = True
        waited = asyncio.get_running_loop().time() - started
        self._trace.end_attempt(target, "abandoned")
        self._health.abandoned(target.route, waited)
        self._metrics.inc("callmissed_attempts_total", route_name(target.route), "abandoned")

    def won(self, target: Target, result: T, started: float) -> Won[T]:
        self._trace.end_attempt(target, "ok")
        self._request.route = target.route
        ttfb = asyncio.get_running_loop().time() - started
        name = route_name(target.route)
        self._health.succeeded(target.route, ttfb)
        self._metrics.inc("callmissed_attempts_total", name, "ok")
        self._metrics.observe("callmissed_ttfb_seconds", ttfb, name)
        if self.hedge is not None:
            winner = "hedge" if target is self.hedge else "first"
            self._metrics.inc("callmissed_hedges_total", self._model.name, winner)
        failed = tuple([_attempt(t, e) for t, e in self.failures])
        return Won(target, result, self.attempts, failed, self.hedge is not None)

    def exhausted(self) -> GatewayError:
        """The error for a request out of routes or attempts."""
        if not self.failures:
            return self._health.unavailable(self._model, self._targets)
        last = self.failures[-1][1]
        if len(self.failures) > 1:
            tried = ", ".join(_attempt(t, e) for t, e in self.failures)
            last.message = f"{last.message} (after {len(self.failures)} attempts: {tried})"
        return last


async def _race(
    plan: _Plan, attempt: Callable[[Target], Awaitable[T]], hedge_after: float
) -> Won[T]:
    """Like the plain route loop, but a slow attempt gets the next route racing it."""
    loop = asyncio.get_running_loop()
    running: dict[asyncio.Task[T], tuple[Target, float]] = {}
    try:
        while True:
            if not running:
                target = await plan.next()
                if target is None:
                    raise plan.exhausted()
                running[asyncio.ensure_future(attempt(target))] = (target, loop.time())
            wait = hedge_after if len(running) == 1 and plan.can_hedge() else None
            done, _ = await asyncio.wait(running, timeout=wait, return_when="FIRST_COMPLETED")
            if not done:
                hedge = plan.next_now()
                if hedge is not None:
                    plan.hedge = hedge
                    running[asyncio.ensure_future(attempt(hedge))] = (hedge, loop.time())
                continue
            for task in done:
                target, started = running.pop(task)
                error = task.exception()
                if error is None:
                    return plan.won(target, task.result(), started)
                if not isinstance(error, UpstreamError):
                    raise error
                plan.failed(target, error)
    finally:
        for task, (target, started) in running.items():
            plan.abandoned(target, started)
            discard_loser(task)


def _attempt(target: Target, error: UpstreamError) -> str:
    """A failed attempt as the "after n attempts" message and RouteInfo name it."""
    return f"{route_name(target.route)} {failures.outcome(error)}"
