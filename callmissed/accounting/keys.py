"""Key administration: the one path for creating keys, top-ups, limits and revocation.

The admin API (api/admin.py), `GET /v1/key` (api/keys.py) and the CLI (cli.py) all go through
`KeyAdmin`, so each rule is kept in one place: a limit resets only if there is a credit limit, a
top-up never takes a balance past MAX_BALANCE, and a change reaches the very next request on
every worker. In the server, a change drops this worker's cached keys and asks its other workers
(peers.py) to drop theirs before it answers — the store tells them too, but a PostgreSQL
notification may cross the network after that answer. The CLI runs in its own process, with no
cache to drop. A read can settle this process's finished requests first, so that it includes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from callmissed.accounting.ledger import Ledger
from callmissed.accounting.pricing import MICRO
from callmissed.auth import Authenticator, create_key
from callmissed.errors import InvalidRequest, KeyNotFound
from callmissed.peers import Peers
from callmissed.store import MAX_BALANCE, NO_POLICY, KeyPolicy, KeyRecord, Store
from callmissed.store.budget import LIMIT_RESETS

__all__ = ["FORGET", "UNCHANGED", "KeyAdmin"]

FORGET = "forget"  # what one worker asks the others (peers.py): drop your cached keys
UNCHANGED: Any = object()  # update()'s `limit_reset` when it is not to change


class KeyAdmin:
    """Keys and their credit. `ledger`, `auth` and `peers` are the server's (None in the CLI)."""

    def __init__(
        self,
        store: Store,
        ledger: Ledger | None = None,
        auth: Authenticator | None = None,
        peers: Peers | None = None,
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._auth = auth
        self._peers = peers
        if peers is not None:
            peers.serve(FORGET, self._asked_to_forget)

    async def create(
        self,
        name: str,
        credits: int | None = None,
        policy: KeyPolicy = NO_POLICY,
        limit_reset: str | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key and its record; the key itself is returned here and nowhere else."""
        _check_limit_reset(limit_reset, credits is not None)
        return await create_key(self._store, name, credits, policy, limit_reset)

    async def list_keys(self) -> list[KeyRecord]:
        return await self._store.list_keys()

    async def find(self, key_id: int, *, settled: bool = False) -> KeyRecord | None:
        """The key's record, or None (`settled`: this process's finished requests settled into
        it first)."""
        if settled and self._ledger is not None:
            await self._ledger.flush(at_most=1.0)
        return await self._store.get_key(key_id)

    async def get(self, key_id: int, *, settled: bool = False) -> KeyRecord:
        """find(), or KeyNotFound."""
        record = await self.find(key_id, settled=settled)
        if record is None:
            raise KeyNotFound(f"There is no API key with id {key_id}.")
        return record

    async def usage(self, key_id: int, limit: int) -> list[dict[str, Any]]:
        """The key's latest `limit` ledger rows, newest first (after get(settled=True), this
        process's finished requests among them)."""
        return await self._store.recent_usage(key_id, limit)

    async def spent_since(self, key_id: int, since: Sequence[float]) -> list[int]:
        """What the key was charged for requests begun at or after each of `since`."""
        return await self._store.spent_since(key_id, since)

    async def update(
        self, key_id: int, policy: KeyPolicy | None = None, limit_reset: Any = UNCHANGED
    ) -> KeyRecord:
        """New limits and allow-list (`policy`), and a new `limit_reset` (None: never resets)."""
        record = await self.get(key_id)
        if limit_reset is not UNCHANGED:
            _check_limit_reset(limit_reset, record.credits is not None)
            record = await self._store.set_limit_reset(record.id, limit_reset) or record
        if policy is not None:
            record = await self._store.set_policy(record.id, policy) or record
        await self._changed()
        return record

    async def revoke(self, key_id: int) -> bool:
        """Revoke the key: its next request gets 401. False if there is no active such key."""
        revoked = await self._store.revoke_key(key_id)
        await self._changed()
        return revoked

    async def top_up(self, key_id: int, amount: int) -> KeyRecord:
        """Add `amount` micro-credits to an active key with a credit limit; else raise."""
        record = await self._store.topup(key_id, amount)
        if record is not None:
            await self._changed()
            return record
        found = await self.get(key_id)
        if found.active and found.credits is not None:
            most = MAX_BALANCE // MICRO
            message = f"A top-up may not take a key's balance past {most:,} USD."
        else:
            message = "Only an active key with a credit limit can be topped up."
        raise InvalidRequest(message, param="credits")

    async def _changed(self) -> None:
        if self._auth is not None:
            self._auth.forget()
        if self._peers is not None:
            await self._peers.ask(FORGET)

    async def _asked_to_forget(self, _: Any) -> bool:
        if self._auth is not None:
            self._auth.forget()
        return True


def _check_limit_reset(value: Any, metered: bool) -> None:
    """`limit_reset` is one of LIMIT_RESETS, or None for a limit that never resets; only a key
    with a credit limit has one to reset."""
    if value is not None and value not in LIMIT_RESETS:
        raise InvalidRequest(
            f"'limit_reset' must be one of {', '.join(LIMIT_RESETS)}, or null.", param="limit_reset"
        )
    if value is not None and not metered:
        raise InvalidRequest(
            "'limit_reset' needs a credit limit: an unlimited key has nothing to reset.",
            param="limit_reset",
        )
