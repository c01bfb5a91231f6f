"""What every bench's plot shares: one colour per contender (ours, socat, direct), bars on a
linear axis (``finish`` refuses bars on a log one) with their values written on them,
tick labels wrapped so they never overlap, ratios in the panel titles, a tight layout.

Benches run as scripts with ``bench/`` on ``sys.path``, so this imports as ``_plots``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

OURS = "#3a7d44"  # our path, whatever the bench calls it (pump, relay, vspc, agent, session)
OURS_ALT = "#8cc084"  # a variant of ours (pump-copy, vspc_log, ours_plain, ...)
SOCAT = "#c8553d"
DIRECT = "#8a8a8a"
OTHER = "#4a6fa5"  # neither ours nor a baseline (a floor, a bare server)
PEER = "#7b4f9d"  # another implementation of the same thing (VMware's vSPC)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colour(name: str) -> str:
    """The colour of a contender, from its name."""
    n = name.lower()
    if "direct" in n:
        return DIRECT
    if "socat" in n:
        return SOCAT
    if "vmware" in n or "peer" in n:
        return PEER
    if "floor" in n or "minimal" in n or n in ("raw", "bare"):
        return OTHER
    if any(k in n for k in ("copy", "_log", "plain", "console_exec")):
        return OURS_ALT
    return OURS


def label(name: str, width: int = 11) -> str:
    """A tick label wrapped to ``width`` characters a line (underscores read as spaces)."""
    return textwrap.fill(name.replace("_", " "), width, break_on_hyphens=False)


def bars(
    ax: Any,
    names: Sequence[str],
    values: Sequence[float | None],
    *,
    fmt: str = "{:.0f}",
    colours: Sequence[str] | None = None,
) -> None:
    """One bar per name on a linear axis from 0, each with its value written above it
    (``-`` where there is none)."""
    vals = [0.0 if v is None else float(v) for v in values]
    cols = list(colours) if colours else [colour(n) for n in names]
    container = ax.bar(range(len(names)), vals, color=cols)
    ax.bar_label(
        container,
        labels=["-" if v is None else fmt.format(v) for v in values],
        padding=2,
        fontsize=8,
    )
    ax.set_xticks(range(len(names)), [label(n) for n in names])
    ax.set_ylim(0, max([*vals, 1e-9]) * 1.18)


def grouped(
    ax: Any,
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    fmt: str = "{:.0f}",
    colours: dict[str, str] | None = None,
    errors: dict[str, tuple[list[float], list[float]]] | None = None,
) -> None:
    """Bars grouped by ``groups`` (one per series in each group), values written on them,
    a legend of the series, on a linear axis from 0; ``errors``: per series, how far below
    and above each bar its range goes."""
    n = len(series)
    width = 0.8 / n
    top = 0.0
    for i, (name, values) in enumerate(series.items()):
        vals = [0.0 if v is None else float(v) for v in values]
        top = max([top, *vals])
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        c = (colours or {}).get(name, colour(name))
        err = (errors or {}).get(name)
        if err:
            top = max([top, *(v + e for v, e in zip(vals, err[1], strict=True))])
        container = ax.bar(xs, vals, width, label=name, color=c, yerr=err, capsize=3)
        ax.bar_label(
            container,
            labels=["-" if v is None else fmt.format(v) for v in values],
            padding=2,
            fontsize=7,
        )
    ax.set_xticks(range(len(groups)), [label(g) for g in groups])
    ax.set_ylim(0, max(top, 1e-9) * 1.2)
    ax.legend(fontsize=8, loc="upper left")


def log_ticks(ax: Any, axis: str = "x") -> None:
    """Plain tick labels at 1, 2 and 5 times powers of ten on a log axis (none in between,
    so no label runs into the next)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    which = ax.xaxis if axis == "x" else ax.yaxis
    ticks = [m * 10.0**e for e in range(-6, 7) for m in (1, 2, 5)]  # those in view are drawn
    which.set_major_locator(FixedLocator(ticks))
    which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    which.set_minor_formatter(NullFormatter())


def times(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def no_log_bars(fig: Any) -> None:
    """Raise if any panel draws bars on a log axis (a bar's length would lie)."""
    from matplotlib.container import BarContainer

    for ax in fig.axes:
        has_bars = any(isinstance(c, BarContainer) for c in ax.containers)
        if has_bars and "log" in (ax.get_xscale(), ax.get_yscale()):
            raise ValueError(f"bars on a log axis in {ax.get_title()!r}")


def finish(fig: Any, path: Path, title: str = "") -> None:
    """Title, a tight layout (nothing overlaps), the PNG written, the figure closed; never
    bars on a log axis."""
    plt = pyplot()
    no_log_bars(fig)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
