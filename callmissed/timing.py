"""Where one request's milliseconds went: the gateway, each upstream attempt, the answer.

The API edge makes a RequestTrace when a chat request arrives; failover.py records each upstream
attempt in it (start, connect, first token, outcome) and observe.py the moment the request
settles. From it come the `Server-Timing` header, the `x_callmissed.timings` of a stream's last
event, the access log line and, with an OTLP endpoint set, the spans (docs/observability.md).
Recording is a perf_counter() call and a small object per attempt; nothing here does I/O.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from typing import Any

from callmissed.routing import Target

__all__ = ["Attempt", "RequestTrace", "round_ms"]

# W3C Trace Context: version 00, a 16-byte trace id, an 8-byte parent id, the flags.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


# Not frozen: one or more is made per request, and a frozen dataclass is ~5x slower to make.
@dataclass(slots=True)
class Attempt:
    """One upstream request: perf_counter() times, and how it ended ("" while it runs)."""

    target: Target
    started: float
    hedge: bool = False
    connect: float | None = None  # seconds to open its connection; 0.0 reused; None unknown
    ended: float | None = None  # its first token (the winner), failure or cancellation
    outcome: str = ""  # "ok", "abandoned", "timeout", "broken", "rate_limited", or a status
    span_id: int = 0  # its client span, when traces are recorded


class RequestTrace:
    """One chat request's timeline; see the module docstring. Times are perf_counter() values.

    `recording` (set by observe.py) says whether spans will be exported for it: then ids are
    made for the upstream's `traceparent`; otherwise an incoming one is passed on as it came.
    """

    __slots__ = (
        "attempts",
        "ended",
        "endpoint",
        "key_name",
        "model",
        "parent_span_id",
        "recording",
        "request_id",
        "sampled",
        "span_id",
        "started",
        "stream",
        "trace_id",
        "traceparent",
        "tracestate",
    )

    def __init__(
        self, request_id: str, traceparent: str | None = None, tracestate: str | None = None
    ) -> None:
        self.started = time.perf_counter()
        self.request_id = request_id
        self.traceparent = traceparent
        self.tracestate = tracestate
        self.attempts: list[Attempt] = []
        self.ended: float | None = None  # when the request settled (observe.py)
        self.endpoint: str | None = None  # the path it came in on, when an edge made it
        self.key_name: str | None = None
        self.model: str | None = None
        self.stream = False
        self.recording = False
        self.sampled = True
        self.trace_id = 0
        self.span_id = 0
        self.parent_span_id = 0

    # -- failover.py's side -----------------------------------------------------------------

    def begin_attempt(self, target: Target, hedge: bool = False) -> None:
        self.attempts.append(Attempt(target, time.perf_counter(), hedge))

    def connected(self, target: Target, seconds: float | None) -> None:
        attempt = self._running(target)
        if attempt is not None:
            attempt.connect = seconds

    def end_attempt(self, target: Target, outcome: str) -> None:
        attempt = self._running(target)
        if attempt is not None:
            attempt.ended = time.perf_counter()
            attempt.outcome = outcome

    def _running(self, target: Target) -> Attempt | None:
        for attempt in reversed(self.attempts):
            if attempt.target is target and not attempt.outcome:
                return attempt
        return None

    def upstream_headers(self, target: Target) -> dict[str, str] | None:
        """`traceparent` (and `tracestate`) for an attempt's upstream request, if any."""
        if not self.recording:
            if self.traceparent is None:
                return None
            parent = {"traceparent": self.traceparent}
        else:
            attempt = self._running(target)
            if attempt is None:
                return None
            attempt.span_id = random.getrandbits(64) or 1
            flags = "01" if self.sampled else "00"
            parent = {"traceparent": f"00-{self.trace_id:032x}-{attempt.span_id:016x}-{flags}"}
        if self.tracestate is not None:
            parent["tracestate"] = self.tracestate
        return parent

    def start_recording(self) -> None:
        """Make this request's span ids, under the incoming trace if it names a valid one."""
        self.recording = True
        self.span_id = random.getrandbits(64) or 1
        match = _TRACEPARENT.fullmatch(self.traceparent or "")
        if match and match[1] != _ZERO_TRACE and match[2] != _ZERO_SPAN:
            self.trace_id = int(match[1], 16)
            self.parent_span_id = int(match[2], 16)
            self.sampled = bool(int(match[3], 16) & 1)
        else:
            self.trace_id = random.getrandbits(128) or 1

    # -- what it says -----------------------------------------------------------------------

    @property
    def winner(self) -> Attempt | None:
        for attempt in reversed(self.attempts):
            if attempt.outcome == "ok":
                return attempt
        return None

    def gateway_ms(self) -> float | None:
        """Milliseconds before the first attempt began; None if none did."""
        return _ms(self.attempts[0].started - self.started) if self.attempts else None

    def first_token_ms(self) -> float | None:
        """Milliseconds to the winner's first token; None if no attempt won."""
        winner = self.winner
        if winner is None or winner.ended is None:
            return None
        return _ms(winner.ended - self.started)

    def timings(self, now: float | None = None) -> dict[str, float]:
        """Milliseconds: gw (before the first attempt), failover (attempts before the winner's),
        connect, upstream (the winner: sent to first token), first_token and total (to `now`)."""
        out: dict[str, float] = {}
        if self.attempts:
            first = self.attempts[0].started
            out["gw_ms"] = _ms(first - self.started)
            winner = self.winner
            if winner is not None:
                if winner.started > first:
                    out["failover_ms"] = _ms(winner.started - first)
                if winner.connect is not None:
                    out["connect_ms"] = _ms(winner.connect)
                assert winner.ended is not None
                out["upstream_ms"] = _ms(winner.ended - winner.started)
                out["first_token_ms"] = _ms(winner.ended - self.started)
        if now is not None:
            out["total_ms"] = _ms(now - self.started)
        return out

    def server_timing(self, total: bool) -> bytes:
        """The `Server-Timing` header: what is known now; `total` for an answer already whole.

        Numbers go through a format spec, which costs a third of round()-then-str each."""
        now = time.perf_counter()
        started = self.started
        attempts = self.attempts
        if not attempts:
            header = f"gw;dur={(now - started) * 1000:.2f}"
        else:
            first = attempts[0].started
            header = f"gw;dur={(first - started) * 1000:.2f}"
            winner = attempts[-1] if attempts[-1].outcome == "ok" else self.winner
            if winner is not None and winner.ended is not None:
                if winner.started > first:
                    waited = (winner.started - first) * 1000
                    header += f', failover;dur={waited:.2f};desc="{len(attempts)}"'
                if winner.connect is not None:
                    header += f", connect;dur={winner.connect * 1000:.2f}"
                upstream = (winner.ended - winner.started) * 1000
                header += f', upstream;dur={upstream:.2f};desc="{winner.target.route.provider}"'
        if total:
            header += f", total;dur={(now - started) * 1000:.2f}"
        return header.encode()

    def stream_extra(self) -> dict[str, Any]:
        """`x_callmissed` for a stream's last event: every timing, the total included."""
        return {"timings": self.timings(time.perf_counter())}


def _ms(seconds: float) -> float:
    return round_ms(seconds * 1000)


def round_ms(ms: float) -> float:
    """`ms` to two decimals, as round(ms, 2) but for an ulp at a tie: that one goes through
    dtoa and back (~2,700 instructions), this through an integer (~1,200)."""
    return round(ms * 100) / 100
