"""The capacity report's arithmetic (benchmarks/report_streams.py) on made-up rows: RSS per held
stream, and the "where the time goes" section under the targets missed."""

from __future__ import annotations

import pytest

from benchmarks.report_streams import (
    capacity_section,
    rss_per_stream_kb,
    stream_targets,
    time_section,
)


def _step(count: int, peak: float | None, before: float | None = 60.0, **extra):
    return {
        "scenario": "capacity",
        "system": "callmissed",
        "upstream": "http",
        "concurrency": count,
        "server_rss_peak_mib": peak,
        "server_rss_before_mib": before,
        **extra,
    }


def test_rss_per_stream_is_the_slope_over_every_step_run():
    # 100 → 400 → 1,600 streams at 30 KiB each over a 70 MiB base: the slope is 30 KiB, not
    # the 70 MiB the first step also carries.
    steps = [_step(n, 70 + n * 30 / 1024) for n in (100, 400, 1600)]
    assert rss_per_stream_kb(steps) == pytest.approx(30.0)


def test_the_slope_is_least_squares_and_keeps_a_shrinking_rss_negative():
    steps = [_step(100, 80.0), _step(200, 90.0), _step(400, 100.0)]
    # x̄ = 233.3, ȳ = 90: slope = Σ(x-x̄)(y-ȳ) / Σ(x-x̄)² = 3,000 / 46,666.7 MiB per stream,
    # where the end points alone would give 20 / 300
    assert rss_per_stream_kb(steps) == pytest.approx(3000 / 46666.7 * 1024, rel=1e-4)
    shrinking = [_step(100, 190.6), _step(400, 179.2)]  # a shared server, as in issue 17's run
    assert rss_per_stream_kb(shrinking) == pytest.approx(-11.4 * 1024 / 300)


def test_one_step_counts_its_growth_over_the_rss_before_it():
    assert rss_per_stream_kb([_step(100, 65.0, before=60.0)]) == pytest.approx(51.2)
    assert rss_per_stream_kb([_step(100, 65.0, before=None)]) is None


def test_direct_has_no_server_and_so_no_rss():
    assert rss_per_stream_kb([_step(n, None, before=None) for n in (100, 400)]) is None
    assert rss_per_stream_kb([]) is None


def _gaps(p99: float) -> dict[str, object]:
    return {"stalls": 0, "errors": {}, "unfinished": 0, "gap_ms": {"p99": p99}}


def test_the_capacity_table_shows_the_slope_over_steps_held_or_not():
    direct = [{**_step(n, None, None), "system": "direct", **_gaps(25.0)} for n in (100, 400)]
    ours = [
        {**_step(100, 80.0), **_gaps(26.0), "server_cpu_s": 1.0, "chunks_total": 10_000},
        {**_step(400, 92.0), **_gaps(60.0), "server_cpu_s": 3.0, "chunks_total": 30_000},
    ]
    ours[0]["ttfb_ms"] = {"p99": 12.5}
    table = capacity_section(direct + ours)
    # held 100 (400 missed by 35 ms); 100 µs of CPU a chunk there; (92 - 80) MiB / 300 streams
    assert "| plain HTTP/1.1 | callmissed | 100 | 100, 400 | 100.0 | 41.0 | 26.0 | 12.5 |" in table


def _capacity_run(ours_gap: float, bare_gap: float) -> list[dict[str, object]]:
    """Direct, the pass-through and callmissed at 100 and 400 streams; 20 and 10 µs a chunk."""
    rows = []
    for count in (100, 400):
        rows.append({**_step(count, None, None), "system": "direct", **_gaps(25.0)})
        for system, gap, cpu_s in (("passthrough", bare_gap, 0.1), ("callmissed", ours_gap, 0.2)):
            row = {**_step(count, 80.0 + count / 100), "system": system, **_gaps(gap)}
            rows.append({**row, "server_cpu_s": cpu_s * count / 100, "chunks_total": 100 * count})
    return rows


def test_cpu_per_chunk_is_compared_at_the_largest_count_both_held():
    targets = stream_targets(_capacity_run(ours_gap=26.0, bare_gap=26.0))
    assert "| CPU / chunk ≤ 1.25 x pass-through's | 20.0 vs 10.0 µs at 400 streams (2.00 x) |" in (
        targets
    )


def test_cpu_per_chunk_is_still_compared_when_callmissed_held_no_step():
    targets = stream_targets(_capacity_run(ours_gap=40.0, bare_gap=26.0))
    assert "| capacity ≥ 90 % of pass-through's | < 100 vs 400 (0%) | **no** |" in targets
    assert "20.0 vs 10.0 µs at 100 streams, past a capacity (2.00 x) | **no** |" in targets


def _throughput(system: str, rps: float, **extra):
    return {
        "scenario": "throughput",
        "system": system,
        "upstream": "http",
        "concurrency": 64,
        "rps": rps,
        **extra,
    }


def test_where_the_time_goes_sits_under_the_targets_missed_and_the_measured_bound():
    rows = [
        _throughput("direct", 9000.0),
        _throughput(
            "callmissed",
            3000.0,
            ok=3000,
            chunks_total=60_000,  # 3,000 answers of 20 chunks
            server_loop_cpu_s=1.2,
            server_cpu_cores=1.05,
            upstream_cpu_cores=0.07,
            loadgen_cpu_cores=0.55,
            other_load_cores=0.0,
        ),
        {
            "scenario": "profile",
            "system": "callmissed",
            "upstream": "http",
            "concurrency": 64,
            "seconds": 4,
            "samples": 2000,
            "modules": [["(native: granian)", 0.3], ["relay.py", 0.2]]
            + [[f"m{index}.py", 0.5 / 14] for index in range(14)],
        },
    ]
    section = time_section(rows)
    assert section.startswith("## Where the time goes (callmissed, c=64)")
    assert "Missed on this path: c=64: ≥ 60 % of direct's req/s (3,000 vs 9,000 (33%))" in section
    assert "c=64: event-loop CPU / request ≤ 200 µs (400 µs)" in section
    assert "3,000 req/s (33% of direct's); CPU cores used by the server 1.05" in section
    assert "the load generator 0.55" in section
    assert "| 30.0% | (native: granian) |" in section
    assert "| 14.3% | 4 more modules |" in section  # 12 shown, the rest summed


def test_no_profile_no_section():
    assert time_section([_throughput("direct", 9000.0)]) == ""
