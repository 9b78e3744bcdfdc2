"""Persistence: API keys, balances, credit holds and the usage ledger behind one Store protocol."""

from __future__ import annotations

from callmissed.store.base import (
    NO_POLICY,
    Funding,
    KeyPolicy,
    KeyRecord,
    LedgerEntry,
    Store,
    open_store,
)

__all__ = [
    "NO_POLICY",
    "Funding",
    "KeyPolicy",
    "KeyRecord",
    "LedgerEntry",
    "Store",
    "open_store",
]
