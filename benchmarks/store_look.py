"""What the SQLite store's look for key changes costs: through the wal-index header
(store/walwatch.py) against `PRAGMA data_version` on every look.

Run `python -m benchmarks.store_look`. A request looks twice (the key's authentication, then its
revocation check at admission). Each variant is timed on a quiet file, then while another process
commits about a thousand times a second, as a busy server's ledger writer and other workers do.
Reports the best and the median of five rounds, in ns per look.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from callmissed.store.sqlite import SQLiteStore

__all__ = ["main"]

_COMMITS = (
    "import sqlite3, sys, time\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('CREATE TABLE IF NOT EXISTS bench_commits (x)')\n"
    "while True:\n"
    "    db.execute('INSERT INTO bench_commits VALUES (1)')\n"
    "    time.sleep(0.001)\n"
)


class _EveryLook(SQLiteStore):
    """The store without the watch: `PRAGMA data_version` (a read transaction) every look."""

    def _look(self) -> None:
        self._read_version()


def _time(store: SQLiteStore, looks: int) -> tuple[float, float]:
    rounds = []
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(looks):
            store.keys_version()
        rounds.append((time.perf_counter_ns() - started) / looks)
    return min(rounds), statistics.median(rounds)


def _report(label: str, name: str, times: tuple[float, float]) -> None:
    print(f"{label:8} {name:12} best {times[0]:6.0f} ns  median {times[1]:6.0f} ns")


def _run(looks: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "look.sqlite3")
        stores = {"walwatch": SQLiteStore(path), "data_version": _EveryLook(path)}
        try:
            for name, store in stores.items():
                _report("quiet", name, _time(store, looks))
            writer = subprocess.Popen([sys.executable, "-c", _COMMITS, path])
            try:
                time.sleep(0.5)
                for name, store in stores.items():
                    _report("commits", name, _time(store, looks // 4))
            finally:
                writer.kill()
                writer.wait()
        finally:
            for store in stores.values():
                asyncio.run(store.close())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--looks", type=int, default=200_000, help="looks per round (quiet)")
    _run(parser.parse_args().looks)


if __name__ == "__main__":
    main()
