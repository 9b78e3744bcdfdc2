"""callmissed.deadlines: many deadlines on one loop timer, and timeouts built on them."""

from __future__ import annotations

import asyncio
import functools

import pytest
import uvloop

from callmissed.deadlines import Deadlines

LOOPS = [asyncio.run, uvloop.run]


@pytest.mark.parametrize("run", LOOPS)
def test_callbacks_run_in_time_order_whatever_order_they_were_added(run):
    async def main() -> list[tuple[str, float]]:
        deadlines = Deadlines()
        loop = asyncio.get_running_loop()
        start = loop.time()
        fired: list[tuple[str, float]] = []

        def record(name: str) -> None:
            fired.append((name, loop.time() - start))

        for name, delay in [("late", 0.06), ("early", 0.02), ("middle", 0.04)]:
            deadlines.call_at(start + delay, functools.partial(record, name))
        await asyncio.sleep(0.1)
        return fired

    fired = run(main())
    assert [name for name, _ in fired] == ["early", "middle", "late"]
    for (_, at), due in zip(fired, [0.02, 0.04, 0.06], strict=True):
        assert at >= due - 0.0011  # libuv's millisecond clock; never early by more


@pytest.mark.parametrize("run", LOOPS)
def test_a_cancelled_deadline_never_runs_and_the_rest_still_do(run):
    async def main() -> list[str]:
        deadlines = Deadlines()
        now = asyncio.get_running_loop().time()
        fired: list[str] = []
        first = deadlines.call_at(now + 0.01, lambda: fired.append("first"))
        deadlines.call_at(now + 0.03, lambda: fired.append("second"))
        first.cancel()
        await asyncio.sleep(0.06)
        assert len(deadlines) == 0
        return fired

    assert run(main()) == ["second"]


def test_a_callback_may_add_deadlines_and_a_failing_one_stops_no_other():
    async def main() -> list[str]:
        deadlines = Deadlines()
        loop = asyncio.get_running_loop()
        fired: list[str] = []

        def again() -> None:
            fired.append("again")
            deadlines.call_at(loop.time() + 0.01, lambda: fired.append("added"))

        def fail() -> None:
            raise RuntimeError("boom")

        now = loop.time()
        deadlines.call_at(now + 0.01, fail)
        deadlines.call_at(now + 0.01, again)
        await asyncio.sleep(0.05)
        return fired

    assert asyncio.run(main()) == ["again", "added"]


@pytest.mark.parametrize("run", LOOPS)
def test_a_timeout_turns_its_own_cancel_into_timeout_error(run):
    async def main() -> bool:
        deadlines = Deadlines()
        with pytest.raises(TimeoutError), deadlines.timeout(0.01) as scope:
            await asyncio.sleep(1)
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # nothing left to cancel this task
        return scope.expired

    assert run(main()) is True


def test_a_timeout_not_reached_leaves_nothing_behind():
    async def main() -> None:
        deadlines = Deadlines()
        with deadlines.timeout(0.05) as scope:
            await asyncio.sleep(0.01)
        assert not scope.expired and len(deadlines) == 0
        await asyncio.sleep(0.08)  # its deadline passes: nothing is cancelled

    asyncio.run(main())


def test_a_cancel_from_elsewhere_passes_through_a_timeout():
    async def main() -> None:
        deadlines = Deadlines()

        async def waiting() -> None:
            with deadlines.timeout(10):
                await asyncio.sleep(10)

        task = asyncio.ensure_future(waiting())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_nested_timeouts_each_answer_for_their_own_deadline():
    async def main() -> tuple[str, str]:
        deadlines = Deadlines()
        inner_first = outer_first = ""
        # The inner one expires: the outer one does not see it.
        with pytest.raises(TimeoutError), deadlines.timeout(10):
            try:
                with deadlines.timeout(0.01):
                    await asyncio.sleep(1)
            except TimeoutError:
                inner_first = "inner"
                raise
        # The outer one expires inside the inner one.
        with (
            pytest.raises(TimeoutError),
            deadlines.timeout(0.01) as outer,
            deadlines.timeout(10) as inner,
        ):
            await asyncio.sleep(1)
        assert outer.expired and not inner.expired
        outer_first = "outer"
        return inner_first, outer_first

    assert asyncio.run(main()) == ("inner", "outer")


def test_expire_ends_a_timeout_early():
    async def main() -> float:
        deadlines = Deadlines()
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def waiting() -> None:
            with deadlines.timeout(10) as scope:
                loop.call_later(0.01, scope.expire)
                await asyncio.sleep(10)

        with pytest.raises(TimeoutError):
            await waiting()
        return loop.time() - started

    assert asyncio.run(main()) < 1


def test_when_both_expire_at_once_the_outer_timeout_answers():
    async def main() -> bool:
        deadlines = Deadlines()
        when = asyncio.get_running_loop().time() + 0.01
        inner_answered = False
        with pytest.raises(TimeoutError), deadlines.timeout_at(when):
            try:
                with deadlines.timeout_at(when):
                    await asyncio.sleep(1)
            except TimeoutError:
                inner_answered = True
                raise
        return inner_answered

    assert asyncio.run(main()) is False


def test_a_cancel_from_elsewhere_wins_over_a_deadline_reached_with_it():
    async def main() -> None:
        deadlines = Deadlines()

        async def waiting() -> None:
            with deadlines.timeout(10) as scope:
                task = asyncio.current_task()
                assert task is not None

                def both() -> None:
                    scope.expire()
                    task.cancel()

                asyncio.get_running_loop().call_later(0.01, both)
                await asyncio.sleep(10)

        with pytest.raises(asyncio.CancelledError):
            await asyncio.ensure_future(waiting())

    asyncio.run(main())
