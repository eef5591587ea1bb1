"""Plans: what each source is asked (fragments) and what fedlab finishes locally (residual).

A :class:`Plan` is plain data. ``str(plan)`` is the EXPLAIN tree; everything the
notebook draws is a function of a Plan and a Trace.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from sqlglot import exp

__all__ = ["Fragment", "Plan"]


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
        estimated_rows: the catalog's row estimate of the largest table read.
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
            est = f"  ~{f.estimated_rows:,} rows in largest table" if f.estimated_rows else ""
            lines.append(f"{branch} {f.id} @ {f.source} ({f.kind}) [{f.role}]{est}")
            if f.pushed:
                lines.append(f"{pad}   pushed: {'; '.join(f.pushed)}")
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
        rows = "".join(
            "<tr>"
            f"<td><b>{html.escape(f.id)}</b></td><td>{html.escape(f.source)}</td>"
            f"<td>{html.escape(f.kind)}</td><td>{html.escape(f.role)}</td>"
            f"<td>{html.escape('; '.join(f.pushed))}</td>"
            f"<td><pre style='margin:0'>{html.escape(f.sql)}</pre></td></tr>"
            for f in self.fragments
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<div><b>Plan</b> [{html.escape(self.strategy)}]: {len(self.fragments)} fragment(s)"
            f"<table><tr><th>id</th><th>source</th><th>kind</th><th>role</th><th>pushed</th>"
            f"<th>SQL sent</th></tr>{rows}</table>"
            f"<b>Local residual</b><pre>{html.escape(self.residual_text())}</pre>"
            + (f"<b>Notes</b><ul>{notes}</ul>" if notes else "")
            + "</div>"
        )
