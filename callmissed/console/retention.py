"""Retention: ledger rows older than CALLMISSED_RETENTION_DAYS (default 90) are deleted.

Nothing is lost from the console's totals: every row was added to the daily rollups when it
settled (store/rollup.py), and those are kept. Per-minute rollups go after two days, hourly and
6-hourly ones with the ledger rows. Deletion runs in small batches, each its own short
transaction on the console's own connection (on SQLite, its own thread), with a pause between
batches so the ledger writer and wallet top-ups get the database in between: the hot path never
waits long.
One process per server does it (a lock file beside the ledger journals); a pass runs every
few minutes, or at once through `POST /admin/retention`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from callmissed.console.database import ConsoleDatabase

__all__ = ["MINUTE_ROLLUP_DAYS", "Retention"]

log = logging.getLogger("callmissed")

MINUTE_ROLLUP_DAYS = 2  # per-minute rollups serve the last hour's view only
_LEDGER_BATCH = 500  # rows per transaction: a few milliseconds of the write lock
_ROLLUP_BATCH = 2000
_PAUSE = 0.05  # seconds between batches
_EVERY = 600.0  # seconds between passes
_FIRST_AFTER = (30.0, 90.0)  # the first pass, some time after start-up

# The oldest rows first, through ledger_by_time. SQLite runs both in one write transaction, so
# they see the same rows; PostgreSQL deletes the tags of exactly the rows it deleted.
_OLDEST = "SELECT request_id FROM ledger WHERE created_at < ? ORDER BY created_at LIMIT ?"
_SQLITE_LEDGER = (
    f"DELETE FROM ledger_tags WHERE request_id IN ({_OLDEST})",
    f"DELETE FROM ledger WHERE request_id IN ({_OLDEST})",
)
_POSTGRES_LEDGER = (
    f"WITH gone AS (DELETE FROM ledger WHERE request_id IN ({_OLDEST}) RETURNING request_id),"
    " tags AS (DELETE FROM ledger_tags WHERE request_id IN (SELECT request_id FROM gone))"
    " SELECT count(*) FROM gone"
)
_ROLLUP_KEYS = {
    "usage_by_route": "period, tag, bucket, model, route",
    "usage_by_key": "period, tag, bucket, key_id",
}


class Retention:
    """Deletes what is past its age; start() runs it on a schedule, close() stops it."""

    def __init__(self, db: ConsoleDatabase, days: float, lock_directory: Path) -> None:
        self._db = db
        self.days = days
        self._lock_path = lock_directory / "console-retention.lock"
        self._task: asyncio.Task[None] | None = None
        self._running = asyncio.Lock()
        self.last_run: dict[str, Any] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name="retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None

    async def _schedule(self) -> None:
        await asyncio.sleep(random.uniform(*_FIRST_AFTER))
        while True:
            try:
                await self.run()
            except Exception:
                log.exception("retention: a pass failed; the next one tries again")
            await asyncio.sleep(_EVERY * random.uniform(0.9, 1.1))

    async def run(self, now: float | None = None) -> dict[str, Any] | None:
        """One pass, unless another process of this server is running one (then None)."""
        async with self._running:
            with self._lock() as locked:
                if not locked:
                    return None
                return await self._pass(time.time() if now is None else now)

    async def _pass(self, now: float) -> dict[str, Any]:
        began = time.monotonic()
        deleted = 0
        if self.days:
            deleted = await self._ledger(now - self.days * 86400)
        rollups = await self._rollups(60, now - MINUTE_ROLLUP_DAYS * 86400)
        if self.days:
            for period in (3600, 21600):
                rollups += await self._rollups(period, now - self.days * 86400)
        self.last_run = {
            "at": now,
            "ledger_rows": deleted,
            "rollup_rows": rollups,
            "seconds": round(time.monotonic() - began, 3),
        }
        if deleted or rollups:
            log.info("retention: deleted %d ledger rows and %d rollup rows", deleted, rollups)
        return self.last_run

    async def _ledger(self, cutoff: float) -> int:
        deleted = 0
        while True:
            if self._db.dialect == "sqlite":
                batch = (cutoff, _LEDGER_BATCH)
                counts = await self._db.transaction(*((sql, batch) for sql in _SQLITE_LEDGER))
                count = counts[-1]
            else:
                rows = await self._db.fetch(_POSTGRES_LEDGER, cutoff, _LEDGER_BATCH)
                count = int(rows[0]["count"])
            deleted += count
            if count < _LEDGER_BATCH:
                return deleted
            await asyncio.sleep(_PAUSE)

    async def _rollups(self, period: int, cutoff: float) -> int:
        deleted = 0
        for table, key in _ROLLUP_KEYS.items():
            sql = (
                f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table}"
                f" WHERE period = ? AND bucket < ? LIMIT {_ROLLUP_BATCH})"
            )
            while True:
                (count,) = await self._db.transaction((sql, (period, int(cutoff))))
                deleted += count
                if count < _ROLLUP_BATCH:
                    break
                await asyncio.sleep(_PAUSE)
        return deleted

    @contextlib.contextmanager
    def _lock(self) -> Iterator[bool]:
        """Whether this process holds the server's retention lock, for the block's duration."""
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)
