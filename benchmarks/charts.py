"""The report's PNG charts (matplotlib, optional): throughput and time to first token against
concurrency, and the held streams' gaps, from results.json's rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["write_charts"]

Row = dict[str, Any]


def write_charts(rows: list[Row], out: Path) -> list[str]:
    """Draw what `rows` has data for into `out`; return the PNG files' names (none without
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no charts (pip install -e '.[bench]')")
        return []
    names = []
    series = _concurrency_series(rows)
    if series:
        names += [_plot_rps(plt, series, out), _plot_latency(plt, series, out)]
    held = [row for row in rows if row["scenario"] == "held" and row.get("gap_ms")]
    if held:
        names.append(_plot_held(plt, held, out))
    return names


def _concurrency_series(rows: list[Row]) -> dict[str, list[Row]]:
    series: dict[str, list[Row]] = {}
    for row in rows:
        if row["scenario"] in ("overhead", "throughput") and row.get("ttfb_ms"):
            series.setdefault(row["system"], []).append(row)
    for points in series.values():
        points.sort(key=lambda row: row["concurrency"])
    return series


def _plot_rps(plt: Any, series: dict[str, list[Row]], out: Path) -> str:
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for system, points in series.items():
        axes.plot(
            [p["concurrency"] for p in points],
            [_plotted_rps(p) for p in points],
            "o-",
            label=system,
        )
    axes.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="streamed requests/s")
    axes.set_title("Throughput vs concurrency")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "throughput.png", dpi=110)
    plt.close(figure)
    return "throughput.png"


def _plotted_rps(row: Row) -> float:
    """The windowed rate, unless fewer answers than workers landed in the window: then the
    server answers in waves longer than the window and only the whole-run rate means anything."""
    rps = float(row["rps"])
    if rps * row.get("duration_s", 0) < row["concurrency"]:
        return float(row.get("rps_whole_run", rps))
    return rps


def _plot_latency(plt: Any, series: dict[str, list[Row]], out: Path) -> str:
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for system, points in series.items():
        x = [p["concurrency"] for p in points]
        (line,) = axes.plot(x, [p["ttfb_ms"]["p50"] for p in points], "o-", label=f"{system} p50")
        axes.plot(
            x,
            [p["ttfb_ms"]["p99"] for p in points],
            "s--",
            color=line.get_color(),
            label=f"{system} p99",
        )
    axes.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="TTFB ms")
    axes.set_title("Time to first token vs concurrency")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "latency.png", dpi=110)
    plt.close(figure)
    return "latency.png"


def _plot_held(plt: Any, held: list[Row], out: Path) -> str:
    figure, axes = plt.subplots(figsize=(7, 4.2))
    pcts = ("p50", "p90", "p99", "p999")
    width = 0.8 / len(held)
    for index, row in enumerate(held):
        x = [i + index * width for i in range(len(pcts))]
        axes.bar(x, [row["gap_ms"][p] for p in pcts], width, label=row["system"])
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(pcts))], list(pcts))
    axes.set(ylabel="gap between content chunks, ms")
    axes.set_title(f"Held streams: {held[0]['concurrency']} concurrent, paced tokens")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "held.png", dpi=110)
    plt.close(figure)
    return "held.png"
