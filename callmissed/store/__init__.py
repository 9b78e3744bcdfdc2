"""Persistence: API keys, balances, credit holds and the usage ledger behind one Store protocol."""

from __future__ import annotations

from callmissed.store.base import (
    MAX_BALANCE,
    NO_POLICY,
    Funding,
    KeyPolicy,
    KeyRecord,
    LedgerEntry,
    Store,
    open_store,
)

__all__ = [
    "MAX_BALANCE",
    "NO_POLICY",
    "Funding",
    "KeyPolicy",
    "KeyRecord",
    "LedgerEntry",
    "Store",
    "open_store",
]
