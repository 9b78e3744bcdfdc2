"""A burst of request starts is spread over turns of the event loop (edge/turns.py), so the
streams in flight are relayed between them."""

from __future__ import annotations

import asyncio

from callmissed.edge.turns import Turns


def test_a_request_alone_starts_without_waiting_for_a_turn():
    async def scenario() -> bool:
        turns = Turns(per_turn=2)
        step = turns.take().__await__()
        try:
            next(step)
        except StopIteration:
            return True  # finished without suspending
        return False

    assert asyncio.run(scenario())


def test_a_burst_starts_a_few_per_turn_with_the_loop_running_between():
    async def scenario() -> list[str]:
        turns = Turns(per_turn=3)
        seen: list[str] = []

        async def request(name: str) -> None:
            await turns.take()
            seen.append(name)

        def relay() -> None:  # what a stream in flight gets done between turns
            seen.append("relay")
            if len(seen) < 20:
                asyncio.get_running_loop().call_soon(relay)

        asyncio.get_running_loop().call_soon(relay)
        await asyncio.gather(*[request(f"req{i}") for i in range(8)])
        return seen

    seen = asyncio.run(scenario())
    starts = [index for index, name in enumerate(seen) if name.startswith("req")]
    assert [seen[i] for i in starts] == [f"req{i}" for i in range(8)]  # in arrival order
    groups = "".join("r" if name.startswith("req") else "|" for name in seen)
    runs = [len(run) for run in groups.split("|") if run]
    assert max(runs) <= 3 and sum(runs) == 8  # never more than a turn's worth back to back


def test_a_request_that_leaves_while_waiting_gives_up_its_place():
    async def scenario() -> list[str]:
        turns = Turns(per_turn=1)
        started: list[str] = []

        async def request(name: str) -> None:
            await turns.take()
            started.append(name)

        first = asyncio.ensure_future(request("first"))
        leaving = asyncio.ensure_future(request("leaving"))
        last = asyncio.ensure_future(request("last"))
        await asyncio.sleep(0)  # all three asked: the first got the turn
        leaving.cancel()
        await asyncio.gather(first, last, return_exceptions=True)
        assert leaving.cancelled()
        return started

    assert asyncio.run(scenario()) == ["first", "last"]
