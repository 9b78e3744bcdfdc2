"""Count the asyncio tasks the gateway creates per request: `python -m benchmarks.tasks`.

Every task is a scheduling round trip and ~2-5 us of CPU, and at concurrency 1 each extra hop
is latency. This starts the fake upstream and `callmissed serve` with a task factory that
counts tasks by coroutine name (benchmarks/taskcount/sitecustomize.py), sends N streamed
requests one at a time, and prints tasks per request.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.systems import ROOT, CallMissed, Upstream, Upstreams

__all__ = ["main"]


def _read_counts(folder: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in folder.glob("tasks-*.txt"):
        for line in path.read_text().splitlines():
            number, _, name = line.partition(" ")
            counts[name] = counts.get(name, 0) + int(number)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    workdir = ROOT / "benchmarks" / "results" / "tmp" / f"tasks-{time.strftime('%H%M%S')}"
    workdir.mkdir(parents=True)
    upstream = Upstream(workdir, 20.0, 0.0, 0.0)
    hook = {
        "PYTHONPATH": str(ROOT / "benchmarks" / "taskcount"),
        "CALLMISSED_BENCH_TASKS": str(workdir),
    }
    gateway = CallMissed(extra_env=hook).start(Upstreams(upstream), workdir)
    try:
        time.sleep(0.6)
        before = _read_counts(workdir)
        load = [sys.executable, "-m", "benchmarks.loadgen", "--url",
                f"{gateway.base_url}/chat/completions", "--key", gateway.key,
                "--model", "bench-fast", "--warmup", "0", "--duration", "60",
                "--max-requests", str(args.requests)]  # fmt: skip
        subprocess.run(load, capture_output=True, check=True)
        time.sleep(1.0)  # let the hook write its counts
        after = _read_counts(workdir)
    finally:
        gateway.stop()
        upstream.stop()
    print(f"tasks per streamed request ({args.requests} requests, concurrency 1):")
    total = 0.0
    for name, count in sorted(after.items(), key=lambda item: -item[1]):
        per = (count - before.get(name, 0)) / args.requests
        if per >= 0.01:
            total += per
            print(f"{per:6.2f}  {name}")
    print(f"{total:6.2f}  in all")


if __name__ == "__main__":
    main()
