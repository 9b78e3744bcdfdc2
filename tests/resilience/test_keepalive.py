"""callmissed.keepalive: a slow opening starts the stream itself and comments until stopped."""

from __future__ import annotations

import asyncio

from callmissed.deadlines import Deadlines
from callmissed.errors import GatewayError
from callmissed.exchange import Headers, Write
from callmissed.keepalive import COMMENT, InBand, KeepAlive, in_band_error


class Edge:
    """Records what a KeepAlive sends, as the edge's Request.start_stream would send it."""

    def __init__(self) -> None:
        self.started: Headers | None = None
        self.written: list[bytes] = []
        self.counted = 0

    async def start_stream(self, headers: Headers) -> Write:
        self.started = headers
        return self.write

    async def write(self, part: bytes) -> None:
        self.written.append(part)

    def count(self) -> None:
        self.counted += 1


def test_a_quick_opening_starts_nothing():
    async def run() -> Edge:
        edge = Edge()
        keepalive = KeepAlive(edge.start_stream, [], 0.05, 0.01, edge.count, Deadlines())
        await asyncio.sleep(0.01)
        assert await keepalive.stop() is False
        await asyncio.sleep(0.1)  # the timer is gone with it
        return edge

    edge = asyncio.run(run())
    assert (edge.started, edge.written, edge.counted) == (None, [], 0)


def test_a_slow_opening_starts_the_stream_and_comments_until_stopped():
    async def run() -> tuple[Edge, bool]:
        edge = Edge()
        keepalive = KeepAlive(
            edge.start_stream, [(b"request-id", b"r1")], 0.01, 0.03, edge.count, Deadlines()
        )
        await asyncio.sleep(0.1)
        started = await keepalive.stop()
        written = len(edge.written)
        await asyncio.sleep(0.1)
        assert len(edge.written) == written  # nothing after stop()
        return edge, started

    edge, started = asyncio.run(run())
    assert started and edge.started == [(b"request-id", b"r1")] and edge.counted == 1
    assert set(edge.written) == {COMMENT} and len(edge.written) >= 3  # at once, then every 30 ms


def test_without_an_edge_to_start_a_stream_it_only_waits():
    async def run() -> bool:
        keepalive = KeepAlive(None, [], 0.0, 0.01, lambda: None, Deadlines())
        await asyncio.sleep(0.05)
        return await keepalive.stop()

    assert asyncio.run(run()) is False


def test_a_failure_after_the_start_is_one_error_event_and_internals_stay_hidden():
    async def events(error: Exception) -> list[bytes]:
        return [part async for part in in_band_error(error, lambda e: e.message.encode(), "r1")]

    assert asyncio.run(events(GatewayError("no route answered"))) == [b"no route answered"]
    assert asyncio.run(events(KeyError("secret"))) == [b"Internal error (r1)."]


async def _fail_after(delay: float) -> None:
    await asyncio.sleep(delay)
    raise GatewayError("no route answered")


def test_a_failure_before_the_start_is_raised_as_it_is():
    async def run() -> None:
        keepalive = KeepAlive(Edge().start_stream, [], 1.0, 1.0, lambda: None, Deadlines())
        try:
            await keepalive.run(_fail_after(0))
        except InBand:
            raise AssertionError("the stream had not started") from None
        except GatewayError:
            return
        raise AssertionError("the failure was lost")

    asyncio.run(run())


def test_a_failure_after_the_start_must_go_in_band():
    async def run() -> GatewayError:
        edge = Edge()
        keepalive = KeepAlive(edge.start_stream, [], 0.01, 0.01, edge.count, Deadlines())
        try:
            await keepalive.run(_fail_after(0.05))
        except InBand as failed:
            assert keepalive.started and edge.started == []
            assert isinstance(failed.error, GatewayError)
            return failed.error
        raise AssertionError("not raised in-band")

    assert asyncio.run(run()).message == "no route answered"
