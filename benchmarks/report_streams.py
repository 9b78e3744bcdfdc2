"""The report's stream-capacity part: capacity per upstream path, issue 17's targets, and
where callmissed's time goes (the profile scenario) for the targets it misses.

Capacity (scenarios.holds): the largest count of 20 ms-paced streams a system held with added
gap p99 ≤ 5 ms over direct at the same count, no stall ≥ 100 ms and every stream answered.
CPU per relayed chunk is the server's CPU over a run divided by the content chunks its answers
carried. RSS per held stream is the least-squares slope of the server's peak RSS over the step
counts it ran, held or not (memory per stream does not depend on meeting the gap target), on a
server started for the capacity scenario; with one step, that step's growth over the RSS before
it.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.scenarios import holds

__all__ = [
    "capacity",
    "capacity_section",
    "cpu_per_chunk_us",
    "rss_per_stream_kb",
    "stream_targets",
    "time_section",
]

Row = dict[str, Any]
_NA = "—"
PATH_NAMES = {
    "http": "plain HTTP/1.1",
    "h2-tls": "HTTP/2 over TLS (ALPN)",
    "h1-tls": "HTTP/1.1 over TLS",
}


def capacity(rows: list[Row], system: str, path: str) -> tuple[int | None, Row | None]:
    """(streams held at the largest step that held, that step's row); None if none held."""
    best: tuple[int | None, Row | None] = (None, None)
    for row in _steps(rows, system, path):
        direct = _step(rows, "direct", path, row["concurrency"])
        if system == "direct" or holds(row, direct):
            best = (row["concurrency"], row)
        else:
            break
    return best


def cpu_per_chunk_us(row: Row | None) -> float | None:
    if row is None or not row.get("chunks_total") or row.get("server_rss_peak_mib") is None:
        return None  # no server (direct), or nothing relayed
    return float(row["server_cpu_s"]) / float(row["chunks_total"]) * 1e6


def rss_per_stream_kb(steps: list[Row]) -> float | None:
    """KiB of server RSS per held stream: the slope of peak RSS over the counts of `steps` (one
    system's capacity steps on one path), or with one count its growth over the RSS before it.
    None without a server (direct). Not clamped: a negative slope says the RSS did not grow."""
    measured = [row for row in steps if row.get("server_rss_peak_mib") is not None]
    counts = [float(row["concurrency"]) for row in measured]
    peaks = [float(row["server_rss_peak_mib"]) for row in measured]
    if len(set(counts)) >= 2:
        return statistics.linear_regression(counts, peaks).slope * 1024
    before = measured[0].get("server_rss_before_mib") if measured else None
    if before is None:
        return None
    return (peaks[0] - float(before)) * 1024 / counts[0]


def capacity_section(rows: list[Row]) -> str:
    body = []
    for path in _paths(rows):
        for system in _systems(rows, path):
            held, row = capacity(rows, system, path)
            steps = _steps(rows, system, path)
            body.append(
                [
                    PATH_NAMES.get(path, path),
                    system,
                    _held_text(held, steps),
                    ", ".join(f"{step['concurrency']:,}" for step in steps),
                    _fmt(cpu_per_chunk_us(row), 1),
                    _fmt(rss_per_stream_kb(steps), 1),
                    _fmt(_gap_p99(row), 1),
                    _fmt(_stat(row, "p99"), 1),
                ]
            )
    if not body:
        return ""
    head = ["upstream path", "system", "capacity (streams)", "steps run", "CPU µs / chunk"]
    head += ["RSS KB / stream", "gap p99 ms at capacity", "TTFB p99 ms"]
    note = (
        "Streams paced 20 ms apart, on servers started for this scenario, stepped up until a "
        "system misses (after two steps at least): added gap p99 ≤ 5 ms over direct at the "
        "same count, no stall ≥ 100 ms, every stream answered (a late first token is no "
        "stall: the TTFB column shows it). CPU per chunk is at the largest step held; RSS per "
        "stream is the least-squares slope of the server's peak RSS (every process) over the "
        "steps run, held or not."
    )
    return "## Held-stream capacity\n\n" + note + "\n\n" + _table(head, body)


def _held_text(held: int | None, steps: list[Row]) -> str:
    if held is not None:
        return f"{held:,}"
    return f"< {steps[0]['concurrency']:,}" if steps else _NA


def stream_targets(rows: list[Row]) -> str:
    """Issue 17's targets, per upstream path, each a ratio measured in this run."""
    body: list[list[str]] = []
    for path in _paths(rows):
        body += _capacity_targets(rows, path)
        body += _throughput_targets(rows, path)
    if not body:
        return ""
    return "## Targets (issue 17)\n\n" + _table(["path", "target", "measured", "met"], body)


_SHOWN_MODULES = 12


def time_section(rows: list[Row]) -> str:
    """Where callmissed's time goes at c=64 on each path (the profile scenario), under the
    targets it misses there and the measured bound: what the server, upstream and load
    generator used in the unprofiled c=64 run."""
    parts = []
    for row in rows:
        if row["scenario"] != "profile":
            continue
        path = row["upstream"]
        modules = [(str(owner), float(share)) for owner, share in row["modules"]]
        shown = [[f"{share:.1%}", owner] for owner, share in modules[:_SHOWN_MODULES]]
        if len(modules) > _SHOWN_MODULES:
            rest = sum(share for _, share in modules[_SHOWN_MODULES:])
            shown.append([f"{rest:.1%}", f"{len(modules) - _SHOWN_MODULES} more modules"])
        parts.append(
            f"### {PATH_NAMES.get(path, path)}\n\n{_missed(rows, path)}\n\n{_bound(rows, path)}"
            f" Sampled: {row['samples']:,} stacks over {row['seconds']} s.\n\n"
            + _table(["share", "where (deepest callmissed module on the stack)"], shown)
        )
    if not parts:
        return ""
    note = (
        "py-spy (benchmarks/profile.py) samples every process of callmissed at 250 Hz while "
        "64 clients stream from the zero-delay upstream; each sample counts for the deepest "
        "callmissed module on its stack, the libraries it calls included. py-spy counts a "
        "thread waiting for the GIL as busy, and slows what it samples: shares, not speeds."
    )
    return "## Where the time goes (callmissed, c=64)\n\n" + note + "\n\n" + "\n\n".join(parts)


def _missed(rows: list[Row], path: str) -> str:
    checks = _capacity_targets(rows, path) + _throughput_targets(rows, path)
    missed = [f"{target} ({measured})" for _, target, measured, met in checks if met != "yes"]
    if not missed:
        return "Every issue-17 target measured on this path is met."
    return "Missed on this path: " + "; ".join(missed) + "."


def _bound(rows: list[Row], path: str) -> str:
    """The c=64 throughput run's costs: which side used the CPU (or what there was of it)."""
    ours = _find(rows, "throughput", "callmissed", path, concurrency=64)
    if ours is None:
        return "No c=64 throughput run on this path to bound it."
    direct = _find(rows, "throughput", "direct", path, concurrency=64)
    share = f" ({ours['rps'] / direct['rps']:.0%} of direct's)" if direct and direct["rps"] else ""
    loop = (
        f", its event loops {_loop_cpu_per_request_us(ours):.0f} µs a request"
        if ours.get("server_loop_cpu_s") is not None and ours.get("ok")
        else ""
    )
    return (
        f"Bound, measured at c=64 without the profiler: {ours['rps']:,.0f} req/s{share}; CPU "
        f"cores used by the server {ours.get('server_cpu_cores', 0):.2f}{loop}; the upstream "
        f"{ours.get('upstream_cpu_cores', 0):.2f}, the load generator "
        f"{ours.get('loadgen_cpu_cores', 0):.2f}, other load {ours.get('other_load_cores', 0):.2f}."
    )


def _capacity_targets(rows: list[Row], path: str) -> list[list[str]]:
    ours, _ = capacity(rows, "callmissed", path)
    bare, _ = capacity(rows, "passthrough", path)
    name = PATH_NAMES.get(path, path)
    checks = []
    steps = _steps(rows, "callmissed", path)
    bare_steps = _steps(rows, "passthrough", path)
    if steps and bare_steps:
        ratio = (ours or 0) / bare if bare else None
        text = f"{_held_text(ours, steps)} vs {_held_text(bare, bare_steps)}"
        met = _yes(ratio >= 0.9) if ratio is not None else _yes(ours is not None)
        text += f" ({ratio:.0%})" if ratio is not None else ""
        checks.append([name, "capacity ≥ 90 % of pass-through's", text, met])
    checks += _cpu_target(rows, path, min(ours or 0, bare or 0))
    rss = rss_per_stream_kb(steps)
    if rss is not None:
        how = f"slope over {len(steps)} steps" if len(steps) > 1 else "one step, over idle"
        checks.append([name, "RSS / held stream ≤ 50 KB", f"{rss:.1f} KB ({how})", _yes(rss <= 50)])
    return checks


def _cpu_target(rows: list[Row], path: str, both_held: int) -> list[list[str]]:
    """CPU per relayed chunk, callmissed against the pass-through at one count: the largest
    both held, else the smallest both ran (a system past its capacity still relays)."""
    ours = {row["concurrency"]: row for row in _steps(rows, "callmissed", path)}
    bare = {row["concurrency"]: row for row in _steps(rows, "passthrough", path)}
    counts = sorted(ours.keys() & bare.keys())
    if not counts:
        return []
    held = [count for count in counts if count <= both_held]
    count = held[-1] if held else counts[0]
    mine, theirs = cpu_per_chunk_us(ours[count]), cpu_per_chunk_us(bare[count])
    if mine is None or not theirs:
        return []
    where = f"at {count:,} streams" + ("" if held else ", past a capacity")
    text = f"{mine:.1f} vs {theirs:.1f} µs {where} ({mine / theirs:.2f} x)"
    name = PATH_NAMES.get(path, path)
    return [[name, "CPU / chunk ≤ 1.25 x pass-through's", text, _yes(mine <= 1.25 * theirs)]]


def _throughput_targets(rows: list[Row], path: str) -> list[list[str]]:
    name = PATH_NAMES.get(path, path)
    checks = []
    ours = _find(rows, "throughput", "callmissed", path, concurrency=64)
    direct = _find(rows, "throughput", "direct", path, concurrency=64)
    if ours and direct and direct["rps"]:
        share = ours["rps"] / direct["rps"]
        text = f"{ours['rps']:,.0f} vs {direct['rps']:,.0f} ({share:.0%})"
        checks.append([name, "c=64: ≥ 60 % of direct's req/s", text, _yes(share >= 0.6)])
    if ours and ours.get("server_loop_cpu_s") is not None and ours.get("ok"):
        loop_us = _loop_cpu_per_request_us(ours)
        text = f"{loop_us:.0f} µs"
        checks.append([name, "c=64: event-loop CPU / request ≤ 200 µs", text, _yes(loop_us <= 200)])
    for pct, limit in (("p50", 0.5), ("p99", 1.5)):
        mine = _stat(_find(rows, "overhead", "callmissed", path), pct)
        floor = _stat(_find(rows, "overhead", "direct", path), pct)
        if mine is not None and floor is not None:
            added = mine - floor
            target = f"c=1: added TTFB {pct} ≤ {limit} ms"
            checks.append([name, target, f"{added:+.2f} ms", _yes(added <= limit)])
    return checks


def _loop_cpu_per_request_us(row: Row) -> float:
    """Event-loop CPU over the run per answer completed in it (warm-up and grace included)."""
    answers = row.get("chunks_total", 0) / 20 or row["ok"]
    return float(row["server_loop_cpu_s"]) / float(answers) * 1e6


def _find(rows: list[Row], scenario: str, system: str, path: str, **match: Any) -> Row | None:
    for row in rows:
        if (row["scenario"], row["system"], row.get("upstream", "http")) != (
            scenario,
            system,
            path,
        ):
            continue
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def _steps(rows: list[Row], system: str, path: str) -> list[Row]:
    found = [
        row
        for row in rows
        if row["scenario"] == "capacity"
        and row["system"] == system
        and row.get("upstream", "http") == path
    ]
    return sorted(found, key=lambda row: row["concurrency"])


def _step(rows: list[Row], system: str, path: str, count: int) -> Row | None:
    return next((row for row in _steps(rows, system, path) if row["concurrency"] == count), None)


def _paths(rows: list[Row]) -> list[str]:
    seen = {row.get("upstream", "http") for row in rows if row["scenario"] != "startup"}
    return [path for path in PATH_NAMES if path in seen]


def _systems(rows: list[Row], path: str) -> list[str]:
    seen: list[str] = []
    for row in rows:
        capacity_row = row["scenario"] == "capacity" and row.get("upstream", "http") == path
        if capacity_row and row["system"] not in seen:
            seen.append(row["system"])
    return seen


def _stat(row: Row | None, pct: str) -> float | None:
    if row is None or not row.get("ttfb_ms"):
        return None
    return float(row["ttfb_ms"][pct])


def _gap_p99(row: Row | None) -> float | None:
    if row is None or not row.get("gap_ms"):
        return None
    return float(row["gap_ms"]["p99"])


def _fmt(value: float | None, digits: int) -> str:
    return _NA if value is None else f"{value:.{digits}f}"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
