"""Budget windows: UTC days, weeks from Monday, calendar months; and a reset switched on or off."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from callmissed.store import KeyRecord
from callmissed.store.budget import (
    Budget,
    due,
    first_window,
    rolled,
    window_start,
    window_starts,
    with_limit_reset,
)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("now", "day", "week", "month"),
    [
        # Wednesday 11 March 2026, mid-afternoon
        ("2026-03-11T15:30:00", "2026-03-11", "2026-03-09", "2026-03-01"),
        # a Monday at midnight is the start of its day and of its week
        ("2026-03-09T00:00:00", "2026-03-09", "2026-03-09", "2026-03-01"),
        # a Sunday's last second is still in the week that began on Monday
        ("2026-03-15T23:59:59", "2026-03-15", "2026-03-09", "2026-03-01"),
        # a week that began in the month before; a leap day
        ("2028-03-01T12:00:00", "2028-03-01", "2028-02-28", "2028-03-01"),
        ("2028-02-29T08:00:00", "2028-02-29", "2028-02-28", "2028-02-01"),
        # the year's turn
        ("2027-01-01T00:00:00", "2027-01-01", "2026-12-28", "2027-01-01"),
        ("1970-01-01T00:00:01", "1970-01-01", "1969-12-29", "1970-01-01"),
    ],
)
def test_windows_start_at_utc_midnight_on_a_day_a_monday_and_the_first(now, day, week, month):
    starts = window_starts(at(now))
    assert starts == (at(f"{day}T00:00:00"), at(f"{week}T00:00:00"), at(f"{month}T00:00:00"))
    assert [window_start(reset, at(now)) for reset in ("daily", "weekly", "monthly")] == list(
        starts
    )


def test_a_window_is_due_once_the_clock_passes_its_end_and_never_goes_back():
    start = at("2026-03-11T00:00:00")
    assert not due("daily", start, at("2026-03-11T23:59:59.999"))
    assert due("daily", start, at("2026-03-12T00:00:00"))
    assert not due("daily", start, at("2026-03-10T23:59:59"))  # a lagging clock: still in it
    assert not due("weekly", start, at("2026-03-15T23:00:00"))
    assert due("weekly", at("2026-03-09T00:00:00"), at("2026-03-16T00:00:00"))
    assert not due("monthly", at("2026-03-01T00:00:00"), at("2026-03-31T23:59:59"))
    assert due("monthly", at("2026-03-01T00:00:00"), at("2026-04-01T00:00:00"))
    assert not due(None, None, at("2030-01-01T00:00:00"))
    assert due("daily", None, 0.0)


def test_a_read_after_the_boundary_shows_the_fresh_budget():
    record = KeyRecord(
        1, "k", "h", "cm_x", 250, 0.0, None, 1000, 750,
        limit_reset="daily", window_start=at("2026-03-11T00:00:00"), window_spent=750,
    )  # fmt: skip
    assert rolled(record, at("2026-03-11T22:00:00")) is record
    fresh = rolled(record, at("2026-03-12T00:00:01"))
    assert (fresh.credits, fresh.window_spent, fresh.spent) == (1000, 0, 750)
    assert fresh.window_start == at("2026-03-12T00:00:00")


def test_only_a_key_with_a_limit_can_reset():
    assert first_window(5, None, 0.0) is None
    assert first_window(5, "monthly", at("2026-03-11T10:00:00")) == at("2026-03-01T00:00:00")
    with pytest.raises(ValueError, match="unlimited"):
        first_window(None, "daily", 0.0)


NOW = at("2026-03-11T10:00:00")


def test_turning_a_reset_on_counts_what_the_window_already_charged():
    # A $10 key that spent 7 over its life, 2 of it today; 1 sits in a wallet (a hold).
    budget = Budget(credits=2, granted=10, spent=7, limit_reset=None, window_start=None,
                    window_spent=0)  # fmt: skip
    daily = with_limit_reset(budget, "daily", charged=2, now=NOW)
    assert daily == Budget(7, 10, 7, "daily", at("2026-03-11T00:00:00"), 2)  # 7 + 1 + 2 = 10
    monthly = with_limit_reset(daily, "monthly", charged=5, now=NOW)
    assert monthly == Budget(4, 10, 7, "monthly", at("2026-03-01T00:00:00"), 5)
    # never more spent in the window than the key had: the holds stay covered
    assert with_limit_reset(budget, "monthly", charged=50, now=NOW).credits == 0
    assert with_limit_reset(daily, "daily", charged=0, now=NOW) == daily


def test_turning_a_reset_off_keeps_what_the_window_has_left_for_good():
    budget = Budget(6, 10, 7, "daily", at("2026-03-11T00:00:00"), 2)  # 2 held in a wallet
    off = with_limit_reset(budget, None, charged=0, now=NOW)
    assert off == Budget(6, 15, 7, None, None, 0)  # 6 + 2 held + 7 spent = 15 granted
    # a window that already ended rolls first: its whole budget is what is left
    later = with_limit_reset(budget, None, charged=0, now=at("2026-03-12T01:00:00"))
    assert later == Budget(8, 17, 7, None, None, 0)
