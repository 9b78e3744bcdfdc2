"""Accounting: what a key may do and what it pays (docs/credits.md; the map: docs/architecture.md).

The gateway's one call is `credits.Accounting.admit()`, which runs admission (`admission.py`:
allow-list, price, rate limits in `ratelimit/`, revocation), takes the hold from the key's
wallet (`holds.py`, `wallet.py`) and returns the request's `Charge` (`settlement.py`), settled
once into the ledger journal (`ledger.py`). Prices: `pricing.py`, `price_list.py`,
`pricing_settings.py`. Keys and their credit change through `keys.py` alone. Nothing here is
imported on loading the package: settings.py imports `pricing_settings` early.
"""

__all__: list[str] = []
