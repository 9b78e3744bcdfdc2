"""The ASGI edge, on a real uvicorn on loopback: the same request lifecycle as `callmissed serve`
(edge/lifecycle.py), so the same answers, streams and limits, whichever server runs the app."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx
import openai
import orjson
import pytest

from tests.conftest import free_port, gateway_env, wait_healthy
from tests.fakes.upstream import FakeUpstream


class Uvicorn:
    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key


@pytest.fixture(scope="module")
def uvicorn(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uvicorn]:
    workdir = tmp_path_factory.mktemp("asgi")
    env = gateway_env(upstream.url, workdir, CALLMISSED_BODY_TIMEOUT="1")
    created = subprocess.run(
        [sys.executable, "-m", "callmissed", "keys", "create", "--name", "asgi"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    port = free_port()
    log = workdir / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "callmissed.app:create_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=output, stderr=output)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, Path(log))
        yield Uvicorn(f"http://127.0.0.1:{port}", created.stdout.strip().splitlines()[-1])
    finally:
        process.terminate()
        process.wait(10)


def test_a_stream_is_answered_as_under_granian(uvicorn: Uvicorn):
    with openai.OpenAI(base_url=f"{uvicorn.url}/v1", api_key=uvicorn.key, max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="local-model", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text
    assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in chunks)
    assert stream.response.headers["x-request-id"].startswith("req_")


def test_a_body_without_a_length_is_read_part_by_part(uvicorn: Uvicorn):
    body = orjson.dumps({"model": "local-model", "messages": [{"role": "user", "content": "Hi"}]})
    parts = iter([body[:10], body[10:]])  # an iterator: httpx sends it chunked, with no length
    answer = httpx.post(
        f"{uvicorn.url}/v1/chat/completions",
        content=parts,
        headers={"authorization": f"Bearer {uvicorn.key}", "content-type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]


def test_a_credential_is_checked_before_the_body_in_the_routes_dialect(uvicorn: Uvicorn):
    host, port = uvicorn.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: g\r\nContent-Length: 1000\r\n\r\n")
        status, body = _answer(sock)
    assert status == 401, body
    assert orjson.loads(body)["type"] == "error"  # Anthropic's shape on an Anthropic route


def test_a_body_that_stops_part_way_gets_408(uvicorn: Uvicorn):
    host, port = uvicorn.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=6) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: 100\r\n"
            b"authorization: Bearer " + uvicorn.key.encode() + b"\r\n\r\n{"
        )
        status, body = _answer(sock)
    assert status == 408, body
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """A response's status and whole body, however the server frames and splits it."""
    parser = h11.Connection(h11.CLIENT)
    parser.send(h11.Request(method="GET", target="/", headers=[("host", "g")]))  # its state
    status, body = 0, b""
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            parser.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body
