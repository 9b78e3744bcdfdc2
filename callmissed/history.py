"""Stored Responses, as the Responses API keeps them: saved, continued, listed, deleted, expired.

POST /v1/responses with `store` (the default) saves the Response and the items it answered (the
conversation's earlier turns included), owned by the key; previous_response_id continues from
them; nothing else can read them. Bounds (settings.ResponsesStorage): a response whose row would
pass `max_bytes` is not stored (its `store` says false), a key past `key_bytes` loses its oldest
rows, and rows older than the retention are purged by a background task, in small batches, never
on a request's path. The rows themselves are store/responses.py's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from callmissed.errors import RateLimited, ResponseNotFound
from callmissed.settings import ResponsesStorage
from callmissed.store import Store
from callmissed.store.responses import ResponseStore, StoredResponse

__all__ = ["History", "Readers", "output_as_input"]

log = logging.getLogger("callmissed")

_PURGE_EVERY = 600.0  # seconds between purges; a purge repeats at once while it finds a full batch
_PURGE_BATCH = 500  # rows per purge transaction: short, so no request waits long for the lock
_DAY = 86_400.0


class Readers:
    """The bytes of stored responses on their way to each key's clients, in this worker.

    Reading a stored response costs the key nothing, and a client that stops reading keeps
    its body here (the write gate holds it back, not away): so a key may have at most `limit`
    bytes of reads in flight. A single read always goes, whatever its size."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held: dict[int, int] = {}

    def take(self, key_id: int, size: int) -> Callable[[], None]:
        """Count `size` bytes against the key; the call returned gives them back (once).
        RateLimited if the key's reads in flight leave no room for it."""
        held = self._held.get(key_id, 0)
        if held and held + size > self._limit:
            raise RateLimited(
                "This key has too many stored responses on their way to it; read them as they "
                "come, fewer at a time.",
                retry_after=1.0,
            )
        self._held[key_id] = held + size
        given: list[bool] = []

        def give_back() -> None:
            if not given:
                given.append(True)
                left = self._held.pop(key_id) - size
                if left:
                    self._held[key_id] = left

        return give_back


class History:
    """The stored Responses of every key. start() after the store's, close() before it."""

    def __init__(self, store: Store, settings: ResponsesStorage) -> None:
        self._store = store
        self._settings = settings
        self._rows: ResponseStore | None = None
        self._purger: asyncio.Task[None] | None = None
        # Twice the largest row: a page of input items may be a little larger than its row.
        self.readers = Readers(2 * settings.max_bytes)

    @property
    def rows(self) -> ResponseStore:
        if self._rows is None:  # the store's connection exists once it started
            self._rows = self._store.responses()
        return self._rows

    async def start(self) -> None:
        self._purger = asyncio.ensure_future(self._purge_forever())

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.wait([self._purger])

    async def load(self, key_id: int, response_id: str) -> StoredResponse:
        """The key's stored response, or ResponseNotFound."""
        stored = await self.rows.load(key_id, response_id, time.time())
        if stored is None:
            raise ResponseNotFound(
                f"No response found with id {response_id!r}.", param="response_id"
            )
        return stored

    async def conversation(self, key_id: int, response_id: str) -> list[dict[str, Any]]:
        """The items a continuation of `response_id` starts from: what it answered, then its
        output (as input items, which output items are)."""
        stored = await self.load(key_id, response_id)
        response = orjson.loads(stored.response)
        items: list[dict[str, Any]] = orjson.loads(stored.input_items)
        return items + output_as_input(response.get("output") or [])

    async def save(
        self, key_id: int, response: dict[str, Any], items: list[dict[str, Any]]
    ) -> bool:
        """Keep `response` and the items it answered; False (and `store` set false in it) if
        they are larger than one stored response may be, or the store fails."""
        stored = StoredResponse(
            response["id"],
            float(response.get("created_at") or time.time()),
            orjson.dumps(response).decode(),
            orjson.dumps(items).decode(),
        )
        if len(stored.response) + len(stored.input_items) > self._settings.max_bytes:
            log.info("response %s not stored: larger than the limit", response["id"])
            response["store"] = False
            return False
        expires = time.time() + self._settings.retention_days * _DAY
        try:
            await self.rows.save(key_id, stored, expires, self._settings.key_bytes)
        except Exception as exc:  # the answer was paid for: it goes out, unstored, and says so
            log.warning("response %s not stored: the store failed: %r", response["id"], exc)
            response["store"] = False
            return False
        return True

    async def delete(self, key_id: int, response_id: str) -> None:
        if not await self.rows.delete(key_id, response_id):
            raise ResponseNotFound(
                f"No response found with id {response_id!r}.", param="response_id"
            )

    async def purge(self) -> int:
        """Delete every expired row, a batch at a time; how many."""
        total = 0
        while True:
            count = await self.rows.purge(time.time(), _PURGE_BATCH)
            total += count
            if count < _PURGE_BATCH:
                return total
            await asyncio.sleep(0)  # let requests run between batches

    async def _purge_forever(self) -> None:
        while True:
            try:
                purged = await self.purge()
            except Exception as exc:  # the store is down: the next round tries again
                log.warning("could not purge expired stored responses: %s", exc)
            else:
                if purged:
                    log.info("purged %d expired stored responses", purged)
            await asyncio.sleep(_PURGE_EVERY)


def output_as_input(output: list[Any]) -> list[dict[str, Any]]:
    """Output items as the input items of the next turn: they are the same shapes (an assistant
    message, a function_call, a reasoning item); anything else has no meaning as input."""
    kinds = ("message", "function_call", "reasoning")
    return [item for item in output if isinstance(item, dict) and item.get("type") in kinds]
