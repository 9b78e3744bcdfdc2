"""results.json → report.md (tables, headline ratios), and the PNG charts through charts.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.charts import write_charts
from benchmarks.machine import Placement
from benchmarks.report_streams import PATH_NAMES, capacity_section, stream_targets, time_section

__all__ = ["headline", "on_path", "write_report"]

Row = dict[str, Any]
_NA = "—"


def write_report(results: dict[str, Any], out: Path) -> None:
    every: list[Row] = results["rows"]
    rows = on_path(every, "http")  # the sections below, unless a section says otherwise
    sections = [
        _header(results["meta"]),
        _headline_section(rows),
        _targets(rows),
        stream_targets(every),
        time_section(every),
        _overhead(rows),
        _throughput(rows),
        _held(rows),
        capacity_section(every),
        _http2(rows),
        _startup(rows),
        _hedging(rows, results["meta"]),
        _failover(rows),
        _otel(rows),
    ]
    for path, name in PATH_NAMES.items():
        tls = on_path(every, path) if path != "http" else []
        for section in (_overhead(tls), _throughput(tls), _held(tls)):
            sections.append(_retitled(section, f"upstream over {name}"))
    sections.append(_noise(every))
    charts = write_charts(rows, out)
    if charts:
        sections.append("## Charts\n\n" + "\n".join(f"![{name}]({name})" for name in charts))
    (out / "report.md").write_text("\n\n".join(s for s in sections if s) + "\n")


# -- helpers ----------------------------------------------------------------------------------


def on_path(rows: list[Row], path: str) -> list[Row]:
    """The rows measured over one upstream path (rows from before paths count as plain HTTP)."""
    return [row for row in rows if row.get("upstream", "http") == path]


def _retitled(section: str, suffix: str) -> str:
    if not section:
        return ""
    title, _, rest = section.partition("\n")
    return f"{title} — {suffix}\n{rest}"


def _find(rows: list[Row], scenario: str, system: str, **match: Any) -> Row | None:
    for row in rows:
        if row["scenario"] != scenario or row["system"] != system:
            continue
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def _stat(row: Row | None, metric: str, pct: str) -> float | None:
    if row is None or not row.get(metric):
        return None
    value = row[metric].get(pct)
    return float(value) if value is not None else None


def _ms(value: float | None, digits: int = 2) -> str:
    return _NA if value is None else f"{value:.{digits}f}"


def _added(row: Row, base: Row | None, metric: str, pct: str) -> str:
    ours, floor = _stat(row, metric, pct), _stat(base, metric, pct)
    if ours is None or floor is None or row is base:
        return _NA
    return f"{ours - floor:+.2f}"


def _errors(row: Row) -> str:
    errors = row.get("errors") or {}
    if not errors:
        return "0"
    return ", ".join(f"{kind}: {count}" for kind, count in sorted(errors.items()))


def _table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _systems(rows: list[Row], scenario: str) -> list[str]:
    seen: list[str] = []
    for row in rows:
        if row["scenario"] == scenario and row["system"] not in seen:
            seen.append(row["system"])
    return seen


# -- sections ---------------------------------------------------------------------------------


def _header(meta: dict[str, Any]) -> str:
    machine = meta["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    return "\n".join(
        [
            f"# Benchmark report ({meta['profile']})",
            "",
            f"- command: `{meta['command']}` ({meta.get('elapsed_s', '?')} s)",
            f"- started: {meta['started']}; callmissed {meta['callmissed_revision']}, "
            f"{meta.get('server', 'granian')}, {meta['callmissed_workers']} worker(s), "
            f"store {meta.get('store', 'sqlite')}, auth on (a real key with a balance)",
            f"- upstream paths: {', '.join(meta.get('paths', ['http']))} (HTTPS: granian, one "
            "worker, serving h2 or http/1.1 by ALPN)",
            f"- cores: {meta.get('cores', Placement().describe(meta['callmissed_workers']))}",
            f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
            f"{machine['os']}, kernel {machine['kernel']}, Python {machine['python']}",
            f"- load average before: {_loads(machine['load_average'])}; after: "
            f"{_loads(meta.get('machine_after', {}).get('load_average'))}",
            f"- versions: {versions}",
            f"- upstream: {meta['upstream']['chunks']} content chunks per answer; held streams "
            f"{meta['upstream']['pace_ms']:g} ms apart; late first token "
            f"{meta['upstream']['late_pct']:g}% of the time by {meta['upstream']['late_ms']:g} ms",
            f"- hedging: {meta['hedging']}",
        ]
    )


def _loads(values: list[float] | None) -> str:
    return " / ".join(f"{value:.2f}" for value in values) if values else _NA


def headline(rows: list[Row]) -> dict[str, float | None]:
    """The ratios the README quotes."""
    result: dict[str, float | None] = {}
    ours64 = _find(rows, "throughput", "callmissed", concurrency=64)
    for other in ("direct", "litellm"):
        theirs64 = _find(rows, "throughput", other, concurrency=64)
        if ours64 and theirs64 and theirs64["rps"]:
            result[f"rps_c64_vs_{other}"] = round(ours64["rps"] / theirs64["rps"], 3)
    direct1 = _find(rows, "overhead", "direct")
    for pct in ("p50", "p99"):
        floor = _stat(direct1, "ttfb_ms", pct)
        for system, key in (("callmissed", ""), ("litellm", "litellm_"), ("passthrough", "bare_")):
            value = _stat(_find(rows, "overhead", system), "ttfb_ms", pct)
            if value is not None and floor is not None:
                result[f"{key}added_ttfb_{pct}_ms"] = round(value - floor, 3)
    return result


def _headline_section(rows: list[Row]) -> str:
    numbers = headline(rows)
    if not numbers:
        return ""
    lines = ["## Headline", ""]
    if numbers.get("added_ttfb_p50_ms") is not None:
        lines.append(
            f"- CallMissed adds {numbers['added_ttfb_p50_ms']:.3f} ms TTFB at p50 and "
            f"{numbers['added_ttfb_p99_ms']:.3f} ms at p99 over calling the upstream directly "
            "(concurrency 1)."
        )
    if numbers.get("bare_added_ttfb_p50_ms") is not None:
        lines.append(
            "- A bare pass-through on the same stack (granian + our HTTP/1.1 client, no features)"
            f" adds "
            f"{numbers['bare_added_ttfb_p50_ms']:.3f} ms at p50 and "
            f"{numbers['bare_added_ttfb_p99_ms']:.3f} ms at p99: the stack's floor."
        )
    if numbers.get("litellm_added_ttfb_p50_ms") is not None:
        lines.append(
            f"- LiteLLM's proxy adds {numbers['litellm_added_ttfb_p50_ms']:.2f} ms at p50 and "
            f"{numbers['litellm_added_ttfb_p99_ms']:.2f} ms at p99."
        )
    if numbers.get("rps_c64_vs_direct") is not None:
        lines.append(
            f"- At concurrency 64 CallMissed carries {numbers['rps_c64_vs_direct']:.0%} of the "
            "direct floor's requests/s."
        )
    if numbers.get("rps_c64_vs_litellm") is not None:
        lines.append(
            f"- … and {numbers['rps_c64_vs_litellm']:,.0f} times LiteLLM's proxy's requests/s."
        )
    return "\n".join(lines)


def _targets(rows: list[Row]) -> str:
    """Issue 6's targets, each with what this run measured."""
    checks = [_check_added_ttfb(rows, "p50", 0.5), _check_added_ttfb(rows, "p99", 1.5)]
    checks += [_check_rps(rows), _check_p99(rows), *_check_held(rows), _check_startup(rows)]
    checks.append(_check_hedging(rows))
    body = [list(check) for check in checks if check is not None]
    if not body:
        return ""
    return "## Targets (issue 6, plain HTTP)\n\n" + _table(["target", "measured", "met"], body)


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _check_added_ttfb(rows: list[Row], pct: str, limit: float) -> tuple[str, str, str] | None:
    ours = _stat(_find(rows, "overhead", "callmissed"), "ttfb_ms", pct)
    floor = _stat(_find(rows, "overhead", "direct"), "ttfb_ms", pct)
    if ours is None or floor is None:
        return None
    added = ours - floor
    return f"added TTFB {pct} ≤ {limit} ms at c=1", f"{added:+.2f} ms", _verdict(added <= limit)


