"""The embedded default store: one SQLite file, WAL mode, no server needed."""

from __future__ import annotations

import sqlite3
import time

from callmissed.store.base import KeyRecord, migrations

__all__ = ["SQLiteStore"]

_KEY_COLUMNS = "id, name, key_hash, key_prefix, credits, created_at, revoked_at"


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    def _migrate(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
        )
        applied = {row[0] for row in self._db.execute("SELECT name FROM schema_migrations")}
        for name, sql in migrations():
            if name in applied:
                continue
            # executescript runs the file as written; the BEGIN/COMMIT make it all-or-nothing.
            self._db.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\n;"
                f"INSERT INTO schema_migrations VALUES ('{name}', {time.time()});\nCOMMIT;"
            )

    def create_key(
        self, name: str, key_hash: str, key_prefix: str, credits: int | None
    ) -> KeyRecord:
        cursor = self._db.execute(
            "INSERT INTO api_keys (name, key_hash, key_prefix, credits, created_at)"
            f" VALUES (?, ?, ?, ?, ?) RETURNING {_KEY_COLUMNS}",
            (name, key_hash, key_prefix, credits, time.time()),
        )
        return KeyRecord(*cursor.fetchone())

    def find_key(self, key_hash: str) -> KeyRecord | None:
        row = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
        ).fetchone()
        return KeyRecord(*row) if row else None

    def list_keys(self) -> list[KeyRecord]:
        rows = self._db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id").fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke_key(self, key_id: int) -> bool:
        cursor = self._db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return cursor.rowcount == 1

    def close(self) -> None:
        self._db.close()
