"""Each chat request's record, from where it settles to the access log and the span exporter.

An API edge asks for a RequestTrace (`begin`); the gateway `track`s it once the request holds
credit, and the ledger reports the request's one settlement (`settled`, from Ledger.append: the
place its accounting settles). A request refused before it held anything is reported by its edge
(`failed`). Finished requests are handed on in batches, _LINGER after the first of a batch: one
timer per batch, not per request; the lines are written by the access log's thread, the spans
exported by the span exporter's (otel.py, imported only when an OTLP endpoint is set).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from callmissed.accesslog import AccessLog, access_record
from callmissed.errors import GatewayError
from callmissed.settings import Observability
from callmissed.store import LedgerEntry
from callmissed.timing import RequestTrace

if TYPE_CHECKING:
    from callmissed.otel import SpanExport

__all__ = ["Finished", "Observer", "traces_status"]

_LINGER = 0.02  # seconds a batch gathers before it is handed on (as the ledger's writer does)


# Not frozen: one is made per request, and a frozen dataclass is ~5x slower to make.
@dataclass(slots=True)
class Finished:
    """A request that ended: its trace, its ledger entry (None if it never held credit)."""

    trace: RequestTrace
    entry: LedgerEntry | None
    status: int
    error: str | None


class Observer:
    """The gateway's one observer; start() in the worker's event loop, close() at its end."""

    def __init__(self, settings: Observability) -> None:
        self._settings = settings
        self._access = AccessLog(settings.access_log) if settings.access_log != "off" else None
        self._spans: SpanExport | None = None
        self._enabled = self._access is not None or settings.otlp_endpoint is not None
        self._flying: dict[str, RequestTrace] = {}  # request id -> trace, until it settles
        self._batch: list[Finished] = []
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._access is not None:
            self._access.start()
        if self._settings.otlp_endpoint is not None:
            from callmissed.otel import SpanExport  # imported only when traces are on

            self._spans = SpanExport(self._settings)
            self._spans.start()

    async def close(self) -> None:
        self._flush()
        if self._access is not None:
            await asyncio.to_thread(self._access.close)
        if self._spans is not None:
            await asyncio.to_thread(self._spans.shutdown)
            self._spans = None

    def begin(self, request_id: str, headers: Mapping[str, str], endpoint: str) -> RequestTrace:
        """The trace of a request just arrived, under its `traceparent` if it came with one."""
        trace = RequestTrace(request_id, headers.get("traceparent"), headers.get("tracestate"))
        trace.endpoint = endpoint
        if self._spans is not None:
            trace.start_recording()
        return trace

    def track(self, trace: RequestTrace) -> None:
        """The request now holds credit: its settlement (`settled`) will end it."""
        if self._enabled:
            self._flying[trace.request_id] = trace

    def settled(self, entry: LedgerEntry) -> None:
        """A request's accounting settled (ledger.Ledger calls this once per request)."""
        trace = self._flying.pop(entry.request_id, None)
        if trace is not None:
            trace.ended = time.perf_counter()
            self._add(Finished(trace, entry, entry.status, entry.error_code))

    def failed(self, trace: RequestTrace, error: BaseException) -> None:
        """A request refused before it held credit (or already settled: then nothing to do)."""
        if not self._enabled or trace.ended is not None:
            return
        self._flying.pop(trace.request_id, None)
        trace.ended = time.perf_counter()
        if isinstance(error, GatewayError):
            status, code = error.http_status, error.code
        else:
            status, code = 500, "internal_error"
        self._add(Finished(trace, None, status, code))

    def _add(self, finished: Finished) -> None:
        self._batch.append(finished)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_LINGER, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        wall_offset = time.time() - time.perf_counter()
        if self._access is not None:
            self._access.write(
                access_record(f.trace, f.entry, f.status, f.error, wall_offset) for f in batch
            )
        if self._spans is not None:
            self._spans.export(batch, wall_offset)


def traces_status(settings: Observability) -> str:
    """One line for `callmissed config check` and `serve`."""
    if settings.otlp_endpoint is None:
        return "traces: off (set OTEL_EXPORTER_OTLP_ENDPOINT to export them)"
    return f"traces: on, OTLP/HTTP to {settings.otlp_endpoint}"