def _check_rps(rows: list[Row]) -> tuple[str, str, str] | None:
    row = _find(rows, "throughput", "callmissed", concurrency=64)
    if row is None:
        return None
    return "≥ 4,000 req/s at c=64", f"{row['rps']:,.0f} req/s", _verdict(row["rps"] >= 4000)


def _check_p99(rows: list[Row]) -> tuple[str, str, str] | None:
    row = _find(rows, "throughput", "callmissed", concurrency=256)
    p99 = _stat(row, "ttfb_ms", "p99")
    if p99 is None:
        return None
    return "TTFB p99 ≤ 100 ms at c=200 (measured at 256)", f"{p99:.1f} ms", _verdict(p99 <= 100)


def _check_held(rows: list[Row]) -> list[tuple[str, str, str]]:
    row, base = _find(rows, "held", "callmissed"), _find(rows, "held", "direct")
    checks = []
    ours, floor = _stat(row, "gap_ms", "p99"), _stat(base, "gap_ms", "p99")
    if ours is not None and floor is not None:
        added = ours - floor
        checks.append(
            ("1,000 held streams: added gap p99 ≤ 1 ms", f"{added:+.1f} ms", _verdict(added <= 1))
        )
    if row is not None and row.get("server_rss_peak_mib") is not None:
        rss = row["server_rss_peak_mib"]
        worker = max(row["server_rss_by_process_mib"])
        checks.append(
            (
                "1,000 held streams: RSS ≤ 100 MB",
                f"{rss:.0f} MiB all processes, {worker:.0f} MiB the largest",
                _verdict(rss <= 100),
            )
        )
    return checks


