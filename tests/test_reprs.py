"""Rich notebook views: Plan, FederatedResult, Trace and Comparison as HTML."""

from __future__ import annotations

import re

import polars as pl
import pytest
import sqlglot
from sqlglot import exp

from fedlab.result import Comparison, FederatedResult, Trace, TraceEntry
from fedlab.security import redact
from fedlab.sql.plan import Fragment, Plan, source_colors

INT = exp.DataType.build("int")
SECRET_URL = "postgresql://bob:s3cret@db.example:5432/crm"


def make_plan(*, residual: bool = True, notes: tuple[str, ...] = ()) -> Plan:
    frags = [
        Fragment(
            "f1",
            "crm",
            "postgresql",
            "SELECT id, name FROM users WHERE note < 'a&b' AND name <> '<script>'",
            [("id", INT), ("name", exp.DataType.build("text"))],
            tables=["crm.users"],
            pushed=["projection (2 of 7 columns)", "filter note < 'a&b'"],
            role="table",
            estimated_rows=1234,
        ),
        Fragment(
            "f2",
            "sales",
            "mysql",
            "SELECT user_id, total FROM orders",
            [("user_id", INT), ("total", INT)],
            tables=["sales.orders"],
            role="table",
        ),
    ]
    tree = sqlglot.parse_one("SELECT u.name, o.total FROM f1 AS u JOIN f2 AS o ON o.user_id = u.id")
    return Plan(
        "SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id",
        "pushdown",
        frags if residual else frags[:1],
        tree if residual else None,
        tree.sql() if residual else None,
        notes=list(notes),
        output_columns=["name", "total"],
    )


def make_trace() -> Trace:
    t = Trace(
        planning_s=0.002,
        fetch_s=0.031,
        residual_start=0.034,
        residual_s=0.004,
        total_s=0.0385,
        result_rows=3,
    )
    t.entries = [
        TraceEntry("f1", "crm", "postgresql", "SELECT 1", 0.002, 0.032, 2, 2048, "connectorx"),
        TraceEntry("f2", "sales", "mysql", "SELECT 2", 0.003, 0.028, 3, 96, "sqlalchemy", 1),
    ]
    return t


def make_result(**kwargs) -> FederatedResult:
    df = pl.DataFrame({"name": ["Zoë", "<b>José</b>", "李雷"], "total": [100, 200, 150]})
    return FederatedResult(df, make_plan(), make_trace(), **kwargs)


