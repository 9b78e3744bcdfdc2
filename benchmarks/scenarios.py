"""The scenarios of issues 6 and 17, each a short function over the running systems.

Systems are measured back to back inside each scenario (direct, callmissed, litellm), so slow
drift in the machine's other load hits all of them alike. Every measurement is one load
generator process; while it runs we sample the server's process tree for CPU and RSS and the
whole machine's busy time, so a report can say how much foreign load it ran next to.
Overhead, throughput, profile, held streams and capacity run once per upstream path
(systems.PATHS); the rest over plain HTTP/1.1. Capacity runs on servers started for it, so that
their memory is the held streams' and not what earlier scenarios left behind.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import profile
from benchmarks.machine import CpuClock, ProcessTree
from benchmarks.systems import (
    ROOT,
    CallMissed,
    CallMissedOtel,
    Running,
    Upstreams,
    hedging_available,
)

__all__ = ["PROFILES", "Profile", "Suite", "hedging_status", "holds"]

Row = dict[str, Any]


@dataclass(frozen=True)
class Timing:
    warmup: float
    duration: float
    grace: float = 2.0


@dataclass(frozen=True)
class Profile:
    overhead: Timing
    overhead_rounds: int
    throughput: Timing
    levels: tuple[int, ...]
    held: Timing
    held_streams: int
    http2: Timing
    http2_levels: tuple[int, ...]
    hedging: Timing
    hedging_concurrency: int
    failover: Timing
    failover_concurrency: int
    startup_launches: int
    capacity: Timing
    capacity_steps: tuple[int, ...] = (100, 200, 400, 800, 1600)
    profile_seconds: int = 4  # py-spy's sampling at c=64, per upstream path


PROFILES = {
    "full": Profile(
        overhead=Timing(0.5, 2.0),
        overhead_rounds=4,
        throughput=Timing(1.0, 5.0),
        levels=(16, 64, 256),
        held=Timing(2.0, 8.0),
        held_streams=1000,
        http2=Timing(1.0, 5.0),
        http2_levels=(1, 64),
        hedging=Timing(1.0, 10.0),
        hedging_concurrency=8,
        failover=Timing(1.0, 10.0),
        failover_concurrency=16,
        startup_launches=3,
        capacity=Timing(1.5, 5.0),
    ),
    "quick": Profile(
        overhead=Timing(0.3, 1.5, 1.0),
        overhead_rounds=2,
        throughput=Timing(0.5, 1.5, 1.0),
        levels=(16, 64, 256),
        held=Timing(1.0, 2.0, 1.0),
        held_streams=1000,
        http2=Timing(0.5, 1.5, 1.0),
        http2_levels=(1, 64),
        hedging=Timing(0.5, 2.5, 1.0),
        hedging_concurrency=8,
        failover=Timing(0.3, 1.0, 0.5),
        failover_concurrency=16,
        startup_launches=1,
        capacity=Timing(1.0, 2.0, 1.0),
        capacity_steps=(100, 400, 1600),
        profile_seconds=2,
    ),
}


Relaunch = Callable[[str], AbstractContextManager[list[Running]]]


class Suite:
    """Runs scenarios against started systems; collects one row per measurement.

    `relaunch(path)` gives fresh copies of the systems over `path`, stopped when its block
    ends (the capacity scenario's); without it, capacity measures the running ones."""

    def __init__(
        self,
        plan: Profile,
        paths: dict[str, list[Running]],
        upstreams: Upstreams,
        workdir: Path,
        relaunch: Relaunch | None = None,
    ) -> None:
        self.plan = plan
        self.paths = paths
        self.systems = paths.get("http", [])  # what the plain-HTTP-only scenarios measure
        self.upstreams = upstreams
        self.workdir = workdir
        self.relaunch = relaunch
        self.rows: list[Row] = []
        self._extra: list[Running] = []  # started for one scenario: settled like the rest

    # -- scenarios ----------------------------------------------------------------------------

    def overhead(self) -> None:
        """Short rounds, every system back to back in each, then the median of the rounds:
        other load on a shared machine drifts, and this keeps it from landing on one system."""
        rounds = self.plan.overhead_rounds
        for path, systems in self.paths.items():
            for index in range(rounds):
                for system in systems:
                    self._measure("overhead-round", system, "fast", 1, self.plan.overhead)
                    self.rows[-1]["round"] = index + 1
            for system in systems:
                measured = [
                    row
                    for row in self.rows
                    if row["scenario"] == "overhead-round"
                    and row["system"] == system.name
                    and row["upstream"] == path
                ]
                row = {**_median_row(measured), "scenario": "overhead", "rounds": rounds}
                self.rows.append(row)

    def throughput(self) -> None:
        for systems in self.paths.values():
            for concurrency in self.plan.levels:
                for system in systems:
                    timing = self.plan.throughput
                    self._measure("throughput", system, "fast", concurrency, timing)

    def held(self) -> None:
        for systems in self.paths.values():
            for system in systems:
                count, timing = self.plan.held_streams, self.plan.held
                self._measure("held", system, "paced", count, timing, gaps=True)

    def capacity(self) -> None:
        """Held streams stepped up (Profile.capacity_steps) on freshly started servers: a
        system's capacity is the largest count it holds with added gap p99 ≤ 5 ms over direct
        and no stall ≥ 100 ms (report_streams.py). A system that missed stops stepping once it
        has run two steps (RSS per stream is a slope); direct steps while anyone does."""
        for path, systems in self.paths.items():
            if self.relaunch is None:
                self._capacity_steps(systems)
                continue
            print(f"  starting fresh servers ({path}) …", flush=True)
            with self.relaunch(path) as fresh:
                self._extra = fresh
                try:
                    self._capacity_steps(fresh)
                finally:
                    self._extra = []

    def _capacity_steps(self, systems: list[Running]) -> None:
        stepping = {system.name for system in systems}
        for count in self.plan.capacity_steps:
            if not stepping - {"direct"}:
                break
            direct = None
            for system in systems:
                if system.name not in stepping:
                    continue
                self._measure("capacity", system, "paced", count, self.plan.capacity, gaps=True)
                row = self.rows[-1]
                if system.name == "direct":
                    direct = row
                elif not holds(row, direct) and _steps_run(self.rows, row) >= 2:
                    stepping.discard(system.name)

    def profile(self) -> None:
        """py-spy over callmissed at c=64 (benchmarks/profile.py): each module's share of its
        samples, for the report's "where the time goes". Sampling slows the gateway, so this
        run's own numbers are not kept."""
        seconds = self.plan.profile_seconds
        timing = Timing(0.5, seconds + 3.0, 1.0)  # outlasts py-spy's start and its sampling
        for path, systems in self.paths.items():
            gateway = next((s for s in systems if s.name == "callmissed"), None)
            if gateway is None or gateway.process is None:
                continue
            print(f"  py-spy     callmissed  {path:6} fast   c=64    {seconds} s …", flush=True)
            self._settle()
            load = _loadgen_command(gateway, "fast", 64, timing, gaps=False, http2=False)
            out = self.workdir / f"profile-{path}.collapsed"
            try:
                profile.record(gateway.process.pid, load, seconds, out, after=timing.warmup)
            except RuntimeError as error:
                print(f"  skipped: {error}")
                return
            samples = profile.read(out)
            self.rows.append(
                {
                    "scenario": "profile",
                    "system": gateway.name,
                    "upstream": path,
                    "model": "fast",
                    "concurrency": 64,
                    "seconds": seconds,
                    "samples": sum(count for _, count in samples),
                    "modules": profile.by_module(samples),
                }
            )

    def http2(self) -> None:
        for system in self.systems:
            if system.name != "callmissed":
                continue  # the fake upstream and LiteLLM's uvicorn speak HTTP/1.1 only
            for concurrency in self.plan.http2_levels:
                self._measure("http2", system, "fast", concurrency, self.plan.http2, http2=True)

    def hedging(self) -> None:
        """A late first token 5% of the time: direct, through us unhedged, through us hedged."""
        timing, concurrency = self.plan.hedging, self.plan.hedging_concurrency
        for system in self.systems:
            if system.name in ("litellm", "passthrough"):
                continue
            self._measure("hedging", system, "late", concurrency, timing)
            if "hedged" in system.models:
                self._measure("hedging", system, "hedged", concurrency, timing)

    def failover(self) -> None:
        """One of two routes fails 30% of requests: direct to it, and through us with a fallback."""
        timing, concurrency = self.plan.failover, self.plan.failover_concurrency
        for system in self.systems:
            if system.name == "direct":
                self._measure("failover", system, "flaky", concurrency, timing)
            elif "failover" in system.models:
                self._measure("failover", system, "failover", concurrency, timing)

    def otel(self, callmissed: CallMissed | None) -> None:
        """Added time to first token with OpenTelemetry off vs. on (traces exported to a sink):
        the overhead scenario's interleaved rounds, callmissed without and with traces."""
        base = next((system for system in self.systems if system.name == "callmissed"), None)
        if callmissed is None or base is None:
            print("  needs the callmissed system: skipped")
            return
        print("  starting callmissed-otel …", flush=True)
        maker = CallMissedOtel.like(callmissed)
        try:
            traced = maker.start(self.upstreams, self.workdir)
            for index in range(self.plan.overhead_rounds):
                for system in (base, traced):
                    self._measure("otel-round", system, "fast", 1, self.plan.overhead)
                    self.rows[-1]["round"] = index + 1
        finally:
            maker.stop()
        for name in (base.name, traced.name):
            measured = [
                r for r in self.rows if r["scenario"] == "otel-round" and r["system"] == name
            ]
            rounds = self.plan.overhead_rounds
            self.rows.append({**_median_row(measured), "scenario": "otel", "rounds": rounds})

    def startup(self, callmissed: CallMissed | None) -> None:
        """Launch → healthy: the first start of each system, plus fresh gateway launches."""
        for system in self.systems:
            if system.startup_s is not None:
                self.rows.append(_startup_row(system.name, system.startup_s, "first start"))
        if callmissed is None:
            return
        for index in range(self.plan.startup_launches):
            extra = callmissed.launch(callmissed.env, self.workdir / f"startup-{index}.log")
            extra.stop()
            assert extra.startup_s is not None
            self.rows.append(_startup_row("callmissed", extra.startup_s, f"launch {index + 1}"))

    # -- one measurement ----------------------------------------------------------------------

    def _measure(
        self,
        scenario: str,
        system: Running,
        kind: str,
        concurrency: int,
        timing: Timing,
        *,
        gaps: bool = False,
        http2: bool = False,
    ) -> None:
        command = _loadgen_command(system, kind, concurrency, timing, gaps=gaps, http2=http2)
        label = f"{scenario:10} {system.name:11} {system.path:6} {kind:6} c={concurrency:<5}"
        print(f"  {label} {'h2' if http2 else 'h1'} …", end="", flush=True)
        self._settle()
        report = self._run_loadgen(command, system.tree, timing)
        row = {
            "scenario": scenario,
            "system": system.name,
            "model": kind,
            "protocol": "h2c" if http2 else "http/1.1",
            "upstream": system.path,
            **report,
        }
        self.rows.append(row)
        ttfb = report.get("ttfb_ms") or {}
        print(
            f" {report['rps']:>8,.0f} req/s  TTFB p50 {ttfb.get('p50', float('nan')):.3f}"
            f" p99 {ttfb.get('p99', float('nan')):.3f} ms  errors {sum(report['errors'].values())}"
            f"  unfinished {report['unfinished']}"
        )

    def _settle(self, limit: float = 45.0) -> None:
        """Wait until every system is idle: a slow one (LiteLLM after 1,000 held streams) keeps
        working through requests its client gave up on, and would load the next measurement."""
        trees = _trees([*(s for systems in self.paths.values() for s in systems), *self._extra])
        deadline = time.perf_counter() + limit
        while time.perf_counter() < deadline:
            before = sum(tree.cpu_seconds() for tree in trees)
            time.sleep(0.1)
            if sum(tree.cpu_seconds() for tree in trees) - before <= 0.03:  # ≤ 3 clock ticks
                return
        print(" (systems still busy after settling) …", end="", flush=True)

    def _run_loadgen(
        self, command: list[str], server: ProcessTree | None, timing: Timing
    ) -> dict[str, Any]:
        upstream = self._upstream_tree()
        before = _Snapshot.take(server, upstream)
        idle_rss = sum(server.rss_mib().values()) if server is not None else None
        peak: dict[int, float] = {}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=ROOT)
        limit = time.perf_counter() + timing.warmup + timing.duration + timing.grace + 30
        while process.poll() is None:
            if time.perf_counter() > limit:
                process.kill()
                raise RuntimeError("the load generator overran its time limit")
            if server is not None:
                sample = server.rss_mib()
                if sum(sample.values()) > sum(peak.values()):
                    peak = sample
            time.sleep(0.2)
        assert process.stdout is not None
        report: dict[str, Any] = json.loads(process.stdout.read())
        report.update(_Snapshot.take(server, upstream).costs_since(before))
        report["server_rss_peak_mib"] = round(sum(peak.values()), 1) if peak else None
        report["server_rss_by_process_mib"] = sorted(peak.values(), reverse=True)
        report["server_rss_before_mib"] = round(idle_rss, 1) if idle_rss is not None else None
        return report

    def _upstream_tree(self) -> ProcessTree:
        """The upstream processes: the plain one, and the HTTPS one when it runs."""
        tls = self.upstreams.tls
        others = (tls.process.pid,) if tls is not None else ()
        return ProcessTree(self.upstreams.plain.process.pid, others)


