"""callmissed.keepalive: an opening that takes long is handed over, commented on, and closed."""

from __future__ import annotations

import asyncio

from callmissed.keepalive import COMMENT, Opening, open_or_keepalive


class Opened:
    closed = False

    def close(self) -> None:
        self.closed = True


def _close(opened: Opened) -> None:
    opened.close()


async def _open(delay: float) -> Opened:
    await asyncio.sleep(delay)
    return Opened()


def test_a_quick_opening_is_returned_as_is():
    async def run() -> None:
        opened = await open_or_keepalive(_open(0), 1.0, 1.0, _close)
        assert isinstance(opened, Opened)

    asyncio.run(run())


def test_a_slow_opening_yields_comments_until_it_is_done():
    async def run() -> None:
        opening = await open_or_keepalive(_open(0.1), 0.01, 0.03, _close)
        assert isinstance(opening, Opening)
        comments = [comment async for comment in opening.aiter_comments()]
        assert set(comments) == {COMMENT}
        assert len(comments) >= 3  # one at once, then every 30 ms for ~90 ms
        opened = opening.result()
        opening.close()
        assert opened.closed

    asyncio.run(run())


def test_closing_a_pending_opening_cancels_it_and_closes_what_it_opens():
    async def run() -> None:
        opening = await open_or_keepalive(_open(10), 0.01, 1.0, _close)
        assert isinstance(opening, Opening)
        opening.close()
        await asyncio.sleep(0)
        assert opening._task.cancelled()

    asyncio.run(run())


def test_a_cancelled_wait_does_not_leave_the_opening_running():
    async def run() -> None:
        started: list[asyncio.Task[Opened]] = []

        async def tracked() -> Opened:
            started.append(asyncio.current_task())  # type: ignore[arg-type]
            return await _open(10)

        waiting = asyncio.ensure_future(open_or_keepalive(tracked(), 5.0, 1.0, _close))
        await asyncio.sleep(0.01)
        waiting.cancel()
        await asyncio.sleep(0.01)
        assert started[0].cancelled()

    asyncio.run(run())
