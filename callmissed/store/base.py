"""The Store protocol every backend implements, and `open_store(url)` that picks one."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Protocol

__all__ = ["KeyRecord", "Store", "migrations", "open_store"]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    name: str
    key_hash: str
    key_prefix: str
    credits: int | None  # micro-credits; None = unlimited
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Store(Protocol):
    def create_key(
        self, name: str, key_hash: str, key_prefix: str, credits: int | None
    ) -> KeyRecord: ...

    def find_key(self, key_hash: str) -> KeyRecord | None: ...

    def list_keys(self) -> list[KeyRecord]: ...

    def revoke_key(self, key_id: int) -> bool: ...

    def close(self) -> None: ...


def migrations() -> list[tuple[str, str]]:
    """(name, SQL) of every migration, in order."""
    folder = resources.files("callmissed.store").joinpath("migrations")
    files = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    return [(name, folder.joinpath(name).read_text()) for name in files]


def open_store(url: str) -> Store:
    if url.startswith("sqlite://"):
        from callmissed.store.sqlite import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite://").removeprefix("/") or ":memory:")
    raise ValueError(f"unsupported CALLMISSED_DATABASE_URL {url!r}; use sqlite:///path")
