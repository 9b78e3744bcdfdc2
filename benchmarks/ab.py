"""Before/after in one run: this checkout's gateway against another checkout's, interleaved.

    git worktree add /tmp/before <commit>
    python -m benchmarks.ab --baseline /tmp/before [--rounds 3] [--seconds 3] [--path h2-tls]

Both gateways run from this checkout's venv (the baseline's package is put first on its
PYTHONPATH), against one fake upstream reached over `--path` (benchmarks/systems.py PATHS),
each with its own database and a metered key, as the suite runs them. Rounds alternate direct,
baseline and current at c=1 and c=64, so drifting machine load lands on all three alike; the
table shows each one's medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.systems import (
    PATHS,
    ROOT,
    CallMissed,
    Direct,
    Running,
    TLSUpstream,
    Upstream,
    Upstreams,
)

__all__ = ["main"]


def _loadgen(system: Running, concurrency: int, seconds: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.loadgen", "--url"]
    command += [f"{system.base_url}/chat/completions", "--key", system.key]
    command += ["--model", system.models["fast"], "--concurrency", str(concurrency)]
    command += ["--warmup", "0.5", "--duration", str(seconds), *system.client_args]
    output = subprocess.run(command, capture_output=True, check=True, cwd=ROOT).stdout
    report: dict[str, Any] = json.loads(output)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a checkout (git worktree) to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--path", choices=PATHS, default="http", help="how the upstream is reached")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="callmissed-ab-"))
    upstream = Upstreams(Upstream(workdir, pace_ms=20, late_pct=0, late_ms=0))
    if args.path != "http":
        upstream.tls = TLSUpstream(workdir, pace_ms=20, late_pct=0, late_ms=0, fail_pct=0)
    baseline = CallMissed(extra_env={"PYTHONPATH": str(Path(args.baseline).resolve())})
    current = CallMissed()
    systems = {
        "direct": Direct().start(upstream, workdir, args.path),
        "baseline": baseline.start(upstream, workdir / "baseline", args.path),
        "current": current.start(upstream, workdir / "current", args.path),
    }
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for _ in range(args.rounds):
            for concurrency in (1, 64):
                for name, system in systems.items():
                    report = _loadgen(system, concurrency, args.seconds)
                    samples.setdefault((name, concurrency), []).append(report)
    finally:
        baseline.stop()
        current.stop()
        upstream.stop()
    print("| c | system | req/s | TTFB p50 ms | TTFB p99 ms | added p50 | of direct req/s |")
    print("|---|---|---|---|---|---|---|")
    for concurrency in (1, 64):
        floor = _medians(samples[("direct", concurrency)])
        for name in systems:
            rps, p50, p99 = _medians(samples[(name, concurrency)])
            added = "—" if name == "direct" else f"+{p50 - floor[1]:.2f}"
            share = f"{rps / floor[0]:.0%}"
            cells = [
                str(concurrency),
                name,
                f"{rps:,.0f}",
                f"{p50:.3f}",
                f"{p99:.3f}",
                added,
                share,
            ]
            print(f"| {' | '.join(cells)} |")


def _medians(reports: list[dict[str, Any]]) -> tuple[float, float, float]:
    return (
        statistics.median(r["rps"] for r in reports),
        statistics.median(r["ttfb_ms"]["p50"] for r in reports),
        statistics.median(r["ttfb_ms"]["p99"] for r in reports),
    )


if __name__ == "__main__":
    main()
