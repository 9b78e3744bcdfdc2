"""connections.py against the kernel's real sockets: which connection a write gate looks at,
and what that costs when the server is bound to a wildcard address."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from callmissed.edge.connections import Connections
from callmissed.edge.sockdiag import Diag, TCPState
from callmissed.settings import EdgeLimits


class CountingDiag(Diag):
    """The real sock_diag, counting the dumps of every connection on a port."""

    def __init__(self) -> None:
        super().__init__()
        self.dumps = 0

    def connections(self, port: int) -> list[TCPState]:
        self.dumps += 1
        return super().connections(port)


@pytest.fixture(params=["0.0.0.0", "127.0.0.1"])
def accepted(request) -> Iterator[tuple[str, str, list[socket.socket]]]:
    """A server bound to 0.0.0.0 (or 127.0.0.1) with 50 open connections: (its scope.server,
    the first client's scope.client, every socket)."""
    if not hasattr(socket, "AF_NETLINK"):
        pytest.skip("no sock_diag here (not Linux)")
    listener = socket.create_server((request.param, 0), backlog=64)
    port = listener.getsockname()[1]
    sockets = [listener]
    for _ in range(50):
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        sockets += [client, server]
    host, client_port = sockets[1].getsockname()
    try:
        yield f"{request.param}:{port}", f"{host}:{client_port}", sockets
    finally:
        for sock in sockets:
            sock.close()


def test_a_wildcard_bound_server_looks_up_its_connection_not_every_one(accepted):
    """granian reports a wildcard-bound server's address as 0.0.0.0: a gate's every look (up
    to ten a second for each stream held back) dumped every connection on the port, ~25 ms at
    800 connections, so a few stuck readers took a worker's CPU. The addresses connections
    come in on are learned once; then each look asks for exactly one connection."""
    server, client, _ = accepted
    diag = CountingDiag()
    connections = Connections(EdgeLimits(), int(server.rpartition(":")[2]), diag)
    try:
        states = [connections.state(server, client) for _ in range(20)]
    finally:
        diag.close()
    client_port = int(client.rpartition(":")[2])
    assert all(s is not None and s.peer.port == client_port for s in states)
    assert diag.dumps <= 1


def test_a_wildcard_bound_server_learns_addresses_from_the_sweep(accepted):
    server, client, _ = accepted
    diag = CountingDiag()
    connections = Connections(EdgeLimits(), int(server.rpartition(":")[2]), diag)
    try:
        connections.sweep()  # nothing stale: it only looks
        dumps = diag.dumps
        assert connections.state(server, client) is not None
    finally:
        diag.close()
    assert diag.dumps == dumps


def test_a_closed_connection_has_no_state(accepted):
    """Not the listening socket's, which the kernel's exact lookup answers with instead."""
    server, client, sockets = accepted
    diag = Diag()
    connections = Connections(EdgeLimits(), int(server.rpartition(":")[2]), diag)
    try:
        assert connections.state(server, client) is not None
        sockets[1].close()
        sockets[2].close()
        assert connections.state(server, client) is None
    finally:
        diag.close()


def test_a_request_that_just_ended_keeps_its_connection_from_the_idle_sweep():
    """A stalled body's 408 (or any answer) is handed to granian, which writes it from a thread
    of its own; until it has, the kernel still reports the connection quiet since the request
    came. A sweep in that moment shut the connection on the answer. The idle clock restarts
    when the request ends; the connection is shut down once idle for the timeout after it."""
    if not hasattr(socket, "AF_NETLINK"):
        pytest.skip("no sock_diag here (not Linux)")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    connections = Connections(EdgeLimits(idle_timeout=1), port, Diag())
    try:
        client.sendall(b"{")  # a request's head and a part of its body
        peer = "{}:{}".format(*client.getsockname())
        done = connections.busy(peer)  # in flight, while the connection goes quiet
        deadline = time.monotonic() + 10
        while _idle_ms(connections, f"127.0.0.1:{port}", peer) < 1000:
            assert time.monotonic() < deadline, "the connection never went quiet"
            time.sleep(0.05)
        assert connections.sweep() == 0
        done()  # its answer is on its way
        assert connections.sweep() == 0
        while not connections.sweep():  # idle for the timeout since then: shut down
            assert time.monotonic() < deadline, "the idle connection was never shut down"
            time.sleep(0.05)
        client.settimeout(5)
        assert client.recv(1) == b""
    finally:
        connections.diag.close()
        for sock in (client, server, listener):
            sock.close()


def _idle_ms(connections: Connections, server: str, client: str) -> int:
    state = connections.state(server, client)
    assert state is not None
    return state.idle_ms
