"""The console's own connections to the store's database: reads, and retention's writes.

Never the store's connections: a console query must not hold up a request. On SQLite the
queries run on threads of their own, each with its own connection (WAL lets them read while
the gateway writes; sqlite3 lets go of the GIL while a statement runs), never on the event
loop. On PostgreSQL they use a small pool of their own, opened on first use, with a statement
timeout. SQL is written once with `?` placeholders; PostgreSQL gets `$1, $2, …`.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

from callmissed.errors import GatewayError
from callmissed.store.sqlite import immediate

__all__ = ["ConsoleDatabase", "QueryTooSlow", "Statement", "open_console_database"]

STATEMENT_TIMEOUT = 5.0  # seconds any one console statement may run
_PLACEHOLDER = re.compile(r"\?")

Statement = tuple[str, Sequence[Any]]


class QueryTooSlow(GatewayError):
    """A console query ran past STATEMENT_TIMEOUT (filters no index serves well)."""

    status = 503
    code = "query_timeout"


class ConsoleDatabase(Protocol):
    dialect: str  # "sqlite" or "postgres"
    persistent: bool  # False for an in-memory SQLite database, which the console cannot open

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        """Rows of a read-only query, as dicts."""

    async def fetch_tuples(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only query, as tuples: for the many rows of a view's rollups."""

    async def transaction(self, *statements: Statement) -> list[int]:
        """Run writing statements in one transaction; the rows each changed."""

    async def close(self) -> None: ...


def open_console_database(url: str) -> ConsoleDatabase:
    """The console's database for CALLMISSED_DATABASE_URL (sqlite:///… or postgresql://…)."""
    if url.startswith("sqlite://"):
        return SQLiteConsoleDatabase(url.removeprefix("sqlite://").removeprefix("/"))
    return PostgresConsoleDatabase(url)


class SQLiteConsoleDatabase:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._path = path
        self.persistent = path not in ("", ":memory:")
        # One thread for reads and one for writes: retention's batches never wait behind a
        # slow read, and neither waits behind the other's connection.
        self._readers = ThreadPoolExecutor(1, thread_name_prefix="console-read")
        self._writers = ThreadPoolExecutor(1, thread_name_prefix="console-write")
        self._read: sqlite3.Connection | None = None
        self._write: sqlite3.Connection | None = None

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._fetch, sql, params)

    async def fetch_tuples(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._fetch_tuples, sql, params)

    def _fetch_tuples(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        db = self._connection(writable=False)
        with _deadline(db):
            return db.execute(sql, params).fetchall()

    async def transaction(self, *statements: Statement) -> list[int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writers, self._run, statements)

    def _connection(self, writable: bool) -> sqlite3.Connection:
        db = self._write if writable else self._read
        if db is None:
            if not self.persistent:
                raise GatewayError(
                    "The console needs a database file; an in-memory one is private."
                )
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            if writable:
                self._write = db
            else:
                db.execute("PRAGMA query_only=1")
                self._read = db
        return db

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        db = self._connection(writable=False)
        with _deadline(db):
            cursor = db.execute(sql, params)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _run(self, statements: tuple[Statement, ...]) -> list[int]:
        db = self._connection(writable=True)
        with _deadline(db), immediate(db):
            return [db.execute(sql, tuple(params)).rowcount for sql, params in statements]

    async def close(self) -> None:
        for pool, attribute in ((self._readers, "_read"), (self._writers, "_write")):
            db = getattr(self, attribute)
            if db is not None:
                pool.submit(db.close).result()
                setattr(self, attribute, None)
            pool.shutdown()


@contextmanager
def _deadline(db: sqlite3.Connection) -> Iterator[None]:
    """Interrupt the connection's statement once it has run STATEMENT_TIMEOUT seconds."""
    ends = time.monotonic() + STATEMENT_TIMEOUT
    db.set_progress_handler(lambda: int(time.monotonic() > ends), 10_000)
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "interrupted" in str(exc):
            raise _too_slow() from None
        raise
    finally:
        db.set_progress_handler(None, 0)


def _too_slow() -> QueryTooSlow:
    return QueryTooSlow(
        f"The query took longer than {STATEMENT_TIMEOUT:g} s; narrow it (a key, a model or a"
        " shorter time range)."
    )


class PostgresConsoleDatabase:
    dialect = "postgres"
    persistent = True

    def __init__(self, url: str) -> None:
        self._url = url
        self._pool: Any = None
        self._opening = asyncio.Lock()

    async def _connections(self) -> Any:
        async with self._opening:
            if self._pool is None:
                import asyncpg

                self._pool = await asyncpg.create_pool(
                    self._url,
                    min_size=0,
                    max_size=2,
                    command_timeout=STATEMENT_TIMEOUT + 5,
                    server_settings={"statement_timeout": str(int(STATEMENT_TIMEOUT * 1000))},
                )
        return self._pool

    async def fetch(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        import asyncpg

        pool = await self._connections()
        try:
            rows = await pool.fetch(_numbered(sql), *params)
        except asyncpg.QueryCanceledError:
            raise _too_slow() from None
        return [dict(row) for row in rows]

    async def fetch_tuples(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import asyncpg

        pool = await self._connections()
        try:
            rows = await pool.fetch(_numbered(sql), *params)
        except asyncpg.QueryCanceledError:
            raise _too_slow() from None
        return [tuple(row) for row in rows]

    async def transaction(self, *statements: Statement) -> list[int]:
        pool = await self._connections()
        counts = []
        async with pool.acquire() as db, db.transaction():
            for sql, params in statements:
                status: str = await db.execute(_numbered(sql), *params)
                count = status.rsplit(" ", 1)[-1]
                counts.append(int(count) if count.isdigit() else 0)
        return counts

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def _numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, …` (console SQL has no `?` in literals)."""
    numbers = iter(range(1, 1000))
    return _PLACEHOLDER.sub(lambda _: f"${next(numbers)}", sql)
