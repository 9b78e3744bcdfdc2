"""SQLiteLimiter: the sliding log (ratelimit/__init__.py) kept in the gateway's SQLite file, so
that it is exact across every process that opens the file (granian workers, or several
`callmissed serve`).

A limited key's acquire and release are one short BEGIN IMMEDIATE transaction each on the
limiter's own connection: SQLite's single write lock makes the read-check-write atomic across
processes. Keys without limits never reach the database (UNLIMITED, as in MemoryLimiter).

Tables (migration 0005_rate_limits.sqlite.sql): admissions, finished requests' real tokens, and
the requests in flight with their reservation and owner (the ledger instance of the process
holding them). A key's rows older than the window are deleted whenever it is used, and every
key's once per window. Crash safety: a process that died, even by SIGKILL, no longer holds its
journal's flock (Ledger.alive), so when its leases would refuse a request they are deleted
first, and the request is decided again; the once-a-window sweep deletes them too.
If the database is unusable (locked past busy_timeout, disk full), the limiter admits and
logs, as RedisLimiter does: credits are enforced regardless.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from callmissed.accounting.ratelimit.base import (
    UNLIMITED,
    WINDOW,
    HeldLease,
    Lease,
    Snapshot,
    limited,
    refusal,
)
from callmissed.errors import RateLimited
from callmissed.store import KeyPolicy
from callmissed.store.sqlite import connect, immediate

__all__ = ["SQLiteLimiter"]

log = logging.getLogger("callmissed")

_USAGE = """
SELECT
    (SELECT count(*) FROM rate_requests WHERE key_id = :key),
    (SELECT min(at) FROM rate_requests WHERE key_id = :key),
    (SELECT coalesce(sum(tokens), 0) FROM rate_tokens WHERE key_id = :key),
    (SELECT min(at) FROM rate_tokens WHERE key_id = :key),
    (SELECT count(*) FROM rate_leases WHERE key_id = :key),
    (SELECT coalesce(sum(tokens), 0) FROM rate_leases WHERE key_id = :key)
