"""The limits granian leaves to the app, kept per worker from what the kernel reports (sockdiag).

- A connection that sent nothing within the header timeout, or on which nothing went either way
  for the idle timeout with no request in flight nor ended meanwhile, is shut down (granian has
  no timeout before a connection's first bytes, nor for an idle HTTP/2 connection).
- A stream's writes wait while its client has more than the write buffer unread (granian queues
  every write without bound), and a client that takes nothing for the write timeout is gone.
docs/security.md has the numbers; nothing here runs on a request that ends within 20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from callmissed.edge.sockdiag import Address, Diag, Peer, TCPState, own_socket_fds, parse_peer
from callmissed.edge.web import WriteGate
from callmissed.settings import EdgeLimits

__all__ = ["ClientStuck", "Connections"]

log = logging.getLogger("callmissed")

_FIRST_POLL = 0.005  # seconds between looks at a held stream's socket, doubling ...
_LAST_POLL = 0.1  # ... up to this
_ADDRESSES_KEPT = 64  # local addresses of a wildcard-bound server remembered (a host has a few)


class ClientStuck(Exception):
    """The client took none of its answer for the write timeout: it counts as gone."""


class Connections:
    """One per worker: which clients have a request in flight, the sweep, and write gates."""

    def __init__(self, limits: EdgeLimits, port: int, diag: Diag | None = None) -> None:
        self.limits = limits
        self.port = port
        self.diag = diag or Diag()
        self._busy: Counter[Peer] = Counter()
        # When each client's last request in flight ended, for an idle timeout. Its answer was
        # handed to granian, which writes it from a thread of its own: until it has, the kernel
        # still reports the connection quiet since the request came, and a sweep meanwhile would
        # shut it on the answer (a stalled body's 408).
        self._ended: dict[Peer, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._addresses: dict[Address, None] = {}  # local addresses seen, in order (state())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sweep every quarter of the shorter timeout (at least every 2 s, at most every 0.25 s)."""
        if not self.diag.available:
            log.warning("sock_diag is unavailable: idle connections and slow readers are unbounded")
            return
        limits = self.limits
        every = min(2.0, max(0.25, min(limits.header_timeout, limits.idle_timeout) / 4))

        def tick() -> None:
            try:
                self.sweep()
            except Exception:  # a sweep that fails must not stop the next
                log.exception("connection sweep failed")
            self._timer = loop.call_later(every, tick)

        self._timer = loop.call_later(every, tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.diag.close()

    def busy(self, client: str) -> Callable[[], None]:
        """Mark `client` (granian's scope.client) as having a request in flight; returns the
        unmarking. rsgi.py marks only requests still running 20 ms in."""
        peer = parse_peer(client)
        if peer is None:
            return _nothing
        self._busy[peer] += 1

        def done() -> None:
            self._busy[peer] -= 1
            if self._busy[peer] <= 0:
                del self._busy[peer]
                if self.diag.available:  # else no sweep forgets it
                    self._ended[peer] = time.monotonic()

        return done

    def sweep(self) -> int:
        """Shut down this worker's silent and idle connections; how many."""
        states = self.diag.connections(self.port)
        self._learn(states)
        since = time.monotonic() - self.limits.idle_timeout
        self._ended = {peer: ended for peer, ended in self._ended.items() if ended > since}
        stale = [state for state in states if self._stale(state)]
        if not stale:
            return 0
        fds = own_socket_fds()
        closed = 0
        for state in stale:
            fd = fds.get(state.inode)  # None: another worker's, or gone meanwhile
            if fd is not None and _shut_down(fd, state.peer):
                closed += 1
        if closed:
            log.debug("closed %d silent or idle connection(s)", closed)
        return closed

    def _stale(self, state: TCPState) -> bool:
        if state.received == 0:
            return state.quiet_ms >= self.limits.header_timeout * 1000
        idle = self.limits.idle_timeout
        if state.idle_ms < idle * 1000 or state.peer in self._busy:
            return False
        ended = self._ended.get(state.peer)
        return ended is None or time.monotonic() - ended >= idle

    def gate(self, server: str, client: str) -> WriteGate:
        """The write gate of a stream from `server` to `client` (granian's scope strings)."""
        return _TCPGate(self, server, client) if self.diag.available else _UNBOUNDED

    def state(self, server: str, client: str) -> TCPState | None:
        """The connection between these ends; None once it has closed.

        A server bound to a wildcard address is reported as that address (0.0.0.0): the
        connection is looked up at each address connections have come in on, and all of
        them are listed (~25 ms at 800 connections) only to learn a new one."""
        local, peer = parse_peer(server), parse_peer(client)
        if local is None or peer is None:
            return None
        if not local.ip.is_unspecified:
            return self.diag.lookup(local, peer)
        for address in self._addresses:
            found = self.diag.lookup(Peer(address, local.port), peer)
            if found is not None:
                return found
        states = self.diag.connections(local.port)
        self._learn(states)
        return next((s for s in states if s.peer == peer), None)

    def _learn(self, states: list[TCPState]) -> None:
        """Note the addresses these connections came in on (a host has a few)."""
        for state in states:
            if state.local.ip not in self._addresses:
                if len(self._addresses) >= _ADDRESSES_KEPT:
                    self._addresses.clear()
                self._addresses[state.local.ip] = None


class _TCPGate(WriteGate):
    """Counts a stream's bytes against what the socket has taken since the first look.

    A look costs ~30 us, so one comes only after `write_buffer_bytes` more were written. What
    the client had unread at the first look is unknown but at most what had been written, so
    a stream holds at most about twice the buffer (plus granian's own per-connection buffers).
    On HTTP/2 the socket's count includes the connection's other streams.
    """

    __slots__ = ("_base", "_client", "_connections", "_server", "first")

    def __init__(self, connections: Connections, server: str, client: str) -> None:
        self._connections = connections
        self._server = server
        self._client = client
        self._base: tuple[int, int] | None = None  # (taken, sent) at the first look
        self.first = connections.limits.write_buffer_bytes

    async def wait(self, sent: int) -> int:
        bound = self._connections.limits.write_buffer_bytes
        state = self._connections.state(self._server, self._client)
        if state is None:
            return WriteGate.first  # closed, or not TCP: granian reports a write to a gone client
        if self._base is None:
            self._base = (state.taken, sent)
            return sent + bound
        unread = self._unread(state, sent)
        if unread > bound:
            unread = await self._until_read(state, sent, bound)
        return sent + bound - unread

    def _unread(self, state: TCPState, sent: int) -> int:
        assert self._base is not None
        taken, base_sent = self._base
        return (sent - base_sent) - (state.taken - taken)

    async def _until_read(self, state: TCPState, sent: int, bound: int) -> int:
        """Wait until the client has read down to half the buffer; raise if it takes nothing
        for the write timeout or the connection closes."""
        loop = asyncio.get_running_loop()
        timeout = self._connections.limits.write_timeout
        stuck_at = loop.time() + timeout
        taken = state.taken
        delay = _FIRST_POLL
        unread = self._unread(state, sent)
        while unread > bound // 2:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LAST_POLL)
            now = self._connections.state(self._server, self._client)
            if now is None:
                raise ClientStuck("the connection closed with the answer unread")
            if now.taken > taken:
                taken, stuck_at = now.taken, loop.time() + timeout
            elif loop.time() >= stuck_at:
                raise ClientStuck(f"the client read nothing for {timeout:g} s")
            unread = self._unread(now, sent)
        return unread


def _shut_down(fd: int, peer: Peer) -> bool:
    """Shut the socket at `fd` down if it still leads to `peer` (the descriptor may have been
    reused since it was listed); granian then sees the connection end and closes it."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        host, port = sock.getpeername()[:2]
        address = ipaddress.ip_address(host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if Peer(address, port) != peer:
            return False
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except (OSError, ValueError):
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.detach()  # the descriptor stays granian's


def _nothing() -> None:
    return None


_UNBOUNDED = WriteGate()
