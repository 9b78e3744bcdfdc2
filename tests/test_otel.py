"""OpenTelemetry traces (the otel extra): a real OTLP/HTTP receiver on loopback gets one server
span per request and one client span per upstream attempt, linked as parent and children, under
the caller's `traceparent`, which reaches the upstream with the attempt's own span id."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Gateway, stop_gateway
from tests.fakes.otlp import Collector, ReceivedSpan, start_collector
from tests.resilience.conftest import faults, launch

__all__ = ["faults"]  # the fault upstream fixture, shared with tests/resilience

MODELS = """
[models."falls-back"]
routes = ["fa:otel/error-500", "fb:otel/slowish-first"]

[models."hedged"]
routes = ["fa:otel/slow-first", "fb:otel/ok"]
hedge_after_ms = 100
timeouts = { first_token = 5, total = 10 }

[models."plain"]
routes = ["fb:otel/ok"]
"""


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    received, stop = start_collector()
    yield received
    stop()


@pytest.fixture(scope="module")
def traced(upstream, faults, collector, tmp_path_factory):
    running = launch(
        upstream,
        faults,
        tmp_path_factory.mktemp("otel"),
        MODELS,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_SERVICE_NAME="callmissed-under-test",
        OTEL_BSP_SCHEDULE_DELAY="50",  # the SDK's batch delay: export soon, tests stay short
    )
    yield running
    stop_gateway(running)


def _ask(gateway: Gateway, model: str, stream: bool = False, **headers: str) -> httpx.Response:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {gateway.key}", **headers},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response


def _spans_of(collector: Collector, request_id: str, count: int) -> list[ReceivedSpan]:
    def found(spans: list[ReceivedSpan]) -> bool:
        return any(s.attributes.get("callmissed.request_id") == request_id for s in spans)

    collector.wait_for(found)
    server = next(
        s for s in collector.spans if s.attributes.get("callmissed.request_id") == request_id
    )
    collector.wait_for(
        lambda spans: len([s for s in spans if s.trace_id == server.trace_id]) >= count
    )
    spans = collector.of_trace(server.trace_id)
    assert len(spans) == count, spans
    return spans


def test_the_callers_trace_parents_the_server_span_and_each_attempt_is_its_child(
    traced, collector, faults
):
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    response = _ask(traced, "falls-back", traceparent=f"00-{trace_id}-{parent_id}-01")
    spans = _spans_of(collector, response.headers["x-request-id"], 3)
    [server] = [span for span in spans if span.kind == "SERVER"]
    assert (server.trace_id, server.parent_span_id) == (trace_id, parent_id)
    assert server.name == "POST /v1/chat/completions"
    assert server.resource["service.name"] == "callmissed-under-test"
    attributes = server.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "falls-back"
    assert attributes["gen_ai.response.model"] == "otel/slowish-first"
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (
        5,
        3,
    )
    assert attributes["callmissed.route"] == "fb"
    assert attributes["callmissed.attempts"] == 2
    assert attributes["callmissed.time_to_first_token_ms"] >= 300
    assert attributes["http.response.status_code"] == 200
    assert "callmissed.cost_usd" in attributes
    failed, won = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
    for client in (failed, won):
        assert client.parent_span_id == server.span_id
        assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
        assert client.attributes["gen_ai.provider.name"] == "openai"
        assert client.attributes["server.address"] == "127.0.0.1"
    assert failed.name == "chat otel/error-500" and failed.status == "ERROR"
    assert failed.attributes["error.type"] == "500"
    assert won.name == "chat otel/slowish-first" and won.status == "UNSET"
    assert won.attributes["callmissed.outcome"] == "ok"
    assert won.attributes["gen_ai.usage.output_tokens"] == 3
    assert "gen_ai.first_token" in won.events
    # Each attempt's upstream request carried its own span as the parent.
    for client, model in ((failed, "otel/error-500"), (won, "otel/slowish-first")):
        call = faults.for_model(model)[-1]
        assert call.headers["traceparent"] == f"00-{trace_id}-{client.span_id}-01"


def test_a_hedge_and_the_attempt_it_raced_are_siblings(traced, collector):
    response = _ask(traced, "hedged", stream=True)
    spans = _spans_of(collector, response.headers["x-request-id"], 3)
    [server] = [span for span in spans if span.kind == "SERVER"]
    assert server.parent_span_id == ""  # no traceparent came: a new trace
    clients = {
        span.attributes["callmissed.outcome"]: span for span in spans if span.kind == "CLIENT"
    }
    assert set(clients) == {"abandoned", "ok"}
    assert clients["ok"].attributes["callmissed.hedge"] is True
    assert clients["abandoned"].attributes["callmissed.hedge"] is False
    assert all(span.parent_span_id == server.span_id for span in clients.values())
    assert server.attributes["callmissed.stream"] is True


def test_a_caller_that_does_not_sample_is_not_recorded_but_its_flag_is_passed_on(
    traced, collector, faults
):
    trace_id = secrets.token_hex(16)
    _ask(traced, "plain", traceparent=f"00-{trace_id}-{secrets.token_hex(8)}-00")
    sent = faults.for_model("otel/ok")[-1].headers["traceparent"]
    assert sent.startswith(f"00-{trace_id}-") and sent.endswith("-00")
    later = _ask(traced, "plain")  # its spans come after any of the first request's would
    _spans_of(collector, later.headers["x-request-id"], 2)
    assert collector.of_trace(trace_id) == []


def test_without_an_endpoint_the_callers_traceparent_reaches_the_upstream_as_it_came(gateway):
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    _ask(gateway, "local-model", traceparent=traceparent, tracestate="vendor=1")
    received = gateway.upstream.last("hello").headers
    assert received["traceparent"] == traceparent
    assert received["tracestate"] == "vendor=1"


def test_config_check_says_whether_traces_are_on(gateway, collector):
    env = {**gateway.env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url}
    on = subprocess.run(
        [sys.executable, "-m", "callmissed", "config", "check"],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert f"traces: on, OTLP/HTTP to {collector.url}/v1/traces" in on.stdout
    assert "access log: stderr" in on.stdout


def test_the_wire_format_decodes_with_opentelemetry_s_own_classes():
    """Values the gateway's spans rarely carry still decode: negative and large ints, floats,
    text past 127 and 16,383 bytes (longer varints), non-ASCII."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from callmissed.otel import _attributes, _field, _span, encode_request

    values = {
        "negative": -5,
        "large": 2**62 + 3,
        "float": 0.125,
        "flag": False,
        "text": "é" * 100,
        "long": "x" * 20_000,
    }
    span = _span(b"\x01" * 16, b"\x02" * 8, b"", "name", 3, 1.0, 2.0, 0.0) + _attributes(values)
    resource = _field(1, b"")
    body = encode_request([span], resource, _field(1, b"\x0a\x01s"))
    decoded = ExportTraceServiceRequest.FromString(body)
    [got] = decoded.resource_spans[0].scope_spans[0].spans
    assert decoded.resource_spans[0].scope_spans[0].scope.name == "s"
    assert (got.trace_id, got.span_id, got.name, got.kind) == (b"\x01" * 16, b"\x02" * 8, "name", 3)
    assert (got.start_time_unix_nano, got.end_time_unix_nano, got.flags) == (10**9, 2 * 10**9, 1)
    attributes = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in got.attributes}
    assert attributes == values
