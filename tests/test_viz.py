"""Plots: pure functions of Plan / Trace / Comparison, with the expected artists."""

from __future__ import annotations

import sqlite3

import matplotlib
import matplotlib.pyplot as plt
import polars as pl
import pytest
import sqlglot
from matplotlib.colors import to_hex

import fedlab as fl
from fedlab import viz
from fedlab.result import Comparison, FederatedResult, Trace, TraceEntry
from fedlab.sql.plan import ALERT_COLOR, LOCAL_COLOR, PLAN_COLOR, Fragment, Plan

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def parallel_trace() -> Trace:
    """Planning, then three fragments on two sources running at once, then the merge."""
    t = Trace(
        planning_s=0.005,
        fetch_s=0.030,
        residual_start=0.036,
        residual_s=0.010,
        total_s=0.050,
        result_rows=7,
    )
    t.entries = [
        TraceEntry("f1", "crm", "postgresql", "SELECT 1", 0.005, 0.035, 10, 800, "connectorx"),
        TraceEntry("f2", "sales", "mysql", "SELECT 2", 0.006, 0.031, 100, 8000, "connectorx"),
        TraceEntry("f3", "crm", "postgresql", "SELECT 3", 0.006, 0.016, 5, 400, cache_hit=True),
    ]
    return t


def sequential_trace() -> Trace:
    """The seed's arithmetic: 30 ms, then 25 ms, then a 10 ms merge (and 2 ms unaccounted)."""
    t = Trace(planning_s=0.0, residual_start=0.055, residual_s=0.010, total_s=0.067)
    t.entries = [
        TraceEntry("f1", "db1", "sqlite", "SELECT 1", 0.000, 0.030, 10, 800),
        TraceEntry("f2", "db2", "sqlite", "SELECT 2", 0.030, 0.055, 20, 1600),
    ]
    return t


def result_of(trace: Trace, strategy: str = "pushdown") -> FederatedResult:
    frags = [
        Fragment(e.fragment, e.source, e.kind, e.sql, [("x", sqlglot.exp.DataType.build("int"))])
        for e in trace.entries
    ]
    plan = Plan("SELECT 1", strategy, frags, sqlglot.parse_one("SELECT 1 AS x"), "SELECT 1 AS x")
    return FederatedResult(pl.DataFrame({"x": [1]}), plan, trace)


def comparison(same: dict[str, bool], with_results: bool = True) -> Comparison:
    results, rows = {}, []
    for i, (strategy, ok) in enumerate(same.items()):
        t = parallel_trace()
        for e in t.entries:
            e.bytes *= i + 1
        t.total_s *= i + 1
        results[strategy] = result_of(t, strategy)
        rows.append(
            {
                "strategy": strategy,
                "total_s": t.total_s,
                "bytes": t.bytes,
                "rows": t.rows,
                "fragments": len(t.entries),
                "result_rows": 1,
                "same_result": ok,
                "difference": None if ok else "1 of 1 rows differ",
            }
        )
    return Comparison("SELECT 1", results if with_results else {}, pl.DataFrame(rows))


def colors(patches) -> list[str]:
    return [to_hex(p.get_facecolor()) for p in patches]


def tick_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


# ---------------------------------------------------------------------- waterfall
def test_waterfall_one_bar_per_fragment_on_the_query_clock() -> None:
    t = parallel_trace()
    ax = viz.plot_waterfall(t)
    bars = ax.patches
    assert len(bars) == len(t.entries) + 2  # fragments, local step, planning
    frag_bars = bars[: len(t.entries)]
    assert [b.get_x() for b in frag_bars] == pytest.approx([5.0, 6.0, 6.0])  # start, ms
    assert [b.get_width() for b in frag_bars] == pytest.approx([30.0, 25.0, 10.0])
    # the three fragments overlap in time: parallel fetches are visible as overlapping spans
    assert max(b.get_x() for b in frag_bars) < min(b.get_x() + b.get_width() for b in frag_bars)
    local, plan = bars[len(t.entries)], bars[len(t.entries) + 1]
    assert (local.get_x(), local.get_width()) == pytest.approx((36.0, 10.0))
    assert (plan.get_x(), plan.get_width()) == pytest.approx((0.0, 5.0))
    assert to_hex(local.get_facecolor()) == LOCAL_COLOR
    assert to_hex(plan.get_facecolor()) == PLAN_COLOR
    labels = [tick.get_text() for tick in ax.get_yticklabels()]
    assert labels == ["plan", "f1 @ crm", "f2 @ sales", "f3 @ crm", "local (Polars)"]


