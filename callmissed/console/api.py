"""The console's admin JSON endpoints (docs/console.md): what every console page reads.

Each is behind the admin guard (the admin bearer token or a console session, session.py, checked
by the edge before the handler runs), so each is as usable from curl or a script as from the
console. They read through the console's own connections
(database.py): ledger pages through indexes, every sum from the rollups (queries.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import orjson

from callmissed.accounting.pricing import format_credits
from callmissed.console import fleet, queries
from callmissed.console.database import ConsoleDatabase
from callmissed.console.overview import RANGES, Totals, build_overview, metrics_of, parse_range
from callmissed.console.retention import MINUTE_ROLLUP_DAYS, Retention
from callmissed.edge.web import Request, Response, json_response
from callmissed.errors import InvalidRequest, RequestNotFound
from callmissed.gateway import Gateway
from callmissed.peers import Peers

__all__ = ["ConsoleAPI", "describe_request"]

_PAGE = 50
_MAX_PAGE = 200
_TOP_KEYS = 10
_FACET_DAYS = 30
_NO_STORE = [(b"cache-control", b"no-store")]


class ConsoleAPI:
    """GET /admin/overview, /admin/requests[/{id}], /admin/routes, /admin/tags,
    /admin/usage/keys, /admin/facets; GET and POST /admin/retention."""

    def __init__(
        self, gateway: Gateway, peers: Peers, db: ConsoleDatabase, retention: Retention
    ) -> None:
        self._gateway = gateway
        self._peers = peers
        self._db = db
        self._retention = retention

    async def overview(self, request: Request) -> Response:
        query = _query(request)
        range_ = parse_range(query.get("range")).coarsened(self._retention.days)
        tag = query.get("tag") or ""
        now = time.time()
        since = range_.since(now)
        rows = await self._db.fetch_tuples(queries.cells_sql(), range_.period, tag, since)
        keys = await self._db.fetch(
            queries.by_key_sql(_TOP_KEYS), range_.key_period, tag, since // 86400 * 86400
            if range_.key_period == 86400 else since
        )  # fmt: skip
        # Tens of milliseconds of Python for a long range: on a thread, the event loop (and the
        # requests it serves) gets the GIL back every few milliseconds instead of waiting it out.
        overview = await asyncio.to_thread(build_overview, range_, now, rows, keys)
        return _json({**overview, "tag": tag or None})

    async def list_requests(self, request: Request) -> Response:
        query = _query(request)
        where = queries.parse_filter(query)
        limit = _limit(query.get("limit"))
        cursor = query.get("cursor")
        after = queries.decode_cursor(cursor) if cursor else None
        sql, params = queries.requests_sql(where, after, limit + 1)
        if not after:
            await self._gateway.ledger.flush(at_most=0.5)  # this worker's newest rows too
        rows = await self._db.fetch(sql, *params)
        page = rows[:limit]
        more = len(rows) > limit
        last = page[-1] if page else None
        return _json(
            {
                "data": [describe_request(row, detail=False) for row in page],
                "next_cursor": queries.encode_cursor(last["created_at"], last["request_id"])
                if more and last
                else None,
            }
        )

    async def retrieve_request(self, request: Request) -> Response:
        request_id = request.path.removeprefix("/admin/requests/")
        rows = await self._db.fetch(queries.request_sql(), request_id[:256])
        if not rows:
            await self._gateway.ledger.flush(at_most=1.0)
            rows = await self._db.fetch(queries.request_sql(), request_id[:256])
        if not rows:
            raise RequestNotFound(
                f"There is no settled request with id {request_id[:80]!r} (it may still be"
                " running, or be older than the retention age)."
            )
        return _json({"data": describe_request(rows[0], detail=True)})

    async def routes(self, request: Request) -> Response:
        live = await fleet.fleet_health(self._gateway, self._peers)
        since = int(time.time()) // 60 * 60 - 3600
        rows = await self._db.fetch(queries.by_route_sql(60, "route"), 60, "", since)
        recent = _sum_by("route", rows)
        names = {entry["route"] for entry in live["routes"]} | (set(recent) - {""})
        live_by_name = {entry["route"]: entry for entry in live["routes"]}
        data = [
            {
                "route": name,
                "provider": name.partition(":")[0],
                "models": self._models_on(name),
                "unavailable_reason": self._unavailable(name),
                "live": live_by_name.get(name),
                "last_hour": recent[name].describe() if name in recent else None,
            }
            for name in sorted(names)
        ]
        return _json({**{k: v for k, v in live.items() if k != "routes"}, "data": data})

    async def tags(self, request: Request) -> Response:
        query = _query(request)
        range_ = parse_range(query.get("range")).coarsened(self._retention.days)
        sql = queries.tags_sql(self._db.dialect)
        rows = await self._db.fetch(sql, range_.period, range_.since(time.time()))
        data = [{"tag": name, **totals.describe()} for name, totals in _sum_by("tag", rows).items()]
        data.sort(key=lambda entry: (-(entry["cost"] or 0), -entry["requests"], entry["tag"]))
        return _json({"range": range_.name, "data": data})

    async def key_usage(self, request: Request) -> Response:
        query = _query(request)
        range_ = parse_range(query.get("range") or "30d")
        since = range_.since(time.time())
        if range_.key_period == 86400:
            since = since // 86400 * 86400
        sums = await self._db.fetch(queries.key_usage_sql(), range_.key_period, since)
        last = await self._db.fetch(queries.last_used_sql())
        used = {row["key_id"]: row["last_used_at"] for row in last}
        totals = {row["key_id"]: row for row in sums}
        data = [
            {
                "key_id": key_id,
                "last_used_at": at,
                "requests": int(totals[key_id]["requests"]) if key_id in totals else 0,
                "errors": int(totals[key_id]["errors"]) if key_id in totals else 0,
                "cost": format_credits(int(totals[key_id]["cost"])) if key_id in totals else 0.0,
            }
            for key_id, at in sorted(used.items())
        ]
        return _json({"range": range_.name, "data": data})

    async def facets(self, request: Request) -> Response:
        since = (int(time.time()) // 86400 - _FACET_DAYS) * 86400
        found = {}
        for column in ("model", "route", "tag"):
            rows = await self._db.fetch(queries.facets_sql(column), since)
            found[f"{column}s"] = [row["value"] for row in rows]
        return _json({**found, "ranges": list(RANGES)})

    async def retention(self, request: Request) -> Response:
        ran = None
        if request.method == "POST":
            ran = await self._retention.run()
        oldest = await self._db.fetch("SELECT min(created_at) AS at FROM ledger")
        daily = await self._db.fetch(
            "SELECT min(bucket) AS at FROM usage_by_route WHERE period = 86400"
        )
        return _json(
            {
                "days": self._retention.days,
                "minute_rollup_days": MINUTE_ROLLUP_DAYS,
                "oldest_request_at": oldest[0]["at"],
                "daily_rollups_since": daily[0]["at"],
                "last_run": self._retention.last_run,
                **({"ran": ran} if request.method == "POST" else {}),
            }
        )

    def _models_on(self, route: str) -> list[str]:
        return sorted(
            model.name
            for model in self._gateway.settings.models.values()
            if any(f"{r.provider}:{r.upstream_model}" == route for r in model.routes)
        )

    def _unavailable(self, route: str) -> str | None:
        provider = self._gateway.settings.providers.get(route.partition(":")[0])
        return provider.missing if provider is not None else None


def describe_request(row: Mapping[str, Any], detail: bool) -> dict[str, Any]:
    """A ledger row as the API shows it; `detail` adds every attempt."""
    provider = row["route"]
    attempts = orjson.loads(row["attempts"]) if row["attempts"] else None
    route = f"{provider}:{row['upstream_model']}" if provider else None
    if attempts is None:
        # Answered by its first attempt, which the row describes: nothing else was kept.
        attempts = [
            {"route": route, "start_ms": 0.0, "ms": row["ttfb_ms"], "outcome": "ok", "hedge": False}
        ] if route else []  # fmt: skip
    return {
        "id": row["request_id"],
        "created_at": row["created_at"],
        "key": {"id": row["key_id"], "name": row["key_name"]},
        "model": row["model"],
        "route": route,
        "provider": provider or None,
        "upstream_model": row["upstream_model"] or None,
        "stream": bool(row["stream"]),
        "status": row["status"],
        "error": {"code": row["error_code"], "message": row["error_message"]}
        if row["error_code"]
        else None,
        "usage": {
            name: row[name]
            for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens")
        },
        "cost": format_credits(row["cost"]),
        "uncharged": format_credits(row["uncharged"]),
        "ttfb_ms": row["ttfb_ms"],
        "total_ms": row["total_ms"],
        "reasoning_effort": {"received": row["effort_in"], "sent": row["effort_out"]},
        "tags": orjson.loads(row["tags"]) if row["tags"] else [],
        "attempts": attempts if detail else len(attempts),
    }


def _sum_by(column: str, rows: list[dict[str, Any]]) -> dict[str, Totals]:
    sums: dict[str, Totals] = {}
    for row in rows:
        totals = sums.get(row[column]) or sums.setdefault(row[column], Totals())
        totals.add(metrics_of(row))
    return sums


def _query(request: Request) -> dict[str, str]:
    try:
        parsed = parse_qs(request.query, max_num_fields=32, strict_parsing=False)
    except ValueError:
        raise InvalidRequest("Too many query parameters.") from None
    return {name: values[0] for name, values in parsed.items() if values}


def _limit(value: str | None) -> int:
    if value is None:
        return _PAGE
    if not value.isdigit() or not 1 <= int(value) <= _MAX_PAGE:
        raise InvalidRequest(f"'limit' must be from 1 to {_MAX_PAGE}.", param="limit")
    return int(value)


def _json(payload: Any) -> Response:
    return json_response(payload, headers=list(_NO_STORE))
