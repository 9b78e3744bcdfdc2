"""The cyclic garbage collector, tuned for a server process holding many live streams.

CPython collects its youngest generation every 700 net container allocations, and now and
then every object alive. A worker holding a thousand streams has ~50-80 live containers per
stream (its task's frames, the parsed request, its charge and trace; counted in-process with
gc.get_objects()), so with the defaults it spent about a fifth of its event loop's CPU in the
collector (`perf record` of a worker at 1,000 held streams), and a full collection — every
container the process has, the ~26,000 start-up left (modules, catalog, settings) included —
paused the loop for ~30 ms at a time, which a held stream sees as a gap.

A request makes no reference cycles (tests/edge/test_garbage.py), so its objects go when their
count does and the collector is needed only for the rare cycle. So, once the worker has
started: what start-up made is frozen (gc.freeze(): never scanned again, never freed, like the
modules it mostly is), and the youngest generation is collected every 10,000 allocations, not
700. The older two keep their defaults, so a cycle that lives long is still found.
Measured in-process with 1,000 paced streams (`python -m benchmarks.inprocess --held 1000`,
against `--default-gc`): the collector's share of CPU 22-27 % → 5-9 %, its longest pause
25-50 → 7-12 ms.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_collector"]

YOUNG_THRESHOLD = 10_000  # net container allocations between young collections (default 700)


def tune_collector() -> None:
    """Freeze what start-up made, and collect the young generation less often. Call once, in a
    worker process, after the app has started (never in a process that builds many apps)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
