"""A minimal reproduction of the granian behaviour rsgi.py works around (issue 12, finding 2).

Tried with granian 2.8.9 (the latest release when written): when an h2c client sends a request's
HEADERS without END_STREAM and then resets the connection, the RSGI body iterator yields b""
without end instead of raising or stopping, so a loop that waits for StopAsyncIteration spins
at 100 % CPU. rsgi._body_parts takes a second empty chunk in a row as the client gone. If this
test starts failing, granian has changed: re-check the workaround, then update or drop this.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import granian
import h2.config
import h2.connection
import httpx

from tests.conftest import ROOT, free_port


def test_granian_yields_empty_body_chunks_forever_after_an_h2c_reset(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "granian", "--interface", "rsgi", "--port", str(port)),
            *("--no-ws", "tests.fakes.granian_body:app"),
        ],
        cwd=ROOT,
        env={"BODY_REPORT": str(report), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(f"http://127.0.0.1:{port}", process)
        _post_then_reset(port)
        deadline = time.monotonic() + 10
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ended, data, empties = report.read_text().split()
    finally:
        process.terminate()
        process.wait(10)
    assert granian.__version__ == "2.8.9" or ended == "spinning", granian.__version__
    assert (ended, data, empties) == ("spinning", "4", "10000")


def _wait_listening(url: str, process: subprocess.Popen[bytes]) -> None:
    """Any answer means granian is up (the app reports only POSTs)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "granian exited"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError("granian did not start")


def _post_then_reset(port: int) -> None:
    import socket

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":path", "/"), (":scheme", "http")]
    conn.send_headers(1, [*headers, (":authority", f"127.0.0.1:{port}")])
    conn.send_data(1, b"half")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(conn.data_to_send())
        time.sleep(0.3)
