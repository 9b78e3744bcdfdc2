"""A request's life at its edges: keep-alives, the client leaving, warm pools, SIGTERM."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import openai
import orjson
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import Gateway, stop_gateway
from tests.fakes.faults import FaultUpstream
from tests.resilience.conftest import launch, sdk

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
TCP_TABLE = Path("/proc/net/tcp")

MODELS = """
[models."wait"]
routes = ["fa:wait/stall-headers"]
timeouts = { first_token = 20, total = 30 }

[models."endless"]
routes = ["fa:endless/endless"]
timeouts = { total = 30 }

[models."finishing"]
routes = ["fa:finishing/slow-tokens"]

[models."ka"]
routes = ["fa:ka/slow-first"]
timeouts = { first_token = 5, total = 10 }

[models."ka-fail"]
routes = ["fa:ka-fail/stall-headers"]
timeouts = { first_token = 1, total = 10 }

[models."ka-fallback"]
routes = ["fa:ka-fallback/stall-headers", "fb:ka-fallback/ok"]
timeouts = { first_token = 1, total = 10 }

[models."ka-rejected"]
routes = ["fa:ka-rejected/error-400"]

[models."warm"]
routes = ["fa:warm/ok"]

[models."reuse"]
routes = ["fa:reuse/late-end"]
"""
KEEPALIVE = {"CALLMISSED_KEEPALIVE_AFTER": "0.2", "CALLMISSED_KEEPALIVE_INTERVAL": "0.2"}


@pytest.fixture(scope="module")
def edge(upstream, faults, tmp_path_factory):
    running = launch(upstream, faults, tmp_path_factory.mktemp("edge"), MODELS, **KEEPALIVE)
    yield running
    stop_gateway(running)


def _send_raw(gateway: Gateway, model: str, stream: bool) -> socket.socket:
    body = orjson.dumps({"model": model, "messages": MESSAGES, "stream": stream})
    port = int(gateway.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"authorization: Bearer {gateway.key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def _hang_up(sock: socket.socket) -> float:
    left = time.monotonic()
    sock.close()
    return left


@pytest.mark.parametrize("after", [0.0, 0.3], ids=["at-once", "later"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
def test_leaving_before_the_first_token_closes_the_upstream_within_100ms(
    edge, faults, stream, after
):
    """Whether the client leaves before the edge starts watching for it (20 ms in) or after."""
    before = len(faults.for_model("wait/stall-headers"))
    sock = _send_raw(edge, "wait", stream)
    faults.wait_for(lambda: len(faults.for_model("wait/stall-headers")) > before)
    call = faults.for_model("wait/stall-headers")[before]
    time.sleep(after)
    left = _hang_up(sock)
    faults.wait_for(lambda: call.disconnected is not None)
    assert call.disconnected is not None
    assert call.disconnected - left < 0.1


def test_leaving_mid_stream_closes_the_upstream_within_100ms(edge, faults):
    before = len(faults.for_model("endless/endless"))
    sock = _send_raw(edge, "endless", stream=True)
    received = b""
    while b"Hello from" not in received:
        received += sock.recv(65536)
    call = faults.for_model("endless/endless")[before]
    left = _hang_up(sock)
    faults.wait_for(lambda: call.disconnected is not None)
    assert call.disconnected is not None
    assert call.disconnected - left < 0.1


def _raw_lines(gateway: Gateway, model: str) -> tuple[int, list[str]]:
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json={"model": model, "messages": MESSAGES, "stream": True},
        headers={"authorization": f"Bearer {gateway.key}"},
        timeout=10,
    ) as response:
        return response.status_code, [line for line in response.iter_lines() if line]


def test_keepalive_comments_fill_a_long_wait_for_the_first_token(edge):
    status, lines = _raw_lines(edge, "ka")
    assert status == 200
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data >= 2
    assert all(line == ": keep-alive" for line in lines[:first_data])
    assert '"role":"assistant"' in lines[first_data]  # held back until the token came
    assert "Hello from ka/slow-first" in lines[first_data + 1]
    assert lines[-1] == "data: [DONE]"
    with sdk(edge) as client:  # and the SDK ignores them
        chunks = client.chat.completions.create(model="ka", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Hello from ka/slow-first"
        )


def test_a_failure_after_keepalives_began_goes_in_band(edge):
    status, lines = _raw_lines(edge, "ka-fail")
    assert status == 200
    assert lines[0] == ": keep-alive"
    error = orjson.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_timeout"
    with sdk(edge) as client, pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(model="ka-fail", messages=MESSAGES, stream=True):
            pass
    assert not isinstance(caught.value, openai.APIStatusError)
    assert "no first token within 1 s" in caught.value.message


def test_fallback_still_works_after_keepalives_began(edge):
    with sdk(edge) as client:
        chunks = client.chat.completions.create(model="ka-fallback", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from ka-fallback/ok"


CLAUDE_MESSAGES: list[MessageParam] = [{"role": "user", "content": "Say hello"}]


def test_keepalives_on_the_anthropic_surface(edge):
    body = {"model": "ka", "max_tokens": 64, "messages": CLAUDE_MESSAGES, "stream": True}
    with httpx.stream(
        "POST", f"{edge.url}/v1/messages", json=body, headers={"x-api-key": edge.key}, timeout=10
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    first_event = lines.index("event: message_start")
    assert first_event >= 2
    assert all(line == ": keep-alive" for line in lines[:first_event])
    assert lines[-2:] == ["event: message_stop", 'data: {"type":"message_stop"}']
    with anthropic.Anthropic(base_url=edge.url, api_key=edge.key, max_retries=0) as claude:
        with claude.messages.stream(model="ka", max_tokens=64, messages=CLAUDE_MESSAGES) as stream:
            assert "".join(stream.text_stream) == "Hello from ka/slow-first"
        with (
            pytest.raises(anthropic.APIStatusError) as caught,
            claude.messages.stream(
                model="ka-fail", max_tokens=64, messages=CLAUDE_MESSAGES
            ) as failing,
        ):
            "".join(failing.text_stream)
    assert caught.value.status_code == 200  # in-band: the 200 had gone out with the comments
    assert "no first token within 1 s" in caught.value.message


def test_a_fast_failure_keeps_its_real_status(edge):
    with sdk(edge) as client, pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="ka-rejected", messages=MESSAGES, stream=True)


@pytest.mark.skipif(not TCP_TABLE.exists(), reason="reads Linux's table of TCP sockets")
def test_pools_are_warm_before_the_first_request(upstream, faults, tmp_path):
    port = urlsplit(faults.url).port
    assert port is not None
    before = _clients_of(port)
    running = launch(upstream, faults, tmp_path / "warm", MODELS, CALLMISSED_WARM_CONNECTIONS="1")
    try:
        # fa, fb and cf open a connection each, sending nothing (dead refuses; that is no error)
        faults.wait_for(lambda: len(_clients_of(port) - before) >= 3)
        ports = _clients_of(port) - before
        with sdk(running) as client:
            client.chat.completions.create(model="warm", messages=MESSAGES)
        # The first request rode a connection the warm-up had opened: no handshake to wait for.
        assert faults.for_model("warm/ok")[-1].port in ports
    finally:
        stop_gateway(running)


def test_streamed_answers_one_after_another_ride_one_upstream_connection(
    upstream, faults, tmp_path
):
    running = launch(upstream, faults, tmp_path / "reuse", MODELS)
    try:
        with sdk(running) as client:
            for _ in range(3):
                list(client.chat.completions.create(model="reuse", messages=MESSAGES, stream=True))
                time.sleep(0.2)  # the upstream ends the body 0.1 s after its [DONE]
        # The relay stops reading at [DONE]; the connection still ends its message and is reused.
        assert len({call.port for call in faults.for_model("reuse/late-end")}) == 1
    finally:
        stop_gateway(running)


def _clients_of(port: int) -> set[int]:
    """The client ports of established TCP connections to local `port` (our fakes' side)."""
    rows = (line.split() for line in TCP_TABLE.read_text().splitlines()[1:])
    return {
        int(row[2].split(":")[1], 16)
        for row in rows
        if row[3] == "01" and int(row[1].split(":")[1], 16) == port
    }


def _stream_in_thread(gateway: Gateway, model: str, started: threading.Event) -> dict[str, Any]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        with sdk(gateway) as client:
            text = ""
            try:
                for chunk in client.chat.completions.create(
                    model=model, messages=MESSAGES, stream=True
                ):
                    text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
                    started.set()
                outcome["text"] = text
            except openai.APIError as exc:
                outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_sigterm_lets_streams_finish_then_ends_the_rest(upstream, faults: FaultUpstream, tmp_path):
    running = launch(upstream, faults, tmp_path / "sd", MODELS, CALLMISSED_SHUTDOWN_GRACE="1")
    try:
        endless_started, finishing_started = threading.Event(), threading.Event()
        endless = _stream_in_thread(running, "endless", endless_started)
        finishing = _stream_in_thread(running, "finishing", finishing_started)
        assert endless_started.wait(5) and finishing_started.wait(5)
        running.process.send_signal(signal.SIGTERM)
        _wait_refused(running)  # no new connections from here on
        for outcome in (endless, finishing):
            outcome["thread"].join(10)
        assert finishing["text"] == "Hello from finishing/slow-tokens" * 3  # within the grace
        error = endless["error"]  # past the grace: an error event the SDK raises, not a hang
        assert not isinstance(error, openai.APIStatusError)
        assert error.body["code"] == "shutting_down"
        assert running.process.wait(10) == 0
    finally:
        stop_gateway(running)


def _wait_refused(gateway: Gateway) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{gateway.url}/healthz", timeout=0.5)
        except httpx.TransportError:
            return
        time.sleep(0.02)
    raise AssertionError("the gateway still accepts connections after SIGTERM")
