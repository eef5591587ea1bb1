"""Pictures of a trace: latency waterfall, transfer volume, strategy comparison.

Pure functions of Plan / Trace / Comparison: nothing here talks to a database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from fedlab.result import Comparison, Trace

__all__ = ["plot_comparison", "plot_trace", "plot_volume", "plot_waterfall"]

_KIND_COLORS = {
    "postgresql": "#336791",
    "mysql": "#c0765a",
    "sqlite": "#4f9a94",
    "duckdb": "#d4a72c",
}


def plot_waterfall(trace: Trace, ax: Axes | None = None) -> Axes:
    """One bar per fragment from its start to its end, then the local residual."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * (len(trace.entries) + 1)))
    labels = []
    for i, e in enumerate(trace.entries):
        ax.barh(
            i,
            max(e.seconds, 1e-5) * 1000,
            left=e.start * 1000,
            color=_KIND_COLORS.get(e.kind, "grey"),
        )
        labels.append(f"{e.fragment} @ {e.source}")
    n = len(trace.entries)
    ax.barh(
        n, max(trace.residual_s, 1e-5) * 1000, left=trace.residual_start * 1000, color="#888888"
    )
    labels.append("local (Polars)")
    ax.set_yticks(range(n + 1), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms since query start")
    ax.set_title("latency waterfall")
    return ax


def plot_volume(trace: Trace, ax: Axes | None = None) -> Axes:
    """Bytes moved by each fragment."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.5 + 0.45 * max(len(trace.entries), 1)))
    ax.barh(
        range(len(trace.entries)),
        [e.bytes / 1024 for e in trace.entries],
        color=[_KIND_COLORS.get(e.kind, "grey") for e in trace.entries],
    )
    ax.set_yticks(range(len(trace.entries)), [f"{e.fragment} @ {e.source}" for e in trace.entries])
    ax.invert_yaxis()
    ax.set_xlabel("KB moved")
    ax.set_title("transfer volume")
    return ax


def plot_trace(trace: Trace, title: str = "", **kwargs: Any) -> Figure:
    """Waterfall and volume side by side."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(
        1, 2, figsize=kwargs.get("figsize", (11, 0.8 + 0.45 * (len(trace.entries) + 1)))
    )
    plot_waterfall(trace, a)
    plot_volume(trace, b)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_comparison(comparison: Comparison, **kwargs: Any) -> Figure:
    """Seconds and bytes moved per strategy."""
    import matplotlib.pyplot as plt

    t = comparison.table
    fig, (a, b) = plt.subplots(1, 2, figsize=kwargs.get("figsize", (10, 3)))
    names = t["strategy"].to_list()
    a.bar(names, [s * 1000 for s in t["total_s"].to_list()], color="#336791")
    a.set_ylabel("ms")
    a.set_title("time")
    b.bar(names, [x / 1024 for x in t["bytes"].to_list()], color="#c0765a")
    b.set_ylabel("KB moved")
    b.set_title("transfer volume")
    fig.tight_layout()
    return fig
