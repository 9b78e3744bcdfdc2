"""`python -m benchmarks run [--quick] [--systems …] [--scenarios …] [--paths …] [--store …]
[--pin]`; `python -m benchmarks abuse [--scale S]`: issue 12's attacks (benchmarks/abuse.py).

Starts the fake upstream, the systems and one load generator per measurement as separate
processes on 127.0.0.1, runs the scenarios, and writes results.json, report.md and PNG charts
to benchmarks/results/<time>-<profile>/. With --pin the load side (this runner, the load
generator, the fake upstreams) runs on one half of the CPUs and every server under test on the
other. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson

from benchmarks.litellm_env import LITELLM_VERSION
from benchmarks.machine import Placement, describe_machine, git_revision, package_versions
from benchmarks.report import write_report
from benchmarks.scenarios import PROFILES, Suite, hedging_status
from benchmarks.systems import (
    PATHS,
    ROOT,
    CallMissed,
    Direct,
    LiteLLM,
    Passthrough,
    Running,
    System,
    TLSUpstream,
    Upstream,
    Upstreams,
)
from callmissed.settings import available_cores

SYSTEMS = ("direct", "passthrough", "callmissed", "litellm")
SCENARIOS = (
    "overhead",
    "throughput",
    "profile",
    "held",
    "capacity",
    "http2",
    "startup",
    "hedging",
    "failover",
    "otel",
)
PATH_SCENARIOS = ("overhead", "throughput", "profile", "held", "capacity")  # rest: plain HTTP
RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["abuse"]:
        from benchmarks.abuse import main as abuse

        return abuse(words[1:])
    args = _parser().parse_args(argv)
    if args.command != "run":
        return 2
    profile_name = "quick" if args.quick else "full"
    systems = _csv(args.systems, SYSTEMS) or (
        ["direct", "callmissed"] if args.quick else list(SYSTEMS)
    )
    scenarios = _csv(args.scenarios, SCENARIOS) or list(SCENARIOS)
    paths = _csv(args.paths, PATHS) or (["http"] if args.quick else list(PATHS))
    if not set(scenarios) & set(PATH_SCENARIOS):
        paths = ["http"]
    placement = _place(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out).resolve() if args.out else RESULTS / f"{stamp}-{profile_name}"
    workdir = RESULTS / "tmp" / stamp
    out.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = _meta(args, profile_name, systems, scenarios, argv)
    meta["paths"] = paths
    meta["placement"] = {"load": placement.load, "server": placement.server}
    meta["cores"] = placement.describe(args.workers)
    began = time.perf_counter()
    rows = _run(args, placement, profile_name, systems, scenarios, paths, workdir)
    meta["elapsed_s"] = round(time.perf_counter() - began, 1)
    meta["machine_after"] = {"load_average": describe_machine()["load_average"]}
    results = {"meta": meta, "rows": rows}
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    write_report(results, out)
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"\nresults: {shown}/ (report.md, results.json, *.png)")
    print(f"elapsed: {meta['elapsed_s']} s")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("abuse", help="issue 12's attacks: see python -m benchmarks abuse -h")
    run = commands.add_parser("run", help="run the suite")
    run.add_argument("--quick", action="store_true", help="short runs (≤ 60 s), no LiteLLM")
    run.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    run.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    run.add_argument(
        "--workers",
        type=int,
        help="worker processes of callmissed and passthrough (default: callmissed's, one a core"
        " it may use: with --pin, the server's)",
    )
    run.add_argument(
        "--pin",
        action="store_true",
        help="load generator and upstreams on one half of the CPUs, the server under test on the"
        " other (default: unpinned, as a deployment's workers use every core)",
    )
    run.add_argument(
        "--server",
        choices=("granian", "uvicorn"),
        default="granian",
        help="server under callmissed and passthrough (uvicorn: comparison only, no HTTP/2)",
    )
    run.add_argument("--hedge-after-ms", type=float, default=50.0)
    run.add_argument("--late-ms", type=float, default=500.0, help="how late a late token is")
    run.add_argument("--late-pct", type=float, default=5.0, help="how often it is late")
    run.add_argument("--pace-ms", type=float, default=20.0, help="gap between held tokens")
    run.add_argument(
        "--fail-pct", type=float, default=30.0, help="how often the failover route fails"
    )
    run.add_argument("--held-streams", type=int, default=1000, help="concurrent held streams")
    run.add_argument(
        "--paths",
        help=f"how the upstream is reached, comma-separated subset of {','.join(PATHS)} "
        "(default: all; --quick: http)",
    )
    run.add_argument(
        "--store",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="callmissed's store: SQLite, or PostgreSQL + Redis on 127.0.0.1 (scale-out mode)",
    )
    run.add_argument(
        "--capacity-steps", help="held-stream counts the capacity scenario steps through"
    )
    run.add_argument("--out", help="results folder (default benchmarks/results/<time>-<profile>)")
    return parser


def _place(args: argparse.Namespace) -> Placement:
    """Where the two sides run (--pin), and so how many workers a server gets by default. This
    process moves to the load side's CPUs, which every process it starts inherits; the servers
    are started on theirs (systems.py)."""
    placement = Placement.split(os.sched_getaffinity(0)) if args.pin else Placement()
    if placement.load:
        os.sched_setaffinity(0, placement.load)
    args.workers = args.workers or len(placement.server) or available_cores()
    return placement


def _csv(text: str | None, known: tuple[str, ...]) -> list[str]:
    if not text:
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {unknown}; choose from {', '.join(known)}")
    return [name for name in known if name in names]  # canonical order


def _run(
    args: argparse.Namespace,
    placement: Placement,
    profile_name: str,
    systems: list[str],
    scenarios: list[str],
    paths: list[str],
    workdir: Path,
) -> list[dict[str, Any]]:
    plan = dataclasses.replace(PROFILES[profile_name], held_streams=args.held_streams)
    if args.capacity_steps:
        steps = tuple(int(step) for step in args.capacity_steps.split(","))
        plan = dataclasses.replace(plan, capacity_steps=steps)
    makers = _makers(args, placement)
    knobs = (args.pace_ms, args.late_pct, args.late_ms, args.fail_pct)
    with ExitStack() as stack:
        upstreams = Upstreams(Upstream(workdir, *knobs))
        stack.callback(upstreams.stop)
        if set(paths) - {"http"}:
            upstreams.tls = TLSUpstream(workdir, *knobs)
        running = {
            path: stack.enter_context(_started(makers, systems, upstreams, workdir, path))
            for path in paths
        }

        def relaunch(path: str) -> AbstractContextManager[list[Running]]:
            fresh = _makers(args, placement)
            return _started(fresh, systems, upstreams, workdir / f"fresh-{path}", path)

        suite = Suite(plan, running, upstreams, workdir, relaunch)
        callmissed = makers["callmissed"]
        assert isinstance(callmissed, CallMissed)
        for scenario in scenarios:
            print(f"{scenario}:", flush=True)
            if scenario in ("startup", "otel"):
                getattr(suite, scenario)(callmissed if "callmissed" in systems else None)
            else:
                getattr(suite, scenario)()
        return suite.rows


def _makers(args: argparse.Namespace, placement: Placement) -> dict[str, System]:
    """A system of each kind, each server on the server's CPUs (none when unpinned)."""
    cpus = placement.server
    return {
        "direct": Direct(),
        "passthrough": Passthrough(args.workers, args.server, cpus),
        "callmissed": CallMissed(
            args.workers, args.hedge_after_ms, args.server, store=args.store, cpus=cpus
        ),
        "litellm": LiteLLM(cpus),
    }


