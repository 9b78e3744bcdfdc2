"""What the kernel knows of the server's TCP connections, asked over Linux's sock_diag netlink.

granian hands RSGI apps neither the client's socket nor a way to see what it has queued for
it, so the edge asks the kernel (docs/security.md): how many bytes of an answer the socket has
taken (what left the server's own buffers), and which connections have stayed silent. One
exact query costs a few microseconds; nothing here runs per request. Elsewhere than Linux the
queries answer None and the limits that need them are not enforced.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Address", "Diag", "Peer", "TCPState", "own_socket_fds", "parse_peer"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_INET_DIAG_INFO = 2
_INET_DIAG_REQ_BYTECODE = 1
_BC_S_GE, _BC_S_LE = 2, 3
_ESTABLISHED, _CLOSE_WAIT = 1, 8
_NO_COOKIE = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")
_MESSAGE = 72  # struct inet_diag_msg
# struct tcp_info: tcpi_last_data_sent, tcpi_last_data_recv (ms ago), tcpi_bytes_acked,
# tcpi_bytes_received (bytes); the layout has been stable since Linux 4.1.
_LAST_SENT, _LAST_RECV, _ACKED, _RECEIVED = 44, 52, 120, 128
_TCP_INFO_NEEDED = 136

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Peer(NamedTuple):
    """One end of a TCP connection; IPv4-mapped IPv6 addresses count as IPv4."""

    ip: Address
    port: int


@dataclass(frozen=True, slots=True)
class TCPState:
    local: Peer
    peer: Peer
    inode: int
    taken: int  # bytes the server ever wrote to the socket: acked by the peer or still queued
    received: int  # bytes ever received from the peer
    idle_ms: int  # since data last went either way
    quiet_ms: int  # since data last came in


@functools.lru_cache(maxsize=4096)
def parse_peer(text: str) -> Peer | None:
    """`ip:port` or `[ipv6]:port` (granian's scope.client and scope.server); None otherwise.

    Remembered: a kept-alive connection asks for the same ends on every request, and
    `ipaddress` takes ~1.7 µs to parse one, up to three times a request (connections.py).
    """
    host, sep, port = text.rpartition(":")
    try:
        return Peer(_unmapped(ipaddress.ip_address(host.strip("[]"))), int(port)) if sep else None
    except ValueError:
        return None


class Diag:
    """A netlink socket for sock_diag queries, one per worker; every call answers at once."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        try:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
        except (AttributeError, OSError):  # not Linux, or netlink refused
            self._sock = None

    @property
    def available(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def lookup(self, local: Peer, peer: Peer) -> TCPState | None:
        """The connection between exactly these two ends, if it is still open (an IPv4 one
        also as a dual-stack socket's IPv4-mapped addresses)."""
        found = self._one(local.ip.version, local, peer)
        if found is None and local.ip.version == 4 and peer.ip.version == 4:
            found = self._one(6, local, peer)
        return found

    def _one(self, version: int, local: Peer, peer: Peer) -> TCPState | None:
        # Once the connection has gone, the kernel's exact lookup answers with the socket
        # listening on `local` instead: that is not it.
        return next((s for s in self._ask(version, local, peer) if s.peer == peer), None)

    def connections(self, port: int) -> list[TCPState]:
        """Every open connection whose local end is `port`, in any process."""
        found: list[TCPState] = []
        for version in (4, 6):
            found += [s for s in self._ask(version, None, None, port) if s.local.port == port]
        return found

    def _ask(
        self, version: int, local: Peer | None, peer: Peer | None, port: int | None = None
    ) -> list[TCPState]:
        if self._sock is None:
            return []
        dump = port is not None
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        self._seq += 1
        request = _request(family, local, peer, port)
        flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else 0)
        try:
            head = _HEADER.pack(16 + len(request), _SOCK_DIAG_BY_FAMILY, flags, self._seq, 0)
            self._sock.send(head + request)
            return self._receive(dump)
        except OSError:
            return []

    def _receive(self, dump: bool) -> list[TCPState]:
        assert self._sock is not None
        states: list[TCPState] = []
        while True:
            data = self._sock.recv(1 << 17, socket.MSG_DONTWAIT)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if kind in (_NLMSG_DONE, _NLMSG_ERROR) or length < 16:
                    return states
                if seq == self._seq:
                    state = _parse(data[offset + 16 : offset + length])
                    if state is not None:
                        states.append(state)
                offset += (length + 3) & ~3
            if not dump:
                return states


def _request(family: int, local: Peer | None, peer: Peer | None, port: int | None) -> bytes:
    states = (1 << _ESTABLISHED) | (1 << _CLOSE_WAIT)
    head = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 1 << (_INET_DIAG_INFO - 1), states)
    if local is None or peer is None:
        ends = bytes(36)
    else:
        ips = _packed(local.ip, family) + _packed(peer.ip, family)
        ends = struct.pack("!HH", local.port, peer.port) + ips
    request = head + ends + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    if port is None:
        return request
    # A filter run by the kernel: local port >= port, then <= port (else jump past the end).
    ops = ((_BC_S_GE, 8, 20), (0, 0, port), (_BC_S_LE, 8, 12), (0, 0, port))
    program = b"".join(struct.pack("=BBH", *op) for op in ops)
    return request + struct.pack("=HH", 4 + len(program), _INET_DIAG_REQ_BYTECODE) + program


def _packed(ip: Address, family: int) -> bytes:
    if family == socket.AF_INET6 and ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed.ljust(16, b"\0")


def _parse(message: bytes) -> TCPState | None:
    if len(message) < _MESSAGE:
        return None
    family = message[0]
    sport, dport = struct.unpack_from("!HH", message, 4)
    size = 4 if family == socket.AF_INET else 16
    local = Peer(_address(message[8 : 8 + size]), sport)
    peer = Peer(_address(message[24 : 24 + size]), dport)
    wqueue, _, inode = struct.unpack_from("=III", message, 60)
    info = _attribute(message, _INET_DIAG_INFO)
    if info is None or len(info) < _TCP_INFO_NEEDED:
        return None
    (last_sent,) = struct.unpack_from("=I", info, _LAST_SENT)
    (last_recv,) = struct.unpack_from("=I", info, _LAST_RECV)
    acked, received = struct.unpack_from("=QQ", info, _ACKED)
    idle = min(last_sent, last_recv)
    return TCPState(local, peer, inode, acked + wqueue, received, idle, last_recv)


def _attribute(message: bytes, wanted: int) -> bytes | None:
    offset = _MESSAGE
    while offset + 4 <= len(message):
        length, kind = struct.unpack_from("=HH", message, offset)
        if length < 4:
            return None
        if kind == wanted:
            return message[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return None


@functools.lru_cache(maxsize=4096)
def _address(packed: bytes) -> Address:
    """An address as the kernel packs it. Remembered: a sweep reads every connection's two
    ends (connections.py), and ~1,000 connections come from a few addresses."""
    return _unmapped(ipaddress.ip_address(packed))


def _unmapped(ip: Address) -> Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def own_socket_fds() -> dict[int, int]:
    """This process's sockets: inode -> file descriptor."""
    fds: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return fds
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            fds[int(target[8:-1])] = int(name)
    return fds