def test_waterfall_colors_by_source_with_a_legend() -> None:
    ax = viz.plot_waterfall(parallel_trace())
    c = colors(ax.patches[:3])
    assert c[0] == c[2] != c[1]  # f1 and f3 both read crm
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["crm", "sales"] and "local (Polars)" in legend
    assert ax.patches[2].get_hatch() == "//"  # f3 was a cache hit
    notes = " ".join(t.get_text() for t in ax.texts)
    assert "30.0 ms · 10 rows" in notes and "cache" in notes and "→ 7 rows" in notes


def test_waterfall_marks_failed_fragments_and_draws_on_a_given_axes() -> None:
    t = parallel_trace()
    t.entries[1].error = "timeout"
    t.entries[1].retries = 2
    _, ax = plt.subplots()
    assert viz.plot_waterfall(t, ax=ax) is ax
    assert to_hex(ax.patches[1].get_edgecolor()) == ALERT_COLOR
    notes = " ".join(x.get_text() for x in ax.texts)
    assert "2 retries" in notes and "failed" in notes


def test_waterfall_of_a_query_without_fragments() -> None:
    t = Trace(residual_s=0.001, total_s=0.001, result_rows=1)
    ax = viz.plot_waterfall(t)
    assert [tick.get_text() for tick in ax.get_yticklabels()] == ["local (Polars)"]


# ---------------------------------------------------------------------- volume
def test_volume_one_bar_per_source_with_rows_noted() -> None:
    t = parallel_trace()
    ax = viz.plot_volume(t)
    # crm and sales (moved), then crm's cache hit (f3) as a hatched segment after crm's bar
    assert len(ax.patches) == 3
    assert [p.get_width() for p in ax.patches] == pytest.approx(
        [800 / 1024, 8000 / 1024, 400 / 1024]
    )
    assert ax.patches[2].get_hatch() == "//" and ax.patches[2].get_x() == pytest.approx(800 / 1024)
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [
        "crm (postgresql)",
        "sales (mysql)",
    ]
    assert "KB moved" in ax.get_xlabel()
    notes = [x.get_text() for x in ax.texts]
    assert notes == ["10 rows · 2 frag. · cache: 5 rows", "100 rows · 1 frag."]
    # the same colors as the waterfall
    wf = viz.plot_waterfall(t)
    assert colors(ax.patches[:2]) == colors(wf.patches[:2])


def test_volume_picks_a_readable_unit() -> None:
    t = sequential_trace()
    t.entries[0].bytes = 30 * 1024**2
    ax = viz.plot_volume(t)
    assert "MB moved" in ax.get_xlabel()
    assert ax.patches[0].get_width() == pytest.approx(30.0)


def test_result_plot_shows_waterfall_and_volume_together() -> None:
    res = result_of(parallel_trace())
    fig = res.plot()
    waterfall, volume = fig.axes
    assert waterfall.get_title() == "latency waterfall"
    assert volume.get_title() == "transfer volume by source"
    assert fig._suptitle.get_text() == "pushdown plan"
    assert len(res.trace.plot().axes) == 2
    _, (a, b) = plt.subplots(1, 2)
    assert viz.plot_trace(res, ax=(a, b)) is a.figure and len(a.patches) == 5


