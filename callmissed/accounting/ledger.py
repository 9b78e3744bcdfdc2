"""The usage ledger: every finished request journaled before its response ends, settled in batches.

`begin()` and `append()` are one write() of a JSON line each to this process's journal file:
they survive a SIGKILL (the kernel holds the page) and cost microseconds. A background task
settles the finished requests into the store in batches (charge the cost from the request's
wallet, write the row, in one transaction), taking them from memory while it keeps up; if the
database is slow or down, the journal grows on disk while memory stays bounded (past
_MIRROR_ENTRIES unsettled entries the writer reads the journal back instead). The same task
gives idle wallets back (wallet.py). A journal whose owner died (its flock is free) is replayed
at start-up and every few seconds: its finished requests are settled, each begun but unfinished
one gets an interrupted row, then its wallets are given back. Replays are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from callmissed.accounting.wallet import Wallets
from callmissed.jsonbytes import kept_dumps
from callmissed.settings import Settings
from callmissed.store import LedgerEntry, Store

__all__ = ["Ledger", "ledger_directory"]

log = logging.getLogger("callmissed")

_SUFFIX = ".journal"
_BATCH_ENTRIES = 64  # rows per settling transaction: ~1 ms of the event loop at most
_READ_BYTES = 256 * 1024  # journal read per batch: bounds the writer's memory
_MIRROR_ENTRIES = 10_000  # unsettled entries kept in memory too; past this, read the journal
_TRUNCATE_AT = 4 * 1024 * 1024  # a fully settled journal larger than this starts over
_LINGER = 0.02  # seconds the writer waits after a wake-up: what ends meanwhile settles in one batch
_SWEEP_EVERY = 10.0  # seconds between looks for journals of dead processes
_IDLE_EVERY = 0.5  # seconds between looks for idle wallets, while there are any
_MAX_BACKOFF = 5.0
_BEGIN = b'{"begin":'  # a begin line: a request that may hold credit, not an entry to settle


class Ledger:
    """This process's journal and its writer. start() before use; close() at shutdown."""

    def __init__(
        self,
        store: Store,
        directory: Path,
        wallets: Wallets,
        on_settled: Callable[[LedgerEntry], None] | None = None,
    ) -> None:
        """`wallets` are this process's: entries name them, the writer gives idle ones back and
        close() all of them, and the journal is named for their instance (recovery gives a dead
        process's wallets back by it). `on_settled` hears of each request as it is journaled
        (observe.py: the access log and traces are written from here, where a request's
        accounting settles)."""
        self._store = store
        self._on_settled = on_settled
        self._directory = directory
        self.instance = wallets.instance
        self._path = directory / f"{self.instance}{_SUFFIX}"
        self._fd = -1
        self._base = 0  # total bytes ever appended when the file was last truncated
        self._appended = 0  # total bytes ever appended
        self._settled = 0  # total bytes settled into the store
        # The unsettled entries, each with where its line ends in the journal, so the writer
        # need not read and parse back what it has in memory (~3.5 us an entry). Dropped if the
        # store falls so far behind that it would hold more than _MIRROR_ENTRIES: the writer
        # then reads the journal until it has caught up, and memory stays bounded.
        self._mirror: deque[tuple[LedgerEntry, int]] | None = deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._stragglers: set[asyncio.Task[None]] = set()
        self._flying: dict[str, bytes] = {}  # request id -> its begin line, until it ends
        self._unjournaled: list[str] = []  # requests whose begin line is not written yet
        self.wallets = wallets

    def alive(self, instance: str) -> bool:
        """Whether the process of ledger `instance` still runs: it holds its journal's flock until
        it exits (even by SIGKILL), and its journal is gone once it has closed or been replayed."""
        try:
            fd = os.open(self._directory / f"{instance}{_SUFFIX}", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock we may have just taken
        return False

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def pending(self) -> bool:
        """Whether some appended entries are not in the store yet."""
        return self._settled < self._appended

    async def start(self) -> None:
        """Open (and lock) this process's journal, replay dead ones, start the writer."""
        self._directory.mkdir(parents=True, exist_ok=True)
        # Locked under a name recover() ignores, then renamed: no one can find it unlocked.
        draft = self._path.with_suffix(".draft")
        self._fd = os.open(draft, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        draft.rename(self._path)
        await self.recover()
        self._writer = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")

    def begin(self, request_id: str, key_id: int, model: str, created_at: float) -> None:
        """Journal that a request started: if this process dies before append(), recovery
        writes it as interrupted. The writer has nothing to settle for it: it is not woken.

        The line is written once the event loop is next free: while the request waits for its
        upstream, and in one write with the other requests that began meanwhile."""
        if self._closed:
            return
        line = kept_dumps(
            {"begin": request_id, "key_id": key_id, "model": model, "created_at": created_at}
        )
        self._flying[request_id] = line
        self._unjournaled.append(request_id)
        if len(self._unjournaled) == 1:
            asyncio.get_running_loop().call_soon(self._journal_begins)

    def _journal_begins(self) -> None:
        ids, self._unjournaled = self._unjournaled, []
        lines = [line for key in ids if (line := self._flying.get(key)) is not None]
        if not lines:
            return  # they all ended first
        try:
            self._write(b"\n".join(lines) + b"\n")
        except OSError as exc:  # only a crash's interrupted rows are lost; end lines will tell
            log.warning("ledger: cannot journal the start of %d requests: %s", len(lines), exc)
            for key in ids:
                self._flying.pop(key, None)

    def append(self, entry: LedgerEntry) -> None:
        """Journal one finished request. Synchronous, so it is durable before the caller goes on."""
        if self._on_settled is not None:
            self._on_settled(entry)
        if self._closed:
            task = asyncio.get_running_loop().create_task(self._settle_straggler(entry))
            self._stragglers.add(task)
            task.add_done_callback(self._stragglers.discard)
            return
        self._write(orjson.dumps(entry) + b"\n")  # orjson writes a dataclass natively
        self._flying.pop(entry.request_id, None)
        mirror = self._mirror
        if mirror is not None:
            if len(mirror) < _MIRROR_ENTRIES:
                mirror.append((entry, self._appended))
            else:
                self._mirror = None
        self._wake.set()

    def _write(self, line: bytes) -> None:
        written = os.write(self._fd, line)
        if written != len(line):  # a full disk; the partial line is ignored by every reader
            raise OSError(f"ledger journal {self._path}: short write")
        self._appended += written

    async def _settle_straggler(self, entry: LedgerEntry) -> None:
        # A request that ended after close(): its hold was given back as interrupted, so this
        # is a no-op unless it had none; the store may already be closed at shutdown.
        try:
            await self._store.settle([entry])
        except Exception as exc:
            log.warning(
                "ledger: %s ended after shutdown and was not settled: %s", entry.request_id, exc
            )

    async def flush(self, at_most: float | None = None) -> bool:
        """Wait (up to `at_most` s) until everything appended so far is in the store."""
        target = self._appended
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                while self._settled < target:
                    self._wake.set()
                    self._progress.clear()
                    await self._progress.wait()
        return self._settled >= target

    async def close(self) -> None:
        """Settle what is left, write requests still in flight as interrupted, give back this
        process's wallets, remove the journal."""
        if self._writer is None:
            return
        await self.flush(at_most=10)
        self._writer.cancel()
        await asyncio.wait([self._writer])  # not `await` it: that would hide our own cancel
        self._closed = True
        await self.wallets.close()
        if not self.pending:
            # A request that ends later settles directly, and finds its row already written.
            flying = [_interrupted(orjson.loads(line)) for line in self._flying.values()]
            for start in range(0, len(flying), _BATCH_ENTRIES):
                await self._store.settle(flying[start : start + _BATCH_ENTRIES])
            await self._store.release_holds(self.instance)
            self._path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the lock: a successor replays whatever is left

    async def recover(self) -> int:
        """Replay the journals of processes that died, then give back their holds."""
        recovered = 0
        for path in sorted(self._directory.glob(f"*{_SUFFIX}")):
            if path != self._path:
                recovered += await self._recover_one(path)
        return recovered

    async def _recover_one(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # its process is alive
            # Local-disk reads and unlinks of a few KiB-MiB: cheaper than a thread hop.
            begun: dict[str, dict[str, Any]] = {}
            entries = _parse(os.pread(fd, os.fstat(fd).st_size, 0), begun=begun)[0]
            ended = {entry.request_id for entry in entries}
            interrupted = [_interrupted(b) for key, b in begun.items() if key not in ended]
            entries += interrupted
            # Finished requests first: they draw on the wallets given back after them.
            for start in range(0, len(entries), _BATCH_ENTRIES):
                await self._store.settle(entries[start : start + _BATCH_ENTRIES])
            released = await self._store.release_holds(path.name.removesuffix(_SUFFIX))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            log.warning(
                "ledger: replayed %d entries (%d interrupted) and gave back %d holds of a dead"
                " process (%s)",
                len(entries),
                len(interrupted),
                released,
                path.name,
            )
            return len(entries)
        finally:
            os.close(fd)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + _SWEEP_EVERY
        backoff = 0.05
        while True:
            # Not asyncio.wait_for: on 3.11 it can swallow the cancel close() sends when the
            # wake-up lands at the same moment, and the writer then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_IDLE_EVERY if self.wallets else _SWEEP_EVERY):
                    await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(_LINGER)
            try:
                await self._drain()
                if not self.pending:  # nothing unsettled can still draw on a wallet's row
                    await self.wallets.give_back_idle()
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + _SWEEP_EVERY
                    await self.recover()
                backoff = 0.05
            except Exception:
                log.exception("ledger: settling failed; retrying in %.2f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                self._wake.set()

    async def _drain(self) -> None:
        # Only what is here now: what requests append meanwhile waits for the next linger, so
        # it settles in a batch rather than one by one as it comes (the loop never caught up).
        target = self._appended
        while self._settled < target:
            if self._mirror is not None:
                await self._settle_mirrored(self._mirror, target)
            else:
                await self._settle_from_journal(target)
            self._progress.set()
            await asyncio.sleep(0)  # let requests run between batches
        if self._mirror is None and self._settled == self._appended:
            self._mirror = deque()  # caught up: nothing unsettled, so memory mirrors it again
        if self._settled == self._appended and self._appended - self._base > _TRUNCATE_AT:
            # Everything is settled and nothing can append between these lines (one thread);
            # the requests in flight keep their begin lines, which need no settling.
            self._unjournaled.clear()  # written below with the others
            os.ftruncate(self._fd, 0)
            self._base = self._appended
            for line in self._flying.values():
                self._write(line + b"\n")
            self._settled = self._appended

    async def _settle_mirrored(self, mirror: deque[tuple[LedgerEntry, int]], target: int) -> None:
        """One batch of the entries appended up to `target`, from memory."""
        batch = list(itertools.islice(mirror, _BATCH_ENTRIES))
        batch = [(entry, end) for entry, end in batch if end <= target]
        if not batch:  # only begin lines are left before `target`: nothing to settle
            self._settled = target
            return
        await self._store.settle([entry for entry, _ in batch])
        for _ in batch:
            mirror.popleft()
        self._settled = batch[-1][1]

    async def _settle_from_journal(self, target: int) -> None:
        """One batch of the entries appended up to `target`, read back from the journal."""
        offset = self._settled - self._base
        size = min(target - self._settled, _READ_BYTES)
        entries, used = _parse(os.pread(self._fd, size, offset), _BATCH_ENTRIES)
        if used == 0:
            raise OSError(f"ledger journal {self._path}: an entry larger than {size} bytes")
        if entries:
            await self._store.settle(entries)
        self._settled += used


def ledger_directory(settings: Settings) -> Path:
    """CALLMISSED_LEDGER_DIR, else `<sqlite file>.ledger/` beside the database.

    It must be on a disk that outlives the process: journals there are what a restart replays.
    """
    if settings.accounting.ledger_dir:
        return Path(settings.accounting.ledger_dir)
    url = settings.database_url
    if not url.startswith("sqlite://"):
        return Path("callmissed-ledger")
    path = url.removeprefix("sqlite://").removeprefix("/")
    if path in ("", ":memory:"):
        # An in-memory database dies with the process; so may its journal.
        return Path(tempfile.mkdtemp(prefix="callmissed-ledger-"))
    return Path(f"{path}.ledger")


def _parse(
    data: bytes, limit: int | None = None, begun: dict[str, dict[str, Any]] | None = None
) -> tuple[list[LedgerEntry], int]:
    """Entries from whole lines of `data` (at most `limit`), and the bytes they took; begin
    lines go to `begun` by request id if given, else are skipped."""
    entries: list[LedgerEntry] = []
    used = 0
    while limit is None or len(entries) < limit:
        end = data.find(b"\n", used)
        if end == -1:
            break  # a partial last line: its write never finished
        line = data[used:end]
        used = end + 1
        try:
            if not line.startswith(_BEGIN):
                entries.append(LedgerEntry(**orjson.loads(line)))
            elif begun is not None:
                begin = orjson.loads(line)
                begun[begin["begin"]] = begin
        except (orjson.JSONDecodeError, TypeError, KeyError):
            log.error("ledger: skipping an unreadable journal line: %r", line[:200])
    return entries, used


def _interrupted(begin: dict[str, Any]) -> LedgerEntry:
    """The row of a request that began but never ended: its process died or shut down."""
    return LedgerEntry(
        begin["begin"], begin["key_id"], begin["created_at"], begin["model"], "", "", False,
        500, "interrupted", 0, 0, 0, 0, 0, None, 0.0,
    )  # fmt: skip
