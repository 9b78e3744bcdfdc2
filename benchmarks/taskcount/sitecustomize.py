"""Loaded by `python -m benchmarks.tasks` into the gateway (via PYTHONPATH): counts the asyncio
tasks each worker creates, by coroutine name, into $CALLMISSED_BENCH_TASKS/tasks-<pid>.txt."""

import os

if os.environ.get("CALLMISSED_BENCH_TASKS"):
    import asyncio
    import collections
    import threading
    import time

    import uvloop

    _counts: collections.Counter[str] = collections.Counter()
    _new_event_loop = uvloop.new_event_loop

    def _count(loop, coro, **kwargs):
        _counts[getattr(coro, "__qualname__", type(coro).__name__)] += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    def _write_forever() -> None:
        path = os.path.join(os.environ["CALLMISSED_BENCH_TASKS"], f"tasks-{os.getpid()}.txt")
        while True:
            time.sleep(0.5)
            with open(path, "w") as out:
                out.writelines(f"{n} {name}\n" for name, n in _counts.most_common())

    def _counting_loop():
        loop = _new_event_loop()
        loop.set_task_factory(_count)
        threading.Thread(target=_write_forever, daemon=True).start()
        return loop

    uvloop.new_event_loop = _counting_loop  # granian builds each worker's loop with it
