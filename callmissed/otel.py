"""OpenTelemetry spans for finished requests, exported over OTLP/HTTP (protobuf).

One SERVER span per request and one CLIENT span per upstream attempt (fallbacks, retries and a
hedge's loser are its siblings), with the GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/) and CallMissed's route, cost
and first-token time. Spans are built after the fact from timing.RequestTrace (whose ids already
went upstream in `traceparent`), straight into OTLP's protobuf wire format: the SDK's span objects
and encoder cost ~0.5 ms a request here, this ~30 us. A thread of its own posts the batches
(https://opentelemetry.io/docs/specs/otlp/#otlphttp), so the event loop never waits on the
collector; a collector that is down costs retries, then dropped (counted) spans, never memory.
"""

from __future__ import annotations

import http.client
import logging
import queue
import struct
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from callmissed import __version__
from callmissed.settings import Observability
from callmissed.timing import Attempt

if TYPE_CHECKING:
    from callmissed.observe import Finished

__all__ = ["SpanExport", "encode_request"]

log = logging.getLogger("callmissed")

_SERVER, _CLIENT = 2, 3  # Span.SpanKind
_UNSET, _ERROR = 0, 2  # Status.StatusCode
_SAMPLED = 1  # W3C trace flags
_MAX_QUEUED = 16_384  # spans waiting for the exporter; past this, new ones are dropped
_MAX_BATCH = 512  # spans per export request
_RETRIES = (0.5, 1.0, 2.0)  # seconds between tries of one batch (OTLP: retry with backoff)


