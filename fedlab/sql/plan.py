"""Plans: what each source is asked (fragments) and what fedlab finishes locally (residual).

A :class:`Plan` is plain data. ``str(plan)`` is the EXPLAIN tree; everything the
notebook draws is a function of a Plan and a Trace.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlglot import exp

from fedlab.security import redact

__all__ = ["DynamicFilter", "Fragment", "Plan", "plan_html", "source_colors"]


@dataclass
class DynamicFilter:
    """Join keys shipped into a fragment at run time (the semi-join, or bind join).

    When fragment ``provider`` has been read, the distinct non-NULL values of its column
    ``provider_column`` are sent to this fragment's source as ``target IN (…)`` (in batches)
    or, when there are too many, as a ``target BETWEEN min AND max`` range.

    Attributes:
        column: this fragment's output column that the keys restrict.
        provider: id of the fragment whose rows give the keys.
        provider_column: that fragment's output column holding them.
        target: the source-side expression the keys are compared with, in the source's
            dialect (a column of the table, or of the wrapped fragment).
        placeholder: the token in ``Fragment.template`` that the predicate replaces.
        key_type: ``int`` or ``text``: how keys are written as literals.
    """

    column: str
    provider: str
    provider_column: str
    target: str
    placeholder: str
    key_type: str = "int"

    def describe(self) -> str:
        return f"{self.column} IN (keys of {self.provider}.{self.provider_column})"


@dataclass
class Fragment:
    """One sub-query sent to one source.

    Attributes:
        id: frame name the residual uses for this fragment's rows (``f1``, ``f2``…).
        source: name of the source that answers it.
        kind: source kind (``sqlite``, ``postgresql``, ``mysql``, ``duckdb``).
        sql: the text sent, in the source's dialect.
        columns: output column names, in order, with the type fedlab expects.
        tables: physical tables read (``source.table``).
        pushed: what was pushed, for EXPLAIN (``projection``, ``filter: …``, ``join``…).
        role: ``query`` (the whole query), ``subquery``, ``join`` or ``table``.
        estimated_rows: rows the cost model expects this fragment to return.
        dynamic: keys shipped in from other fragments at run time (semi-joins); such a
            fragment waits for its providers. ``sql`` then shows where the keys go, and
            ``template`` is the text the executor fills.
        actual_rows: rows it returned, once the plan has run.
    """

    id: str
    source: str
    kind: str
    sql: str
    columns: list[tuple[str, exp.DataType]]
    tables: list[str] = field(default_factory=list)
    pushed: list[str] = field(default_factory=list)
    role: str = "table"
    estimated_rows: int | None = None
    #: concurrent range reads of a large fragment: (output column, low, high, partitions)
    partition: tuple[str, int, int, int] | None = None
    dynamic: list[DynamicFilter] = field(default_factory=list)
    template: str | None = None
    actual_rows: int | None = None

    @property
    def depends_on(self) -> list[str]:
        """Fragments that must be read before this one (they provide its keys)."""
        return list(dict.fromkeys(d.provider for d in self.dynamic))

    def rows_text(self) -> str:
        """``est. ~1,234 rows`` (and ``actual 1,200`` once run)."""
        parts = []
        if self.estimated_rows is not None:
            parts.append(f"est. ~{self.estimated_rows:,} rows")
        if self.actual_rows is not None:
            parts.append(f"actual {self.actual_rows:,}")
        return ", ".join(parts)

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]


@dataclass
class Plan:
    """Fragments plus the residual that combines them locally."""

    sql: str
    strategy: str
    fragments: list[Fragment]
    residual: exp.Query | None
    #: residual as Polars SQL text (None: the single fragment *is* the answer)
    residual_sql: str | None
    notes: list[str] = field(default_factory=list)
    output_columns: list[str] = field(default_factory=list)
    ordered: bool = False

    @property
    def sources(self) -> list[str]:
        return sorted({f.source for f in self.fragments})

    def residual_text(self, dialect: str = "postgres", pretty: bool = True) -> str:
        """The residual as SQL (engine-neutral tree rendered in ``dialect``)."""
        if self.residual is None:
            return "(none: the source's answer is the result)"
        return self.residual.sql(dialect=dialect, pretty=pretty)

    def __str__(self) -> str:
        lines = [
            f"Plan [{self.strategy}]  {len(self.fragments)} fragment(s) on {len(self.sources)} source(s)"
        ]
        if self.residual is None:
            lines.append(
                "├─ result = fragment " + (self.fragments[0].id if self.fragments else "?")
            )
        else:
            lines.append("├─ local residual (Polars):")
            for ln in self.residual_text().splitlines():
                lines.append("│    " + ln)
        for i, f in enumerate(self.fragments):
            last = i == len(self.fragments) - 1
            branch, pad = ("└─", "   ") if last else ("├─", "│  ")
            est = f"  {f.rows_text()}" if f.rows_text() else ""
            lines.append(f"{branch} {f.id} @ {f.source} ({f.kind}) [{f.role}]{est}")
            if f.pushed:
                lines.append(f"{pad}   pushed: {'; '.join(f.pushed)}")
            if f.dynamic:
                keys = "; ".join(d.describe() for d in f.dynamic)
                lines.append(f"{pad}   waits for {', '.join(f.depends_on)}: ships {keys}")
            for ln in f.sql.splitlines():
                lines.append(f"{pad}   {ln}")
        if self.notes:
            lines.append("notes:")
            lines.extend(f"  - {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<Plan {self.strategy}: {len(self.fragments)} fragments on {', '.join(self.sources)}>"
        )

    def _repr_html_(self) -> str:
        """The plan drawn as a tree: the local residual on top, one box per fragment under it."""
        return plan_html(self)


# ---------------------------------------------------------------------------- display
# Shared by the HTML views (here and in fedlab.result) and the plots (fedlab.viz), so that
# a source has the same color in the plan, the trace table and every chart of one query.

#: Colors given to sources in sorted name order (tab10 without its grey and its red, which
#: mean "local work" and "something is wrong" in every picture).
SOURCE_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#c5b0d5",
)
#: Local work (the residual run by Polars).
LOCAL_COLOR = "#7f7f7f"
#: Planning (parse, bind, plan).
PLAN_COLOR = "#c7c7c7"
#: Errors and mismatches.
ALERT_COLOR = "#d62728"

_KIND_BADGE = {
    "postgresql": "#336791",
    "mysql": "#c0765a",
    "sqlite": "#4f9a94",
    "duckdb": "#b8901f",
}


def source_colors(sources: Iterable[str]) -> dict[str, str]:
    """One color per source name, by sorted name, so every view of a query agrees.

    >>> source_colors(["sales", "crm", "crm"])
    {'crm': '#1f77b4', 'sales': '#ff7f0e'}
    """
    names = sorted(set(sources))
    return {n: SOURCE_PALETTE[i % len(SOURCE_PALETTE)] for i, n in enumerate(names)}


def safe_text(text: object) -> str:
    """Text made fit for HTML: credentials redacted (:func:`fedlab.security.redact`), then escaped.

    >>> safe_text("<b> postgresql://bob:s3cret@db/crm")
    '&lt;b&gt; postgresql://bob:***@db/crm'
    """
    return html.escape(redact(str(text)))


def swatch(color: str) -> str:
    """A small colored square (the source's color in the charts)."""
    return (
        f"<span style='display:inline-block;width:.8em;height:.8em;background:{color};"
        "border-radius:2px;margin-right:.35em;vertical-align:middle'></span>"
    )


def badge(text: str, color: str = "#666") -> str:
    return (
        f"<span style='display:inline-block;padding:0 .45em;margin-left:.35em;border-radius:.6em;"
        f"font-size:85%;color:white;background:{color}'>{safe_text(text)}</span>"
    )


_FONT = "font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-size:13px;line-height:1.35"
_MONO = "font-family:var(--jp-code-font-family,monospace);font-size:12px"
_LINE = "2px solid #b0b0b0"


def _pre(text: str) -> str:
    return (
        f"<pre style='{_MONO};margin:.3em 0 0 0;padding:.35em .5em;background:rgba(127,127,127,.08);"
        "border-radius:3px;white-space:pre-wrap;word-break:break-word;text-align:left'>"
        f"{safe_text(text)}</pre>"
    )


def _box(kind: str, border: str, body: str) -> str:
    return (
        f"<div class='fedlab-{kind}' style='border:1px solid #b0b0b0;border-left:5px solid {border};border-radius:4px;"
        f"padding:.4em .6em;margin:.25em 0;max-width:60em;text-align:left'>{body}</div>"
    )


def _branch(last: bool, content: str) -> str:
    """One child of a tree node: ├── content (or └── for the last child), pure CSS."""
    elbow = (
        f"<div style='height:1.1em;border-left:{_LINE};border-bottom:{_LINE}'></div>"
        if last
        else f"<div style='height:100%;border-left:{_LINE}'>"
        f"<div style='height:1.1em;border-bottom:{_LINE}'></div></div>"
    )
    return (
        "<div style='display:flex;align-items:stretch'>"
        f"<div style='flex:0 0 1.3em;margin-left:.9em'>{elbow}</div>"
        f"<div style='flex:1 1 auto;min-width:0'>{content}</div></div>"
    )


def fragment_html(fragment: Fragment, color: str) -> str:
    """One fragment's box: where it runs, what it reads, what was pushed, the SQL sent."""
    f = fragment
    head = (
        f"{swatch(color)}<b>{safe_text(f.id)}</b> @ <b>{safe_text(f.source)}</b>"
        f"{badge(f.kind, _KIND_BADGE.get(f.kind, '#666'))}{badge(f.role, '#888')}"
    )
    if f.rows_text():
        head += f" <span style='color:#777'>{safe_text(f.rows_text())}</span>"
    lines = [head]
    if f.tables:
        lines.append(
            f"<div><span style='color:#777'>reads</span> {safe_text(', '.join(f.tables))}</div>"
        )
    if f.columns:
        cols = ", ".join(f.column_names)
        lines.append(f"<div><span style='color:#777'>returns</span> {safe_text(cols)}</div>")
    pushed = "; ".join(f.pushed) if f.pushed else "nothing (whole table)"
    lines.append(f"<div><span style='color:#777'>pushed</span> {safe_text(pushed)}</div>")
    if f.dynamic:
        keys = "; ".join(d.describe() for d in f.dynamic)
        lines.append(
            f"<div><span style='color:#777'>waits for</span> {safe_text(', '.join(f.depends_on))}"
            f" <span style='color:#777'>and ships</span> {safe_text(keys)}</div>"
        )
    lines.append(_pre(f.sql))
    return _box("fragment", color, "".join(lines))


def residual_html(plan: Plan) -> str:
    """The root box: what fedlab finishes locally (or that a fragment is the answer)."""
    title = (
        f"<b>Plan</b> [{safe_text(plan.strategy)}]: {len(plan.fragments)} fragment(s) on "
        f"{len(plan.sources)} source(s)"
    )
    if plan.residual is None:
        first = plan.fragments[0].id if plan.fragments else "?"
        body = (
            f"{title}<div>{swatch(LOCAL_COLOR)}<b>result</b> = fragment {safe_text(first)} "
            "<span style='color:#777'>(the source's answer is the result: no local work)</span></div>"
        )
    else:
        body = (
            f"{title}<div>{swatch(LOCAL_COLOR)}<b>local residual</b> (Polars)"
            + (" <span style='color:#777'>ordered</span>" if plan.ordered else "")
            + "</div>"
            + _pre(plan.residual_text())
        )
    if plan.output_columns:
        body += (
            f"<div><span style='color:#777'>columns</span> "
            f"{safe_text(', '.join(plan.output_columns))}</div>"
        )
    return _box("residual", LOCAL_COLOR, body)


def plan_html(plan: Plan) -> str:
    """A Plan as an HTML tree (inline CSS only: no script, no stylesheet, nothing fetched)."""
    colors = source_colors(plan.sources)
    children = [
        _branch(i == len(plan.fragments) - 1, fragment_html(f, colors[f.source]))
        for i, f in enumerate(plan.fragments)
    ]
    notes = ""
    if plan.notes:
        items = "".join(f"<li>{safe_text(n)}</li>" for n in plan.notes)
        notes = (
            f"<div class='fedlab-notes'><b>notes</b><ul style='margin:.2em 0'>{items}</ul></div>"
        )
    return (
        f"<div class='fedlab-plan' style='{_FONT}'>"
        + residual_html(plan)
        + "".join(children)
        + notes
        + "</div>"
    )