# ---------------------------------------------------------------------- strategies
def test_comparison_one_group_per_strategy_time_and_bytes() -> None:
    cmp = comparison({"naive": True, "pushdown": True, "auto": True})
    fig = cmp.plot()
    time_ax, bytes_ax = fig.axes
    for ax in (time_ax, bytes_ax):
        assert tick_texts(ax) == ["naive", "pushdown", "auto"]
        groups = sorted({round(p.get_x() + p.get_width() / 2, 6) for p in ax.patches})
        assert groups == [0, 1, 2]  # one group (a stacked bar) per strategy
    # time: stacked stages add up to each strategy's wall clock
    tops = {}
    for p in time_ax.patches:
        x = round(p.get_x() + p.get_width() / 2)
        tops[x] = max(tops.get(x, 0), p.get_y() + p.get_height())
    assert [tops[i] for i in range(3)] == pytest.approx([50.0, 100.0, 150.0])
    # bytes: one segment per source, stacked
    assert len(bytes_ax.patches) == 3 * 3  # crm, sales moved; crm's cache hit hatched on top
    heights = [p.get_height() for p in bytes_ax.patches]
    assert sum(heights[:2]) == pytest.approx(8800 / 1024)  # moved
    assert heights[2] == pytest.approx(400 / 1024) and bytes_ax.patches[2].get_hatch() == "//"
    assert fig._suptitle is None  # nothing to warn about


def test_comparison_marks_strategies_with_a_different_answer() -> None:
    cmp = comparison({"naive": True, "pushdown": False})
    assert cmp.mismatches == ["pushdown"]
    fig = viz.plot_comparison(cmp)
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        assert [t.get_text() for t in labels] == ["naive", "✗ pushdown"]
        assert to_hex(labels[1].get_color()) == ALERT_COLOR
        bad = [p for p in ax.patches if round(p.get_x() + p.get_width() / 2) == 1]
        assert bad and all(p.get_hatch() == "xx" for p in bad)
        good = [p for p in ax.patches if round(p.get_x() + p.get_width() / 2) == 0]
        assert all(p.get_hatch() in (None, "//") for p in good)  # "//": a cache hit
    assert "pushdown" in fig._suptitle.get_text()


def test_comparison_volume_alone_and_from_a_table_only() -> None:
    cmp = comparison({"naive": True, "pushdown": True})
    ax = cmp.plot_volume()
    assert tick_texts(ax) == ["naive", "pushdown"] and len(ax.patches) == 6
    bare = comparison({"naive": True, "pushdown": True}, with_results=False)
    fig = bare.plot()
    assert [len(ax.patches) for ax in fig.axes] == [2, 2]  # a single segment per strategy


def test_comparison_plot_of_a_real_compare(tmp_path) -> None:
    fed = fl.demo.federation(path=tmp_path)
    cmp = fed.compare(fl.demo.SEED_QUERY, strategies=("naive", "pushdown"))
    time_ax, bytes_ax = cmp.plot().axes
    assert tick_texts(time_ax) == ["naive", "pushdown"]
    naive, pushdown = cmp.table["bytes"].to_list()
    unit = bytes_ax.get_ylabel().split()[0]
    scale = {"B": 1, "KB": 1024, "MB": 1024**2}[unit]
    stacked = [0.0, 0.0]
    for p in bytes_ax.patches:
        stacked[round(p.get_x() + p.get_width() / 2)] += p.get_height()
    assert stacked == pytest.approx([naive / scale, pushdown / scale])


