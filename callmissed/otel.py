"""OpenTelemetry spans for finished requests (the `otel` extra), exported over OTLP/HTTP.

One SERVER span per request and one CLIENT span per upstream attempt (fallbacks, retries and a
hedge's loser are its siblings), with the GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/) and CallMissed's route, cost
and first-token time. The spans are built after the fact from timing.RequestTrace, whose ids
already went upstream in `traceparent`, and handed to the SDK's BatchSpanProcessor, which
exports them from its own thread: nothing of this runs while a request is being served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from callmissed import __version__
from callmissed.settings import Observability
from callmissed.timing import Attempt

if TYPE_CHECKING:
    from callmissed.observe import Finished

__all__ = ["SpanExport"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class SpanExport:
    """Builds each finished request's spans and queues them for the batch exporter."""

    def __init__(self, settings: Observability) -> None:
        exporter = OTLPSpanExporter(
            endpoint=settings.otlp_endpoint, headers=dict(settings.otlp_headers)
        )
        self._processor = BatchSpanProcessor(exporter)
        self._resource = Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        )
        self._scope = InstrumentationScope("callmissed", __version__)

    def export(self, batch: Iterable[Finished], wall_offset: float) -> None:
        """Queue the spans of `batch`; `wall_offset` turns perf_counter() times into epoch s."""
        for finished in batch:
            trace = finished.trace
            if trace.recording and trace.sampled:
                for span in self._spans(finished, wall_offset):
                    self._processor.on_end(span)

    def shutdown(self) -> None:
        """Export what is queued, then stop (blocks: run it off the event loop)."""
        self._processor.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped

    def _spans(self, finished: Finished, offset: float) -> list[ReadableSpan]:
        trace = finished.trace
        ended = trace.ended if trace.ended is not None else trace.started
        server = SpanContext(trace.trace_id, trace.span_id, False, _SAMPLED)
        parent = None
        if trace.parent_span_id:
            parent = SpanContext(trace.trace_id, trace.parent_span_id, True, _SAMPLED)
        failed = finished.status >= 500
        spans = [
            ReadableSpan(
                name=f"POST {trace.endpoint}" if trace.endpoint else f"chat {trace.model}",
                context=server,
                parent=parent,
                resource=self._resource,
                attributes=_server_attributes(finished),
                kind=SpanKind.SERVER,
                instrumentation_scope=self._scope,
                status=Status(StatusCode.ERROR if failed else StatusCode.UNSET),
                start_time=_ns(trace.started, offset),
                end_time=_ns(ended, offset),
            )
        ]
        spans += [self._client_span(finished, a, server, ended, offset) for a in trace.attempts]
        return spans

    def _client_span(
        self,
        finished: Finished,
        attempt: Attempt,
        parent: SpanContext,
        request_ended: float,
        offset: float,
    ) -> ReadableSpan:
        route = attempt.target.route
        won = attempt.outcome == "ok"
        # The winner's span lasts as long as its answer: for a stream, until the request ended.
        ended = request_ended if won and finished.trace.stream else attempt.ended
        events: Sequence[Event] = ()
        if won and attempt.ended is not None:
            events = [Event("gen_ai.first_token", timestamp=_ns(attempt.ended, offset))]
        failed = not won and attempt.outcome != "abandoned"
        return ReadableSpan(
            name=f"chat {route.upstream_model}",
            context=SpanContext(parent.trace_id, attempt.span_id or 1, False, _SAMPLED),
            parent=parent,
            resource=self._resource,
            attributes=_client_attributes(finished, attempt),
            events=events,
            kind=SpanKind.CLIENT,
            instrumentation_scope=self._scope,
            status=Status(StatusCode.ERROR) if failed else Status(StatusCode.UNSET),
            start_time=_ns(attempt.started, offset),
            end_time=_ns(ended if ended is not None else request_ended, offset),
        )


def _server_attributes(finished: Finished) -> dict[str, Any]:
    trace, entry = finished.trace, finished.entry
    attributes: dict[str, Any] = {
        "http.request.method": "POST",
        "http.response.status_code": finished.status,
        "gen_ai.operation.name": "chat",
        "callmissed.request_id": trace.request_id,
        "callmissed.attempts": len(trace.attempts),
        "callmissed.stream": trace.stream,
    }
    _put(attributes, "http.route", trace.endpoint)
    _put(attributes, "gen_ai.request.model", entry.model if entry else trace.model)
    _put(attributes, "callmissed.key_name", trace.key_name)
    _put(attributes, "error.type", finished.error)
    timings = trace.timings()
    _put(attributes, "callmissed.gateway_ms", timings.get("gw_ms"))
    _put(attributes, "callmissed.time_to_first_token_ms", timings.get("first_token_ms"))
    if entry is not None and entry.route:
        attributes["callmissed.route"] = entry.route
        attributes["gen_ai.response.model"] = entry.upstream_model
        attributes["gen_ai.usage.input_tokens"] = entry.prompt_tokens
        attributes["gen_ai.usage.output_tokens"] = entry.completion_tokens
        attributes["callmissed.cost_usd"] = entry.cost / 1_000_000
    return attributes


def _client_attributes(finished: Finished, attempt: Attempt) -> dict[str, Any]:
    target = attempt.target
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": target.provider.type,
        "gen_ai.request.model": target.route.upstream_model,
        "callmissed.route": f"{target.route.provider}:{target.route.upstream_model}",
        "callmissed.outcome": attempt.outcome or "unfinished",
        "callmissed.hedge": attempt.hedge,
    }
    url = urlsplit(target.provider.settings.base_url)
    if url.hostname and url.scheme in ("http", "https"):
        attributes["server.address"] = url.hostname
        attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
    _put(attributes, "callmissed.connect_ms", _ms(attempt.connect))
    if attempt.outcome not in ("ok", "abandoned", ""):
        attributes["error.type"] = attempt.outcome
    entry = finished.entry
    if attempt.outcome == "ok":
        if attempt.ended is not None:
            waited = attempt.ended - attempt.started
            attributes["callmissed.time_to_first_token_ms"] = _ms(waited)
        if entry is not None:
            attributes["gen_ai.response.model"] = entry.upstream_model
            attributes["gen_ai.usage.input_tokens"] = entry.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = entry.completion_tokens
            attributes["callmissed.cost_usd"] = entry.cost / 1_000_000
    return attributes


def _put(attributes: dict[str, Any], name: str, value: Any) -> None:
    if value is not None:
        attributes[name] = value


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _ns(perf: float, offset: float) -> int:
    return int((perf + offset) * 1e9)
