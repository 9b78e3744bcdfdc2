"""API keys: their format, hashing, and turning a request's headers into a Principal.

Keys look like `cm_<43 url-safe characters>` and are stored only as SHA-256 digests (they are
random, so a slow hash would add nothing but latency). Lookups are cached for a second or two,
so the hot path does not read the database for them; the cache is dropped as soon as the store
reports that any key changed (Store.keys_version: another worker's admin request, the CLI), so a
change applies to the next request whichever process serves it (docs/credits.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from callmissed.errors import AuthenticationFailed
from callmissed.store import NO_POLICY, KeyPolicy, KeyRecord, Store

__all__ = ["KEY_PREFIX", "Authenticator", "Principal", "create_key", "hash_key"]

KEY_PREFIX = "cm_"
_CACHE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: int
    name: str
    policy: KeyPolicy = NO_POLICY
    metered: bool = False  # the key has a credit balance (None = unlimited)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(
    store: Store,
    name: str,
    credits: int | None = None,
    policy: KeyPolicy = NO_POLICY,
    limit_reset: str | None = None,
) -> tuple[str, KeyRecord]:
    """Make and store a new key; the key itself is returned here and nowhere else."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = await store.create_key(name, hash_key(key), key[:7], credits, policy, limit_reset)
    return key, record


class Authenticator:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[Principal | str, float]] = {}  # str: why it is refused
        self._version = -1  # the store's keys_version() the cache was filled under

    async def authenticate(
        self, authorization: str | None, api_key: str | None = None, *, bearer_only: bool = False
    ) -> Principal:
        """The Principal for `Authorization: Bearer cm_...` (or `x-api-key`, unless
        `bearer_only`: then `api_key` only says that one was sent, for the message), or raise."""
        key = _bearer(authorization) or (None if bearer_only else api_key)
        if not key:
            raise AuthenticationFailed(_missing_key(bearer_only, api_key is not None))
        digest = hash_key(key)
        version = self._store.keys_version()
        if version != self._version:
            self._version = version
            self._cache.clear()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            principal = await self._lookup(digest)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, now + _CACHE_SECONDS)
        if isinstance(principal, str):
            raise AuthenticationFailed(principal)
        return principal

    def forget(self) -> None:
        """Drop cached lookups (a key was changed in this process, or another worker's)."""
        self._cache.clear()

    async def _lookup(self, digest: str) -> Principal | str:
        record = await self._store.find_key(digest)
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            return "Invalid API key."
        if not record.active:
            return "This API key has been revoked."
        return Principal(record.id, record.name, record.policy, record.credits is not None)


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether the header is `Bearer <token>`, compared in constant time (operator tokens)."""
    given = _bearer(authorization)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _missing_key(bearer_only: bool, api_key_sent: bool) -> str:
    if not bearer_only:
        return "Missing API key: send 'Authorization: Bearer cm_...' or 'x-api-key: cm_...'."
    if api_key_sent:
        return (
            "This endpoint reads the key from 'Authorization: Bearer cm_...', as the OpenAI SDKs "
            "send it; x-api-key is read only by /v1/messages and /v1/key."
        )
    return "Missing API key: send 'Authorization: Bearer cm_...'."


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None