def _check_startup(rows: list[Row]) -> tuple[str, str, str] | None:
    times = [
        r["seconds"] for r in rows if r["scenario"] == "startup" and r["system"] == "callmissed"
    ]
    if not times:
        return None
    return "healthy within 1 s of launch", f"max {max(times):.2f} s", _verdict(max(times) <= 1)


def _check_hedging(rows: list[Row]) -> tuple[str, str, str] | None:
    hedged = _stat(_find(rows, "hedging", "callmissed", model="hedged"), "ttfb_ms", "p99")
    direct = _stat(_find(rows, "hedging", "direct"), "ttfb_ms", "p99")
    if hedged is None or direct is None:
        return None
    return (
        "hedged TTFB p99 < direct, first token late 5% of the time",
        f"{hedged:.1f} ms vs {direct:.1f} ms",
        _verdict(hedged < direct),
    )


def _overhead(rows: list[Row]) -> str:
    base = _find(rows, "overhead", "direct")
    body = []
    for system in _systems(rows, "overhead"):
        row = _find(rows, "overhead", system)
        assert row is not None
        body.append(
            [
                system,
                f"{row['rps']:,.0f}",
                *(_ms(_stat(row, "ttfb_ms", p), 3) for p in ("p50", "p90", "p99")),
                *(_added(row, base, "ttfb_ms", p) for p in ("p50", "p90", "p99")),
                *(_ms(_stat(row, "total_ms", p), 3) for p in ("p50", "p99")),
                *(_added(row, base, "total_ms", p) for p in ("p50", "p99")),
                _errors(row),
            ]
        )
    if not body:
        return ""
    head = ["system", "req/s", "TTFB p50", "p90", "p99", "added p50", "added p90", "added p99"]
    head += ["total p50", "p99", "added total p50", "added p99", "errors"]
    rounds = (base or {}).get("rounds")
    how = f"; medians of {rounds} interleaved rounds" if rounds else ""
    return f"## Overhead (concurrency 1, streaming, ms{how})\n\n" + _table(head, body)


