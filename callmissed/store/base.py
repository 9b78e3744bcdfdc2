"""The Store protocol every backend implements, and `open_store(url)` that picks one.

A store owns keys, balances, wallets (credit a gateway process took out of a key's balance to
spend from memory) and the usage ledger. Money is integer micro-credits. Every method is one
short transaction; none is on a request's path except fund(), once per wallet top-up, and
is_revoked() and keys_version(), which answer from memory unless a key may have changed
(docs/credits.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from callmissed.store.responses import ResponseStore

__all__ = [
    "FAIR_SHARE",
    "KEY_COLUMNS",
    "LEDGER_COLUMNS",
    "LEDGER_DETAIL_COLUMNS",
    "MAX_BALANCE",
    "NO_POLICY",
    "Funding",
    "KeyPolicy",
    "KeyRecord",
    "LedgerEntry",
    "Settlement",
    "Store",
    "migrations",
    "open_store",
    "plan_settlement",
]

# Column lists in the order KeyRecord and LedgerEntry take them; every backend selects these.
# A key's credits, as read, include what its wallets hold: credit the key has not spent.
KEY_COLUMNS = (
    "id, name, key_hash, key_prefix, credits + CAST(COALESCE((SELECT sum(amount) FROM holds"
    " WHERE holds.key_id = api_keys.id AND holds.wallet), 0) AS BIGINT) AS credits,"
    " created_at, revoked_at, granted, spent, rpm, tpm, max_concurrent, models,"
    " limit_reset, window_start, window_spent"
)
LEDGER_COLUMNS = (
    "request_id, key_id, created_at, model, route, upstream_model, stream, status, error_code,"
    " prompt_tokens, completion_tokens, reasoning_tokens, cached_tokens, cost, uncharged,"
    " ttfb_ms, total_ms, upstream_id"
)
# The console's columns (migration 0010), written after LEDGER_COLUMNS; JSON text for lists.
LEDGER_DETAIL_COLUMNS = "effort_in, effort_out, attempts, tags, error_message"

# The most micro-credits one grant, or a key's balance, may hold: a billion USD. Far inside the
# 64-bit columns (9.2e18), so no sum of balances, grants and top-ups can overflow them.
MAX_BALANCE = 10**15

# A wallet top-up takes at most this fraction of the key's balance beyond what the request needs,
# so other processes sharing a nearly drained key still find most of it in the balance.
FAIR_SHARE = 4


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
    credits: int | None  # unspent micro-credits, wallets included; None = unlimited
    created_at: float
    revoked_at: float | None
    granted: int | None = None  # micro-credits ever granted (creation + top-ups); per window
    spent: int = 0  # micro-credits settled, all time
    policy: KeyPolicy = NO_POLICY
    # A budget that resets (store/budget.py): "daily", "weekly" or "monthly" (None: never),
    # the start (Unix seconds) of the window `credits` belongs to, and what it settled so far.
    limit_reset: str | None = None
    window_start: float | None = None
    window_spent: int = 0

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class Funding:
    """fund()'s answer: what moved into the wallet (0: refused), and the key's balance after the
    move, or as it stands; `revoked` for a revoked or missing key."""

    taken: int
    balance: int | None
    revoked: bool = False


# Not frozen: one or more is made per request, and a frozen dataclass is ~5x slower to make.
@dataclass(slots=True)
class LedgerEntry:
    """One finished request, as journaled and then settled: `cost` is what it used, charged
    from the `wallet` it held its worst case in (None: it held nothing)."""

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
    wallet: str | None = None
    upstream_id: str | None = None  # the upstream's id for the answer (OpenRouter's gen-…)
    # What the console shows of it (migration 0010): reasoning_effort as received and as sent
    # (reasoning.py), the upstream attempts when there was more than the one that answered
    # (failover.Attempt), the request's tags (tags.py), and a failure's message.
    effort_in: str | None = None
    effort_out: str | None = None
    attempts: list[Any] | None = None
    tags: list[str] | None = None
    error_message: str | None = None  # what the client was told, for a failed request


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
        limit_reset: str | None = None,
    ) -> KeyRecord:
        """A new key; with `limit_reset`, `credits` is its limit per window (it needs one)."""

    async def find_key(self, key_hash: str) -> KeyRecord | None: ...

    async def get_key(self, key_id: int) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def revoke_key(self, key_id: int) -> bool: ...

    async def topup(self, key_id: int, amount: int) -> KeyRecord | None:
        """Add to an active, metered key's balance; None if there is no such key, or the
        balance would pass MAX_BALANCE."""

    async def set_policy(self, key_id: int, policy: KeyPolicy) -> KeyRecord | None: ...

    async def set_limit_reset(self, key_id: int, limit_reset: str | None) -> KeyRecord | None:
        """Make a metered key's limit reset (or stop resetting), atomically; None if there is no
        such key. Into a reset: the limit (`granted`) applies per window from now on, and the
        current window has already spent what the ledger charged the key since it began. Out of
        one: the key keeps what its current window has left, for good. ValueError for an
        unlimited key."""

    async def spent_since(self, key_id: int, since: Sequence[float]) -> list[int]:
        """What the ledger charged the key for requests begun at or after each of `since`."""

    def keys_version(self) -> int:
        """A number that changes whenever a key may have changed (revoked, limits, allow-list,
        top-up), whoever changed it; a cache of keys is stale once it does. From memory: on
        SQLite one read of the file's version per pass of the event loop, on PostgreSQL the
        count of change notifications (while not listening, it cannot tell)."""

    async def is_revoked(self, key_id: int) -> bool:
        """Whether the key is revoked (or gone), as of the last commit by anyone: from memory
        while the key cannot have changed, so that it costs a request no database round trip."""

    async def fund(self, key_id: int, wallet: str, need: int, want: int, instance: str) -> Funding:
        """Atomically move credit from an active, metered key's balance into the wallet hold
        `wallet` (created under `instance` if new): nothing if the balance is below `need`,
        else max(need, min(want, balance // FAIR_SHARE)). Never below zero, from any process.
        A key whose budget resets is rolled into the current window first, in the same step."""

    async def give_back(self, wallet: str, amount: int | None = None) -> int:
        """Return a wallet's credit to its key's balance and delete it; the amount. With
        `amount`, return that much of it only, and keep the wallet: 0 if it holds less."""

    async def settle(self, entries: Sequence[LedgerEntry]) -> None:
        """In one transaction, per entry: charge its cost from its wallet, then (what the wallet
        cannot cover) from the key's balance, never below zero, and write its ledger row; an
        entry without a wallet releases a per-request hold of the same id (journals and holds
        written before wallets). Idempotent: an entry whose row exists is skipped. The keys
        whose budgets reset are rolled into the current window first: a cost counts against the
        window in which it is settled."""

    async def hold_owners(self) -> set[str]: ...

    async def release_holds(self, instance: str) -> int:
        """Give back every wallet and hold `instance` still owns (it died or shut down); a
        per-request hold also gets an interrupted ledger row. The number of rows given back."""

    async def recent_usage(self, key_id: int, limit: int) -> list[dict[str, Any]]: ...

    async def load_price_list(self, source: str, newer_than: float) -> tuple[float, bytes] | None:
        """The stored price list of `source` (when it was fetched, its body) if one was fetched
        after `newer_than`; else None."""

    async def claim_price_refresh(
        self, source: str, now: float, until: float, stale_before: float
    ) -> bool:
        """Atomically claim fetching `source`'s list until `until`: only if nobody holds a claim
        at `now` and the stored copy was fetched before `stale_before` (or there is none)."""

    async def save_price_list(self, source: str, fetched_at: float, body: bytes) -> None:
        """Store a fetched list as `source`'s current copy, and end the claim on it."""

    def responses(self) -> ResponseStore:
        """Stored Responses (POST /v1/responses), on this store's connection."""

    async def close(self) -> None: ...


@dataclass(slots=True)
class Settlement:
    """What settling a batch changes, as plan_settlement() worked it out: each row to write with
    what it charged, per key the change of its balance and of its spent total, per hold what
    was drawn from it, and the per-request holds to delete."""

    rows: list[tuple[LedgerEntry, int]]
    keys: dict[int, tuple[int, int]]
    drawn: dict[str, int]
    released: list[str]


def plan_settlement(
    entries: Sequence[LedgerEntry],
    settled: set[str],
    balances: dict[int, int | None],
    holds: dict[str, int],
) -> Settlement:
    """Settle `entries` in order, in memory, as Store.settle() says, from the rows they touch
    as they stand: the request ids among theirs already in the ledger, the balances of their
    keys (None: unlimited; a missing key pays nothing), the amounts of their wallets and of
    the per-request holds of their ids. Each entry sees the balances and holds the ones before
    it left, so a batch ends exactly where settling its entries one at a time would."""
    seen = set(settled)
    balances = dict(balances)
    holds = dict(holds)
    keys: dict[int, tuple[int, int]] = {}
    drawn: dict[str, int] = {}
    released: list[str] = []
    rows: list[tuple[LedgerEntry, int]] = []
    for entry in entries:
        if entry.request_id in seen:
            continue  # already settled: a journal replayed twice, or twice in this batch
        seen.add(entry.request_id)
        held = in_wallet = 0
        if entry.wallet is None:
            if entry.request_id in holds:
                held = holds.pop(entry.request_id)
                drawn.pop(entry.request_id, None)
                released.append(entry.request_id)
        else:
            in_wallet = holds.get(entry.wallet, 0)
        balance = balances.get(entry.key_id)
        charged = entry.cost if balance is None else min(entry.cost, balance + held + in_wallet)
        from_wallet = min(charged, in_wallet)
        if from_wallet and entry.wallet in holds:
            holds[entry.wallet] = in_wallet - from_wallet
            drawn[entry.wallet] = drawn.get(entry.wallet, 0) + from_wallet
        if entry.key_id in balances:
            change = held - (charged - from_wallet)
            if balance is not None:
                balances[entry.key_id] = balance + change
            credits, spent = keys.get(entry.key_id, (0, 0))
            keys[entry.key_id] = (credits + change, spent + charged)
        rows.append((entry, charged))
    return Settlement(rows, keys, drawn, released)


def migrations(dialect: str) -> list[tuple[str, str]]:
    """(name, SQL) of every migration for `dialect` ("sqlite", "postgres"), in order.

    `NNNN_name.sql` is for every backend, `NNNN_name.<dialect>.sql` for that one only."""
    folder = resources.files("callmissed.store").joinpath("migrations")
    files = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    mine = [name for name in files if name.count(".") == 1 or name.endswith(f".{dialect}.sql")]
    return [(name, folder.joinpath(name).read_text()) for name in mine]


def open_store(url: str, clock: Callable[[], float] = time.time) -> Store:
    """The store for CALLMISSED_DATABASE_URL: sqlite:///path or postgresql://…; start() it.

    `clock` (Unix seconds) dates the budget windows a key's limit resets on; tests move it."""
    if url.startswith("sqlite://"):
        from callmissed.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite://").removeprefix("/") or ":memory:", clock)
    if url.startswith(("postgres://", "postgresql://")):
        from callmissed.store.postgres import PostgresStore

        return PostgresStore(url, clock=clock)
    raise ValueError(
        f"unsupported CALLMISSED_DATABASE_URL {url!r}; use sqlite:///path or postgresql://…"
    )
