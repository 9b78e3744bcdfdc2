"""The load generator: C workers streaming chat completions over keep-alive connections.

HTTP/1.1 goes through one aiohttp session (C connections); `--http2` multiplexes the workers
over HTTP/2 connections of at most 100 streams each (one up to C=100), as a client's pool would
under a server's stream limit, with the `h2` library: h2c (prior knowledge) for an http URL, h2 by
ALPN for an https one (`--cafile` names the CA to trust, for HTTP/1.1 too). Each request is
timed from just before it is sent: TTFB is the first SSE event whose `delta.content` is
non-empty, total is `data: [DONE]`, gaps are the times between successive content events
(`--gaps`). A request counts only with status 200, all 20 content chunks and `[DONE]`.

Traffic is bounded: no request starts after `--warmup + --duration` seconds (or after
`--max-requests`), and any still running `--grace` seconds later is cancelled and counted as
unfinished. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import time
from array import array
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import uvloop

from benchmarks.upstream import CHUNKS

__all__ = ["StreamTally", "main", "summarise"]

_DATA = b"data: "
_DONE = b"[DONE]"
_TOKEN = b'"tok'


class Failed(Exception):
    """A request that did not count; the message is its error kind."""


class StreamTally:
    """Reads one SSE response as it arrives and times it."""

    __slots__ = ("_buffer", "_gaps", "_last", "_start", "chunks", "done", "gaps", "ttfb")

    def __init__(self, start: float, gaps: bool) -> None:
        self._start = start
        self._buffer = b""
        self._gaps = gaps
        self._last = 0.0
        self.ttfb: float | None = None
        self.chunks = 0
        self.done = False
        self.gaps: list[float] = []

    def feed(self, data: bytes, now: float) -> None:
        buffer = self._buffer + data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        *events, self._buffer = buffer.split(b"\n\n")
        for event in events:
            if event.startswith(_DATA):
                self._event(event[6:], now)

    def _event(self, data: bytes, now: float) -> None:
        if data == _DONE:
            self.done = True
            return
        if _TOKEN not in data:
            return
        if self.ttfb is None:
            if not _has_content(data):
                return
            self.ttfb = now - self._start
        elif self._gaps:
            self.gaps.append(now - self._last)
        self._last = now
        self.chunks += 1

    def check(self) -> None:
        if self.ttfb is None:
            raise Failed("no content")
        if not self.done:
            raise Failed("no [DONE]")
        if self.chunks != CHUNKS:
            raise Failed(f"{self.chunks}/{CHUNKS} chunks")


def _has_content(data: bytes) -> bool:
    try:
        choices = orjson.loads(data).get("choices") or [{}]
        return bool((choices[0].get("delta") or {}).get("content"))
    except (orjson.JSONDecodeError, AttributeError, IndexError):
        return False


@dataclass
class Results:
    started: float
    window: tuple[float, float]
    ttfb: array[float] = field(default_factory=lambda: array("d"))
    total: array[float] = field(default_factory=lambda: array("d"))
    gaps: array[float] = field(default_factory=lambda: array("d"))
    ok_in_window: int = 0
    ok_total: int = 0  # warm-up and grace included
    chunks_total: int = 0  # content chunks of those answers: what the server relayed
    last_ok: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    unfinished: int = 0

    def record(self, start: float, end: float, tally: StreamTally) -> None:
        self.ok_total += 1
        self.chunks_total += tally.chunks
        self.last_ok = end
        if self.window[0] <= end <= self.window[1]:
            self.ok_in_window += 1
        if start < self.window[0]:
            return  # warm-up
        assert tally.ttfb is not None
        self.ttfb.append(tally.ttfb * 1000)
        self.total.append((end - start) * 1000)
        self.gaps.extend(gap * 1000 for gap in tally.gaps)


@dataclass(frozen=True)
class Job:
    url: str
    headers: dict[str, str]
    body: bytes
    concurrency: int
    warmup: float
    duration: float
    grace: float
    gaps: bool
    max_requests: int | None
    tls: ssl.SSLContext | None = None  # for an https URL


# -- HTTP/1.1 ---------------------------------------------------------------------------------


async def _h1_request(session: aiohttp.ClientSession, job: Job, start: float) -> StreamTally:
    tally = StreamTally(start, job.gaps)
    async with session.post(job.url, data=job.body, headers=job.headers) as response:
        if response.status != 200:
            await response.read()
            raise Failed(f"HTTP {response.status}")
        async for data in response.content.iter_any():
            tally.feed(data, time.perf_counter())
    tally.check()
    return tally


async def _run_h1(job: Job, results: Results) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    if job.tls is not None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ssl=job.tls)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False
    ) as session:
        await _drive(job, results, lambda start: _h1_request(session, job, start))


# -- HTTP/2 (h2c, prior knowledge, one connection) --------------------------------------------


class _H2Stream:
    __slots__ = ("ended", "status", "tally")

    def __init__(self, tally: StreamTally) -> None:
        self.tally = tally
        self.status = 0
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class H2Connection(asyncio.Protocol):
    """One client connection multiplexing its share of the workers' streams."""

    def __init__(self, authority: str, scheme: bytes) -> None:
        import h2.config
        import h2.connection

        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self._conn = h2.connection.H2Connection(config=config)
        self._authority = authority.encode()
        self._scheme = scheme
        self._streams: dict[int, _H2Stream] = {}
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from h2.settings import SettingCodes

        self._transport = transport  # type: ignore[assignment]
        self._conn.initiate_connection()
        self._conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 24})
        self._conn.increment_flow_control_window(1 << 30)
        self._flush()

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self._streams.values():
            if not stream.ended.done():
                stream.ended.set_exception(Failed("connection lost"))

    def data_received(self, data: bytes) -> None:
        import h2.events as ev

        now = time.perf_counter()
        for event in self._conn.receive_data(data):
            stream = self._streams.get(getattr(event, "stream_id", 0) or 0)
            if stream is None:
                continue
            if isinstance(event, ev.ResponseReceived):
                stream.status = int(dict(event.headers)[b":status"])
            elif isinstance(event, ev.DataReceived):
                stream.tally.feed(event.data, now)
                self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, ev.StreamEnded | ev.StreamReset):
                del self._streams[event.stream_id]
                stream.ended.set_result(None)
        self._flush()

    async def request(self, job: Job, path: str, start: float) -> StreamTally:
        stream_id = self._conn.get_next_available_stream_id()
        stream = _H2Stream(StreamTally(start, job.gaps))
        self._streams[stream_id] = stream
        headers = [
            (b":method", b"POST"),
            (b":scheme", self._scheme),
            (b":authority", self._authority),
            (b":path", path.encode()),
            *((name.encode(), value.encode()) for name, value in job.headers.items()),
            (b"content-length", str(len(job.body)).encode()),
        ]
        self._conn.send_headers(stream_id, headers)
        self._conn.send_data(stream_id, job.body, end_stream=True)
        self._flush()
        await stream.ended
        if stream.status != 200:
            raise Failed(f"HTTP {stream.status}")
        stream.tally.check()
        return stream.tally

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None:
            self._transport.write(data)


