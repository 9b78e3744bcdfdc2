"""The console's SQL, written once for SQLite and PostgreSQL (`?` placeholders).

Ledger pages are read newest first by (created_at, request_id) through an index that starts
with the filter's column (migration 0010), from where the previous page ended (keyset): a page
costs the same at any depth. Everything summed is read from the rollups (store/rollup.py).
tests/console/test_query_plans.py checks every query here with EXPLAIN on both databases.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from callmissed.errors import InvalidRequest
from callmissed.store.rollup import CANCELLED_STATUS, ROUTE_METRICS, histogram_columns

__all__ = [
    "DETAIL_COLUMNS",
    "RequestFilter",
    "by_key_sql",
    "by_route_sql",
    "cells_sql",
    "decode_cursor",
    "encode_cursor",
    "facets_sql",
    "key_usage_sql",
    "last_used_sql",
    "parse_filter",
    "request_sql",
    "requests_sql",
    "tags_sql",
]

DETAIL_COLUMNS = (
    "l.request_id, l.created_at, l.key_id, k.name AS key_name, l.model, l.route,"
    " l.upstream_model, l.stream, l.status, l.error_code, l.prompt_tokens, l.completion_tokens,"
    " l.reasoning_tokens, l.cached_tokens, l.cost, l.uncharged, l.ttfb_ms, l.total_ms,"
    " l.effort_in, l.effort_out, l.attempts, l.tags, l.error_message"
)
_STATUSES = ("ok", "error", "cancelled")
_MAX_TEXT = 256  # longest filter value accepted


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """What the Requests page may be narrowed to; None: no condition."""

    key_id: int | None = None
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    status: str | None = None  # "ok", "error", "cancelled" or a status code
    since: float | None = None  # seconds since the epoch, inclusive
    until: float | None = None  # exclusive
    tag: str | None = None


def parse_filter(query: Mapping[str, str]) -> RequestFilter:
    """A RequestFilter from query parameters (key, model, route, status, since, until, tag)."""
    key = query.get("key")
    if key is not None and not key.isdigit():
        raise InvalidRequest("'key' must be a key id.", param="key")
    provider = upstream_model = None
    if route := _text(query, "route"):
        provider, _, upstream = route.partition(":")
        upstream_model = upstream or None
    status = query.get("status") or None
    if status is not None and status not in _STATUSES and not _is_status_code(status):
        raise InvalidRequest(
            "'status' must be ok, error, cancelled or an HTTP status code.", param="status"
        )
    return RequestFilter(
        int(key) if key is not None and len(key) < 12 else None,
        _text(query, "model"),
        provider or None,
        upstream_model,
        status,
        _time(query, "since"),
        _time(query, "until"),
        _text(query, "tag"),
    )


def requests_sql(
    where: RequestFilter, after: tuple[float, str] | None, limit: int
) -> tuple[str, list[Any]]:
    """A page of ledger rows, newest first, strictly older than `after` (a keyset cursor).

    With a tag, the page is read through ledger_tags' (tag, created_at, request_id) key."""
    source = "ledger l"
    order = "l.created_at DESC, l.request_id DESC"
    at = "l"
    conditions: list[str] = []
    params: list[Any] = []
    if where.tag is not None:
        source = "ledger_tags t JOIN ledger l ON l.request_id = t.request_id"
        order = "t.created_at DESC, t.request_id DESC"
        at = "t"
        conditions.append("t.tag = ?")
        params.append(where.tag)
    _equal(conditions, params, "l.key_id", where.key_id)
    _equal(conditions, params, "l.model", where.model)
    if where.upstream_model is None:
        # A provider alone: read newest first by time, skipping other providers' rows (the
        # route index, sorted by upstream model within a provider, would sort them all).
        _equal(conditions, params, "l.route || ''", where.provider)
    else:
        _equal(conditions, params, "l.route", where.provider)
        _equal(conditions, params, "l.upstream_model", where.upstream_model)
    _status(conditions, params, where.status)
    if where.since is not None:
        conditions.append(f"{at}.created_at >= ?")
        params.append(where.since)
    if where.until is not None:
        conditions.append(f"{at}.created_at < ?")
        params.append(where.until)
    if after is not None:
        conditions.append(f"({at}.created_at, {at}.request_id) < (?, ?)")
        params.extend(after)
    sql = (
        f"SELECT {DETAIL_COLUMNS} FROM {source} LEFT JOIN api_keys k ON k.id = l.key_id"
        f"{' WHERE ' + ' AND '.join(conditions) if conditions else ''}"
        f" ORDER BY {order} LIMIT ?"
    )
    return sql, [*params, limit]


def request_sql() -> str:
    """One ledger row by request id (its primary key)."""
    return (
        f"SELECT {DETAIL_COLUMNS} FROM ledger l LEFT JOIN api_keys k ON k.id = l.key_id"
        " WHERE l.request_id = ?"
    )


def _equal(conditions: list[str], params: list[Any], column: str, value: object) -> None:
    if value is not None:
        conditions.append(f"{column} = ?")
        params.append(value)


