"""Pictures of a query: latency waterfall, transfer volume, strategy comparison, and the
seed's "single database vs federated" bars.

Pure functions of Plan / Trace / Comparison: nothing here talks to a database, so a
result computed once can be drawn any number of times (and tests draw made-up traces).
Every function takes ``ax=None`` (a new figure when None) and returns the Axes it drew
on, or the Figure when it draws several panels. A source keeps one color in every
picture of a query and in the HTML views (:func:`fedlab.sql.plan.source_colors`).

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> from fedlab.result import Trace, TraceEntry
>>> t = Trace(planning_s=0.005, residual_start=0.04, residual_s=0.01, total_s=0.05)
>>> t.entries = [TraceEntry("f1", "crm", "sqlite", "SELECT 1", 0.005, 0.035, 10, 800),
...              TraceEntry("f2", "sales", "sqlite", "SELECT 2", 0.005, 0.030, 90, 7200)]
>>> ax = plot_waterfall(t)
>>> [round(p.get_width()) for p in ax.patches]   # ms: f1, f2, local, plan
[30, 25, 10, 5]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fedlab.result import Comparison
from fedlab.sql.plan import ALERT_COLOR, LOCAL_COLOR, PLAN_COLOR, source_colors

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from fedlab.result import FederatedResult, Trace

__all__ = [
    "plot_comparison",
    "plot_single_vs_federated",
    "plot_trace",
    "plot_volume",
    "plot_waterfall",
    "source_colors",
]

#: Stages of a query's wall-clock time, as stacked in the comparison chart.
_STAGE_COLORS = {"plan": PLAN_COLOR, "fetch": "#4f9a94", "local": LOCAL_COLOR, "other": "#e0e0e0"}

# the shortest bar drawn, so that a 0 ms step is still visible (in ms)
_MIN_MS = 0.01


def _trace(data: Trace | FederatedResult) -> Trace:
    return getattr(data, "trace", data)


def _new_axes(figsize: tuple[float, float]) -> Axes:
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def _byte_unit(largest: float) -> tuple[str, float]:
    """The unit that shows ``largest`` bytes as a number below 1024.

    >>> _byte_unit(800), _byte_unit(8000), _byte_unit(40e6)
    (('B', 1), ('KB', 1024), ('MB', 1048576))
    """
    for i, unit in enumerate(("B", "KB", "MB", "GB")):
        if largest < 1024 ** (i + 1) or unit == "GB":
            return unit, 1024**i
    raise AssertionError("unreachable")  # pragma: no cover


def _legend_handles(
    colors: dict[str, str], extra: Sequence[tuple[str, str]] = (), *, cache: bool = False
) -> list:
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=name) for name, c in colors.items()] + [
        Patch(color=c, label=name) for name, c in extra
    ]
    if cache:  # what a hatched bar means
        handles.append(Patch(facecolor="white", edgecolor="#555", hatch=CACHE_HATCH, label="cache"))
    return handles


#: How a fragment answered by the fragment cache is drawn (its bytes did not move).
CACHE_HATCH = "//"


def _cache_bar(
    ax: Axes,
    horizontal: bool,
    pos: float,
    size: float,
    start: float,
    color: str,
    *,
    mismatch: bool = False,
) -> Any:
    """A hatched segment in the source's color: bytes served by the fragment cache.

    In a strategy whose answer differs, the mismatch marking (red "xx") wins.
    """
    style = {
        "facecolor": "white",
        "edgecolor": ALERT_COLOR if mismatch else color,
        "hatch": "xx" if mismatch else CACHE_HATCH,
        "linewidth": 0.8,
    }
    if horizontal:
        return ax.barh(pos, size, left=start, **style)
    return ax.bar(pos, size, bottom=start, width=0.6, **style)


# ---------------------------------------------------------------------- one result
def plot_waterfall(trace: Trace | FederatedResult, ax: Axes | None = None) -> Axes:
    """Latency waterfall: one bar per fragment on the query's clock, then the local step.

    Bars are colored by source (legend by source), so fragments that ran in parallel are
    visibly overlapping spans; the residual (local Polars work) follows on the same axis,
    planning (when measured) precedes it and a dotted line marks the total. Cache hits
    are hatched, failed fragments outlined in red, retries noted next to the bar.

    Patches are drawn in this order: one per fragment, the local step, then planning.
    """
    t = _trace(trace)
    n = len(t.entries)
    created = ax is None
    if created:
        ax = _new_axes((8, 0.9 + 0.42 * (n + 2)))
    colors = source_colors(t.sources)
    end_ms = max([t.total_s, t.residual_start + t.residual_s, *(e.end for e in t.entries)]) * 1000
    pad = end_ms * 0.01

    def note(y: float, right_ms: float, text: str) -> None:
        ax.text(right_ms + pad, y, text, va="center", ha="left", fontsize=8, color="#333")

    for i, e in enumerate(t.entries):
        ax.barh(
            i,
            max(e.seconds * 1000, _MIN_MS),
            left=e.start * 1000,
            color=colors[e.source],
            hatch=CACHE_HATCH if e.cache_hit else None,
            edgecolor=ALERT_COLOR if e.error else "white",
            linewidth=2 if e.error else 0.5,
        )
        text = f"{e.seconds * 1000:.1f} ms · {e.rows:,} rows"
        if e.cache_hit:
            text += " · cache"
        if e.retries:
            text += f" · {e.retries} retr{'y' if e.retries == 1 else 'ies'}"
        if e.error:
            text += " · failed"
        note(i, e.end * 1000, text)
    ax.barh(
        n,
        max(t.residual_s * 1000, _MIN_MS),
        left=t.residual_start * 1000,
        color=LOCAL_COLOR,
    )
    note(
        n,
        (t.residual_start + t.residual_s) * 1000,
        f"{t.residual_s * 1000:.1f} ms → {t.result_rows:,} rows",
    )
    ticks = list(range(n + 1))
    labels = [f"{e.fragment} @ {e.source}" for e in t.entries] + ["local (Polars)"]
    extra = [("local (Polars)", LOCAL_COLOR)]
    if t.planning_s > 0:
        ax.barh(-1, t.planning_s * 1000, left=0, color=PLAN_COLOR)
        note(-1, t.planning_s * 1000, f"{t.planning_s * 1000:.1f} ms")
        ticks.insert(0, -1)
        labels.insert(0, "plan")
        extra.append(("plan", PLAN_COLOR))
    if t.total_s > 0:
        ax.axvline(t.total_s * 1000, color="#333", linestyle=":", linewidth=1)
    ax.set_yticks(ticks, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, end_ms * 1.35 if end_ms > 0 else 1)  # room for the notes
    ax.set_xlabel(
        "ms since query start" + (f"  (total {t.total_s * 1000:.1f} ms)" if t.total_s else "")
    )
    ax.set_title("latency waterfall")
    ax.legend(
        handles=_legend_handles(colors, extra, cache=any(e.cache_hit for e in t.entries)),
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    if created:  # a figure of our own: make room for the legend and notes
        ax.figure.tight_layout()
    return ax


def plot_volume(data: Trace | FederatedResult | Comparison, ax: Axes | None = None) -> Axes:
    """Transfer volume: bytes and rows moved from each source.

    For one result (a Trace or FederatedResult): one horizontal bar per source, its bytes,
    with the rows and fragments it sent written next to it. What the fragment cache served
    instead of the source follows as a hatched segment labelled "cache" (drawn after all
    the solid bars; those bytes did not move and are not in the axis' total). For a
    Comparison: one stacked bar per strategy, split by source (cache hits hatched on top),
    rows moved on top; strategies whose answer differs (``same_result`` False) are hatched
    red and their label marked ✗.
    """
    if isinstance(data, Comparison):
        return _comparison_volume(data, ax)
    t = _trace(data)
    per = t.by_source(cache=True)
    created = ax is None
    if created:
        ax = _new_axes((5.5, 0.9 + 0.45 * max(per.height, 1)))
    colors = source_colors(per["source"])
    totals = [m + c for m, c in zip(per["bytes"], per["cache_bytes"], strict=True)]
    unit, scale = _byte_unit(max(totals, default=0))
    widths = [b / scale for b in per["bytes"]]
    ax.barh(range(per.height), widths, color=[colors[s] for s in per["source"]])
    for i, row in enumerate(per.iter_rows(named=True)):
        if row["cache_bytes"]:
            _cache_bar(ax, True, i, row["cache_bytes"] / scale, widths[i], colors[row["source"]])
    ends = [b / scale for b in totals]
    pad = max(ends, default=0) * 0.02
    for i, row in enumerate(per.iter_rows(named=True)):
        text = f"{row['rows']:,} rows · {row['fragments']} frag."
        if row["cache_hits"]:
            text += f" · cache: {row['cache_rows']:,} rows"
        ax.text(ends[i] + pad, i, text, va="center", fontsize=8, color="#333")
    ax.set_yticks(
        range(per.height), [f"{s} ({k})" for s, k in zip(per["source"], per["kind"], strict=True)]
    )
    ax.invert_yaxis()
    ax.set_xlim(0, max(ends, default=0) * 1.45 or 1)
    label = f"{unit} moved (total {t.bytes / scale:,.1f} {unit}, {t.rows:,} rows)"
    if t.cache_hits:
        label += f"; hatched: from cache, {t.cache_bytes / scale:,.1f} {unit} not moved"
        ax.legend(handles=_legend_handles({}, cache=True), fontsize=7, loc="lower right")
    ax.set_xlabel(label)
    ax.set_title("transfer volume by source")
    if created:  # a figure of our own: make room for the legend and notes
        ax.figure.tight_layout()
    return ax


def plot_trace(
    trace: Trace | FederatedResult,
    title: str = "",
    ax: Sequence[Axes] | None = None,
    **kwargs: Any,
) -> Figure:
    """Waterfall and volume side by side (what ``res.plot()`` shows).

    Args:
        trace: a Trace or a FederatedResult.
        title: the figure's title.
        ax: two Axes to draw on (waterfall, volume); a new figure when None.
        figsize: size of the new figure.
    """
    import matplotlib.pyplot as plt

    t = _trace(trace)
    if ax is None:
        rows = len(t.entries) + 2
        fig, (a, b) = plt.subplots(
            1,
            2,
            figsize=kwargs.get("figsize", (13, 1.2 + 0.42 * rows)),
            gridspec_kw={"width_ratios": [3, 2]},
        )
    else:
        a, b = ax
        fig = a.figure
    plot_waterfall(t, a)
    plot_volume(t, b)
    if title:
        fig.suptitle(title)
    if ax is None:
        fig.tight_layout()
    return fig


def plot_single_vs_federated(
    single: float | Trace | FederatedResult,
    federated: Trace | FederatedResult,
    ax: Axes | None = None,
    *,
    include_planning: bool = True,
    labels: tuple[str, str] = ("single database", "federated"),
) -> Axes:
    """The seed's "Query Performance" picture, measured: one database vs the federation.

    The first bar is the query's time on a single database holding all the tables; the
    second is the federated run stacked into planning, one segment per source (the time
    its fragments took) and the merge (the local residual). When fragments overlapped,
    the segments add up to more than the wall clock; a dashed line marks the real total.

    ``single`` is the monolith's time in seconds, or its Trace / FederatedResult (its
    ``total_s`` is used). To measure it, put every table in one database and run the
    same SQL there, for example with the demo::

        from fedlab.load import write_tables
        write_tables("sqlite:///monolith.db", fl.demo.frames(), primary_keys=fl.demo.PRIMARY_KEYS)
        mono = fl.Federation()
        mono.attach("mono", "sqlite:///monolith.db")
        single = mono.sql(fl.demo.SEED_QUERY)        # one fragment: the whole query
        federated = fl.demo.federation().sql(fl.demo.SEED_QUERY)
        plot_single_vs_federated(single, federated)

    Passing a time measured outside fedlab (``sqlite3`` directly) leaves out fedlab's
    planning; use ``include_planning=False`` to compare like with like.

    Patches: the single bar first, then the federated segments bottom to top.
    """
    fed = _trace(federated)
    planning = fed.planning_s if include_planning else 0.0
    if isinstance(single, int | float):
        single_s = float(single)
    else:
        st = _trace(single)
        single_s = st.total_s - (0.0 if include_planning else st.planning_s)
    wall_s = fed.total_s - (0.0 if include_planning else fed.planning_s)
    created = ax is None
    if created:
        ax = _new_axes((5.5, 4.2))
    colors = source_colors(fed.sources)
    ax.bar(0, single_s * 1000, width=0.55, color="#555555")
    segments: list[tuple[str, float, str]] = []
    if planning > 0:
        segments.append(("plan", planning, PLAN_COLOR))
    per = fed.by_source()
    segments += [
        (f"{s} fetch", sec, colors[s]) for s, sec in zip(per["source"], per["seconds"], strict=True)
    ]
    segments.append(("merge", fed.residual_s, LOCAL_COLOR))
    stacked = sum(sec for _, sec, _ in segments)
    if wall_s - stacked > 0.01 * wall_s:  # time not in any step: pool start, conversions…
        segments.append(("other", wall_s - stacked, _STAGE_COLORS["other"]))
    bottom = 0.0
    for name, sec, color in segments:
        ax.bar(
            1,
            sec * 1000,
            width=0.55,
            bottom=bottom,
            color=color,
            label=name,
            edgecolor="white",
            linewidth=0.5,
        )
        if sec * 1000 > 0.06 * max(stacked, wall_s, single_s) * 1000:  # label when it fits
            ax.text(
                1,
                bottom + sec * 500,
                f"{name}\n{sec * 1000:.1f} ms",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if name != "other" else "#333",
            )
        bottom += sec * 1000
    top = max(bottom, wall_s * 1000, single_s * 1000)
    ax.text(0, single_s * 1000 + top * 0.02, f"{single_s * 1000:.1f} ms", ha="center", va="bottom")
    overlapped = bottom > wall_s * 1000 * 1.01
    ax.text(
        1,
        max(bottom, wall_s * 1000) + top * 0.02,
        f"{bottom:.1f} ms of steps" if overlapped else f"total {wall_s * 1000:.1f} ms",
        ha="center",
        va="bottom",
    )
    if overlapped:
        ax.hlines(wall_s * 1000, 0.65, 1.35, colors="#333", linestyles="--", linewidth=1)
        ax.text(
            1.37,
            wall_s * 1000,
            f"total {wall_s * 1000:.1f} ms\n(wall clock: the\nfetches overlapped)",
            va="center",
            fontsize=7,
            color="#333",
        )
    ax.set_xticks([0, 1], list(labels))
    ax.set_xlim(-0.6, 2.1)
    ax.set_ylim(0, top * 1.15 or 1)
    ax.set_ylabel("ms")
    ax.set_title("single database vs federated")
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], names[::-1], fontsize=7, loc="upper left")  # as stacked
    if created:  # a figure of our own: make room for the legend and notes
        ax.figure.tight_layout()
    return ax


# ---------------------------------------------------------------------- strategies
def _strategy_rows(comparison: Comparison) -> list[dict[str, Any]]:
    rows = list(comparison.table.iter_rows(named=True))
    for r in rows:
        res = comparison.results.get(r["strategy"])
        r["trace"] = res.trace if res is not None else None
        r["mismatch"] = r.get("same_result") is False
    return rows


def _strategy_ticks(ax: Axes, rows: list[dict[str, Any]]) -> None:
    """One tick per strategy; a strategy with a different answer is marked ✗ in red."""
    ax.set_xticks(
        range(len(rows)), [f"✗ {r['strategy']}" if r["mismatch"] else r["strategy"] for r in rows]
    )
    for r, label in zip(rows, ax.get_xticklabels(), strict=True):
        if r["mismatch"]:
            label.set_color(ALERT_COLOR)


def _comparison_time(comparison: Comparison, ax: Axes | None = None) -> Axes:
    """Wall-clock ms per strategy, stacked by stage (plan, fetch, local, other)."""
    rows = _strategy_rows(comparison)
    created = ax is None
    if created:
        ax = _new_axes((1.5 + 1.1 * len(rows), 3.2))
    for x, r in enumerate(rows):
        t = r["trace"]
        if t is None:  # a table without its results: the total only
            stages = [("other", r["total_s"])]
        else:
            stages = [("plan", t.planning_s), ("fetch", t.fetch_s), ("local", t.residual_s)]
            stages.append(("other", max(t.total_s - sum(s for _, s in stages), 0.0)))
        bottom = 0.0
        for name, sec in stages:
            ax.bar(
                x,
                sec * 1000,
                bottom=bottom,
                width=0.6,
                color=_STAGE_COLORS[name],
                hatch="xx" if r["mismatch"] else None,
                edgecolor=ALERT_COLOR if r["mismatch"] else "white",
                linewidth=0.5,
            )
            bottom += sec * 1000
        ax.text(x, bottom, f"{r['total_s'] * 1000:.1f} ms", ha="center", va="bottom", fontsize=8)
    _strategy_ticks(ax, rows)
    ax.set_ylabel("ms (wall clock)")
    ax.set_title("time by stage")
    ax.margins(y=0.15)
    ax.legend(
        handles=_legend_handles({}, [(k, v) for k, v in _STAGE_COLORS.items()]),
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    if created:  # a figure of our own: make room for the legend and notes
        ax.figure.tight_layout()
    return ax


def _comparison_volume(comparison: Comparison, ax: Axes | None = None) -> Axes:
    rows = _strategy_rows(comparison)
    created = ax is None
    if created:
        ax = _new_axes((1.5 + 1.1 * len(rows), 3.2))
    names = sorted({s for r in rows if r["trace"] is not None for s in r["trace"].sources})
    colors = source_colors(names)
    unit, scale = _byte_unit(
        max([r["bytes"] + (r["trace"].cache_bytes if r["trace"] else 0) for r in rows], default=0)
    )
    any_cache = False
    for x, r in enumerate(rows):
        t = r["trace"]
        per = None if t is None else t.by_source(cache=True)
        parts = (
            [("?", r["bytes"], "#999999")]
            if per is None
            else [(s, b, colors[s]) for s, b in zip(per["source"], per["bytes"], strict=True)]
        )
        bottom = 0.0
        for _, b, color in parts:
            ax.bar(
                x,
                b / scale,
                bottom=bottom,
                width=0.6,
                color=color,
                hatch="xx" if r["mismatch"] else None,
                edgecolor=ALERT_COLOR if r["mismatch"] else "white",
                linewidth=0.5,
            )
            bottom += b / scale
        if per is not None:  # what the cache served: hatched, on top of what moved
            for s, c in zip(per["source"], per["cache_bytes"], strict=True):
                if c:
                    _cache_bar(ax, False, x, c / scale, bottom, colors[s], mismatch=r["mismatch"])
                    bottom += c / scale
                    any_cache = True
        ax.text(x, bottom, f"{r['rows']:,} rows", ha="center", va="bottom", fontsize=8)
    _strategy_ticks(ax, rows)
    ax.set_ylabel(f"{unit} moved")
    ax.set_title("transfer volume by source")
    ax.margins(y=0.15)
    if colors:
        ax.legend(
            handles=_legend_handles(colors, cache=any_cache),
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    if created:  # a figure of our own: make room for the legend and notes
        ax.figure.tight_layout()
    return ax


def plot_comparison(
    comparison: Comparison, ax: Sequence[Axes] | None = None, **kwargs: Any
) -> Figure:
    """Time and bytes per strategy side by side (what ``cmp.plot()`` shows).

    One group (a stacked bar) per strategy in each panel: time split into plan, fetch,
    local and other; bytes split by source. A strategy whose answer differs from the
    first strategy's (``same_result`` False) is hatched red, its label marked ✗.

    Args:
        comparison: from :meth:`fedlab.Federation.compare`.
        ax: two Axes (time, bytes); a new figure when None.
        figsize: size of the new figure.
    """
    import matplotlib.pyplot as plt

    n = comparison.table.height
    if ax is None:
        fig, (a, b) = plt.subplots(1, 2, figsize=kwargs.get("figsize", (3 + 2.2 * n, 3.4)))
    else:
        a, b = ax
        fig = a.figure
    _comparison_time(comparison, a)
    _comparison_volume(comparison, b)
    if comparison.mismatches:
        fig.suptitle(f"✗ different answer: {', '.join(comparison.mismatches)}", color=ALERT_COLOR)
    if ax is None:
        fig.tight_layout()
    return fig
