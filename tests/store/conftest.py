"""The store tests' backends: `url` (test_store_contract.py's) runs a test on SQLite and on
PostgreSQL, for every test module here."""

from __future__ import annotations

from tests.store.test_store_contract import url  # noqa: F401 (the fixture)
