"""peers.py: the workers' Unix sockets, and where they live."""

from __future__ import annotations

import asyncio

from callmissed.peers import Peers


def test_sockets_kept_in_a_private_temporary_directory_leave_nothing_behind(tmp_path):
    """A ledger directory whose path is too long for a socket's name sends the sockets to a
    private directory in /tmp: the last worker to close removes it."""
    deep = tmp_path / ("d" * 120)
    deep.mkdir()

    async def run() -> None:
        first, second = (Peers(deep, name, lambda _: True) for name in ("one", "two"))
        await first.start()
        await second.start()
        private = first._directory
        assert private.parent != deep.parent and private.exists()
        await first.close()
        assert private.exists()  # the second's socket is still in it
        await second.close()
        assert not private.exists()

    asyncio.run(run())


def test_sockets_beside_the_ledger_leave_its_directory_alone(tmp_path):
    async def run() -> None:
        peers = Peers(tmp_path, "one", lambda _: True)
        await peers.start()
        await peers.close()

    asyncio.run(run())
    assert tmp_path.exists() and not list(tmp_path.iterdir())
