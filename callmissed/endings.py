"""How a request ends, every way it can, and what each ending bills, tells health and counts.

A committed stream (its first token is in) has one owner, a StreamOwner: it arms the stream's
watchdog, is how shutdown ends the stream, and is told exactly once that the stream closed, however
that came about (relay.ChatStream.close). Everything a stream's end does happens in its ended():

ending           noticed by                        ledger   the key pays                   health
---------------  --------------------------------  -------  -----------------------------  ---------
done             relay: a finish reason, the       200      the upstream's usage (its      -
                 usage or [DONE], and no error              cost); else prompt + output
client left      the edge: the client went away    499      the same: what an upstream     -
                                                            bills for a request it took
upstream failed  relay: an error event, a broken   error's  the output delivered           failed
                 or malformed stream
timed out        the watchdog: the idle or the     504      the output delivered           failed
                 total timeout passed
drained          shutdown, past its grace          503      the output delivered           -
hedge loser      failover's race: another won      -        nothing: the winner pays       abandoned
                 (discard_loser closes it)

Before a first token, and for answers that are not streamed (the gateway settles these here too):

refused          an upstream's error status, or    error's  nothing
                 no route left
client left      mid-attempt, a stream             499      the prompt estimate
                 (settle_unanswered)
client left      mid-attempt, a whole answer: it   499      its usage; the prompt if the
                 is read on (settle_abandoned)              answer never comes
client left      before an upstream had it         499      nothing

In one sentence: the key pays for what it got, and for what an upstream bills for a request the
key walked away from; never for a failure beyond the output that reached it. Output is never
billed beyond what an upstream that obeys the request can write (Charge.estimate, in
accounting/settlement.py).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any

from callmissed import failures
from callmissed.accounting.settlement import CLIENT_CLOSED, Charge
from callmissed.deadlines import Deadline, Deadlines
from callmissed.errors import GatewayError, ShuttingDown, UpstreamError
from callmissed.health import Health, route_name
from callmissed.metrics import Metrics
from callmissed.relay import ChatStream
from callmissed.settings import Route

__all__ = [
    "CLIENT_LEFT",
    "Ending",
    "StreamOwner",
    "client_left",
    "discard_loser",
    "settle_abandoned",
    "settle_unanswered",
]


# The message of the cancellation a client's disconnect sends into its request's task
# (web.unless_disconnected), so that what it reaches can tell it from a timeout or shutdown.
CLIENT_LEFT = "the client disconnected"


def client_left(cancelled: BaseException) -> bool:
    """Whether a CancelledError is the client's disconnect."""
    return isinstance(cancelled, asyncio.CancelledError) and cancelled.args[:1] == (CLIENT_LEFT,)


class Ending(enum.Enum):
    """The ways a committed stream ends (the module docstring's table)."""

    DONE = "done"
    CLIENT_LEFT = "client left"
    FAILED = "upstream failed"
    TIMED_OUT = "timed out"
    DRAINED = "drained"