@contextmanager
def _started(
    makers: dict[str, System], systems: list[str], upstreams: Upstreams, workdir: Path, path: str
) -> Iterator[list[Running]]:
    """`systems` reached over `path`, stopped (and their makers) when the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        started = []
        for name in systems:
            if name == "litellm" and path != "http":
                continue  # the comparison with LiteLLM is made over plain HTTP
            print(f"starting {name} ({path}) …", flush=True)
            stack.callback(makers[name].stop)
            system = makers[name].start(upstreams, workdir, path)
            stack.callback(system.stop)
            started.append(system)
        yield started


def _meta(
    args: argparse.Namespace,
    profile: str,
    systems: list[str],
    scenarios: list[str],
    argv: list[str] | None,
) -> dict[str, Any]:
    words = argv if argv is not None else sys.argv[1:]
    return {
        "command": "python -m benchmarks " + shlex.join(words),
        "profile": profile,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "systems": systems,
        "scenarios": scenarios,
        "callmissed_workers": args.workers,
        "server": args.server,
        "store": args.store,
        "callmissed_revision": git_revision(ROOT),
        "hedging": hedging_status(),
        "upstream": {
            "chunks": 20,
            "pace_ms": args.pace_ms,
            "held_streams": args.held_streams,
            "late_pct": args.late_pct,
            "late_ms": args.late_ms,
            "hedge_after_ms": args.hedge_after_ms,
        },
        "machine": describe_machine(),
        "versions": {
            **package_versions(("granian", "uvicorn", "aiohttp", "orjson", "uvloop", "h2")),
            "litellm": LITELLM_VERSION if "litellm" in systems else "not run",
        },
        "profile_settings": repr(PROFILES[profile]),
    }


if __name__ == "__main__":
    sys.exit(main())
