"""Price settings: a model's or the operator's prices (`prices`, `[prices]`), and how prices are
read (`[pricing]`: the markup, how often an upstream's price list is fetched).

Part of settings.py, kept in a module of its own (settings.py reached 600 lines): read once, at
start-up, by load_settings(); nothing reads the environment later. pricing.py turns them into
integer prices; docs/credits.md says where each price comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Prices", "Pricing", "parse_prices", "parse_pricing"]


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens. `cached_input`: prompt tokens read from the upstream's prompt
    cache; `cache_write`: prompt tokens written to it (None: billed as input)."""

    input: float
    cached_input: float
    output: float
    cache_write: float | None = None


@dataclass(frozen=True, slots=True)
class Pricing:
    """The `[pricing]` table, each key overridden by its variable."""

    markup: float = 1.0  # CALLMISSED_PRICE_MARKUP: multiplies every price and reported cost
    refresh: float = 3600.0  # CALLMISSED_PRICE_REFRESH: seconds between list fetches (0: never)


def parse_prices(where: str, table: Any) -> Prices:
    """USD per million tokens, each >= 0; cached_input and cache_write default to input."""
    from callmissed.settings import SettingsError  # late: settings imports this module

    if not isinstance(table, dict) or not {"input", "output"} <= table.keys():
        raise SettingsError(f"{where}: prices need input and output (USD per million tokens)")
    unknown = table.keys() - {"input", "cached_input", "cache_write", "output"}
    if unknown:
        raise SettingsError(f"{where}: unknown price {sorted(unknown)[0]!r}")
    values = {"cached_input": table["input"], **table}
    for key, value in table.items():  # the keys written: the others default to input
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e6:
            raise SettingsError(f"{where}: price {key} must be a number from 0 to 1000000")
    write = values.get("cache_write")
    return Prices(
        float(values["input"]),
        float(values["cached_input"]),
        float(values["output"]),
        None if write is None else float(write),
    )


def parse_pricing(env: Mapping[str, str], config: Mapping[str, Any]) -> Pricing:
    """The config file's `[pricing]`, then CALLMISSED_PRICE_MARKUP / _REFRESH over it."""
    from callmissed.settings import SettingsError

    table = config.get("pricing", {})
    if not isinstance(table, dict) or table.keys() - {"markup", "refresh"}:
        raise SettingsError("[pricing] takes markup (a multiplier) and refresh (seconds)")
    defaults, values = Pricing(), dict[str, float]()
    for key, variable in (
        ("markup", "CALLMISSED_PRICE_MARKUP"),
        ("refresh", "CALLMISSED_PRICE_REFRESH"),
    ):
        value: Any = env.get(variable, table.get(key, getattr(defaults, key)))
        try:
            values[key] = float(value) if not isinstance(value, bool) else float("nan")
        except (TypeError, ValueError):
            raise SettingsError(f"{variable} ([pricing] {key}) must be a number") from None
    if not 0 < values["markup"] <= 100:  # also refuses NaN
        raise SettingsError("the price markup must be a number above 0 and at most 100")
    if not 0 <= values["refresh"] <= 30 * 86_400:
        raise SettingsError("the price refresh must be 0 (never) or up to 30 days of seconds")
    return Pricing(values["markup"], values["refresh"])
