"""`callmissed bench --chart FILE.png`: the bench's rows as two bar charts, first token and total.

matplotlib comes with the `bench` extra; `require_matplotlib()` says so plainly before a bench
starts, rather than after it ran.
"""

from __future__ import annotations

from pathlib import Path

from callmissed.bench import Row, _percentile

__all__ = ["draw_chart", "require_matplotlib"]

MISSING = "--chart needs matplotlib: pip install 'callmissed[bench]'"


def require_matplotlib() -> str | None:
    """None if charts can be drawn, else what to install."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return MISSING
    return None


def draw_chart(rows: list[Row], path: Path, title: str) -> None:
    """Bars of p50 with a whisker to p90, one row per model and way, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib import pyplot

    labels = [f"{row.model} ({row.route})\n{row.variant.label}" for row in rows]
    figure, (first, whole) = pyplot.subplots(
        1, 2, figsize=(11, 1.2 + 0.55 * len(rows)), sharey=True, layout="constrained"
    )
    for axes, name, unit, scale, samples in (
        (first, "time to first token", "ms", 1.0, [row.ttfb_ms for row in rows]),
        (whole, "whole answer", "s", 1000.0, [row.total_ms for row in rows]),
    ):
        p50 = [(_percentile(values, 0.5) or 0.0) / scale for values in samples]
        p90 = [(_percentile(values, 0.9) or 0.0) / scale for values in samples]
        whiskers = [[0.0] * len(rows), [max(b - a, 0.0) for a, b in zip(p50, p90, strict=True)]]
        colors = ["#2f7ed8" if row.variant.stream else "#d8672f" for row in rows]
        positions = list(range(len(rows)))
        axes.barh(positions, p50, xerr=whiskers, color=colors, capsize=3)
        for position, value in zip(positions, p50, strict=True):
            axes.annotate(
                f" {value:.0f}" if unit == "ms" else f" {value:.2f}",
                (value, position),
                va="center",
                fontsize=8,
            )
        axes.set_title(f"{name} ({unit}), p50, whisker to p90")
        axes.grid(axis="x", alpha=0.3)
    first.set_yticks(list(range(len(rows))), labels, fontsize=8)
    first.invert_yaxis()
    figure.suptitle(title)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