def _throughput(rows: list[Row]) -> str:
    levels = sorted({row["concurrency"] for row in rows if row["scenario"] == "throughput"})
    body = []
    for concurrency in levels:
        base = _find(rows, "throughput", "direct", concurrency=concurrency)
        for system in _systems(rows, "throughput"):
            row = _find(rows, "throughput", system, concurrency=concurrency)
            if row is None:
                continue
            ratio = f"{row['rps'] / base['rps']:.0%}" if base and base["rps"] else _NA
            body.append(
                [
                    str(concurrency),
                    system,
                    f"{row['rps']:,.0f}",
                    f"{row.get('rps_whole_run', 0):,.0f}",
                    ratio,
                    _ms(_stat(row, "ttfb_ms", "p50")),
                    _ms(_stat(row, "ttfb_ms", "p99")),
                    _ms(_stat(row, "total_ms", "p99")),
                    _errors(row),
                    str(row["unfinished"]),
                    _cores(row),
                ]
            )
    if not body:
        return ""
    head = ["c", "system", "req/s", "whole run", "of direct", "TTFB p50 ms", "TTFB p99 ms"]
    head.append("total p99 ms")
    head += ["errors", "unfinished", "CPU cores: server / upstream / loadgen / other"]
    note = (
        "req/s counts answers completed inside the measured window; *whole run* counts every "
        "answer from the first request sent, which is the only non-zero figure for a server "
        "whose every answer outlives the window. TTFB is over requests started inside it."
    )
    return "## Throughput (streaming, zero-delay upstream)\n\n" + note + "\n\n" + _table(head, body)


def _cores(row: Row) -> str:
    keys = ("server_cpu_cores", "upstream_cpu_cores", "loadgen_cpu_cores", "other_load_cores")
    return " / ".join(f"{row.get(key, 0):.2f}" for key in keys)


def _held(rows: list[Row]) -> str:
    base = _find(rows, "held", "direct")
    body = []
    for system in _systems(rows, "held"):
        row = _find(rows, "held", system)
        assert row is not None
        rss = row.get("server_rss_peak_mib")
        parts = row.get("server_rss_by_process_mib") or []
        rss_text = _NA if rss is None else f"{rss:.0f} ({' + '.join(f'{p:.0f}' for p in parts)})"
        body.append(
            [
                system,
                str(row["concurrency"]),
                f"{row['ok']:,}",
                *(_ms(_stat(row, "gap_ms", p)) for p in ("p50", "p99", "p999")),
                _added(row, base, "gap_ms", "p99"),
                f"{row['stalls']:,}",
                _ms(_stat(row, "ttfb_ms", "p99")),
                rss_text,
                _cores(row),
                _errors(row) + (f"; unfinished {row['unfinished']}" if row["unfinished"] else ""),
            ]
        )
    if not body:
        return ""
    head = ["system", "streams", "completed", "gap p50 ms", "gap p99", "gap p99.9"]
    head += ["added gap p99", "stalls ≥ 100 ms", "TTFB p99 ms", "server RSS MiB (per process)"]
    head += ["CPU cores: server / upstream / loadgen / other", "errors"]
    return "## Held streams (paced tokens)\n\n" + _table(head, body)


def _http2(rows: list[Row]) -> str:
    body = []
    for row in rows:
        if row["scenario"] != "http2":
            continue
        same = "overhead" if row["concurrency"] == 1 else "throughput"
        h1 = _find(rows, same, row["system"], concurrency=row["concurrency"])
        for each in (row, h1):
            if each is None:
                continue
            body.append(
                [
                    each["system"],
                    each["protocol"],
                    str(each["concurrency"]),
                    f"{each['rps']:,.0f}",
                    _ms(_stat(each, "ttfb_ms", "p50"), 3),
                    _ms(_stat(each, "ttfb_ms", "p99"), 3),
                    _ms(_stat(each, "total_ms", "p99"), 3),
                    _errors(each),
                    f"{each.get('loadgen_cpu_cores', 0):.2f}",
                ]
            )
    if not body:
        return ""
    head = ["system", "protocol", "c", "req/s", "TTFB p50 ms", "p99", "total p99", "errors"]
    head.append("loadgen CPU cores")
    note = (
        "h2c rows use one multiplexed connection and a pure-Python `h2` client; the HTTP/1.1 "
        "rows beside them (aiohttp, C connections) are from the overhead/throughput scenarios."
    )
    return "## HTTP/2\n\n" + note + "\n\n" + _table(head, body)


