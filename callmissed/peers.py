"""The other worker processes of this server, reached over Unix sockets: ask them all one thing.

Each worker listens on `<instance>.sock` in the server's run directory (its ledger directory)
and answers the requests it registered with `serve()`; `ask()` sends one to every other live
worker at once and waits for their answers, a bounded time. It is never on a request's path:
/metrics asks for counters, the admin API tells workers to drop cached keys, and a request about
to get a 402 asks for a key's idle credit. One JSON request and one JSON answer per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["Answers", "Peers", "run_directory"]

log = logging.getLogger("callmissed")

_SUFFIX = ".sock"
_MAX_PATH = 100  # bytes; sun_path holds 108 with its NUL
_SKIPPED = object()  # a peer that did not answer in time, or failed to

Handler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Answers:
    """What the live peers answered, and how many live ones did not answer in time."""

    values: list[Any] = field(default_factory=list)
    skipped: int = 0


class Peers:
    """This worker's socket, and its view of the others. start() before ask(); close() at exit.

    `alive(instance)` says whether a worker still runs (ledger.Ledger.alive): a socket nobody
    listens on is removed only if its worker is gone, never because it was slow to accept.
    """

    def __init__(self, directory: Path, instance: str, alive: Callable[[str], bool]) -> None:
        self._directory = run_directory(directory, instance)
        self._private = self._directory != directory  # a directory of its own in /tmp
        self._path = self._directory / f"{instance}{_SUFFIX}"
        self._alive = alive
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None

    def serve(self, op: str, handler: Handler) -> None:
        """Answer every peer's `ask(op, argument)` with `await handler(argument)` (JSON)."""
        self._handlers[op] = handler

    async def start(self) -> None:
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Bound and listening under a name ask() ignores, then renamed: a peer that finds the
        # socket can connect to it, so a refused connection means its worker is gone.
        draft = self._path.with_suffix(".sock-draft")
        draft.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(draft))
            os.chmod(draft, 0o600)
            sock.listen(64)
            self._server = await asyncio.start_unix_server(self._answer, sock=sock)
        except BaseException:
            sock.close()
            draft.unlink(missing_ok=True)
            raise
        draft.rename(self._path)

    async def close(self) -> None:
        if self._server is None:
            return
        self._path.unlink(missing_ok=True)
        self._server.close()
        self._server = None
        if self._private:  # the last worker out removes it; the others' sockets keep it
            with contextlib.suppress(OSError):
                self._directory.rmdir()

    async def ask(self, op: str, argument: Any = None, within: float = 0.2) -> Answers:
        """Every other live worker's answer to `op`, asked at once; a worker that has not
        answered `within` seconds (busy, or failed) is counted in `skipped`."""
        if self._server is None:
            return Answers()
        request = orjson.dumps({"op": op, "argument": argument})
        peers = [path for path in self._directory.glob(f"*{_SUFFIX}") if path != self._path]
        answers = await asyncio.gather(*(self._ask_one(path, request, within) for path in peers))
        values = [answer for answer in answers if answer is not _SKIPPED and answer is not None]
        return Answers(values, sum(1 for answer in answers if answer is _SKIPPED))

    async def _ask_one(self, path: Path, request: bytes, within: float) -> Any:
        try:
            async with asyncio.timeout(within):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    writer.write(request)
                    writer.write_eof()
                    data = await reader.read()
                finally:
                    writer.close()
            return orjson.loads(data) if data else _SKIPPED
        except (ConnectionRefusedError, FileNotFoundError):
            instance = path.name.removesuffix(_SUFFIX)
            if self._alive(instance):
                return _SKIPPED
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # its worker died without closing it
            return None  # a dead worker has nothing to count
        except (TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            log.warning("peers: %s did not answer: %r", path.name, exc)
            return _SKIPPED

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = orjson.loads(await reader.read())
            handler = self._handlers[request["op"]]
            writer.write(orjson.dumps(await handler(request.get("argument"))))
            await writer.drain()
        except Exception:
            log.exception("peers: a request from another worker failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def run_directory(directory: Path, instance: str) -> Path:
    """Where the workers sharing `directory` (their ledger directory) put their sockets: that
    directory, or, if a socket's path would be too long for the kernel, a private one in the
    temporary directory named after it."""
    if len(os.fsencode(directory / f"{instance}{_SUFFIX}")) <= _MAX_PATH:
        return directory
    digest = hashlib.sha256(os.fsencode(directory.resolve())).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"callmissed-{os.getuid()}-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    if short.stat().st_uid != os.getuid() or short.stat().st_mode & 0o077:
        raise PermissionError(f"{short} is not a private directory of this user")
    return short
