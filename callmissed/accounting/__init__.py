"""Accounting: what a key may do and what it pays (docs/credits.md, docs/architecture.md).

Admission (allow-list, revocation, rate limits: `ratelimit/`), the hold against the key's credit
(`wallet.py`), the charge settled once per request (`credits.py`), the ledger journal and its
writer (`ledger.py`), and prices (`pricing.py`, `price_list.py`, `pricing_settings.py`).
"""

__all__: list[str] = []
