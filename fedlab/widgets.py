"""``fl.explore(fed, sql)``: an ipywidgets explorer of one query's plans.

Choose a strategy, switch sources off, edit the SQL, run or only plan: the EXPLAIN tree,
the result size, the per-fragment trace table and the latency/volume chart follow.

Every control and every output is an attribute, so the explorer is testable (and
scriptable) without a browser::

    ex = fl.explore(fed, "SELECT ...")
    ex.strategy.value = "naive"     # the plan, trace and chart update at once
    ex.plan_text, ex.trace, ex.result, ex.error, ex.chart.value (PNG bytes)

Switching a source off makes it behave as if it were down: its fragments fail with
:class:`~fedlab.SourceUnavailableError` through the fetch seam (the planner does not yet
route around a source, so a query that needs it fails, which the explorer shows). The
user's Federation is never modified: the explorer runs on a shallow copy whose fetch
function is wrapped.

Pushdown can be switched on and off as a whole (strategy ``naive`` vs ``pushdown``); the
rules that fired are listed per fragment in the plan ("pushed: ..."). Toggling individual
rules needs a planner option that does not exist yet.
"""

from __future__ import annotations

import copy
import html
import io
from collections.abc import Mapping
from typing import Any

import polars as pl

from fedlab.errors import FedlabError, SourceUnavailableError
from fedlab.federation import Federation
from fedlab.result import FederatedResult
from fedlab.sql.plan import Plan
from fedlab.sql.planner import STRATEGIES

__all__ = ["Explorer", "explore"]


def explore(
    fed: Federation,
    sql: str,
    *,
    params: Mapping[str, Any] | None = None,
    strategy: str | None = None,
    execute: bool = True,
) -> Explorer:
    """An interactive explorer of ``sql`` on ``fed`` (display it as a cell's last value).

    Args:
        fed: the federation to query (never modified).
        sql: the query (editable in the widget).
        params: values of its ``:name`` placeholders.
        strategy: the strategy selected first (default: the federation's).
        execute: run the query (True) or only plan it (False) at first.
    """
    return Explorer(fed, sql, params=params, strategy=strategy, execute=execute)


