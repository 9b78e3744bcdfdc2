"""Stored Responses: the rows behind previous_response_id and GET/DELETE /v1/responses/{id}.

One class per backend, each on its store's own connection (SQLite) or pool (PostgreSQL), with
the same contract (tests/store/test_responses_store.py runs both). Rows are owned by a key: every
read and delete names it, so another key's id is as good as missing. Each save is one
transaction that also keeps the key's byte total (migration 0009) under its budget, removing
the key's oldest rows first; purge() removes expired rows in bounded batches.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["PostgresResponses", "ResponseStore", "SQLiteResponses", "StoredResponse"]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    created_at: float
    response: str  # the Response object, JSON
    input_items: str  # the items it answered, the conversation's earlier turns included, JSON


class ResponseStore(Protocol):
    async def save(
        self, key_id: int, stored: StoredResponse, expires_at: float, key_budget: int
    ) -> None:
        """Keep `stored` for the key; then drop the key's oldest rows while its total bytes
        exceed `key_budget` (never the new row)."""

    async def load(self, key_id: int, response_id: str, now: float) -> StoredResponse | None:
        """The key's unexpired row, or None (missing, expired, or another key's)."""

    async def delete(self, key_id: int, response_id: str) -> bool: ...

    async def purge(self, now: float, limit: int) -> int:
        """Delete up to `limit` rows expired by `now`; how many."""


def _size(stored: StoredResponse) -> int:
    return len(stored.response) + len(stored.input_items)


class SQLiteResponses:
    """On SQLiteStore's connection; each method one short transaction under the write lock."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    async def save(
        self, key_id: int, stored: StoredResponse, expires_at: float, key_budget: int
    ) -> None:
        size = _size(stored)
        with _immediate(self._db) as db:
            db.execute(
                "INSERT INTO responses (id, key_id, created_at, expires_at, size, response,"
                " input_items) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    key_id,
                    stored.created_at,
                    expires_at,
                    size,
                    stored.response,
                    stored.input_items,
                ),
            )
            row = db.execute(
                "INSERT INTO response_quota (key_id, bytes) VALUES (?, ?) ON CONFLICT (key_id)"
                " DO UPDATE SET bytes = bytes + excluded.bytes RETURNING bytes",
                (key_id, size),
            ).fetchone()
            excess = int(row[0]) - key_budget
            if excess > 0:
                _evict(db, key_id, stored.id, excess)

    async def load(self, key_id: int, response_id: str, now: float) -> StoredResponse | None:
        row = self._db.execute(
            "SELECT id, created_at, response, input_items FROM responses"
            " WHERE id = ? AND key_id = ? AND expires_at > ?",
            (response_id, key_id, now),
        ).fetchone()
        return None if row is None else StoredResponse(*row)

    async def delete(self, key_id: int, response_id: str) -> bool:
        with _immediate(self._db) as db:
            gone = db.execute(
                "DELETE FROM responses WHERE id = ? AND key_id = ? RETURNING key_id, size",
                (response_id, key_id),
            ).fetchall()
            _release(db, gone)
        return bool(gone)

    async def purge(self, now: float, limit: int) -> int:
        with _immediate(self._db) as db:
            gone = db.execute(
                "DELETE FROM responses WHERE id IN (SELECT id FROM responses"
                " WHERE expires_at <= ? LIMIT ?) RETURNING key_id, size",
                (now, limit),
            ).fetchall()
            _release(db, gone)
        return len(gone)


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A transaction holding SQLite's write lock from its start (as store/sqlite.py's)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _evict(db: sqlite3.Connection, key_id: int, keep: str, excess: int) -> None:
    """Drop the key's oldest rows but `keep` until `excess` bytes are free, reading them off
    the (key_id, created_at) index only as far as that: a key at its budget may have a
    quarter of a million rows, and reading them all took seconds under the write lock."""
    freed = 0
    doomed: list[tuple[str]] = []
    rows = db.execute(
        "SELECT id, size FROM responses WHERE key_id = ? AND id != ? ORDER BY created_at",
        (key_id, keep),
    )
    for response_id, size in rows:  # stepped one row at a time: no fetchall()
        doomed.append((response_id,))
        freed += size
        if freed >= excess:
            break
    rows.close()
    db.executemany("DELETE FROM responses WHERE id = ?", doomed)
    _release(db, [(key_id, freed)])


