"""Issue 12's client-side attacks, small: each against a real `callmissed serve` on loopback.

Silent, idle and half-sent connections are closed or answered 408; a credential is checked
before a body is read; HTTP/2 header lists are capped; an aborted h2c body does not spin the
worker; a client that stops reading does not make the worker buffer its whole answer.
The load-shaped versions are `python -m benchmarks abuse` (docs/security.md).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import orjson
import pytest

from tests.conftest import CONFIG, Gateway, start_gateway, stop_gateway

FLOOD_MODEL = """
[models."local-flood"]
routes = ["local:flood"]
"""

LIMITS = {
    "CALLMISSED_HEADER_TIMEOUT": "1",
    "CALLMISSED_IDLE_TIMEOUT": "1",
    "CALLMISSED_BODY_TIMEOUT": "1",
    "CALLMISSED_WRITE_TIMEOUT": "1",
    "CALLMISSED_WRITE_BUFFER_BYTES": "65536",
}


@pytest.fixture(scope="module")
def edge(upstream, tmp_path_factory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("edge")
    config = workdir / "limits.toml"
    config.write_text(CONFIG.format(upstream=upstream.url) + FLOOD_MODEL)
    running = start_gateway(upstream, workdir, CALLMISSED_CONFIG=str(config), **LIMITS)
    yield running
    stop_gateway(running)


def _connect(gateway: Gateway) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server ends the connection within `seconds` (reading whatever it sends)."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def _worker(gateway: Gateway) -> int:
    return int(httpx.get(f"{gateway.url}/healthz").json()["worker"])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _h2c(gateway: Gateway) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = _connect(gateway)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def _h2_status(sock: socket.socket, conn: h2.connection.H2Connection, stream: int) -> str:
    """The response status of `stream`, or "reset" if the server refused it."""
    sock.settimeout(5)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return "closed"
        if not data:
            return "closed"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                return dict(event.headers)[b":status"].decode()
            if isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                return "reset"
            if isinstance(event, h2.events.ConnectionTerminated):
                return "closed"
        try:
            sock.sendall(conn.data_to_send())
        except OSError:
            return "closed"


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(edge):
    with _connect(edge) as silent:
        assert _closed_within(silent, 6)
    assert httpx.get(f"{edge.url}/healthz").status_code == 200


def test_an_idle_h2c_connection_is_closed_after_the_idle_timeout(edge):
    sock, conn = _h2c(edge)
    with sock:
        conn.send_headers(1, _h2_headers(edge, "GET", "/healthz"), end_stream=True)
        sock.sendall(conn.data_to_send())
        assert _h2_status(sock, conn, 1) == "200"
        assert _closed_within(sock, 6)


def test_a_body_that_stops_part_way_gets_408_in_the_clients_dialect(edge):
    with _connect(edge) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n"
            b"x-api-key: " + edge.key.encode() + b"\r\n\r\n{"
        )
        sock.settimeout(6)
        answer = sock.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"


def test_a_body_that_stalls_past_the_idle_timeout_still_gets_its_408(upstream, tmp_path):
    """A request whose body is still arriving is in flight, so the idle sweep leaves its
    connection alone: the body timeout answers it, with a 408 the client can read."""
    limits = {"CALLMISSED_BODY_TIMEOUT": "2", "CALLMISSED_IDLE_TIMEOUT": "0.5"}
    gateway = start_gateway(upstream, tmp_path, **limits)
    try:
        with _connect(gateway) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n"
                b"authorization: Bearer " + gateway.key.encode() + b"\r\n\r\n{"
            )
            sock.settimeout(6)
            answer = sock.recv(65536)
    finally:
        stop_gateway(gateway)
    assert answer.startswith(b"HTTP/1.1 408"), answer


def test_a_credential_is_checked_before_the_body_is_read(edge):
    # No body follows the head: the answer comes from the head alone.
    with _connect(edge) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/json\r\nContent-Length: 33000000\r\n\r\n"
        )
        sock.settimeout(5)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert b"Missing API key" in answer


def test_an_endpoint_that_checks_no_credential_takes_only_a_small_body(edge):
    response = httpx.request("GET", f"{edge.url}/healthz", content=b"x" * 200_000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_an_h2_header_list_past_the_limit_is_refused(edge):
    sock, conn = _h2c(edge)
    with sock:
        headers = [*_h2_headers(edge, "GET", "/healthz"), ("x-padding", "p" * 100_000)]
        conn.send_headers(1, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        assert _h2_status(sock, conn, 1) in ("431", "reset", "closed")
    assert httpx.get(f"{edge.url}/healthz").status_code == 200


def test_an_aborted_h2c_body_does_not_spin_the_worker(edge):
    pid = _worker(edge)
    sock, conn = _h2c(edge)
    with sock:
        headers = _h2_headers(edge, "POST", "/v1/chat/completions")
        conn.send_headers(1, [*headers, ("authorization", f"Bearer {edge.key}")])
        conn.send_data(1, b'{"model": "sim/instant", ')
        sock.sendall(conn.data_to_send())
        time.sleep(0.3)
    time.sleep(0.3)  # the worker notices the reset
    before = _cpu_seconds(pid)
    time.sleep(1.5)
    assert _cpu_seconds(pid) - before < 0.5  # spinning, it burns all 1.5 s
    assert httpx.get(f"{edge.url}/healthz").status_code == 200


def test_a_client_that_stops_reading_does_not_make_the_worker_buffer_its_answer(edge):
    pid = _worker(edge)
    rss_before = _rss_mb(pid)
    body = orjson.dumps(
        {"model": "local-flood", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = edge.url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    with sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            + f"Authorization: Bearer {edge.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        peak = rss_before
        for _ in range(40):  # the whole answer is ~60 MB; the worker relays it in ~2 s
            time.sleep(0.1)
            peak = max(peak, _rss_mb(pid))
        # The stuck client was taken for gone: the worker is idle again, and serves others.
        before = _cpu_seconds(pid)
        time.sleep(0.5)
        assert _cpu_seconds(pid) - before < 0.25
        assert httpx.get(f"{edge.url}/healthz").status_code == 200
    assert peak - rss_before < 30, (rss_before, peak)


def _h2_headers(gateway: Gateway, method: str, path: str) -> list[tuple[str, str]]:
    authority = gateway.url.removeprefix("http://")
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority)]


def test_bodies_no_credential_checked_hold_little_memory_together(upstream, tmp_path):
    """One h2c connection may hold 100 streams, each with a body up to the open limit (64 KiB)
    that no credential checked: 100 x 1,000 connections x 64 KiB was 6.4 GB a worker, held
    until the body timeout (measured: 100 connections, 600 MB). Together such bodies may hold
    16 x the open limit per worker; a body past that is refused with a 503 at once, and
    requests without a body are served as ever."""
    gateway = start_gateway(upstream, tmp_path)  # the default timeouts: the bodies stay
    try:
        sock, conn = _h2c(gateway)
        statuses: dict[int, str] = {}
        with sock:
            streams = []
            for _ in range(40):
                streams.append(stream := conn.get_next_available_stream_id())
                conn.send_headers(stream, _h2_headers(gateway, "GET", "/healthz"))  # a body...
                _send_within_windows(sock, conn, stream, b"x" * 60_000, statuses)  # never ends
            assert httpx.get(f"{gateway.url}/healthz").status_code == 200  # no body: served
            _read_statuses(sock, conn, statuses, until=len(streams) - 17)
    finally:
        stop_gateway(gateway)
    # At most 17 bodies of 60,000 bytes fit in 16 x 64 KiB (which ones depends on the order
    # their chunks are read in); without the bound every one waits for its 408.
    assert set(statuses.values()) == {"503"} and len(statuses) >= 23, statuses


def _send_within_windows(
    sock: socket.socket,
    conn: h2.connection.H2Connection,
    stream: int,
    data: bytes,
    statuses: dict[int, str],
) -> None:
    """Send `data` on `stream` as fast as the server's flow-control windows let it, noting
    the responses that arrive meanwhile in `statuses`."""
    while data:
        size = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
        if size <= 0:
            sock.sendall(conn.data_to_send())
            if not _read_statuses(sock, conn, statuses, until=0):
                return  # no window opened: the server answered, or holds the stream
            continue
        try:
            conn.send_data(stream, data[:size])
        except h2.exceptions.StreamClosedError:
            return  # answered and reset by the server
        data = data[size:]
    sock.sendall(conn.data_to_send())


def _read_statuses(
    sock: socket.socket, conn: h2.connection.H2Connection, statuses: dict[int, str], until: int
) -> bool:
    """Read frames, noting each response's status in `statuses`, until it holds `until` of
    them (at least one read); False if a second went by without a frame or the connection
    ended."""
    sock.settimeout(1)
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return False
        if not data:
            return False
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = dict(event.headers)[b":status"].decode()
        sock.sendall(conn.data_to_send())
        if len(statuses) >= until:
            return True


def test_a_large_body_sent_steadily_over_a_slow_link_is_not_cut_off(edge):
    """The body timeout (1 s here) counts from the head; a body that declares its length gets
    a second more per 64 KiB of it, so an upload at a slow link's pace (~150 KB/s, 2.2 s for
    320 KB) goes through where it got a 408. A body that stalls still gets its 408."""
    body = orjson.dumps(
        {"model": "sim/instant", "messages": [{"role": "user", "content": "x" * 320_000}]}
    )
    with _connect(edge) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            + f"Authorization: Bearer {edge.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        try:
            for start in range(0, len(body), 16_000):
                sock.sendall(body[start : start + 16_000])
                time.sleep(0.1)
        except OSError:  # answered (408) and closed while we were still sending
            pass
        sock.settimeout(10)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_a_keys_bodies_in_flight_hold_at_most_twice_the_body_limit(upstream, tmp_path):
    """A body declared at the full limit may take minutes to arrive (a second per 64 KiB), and
    a key may send many: together, one key's bodies being read hold at most twice the body
    limit in a worker; another past that is a 429 at once. Another key is not affected."""
    gateway = start_gateway(upstream, tmp_path, CALLMISSED_MAX_BODY_BYTES="100000")
    other = gateway.create_key()
    try:
        answers = []
        stalled = []
        for _ in range(4):
            sock = _connect(gateway)
            stalled.append(sock)
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Length: 90000"
                + f"\r\nAuthorization: Bearer {gateway.key}\r\n\r\n".encode()
                + b"{"  # and the rest never comes
            )
            sock.settimeout(0.5)
            try:
                answers.append(sock.recv(65536).split(b"\r\n", 1)[0])
            except TimeoutError:
                answers.append(b"waiting")
        body = {"model": "sim/instant", "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(
            f"{gateway.base_url}/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {other}"},
        )
        assert response.status_code == 200
    finally:
        for sock in stalled:
            sock.close()
        stop_gateway(gateway)
    assert answers == [b"waiting"] * 2 + [b"HTTP/1.1 429 Too Many Requests"] * 2, answers
