"""GET /admin/routes: every route's breaker, first-token average, error rate and requests in
flight, from every worker of a 2-worker server, whichever worker answers."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest

from tests.conftest import stop_gateway
from tests.console.conftest import MESSAGES, admin_get, ask, sdk, start_console_gateway


@pytest.fixture(scope="module")
def two_workers(upstream, faults, tmp_path_factory):
    running = start_console_gateway(
        upstream,
        faults,
        tmp_path_factory.mktemp("routes"),
        CALLMISSED_WORKERS="2",
        CALLMISSED_BREAKER_FAILURES="2",
        CALLMISSED_BREAKER_OPEN="60",
    )
    yield running
    stop_gateway(running)


def _routes(gateway) -> tuple[dict[str, Any], dict[str, Any]]:
    answer = admin_get(gateway, "/admin/routes")
    return answer, {entry["route"]: entry for entry in answer["data"]}


def test_every_worker_answers(two_workers):
    for _ in range(4):  # whichever worker takes the call asks the other
        answer, _ = _routes(two_workers)
        assert (answer["workers"], answer["workers_unanswered"]) == (2, 0)


def test_a_failing_route_shows_its_breaker_and_errors(two_workers):
    with sdk(two_workers) as client:
        for _ in range(6):
            ask(client, "falls-back")
    _, routes = _routes(two_workers)
    failing = routes["fa:console-fallback/error-500"]
    # Six failures over two workers: one of them saw two in a row, and opened its breaker.
    assert failing["live"]["state"] == "open"
    assert failing["live"]["error_rate"] > 0
    assert failing["models"] == ["falls-back"]
    assert sum(worker["state"] == "open" for worker in failing["live"]["workers"]) >= 1
    answering = routes["fb:console-fallback/ok"]
    assert answering["live"]["state"] == "closed"
    # Measured on the loop's clock, whose millisecond steps can make a loopback answer's 0.
    assert answering["live"]["ttfb_ms"] is not None and answering["live"]["ttfb_ms"] >= 0
    assert answering["last_hour"]["requests"] == 6


def test_requests_in_flight_are_counted_on_their_route(two_workers, faults):
    client = sdk(two_workers)
    stream = client.chat.completions.create(model="endless", messages=MESSAGES, stream=True)
    opened = threading.Event()
    reader = threading.Thread(target=_read_some, args=(stream, opened))
    reader.start()
    try:
        assert opened.wait(10)
        for _ in range(4):  # from either worker's point of view
            answer, routes = _routes(two_workers)
            assert routes["fa:console-endless/endless"]["live"]["inflight"] == 1
            assert answer["inflight"] == 1
    finally:
        stream.close()
        reader.join(10)
        client.close()
    faults.wait_for(
        lambda: faults.for_model("console-endless/endless")[-1].disconnected is not None
    )


def _read_some(stream: openai.Stream[Any], opened: threading.Event) -> None:
    try:
        for _ in stream:
            opened.set()
    except (openai.APIError, ValueError, AttributeError):
        pass  # closed under us by the test
