"""GET /v1/key: the calling key's credits and limits, in OpenRouter's shape (`{"data": {...}}`).

`usage`, `limit` and `limit_remaining` are credits (USD); `limit` is everything ever granted
(null for an unlimited key), or the limit per window if it resets (`limit_reset`: daily, weekly,
monthly), and `limit_remaining` what the key (or its current window) can still spend, the
processes' unspent wallets included (docs/credits.md); a request in flight counts once it ends.
`usage_daily` / `_weekly` / `_monthly` are what requests begun in the current UTC day, week
(from Monday) and month were charged. This process's finished requests are settled first.
"""

from __future__ import annotations

import time
from typing import Any

from callmissed.accounting.pricing import format_credits
from callmissed.edge.web import Request, Response, json_response
from callmissed.errors import AuthenticationFailed
from callmissed.gateway import Gateway
from callmissed.store import KeyRecord
from callmissed.store.budget import window_starts

__all__ = ["describe_limits", "retrieve_current_key"]


async def retrieve_current_key(gateway: Gateway, request: Request) -> Response:
    principal = request.key
    record = await gateway.keys.find(principal.key_id, settled=True)
    if record is None or not record.active:
        gateway.auth.forget()
        raise AuthenticationFailed("This API key has been revoked.")
    daily, weekly, monthly = await gateway.keys.spent_since(record.id, window_starts(time.time()))
    data = {
        "label": record.name,
        "usage": format_credits(record.spent),
        "usage_daily": format_credits(daily),
        "usage_weekly": format_credits(weekly),
        "usage_monthly": format_credits(monthly),
        "limit": format_credits(record.granted),
        "limit_remaining": format_credits(record.credits),
        "limit_reset": record.limit_reset,
        "is_free_tier": False,
        "rate_limit": describe_limits(record),
        "models": list(record.policy.models) if record.policy.models is not None else None,
    }
    return json_response({"data": data})


def describe_limits(record: KeyRecord) -> dict[str, Any]:
    """The key's limits; null means none. All are per key, over a sliding minute."""
    policy = record.policy
    return {
        "requests": policy.rpm,
        "tokens": policy.tpm,
        "concurrent": policy.max_concurrent,
        "interval": "1m",
    }
