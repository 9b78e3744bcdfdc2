"""callmissed.store.walwatch: a commit from any connection or process moves the wal-index."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from callmissed.store.sqlite import connect
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
    watch.close()


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
