"""Profile the gateway under load: `python -m benchmarks.profile [--concurrency 64] [--seconds 10]`.

Starts the fake upstream and `callmissed serve` as in the suite, drives them with the load
generator while py-spy samples the gateway's process tree (granian's workers are children),
then prints the functions with the most samples, self and inclusive, and each callmissed
module's share, and writes the collapsed stacks (for flamegraph tools or speedscope) to
benchmarks/results/tmp/. The suite's `profile` scenario (benchmarks/scenarios.py) samples with
the same `record()` and reports `by_module()`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.systems import ROOT, CallMissed, Upstream, Upstreams

__all__ = ["Samples", "by_module", "main", "read", "record"]

Samples = list[tuple[list[str], int]]  # (frames, outermost first; how many samples)


def record(
    pid: int,
    load: list[str],
    seconds: int,
    out: Path,
    *,
    after: float = 0.0,
    rate: int = 250,
    idle: bool = False,
) -> None:
    """Sample process `pid` and its child processes with py-spy for `seconds` while `load` (a
    load generator command that outlasts `after + seconds`) runs; py-spy starts `after`
    seconds into the load, and the load is stopped when it ends. Writes py-spy's collapsed
    stacks to `out`. Raises RuntimeError if py-spy is missing or fails."""
    binary = Path(sys.executable).parent / "py-spy"
    if not binary.exists():
        raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
    command = [str(binary), "record", "--pid", str(pid), "--subprocesses", "--rate", str(rate),
               "--format", "raw", "--output", str(out), "--duration", str(seconds),
               *(["--idle"] if idle else [])]  # fmt: skip
    loadgen = subprocess.Popen(load, stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        time.sleep(after)
        spy = subprocess.run(command, capture_output=True, timeout=seconds + 30, check=False)
    finally:
        loadgen.terminate()
        loadgen.wait(timeout=10)
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed: {spy.stderr.decode(errors='replace')[-500:]}")


def read(collapsed: Path) -> Samples:
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


def by_module(samples: Samples) -> list[tuple[str, float]]:
    """Each owner's share of the samples, largest first: the deepest callmissed module on the
    stack (the libraries it calls included), or native or other Python when there is none."""
    owners: Counter[str] = Counter()
    for frames, count in samples:
        owners[_owner(frames)] += count
    total = sum(owners.values())
    return [(owner, n / total) for owner, n in owners.most_common()]


def _top(samples: Samples, limit: int) -> str:
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
    parser.add_argument("--seconds", type=int, default=10)
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
    maker = CallMissed()
    collapsed = workdir / "gateway.collapsed"
    try:
        gateway = maker.start(Upstreams(upstream), workdir)
        assert gateway.process is not None
        load = [sys.executable, "-m", "benchmarks.loadgen", "--url",
                f"{gateway.base_url}/chat/completions", "--key", gateway.key,
                "--model", f"bench-{args.model}", "--concurrency", str(args.concurrency),
                "--warmup", "0.5", "--duration", str(args.seconds + 5)]  # fmt: skip
        record(gateway.process.pid, load, args.seconds, collapsed, after=0.5,
               rate=args.rate, idle=args.idle)  # fmt: skip
    finally:
        maker.stop()
        upstream.stop()
    samples = read(collapsed)
    print(_top(samples, args.top))
    print("\nwhere the time goes (deepest callmissed module, libraries it calls included):")
    print("\n".join(f"{share:6.1%}  {owner}" for owner, share in by_module(samples)))
    print(f"\ncollapsed stacks: {collapsed.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