class SpanExport:
    """Encodes finished requests' spans and hands them to the export thread. start()/shutdown()."""

    def __init__(self, settings: Observability) -> None:
        assert settings.otlp_endpoint is not None
        self._exporter = _Exporter(settings)
        resource = _field(1, _kv("service.name", settings.service_name))  # Resource.attributes
        resource += _field(1, _kv("service.version", __version__))
        scope = _string(1, "callmissed") + _string(2, __version__)
        self._resource = _field(1, resource)  # ResourceSpans.resource
        self._scope = _field(1, scope)  # ScopeSpans.scope

    def start(self) -> None:
        self._exporter.start()

    def export(self, batch: Iterable[Finished], wall_offset: float) -> None:
        """Encode the spans of `batch`; `wall_offset` turns perf_counter() times into epoch s."""
        spans = [
            span
            for finished in batch
            if finished.trace.recording and finished.trace.sampled
            for span in _spans(finished, wall_offset)
        ]
        if spans:
            self._exporter.put(spans, self._resource, self._scope)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Export what is queued (up to `timeout` s), then stop (blocks: off the event loop)."""
        self._exporter.stop(timeout)


def _spans(finished: Finished, offset: float) -> list[bytes]:
    trace = finished.trace
    ended = trace.ended if trace.ended is not None else trace.started
    trace_id = trace.trace_id.to_bytes(16, "big")
    server_id = trace.span_id.to_bytes(8, "big")
    parent = trace.parent_span_id.to_bytes(8, "big") if trace.parent_span_id else b""
    name = f"POST {trace.endpoint}" if trace.endpoint else f"chat {trace.model}"
    status = _ERROR if finished.status >= 500 else _UNSET
    spans = [
        _span(trace_id, server_id, parent, name, _SERVER, trace.started, ended, offset)
        + _attributes(_server_attributes(finished))
        + _status(status)
    ]
    for attempt in trace.attempts:
        spans.append(_client_span(finished, attempt, trace_id, server_id, ended, offset))
    return spans


def _client_span(
    finished: Finished,
    attempt: Attempt,
    trace_id: bytes,
    parent: bytes,
    request_ended: float,
    offset: float,
) -> bytes:
    won = attempt.outcome == "ok"
    # The winner's span lasts as long as its answer: for a stream, until the request ended.
    ended = request_ended if won and finished.trace.stream else attempt.ended
    span_id = (attempt.span_id or 1).to_bytes(8, "big")
    name = f"chat {attempt.target.route.upstream_model}"
    start = attempt.started
    span = _span(trace_id, span_id, parent, name, _CLIENT, start, ended or request_ended, offset)
    span += _attributes(_client_attributes(finished, attempt))
    if won and attempt.ended is not None:
        event = _fixed64(1, _ns(attempt.ended, offset)) + _string(2, "gen_ai.first_token")
        span += _field(11, event)
    failed = not won and attempt.outcome != "abandoned"
    return span + _status(_ERROR if failed else _UNSET)


def _server_attributes(finished: Finished) -> dict[str, Any]:
    trace, entry = finished.trace, finished.entry
    timings = trace.timings()
    attributes: dict[str, Any] = {
        "http.request.method": "POST",
        "http.route": trace.endpoint,
        "http.response.status_code": finished.status,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": entry.model if entry else trace.model,
        "error.type": finished.error,
        "callmissed.request_id": trace.request_id,
        "callmissed.key_name": trace.key_name,
        "callmissed.attempts": len(trace.attempts),
        "callmissed.stream": trace.stream,
        "callmissed.gateway_ms": timings.get("gw_ms"),
        "callmissed.time_to_first_token_ms": timings.get("first_token_ms"),
    }
    if entry is not None and entry.route:
        attributes["callmissed.route"] = entry.route
        attributes["gen_ai.response.model"] = entry.upstream_model
        attributes["gen_ai.usage.input_tokens"] = entry.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = entry.completion_tokens
        attributes["callmissed.cost_usd"] = entry.cost / 1_000_000
    return attributes


def _client_attributes(finished: Finished, attempt: Attempt) -> dict[str, Any]:
    target = attempt.target
    address, port = _server(target.provider.settings.base_url)
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": target.provider.type,
        "gen_ai.request.model": target.route.upstream_model,
        "server.address": address,
        "server.port": port,
        "callmissed.route": f"{target.route.provider}:{target.route.upstream_model}",
        "callmissed.outcome": attempt.outcome or "unfinished",
        "callmissed.hedge": attempt.hedge,
        "callmissed.connect_ms": None if attempt.connect is None else attempt.connect * 1000,
    }
    if attempt.outcome not in ("ok", "abandoned", ""):
        attributes["error.type"] = attempt.outcome
    entry = finished.entry
    if attempt.outcome == "ok":
        if attempt.ended is not None:
            waited = (attempt.ended - attempt.started) * 1000
            attributes["callmissed.time_to_first_token_ms"] = round(waited, 3)
        if entry is not None:
            attributes["gen_ai.response.model"] = entry.upstream_model
            attributes["gen_ai.usage.input_tokens"] = entry.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = entry.completion_tokens
            attributes["callmissed.cost_usd"] = entry.cost / 1_000_000
    return attributes


_SERVERS: dict[str, tuple[str | None, int | None]] = {}  # base URL -> server.address, .port


def _server(base_url: str) -> tuple[str | None, int | None]:
    server = _SERVERS.get(base_url)
    if server is None:
        url = urlsplit(base_url)
        if url.scheme in ("http", "https") and url.hostname:
            server = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
        else:
            server = (None, None)  # the in-process simulator
        _SERVERS[base_url] = server
    return server


# -- OTLP's protobuf wire format (opentelemetry/proto/trace/v1/trace.proto) --------------------


_SMALL = [bytes((value,)) for value in range(128)]  # one-byte varints, made once


def _varint(value: int) -> bytes:
    if value < 128:
        return _SMALL[value]
    if value < 16384:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a message, bytes or a string)."""
    return _SMALL[number << 3 | 2] + _varint(len(payload)) + payload  # every number here < 16


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode())


def _fixed64(number: int, value: int) -> bytes:
    return _SMALL[number << 3 | 1] + struct.pack("<Q", value)


_KEYS: dict[str, bytes] = {}  # attribute name -> its encoded KeyValue.key
_CONSTANTS: dict[tuple[str, Any], bytes] = {}  # (name, str or bool value) -> its Span.attributes


def _kv(key: str, value: Any) -> bytes:
    """One KeyValue's fields (common.proto): the AnyValue's oneof field by the Python type."""
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _KEYS[key] = _string(1, key)
    if isinstance(value, bool):
        any_value = b"\x10" + (b"\x01" if value else b"\x00")
    elif isinstance(value, int):
        any_value = b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    elif isinstance(value, float):
        any_value = b"\x21" + struct.pack("<d", value)
    else:
        any_value = _string(1, str(value))
    return encoded + _field(2, any_value)


def _attribute(key: str, value: Any) -> bytes:
    """One Span.attributes entry (field 9); names with a string or flag value are kept made
    (they repeat: a route, a model, a provider), numbers are made each time."""
    if value.__class__ is str or value.__class__ is bool:
        made = _CONSTANTS.get((key, value))
        if made is None:
            if len(_CONSTANTS) > 4096:  # request ids and key names would grow it forever
                _CONSTANTS.clear()
            made = _CONSTANTS[(key, value)] = _field(9, _kv(key, value))
        return made
    return _field(9, _kv(key, value))


