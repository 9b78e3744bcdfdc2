"""The admin API under /admin/keys, guarded by CALLMISSED_ADMIN_TOKEN (a bearer token).

  GET   /admin/keys                  every key (never the key itself)
  POST  /admin/keys                  create: {name, credits, limit_reset, rpm, tpm,
                                     max_concurrent, models}
  GET   /admin/keys/{id}             one key, with its last ledger rows
  PATCH /admin/keys/{id}             change limit_reset, limits, allow-list (as in create)
  POST  /admin/keys/{id}/revoke      revoke: the next request with it gets 401
  POST  /admin/keys/{id}/topup       add credits: {credits}

Credits are USD in and out; the store keeps integer micro-credits. Without an admin token
configured every admin request is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callmissed.accounting.keys import UNCHANGED
from callmissed.accounting.pricing import format_credits, parse_credits
from callmissed.console.session import admit
from callmissed.edge.web import Request, Response, json_response
from callmissed.errors import InvalidRequest, KeyNotFound
from callmissed.gateway import Gateway
from callmissed.store import NO_POLICY, KeyPolicy, KeyRecord

__all__ = ["authorize", "describe_key", "keys_collection", "keys_item", "parse_policy"]

_PREFIX = "/admin/keys/"
_POLICY_FIELDS = ("rpm", "tpm", "max_concurrent", "models")
LIMIT_MAX = 2**31 - 1  # the store's INTEGER columns
ID_MAX = 2**63 - 1  # a key id: SQLite's INTEGER PRIMARY KEY, PostgreSQL's BIGINT


async def keys_collection(gateway: Gateway, request: Request) -> Response:
    """GET lists, POST creates (the edge has checked the admin token: authorize())."""
    keys = gateway.keys
    if request.method == "GET":
        return json_response({"data": [describe_key(r) for r in await keys.list_keys()]})
    body = _object(request)
    name = body.get("name", "key")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("'name' must be a non-empty string.", param="name")
    credits = _credits(body.get("credits")) if body.get("credits") is not None else None
    key, record = await keys.create(name, credits, parse_policy(body), body.get("limit_reset"))
    return json_response({"key": key, "data": describe_key(record)}, status=201)


async def keys_item(gateway: Gateway, request: Request) -> Response:
    """/admin/keys/{id}[/revoke|/topup]: GET, PATCH, or POST an action (accounting/keys.py:
    each change reaches the very next request, whichever worker serves it)."""
    keys = gateway.keys
    key_id, _, action = request.path.removeprefix(_PREFIX).partition("/")
    record = await keys.get(_key_id(key_id), settled=request.method == "GET" and not action)
    match (request.method, action):
        case ("GET", ""):
            usage = await keys.usage(record.id, 100)
            return json_response({"data": describe_key(record), "usage": usage})
        case ("PATCH", ""):
            body = _object(request)
            policy = parse_policy(body, record.policy)
            limit_reset = body.get("limit_reset", UNCHANGED)
            updated = await keys.update(record.id, policy, limit_reset)
        case ("POST", "revoke"):
            await keys.revoke(record.id)
            updated = await keys.get(record.id)
        case ("POST", "topup"):
            updated = await keys.top_up(record.id, _credits(_object(request).get("credits")))
        case _:
            raise InvalidRequest(f"{request.method} {request.path} is not an admin action.")
    return json_response({"data": describe_key(updated)})


def describe_key(record: KeyRecord) -> dict[str, Any]:
    policy = record.policy
    return {
        "id": record.id,
        "name": record.name,
        "key_prefix": record.key_prefix,
        "active": record.active,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
        "credits": format_credits(record.credits),
        "granted": format_credits(record.granted),
        "spent": format_credits(record.spent),
        "limit_reset": record.limit_reset,
        "window_start": record.window_start,
        "rpm": policy.rpm,
        "tpm": policy.tpm,
        "max_concurrent": policy.max_concurrent,
        "models": list(policy.models) if policy.models is not None else None,
    }


def parse_policy(body: Mapping[str, Any], current: KeyPolicy = NO_POLICY) -> KeyPolicy:
    """Limits from a JSON body; absent fields keep `current`, null removes a limit."""
    values: dict[str, Any] = {name: getattr(current, name) for name in _POLICY_FIELDS}
    for name in ("rpm", "tpm", "max_concurrent"):
        if name in body:
            value = body[name]
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= LIMIT_MAX
            ):
                raise InvalidRequest(
                    f"'{name}' must be an integer from 1 to {LIMIT_MAX}, or null.", param=name
                )
            values[name] = value
    if "models" in body:
        models = body["models"]
        if models is not None and (
            not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)
        ):
            raise InvalidRequest("'models' must be a list of model names or null.", param="models")
        values["models"] = tuple(models) if models is not None else None
    return KeyPolicy(**values)


def authorize(token: str | None, headers: Mapping[str, str], write: bool = False) -> None:
    """The edge's guard for every admin endpoint: `token` is CALLMISSED_ADMIN_TOKEN, sent as a
    bearer token, or a console session's cookie (console/session.py), whose writes must carry
    the session's CSRF token."""
    admit(token, headers, write)


def _key_id(key_id: str) -> int:
    # isdigit() alone also takes "²" and other digits int() refuses; ids are 64-bit.
    if not (key_id.isascii() and key_id.isdigit() and int(key_id) <= ID_MAX):
        raise KeyNotFound(f"There is no API key with id {key_id!r}.")
    return int(key_id)


def _object(request: Request) -> dict[str, Any]:
    body = request.json() if request.body else {}
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _credits(value: Any) -> int:
    try:
        return parse_credits(value)
    except ValueError as exc:
        raise InvalidRequest(f"'credits': {exc}.", param="credits") from None
