"""Whether anyone may have committed to a WAL-mode SQLite file, without a system call.

SQLite rewrites the header of a database's wal-index (its `-shm` file, which every connection
maps into memory) on every commit: iChange counts transactions, mxFrame and the checksums move
with the log (https://www.sqlite.org/walformat.html, "The WAL-Index Header"). Comparing that
header with the last one seen is a memory read. `PRAGMA data_version`, which the store asks
otherwise, opens a read transaction (file locks: ~3 us idle, more under load) and does so on
every request. So a look goes to data_version only after the header moved: after some commit,
ours included. A header of a layout this code does not know counts as moved every time.
"""

from __future__ import annotations

import mmap
import os
import sys

__all__ = ["WalWatch"]

_HEADER_BYTES = 48  # the first of the header's two copies
_KNOWN_VERSION = (3007000).to_bytes(4, sys.byteorder)  # iVersion; the file is in native order
_IS_INIT = 12  # offset of isInit, 1 once the header is valid


class WalWatch:
    """Watches the wal-index of the database at `path`.

    Open it after a connection of this process has opened the file in WAL mode (SQLite resets
    the wal-index only for the file's first opener), and close it only after every connection
    of this process to the file is closed: SQLite's locks on the wal-index are POSIX record
    locks, which a process loses, all of them, when it closes *any* descriptor of the file.
    Closing ours early would let another process take this one for gone and reset the file
    under every mapping of it (a worker dies of SIGBUS), or checkpoint under a reader.
    """

    __slots__ = ("_fd", "_map", "_seen")

    def __init__(self, path: str) -> None:
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._seen = b""
        try:
            self._fd = os.open(f"{path}-shm", os.O_RDONLY)
            self._map = mmap.mmap(self._fd, _HEADER_BYTES, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            pass  # no wal-index to read (an in-memory database, say): every look is a change

    def changed(self) -> bool:
        """Whether some connection may have committed since the last call said so."""
        if self._map is None:
            return True
        header = self._map[:_HEADER_BYTES]
        if header == self._seen:
            return False
        known = header[:4] == _KNOWN_VERSION and header[_IS_INIT] == 1
        self._seen = header if known else b""
        return True

    def close(self) -> None:
        """After this process's last connection to the file is closed (see the class doc)."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd != -1:
            os.close(self._fd)
            self._fd = -1