def _attributes(attributes: dict[str, Any]) -> bytes:
    """Span.attributes, the ones that have a value."""
    return b"".join([_attribute(k, value) for k, value in attributes.items() if value is not None])


def _span(
    trace_id: bytes,
    span_id: bytes,
    parent: bytes,
    name: str,
    kind: int,
    started: float,
    ended: float,
    offset: float,
) -> bytes:
    span = _field(1, trace_id) + _field(2, span_id)
    if parent:
        span += _field(4, parent)
    span += _string(5, name) + b"\x30" + _SMALL[kind]
    span += _fixed64(7, _ns(started, offset)) + _fixed64(8, _ns(ended, offset))
    return span + b"\x85\x01" + struct.pack("<I", _SAMPLED)  # field 16, fixed32: flags


def _status(code: int) -> bytes:
    return _field(15, b"\x18" + _varint(code)) if code else b""


def _ns(perf: float, offset: float) -> int:
    return int((perf + offset) * 1e9)


def encode_request(spans: list[bytes], resource: bytes, scope: bytes) -> bytes:
    """ExportTraceServiceRequest bytes for encoded spans, all of one resource and scope."""
    scope_spans = scope + b"".join([_field(2, span) for span in spans])
    return _field(1, resource + _field(2, scope_spans))


# -- the export thread ------------------------------------------------------------------------


class _Exporter:
    """Posts batches of encoded spans from a thread; bounded, retried, then dropped."""

    def __init__(self, settings: Observability) -> None:
        assert settings.otlp_endpoint is not None
        url = urlsplit(settings.otlp_endpoint)
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname or "", url.port or (443 if self._https else 80)
        self._path = (url.path or "/v1/traces") + (f"?{url.query}" if url.query else "")
        self._headers = {"content-type": "application/x-protobuf", **settings.otlp_headers}
        self._delay = settings.export_delay
        self._queue: queue.SimpleQueue[tuple[list[bytes], bytes, bytes] | None]
        self._queue = queue.SimpleQueue()
        self._queued = 0  # spans ever queued (the event loop's thread) ...
        self._done = 0  # ... and ever exported or dropped (the export thread's)
        self._full = 0  # spans dropped because too many waited (the event loop's thread)
        self._failed = 0  # spans the collector did not take (the export thread's)
        self._thread: threading.Thread | None = None
        self._connection: http.client.HTTPConnection | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="callmissed-otlp", daemon=True)
        self._thread.start()

    def put(self, spans: list[bytes], resource: bytes, scope: bytes) -> None:
        if self._queued - self._done + len(spans) > _MAX_QUEUED:
            self._full += len(spans)
            return
        self._queued += len(spans)
        self._queue.put((spans, resource, scope))

    def stop(self, timeout: float) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None
        if self._full:
            log.warning("traces: %d spans dropped, the collector could not keep up", self._full)

    def _run(self) -> None:
        pending: list[bytes] = []
        parts: tuple[bytes, bytes] = (b"", b"")
        stopping = False
        while not stopping:
            deadline = time.monotonic() + self._delay
            while len(pending) < _MAX_BATCH and (wait := deadline - time.monotonic()) > 0:
                try:
                    item = self._queue.get(timeout=wait if pending else None)
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                spans, *resource_scope = item
                pending += spans
                parts = (resource_scope[0], resource_scope[1])
            while pending:
                batch, pending = pending[:_MAX_BATCH], pending[_MAX_BATCH:]
                self._send(encode_request(batch, *parts), len(batch))
        if self._connection is not None:
            self._connection.close()

    def _send(self, body: bytes, count: int) -> None:
        for pause in (*_RETRIES, None):
            try:
                status = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                status, problem = 0, f"{type(exc).__name__}: {exc}"
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None
            else:
                problem = f"HTTP {status}"
                if 200 <= status < 300:
                    break
                if status not in (429, 502, 503, 504):  # not worth another try (OTLP spec)
                    pause = None
            if pause is None:
                self._failed += count
                log.warning("traces: %d spans not exported: %s", count, problem)
                break
            time.sleep(pause)
        self._done += count

    def _post(self, body: bytes) -> int:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = kind(self._host, self._port, timeout=10)
        self._connection.request("POST", self._path, body, self._headers)
        response = self._connection.getresponse()
        response.read()
        return response.status
