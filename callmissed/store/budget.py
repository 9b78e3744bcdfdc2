"""Budgets that reset: the UTC windows in which a key's credit limit starts afresh.

A key whose `limit_reset` is daily, weekly or monthly may spend its limit once per window:
a UTC day, a week from Monday 00:00 UTC, a calendar month from the 1st (OpenRouter's key
semantics). The stores roll a key into the current window inside the very statements that fund
and settle it (migration 0008 keeps each key's window start); this module is only the calendar
and the read-side view of a roll that no statement has written yet.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

from callmissed.store.base import KeyRecord

__all__ = [
    "BUDGET_COLUMNS",
    "LIMIT_RESETS",
    "Budget",
    "due",
    "first_window",
    "rolled",
    "window_start",
    "window_starts",
    "with_limit_reset",
]

LIMIT_RESETS = ("daily", "weekly", "monthly")
_DAY = 86_400  # Unix time has exactly this many seconds in every UTC day
_THURSDAY = 3  # 1970-01-01, day 0, was a Thursday: weekday 3 counting Monday as 0

# The api_keys columns a Budget is read from, in its order.
BUDGET_COLUMNS = "credits, granted, spent, limit_reset, window_start, window_spent"


@dataclass(frozen=True, slots=True)
class Budget:
    """A metered key's money, as its row stores it: `credits` is outside its holds, and
    credits + holds + window_spent = granted if its limit resets, else credits + holds + spent
    = granted."""

    credits: int
    granted: int
    spent: int
    limit_reset: str | None
    window_start: float | None
    window_spent: int


def window_starts(now: float) -> tuple[float, float, float]:
    """The starts (Unix seconds) of the UTC day, week (from Monday) and month holding `now`."""
    days = int(now // _DAY)
    day = float(days * _DAY)
    week = float((days - (days + _THURSDAY) % 7) * _DAY)
    today = datetime.fromtimestamp(day, UTC)
    month = datetime(today.year, today.month, 1, tzinfo=UTC).timestamp()
    return day, week, month


def window_start(limit_reset: str, now: float) -> float:
    """The start of the `limit_reset` window ("daily", "weekly", "monthly") holding `now`."""
    day, week, month = window_starts(now)
    return {"daily": day, "weekly": week, "monthly": month}[limit_reset]


def due(limit_reset: str | None, start: float | None, now: float) -> bool:
    """Whether a key whose window began at `start` has rolled into a new one by `now`.

    A window start only ever moves forward: a process whose clock lags the one that rolled the
    key sees a start later than its own idea of the window, and is simply still in it."""
    if limit_reset is None:
        return False
    return start is None or start < window_start(limit_reset, now)


def first_window(credits: int | None, limit_reset: str | None, now: float) -> float | None:
    """The window start of a new key (None: its limit does not reset); ValueError for a key
    without a limit, which has nothing to reset."""
    if limit_reset is None:
        return None
    if credits is None:
        raise ValueError("an unlimited key has no credit limit to reset")
    return window_start(limit_reset, now)


def with_limit_reset(budget: Budget, limit_reset: str | None, charged: int, now: float) -> Budget:
    """The budget once its limit resets `limit_reset` (None: no more), as of `now`, keeping the
    invariant above; `charged` is what the ledger charged the key since window_start(
    limit_reset, now). Into a reset, the limit (`granted`) applies per window and the current
    window has already spent `charged` (at most what the key had not spent); out of one, the key
    keeps what its current window has left, for good."""
    if due(budget.limit_reset, budget.window_start, now):
        budget = dataclasses.replace(budget, credits=budget.credits + budget.window_spent)
        budget = dataclasses.replace(budget, window_spent=0)
    if limit_reset == budget.limit_reset:
        return budget
    # What the window (or, without a reset, the key's whole life) spent of `granted`.
    used = budget.window_spent if budget.limit_reset is not None else budget.spent
    if limit_reset is None:
        granted = budget.granted - used + budget.spent
        return Budget(budget.credits, granted, budget.spent, None, None, 0)
    window_spent = min(charged, budget.credits + used)
    credits = budget.credits + used - window_spent
    start = window_start(limit_reset, now)
    return Budget(credits, budget.granted, budget.spent, limit_reset, start, window_spent)


def rolled(record: KeyRecord, now: float) -> KeyRecord:
    """The key as it reads once rolled into the window holding `now`: a read between the
    boundary and the first statement that rolls it already shows the fresh budget."""
    if record.credits is None or not due(record.limit_reset, record.window_start, now):
        return record
    assert record.limit_reset is not None  # due() says so
    return dataclasses.replace(
        record,
        credits=record.credits + record.window_spent,
        window_start=window_start(record.limit_reset, now),
        window_spent=0,
    )
