"""The Store protocol every backend implements, and `open_store(url)` that picks one.

A store owns keys, balances, in-flight credit holds and the usage ledger. Money is integer
micro-credits. Every method is one short transaction; reserve() is the only one on the hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

__all__ = [
    "KEY_COLUMNS",
    "LEDGER_COLUMNS",
    "NO_POLICY",
    "KeyPolicy",
    "KeyRecord",
    "LedgerEntry",
    "Reservation",
    "Store",
    "migrations",
    "open_store",
]

# Column lists in the order KeyRecord and LedgerEntry take them; every backend selects these.
KEY_COLUMNS = (
    "id, name, key_hash, key_prefix, credits, created_at, revoked_at,"
    " granted, spent, rpm, tpm, max_concurrent, models"
)
LEDGER_COLUMNS = (
    "request_id, key_id, created_at, model, route, upstream_model, stream, status, error_code,"
    " prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens, cost, uncharged,"
    " ttfb_ms, total_ms"
)


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What a key may do: rate limits (None = no limit) and a model allow-list (None = all)."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    models: tuple[str, ...] | None = None


NO_POLICY = KeyPolicy()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    name: str
    key_hash: str
    key_prefix: str
    credits: int | None  # spendable balance in micro-credits; None = unlimited
    created_at: float
    revoked_at: float | None
    granted: int | None = None  # micro-credits ever granted (creation + top-ups)
    spent: int = 0  # micro-credits settled, all time
    policy: KeyPolicy = NO_POLICY

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class Reservation:
    """reserve()'s answer: held (ok), or why not; `balance` is after the hold, or as it stands."""

    ok: bool
    balance: int | None
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One finished request, as journaled and then settled: `cost` is what it used."""

    request_id: str
    key_id: int
    created_at: float
    model: str
    route: str
    upstream_model: str
    stream: bool
    status: int
    error_code: str | None
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cached_tokens: int
    cost: int
    ttfb_ms: float | None
    total_ms: float


class Store(Protocol):
    """Every method is a coroutine, so that a networked backend never blocks the event loop;
    SQLite's run synchronously inside them (microseconds, no thread hop)."""

    async def start(self) -> None:
        """Connect and apply migrations; idempotent."""

    async def create_key(
        self,
        name: str,
        key_hash: str,
        key_prefix: str,
        credits: int | None,
        policy: KeyPolicy = ...,
    ) -> KeyRecord: ...

    async def find_key(self, key_hash: str) -> KeyRecord | None: ...

    async def get_key(self, key_id: int) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def revoke_key(self, key_id: int) -> bool: ...

    async def topup(self, key_id: int, amount: int) -> KeyRecord | None:
        """Add to an active, metered key's balance; None if there is no such key."""

    async def set_policy(self, key_id: int, policy: KeyPolicy) -> KeyRecord | None: ...

    async def reserve(
        self, key_id: int, request_id: str, amount: int, instance: str, model: str
    ) -> Reservation:
        """Atomically take `amount` from an active key's balance, never below zero, and record
        the hold under `instance`. Unlimited keys and zero amounts hold nothing."""

    async def settle(self, entries: Sequence[LedgerEntry]) -> None:
        """In one transaction, per entry: release its hold, charge its cost (never below zero)
        and write its ledger row. Idempotent: an entry whose row exists is skipped."""

    async def hold_owners(self) -> set[str]: ...

    async def release_holds(self, instance: str) -> int:
        """Give back every hold `instance` still owns (it died), writing an interrupted row."""

    async def recent_usage(self, key_id: int, limit: int) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


def migrations() -> list[tuple[str, str]]:
    """(name, SQL) of every migration, in order."""
    folder = resources.files("callmissed.store").joinpath("migrations")
    files = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(name, folder.joinpath(name).read_text()) for name in files]


def open_store(url: str) -> Store:
    """The store for CALLMISSED_DATABASE_URL: sqlite:///path or postgresql://…; start() it."""
    if url.startswith("sqlite://"):
        from callmissed.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite://").removeprefix("/") or ":memory:")
    if url.startswith(("postgres://", "postgresql://")):
        from callmissed.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"unsupported CALLMISSED_DATABASE_URL {url!r}; use sqlite:///path or postgresql://…"
    )
