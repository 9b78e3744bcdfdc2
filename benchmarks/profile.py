"""Profile the gateway under load: `python -m benchmarks.profile [--concurrency 64] [--seconds 10]`.

Starts the fake upstream and `callmissed serve` as in the suite, drives them with the load
generator while py-spy samples the gateway's process tree (granian's workers are children),
then prints the functions with the most samples, self and inclusive, and writes the collapsed
stacks (for flamegraph tools or speedscope) to benchmarks/results/tmp/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.systems import ROOT, CallMissed, Upstream, Upstreams

__all__ = ["main"]


def _read(collapsed: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples.append((stack.split(";"), int(count)))
    return samples


def _owner(frames: list[str]) -> str:
    """The deepest callmissed module on the stack: what the sample was spent for."""
    for frame in reversed(frames):
        if "(callmissed/" in frame and "callmissed/cli.py" not in frame:
            return frame.split("(callmissed/", 1)[1].split(":", 1)[0]
    if frames and frames[-1].startswith("process "):
        return "(native: granian's Rust HTTP server, no Python frame)"
    return "(Python outside callmissed: granian glue, asyncio loop)"


def _by_module(samples: list[tuple[list[str], int]]) -> str:
    owners: Counter[str] = Counter()
    for frames, count in samples:
        owners[_owner(frames)] += count
    total = sum(owners.values())
    lines = ["where the time goes (deepest callmissed module, libraries it calls included):"]
    lines += [f"{n / total:6.1%}  {owner}" for owner, n in owners.most_common()]
    return "\n".join(lines)


def _top(samples: list[tuple[list[str], int]], limit: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in samples:
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "self:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in own.most_common(limit)]
    lines += ["", "inclusive:"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(limit)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", default="fast", choices=("fast", "paced"))
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--idle", action="store_true", help="sample waiting threads too (where wall time goes)"
    )
    args = parser.parse_args()
    workdir = ROOT / "benchmarks" / "results" / "tmp" / f"profile-{time.strftime('%H%M%S')}"
    workdir.mkdir(parents=True)
    upstream = Upstream(workdir, 20.0, 0.0, 0.0)
    gateway = CallMissed().start(Upstreams(upstream), workdir)
    collapsed = workdir / "gateway.collapsed"
    try:
        assert gateway.process is not None
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
             str(gateway.process.pid), "--subprocesses", "--rate", str(args.rate),
             "--format", "raw", "--output", str(collapsed), "--duration", str(int(args.seconds)),
             *(["--idle"] if args.idle else [])],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        load = [sys.executable, "-m", "benchmarks.loadgen", "--url",
                f"{gateway.base_url}/chat/completions", "--key", gateway.key,
                "--model", f"bench-{args.model}", "--concurrency", str(args.concurrency),
                "--warmup", "0", "--duration", str(args.seconds)]  # fmt: skip
        print(subprocess.run(load, capture_output=True, text=True, check=True).stdout)
        spy.wait(timeout=30)
    finally:
        gateway.stop()
        upstream.stop()
    samples = _read(collapsed)
    print(_top(samples, args.top))
    print()
    print(_by_module(samples))
    print(f"\ncollapsed stacks: {collapsed.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