"""


@dataclass(frozen=True, slots=True)
class _Usage:
    requests: int
    first_request: float | None
    finished: int
    first_finished: float | None
    in_flight: int
    reserved: int

    def snapshot(self, now: float, window: float) -> Snapshot:
        first, last = self.first_request, self.first_finished
        return Snapshot(
            requests=self.requests,
            requests_reset=first + window - now if first is not None else 0.0,
            tokens=self.finished + self.reserved,
            tokens_reset=last + window - now if last is not None else 0.0,
            in_flight=self.in_flight,
        )

    def admit(self, policy: KeyPolicy, tokens: int, now: float) -> _Usage:
        counted = policy.rpm is not None
        return _Usage(
            requests=self.requests + counted,
            first_request=self.first_request if self.requests or not counted else now,
            finished=self.finished,
            first_finished=self.first_finished,
            in_flight=self.in_flight + 1,
            reserved=self.reserved + tokens,
        )


class SQLiteLimiter:
    """The Limiter protocol over a SQLite file; `owner` names this process's leases, and
    `alive(owner)` tells whether another owner's process still runs."""

    def __init__(
        self,
        path: str,
        owner: str,
        alive: Callable[[str], bool],
        window: float = WINDOW,
        clock: Callable[[], float] = time.time,  # wall clock: shared by every process
    ) -> None:
        self._db = _connect(path)
        self._owner = owner
        self._alive = alive
        self._window = window
        self._clock = clock
        self._next_sweep = 0.0
        self._last_warning = 0.0

    async def acquire(self, key_id: int, policy: KeyPolicy, tokens: int) -> Lease:
        return self.try_acquire(key_id, policy, tokens)

    def try_acquire(self, key_id: int, policy: KeyPolicy, tokens: int) -> Lease:
        """acquire(), synchronously (one transaction, no await inside)."""
        if not limited(policy):
            return UNLIMITED
        now = self._clock()
        try:
            if now >= self._next_sweep:
                self._sweep(now)
            lease_id, outcome = self._admit(key_id, policy, tokens, now)
        except sqlite3.Error as exc:
            self._warn(exc)
            return UNLIMITED
        if isinstance(outcome, RateLimited):
            raise outcome
        give_back = functools.partial(self._release, key_id, lease_id)
        return HeldLease(policy, outcome, give_back)

    def _admit(
        self, key_id: int, policy: KeyPolicy, tokens: int, now: float
    ) -> tuple[int, Snapshot | RateLimited]:
        with self._transaction() as db:
            usage = self._usage(db, key_id, now)
            error = refusal(policy, usage.snapshot(now, self._window), tokens)
            if error is not None and usage.in_flight and self._reclaim(db, key_id):
                usage = self._usage(db, key_id, now)
                error = refusal(policy, usage.snapshot(now, self._window), tokens)
            if error is not None:
                return 0, error  # committed all the same: the expired rows stay deleted
            if policy.rpm is not None:
                db.execute("INSERT INTO rate_requests VALUES (?, ?)", (key_id, now))
            lease_id = db.execute(
                "INSERT INTO rate_leases (key_id, tokens, owner, created_at)"
                " VALUES (?, ?, ?, ?) RETURNING id",
                (key_id, tokens, self._owner, now),
            ).fetchone()[0]
        return int(lease_id), usage.admit(policy, tokens, now).snapshot(now, self._window)

    def _usage(self, db: sqlite3.Connection, key_id: int, now: float) -> _Usage:
        horizon = now - self._window
        db.execute("DELETE FROM rate_requests WHERE key_id = ? AND at <= ?", (key_id, horizon))
        db.execute("DELETE FROM rate_tokens WHERE key_id = ? AND at <= ?", (key_id, horizon))
        return _Usage(*db.execute(_USAGE, {"key": key_id}).fetchone())

    def _reclaim(self, db: sqlite3.Connection, key_id: int | None = None) -> bool:
        """Delete the leases of owners that died (of `key_id`'s owners, or all); whether any."""
        query = "SELECT DISTINCT owner FROM rate_leases WHERE owner != ?"
        args: tuple[str | int, ...] = (self._owner,)
        if key_id is not None:
            query, args = f"{query} AND key_id = ?", (self._owner, key_id)
        dead = [owner for (owner,) in db.execute(query, args) if not self._alive(owner)]
        for owner in dead:
            log.info("rate limits: reclaiming the leases of %s, which has exited", owner)
            db.execute("DELETE FROM rate_leases WHERE owner = ?", (owner,))
        return bool(dead)

    def _sweep(self, now: float) -> None:
        """Bound the tables: every key's expired rows, and dead owners' leases."""
        self._next_sweep = now + self._window
        horizon = now - self._window
        with self._transaction() as db:
            db.execute("DELETE FROM rate_requests WHERE at <= ?", (horizon,))
            db.execute("DELETE FROM rate_tokens WHERE at <= ?", (horizon,))
            self._reclaim(db)

    def _release(self, key_id: int, lease_id: int, tokens: int, count_tokens: bool) -> None:
        try:
            with self._transaction() as db:
                # The owner too: a lease id may be reused once a reclaimed lease is gone.
                db.execute(
                    "DELETE FROM rate_leases WHERE id = ? AND owner = ?", (lease_id, self._owner)
                )
                if count_tokens and tokens > 0:
                    db.execute(
                        "INSERT INTO rate_tokens VALUES (?, ?, ?)", (key_id, self._clock(), tokens)
                    )
        except sqlite3.Error as exc:
            self._warn(exc)

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db)

    def _warn(self, exc: Exception) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.error("rate limits are not enforced: the SQLite limiter failed (%s)", exc)

    async def close(self) -> None:
        self._db.close()


def _connect(path: str) -> sqlite3.Connection:
    db = connect(path)
    db.execute("PRAGMA wal_autocheckpoint=0")  # the store's thread checkpoints, off the loop
    return db
