"""Small matplotlib helpers for the benchmarks' plots (PNG files under docs/performance/).

matplotlib is imported lazily with the Agg backend (no display needed), so importing this
module costs nothing and a benchmark runs, and says so, when matplotlib is missing::

    from bench import _plot

    _plot.bar_chart(path, "Store operation, 100k links", ["get_portal", "enqueue"], [41.0, 120.0], "µs")
    _plot.line_chart(path, "RSS", [1e3, 1e4, 1e5], {"bridge": [90, 95, 99]}, "links", "MB", logx=True)

Every function writes ``path`` (parent folders created), closes its figure and returns
``path``. ``goal`` draws a dashed horizontal line with its label.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DPI = 110
SIZE = (7.5, 4.2)


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig: Any, ax: Any, path: Path | str, title: str, goals: Mapping[str, float] | None) -> Path:
    for label, value in (goals or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="tab:red")
        ax.annotate(
            label,
            (1.0, value),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(-4, 3),
            ha="right",
            fontsize=8,
            color="tab:red",
        )
    ax.set_title(title, fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def bar_chart(
    path: Path | str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    ylabel: str,
    *,
    goal: float | None = None,
    goal_label: str = "goal",
    value_format: str = "{:.3g}",
    logy: bool = False,
    colors: Sequence[str] | None = None,
) -> Path:
    """One bar per label, each annotated with its value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE)
    bars = ax.bar(range(len(values)), values, color=list(colors) if colors else "tab:blue")
    ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels), default=0) > 10 else 0, ha="right")
    if logy:
        ax.set_yscale("log")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            value_format.format(value),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            textcoords="offset points",
            xytext=(0, 2),
            ha="center",
            fontsize=8,
        )
    ax.set_ylabel(ylabel)
    return _finish(fig, ax, path, title, {goal_label: goal} if goal is not None else None)


def grouped_bar_chart(
    path: Path | str,
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    *,
    logy: bool = False,
    goal: float | None = None,
    goal_label: str = "goal",
) -> Path:
    """Bars per label, one colour per series (e.g. one operation at three store sizes)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE)
    n = max(1, len(series))
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [x - 0.4 + width * (i + 0.5) for x in range(len(labels))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels), default=0) > 10 else 0, ha="right")
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _finish(fig, ax, path, title, {goal_label: goal} if goal is not None else None)


def line_chart(
    path: Path | str,
    title: str,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    *,
    logx: bool = False,
    logy: bool = False,
    goals: Mapping[str, float] | None = None,
    vgoals: Mapping[str, float] | None = None,
    markers: bool = True,
    xs: Mapping[str, Sequence[float]] | None = None,
    legend: Mapping[str, Any] | None = None,
) -> Path:
    """One line per series over ``x`` (or over ``xs[name]`` for series with their own x,
    e.g. cumulative distributions of different lengths). ``goals`` are horizontal lines,
    ``vgoals`` vertical ones (a latency goal on a distribution's x axis); ``legend``: keyword
    arguments for ``Axes.legend`` (e.g. ``{"loc": "lower left", "bbox_to_anchor": (0.2, 0.1)}``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=SIZE)
    for name, values in series.items():
        ax.plot((xs or {}).get(name, x), values, marker="o" if markers else None, markersize=4, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    for label, value in (vgoals or {}).items():
        ax.axvline(value, linestyle="--", linewidth=1, color="tab:red")
        ax.annotate(
            label,
            (value, 0.02),
            xycoords=("data", "axes fraction"),
            textcoords="offset points",
            xytext=(3, 0),
            rotation=90,
            fontsize=8,
            color="tab:red",
        )
    if len(series) > 1:
        ax.legend(**{"fontsize": 8, **(legend or {})})
    return _finish(fig, ax, path, title, goals)