def _startup(rows: list[Row]) -> str:
    body = [
        [row["system"], row["label"], f"{row['seconds']:.3f}"]
        for row in rows
        if row["scenario"] == "startup"
    ]
    if not body:
        return ""
    return "## Start-up (launch → healthy)\n\n" + _table(["system", "launch", "seconds"], body)


def _hedging(rows: list[Row], meta: dict[str, Any]) -> str:
    body = []
    for row in rows:
        if row["scenario"] != "hedging":
            continue
        route = "hedged (2 routes)" if row["model"] == "hedged" else "one route"
        body.append(
            [
                row["system"],
                route,
                str(row["concurrency"]),
                *(_ms(_stat(row, "ttfb_ms", p)) for p in ("p50", "p90", "p99", "max")),
                _errors(row),
            ]
        )
    if not body:
        return ""
    head = ["system", "route", "c", "TTFB p50 ms", "p90", "p99", "max", "errors"]
    return f"## Hedging ({meta['hedging']})\n\n" + _table(head, body)


def _failover(rows: list[Row]) -> str:
    """Issue 5's target: client error rate ~0, p99 TTFB within the first-token timeout."""
    body = []
    for row in rows:
        if row["scenario"] != "failover":
            continue
        failed = sum((row.get("errors") or {}).values()) + row.get("unfinished", 0)
        total = row.get("ok", 0) + failed
        rate = f"{100 * failed / total:.2f} %" if total else _NA
        route = "1 route, 30% failing" if row["model"] == "flaky" else "+ healthy fallback"
        ttfb = [_ms(_stat(row, "ttfb_ms", p)) for p in ("p50", "p99", "max")]
        body.append([row["system"], route, str(row["concurrency"]), str(total), rate, *ttfb])
    if not body:
        return ""
    head = ["system", "routes", "c", "requests", "client errors", "TTFB p50 ms", "p99", "max"]
    return "## Failover\n\n" + _table(head, body)


def _otel(rows: list[Row]) -> str:
    """Issue 16's target: traces off cost nothing measurable; on, under 0.05 ms p50 of TTFB."""
    off = _find(rows, "otel", "callmissed")
    on = _find(rows, "otel", "callmissed-otel")
    if off is None or on is None:
        return ""
    body = []
    for label, row in (("off", off), ("on (OTLP/HTTP to a sink)", on)):
        body.append(
            [
                label,
                f"{row['rps']:,.0f}",
                *(_ms(_stat(row, "ttfb_ms", p), 3) for p in ("p50", "p90", "p99")),
                *(_added(row, off, "ttfb_ms", p) for p in ("p50", "p99")),
                f"{row.get('server_cpu_cores', 0):.2f}",
                _errors(row),
            ]
        )
    head = ["OpenTelemetry", "req/s", "TTFB p50", "p90", "p99", "added p50", "added p99"]
    head += ["server cores", "errors"]
    added = (_stat(on, "ttfb_ms", "p50") or 0) - (_stat(off, "ttfb_ms", "p50") or 0)
    verdict = f"added p50 {added:+.3f} ms against a target of < 0.05 ms: {_verdict(added < 0.05)}"
    rounds = off.get("rounds")
    title = (
        f"## OpenTelemetry off vs. on (concurrency 1, streaming, ms; medians of {rounds} rounds)"
    )
    return f"{title}\n\n{_table(head, body)}\n\n{verdict}"


def _noise(rows: list[Row]) -> str:
    other = [row["other_load_cores"] for row in rows if "other_load_cores" in row]
    if not other:
        return ""
    return (
        "## Other load on the machine\n\n"
        f"CPU used by processes outside this benchmark while it measured: mean "
        f"{sum(other) / len(other):.2f} cores, max {max(other):.2f} cores (of "
        "2). Above ~0.1 the numbers are noisy; a quiet run is the one to quote."
    )
