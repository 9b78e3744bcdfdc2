"""What the bodies of requests being read may hold at once, in one worker (docs/security.md).

Each body is bounded by its own limit; these bound their sum, since an HTTP/2 connection
carries 100 streams, a worker 1,000 connections, and a declared body may take minutes to
arrive. The bodies no credential checked share OPEN_BODIES_AT_ONCE x the open limit (no
endpoint without a credential needs a body); each key's share KEY_BODIES_AT_ONCE x the full
limit. A body that would pass its budget is refused at once: 503, or 429 for a key's.
"""

from __future__ import annotations

from collections.abc import Callable

from callmissed.errors import GatewayError, RateLimited, ServerBusy

__all__ = ["KEY_BODIES_AT_ONCE", "OPEN_BODIES_AT_ONCE", "Bodies", "BodyBudget"]

OPEN_BODIES_AT_ONCE = 16  # open-limit bodies the requests without a credential may hold
KEY_BODIES_AT_ONCE = 2  # full-limit bodies one key's requests may hold
_KEYS_KEPT = 10_000  # key budgets remembered; past it, those holding nothing are forgotten


class BodyBudget:
    """Bytes some bodies may hold at once; take() raises what `refuse` makes past it."""

    __slots__ = ("_refuse", "held", "limit")

    def __init__(self, limit: int, refuse: Callable[[], GatewayError]) -> None:
        self.limit = limit
        self.held = 0
        self._refuse = refuse

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise self._refuse()
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


class Bodies:
    """One worker's body budgets: the open one, and one per key that sends bodies."""

    def __init__(self, max_body_bytes: int, max_open_body_bytes: int) -> None:
        self.open = BodyBudget(OPEN_BODIES_AT_ONCE * max_open_body_bytes, _busy)
        self._key_limit = KEY_BODIES_AT_ONCE * max_body_bytes
        self._keys: dict[int, BodyBudget] = {}

    def __len__(self) -> int:
        """How many keys' budgets it remembers."""
        return len(self._keys)

    def of_key(self, key_id: int) -> BodyBudget:
        budget = self._keys.get(key_id)
        if budget is None:
            if len(self._keys) >= _KEYS_KEPT:
                self._keys = {key: kept for key, kept in self._keys.items() if kept.held}
            budget = self._keys[key_id] = BodyBudget(self._key_limit, _too_much)
        return budget


def _busy() -> GatewayError:
    return ServerBusy(
        "Too many requests without a credential are sending bodies at once; try again."
    )


def _too_much() -> GatewayError:
    return RateLimited(
        "This key's requests are sending more body data at once than the gateway holds for "
        "one key; send fewer at a time.",
        retry_after=1.0,
    )