# Below granian's default SETTINGS_MAX_CONCURRENT_STREAMS (200): with one connection for every
# worker, the TLS upstream refused direct's streams past 200 (TooManyStreamsError at C=256).
_STREAMS_PER_CONNECTION = 100


async def _run_h2(job: Job, results: Results) -> None:
    url = urlsplit(job.url)
    loop = asyncio.get_running_loop()
    authority, host = url.netloc, url.hostname or "127.0.0.1"
    port = url.port or (443 if job.tls else 80)
    scheme = b"https" if job.tls else b"http"
    connections = []
    for _ in range(-(-job.concurrency // _STREAMS_PER_CONNECTION)):
        _, conn = await loop.create_connection(
            lambda: H2Connection(authority, scheme),
            host,
            port,
            ssl=job.tls,
            server_hostname=host if job.tls else None,
        )
        connections.append(conn)

    def send(start: float) -> Awaitable[StreamTally]:
        least_busy = min(connections, key=lambda conn: conn.open_streams)
        return least_busy.request(job, url.path, start)

    await _drive(job, results, send)


# -- the driver -------------------------------------------------------------------------------


async def _drive(job: Job, results: Results, send: Any) -> None:
    stop_at = results.window[1]
    budget = [job.max_requests if job.max_requests is not None else -1]
    in_flight = [0]

    async def worker() -> None:
        while time.perf_counter() < stop_at and budget[0] != 0:
            budget[0] -= 1
            start = time.perf_counter()
            in_flight[0] += 1
            try:
                tally = await send(start)
            except Failed as exc:
                results.errors[str(exc)] += 1
            except Exception as exc:  # any failure counts, and must not end the worker
                results.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)  # do not spin on a refused connection
            else:
                results.record(start, time.perf_counter(), tally)
            finally:
                in_flight[0] -= 1

    tasks = [asyncio.ensure_future(worker()) for _ in range(job.concurrency)]
    remaining = stop_at - time.perf_counter() + job.grace
    _, pending = await asyncio.wait(tasks, timeout=max(remaining, 0.1))
    results.unfinished = in_flight[0]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


# -- summaries --------------------------------------------------------------------------------


def summarise(values: array[float] | list[float]) -> dict[str, float] | None:
    """count, mean and the usual percentiles (nearest rank), in the unit given."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)

    def pct(p: float) -> float:
        return round(ordered[min(n - 1, max(0, int(p / 100 * n + 0.5) - 1))], 4)

    return {
        "count": n,
        "mean": round(sum(ordered) / n, 4),
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "p999": pct(99.9),
        "max": round(ordered[-1], 4),
    }


def _report(job: Job, results: Results, cpu: float, wall: float, stall_ms: float) -> dict[str, Any]:
    window = job.duration
    return {
        "concurrency": job.concurrency,
        "duration_s": job.duration,
        "ok": len(results.ttfb),
        "rps": round(results.ok_in_window / window, 1),
        # For a server slower than the window (every request outlives it) `rps` says 0; this
        # counts every completion from the first request sent to the last answer received.
        "rps_whole_run": round(results.ok_total / (results.last_ok - results.started), 1)
        if results.ok_total
        else 0.0,
        "chunks_total": results.chunks_total,
        "errors": dict(results.errors),
        "unfinished": results.unfinished,
        "ttfb_ms": summarise(results.ttfb),
        "total_ms": summarise(results.total),
        "gap_ms": summarise(results.gaps),
        "stalls": sum(1 for gap in results.gaps if gap >= stall_ms),
        "stall_threshold_ms": stall_ms,
        "client_cpu_share": round(cpu / wall, 3),
    }


async def _run(job: Job, http2: bool, stall_ms: float) -> dict[str, Any]:
    begin = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results = Results(begin, (begin + job.warmup, begin + job.warmup + job.duration))
    await (_run_h2(job, results) if http2 else _run_h1(job, results))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return _report(job, results, cpu, time.perf_counter() - begin, stall_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="…/v1/chat/completions on 127.0.0.1")
    parser.add_argument("--key", default="none")
    parser.add_argument("--model", default="fast")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--gaps", action="store_true", help="record inter-chunk gaps")
    parser.add_argument("--stall-ms", type=float, default=100.0)
    parser.add_argument("--http2", action="store_true", help="HTTP/2, ≤ 100 streams a connection")
    parser.add_argument("--cafile", help="CA certificate to trust for an https URL")
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the load generator only targets loopback addresses")
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": "Say hello in twenty tokens."}],
        "stream": True,
    }
    job = Job(
        url=args.url,
        headers={"authorization": f"Bearer {args.key}", "content-type": "application/json"},
        body=orjson.dumps(body),
        concurrency=args.concurrency,
        warmup=args.warmup,
        duration=args.duration,
        grace=args.grace,
        gaps=args.gaps,
        max_requests=args.max_requests,
        tls=_tls(args.url, args.cafile, args.http2),
    )
    report = uvloop.run(_run(job, args.http2, args.stall_ms))
    print(orjson.dumps(report).decode(), flush=True)


def _tls(url: str, cafile: str | None, http2: bool) -> ssl.SSLContext | None:
    if urlsplit(url).scheme != "https":
        return None
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2"] if http2 else ["http/1.1"])
    return context


if __name__ == "__main__":
    main()