class Explorer:
    """The widget behind :func:`explore`.

    Controls: ``query`` (Textarea), ``strategy`` (Dropdown), ``execute`` (Checkbox: run,
    or plan only), ``rules`` (pushdown rule -> Checkbox: on, or switched off),
    ``sources`` (name -> Checkbox: on, or treated as down), ``run_button``.
    Views: ``summary``, ``message``, ``plan_view``, ``trace_view`` (HTML) and ``chart``
    (PNG Image). State: ``plan``, ``result``, ``error``; ``widget`` is the whole box.
    """

    def __init__(
        self,
        fed: Federation,
        sql: str,
        *,
        params: Mapping[str, Any] | None = None,
        strategy: str | None = None,
        execute: bool = True,
    ) -> None:
        import ipywidgets as w

        self.fed = fed
        self.params = dict(params or {})
        self.plan: Plan | None = None
        self.result: FederatedResult | None = None
        self.error: FedlabError | None = None
        self.updates = 0

        full = w.Layout(width="100%")
        self.query = w.Textarea(
            value=sql, continuous_update=False, rows=4, layout=full, description="SQL"
        )
        self.strategy = w.Dropdown(
            options=list(STRATEGIES), value=strategy or fed.strategy, description="strategy"
        )
        self.execute = w.Checkbox(value=execute, description="run (off: plan only)", indent=False)
        self.run_button = w.Button(description="Run again", icon="play")
        from fedlab.sql.planner import RULES

        #: pushdown rule name -> Checkbox (on: the rule is used; see fedlab.sql.planner.RULES)
        self.rules: dict[str, Any] = {
            name: w.Checkbox(value=True, description=name, indent=False, tooltip=text)
            for name, text in RULES.items()
        }
        self.sources: dict[str, Any] = {
            name: w.Checkbox(value=True, description=name, indent=False)
            for name in fed.catalog.sources
        }
        self.summary = w.HTML()
        self.message = w.HTML()
        self.plan_view = w.HTML(layout=w.Layout(overflow="auto"))
        self.trace_view = w.HTML(layout=w.Layout(overflow="auto"))
        self.chart = w.Image(format="png", layout=w.Layout(max_width="100%"))

        sources_box = w.HBox(
            [w.HTML("<b>sources</b> (off: treated as down)&nbsp;"), *self.sources.values()]
        )
        rules_box = w.HBox([w.HTML("<b>pushdown rules</b>&nbsp;"), *self.rules.values()])
        self.widget = w.VBox(
            [
                self.query,
                w.HBox([self.strategy, self.execute, self.run_button]),
                rules_box,
                sources_box,
                self.summary,
                self.message,
                w.HTML("<b>EXPLAIN</b>"),
                self.plan_view,
                w.HTML("<b>trace</b>"),
                self.trace_view,
                self.chart,
            ],
            layout=full,
        )
        self.update()
        for control in (
            self.query,
            self.strategy,
            self.execute,
            *self.rules.values(),
            *self.sources.values(),
        ):
            control.observe(self._changed, names="value")
        self.run_button.on_click(lambda _button: self.update())

    # ------------------------------------------------------------------ state
    @property
    def plan_text(self) -> str:
        """The EXPLAIN tree of the current plan ('' when planning failed)."""
        return str(self.plan) if self.plan is not None else ""

    @property
    def trace(self) -> pl.DataFrame | None:
        """The current run's trace, one row per fragment (None when nothing ran)."""
        return self.result.trace.to_polars() if self.result is not None else None

    @property
    def sources_used(self) -> list[str]:
        """Sources the current plan reads."""
        return self.plan.sources if self.plan is not None else []

    @property
    def rules_off(self) -> list[str]:
        """Pushdown rules switched off in the widget."""
        return [name for name, box in self.rules.items() if not box.value]

    @property
    def sources_off(self) -> list[str]:
        return [name for name, box in self.sources.items() if not box.value]

    # ------------------------------------------------------------------ work
    def _changed(self, change: Any) -> None:
        self.update()

    def update(self) -> None:
        """Plan (and run, unless plan-only) the query with the current settings; redraw."""
        self.updates += 1
        self.plan, self.result, self.error = None, None, None
        sql, strategy = self.query.value, self.strategy.value
        try:
            off = self.rules_off
            self.plan = self.fed.explain(sql, strategy=strategy, params=self.params, disable=off)
            if self.execute.value:
                self.result = self._runner().sql(sql, self.params, strategy=strategy, disable=off)
        except FedlabError as e:
            self.error = e
        self._render()

    def _runner(self) -> Federation:
        off = set(self.sources_off)
        if not off:
            return self.fed
        inner = self.fed.fetch

        def fetch(fragment: Any, source: Any, deadline: Any) -> Any:
            if fragment.source in off:
                raise SourceUnavailableError(
                    f"source {fragment.source!r} is switched off in the explorer "
                    f"(fragment {fragment.id} needs it)"
                )
            return inner(fragment, source, deadline)

        runner = copy.copy(self.fed)  # same catalog and history; only the fetch differs
        runner.fetch = fetch
        runner.progress = None
        return runner

    # ------------------------------------------------------------------ drawing
    def _render(self) -> None:
        from fedlab.magic import short_error

        used = set(self.sources_used)
        for name, box in self.sources.items():
            box.description = f"{name} (used)" if name in used else name
        if self.error is not None:
            text = short_error(self.error, self.query.value, self.fed.dialect)
            self.message.value = (
                f"<pre style='color:#b00020;white-space:pre-wrap'>{html.escape(text)}</pre>"
            )
        else:
            self.message.value = ""
        self.plan_view.value = self.plan._repr_html_() if self.plan is not None else ""
        self.summary.value = self._summary()
        if self.result is not None:
            with pl.Config(
                tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=300, tbl_hide_dataframe_shape=True
            ):
                self.trace_view.value = _trace_table(self.result)._repr_html_()
        else:
            self.trace_view.value = "<i>not run</i>" if self.error is None else ""
        if self.result is not None and self.result.trace.entries:
            self.chart.value = _png(self.result)
            self.chart.layout.display = None
        else:  # nothing ran, or nothing was fetched (a query without tables): no chart
            self.chart.value = b""
            self.chart.layout.display = "none"

    def _summary(self) -> str:
        if self.result is not None:
            df, trace = self.result.df, self.result.trace
            return (
                f"<b>{df.height:,} row(s) × {df.width} column(s)</b> "
                f"[{html.escape(self.result.plan.strategy)}]: {html.escape(trace.summary())}"
            )
        if self.plan is not None:
            return (
                f"<b>plan only</b> [{html.escape(self.plan.strategy)}]: "
                f"{len(self.plan.fragments)} fragment(s) on "
                f"{html.escape(', '.join(self.plan.sources) or 'no source')}"
            )
        return ""

    # ------------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        state = "error" if self.error else ("ran" if self.result else "planned")
        return f"<Explorer {self.strategy.value} ({state}): {self.query.value[:60]!r}>"


def _trace_table(result: FederatedResult) -> pl.DataFrame:
    t = result.trace.to_polars()
    return t.select(
        "fragment",
        "source",
        "kind",
        (pl.col("start_s") * 1000).round(1).alias("start_ms"),
        (pl.col("seconds") * 1000).round(1).alias("ms"),
        "rows",
        pl.Series(
            "moved",
            [
                "cache" if hit else _size(b)
                for b, hit in zip(t["bytes"], t["cache_hit"], strict=True)
            ],
            dtype=pl.String,
        ),
        "sql",
    )


def _size(n: int) -> str:
    """Bytes for people.

    >>> _size(512), _size(2048), _size(3 * 1024**2)
    ('512 B', '2.0 KB', '3.0 MB')
    """
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _png(result: FederatedResult) -> bytes:
    import matplotlib.pyplot as plt

    fig = result.plot()
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()
    finally:
        plt.close(fig)