def _freed(gone: list[Any]) -> dict[int, int]:
    """Bytes freed per key by deleted (key_id, size) rows, by key id: two purges lock the
    quota rows they update in the same order, so neither waits for the other in a cycle."""
    freed: dict[int, int] = {}
    for key_id, size in gone:
        freed[key_id] = freed.get(key_id, 0) + size
    return dict(sorted(freed.items()))


def _release(db: sqlite3.Connection, gone: list[Any]) -> None:
    for key_id, size in _freed(gone).items():
        db.execute(
            "UPDATE response_quota SET bytes = MAX(bytes - ?, 0) WHERE key_id = ?", (size, key_id)
        )


class PostgresResponses:
    """On PostgresStore's pool; each method one transaction. The key's quota row is locked
    first, so concurrent saves of one key keep its total exact."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def save(
        self, key_id: int, stored: StoredResponse, expires_at: float, key_budget: int
    ) -> None:
        size = _size(stored)
        async with self._pool.acquire() as db, db.transaction():
            total = await db.fetchval(
                "INSERT INTO response_quota (key_id, bytes) VALUES ($1, $2) ON CONFLICT (key_id)"
                " DO UPDATE SET bytes = response_quota.bytes + EXCLUDED.bytes RETURNING bytes",
                key_id,
                size,
            )
            await db.execute(
                "INSERT INTO responses (id, key_id, created_at, expires_at, size, response,"
                " input_items) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                stored.id,
                key_id,
                stored.created_at,
                expires_at,
                size,
                stored.response,
                stored.input_items,
            )
            if total > key_budget:
                await _pg_evict(db, key_id, stored.id, total - key_budget)

    async def load(self, key_id: int, response_id: str, now: float) -> StoredResponse | None:
        row = await self._pool.fetchrow(
            "SELECT id, created_at, response, input_items FROM responses"
            " WHERE id = $1 AND key_id = $2 AND expires_at > $3",
            response_id,
            key_id,
            now,
        )
        return None if row is None else StoredResponse(*row)

    async def delete(self, key_id: int, response_id: str) -> bool:
        async with self._pool.acquire() as db, db.transaction():
            gone = await db.fetch(
                "DELETE FROM responses WHERE id = $1 AND key_id = $2 RETURNING key_id, size",
                response_id,
                key_id,
            )
            await _pg_release(db, gone)
        return bool(gone)

    async def purge(self, now: float, limit: int) -> int:
        async with self._pool.acquire() as db, db.transaction():
            gone = await db.fetch(
                "DELETE FROM responses WHERE id IN (SELECT id FROM responses"
                " WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING key_id, size",
                now,
                limit,
            )
            await _pg_release(db, gone)
        return len(gone)


# The key's oldest rows but the new one, a batch at a time: with the LIMIT the planner walks
# the (key_id, created_at) index instead of sorting every row of the key. Rows another
# transaction holds (a DELETE, a purge) are skipped, not waited for: this transaction holds the
# key's quota row, which those lock next, so waiting for them would deadlock.
_PG_OLDEST = (
    "SELECT id, size FROM responses WHERE key_id = $1 AND id <> $2 ORDER BY created_at"
    " LIMIT $3 FOR UPDATE SKIP LOCKED"
)
_PG_DROP = "DELETE FROM responses USING unnest($1::text[]) AS d (id) WHERE responses.id = d.id"
_EVICT_BATCH = 64  # rows read at a time: enough for most saves' excess


async def _pg_evict(db: Any, key_id: int, keep: str, excess: int) -> None:
    """Drop the key's oldest rows but `keep` until `excess` bytes are free, reading only as
    many as that takes (see SQLite's _evict)."""
    freed = 0
    while freed < excess:
        doomed: list[str] = []
        for response_id, size in await db.fetch(_PG_OLDEST, key_id, keep, _EVICT_BATCH):
            doomed.append(response_id)
            freed += size
            if freed >= excess:
                break
        if not doomed:
            break  # nothing older left to drop (or all of it held by others)
        await db.execute(_PG_DROP, doomed)
    await _pg_release(db, [(key_id, freed)])


async def _pg_release(db: Any, gone: list[Any]) -> None:
    for key_id, size in _freed([tuple(row) for row in gone]).items():
        await db.execute(
            "UPDATE response_quota SET bytes = GREATEST(bytes - $1, 0) WHERE key_id = $2",
            size,
            key_id,
        )
