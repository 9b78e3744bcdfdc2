"""Persistence: API keys (and, later, balances and the usage ledger) behind one Store protocol."""

from __future__ import annotations

from callmissed.store.base import KeyRecord, Store, open_store

__all__ = ["KeyRecord", "Store", "open_store"]