def _status(conditions: list[str], params: list[Any], status: str | None) -> None:
    # Every status but 200 is in the partial index ledger_failures, whose condition is spelled
    # out so that SQLite sees the index applies (PostgreSQL would work it out).
    if status is None:
        return
    if status in ("ok", "200"):
        conditions.append("l.status = 200")
    elif status == "error":
        conditions.append(f"l.status <> 200 AND l.status >= 400 AND l.status <> {CANCELLED_STATUS}")
    elif status == "cancelled":
        conditions.append(f"l.status <> 200 AND l.status = {CANCELLED_STATUS}")
    else:
        conditions.append("l.status <> 200 AND l.status = ?")
        params.append(int(status))


def encode_cursor(created_at: float, request_id: str) -> str:
    raw = f"{created_at!r} {request_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, _, request_id = raw.partition(" ")
        at = float(created_at)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest("'cursor' is not one this API gave out.", param="cursor") from None
    if not math.isfinite(at) or not 0 < len(request_id) <= _MAX_TEXT:
        raise InvalidRequest("'cursor' is not one this API gave out.", param="cursor")
    return at, request_id


_ROUTE_SUMS = ", ".join(
    [
        *(
            f"CAST(sum({name}) AS BIGINT) AS {name}"
            for name in (
                "requests", "errors", "cancelled", "cost", "uncharged", "prompt_tokens",
                "completion_tokens", "reasoning_tokens", "cached_tokens",
            )
        ),
        "sum(ttfb_sum) AS ttfb_sum",
        "sum(total_sum) AS total_sum",
        *(f"CAST(sum({name}) AS BIGINT) AS {name}" for name in histogram_columns()),
    ]
)  # fmt: skip
_KEY_SUMS = ", ".join(
    f"CAST(sum(u.{name}) AS BIGINT) AS {name}"
    for name in ("requests", "errors", "cost", "prompt_tokens", "completion_tokens")
)


def cells_sql() -> str:
    """One period's rollup rows, each already one (bucket, model, route) cell, read in primary
    key order: no sort (a GROUP BY over ~40 columns costs ~7 us a row on SQLite); params:
    period, tag, since."""
    names = ", ".join(ROUTE_METRICS)
    return (
        f"SELECT bucket AS at, model, route, {names} FROM usage_by_route"
        " WHERE period = ? AND tag = ? AND bucket >= ?"
    )


def by_route_sql(step: int, group: str = "model, route") -> str:
    """Rollup sums per `step` seconds and per `group`; params: period, tag, since."""
    return (
        f"SELECT bucket / {int(step)} * {int(step)} AS at, {group}, {_ROUTE_SUMS}"
        " FROM usage_by_route WHERE period = ? AND tag = ? AND bucket >= ?"
        f" GROUP BY 1, {group}"
    )


def by_key_sql(limit: int) -> str:
    """The keys that spent most (then made most requests); params: period, tag, since."""
    return (
        f"SELECT u.key_id, k.name AS key_name, {_KEY_SUMS}"
        " FROM usage_by_key u LEFT JOIN api_keys k ON k.id = u.key_id"
        " WHERE u.period = ? AND u.tag = ? AND u.bucket >= ?"
        f" GROUP BY u.key_id, k.name ORDER BY 5 DESC, 3 DESC LIMIT {int(limit)}"
    )


def key_usage_sql() -> str:
    """Every key's sums since a time; params: period, since."""
    return (
        f"SELECT u.key_id, {_KEY_SUMS} FROM usage_by_key u"
        " WHERE u.period = ? AND u.tag = '' AND u.bucket >= ? GROUP BY u.key_id"
    )


def last_used_sql() -> str:
    """Each key's latest ledger row: one descent of ledger_by_key per key."""
    return (
        "SELECT k.id AS key_id,"
        " (SELECT max(l.created_at) FROM ledger l WHERE l.key_id = k.id) AS last_used_at"
        " FROM api_keys k"
    )


def tags_sql(dialect: str) -> str:
    """Sums per tag since a time; params: period, since. Read by bucket (usage_by_route_age):
    the primary key would visit every tag's rows of every bucket."""
    hint = " INDEXED BY usage_by_route_age" if dialect == "sqlite" else ""
    return (
        f"SELECT tag, {_ROUTE_SUMS} FROM usage_by_route{hint}"
        " WHERE period = ? AND bucket >= ? AND tag <> '' GROUP BY tag"
    )


def facets_sql(column: str) -> str:
    """The models, routes or tags seen since a time, from the daily rollup; params: since."""
    if column not in ("model", "route", "tag"):
        raise ValueError(column)
    hint = "tag <> ''" if column == "tag" else "tag = ''"
    return (
        f"SELECT {column} AS value, CAST(sum(requests) AS BIGINT) AS requests"
        f" FROM usage_by_route WHERE period = 86400 AND bucket >= ? AND {hint}"
        f" AND {column} <> '' GROUP BY {column} ORDER BY 2 DESC LIMIT 500"
    )


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name) or None
    if value is not None and len(value) > _MAX_TEXT:
        raise InvalidRequest(f"'{name}' is too long.", param=name)
    return value


def _time(query: Mapping[str, str], name: str) -> float | None:
    value = query.get(name) or None
    if value is None:
        return None
    try:
        at = float(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be seconds since the epoch.", param=name) from None
    if not math.isfinite(at):
        raise InvalidRequest(f"'{name}' must be seconds since the epoch.", param=name)
    return at


def _is_status_code(value: str) -> bool:
    return value.isdigit() and len(value) == 3
