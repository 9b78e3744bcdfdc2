"""The embedded default store: one SQLite file, WAL mode, no server needed.

Every method runs synchronously on the caller's thread: each is one short transaction of a few
microseconds (BEGIN IMMEDIATE takes SQLite's single write lock, so a read-check-write inside
one is atomic across every process sharing the file). Commits never fsync (WAL, synchronous=
NORMAL: a commit survives a crash of the process, not of the machine); the WAL checkpoint, which
does fsync, runs on a background thread instead of inside some request's commit.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import orjson

from callmissed.store.base import (
    FAIR_SHARE,
    KEY_COLUMNS as _KEY_COLUMNS,
    LEDGER_COLUMNS as _LEDGER_COLUMNS,
    LEDGER_DETAIL_COLUMNS as _DETAIL_COLUMNS,
    MAX_BALANCE,
    NO_POLICY,
    Funding,
    KeyPolicy,
    KeyRecord,
    LedgerEntry,
    migrations,
    plan_settlement,
)
from callmissed.store.budget import (
    BUDGET_COLUMNS,
    Budget,
    first_window,
    rolled,
    window_start,
    window_starts,
    with_limit_reset,
)
from callmissed.store.price_lists import SQLitePriceLists
from callmissed.store.responses import SQLiteResponses
from callmissed.store.rollup import write_sqlite
from callmissed.store.walwatch import WalWatch

__all__ = ["SQLiteStore"]

_FUND_WALLET = (
    "INSERT INTO holds (request_id, key_id, amount, instance, model, created_at, wallet)"
    " VALUES (?, ?, ?, ?, '', ?, TRUE)"
    " ON CONFLICT (request_id) DO UPDATE SET amount = amount + excluded.amount"
)

# What a settling batch reads, each in one statement: json_each() takes the batch's ids as one
# parameter, and each id is looked up in the table's primary key.
_SETTLED = "SELECT request_id FROM ledger WHERE request_id IN (SELECT value FROM json_each(?))"
_HOLDS = "SELECT request_id, amount FROM holds WHERE request_id IN (SELECT value FROM json_each(?))"
_BALANCES = "SELECT id, credits FROM api_keys WHERE id IN (SELECT value FROM json_each(?))"

# Roll the keys :ids whose budget resets into the window holding now (store/budget.py): what
# the ended window spent comes back to the balance. Only keys past their window are written.
_WINDOW = "CASE limit_reset WHEN 'daily' THEN :day WHEN 'weekly' THEN :week ELSE :month END"
_ROLL = (
    "UPDATE api_keys SET credits = credits + window_spent, window_spent = 0,"
    f" window_start = {_WINDOW}"
    " WHERE id IN (SELECT value FROM json_each(:ids)) AND limit_reset IS NOT NULL"
    f" AND credits IS NOT NULL AND (window_start IS NULL OR window_start < {_WINDOW})"
)
_CHARGE = (
    "UPDATE api_keys SET credits = credits + ?, spent = spent + ?,"
    " window_spent = window_spent + CASE WHEN limit_reset IS NULL THEN 0 ELSE ? END WHERE id = ?"
)

_CHARGED_SINCE = "SELECT COALESCE(sum(cost), 0) FROM ledger WHERE key_id = ? AND created_at >= ?"
_SET_BUDGET = (
    "UPDATE api_keys SET credits = ?, granted = ?, spent = ?, limit_reset = ?,"
    " window_start = ?, window_spent = ? WHERE id = ?"
)

_CHECKPOINT_EVERY = 0.5  # seconds

_INSERT_LEDGER = (
    f"INSERT INTO ledger ({_LEDGER_COLUMNS}, {_DETAIL_COLUMNS}) VALUES ({', '.join('?' * 23)})"
)
# Most rows have none of the console's details: their five NULLs are left to the columns'
# default rather than bound (each None bound goes through the adapters, below).
_INSERT_PLAIN_LEDGER = f"INSERT INTO ledger ({_LEDGER_COLUMNS}) VALUES ({', '.join('?' * 18)})"


def _null(value: None) -> None:
    return value


# sqlite3 offers every parameter that is not exactly an int, float or str to its adapters
# before binding it. Unregistered, None and bool fall through to a failed attribute lookup (an
# AttributeError made and cleared, ~3,000 instructions each; a ledger row binds two to seven).
# Registered, the lookup finds them; what is bound is unchanged.
sqlite3.register_adapter(type(None), _null)
sqlite3.register_adapter(bool, int)


class SQLiteStore(SQLitePriceLists):
    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # dates budget windows (store/budget.py)
        self._db = connect(path)
        self._migrate()
        self._version = -1  # PRAGMA data_version at the last look
        self._generation = -1  # key_changes.generation (migration 0006) at the last look
        self._changes = 0  # keys_version(): bumped whenever the generation moved
        self._active: set[int] = set()  # keys read as not revoked since the generation moved
        self._wal = WalWatch(path)  # after _migrate(): the file is in WAL mode by then
        self._stop = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if path != ":memory:":
            # Checkpoints (the only fsyncs) happen here, never inside a request's commit.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(
                target=self._checkpoint, args=(path,), name="sqlite-checkpoint", daemon=True
            )
            self._checkpointer.start()

    async def start(self) -> None:
        pass  # connected and migrated in __init__, so that open_store() is ready to use

    def _checkpoint(self, path: str) -> None:
        db = connect(path)
        try:
            while not self._stop.wait(_CHECKPOINT_EVERY):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    def _migrate(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL)"
        )
        applied = {row[0] for row in self._db.execute("SELECT name FROM schema_migrations")}
        for name, sql in migrations("sqlite"):
            if name in applied:
                continue
            # executescript runs the file as written; the BEGIN/COMMIT make it all-or-nothing.
            try:
                self._db.executescript(
                    f"BEGIN IMMEDIATE;\n{sql}\n;"
                    f"INSERT INTO schema_migrations VALUES ('{name}', {time.time()});\nCOMMIT;"
                )
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                # Another process may have applied it meanwhile; only then is this fine.
                done = self._db.execute(
                    "SELECT 1 FROM schema_migrations WHERE name = ?", (name,)
                ).fetchone()
                if done is None:
                    raise

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return immediate(self._db)

    # Keys

    async def create_key(
        self,
        name: str,
        key_hash: str,
        key_prefix: str,
        credits: int | None,
        policy: KeyPolicy = NO_POLICY,
        limit_reset: str | None = None,
    ) -> KeyRecord:
        start = first_window(credits, limit_reset, self._clock())
        cursor = self._db.execute(
            "INSERT INTO api_keys (name, key_hash, key_prefix, credits, granted, created_at,"
            " rpm, tpm, max_concurrent, models, limit_reset, window_start)"
            f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_KEY_COLUMNS}",
            (
                name, key_hash, key_prefix, credits, credits, time.time(),
                *_policy_row(policy), limit_reset, start,
            ),
        )  # fmt: skip
        return self._key(cursor.fetchone())

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        row = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
        ).fetchone()
        return self._key(row) if row else None

    async def get_key(self, key_id: int) -> KeyRecord | None:
        row = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
        ).fetchone()
        return self._key(row) if row else None

    async def list_keys(self) -> list[KeyRecord]:
        rows = self._db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id").fetchall()
        return [self._key(row) for row in rows]

    async def revoke_key(self, key_id: int) -> bool:
        self._active.discard(key_id)  # our own commits leave data_version as it is
        cursor = self._db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return cursor.rowcount == 1

    async def topup(self, key_id: int, amount: int) -> KeyRecord | None:
        row = self._db.execute(
            "UPDATE api_keys SET credits = credits + ?, granted = granted + ?"
            " WHERE id = ? AND revoked_at IS NULL AND credits IS NOT NULL AND credits + ? <= ?"
            f" RETURNING {_KEY_COLUMNS}",
            (amount, amount, key_id, amount, MAX_BALANCE),
        ).fetchone()
        return self._key(row) if row else None

    async def set_policy(self, key_id: int, policy: KeyPolicy) -> KeyRecord | None:
        row = self._db.execute(
            "UPDATE api_keys SET rpm = ?, tpm = ?, max_concurrent = ?, models = ?"
            f" WHERE id = ? RETURNING {_KEY_COLUMNS}",
            (*_policy_row(policy), key_id),
        ).fetchone()
        return self._key(row) if row else None

    async def set_limit_reset(self, key_id: int, limit_reset: str | None) -> KeyRecord | None:
        now = self._clock()
        with self._transaction() as db:
            row = db.execute(f"SELECT {BUDGET_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
            budget = _budget(row.fetchone())
            if budget is None:
                return None
            since = window_start(limit_reset, now) if limit_reset is not None else now
            charged = db.execute(_CHARGED_SINCE, (key_id, since)).fetchone()[0]
            changed = with_limit_reset(budget, limit_reset, charged, now)
            db.execute(_SET_BUDGET, (*dataclasses.astuple(changed), key_id))
        return await self.get_key(key_id)

    async def spent_since(self, key_id: int, since: Sequence[float]) -> list[int]:
        sums = ", ".join("COALESCE(sum(CASE WHEN created_at >= ? THEN cost END), 0)" for _ in since)
        row = self._db.execute(
            f"SELECT {sums} FROM ledger WHERE key_id = ? AND created_at >= ?",
            (*since, key_id, min(since)),
        ).fetchone()
        return [int(value) for value in row]

    def _key(self, row: Sequence[Any]) -> KeyRecord:
        return rolled(_key(row), self._clock())

    # Credits

    def keys_version(self) -> int:
        self._look()
        return self._changes

    async def is_revoked(self, key_id: int) -> bool:
        self._look()
        if key_id in self._active:
            return False
        row = self._db.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None or row[0] is not None:
            return True
        self._active.add(key_id)
        return False

    def _look(self) -> None:
        # data_version changes only when another connection commits (another process, the CLI):
        # until it does, no key changed. Asking costs a read transaction, so it is asked only
        # after the wal-index shows some commit (walwatch.py). Most commits are settlements and
        # top-ups, which change no key: the generation, which every key change bumps (a
        # trigger), tells those apart.
        if self._wal.changed():
            self._read_version()

    def _read_version(self) -> None:
        """PRAGMA data_version, and the key-change generation if another connection committed."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version:
            return
        self._version = version
        generation = self._db.execute("SELECT generation FROM key_changes").fetchone()[0]
        if generation != self._generation:
            self._generation = generation
            self._active.clear()
            self._changes += 1

    async def fund(self, key_id: int, wallet: str, need: int, want: int, instance: str) -> Funding:
        now = self._clock()
        with self._transaction() as db:
            db.execute(_ROLL, _roll_params([key_id], now))
            row = db.execute(
                "SELECT credits, revoked_at FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None or row[1] is not None:
                return Funding(0, None, revoked=True)
            balance: int | None = row[0]
            if balance is None or balance < need or need <= 0:
                return Funding(0, balance)
            taken = max(need, min(want, balance // FAIR_SHARE))
            db.execute("UPDATE api_keys SET credits = credits - ? WHERE id = ?", (taken, key_id))
            db.execute(_FUND_WALLET, (wallet, key_id, taken, instance, time.time()))
        return Funding(taken, balance - taken)

    async def give_back(self, wallet: str, amount: int | None = None) -> int:
        with self._transaction() as db:
            if amount is None:
                return _give_back(db, wallet)
            row = db.execute(
                "UPDATE holds SET amount = amount - ? WHERE request_id = ? AND wallet"
                " AND amount >= ? RETURNING key_id",
                (amount, wallet, amount),
            ).fetchone()
            if row is None:
                return 0
            db.execute("UPDATE api_keys SET credits = credits + ? WHERE id = ?", (amount, row[0]))
            return amount

    async def settle(self, entries: Sequence[LedgerEntry]) -> None:
        now = self._clock()
        with self._transaction() as db:
            _settle(db, entries, now)

    async def hold_owners(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT DISTINCT instance FROM holds")}

    async def release_holds(self, instance: str) -> int:
        with self._transaction() as db:
            holds = db.execute(
                "SELECT request_id, key_id, model, created_at, wallet FROM holds"
                " WHERE instance = ?",
                (instance,),
            ).fetchall()
            interrupted = []
            for request_id, key_id, model, created_at, wallet in holds:
                if wallet:
                    _give_back(db, request_id)
                    continue
                interrupted.append(
                    LedgerEntry(
                        request_id, key_id, created_at, model, "", "", False, 500,
                        "interrupted", 0, 0, 0, 0, 0, None, 0.0,
                    )
                )  # fmt: skip
            _settle(db, interrupted, self._clock())
        return len(holds)

    async def recent_usage(self, key_id: int, limit: int) -> list[dict[str, Any]]:
        cursor = self._db.execute(
            f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE key_id = ?"
            " ORDER BY created_at DESC LIMIT ?",
            (key_id, limit),
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def responses(self) -> SQLiteResponses:
        return SQLiteResponses(self._db)

    async def close(self) -> None:
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        self._db.close()
        self._wal.close()  # last: closing it drops this process's locks on the file (walwatch.py)


def connect(path: str) -> sqlite3.Connection:
    """A connection as every part of the gateway uses the file: WAL, no fsync per commit."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


@contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One transaction holding SQLite's write lock from its start: a read-check-write inside
    it is atomic across every process sharing the file."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _give_back(db: sqlite3.Connection, wallet: str) -> int:
    row = db.execute(
        "DELETE FROM holds WHERE request_id = ? AND wallet RETURNING key_id, amount", (wallet,)
    ).fetchone()
    if row is None:
        return 0
    db.execute("UPDATE api_keys SET credits = credits + ? WHERE id = ?", (row[1], row[0]))
    return int(row[1])


def _settle(db: sqlite3.Connection, entries: Sequence[LedgerEntry], now: float) -> None:
    """Store.settle()'s work inside its transaction: roll the batch's keys into the window
    holding `now`, read the rows the batch touches (a few statements, whatever its size), charge
    every entry in memory (plan_settlement), then write one UPDATE per touched key and hold,
    and every ledger row in one executemany."""
    if not entries:
        return
    ids = _json_list(entry.request_id for entry in entries)
    settled = {row[0] for row in db.execute(_SETTLED, (ids,))}
    # A set: a batch's entries mostly draw on one wallet, looked up once.
    touched = {entry.wallet if entry.wallet is not None else entry.request_id for entry in entries}
    holds = dict(db.execute(_HOLDS, (_json_list(touched),)).fetchall())
    keys = {entry.key_id for entry in entries}
    db.execute(_ROLL, _roll_params(keys, now))
    balances = dict(db.execute(_BALANCES, (_json_list(keys),)).fetchall())
    plan = plan_settlement(entries, settled, balances, holds)
    db.executemany(
        _CHARGE,
        [
            (credits, spent, spent, key)
            for key, (credits, spent) in plan.keys.items()
            if credits or spent
        ],
    )
    db.executemany(
        "UPDATE holds SET amount = amount - ? WHERE request_id = ?",
        [(amount, hold) for hold, amount in plan.drawn.items()],
    )
    db.executemany("DELETE FROM holds WHERE request_id = ?", [(hold,) for hold in plan.released])
    plain: list[tuple[Any, ...]] = []
    detailed: list[tuple[Any, ...]] = []
    for entry, charged in plan.rows:
        details = _details(entry)
        if details is None:
            plain.append(_ledger_row(entry, charged))
        else:
            detailed.append(_ledger_row(entry, charged) + details)
    db.executemany(_INSERT_PLAIN_LEDGER, plain)
    db.executemany(_INSERT_LEDGER, detailed)
    write_sqlite(db, plan.rows)  # the console's rollups


def _ledger_row(entry: LedgerEntry, charged: int) -> tuple[Any, ...]:
    """The row's LEDGER_COLUMNS."""
    return (
        entry.request_id, entry.key_id, entry.created_at, entry.model, entry.route,
        entry.upstream_model, entry.stream, entry.status, entry.error_code,
        entry.prompt_tokens, entry.completion_tokens, entry.reasoning_tokens,
        entry.cached_tokens, charged, entry.cost - charged, entry.ttfb_ms, entry.total_ms,
        entry.upstream_id,
    )  # fmt: skip


def _details(entry: LedgerEntry) -> tuple[Any, ...] | None:
    """The row's LEDGER_DETAIL_COLUMNS; None if it has none of them."""
    if (
        entry.effort_in is None
        and entry.effort_out is None
        and entry.attempts is None
        and entry.tags is None
        and entry.error_message is None
    ):
        return None
    attempts, tags = _json_or_null(entry.attempts), _json_or_null(entry.tags)
    return (entry.effort_in, entry.effort_out, attempts, tags, entry.error_message)


def _roll_params(key_ids: Iterable[int], now: float) -> dict[str, Any]:
    day, week, month = window_starts(now)
    return {"ids": _json_list(key_ids), "day": day, "week": week, "month": month}


def _budget(row: Sequence[Any] | None) -> Budget | None:
    """A key's Budget from its BUDGET_COLUMNS; ValueError for an unlimited key."""
    if row is None:
        return None
    if row[0] is None:
        raise ValueError("an unlimited key has no credit limit to reset")
    return Budget(*row)


def _json_or_null(value: list[Any] | None) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _json_list(values: Iterable[object]) -> str:
    """A JSON array for json_each(): one bound parameter, however many values."""
    return orjson.dumps(list(values)).decode()


def _policy_row(policy: KeyPolicy) -> tuple[int | None, int | None, int | None, str | None]:
    models = ",".join(policy.models) if policy.models is not None else None
    return policy.rpm, policy.tpm, policy.max_concurrent, models


def _key(row: Sequence[Any]) -> KeyRecord:
    key_id, name, key_hash, prefix, credits, created, revoked, granted, spent = row[:9]
    rpm, tpm, max_concurrent, models, limit_reset, start, window_spent = row[9:]
    allowed = tuple(name for name in models.split(",") if name) if models is not None else None
    policy = KeyPolicy(rpm, tpm, max_concurrent, allowed)
    return KeyRecord(
        key_id, name, key_hash, prefix, credits, created, revoked, granted, spent, policy,
        limit_reset, start, window_spent,
    )  # fmt: skip
