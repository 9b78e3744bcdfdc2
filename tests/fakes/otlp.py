"""A fake OpenTelemetry collector: a real OTLP/HTTP receiver on 127.0.0.1 that decodes what it
gets with the opentelemetry-proto package and keeps every span, flattened for assertions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.fakes.server import serve_in_thread

__all__ = ["Collector", "ReceivedSpan", "start_collector"]


@dataclass
class ReceivedSpan:
    name: str
    kind: str  # "SERVER", "CLIENT", ...
    trace_id: str  # hex, as in a traceparent header
    span_id: str
    parent_span_id: str  # "" for a root span
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[str]
    status: str  # "UNSET", "OK", "ERROR"
    resource: dict[str, Any]


@dataclass
class Collector:
    url: str = ""  # what OTEL_EXPORTER_OTLP_ENDPOINT would be set to
    spans: list[ReceivedSpan] = field(default_factory=list)
    posts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], limit: float = 10.0
    ) -> None:
        deadline = time.monotonic() + limit
        while True:
            with self._lock:
                if predicate(list(self.spans)):
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"the collector did not get the spans: {self.spans}")
            time.sleep(0.02)

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


COLLECTOR = web.AppKey("collector", Collector)


async def _traces(request: web.Request) -> web.Response:
    collector = request.app[COLLECTOR]
    export = ExportTraceServiceRequest.FromString(await request.read())
    received = []
    for resource_spans in export.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.append(
                    ReceivedSpan(
                        name=span.name,
                        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        events=[event.name for event in span.events],
                        status=["UNSET", "OK", "ERROR"][span.status.code],
                        resource=resource,
                    )
                )
    with collector._lock:
        collector.spans += received
        collector.posts += 1
    body = ExportTraceServiceResponse().SerializeToString()
    return web.Response(body=body, content_type="application/x-protobuf")


def start_collector() -> tuple[Collector, Callable[[], None]]:
    """Run the receiver in a background thread; return it and a function that stops it."""
    collector = Collector()
    app = web.Application()
    app[COLLECTOR] = collector
    app.router.add_post("/v1/traces", _traces)
    collector.url, stop = serve_in_thread(app)
    return collector, stop