class StreamOwner(Deadline):
    """The one owner of a committed stream's end; also its watchdog (one deadline per stream,
    re-armed only when reached: the per-chunk cost is the timestamp ChatStream takes before
    each read)."""

    __slots__ = (
        "_charge", "_cut", "_deadline", "_health", "_idle", "_loop", "_metrics", "_model",
        "_release", "_route", "_stream", "meter",
    )  # fmt: skip

    def __init__(
        self,
        stream: ChatStream,
        charge: Charge,
        route: Route,
        model: str,
        watch: tuple[Health, Metrics, Deadlines],
        idle: float,
        deadline: float,
        release: Callable[[], None],
    ) -> None:
        """Own `stream`, billed to `charge`, served by `route`: silence past `idle` s or the loop
        time `deadline` ends it; `release` frees the request's slot in failover.py."""
        self._loop = asyncio.get_running_loop()
        health, metrics, deadlines = watch
        super().__init__(deadlines, min(self._loop.time() + idle, deadline))
        self._stream = stream
        self._charge = charge
        self.meter = charge  # sees every batch that reaches the client (settlement.StreamMeter)
        self._route = route
        self._model = model
        self._health = health
        self._metrics = metrics
        self._idle = idle
        self._deadline = deadline
        self._release = release
        self._cut: GatewayError | None = None  # why we ended it, if we did (timeout, shutdown)
        charge.upstream_id = stream.upstream_id
        deadlines.add(self)
        stream.own(self)  # a stream that already ended is ended() right here

    # Ending it ourselves

    def reached(self) -> None:
        """The watchdog's deadline: end a stream silent for `idle` s, or past its deadline."""
        now = self._loop.time()
        stream = self._stream
        if now >= self._deadline:
            message = "the answer did not finish within the total timeout"
            self._end(failures.failure(failures.TOTAL_TIMEOUT, message))
            return
        if stream.reading and now - stream.read_started >= self._idle:
            message = f"the upstream sent nothing for {self._idle:g} s"
            self._end(failures.failure(failures.IDLE_TIMEOUT, message))
            return
        since = stream.read_started if stream.reading else now
        self.when = min(since + self._idle, self._deadline)
        self._owner.add(self)

    def abort(self, reason: GatewayError) -> None:
        """End the stream with `reason` (shutdown, after its grace)."""
        self._end(reason)

    def _end(self, reason: GatewayError) -> None:
        if self._cut is None:
            self._cut = reason
        self._stream.abort(reason)

    # Its end, whichever it was

    def ended(self, stream: ChatStream) -> None:
        """The stream closed: settle its charge, tell health and metrics, free its slot."""
        self.cancel()
        # Dropped once called: it holds failover's slot, which holds this owner, and that cycle
        # would leave every request's objects to the garbage collector.
        release, self._release = self._release, _nothing
        release()
        ending = self.ending(stream)
        charge = self._charge
        message = None  # what a failure's client was told (the console shows it)
        if ending is Ending.DONE or ending is Ending.CLIENT_LEFT:
            usage = stream.usage
            tokens, cost = charge.price_usage(usage) if usage else charge.estimate(prompt=True)
            if ending is Ending.DONE:
                status, code, outcome = 200, None, "ok"
            else:
                status, code, outcome = CLIENT_CLOSED, "client_closed", "cancelled"
        else:
            error = stream.failure or self._cut or ShuttingDown("the server is shutting down")
            tokens, cost = charge.estimate(prompt=False)
            status, code, outcome = error.http_status, error.code, "cancelled"
            message = error.message
            if isinstance(error, UpstreamError):
                outcome = "error"
                self._health.failed(self._route, error)
                self._metrics.inc("callmissed_stream_errors_total", route_name(self._route))
        self._metrics.inc("callmissed_requests_total", self._model, outcome)
        charge.settle(status, code, tokens, cost, message)

    def ending(self, stream: ChatStream) -> Ending:
        """Which way `stream` ended (the module docstring's table)."""
        failure = stream.failure
        if failure is not None:
            return Ending.TIMED_OUT if failure is self._cut else Ending.FAILED
        if stream.finished or stream.usage is not None or stream.complete:
            return Ending.DONE
        if self._cut is not None:  # shutdown: ShuttingDown is not the upstream's failure
            return Ending.DRAINED
        return Ending.CLIENT_LEFT


def _nothing() -> None:
    pass


def settle_unanswered(charge: Charge, error: BaseException, upstream_had_it: bool) -> None:
    """No stream was committed: refused (nothing to pay), or the client left — while an
    attempt was in flight (`upstream_had_it`) it pays the prompt an upstream took."""
    if isinstance(error, asyncio.CancelledError) and upstream_had_it:
        tokens, cost = charge.estimate(prompt=True)
        charge.settle(CLIENT_CLOSED, "client_closed", tokens, cost)
    else:
        charge.fail(error)


async def settle_abandoned(answer: asyncio.Future[Any], charge: Charge, route: Route) -> None:
    """The client left while `route`'s upstream wrote a whole answer it had accepted: read it on
    (the caller bounds the wait: the request's total timeout, shutdown; the upstream body cap,
    settings.Limits, bounds its size) and bill its usage; an error it answers with costs
    nothing, and an answer that never comes, the prompt. Never raises: nobody is waiting."""
    charge.routed(route, stream=False)
    try:
        completion = await answer
    except UpstreamError as exc:
        if exc.upstream_status is not None:  # the upstream answered with an error
            charge.fail(exc)
            return
        _prompt_only(charge)
    except BaseException:  # our timeout, shutdown, the gateway closing: nobody to tell
        _prompt_only(charge)
    else:
        charge.complete(completion, status=CLIENT_CLOSED)


def _prompt_only(charge: Charge) -> None:
    tokens, cost = charge.estimate(prompt=True)
    charge.settle(CLIENT_CLOSED, "client_closed", tokens, cost)


def discard_loser(task: asyncio.Task[Any]) -> None:
    """A hedged attempt that lost the race: cancel it, and if it opened a stream meanwhile,
    close it. Nothing is billed: the request's charge follows the winner."""
    if not task.done():
        task.cancel()
    task.add_done_callback(_close_loser)


def _close_loser(task: asyncio.Task[Any]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    result = task.result()
    if isinstance(result, ChatStream):
        result.close()
