"""/healthz's readiness: a server of several workers is ready once every one of them serves,
asked of each other over their real Unix sockets (peers.py)."""

from __future__ import annotations

import asyncio

from callmissed.app import Readiness
from callmissed.peers import Peers


def test_ready_once_every_worker_serves_and_then_for_good(tmp_path):
    async def run() -> None:
        first, second = (Peers(tmp_path, name, lambda _: True) for name in ("one", "two"))
        one, two = Readiness(first, 2), Readiness(second, 2)
        await first.start()
        one.serve()
        assert await one.serving() == 1  # the second has not even opened its socket
        await second.start()
        assert await one.serving() == 1  # it has, but its start-up is not over
        two.serve()
        assert (await one.serving(), await two.serving()) == (2, 2)
        await second.close()  # it dies, and the server starts it again: still ready
        assert await one.serving() == 2
        await first.close()

    asyncio.run(run())