def _trees(systems: Iterable[Running]) -> list[ProcessTree]:
    """Each server's process tree once (one callmissed serves every path)."""
    found = {system.process.pid: system.tree for system in systems if system.process}
    return [tree for tree in found.values() if tree is not None]


def _steps_run(rows: list[Row], last: Row) -> int:
    """How many capacity steps the system of row `last` has run over its path."""
    same = ("capacity", last["system"], last["upstream"])
    return sum((row["scenario"], row["system"], row.get("upstream")) == same for row in rows)


def _median_row(rows: list[Row]) -> Row:
    """One row from several measurements of the same thing: medians, counts summed."""
    merged = dict(rows[0])
    merged.pop("round", None)
    for key, value in rows[0].items():
        if isinstance(value, dict) and key.endswith("_ms"):
            stats = [r[key] for r in rows if isinstance(r.get(key), dict)]
            merged[key] = {p: statistics.median(x[p] for x in stats) for p in value}
            merged[key]["count"] = sum(x["count"] for x in stats)
        elif isinstance(value, int | float) and key not in ("concurrency", "duration_s"):
            merged[key] = statistics.median(r[key] for r in rows)
    for key in ("ok", "unfinished"):
        merged[key] = sum(r[key] for r in rows)
    errors: dict[str, int] = {}
    for row in rows:
        for kind, count in row["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    merged["errors"] = errors
    return merged


def _loadgen_command(
    system: Running, kind: str, concurrency: int, timing: Timing, *, gaps: bool, http2: bool
) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.loadgen"]
    command += ["--url", f"{system.base_url}/chat/completions", "--key", system.key]
    command += ["--model", system.models[kind], "--concurrency", str(concurrency)]
    command += ["--warmup", str(timing.warmup), "--duration", str(timing.duration)]
    command += ["--grace", str(timing.grace), *system.client_args]
    if gaps:
        command.append("--gaps")
    if http2:
        command.append("--http2")
    return command


@dataclass(frozen=True)
class _Snapshot:
    at: float
    machine: float
    server: float
    server_loops: float
    upstream: float
    children: float
    own: float

    @classmethod
    def take(cls, server: ProcessTree | None, upstream: ProcessTree) -> _Snapshot:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            at=time.perf_counter(),
            machine=CpuClock.busy_seconds(),
            server=server.cpu_seconds() if server else 0.0,
            server_loops=server.main_thread_cpu_seconds() if server else 0.0,
            upstream=upstream.cpu_seconds(),
            children=children.ru_utime + children.ru_stime,
            own=own.ru_utime + own.ru_stime,
        )

    def costs_since(self, before: _Snapshot) -> dict[str, float]:
        """CPU in cores (1.0 = one core busy) over the interval, ours and everyone else's."""
        wall = self.at - before.at
        server = self.server - before.server
        upstream = self.upstream - before.upstream
        loadgen = self.children - before.children  # the load generator, reaped meanwhile
        own = self.own - before.own
        machine = self.machine - before.machine
        other = machine - server - upstream - loadgen - own
        return {
            "wall_s": round(wall, 3),
            "server_cpu_s": round(server, 4),
            "server_loop_cpu_s": round(self.server_loops - before.server_loops, 4),
            "server_cpu_cores": round(server / wall, 3),
            "upstream_cpu_cores": round(upstream / wall, 3),
            "loadgen_cpu_cores": round(loadgen / wall, 3),
            "other_load_cores": round(max(other, 0.0) / wall, 3),
        }


def _startup_row(system: str, seconds: float, label: str) -> Row:
    print(f"  startup    {system:10} {label}: {seconds:.3f} s")
    return {"scenario": "startup", "system": system, "label": label, "seconds": round(seconds, 3)}


CAPACITY_ADDED_GAP_P99_MS = 5.0
STALL_MS = 100.0


def holds(row: Row, direct: Row | None) -> bool:
    """Whether a capacity step held: added gap p99 ≤ 5 ms over direct's at the same count, no
    stall, every stream answered."""
    if row.get("stalls", 0) or row.get("errors") or row.get("unfinished"):
        return False
    ours = (row.get("gap_ms") or {}).get("p99")
    floor = ((direct or {}).get("gap_ms") or {}).get("p99")
    if ours is None or floor is None:
        return False
    return bool(ours - floor <= CAPACITY_ADDED_GAP_P99_MS)


def hedging_status() -> str:
    if hedging_available():
        return "available"
    return "pending: this checkout's callmissed has no per-model hedge_after_ms yet (issue 5)"
