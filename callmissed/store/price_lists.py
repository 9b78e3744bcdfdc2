"""SQL for upstream price lists in the store (price_list.py, migration 0007): the last good copy
of each list, and which process is fetching it now. Both backends run these statements; each is
one statement, so that of several processes looking at once exactly one gets a claim."""

from __future__ import annotations

__all__ = ["CLAIM", "LOAD", "SAVE", "numbered"]

# (source, until, now, stale_before): a new row, or a stale list nobody holds a claim on.
CLAIM = (
    "INSERT INTO price_lists (source, fetched_at, body, claimed_until) VALUES (?, 0, NULL, ?)"
    " ON CONFLICT (source) DO UPDATE SET claimed_until = excluded.claimed_until"
    " WHERE price_lists.claimed_until <= ? AND price_lists.fetched_at < ?"
    " RETURNING source"
)
# (source, newer_than)
LOAD = (
    "SELECT fetched_at, body FROM price_lists"
    " WHERE source = ? AND fetched_at > ? AND body IS NOT NULL"
)
# (source, fetched_at, body): the new copy, and the claim on it ended.
SAVE = (
    "INSERT INTO price_lists (source, fetched_at, body, claimed_until) VALUES (?, ?, ?, 0)"
    " ON CONFLICT (source) DO UPDATE SET fetched_at = excluded.fetched_at,"
    " body = excluded.body, claimed_until = 0"
)


def numbered(sql: str) -> str:
    """`sql` with PostgreSQL's $1, $2, … for SQLite's ? placeholders."""
    parts = sql.split("?")
    return "".join(part + (f"${n}" if n < len(parts) else "") for n, part in enumerate(parts, 1))