def text_of(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


# ---------------------------------------------------------------------- Plan
def test_plan_html_is_a_tree_of_boxes() -> None:
    plan = make_plan(notes=("users and orders are on different sources: joined locally",))
    h = plan._repr_html_()
    assert h.count("class='fedlab-residual'") == 1
    assert h.count("class='fedlab-fragment'") == 2  # one box per fragment
    assert h.index("fedlab-residual") < h.index("fedlab-fragment")  # the root on top
    text = text_of(h)
    for piece in (
        "Plan [pushdown]: 2 fragment(s) on 2 source(s)",
        "local residual (Polars)",
        "f1 @ crm",
        "f2 @ sales",
        "postgresql",
        "mysql",
        "est. ~1,234 rows",
        "reads crm.users",
        "returns id, name",
        "projection (2 of 7 columns)",
        "pushed nothing (whole table)",  # f2 pushed nothing
        "columns name, total",
        "joined locally",
    ):
        assert piece in text, piece
    assert "class='fedlab-notes'" in h
    # the source's color marks its box (the same color as in the charts)
    colors = source_colors(plan.sources)
    assert f"border-left:5px solid {colors['crm']}" in h
    assert f"border-left:5px solid {colors['sales']}" in h


def test_plan_html_escapes_sql() -> None:
    h = make_plan()._repr_html_()
    assert "&#x27;&lt;script&gt;&#x27;" in h  # the literal '<script>' of fragment f1
    assert "<script" not in h
    assert "note &lt; &#x27;a&amp;b&#x27;" in h
    assert "name &lt;&gt; " in h


def test_plan_html_needs_no_script_no_stylesheet_no_network() -> None:
    h = make_plan()._repr_html_()
    for forbidden in ("<script", "<style", "<link", "src=", "href=", "url(", "@import", "http"):
        assert forbidden not in h.lower(), forbidden


def test_plan_html_when_the_source_answers_everything() -> None:
    h = make_plan(residual=False)._repr_html_()
    assert "result</b> = fragment f1" in h
    assert "no local work" in h
    assert h.count("class='fedlab-fragment'") == 1


def test_plan_text_is_unchanged_by_the_html() -> None:
    plan = make_plan()
    text = str(plan)
    assert text.splitlines()[0] == "Plan [pushdown]  2 fragment(s) on 2 source(s)"
    assert "├─ f1 @ crm (postgresql) [table]  est. ~1,234 rows" in text
    assert "└─ f2 @ sales (mysql) [table]" in text


# ---------------------------------------------------------------------- FederatedResult
def test_result_html_pieces() -> None:
    res = make_result()
    h = res._repr_html_()
    assert h.startswith("<div class='fedlab-result'")
    assert res.df._repr_html_() in h  # the frame, as Polars draws it
    text = text_of(h)
    assert "3 row(s) × 2 column(s) in 38.5 ms" in text
    assert "strategy pushdown" in text and "2 fragment(s) on crm, sales" in text
    assert "5 rows / 2.1 KB moved" in text
    # the EXPLAIN tree, collapsed
    explain = h[h.index("<details>") :]
    assert explain.startswith("<details><summary") and "EXPLAIN [pushdown]" in explain
    assert "class='fedlab-plan'" in explain
    assert "├─ f1 @ crm (postgresql)" in explain  # the text EXPLAIN, folded inside
    # the trace table
    table = h[h.index("class='fedlab-trace'") :]
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert headers[:7] == ["fragment", "source", "kind", "rows", "bytes", "ms", "start ms"]
    assert "reader" in headers
    cells = re.findall(r"<td[^>]*>(.*?)</td>", table)
    assert [text_of(c) for c in cells[:9]] == [
        "f1",
        "crm",
        "postgresql",
        "2",
        "2.0 KB",
        "30.0",
        "2.0",
        "connectorx",
        "",
    ]
    assert "1 retry" in text_of(table)
    assert "local (Polars)" in text_of(table)


def test_result_html_escapes_data_and_follows_polars_row_limit() -> None:
    res = make_result()
    h = res._repr_html_()
    assert "<b>José</b>" not in h and "&lt;b&gt;José&lt;/b&gt;" in h
    with pl.Config(tbl_rows=2):  # what %federate --limit sets
        short = res._repr_html_()
    assert "Zoë" in short and "李雷" in short and "José" not in short


def test_result_html_flags_a_partial_answer() -> None:
    h = make_result(partial=True, missing_sources=["stock"])._repr_html_()
    assert "partial result" in h and "stock did not answer" in text_of(h)


def test_nothing_displayed_shows_a_password() -> None:
    plan = make_plan(notes=(f"fell back after {SECRET_URL} refused",))
    plan.fragments[0].sql = f"SELECT '{SECRET_URL}' AS dsn FROM t WHERE password = 'hunter22'"
    trace = make_trace()
    trace.entries[0].sql = plan.fragments[0].sql
    trace.entries[1].error = f"could not connect to {SECRET_URL}"
    res = FederatedResult(pl.DataFrame({"x": [1]}), plan, trace)
    cmp = Comparison(
        f"SELECT * FROM t -- {SECRET_URL}", {"pushdown": res}, pl.DataFrame({"strategy": ["p"]})
    )
    for h in (res._repr_html_(), plan._repr_html_(), trace._repr_html_(), cmp._repr_html_()):
        assert "s3cret" not in h and "hunter22" not in h
        assert "bob:***@db.example" in h
    assert redact(SECRET_URL) == "postgresql://bob:***@db.example:5432/crm"


# ---------------------------------------------------------------------- Trace, Comparison
def test_trace_by_source_and_html() -> None:
    t = make_trace()
    t.entries.append(TraceEntry("f3", "crm", "postgresql", "SELECT 3", 0.01, 0.02, 1, 8))
    per = t.by_source()
    assert per.to_dicts() == [
        {
            "source": "crm",
            "kind": "postgresql",
            "fragments": 2,
            "rows": 3,
            "bytes": 2056,
            "seconds": pytest.approx(0.04),
        },
        {
            "source": "sales",
            "kind": "mysql",
            "fragments": 1,
            "rows": 3,
            "bytes": 96,
            "seconds": pytest.approx(0.025),
        },
    ]
    assert t.sources == ["crm", "sales"]
    h = t._repr_html_()
    assert h.count("<tr title=") == 3  # one row per fragment, its SQL as the tooltip
    assert "moved / total" in h
    assert Trace().by_source().columns == [
        "source",
        "kind",
        "fragments",
        "rows",
        "bytes",
        "seconds",
    ]


def test_comparison_html_says_whether_answers_agree() -> None:
    res = make_result()
    table = pl.DataFrame(
        {"strategy": ["naive", "pushdown"], "total_s": [0.1, 0.05], "same_result": [True, True]}
    )
    cmp = Comparison("SELECT 1 < 2", {"naive": res, "pushdown": res}, table)
    h = cmp._repr_html_()
    assert "2 strategies" in h and "SELECT 1 &lt; 2" in h
    assert "every strategy returned the same rows" in h
    cmp.table = table.with_columns(same_result=pl.Series([True, False]))
    h = cmp._repr_html_()
    assert "different answers" in h and "pushdown" in text_of(h)
    assert cmp.mismatches == ["pushdown"]
