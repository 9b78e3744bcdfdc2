"""Before/after in one run: this checkout's gateway against another checkout's, interleaved.

    git worktree add /tmp/before <commit>
    python -m benchmarks.ab --baseline /tmp/before [--rounds 3] [--seconds 3] [--path h2-tls]
        [--passthrough] [--workers N]

Both gateways run from this checkout's venv (the baseline's package is put first on its
PYTHONPATH), against one fake upstream reached over `--path` (benchmarks/systems.py PATHS),
each with its own database and a metered key, as the suite runs them. Rounds alternate direct,
(with `--passthrough`, the bare pass-through: our stack's floor), baseline and current at c=1
and c=64, so drifting machine load lands on all of them alike; the table shows each one's
medians over the rounds, and the server's CPU per answer: all its processes, and the workers'
main threads alone, where their event loops run (issue 17's "event-loop CPU per request").
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    Passthrough,
    Running,
    System,
    TLSUpstream,
    Upstream,
    Upstreams,
)
from callmissed.settings import available_cores

__all__ = ["main"]


def _loadgen(system: Running, concurrency: int, seconds: float, model: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.loadgen", "--url"]
    command += [f"{system.base_url}/chat/completions", "--key", system.key]
    command += ["--model", system.models[model], "--concurrency", str(concurrency)]
    command += ["--warmup", "0.5", "--duration", str(seconds), *system.client_args]
    if model == "paced":
        command.append("--gaps")
    output = subprocess.run(command, capture_output=True, check=True, cwd=ROOT).stdout
    report: dict[str, Any] = json.loads(output)
    return report


def _measure(system: Running, concurrency: int, seconds: float, model: str) -> dict[str, Any]:
    """One load-generator run, with the server's CPU over it per answer and per chunk."""
    tree = system.tree
    before = (tree.cpu_seconds(), tree.main_thread_cpu_seconds()) if tree else (0.0, 0.0)
    report = _loadgen(system, concurrency, seconds, model)
    if tree is not None:
        chunks = max(report["chunks_total"], 1)
        report["cpu_us"] = (tree.cpu_seconds() - before[0]) / chunks * 20e6
        report["loop_cpu_us"] = (tree.main_thread_cpu_seconds() - before[1]) / chunks * 20e6
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="a checkout (git worktree) to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--path", choices=PATHS, default="http", help="how the upstream is reached")
    parser.add_argument("--passthrough", action="store_true", help="measure the pass-through too")
    parser.add_argument("--workers", type=int, default=available_cores())
    parser.add_argument(
        "--model",
        choices=("fast", "paced"),
        default="fast",
        help="fast: the whole answer at once; paced: a chunk every 20 ms (held streams)",
    )
    parser.add_argument(
        "--concurrency", default="1,64", help="comma-separated concurrencies (paced: e.g. 200)"
    )
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="callmissed-ab-"))
    upstream = Upstreams(Upstream(workdir, pace_ms=20, late_pct=0, late_ms=0))
    if args.path != "http":
        upstream.tls = TLSUpstream(workdir, pace_ms=20, late_pct=0, late_ms=0, fail_pct=0)
    baseline_env = {"PYTHONPATH": str(Path(args.baseline).resolve())}
    gateways: dict[str, System] = {
        "baseline": CallMissed(args.workers, extra_env=baseline_env),
        "current": CallMissed(args.workers),
    }
    if args.passthrough:
        gateways = {"passthrough": Passthrough(args.workers), **gateways}
    systems = {"direct": Direct().start(upstream, workdir, args.path)}
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        for name, gateway in gateways.items():
            (workdir / name).mkdir()
            systems[name] = gateway.start(upstream, workdir / name, args.path)
        for _ in range(args.rounds):
            for concurrency in concurrencies:
                for name, system in systems.items():
                    report = _measure(system, concurrency, args.seconds, args.model)
                    samples.setdefault((name, concurrency), []).append(report)
    finally:
        for system in systems.values():
            system.stop()  # a CallMissed's own stop() below also drops a postgres schema
        for gateway in gateways.values():
            if isinstance(gateway, CallMissed):
                gateway.stop()
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)  # databases, journals, logs
    _print_table(samples, list(systems), concurrencies)


def _print_table(
    samples: dict[tuple[str, int], list[dict[str, Any]]], names: list[str], concurrencies: list[int]
) -> None:
    """Medians per system and concurrency; CPU is per 20 chunks (one benchmark answer's worth,
    so per answer for the fast model and comparable across models)."""
    print(
        "| c | system | req/s | TTFB p50 ms | TTFB p99 ms | added p50 | added p99 "
        "| of direct req/s | gap p99 ms | server CPU µs / 20 chunks "
        "| event-loop CPU µs / 20 chunks |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for concurrency in concurrencies:
        floor = _medians(samples[("direct", concurrency)])
        for name in names:
            reports = samples[(name, concurrency)]
            rps, p50, p99 = _medians(reports)
            direct = name == "direct"
            cells = [
                str(concurrency),
                name,
                f"{rps:,.0f}",
                f"{p50:.3f}",
                f"{p99:.3f}",
                "—" if direct else f"+{p50 - floor[1]:.2f}",
                "—" if direct else f"+{p99 - floor[2]:.2f}",
                f"{rps / floor[0]:.0%}",
                _gap_p99(reports),
                "—" if direct else f"{statistics.median(r['cpu_us'] for r in reports):.0f}",
                "—" if direct else f"{statistics.median(r['loop_cpu_us'] for r in reports):.0f}",
            ]
            print(f"| {' | '.join(cells)} |")


def _gap_p99(reports: list[dict[str, Any]]) -> str:
    gaps = [r["gap_ms"]["p99"] for r in reports if r.get("gap_ms")]
    return f"{statistics.median(gaps):.1f}" if gaps else "—"


def _medians(reports: list[dict[str, Any]]) -> tuple[float, float, float]:
    return (
        statistics.median(r["rps"] for r in reports),
        statistics.median(r["ttfb_ms"]["p50"] for r in reports),
        statistics.median(r["ttfb_ms"]["p99"] for r in reports),
    )


if __name__ == "__main__":
    main()
