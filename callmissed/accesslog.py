"""The structured access log: one JSON line per chat request, written by a thread of its own.

observe.py hands over a batch of settled requests at a time; each becomes one line (request id,
key name — never the key —, model, route, upstream model, status, first token, total, tokens,
cost, attempts) and the batch is queued for a writer thread, so a slow stderr reader or disk
never stalls the event loop. Writes are whole lines of at most PIPE_BUF bytes, so the lines of
several workers sharing one stderr or file never interleave. Past _MAX_PENDING unwritten bytes
new lines are dropped and counted rather than held without bound.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import queue
import select
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from callmissed.store import LedgerEntry
from callmissed.timing import RequestTrace, round_ms

__all__ = ["AccessLog", "access_record"]

log = logging.getLogger("callmissed")

_MAX_PENDING = 8 * 1024 * 1024  # bytes queued for the writer before lines are dropped
_ATOMIC = select.PIPE_BUF  # a pipe write this size or smaller is never split by the kernel


def access_record(
    trace: RequestTrace,
    entry: LedgerEntry | None,
    status: int,
    error: str | None,
    wall_offset: float,
) -> dict[str, Any]:
    """One request's line; `wall_offset` turns its perf_counter() times into epoch seconds."""
    ended = trace.ended if trace.ended is not None else trace.started
    failed = [
        f"{a.target.route.provider}:{a.target.route.upstream_model} {a.outcome}"
        for a in trace.attempts
        if a.outcome not in ("ok", "")
    ]
    record: dict[str, Any] = {
        "time": _iso_time(trace.started + wall_offset),
        "request_id": trace.request_id,
        "endpoint": trace.endpoint,
        "key": trace.key_name,
        "model": entry.model if entry is not None else trace.model,
        "stream": trace.stream,
        "route": (entry.route or None) if entry is not None else None,
        "upstream_model": (entry.upstream_model or None) if entry is not None else None,
        "status": status,
        "error": error,
        "gw_ms": trace.gateway_ms(),
        "first_token_ms": trace.first_token_ms(),
        "total_ms": round_ms((ended - trace.started) * 1000),
        "prompt_tokens": entry.prompt_tokens if entry is not None else 0,
        "completion_tokens": entry.completion_tokens if entry is not None else 0,
        "cost": entry.cost / 1_000_000 if entry is not None else 0.0,
        "attempts": len(trace.attempts),
    }
    if failed:
        record["failed"] = failed
    return record


def _iso_time(epoch: float) -> str:
    """`datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")`, the date and the
    time of day made once a second: the line's costliest field otherwise (~12,000 instructions)."""
    fraction, whole = math.modf(epoch)
    micros = round(fraction * 1e6)  # as datetime rounds a timestamp: half to even
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_iso_second(int(whole))}.{micros // 1000:03d}+00:00"


@functools.lru_cache(maxsize=2)
def _iso_second(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().removesuffix("+00:00")


class AccessLog:
    """Lines to stderr or appended to a file. start() in the worker; close() at its end."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._fd = -1
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._queued = 0  # bytes ever queued (the event loop's thread writes it) ...
        self._written = 0  # ... and ever written or given up on (the writer thread's)
        self.dropped = 0  # lines not logged because the writer was that far behind

    def start(self) -> None:
        if self._target == "stderr":
            self._fd = os.dup(2)
        else:
            self._fd = os.open(self._target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._thread = threading.Thread(target=self._run, name="callmissed-access-log", daemon=True)
        self._thread.start()

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Queue these lines for the writer; never blocks."""
        lines = [orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE) for record in records]
        if self._queued - self._written > _MAX_PENDING:
            self.dropped += len(lines)
            return
        blob = b"".join(lines)
        self._queued += len(blob)
        self._queue.put(blob)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to `timeout` seconds), then stop the writer."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
        os.close(self._fd)
        if self.dropped:
            log.warning(
                "access log: %d lines were dropped, the log could not keep up", self.dropped
            )

    def _run(self) -> None:
        while (blob := self._queue.get()) is not None:
            try:
                for piece in _pieces(blob):
                    _write_all(self._fd, piece)
            except OSError as exc:
                log.warning("access log: cannot write to %s: %s", self._target, exc)
            self._written += len(blob)


def _pieces(blob: bytes) -> Iterable[bytes]:
    """`blob` cut at line ends into pieces of at most _ATOMIC bytes (a longer line: alone)."""
    start = 0
    while len(blob) - start > _ATOMIC:
        end = blob.rfind(b"\n", start, start + _ATOMIC) + 1
        if end <= start:  # one line longer than _ATOMIC: it goes whole, in one write
            end = blob.index(b"\n", start) + 1
        yield blob[start:end]
        start = end
    if start < len(blob):
        yield blob[start:]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        with contextlib.suppress(InterruptedError):
            view = view[os.write(fd, view) :]