# ---------------------------------------------------------------------- single vs federated
def test_single_vs_federated_stacks_sources_and_merge() -> None:
    ax = viz.plot_single_vs_federated(0.050, sequential_trace())
    single, *stack = ax.patches
    assert single.get_height() == pytest.approx(50.0)
    assert tick_texts(ax) == ["single database", "federated"]
    # db1 30 ms, db2 25 ms, merge 10 ms, and the 2 ms no step accounts for
    assert [p.get_height() for p in stack] == pytest.approx([30.0, 25.0, 10.0, 2.0])
    bottoms = [p.get_y() for p in stack]
    assert bottoms == pytest.approx([0.0, 30.0, 55.0, 65.0])  # stacked, not side by side
    assert {round(p.get_x() + p.get_width() / 2) for p in stack} == {1}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["other", "merge", "db2 fetch", "db1 fetch"]  # top of the stack first
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "50.0 ms" in texts and "total 67.0 ms" in texts
    assert not ax.collections  # sequential: no wall-clock marker needed


def test_single_vs_federated_shows_overlap_against_the_wall_clock() -> None:
    res = result_of(parallel_trace())
    mono = Trace(planning_s=0.004, total_s=0.020)
    ax = res.plot_vs_single(mono)
    single, *stack = ax.patches
    assert single.get_height() == pytest.approx(20.0)
    # plan 5, crm 30 + 10 (two fragments), sales 25, merge 10
    assert [p.get_height() for p in stack] == pytest.approx([5.0, 40.0, 25.0, 10.0])
    assert to_hex(stack[0].get_facecolor()) == PLAN_COLOR
    assert ax.collections  # the dashed wall-clock line: 50 ms < 80 ms of steps
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "80.0 ms of steps" in texts and "total 50.0 ms" in texts
    # without planning on either side (a time measured outside fedlab)
    ax = viz.plot_single_vs_federated(mono, res, include_planning=False)
    single, *stack = ax.patches
    assert single.get_height() == pytest.approx(16.0)
    assert [p.get_height() for p in stack] == pytest.approx([40.0, 25.0, 10.0])


def test_single_vs_federated_on_the_demo(tmp_path) -> None:
    from fedlab.load import write_tables

    mono_url = f"sqlite:///{tmp_path / 'monolith.db'}"
    write_tables(mono_url, fl.demo.frames(), primary_keys=fl.demo.PRIMARY_KEYS)
    mono = fl.Federation()
    mono.attach("mono", mono_url)
    single = mono.sql(fl.demo.SEED_QUERY)
    federated = fl.demo.federation(path=tmp_path / "fed").sql(fl.demo.SEED_QUERY)
    fl.testing.assert_same_result(federated.df, single.df)
    ax = viz.plot_single_vs_federated(single, federated)
    assert ax.patches[0].get_height() == pytest.approx(single.trace.total_s * 1000)
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"crm fetch", "sales fetch", "merge", "plan"} <= set(names)


# ---------------------------------------------------------------------- purity
def test_plots_and_reprs_never_touch_a_database(tmp_path, monkeypatch) -> None:
    fed = fl.demo.federation(path=tmp_path)
    res = fed.sql(fl.demo.SEED_QUERY)
    cmp = fed.compare(fl.demo.SEED_QUERY, strategies=("naive", "pushdown"))
    plan = fed.explain(fl.demo.SEED_QUERY)

    def refuse(*args, **kwargs):
        raise AssertionError("a view touched a database")

    import duckdb

    import fedlab.execute.fetch

    monkeypatch.setattr(fl.source.Source, "connect", refuse)
    monkeypatch.setattr(fl.source.Source, "ping", refuse)
    monkeypatch.setattr(fedlab.execute.fetch, "default_fetch", refuse)
    monkeypatch.setattr(sqlite3, "connect", refuse)
    monkeypatch.setattr(duckdb, "connect", refuse)
    fed.fetch = refuse

    assert len(res.plot().axes) == 2
    assert len(cmp.plot().axes) == 2
    viz.plot_waterfall(res)
    viz.plot_volume(res.trace)
    viz.plot_volume(cmp)
    viz.plot_single_vs_federated(0.01, res)
    for shown in (res, cmp, plan, res.trace):
        assert shown._repr_html_().startswith("<div")
