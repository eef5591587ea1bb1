"""Results and traces: what came back, and where the time and the bytes went."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from fedlab.sql.plan import Plan

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Comparison", "FederatedResult", "Trace", "TraceEntry"]


@dataclass
class TraceEntry:
    """One fragment's fetch: times are seconds since the query started (monotonic clock)."""

    fragment: str
    source: str
    kind: str
    sql: str
    start: float
    end: float
    rows: int
    bytes: int
    reader: str = ""
    retries: int = 0
    cache_hit: bool = False
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Trace:
    """Per-fragment timings and volumes, plus planning and local (residual) time."""

    entries: list[TraceEntry] = field(default_factory=list)
    planning_s: float = 0.0
    fetch_s: float = 0.0
    residual_s: float = 0.0
    total_s: float = 0.0
    residual_start: float = 0.0
    result_rows: int = 0

    @property
    def fragments(self) -> list[TraceEntry]:
        return self.entries

    @property
    def rows(self) -> int:
        """Rows moved from the sources."""
        return sum(e.rows for e in self.entries)

    @property
    def bytes(self) -> int:
        """Bytes moved from the sources (Arrow size of what each fragment returned)."""
        return sum(e.bytes for e in self.entries)

    def to_polars(self) -> pl.DataFrame:
        """One row per fragment: fragment, source, kind, start, end, seconds, rows, bytes…"""
        return pl.DataFrame(
            {
                "fragment": [e.fragment for e in self.entries],
                "source": [e.source for e in self.entries],
                "kind": [e.kind for e in self.entries],
                "start_s": [e.start for e in self.entries],
                "end_s": [e.end for e in self.entries],
                "seconds": [e.seconds for e in self.entries],
                "rows": [e.rows for e in self.entries],
                "bytes": [e.bytes for e in self.entries],
                "reader": [e.reader for e in self.entries],
                "retries": [e.retries for e in self.entries],
                "cache_hit": [e.cache_hit for e in self.entries],
                "sql": [e.sql for e in self.entries],
            },
            schema_overrides={
                "start_s": pl.Float64,
                "end_s": pl.Float64,
                "seconds": pl.Float64,
                "rows": pl.Int64,
                "bytes": pl.Int64,
                "retries": pl.Int64,
            },
        )

    def summary(self) -> str:
        return (
            f"{len(self.entries)} fragment(s), {self.rows:,} rows / {_human_bytes(self.bytes)} moved; "
            f"plan {self.planning_s * 1000:.1f} ms, fetch {self.fetch_s * 1000:.1f} ms, "
            f"local {self.residual_s * 1000:.1f} ms, total {self.total_s * 1000:.1f} ms"
        )

    def __repr__(self) -> str:
        return f"<Trace {self.summary()}>"


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


@dataclass
class FederatedResult:
    """The answer (``df``), how it was planned (``plan``) and what it cost (``trace``)."""

    df: pl.DataFrame
    plan: Plan
    trace: Trace
    partial: bool = False
    missing_sources: list[str] = field(default_factory=list)

    def plot(self, **kwargs: Any) -> Figure:
        """Latency waterfall and transfer volume of this query (a matplotlib Figure)."""
        from fedlab.viz import plot_trace

        return plot_trace(self.trace, title=f"{self.plan.strategy} plan", **kwargs)

    def to_pandas(self) -> Any:
        return self.df.to_pandas()

    def __len__(self) -> int:
        return self.df.height

    def __repr__(self) -> str:
        return f"{self.df!r}\n{self.trace.summary()}"

    def _repr_html_(self) -> str:
        return (
            self.df._repr_html_()
            + f"<div style='color:#555;font-size:90%'>{html.escape(self.trace.summary())}; "
            f"strategy {html.escape(self.plan.strategy)}; sources: {html.escape(', '.join(self.plan.sources) or '—')}</div>"
        )


@dataclass
class Comparison:
    """The same query under several strategies: one row each, and the results themselves."""

    sql: str
    results: dict[str, FederatedResult]
    table: pl.DataFrame

    def plot(self, **kwargs: Any) -> Figure:
        from fedlab.viz import plot_comparison

        return plot_comparison(self, **kwargs)

    def __repr__(self) -> str:
        return repr(self.table)

    def _repr_html_(self) -> str:
        return self.table._repr_html_()
