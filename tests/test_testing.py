"""The equality rule (DESIGN.md) and the pictures drawn from a trace."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import matplotlib
import polars as pl
import pytest

import fedlab as fl
from fedlab.result import Trace, TraceEntry
from fedlab.testing import assert_same_result, same_result

matplotlib.use("Agg")


def frame(**cols) -> pl.DataFrame:
    return pl.DataFrame(cols, strict=False)


@pytest.mark.parametrize(
    ("got", "expected", "ordered", "equal"),
    [
        # row order matters only when ordered
        (frame(a=[1, 2]), frame(a=[2, 1]), False, True),
        (frame(a=[1, 2]), frame(a=[2, 1]), True, False),
        # multisets, not sets
        (frame(a=[1, 1, 2]), frame(a=[1, 2, 2]), False, False),
        # numbers as numbers, whatever their type
        (frame(a=[1, 2]), frame(a=[1.0, 2.0]), True, True),
        (
            frame(a=[1.5]),
            pl.DataFrame({"a": [Decimal("1.50")]}, schema={"a": pl.Decimal(10, 2)}),
            True,
            True,
        ),
        # floats: relative 1e-9 or absolute 1e-6
        (frame(a=[1e12]), frame(a=[1e12 + 1e2]), True, True),
        (frame(a=[1e12]), frame(a=[1e12 + 1e4]), True, False),
        (frame(a=[0.1 + 0.2]), frame(a=[0.3]), True, True),
        (frame(a=[1.0]), frame(a=[1.00001]), True, False),
        # strings exactly: case and trailing spaces matter
        (frame(s=["paid"]), frame(s=["PAID"]), False, False),
        (frame(s=["paid "]), frame(s=["paid"]), False, False),
        # NULL equals NULL, and only NULL
        (frame(a=[None, 1]), frame(a=[1, None]), False, True),
        (frame(a=[None]), frame(a=[0]), False, False),
        # dates and timestamps as values
        (frame(d=[dt.date(2021, 1, 2)]), frame(d=[dt.datetime(2021, 1, 2)]), True, True),
        (frame(d=[dt.date(2021, 1, 2)]), frame(d=["2021-01-02"]), True, False),
        # names and count of columns
        (frame(a=[1]), frame(b=[1]), False, False),
        (frame(a=[1], b=[2]), frame(b=[2], a=[1]), False, False),
        (frame(a=[1]), frame(a=[1], b=[1]), False, False),
        # a column of NULLs compares with any type
        (pl.DataFrame({"a": [None]}), frame(a=["x"]).clear().extend(frame(a=[None])), True, True),
        # booleans against 0/1 integers (MariaDB booleans)
        (frame(b=[True, False]), frame(b=[1, 0]), True, True),
    ],
)
def test_equality_rule(got, expected, ordered, equal) -> None:
    ok, why = same_result(got, expected, ordered=ordered)
    assert ok is equal, why
    assert (why == "") is equal


def test_close_floats_that_sort_differently_still_match() -> None:
    # rows whose floats differ by noise can sort in a different order on each side
    got = frame(k=["a", "a"], v=[1.0000000000001, 1.0])
    expected = frame(k=["a", "a"], v=[1.0, 1.0000000000002])
    assert_same_result(got, expected)


def test_difference_report_names_the_rows() -> None:
    with pytest.raises(AssertionError, match=r"(?s)1 of 2 rows differ.*'PAID'.*'paid'"):
        assert_same_result(frame(s=["a", "PAID"]), frame(s=["a", "paid"]), ordered=True)


def test_accepts_pandas_and_results() -> None:
    df = frame(a=[1, 2])
    assert_same_result(df.to_pandas(), df)


def _trace() -> Trace:
    t = Trace(residual_s=0.01, residual_start=0.2, total_s=0.21)
    t.entries = [
        TraceEntry("f1", "crm", "postgresql", "SELECT 1", 0.0, 0.15, 10, 800),
        TraceEntry("f2", "sales", "mysql", "SELECT 2", 0.01, 0.2, 100, 8000),
    ]
    return t


def test_trace_totals_and_frame() -> None:
    t = _trace()
    assert (t.rows, t.bytes) == (110, 8800)
    f = t.to_polars()
    assert f["seconds"].round(6).to_list() == [0.15, 0.19]
    assert "2 fragment" in t.summary()


def test_plots_are_pure_functions_of_the_trace() -> None:
    from fedlab.viz import plot_trace, plot_volume, plot_waterfall

    t = _trace()
    fig = plot_trace(t, title="pushdown plan")
    assert len(fig.axes) == 2
    ax = plot_waterfall(t)
    widths = [p.get_width() for p in ax.patches]
    assert widths[:2] == pytest.approx([150.0, 190.0])  # ms per fragment
    assert [tick.get_text() for tick in ax.get_yticklabels()][-1] == "local (Polars)"
    ax = plot_volume(t)
    assert [p.get_width() for p in ax.patches] == pytest.approx([800 / 1024, 8000 / 1024])
    import matplotlib.pyplot as plt

    plt.close("all")  # later tests check that the figures they show are closed


def test_public_api_names() -> None:
    for name in ("Federation", "FedlabError", "Plan", "Trace", "FederatedResult", "Comparison"):
        assert hasattr(fl, name)
    assert fl.testing.assert_same_result is assert_same_result
