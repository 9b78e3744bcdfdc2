"""Upstream price lists in the store (accounting/price_list.py, migration 0007): the last good
copy of each list, and which process is fetching it now. Each statement is one statement, so that
of several processes looking at once exactly one gets a claim. The two backends take these
methods in."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresPriceLists", "SQLitePriceLists"]

# (source, until, now, stale_before): a new row, or a stale list nobody holds a claim on.
_CLAIM = (
    "INSERT INTO price_lists (source, fetched_at, body, claimed_until) VALUES (?, 0, NULL, ?)"
    " ON CONFLICT (source) DO UPDATE SET claimed_until = excluded.claimed_until"
    " WHERE price_lists.claimed_until <= ? AND price_lists.fetched_at < ?"
    " RETURNING source"
)
# (source, newer_than)
_LOAD = (
    "SELECT fetched_at, body FROM price_lists"
    " WHERE source = ? AND fetched_at > ? AND body IS NOT NULL"
)
# (source, fetched_at, body): the new copy, and the claim on it ended.
_SAVE = (
    "INSERT INTO price_lists (source, fetched_at, body, claimed_until) VALUES (?, ?, ?, 0)"
    " ON CONFLICT (source) DO UPDATE SET fetched_at = excluded.fetched_at,"
    " body = excluded.body, claimed_until = 0"
)


def _numbered(sql: str) -> str:
    """`sql` with PostgreSQL's $1, $2, … for SQLite's ? placeholders."""
    parts = sql.split("?")
    return "".join(part + (f"${n}" if n < len(parts) else "") for n, part in enumerate(parts, 1))


class SQLitePriceLists:
    """Store's price-list methods on a SQLite connection (`_db`)."""

    _db: sqlite3.Connection

    async def load_price_list(self, source: str, newer_than: float) -> tuple[float, bytes] | None:
        row = self._db.execute(_LOAD, (source, newer_than)).fetchone()
        return None if row is None else (float(row[0]), row[1].encode())

    async def claim_price_refresh(
        self, source: str, now: float, until: float, stale_before: float
    ) -> bool:
        claim = (source, until, now, stale_before)
        return self._db.execute(_CLAIM, claim).fetchone() is not None

    async def save_price_list(self, source: str, fetched_at: float, body: bytes) -> None:
        self._db.execute(_SAVE, (source, fetched_at, body.decode()))


_PG_CLAIM, _PG_LOAD, _PG_SAVE = _numbered(_CLAIM), _numbered(_LOAD), _numbered(_SAVE)


class PostgresPriceLists:
    """Store's price-list methods on an asyncpg pool (`_db`)."""

    @property
    def _db(self) -> asyncpg.Pool:
        raise NotImplementedError

    async def load_price_list(self, source: str, newer_than: float) -> tuple[float, bytes] | None:
        row = await self._db.fetchrow(_PG_LOAD, source, newer_than)
        return None if row is None else (float(row["fetched_at"]), row["body"].encode())

    async def claim_price_refresh(
        self, source: str, now: float, until: float, stale_before: float
    ) -> bool:
        return await self._db.fetchval(_PG_CLAIM, source, until, now, stale_before) is not None

    async def save_price_list(self, source: str, fetched_at: float, body: bytes) -> None:
        await self._db.execute(_PG_SAVE, source, fetched_at, body.decode())
