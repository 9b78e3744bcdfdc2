"""callmissed.store.walwatch: a commit from any connection or process moves the wal-index."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from callmissed.store.sqlite import SQLiteStore, connect
from callmissed.store.walwatch import WalWatch


def _database(tmp_path: Path) -> tuple[str, sqlite3.Connection]:
    path = str(tmp_path / "watched.sqlite3")
    db = connect(path)
    db.execute("CREATE TABLE notes (text TEXT)")
    return path, db


def test_only_a_commit_moves_it(tmp_path):
    path, db = _database(tmp_path)
    watch = WalWatch(path)
    assert watch.changed()  # the first look knows nothing yet
    assert not watch.changed()
    db.execute("SELECT count(*) FROM notes").fetchone()  # reading commits nothing
    assert not watch.changed()
    db.execute("INSERT INTO notes VALUES ('ours')")
    assert watch.changed() and not watch.changed()
    db.close()
    watch.close()  # after the connection: closing it drops the process's locks on the file


def test_another_process_commit_is_seen_at_once(tmp_path):
    path, _db = _database(tmp_path)
    watch = WalWatch(path)
    watch.changed()
    write = (
        f"import sqlite3; db = sqlite3.connect({path!r}, isolation_level=None); "
        "db.execute(\"INSERT INTO notes VALUES ('x')\")"
    )
    for _ in range(3):
        subprocess.run([sys.executable, "-c", write], check=True, timeout=30)
        assert watch.changed() and not watch.changed()
    _db.close()
    watch.close()


def test_a_commit_after_the_log_restarts_is_seen(tmp_path):
    path, db = _database(tmp_path)
    watch = WalWatch(path)
    db.execute("INSERT INTO notes VALUES ('before')")
    watch.changed()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next commit starts the log over
    other = connect(path)
    other.execute("INSERT INTO notes VALUES ('after')")
    assert watch.changed()
    other.close()
    db.close()
    watch.close()


def test_without_a_wal_index_every_look_is_a_change(tmp_path):
    watch = WalWatch(str(tmp_path / "missing.sqlite3"))
    assert watch.changed() and watch.changed()
    watch.close()


def test_a_header_it_does_not_know_is_a_change_every_time(tmp_path):
    shm = tmp_path / "odd.sqlite3-shm"
    shm.write_bytes(b"\x01" * 4096)  # not a version-3007000 wal-index
    watch = WalWatch(str(tmp_path / "odd.sqlite3"))
    assert watch.changed() and watch.changed()
    watch.close()


# SQLite's "dead man switch" in the wal-index: every process with a connection holds a shared
# POSIX lock on this byte; one that can lock it exclusively takes itself for the file's first
# opener and resets the wal-index under everyone else's mapping (os_unix.c, UNIX_SHM_DMS).
_DMS_BYTE = 128
_TRY_DMS = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "try:\n"
    f"    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, {_DMS_BYTE})\n"
    "except OSError:\n"
    "    sys.exit(3)\n"
)


def test_closing_any_descriptor_of_the_file_drops_sqlite_locks(tmp_path):
    """The hazard itself, and proof that the check below can see it."""
    path, _db = _database(tmp_path)
    assert _try_dms(path) == 3
    os.close(os.open(f"{path}-shm", os.O_RDONLY))
    assert _try_dms(path) == 0


def test_a_store_watching_its_file_keeps_sqlite_locks(tmp_path):
    """The watch must not close its descriptor while the store's connections live (two
    workers once died of SIGBUS when another process reset the wal-index under them)."""
    path = str(tmp_path / "store.sqlite3")
    store = SQLiteStore(path)
    try:
        assert store.keys_version() >= 0  # a look through the watch
        assert _try_dms(path) == 3, "another process could take the wal-index for unused"
    finally:
        asyncio.run(store.close())


def _try_dms(path: str) -> int:
    """3 if another process cannot lock the dead man switch exclusively, 0 if it can."""
    command = [sys.executable, "-c", _TRY_DMS, f"{path}-shm"]
    return subprocess.run(command, timeout=30, check=False).returncode
