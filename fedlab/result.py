"""Results and traces: what came back, and where the time and the bytes went."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from fedlab.sql.plan import (
    ALERT_COLOR,
    LOCAL_COLOR,
    PLAN_COLOR,
    Plan,
    plan_html,
    safe_text,
    source_colors,
    swatch,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Comparison", "FederatedResult", "MissingFragment", "Trace", "TraceEntry"]


@dataclass(frozen=True)
class MissingFragment:
    """A fragment left out of a partial result (``on_error="partial"``), and why."""

    fragment: str
    source: str
    error_class: str
    error: str

    def __str__(self) -> str:
        return f"{self.fragment} on {self.source}: {self.error_class}: {self.error}"


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
    #: the source's circuit-breaker state when the fragment ran (closed / open / half-open)
    breaker: str | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def moved_bytes(self) -> int:
        """Bytes this fragment moved from its source (0 for a cache hit)."""
        return 0 if self.cache_hit else self.bytes

    @property
    def moved_rows(self) -> int:
        """Rows this fragment moved from its source (0 for a cache hit)."""
        return 0 if self.cache_hit else self.rows


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
    #: the id that tagged this query's server sessions (``fedlab-<query_id>-<fragment>``)
    query_id: str = ""
    #: fragments left out of a partial result (``on_error="partial"``)
    missing: list[MissingFragment] = field(default_factory=list)
    #: fragments served from the fragment cache after they failed (``on_error="stale"``):
    #: fragment id -> age of the cached rows in seconds
    stale: dict[str, float] = field(default_factory=dict)
    #: the Polars engine that ran the residual: ``"in-memory"`` or ``"streaming"`` (see
    #: docs/streaming.md); empty when no residual ran (one fragment was the answer) or
    #: the plan ran on Spark
    residual_engine: str = ""

    @property
    def partial(self) -> bool:
        """Some fragments are missing from the result (see :attr:`missing`)."""
        return bool(self.missing)

    @property
    def missing_sources(self) -> list[str]:
        """Sources with a fragment missing from the result, in plan order."""
        return list(dict.fromkeys(m.source for m in self.missing))

    @property
    def fragments(self) -> list[TraceEntry]:
        return self.entries

    @property
    def rows(self) -> int:
        """Rows moved from the sources (cache hits excluded: see :attr:`cache_rows`)."""
        return sum(e.moved_rows for e in self.entries)

    @property
    def bytes(self) -> int:
        """Bytes moved from the sources (Arrow size of what each fragment returned).

        A fragment answered by the fragment cache moved nothing: its size is in
        :attr:`cache_bytes`, not here, so a warm query shows what it really cost.
        """
        return sum(e.moved_bytes for e in self.entries)

    @property
    def cache_hits(self) -> int:
        """Fragments answered by the fragment cache."""
        return sum(1 for e in self.entries if e.cache_hit)

    @property
    def cache_rows(self) -> int:
        """Rows the fragment cache served (they did not move)."""
        return sum(e.rows for e in self.entries if e.cache_hit)

    @property
    def cache_bytes(self) -> int:
        """Arrow size of what the fragment cache served (bytes that did not move)."""
        return sum(e.bytes for e in self.entries if e.cache_hit)

    def to_polars(self) -> pl.DataFrame:
        """One row per fragment: fragment, source, kind, start, end, seconds, rows, bytes…

        ``rows`` and ``bytes`` are what the fragment delivered; where a row's ``cache_hit``
        is true they came from the fragment cache, not from the source (sum
        ``bytes`` over ``~cache_hit`` for the bytes moved, or use :attr:`bytes`).
        """
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
                "breaker": [e.breaker for e in self.entries],
                "sql": [e.sql for e in self.entries],
                "error": [e.error for e in self.entries],
            },
            schema_overrides={
                "start_s": pl.Float64,
                "end_s": pl.Float64,
                "seconds": pl.Float64,
                "rows": pl.Int64,
                "bytes": pl.Int64,
                "retries": pl.Int64,
                "error": pl.String,
            },
        )

    @property
    def sources(self) -> list[str]:
        """Sources read, in the order their first fragment appears."""
        return list(dict.fromkeys(e.source for e in self.entries))

    def by_source(self, *, cache: bool = False) -> pl.DataFrame:
        """One row per source: kind, fragments, rows and bytes moved, seconds spent fetching.

        ``seconds`` adds up the source's fragments (work done), so with parallel fetches the
        sum over sources can exceed the trace's wall-clock ``fetch_s``. ``rows`` and
        ``bytes`` count what moved from the source; with ``cache=True`` three more columns
        say what the fragment cache served instead: ``cache_hits``, ``cache_rows``,
        ``cache_bytes``.
        """
        rows = []
        for name in self.sources:
            mine = [e for e in self.entries if e.source == name]
            row: dict[str, Any] = {
                "source": name,
                "kind": mine[0].kind,
                "fragments": len(mine),
                "rows": sum(e.moved_rows for e in mine),
                "bytes": sum(e.moved_bytes for e in mine),
                "seconds": sum(e.seconds for e in mine),
            }
            if cache:
                hits = [e for e in mine if e.cache_hit]
                row["cache_hits"] = len(hits)
                row["cache_rows"] = sum(e.rows for e in hits)
                row["cache_bytes"] = sum(e.bytes for e in hits)
            rows.append(row)
        schema: dict[str, Any] = {
            "source": pl.String,
            "kind": pl.String,
            "fragments": pl.Int64,
            "rows": pl.Int64,
            "bytes": pl.Int64,
            "seconds": pl.Float64,
        }
        if cache:
            schema |= {"cache_hits": pl.Int64, "cache_rows": pl.Int64, "cache_bytes": pl.Int64}
        return pl.DataFrame(rows, schema=schema)

    def plot(self, **kwargs: Any) -> Figure:
        """Latency waterfall and transfer volume (see :func:`fedlab.viz.plot_trace`)."""
        from fedlab.viz import plot_trace

        return plot_trace(self, **kwargs)

    def _repr_html_(self) -> str:
        return f"<div style='{_FONT}'>{trace_html(self)}</div>"

    def summary(self) -> str:
        cached = (
            f" ({self.cache_hits} from cache: {self.cache_rows:,} rows / "
            f"{_human_bytes(self.cache_bytes)} not moved)"
            if self.cache_hits
            else ""
        )
        return (
            f"{len(self.entries)} fragment(s), {self.rows:,} rows / {_human_bytes(self.bytes)} moved"
            f"{cached}; "
            f"plan {self.planning_s * 1000:.1f} ms, fetch {self.fetch_s * 1000:.1f} ms, "
            f"local {self.residual_s * 1000:.1f} ms{_engine_text(self)}, "
            f"total {self.total_s * 1000:.1f} ms" + _fallback_text(self)
        )

    def __repr__(self) -> str:
        return f"<Trace {self.summary()}>"


def _engine_text(trace: Trace) -> str:
    """`` (streaming engine)``, or nothing when no residual ran locally."""
    return f" ({trace.residual_engine} engine)" if trace.residual_engine else ""


def _fallback_text(trace: Trace) -> str:
    """``; PARTIAL: f2 on s1 missing (…)`` / ``; STALE: f1 from cache, 12 s old``."""
    parts = []
    if trace.missing:
        parts.append("PARTIAL result, missing: " + "; ".join(str(m) for m in trace.missing))
    if trace.stale:
        parts.append(
            "STALE: "
            + ", ".join(f"{f} from cache, {age:,.0f} s old" for f, age in trace.stale.items())
        )
    return "".join(f"; {p}" for p in parts)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


_FONT = "font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-size:13px"
_CELL = "padding:.15em .6em;text-align:right;vertical-align:top"
_LEFT = "padding:.15em .6em;text-align:left;vertical-align:top"
#: background of a row answered by the fragment cache (hatched, like the charts' bars)
_HATCH = (
    "background:repeating-linear-gradient(135deg,rgba(127,127,127,.10) 0 4px,transparent 4px 8px)"
)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _engine_label(trace: Trace) -> str:
    if not trace.residual_engine:
        return ""
    return f" <span class='fedlab-residual-engine'>({safe_text(trace.residual_engine)})</span>"


def trace_html(trace: Trace) -> str:
    """The per-fragment trace as an HTML table, the local (residual) step and a total row.

    Columns: fragment, source, kind, rows, bytes, ms, reader (start and notes when they say
    something). The SQL of each fragment is its tooltip, redacted and escaped. A fragment
    answered by the fragment cache has a hatched row, its bytes in italics and "cache hit"
    in its notes; the total row counts bytes moved from sources, then what the cache served.
    """
    colors = source_colors(trace.sources)
    head = "".join(
        f"<th style='{_LEFT if h in ('fragment', 'source', 'kind', 'reader', 'notes') else _CELL}'>{h}</th>"
        for h in (
            "fragment",
            "source",
            "kind",
            "rows",
            "bytes",
            "ms",
            "start ms",
            "reader",
            "notes",
        )
    )
    body = []
    for e in trace.entries:
        notes = []
        if e.cache_hit:
            notes.append("cache hit")
        if e.retries:
            notes.append(f"{e.retries} retr{'y' if e.retries == 1 else 'ies'}")
        if e.error:
            notes.append(f"<span style='color:{ALERT_COLOR}'>{safe_text(e.error)}</span>")
        row_style = f" class='fedlab-cache-hit' style='{_HATCH}'" if e.cache_hit else ""
        size = (
            f"<i title='served by the fragment cache: not moved'>{_human_bytes(e.bytes)}</i>"
            if e.cache_hit
            else _human_bytes(e.bytes)
        )
        body.append(
            f"<tr title='{safe_text(e.sql)}'{row_style}>"
            f"<td style='{_LEFT}'><b>{safe_text(e.fragment)}</b></td>"
            f"<td style='{_LEFT}'>{swatch(colors[e.source])}{safe_text(e.source)}</td>"
            f"<td style='{_LEFT}'>{safe_text(e.kind)}</td>"
            f"<td style='{_CELL}'>{e.rows:,}</td>"
            f"<td style='{_CELL}'>{size}</td>"
            f"<td style='{_CELL}'>{_ms(e.seconds)}</td>"
            f"<td style='{_CELL}'>{_ms(e.start)}</td>"
            f"<td style='{_LEFT}'>{safe_text(e.reader)}</td>"
            f"<td style='{_LEFT}'>{', '.join(notes)}</td></tr>"
        )
    body.append(
        "<tr style='color:#555'>"
        f"<td style='{_LEFT}' colspan='3'>{swatch(LOCAL_COLOR)}local (Polars)</td>"
        f"<td style='{_CELL}'>{trace.result_rows:,}</td><td style='{_CELL}'></td>"
        f"<td style='{_CELL}'>{_ms(trace.residual_s)}</td>"
        f"<td style='{_CELL}'>{_ms(trace.residual_start)}</td>"
        f"<td style='{_LEFT}'>polars{_engine_label(trace)}</td>"
        f"<td style='{_LEFT}'>result rows</td></tr>"
    )
    body.append(
        "<tr style='border-top:1px solid #999;font-weight:bold'>"
        f"<td style='{_LEFT}' colspan='3'>moved / total</td>"
        f"<td style='{_CELL}'>{trace.rows:,}</td>"
        f"<td style='{_CELL}'>{_human_bytes(trace.bytes)}</td>"
        f"<td style='{_CELL}'>{_ms(trace.total_s)}</td><td style='{_CELL}'></td>"
        f"<td style='{_LEFT}' colspan='2' >{swatch(PLAN_COLOR)}plan {_ms(trace.planning_s)} ms, "
        f"fetch {_ms(trace.fetch_s)} ms</td></tr>"
    )
    if trace.cache_hits:
        body.append(
            f"<tr class='fedlab-cache-hit' style='color:#555;{_HATCH}'>"
            f"<td style='{_LEFT}' colspan='3'>from cache ({trace.cache_hits} fragment(s))</td>"
            f"<td style='{_CELL}'>{trace.cache_rows:,}</td>"
            f"<td style='{_CELL}'><i>{_human_bytes(trace.cache_bytes)}</i></td>"
            f"<td style='{_LEFT}' colspan='4'>served by the fragment cache: not moved</td></tr>"
        )
    return (
        "<table class='fedlab-trace' style='border-collapse:collapse;margin:.3em 0'>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


@dataclass
class FederatedResult:
    """The answer (``df``), how it was planned (``plan``) and what it cost (``trace``)."""

    df: pl.DataFrame
    plan: Plan
    trace: Trace
    partial: bool = False
    missing_sources: list[str] = field(default_factory=list)
    #: where the plan ran: ``"polars"`` (this process) or ``"spark"``
    engine: str = "polars"
    #: with ``engine="spark", collect=False``: the result as a Spark DataFrame (``df`` is
    #: then empty); free its cached fragments with ``res.release()``
    spark_df: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # the executor records fallbacks in the trace; the result says so
        if self.trace.missing:
            self.partial = True
            for s in self.trace.missing_sources:
                if s not in self.missing_sources:
                    self.missing_sources.append(s)

    @property
    def missing(self) -> list[MissingFragment]:
        """Fragments left out of a partial result (``on_error="partial"``), with the error."""
        return list(self.trace.missing)

    @property
    def stale(self) -> dict[str, float]:
        """Fragments served from the fragment cache after failing (``on_error="stale"``):
        fragment id -> age of their rows in seconds (empty: everything is fresh)."""
        return dict(self.trace.stale)

    def write_parquet(self, path: str | Path, *, mode: str = "errorifexists") -> None:
        """Write the result as Parquet: a Spark result left in Spark (``collect=False``) is
        written by Spark's executors under ``path`` (a directory; ``mode`` as Spark's:
        ``errorifexists``, ``overwrite``, ``append``, ``ignore``); otherwise ``df`` is
        written to the file ``path``."""
        if self.spark_df is not None:
            self.spark_df.write.mode(mode).parquet(str(path))
            return
        if mode == "errorifexists" and Path(path).exists():
            raise FileExistsError(f"{path} exists (mode='overwrite' replaces it)")
        self.df.write_parquet(path)

    def release(self) -> None:
        """Free the Spark caches behind ``spark_df`` (no-op for other results)."""
        if self.spark_df is not None:
            from fedlab import spark as fs

            fs.release(self.trace)
            self.spark_df = None

    def plot(self, **kwargs: Any) -> Figure:
        """Latency waterfall and transfer volume of this query (a matplotlib Figure)."""
        from fedlab.viz import plot_trace

        kwargs.setdefault("title", f"{self.plan.strategy} plan")
        return plot_trace(self.trace, **kwargs)

    def plot_vs_single(
        self, single: float | Trace | FederatedResult, ax: Axes | None = None, **kwargs: Any
    ) -> Axes:
        """The seed's "single database vs federated" bars for this result.

        ``single`` is the same query's time (seconds) on one database holding all the
        tables, or that run's Trace / FederatedResult; see
        :func:`fedlab.viz.plot_single_vs_federated`.
        """
        from fedlab.viz import plot_single_vs_federated

        return plot_single_vs_federated(single, self, ax=ax, **kwargs)

    def explain(self) -> str:
        """The EXPLAIN tree of the plan that ran, and the engine its residual ran on."""
        from fedlab.security import redact

        text = redact(str(self.plan))
        t = self.trace
        if self.engine == "spark":
            return text + "\nran on: Spark"
        if t.residual_engine:
            text += (
                f"\nresidual ran on: Polars {t.residual_engine} engine "
                f"(inputs {_human_bytes(sum(e.bytes for e in t.entries))})"
            )
        return text

    def to_pandas(self) -> Any:
        return self.df.to_pandas()

    def __len__(self) -> int:
        return self.df.height

    def __repr__(self) -> str:
        head = ""
        if self.partial:
            head = f"PARTIAL result: missing {', '.join(self.missing_sources) or 'some sources'}\n"
        return f"{head}{self.df!r}\n{self.trace.summary()}"

    def _repr_html_(self) -> str:
        """The frame (rows shown as ``pl.Config`` says), its size and time, the EXPLAIN tree
        (collapsed) and the per-fragment trace. SQL is escaped and credentials redacted."""
        t, p = self.trace, self.plan
        sources = ", ".join(p.sources) or "no source"
        headline = (
            f"<b>{self.df.height:,} row(s) × {self.df.width} column(s)</b> in "
            f"<b>{_ms(t.total_s)} ms</b> "
            f"<span style='color:#555'>(plan {_ms(t.planning_s)}, fetch {_ms(t.fetch_s)}, "
            f"local {_ms(t.residual_s)}{safe_text(_engine_text(t))}) · "
            f"strategy {safe_text(p.strategy)} · "
            f"{len(p.fragments)} fragment(s) on {safe_text(sources)} · "
            f"{t.rows:,} rows / {_human_bytes(t.bytes)} moved"
            + (
                f" · {t.cache_hits} fragment(s) from cache ({_human_bytes(t.cache_bytes)} not moved)"
                if t.cache_hits
                else ""
            )
            + "</span>"
        )
        warning = ""
        if self.partial or self.missing_sources:
            missing = ", ".join(self.missing_sources) or "some sources"
            detail = "".join(
                f"<li>{safe_text(m.fragment)} on {safe_text(m.source)}: "
                f"{safe_text(m.error_class)}: {safe_text(m.error)}</li>"
                for m in t.missing
            )
            warning = (
                f"<div class='fedlab-partial' style='color:{ALERT_COLOR}'><b>partial result</b>: "
                f"{safe_text(missing)} did not answer; the rows of the missing fragment(s) "
                "are not in this answer"
                + (f"<ul style='margin:.2em 0'>{detail}</ul>" if detail else "")
                + "</div>"
            )
        if t.stale:
            ages = ", ".join(
                f"{safe_text(f)} ({safe_text(next((e.source for e in t.entries if e.fragment == f), '?'))}): "
                f"{age:,.0f} s old"
                for f, age in t.stale.items()
            )
            warning += (
                f"<div class='fedlab-stale' style='color:{ALERT_COLOR}'><b>stale data</b>: "
                f"served from the fragment cache after the source failed: {ages}</div>"
            )
        explain = (
            "<details><summary style='cursor:pointer'>EXPLAIN "
            f"[{safe_text(p.strategy)}]: {len(p.fragments)} fragment(s)</summary>"
            f"{plan_html(p)}"
            "<details><summary style='cursor:pointer;color:#555'>as text</summary>"
            f"<pre style='font-size:12px'>{safe_text(str(p))}</pre></details></details>"
        )
        trace = (
            "<details open><summary style='cursor:pointer'>trace: where the time and the bytes "
            f"went</summary>{trace_html(t)}</details>"
        )
        return (
            f"<div class='fedlab-result' style='{_FONT}'>"
            f"{self.df._repr_html_()}<div style='margin:.3em 0'>{headline}</div>"
            f"{warning}{explain}{trace}</div>"
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

    def plot_volume(self, ax: Axes | None = None) -> Axes:
        """Bytes moved per strategy, split by source (:func:`fedlab.viz.plot_volume`)."""
        from fedlab.viz import plot_volume

        return plot_volume(self, ax=ax)

    @property
    def mismatches(self) -> list[str]:
        """Strategies whose answer differs from the first one's (the equality rule)."""
        if "same_result" not in self.table.columns:
            return []
        return [
            s
            for s, ok in zip(self.table["strategy"], self.table["same_result"], strict=True)
            if ok is False
        ]

    def explain(self, strategy: str | None = None) -> str:
        """The plan of one strategy as text: fedlab's EXPLAIN tree, or for ``"fdw"`` the
        hub's ``EXPLAIN (VERBOSE)`` (each foreign scan with the SQL sent to its source).
        Without ``strategy``: every plan, one after the other."""
        if strategy is None:
            return "\n\n".join(f"== {s} ==\n{self.explain(s)}" for s in self.results)
        if strategy not in self.results:
            from fedlab.errors import ConfigError

            raise ConfigError(
                f"no strategy {strategy!r} in this comparison (it has: {', '.join(self.results)})"
            )
        from fedlab.security import redact

        return redact(str(self.results[strategy].plan))

    def pushed(self) -> pl.DataFrame:
        """What each strategy sent to each source: one row per fragment (fedlab) or foreign
        scan (``fdw``) with its source, what was pushed and the SQL."""
        from fedlab.security import redact

        rows = [
            {
                "strategy": s,
                "fragment": f.id,
                "source": f.source,
                "kind": f.kind,
                "pushed": "; ".join(f.pushed) or "nothing (whole table)",
                "sql": redact(f.sql),
            }
            for s, r in self.results.items()
            for f in r.plan.fragments
        ]
        schema = dict.fromkeys(
            ("strategy", "fragment", "source", "kind", "pushed", "sql"), pl.String
        )
        return pl.DataFrame(rows, schema=schema)

    def __repr__(self) -> str:
        return repr(self.table)

    def _plans_html(self) -> str:
        """The plans side by side (collapsed): fedlab's trees next to the hub's EXPLAIN."""
        if not self.results:
            return ""
        cells = "".join(
            "<div style='flex:1 1 0;min-width:18em'>"
            f"<b>{safe_text(s)}</b><pre style='font-size:11px;white-space:pre-wrap;"
            "background:rgba(127,127,127,.08);padding:.3em'>"
            f"{safe_text(self.explain(s))}</pre></div>"
            for s in self.results
        )
        return (
            "<details class='fedlab-comparison-plans'><summary style='cursor:pointer'>plans "
            f"side by side</summary><div style='display:flex;gap:.8em'>{cells}</div></details>"
        )

    def _repr_html_(self) -> str:
        bad = self.mismatches
        verdict = (
            f"<div style='color:{ALERT_COLOR}'><b>different answers</b>: "
            f"{safe_text(', '.join(bad))} (see the difference column)</div>"
            if bad
            else "<div style='color:#2a7a2a'>every strategy returned the same rows</div>"
        )
        return (
            f"<div class='fedlab-comparison' style='{_FONT}'>"
            f"<b>{self.table.height} strateg{'y' if self.table.height == 1 else 'ies'}</b>"
            f"<pre style='font-size:12px;white-space:pre-wrap'>{safe_text(self.sql)}</pre>"
            f"{self.table._repr_html_()}{verdict}{self._plans_html()}</div>"
        )
