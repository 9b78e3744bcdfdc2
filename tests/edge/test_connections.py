"""connections.py against the kernel's real sockets: which connection a write gate looks at,
and what that costs when the server is bound to a wildcard address."""

from __future__ import annotations

import socket
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
