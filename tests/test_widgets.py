"""fl.explore: the explorer's controls drive its plan, trace and chart (no browser needed)."""

from __future__ import annotations

import pytest

import fedlab as fl
from fedlab.widgets import Explorer, explore

SEED = fl.demo.SEED_QUERY


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> fl.Federation:
    return fl.demo.federation(tmp_path_factory.mktemp("demo"))


def test_explore_is_a_lazy_top_level_name():
    assert fl.explore is explore


def test_first_view_plans_runs_and_draws(fed):
    ex = fl.explore(fed, SEED)
    assert isinstance(ex, Explorer)
    assert ex.error is None and ex.result is not None
    assert ex.plan_text.startswith("Plan [auto]")
    assert ex.sources_used == ["crm", "sales"]
    assert ex.trace is not None and ex.trace.height == len(ex.plan.fragments)
    assert bytes(ex.chart.value).startswith(b"\x89PNG")
    assert f"{ex.result.df.height:,} row(s)" in ex.summary.value
    assert "f1" in ex.trace_view.value and "crm" in ex.trace_view.value
    assert ex.sources["crm"].description == "crm (used)"
    assert ex.sources["stock"].description == "stock"


def test_changing_the_strategy_updates_plan_trace_and_chart(fed):
    ex = explore(fed, SEED)
    before = (ex.plan_text, ex.result.trace.bytes, bytes(ex.chart.value), ex.updates)
    ex.strategy.value = "naive"
    assert ex.updates == before[3] + 1
    assert ex.plan_text.startswith("Plan [naive]") and ex.plan_text != before[0]
    assert ex.result.plan.strategy == "naive"
    assert ex.result.trace.bytes > before[1]  # naive moves whole tables
    assert bytes(ex.chart.value) != before[2] and bytes(ex.chart.value).startswith(b"\x89PNG")
    assert "[naive]" in ex.summary.value
    fl.testing.assert_same_result(ex.result.df, fed.sql(SEED).df)


def test_plan_only_runs_nothing(fed):
    ran = fed.history().height
    ex = explore(fed, SEED, execute=False, strategy="pushdown")
    assert ex.result is None and ex.trace is None
    assert ex.plan_text.startswith("Plan [pushdown]")
    assert "plan only" in ex.summary.value
    assert bytes(ex.chart.value) == b"" and ex.chart.layout.display == "none"
    assert fed.history().height == ran
    ex.execute.value = True
    assert ex.result is not None and ex.chart.layout.display is None


def test_a_source_switched_off_acts_as_down_without_touching_the_federation(fed):
    fetch, progress = fed.fetch, fed.progress
    ex = explore(fed, SEED)
    ex.sources["crm"].value = False
    assert ex.sources_off == ["crm"]
    assert isinstance(ex.error, fl.SourceUnavailableError)
    assert "switched off" in ex.message.value
    assert ex.plan is not None and ex.result is None  # the plan still shows
    assert (fed.fetch, fed.progress) == (fetch, progress)
    ex.sources["stock"].value = False  # a source the query does not need
    ex.sources["crm"].value = True
    assert ex.error is None and ex.result is not None and ex.message.value == ""


def test_editing_the_sql_and_errors(fed):
    ex = explore(fed, SEED)
    ex.query.value = "SELECT nme FROM users"
    assert isinstance(ex.error, fl.UnknownColumnError)
    assert ex.plan is None and ex.plan_text == "" and ex.result is None
    assert "line 1 | SELECT nme FROM users" in ex.message.value
    assert "^^^" in ex.message.value
    ex.query.value = "SELECT count(*) AS n FROM orders"
    assert ex.error is None and ex.result.df["n"][0] > 0


def test_run_button_and_parameters(fed):
    ex = explore(fed, "SELECT id FROM users WHERE country = :c", params={"c": "US"})
    n = ex.updates
    ex.run_button.click()
    assert ex.updates == n + 1
    assert ex.result.df.height > 0


def test_displays_as_a_widget(fed):
    ex = explore(fed, SEED, execute=False)
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert repr(ex).startswith("<Explorer auto (planned)")


def test_federate_explore_subcommand(tmp_path, monkeypatch, fed):
    from fedlab.magic import TestingShell

    monkeypatch.chdir(tmp_path)
    ip = TestingShell.new()
    ip.user_ns["fed"] = fed
    ip.run_cell("%federate use fed")
    ip.user_ns["c"] = "US"
    ex = ip.run_cell(
        "%federate explore --strategy naive SELECT id FROM users WHERE country = :c"
    ).result
    assert isinstance(ex, Explorer) and ex.strategy.value == "naive" and ex.result.df.height > 0
    ex = ip.run_cell("%%federate explore\nSELECT 1 AS x").result
    assert ex.result.df["x"][0] == 1


def test_switching_a_pushdown_rule_off_changes_the_plan_and_the_bytes() -> None:
    import fedlab as fl

    fed = fl.demo.federation()
    ex = fl.explore(fed, fl.demo.SEED_QUERY)
    before = ex.result.trace.bytes
    assert "projection" in ex.plan_text
    ex.rules["projection"].value = False
    assert ex.rules_off == ["projection"]
    assert "switched off: projection" in ex.plan_text
    assert ex.result.trace.bytes > before  # whole rows travel now
    ex.rules["filters"].value = False
    assert "filter u.country" not in ex.plan_text
    fl.testing.assert_same_result(ex.result.df, fed.sql(fl.demo.SEED_QUERY).df)
