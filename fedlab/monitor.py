"""Monitoring: the query history, its plots, source health, and the audit log.

Every ``fed.sql(...)`` is recorded by :class:`Monitor` (``fed.monitor``): when, who, the
SQL and its fingerprint, strategy, sources and tables, fragments, rows, bytes, latency,
status (``ok`` / ``error`` / ``partial``), the error class, and the access decision.
Queries refused at bind or plan time (unknown table, access or residency rule) are
recorded too. ``fed.history()`` is that record as a Polars frame; the plots here are pure
functions of that frame::

    fed.monitor.plot()                       # the three panels below, one Figure
    plot_latency(fed.history())              # latency over time, one series per source
    plot_cross_source(fed.history())         # queries touching >= 2 sources vs 1, over time
    plot_error_rate(fed.history())           # share of failed queries over time

>>> m = Monitor(max_records=2)
>>> for q in ("SELECT 1", "SELECT 2", "SELECT 3"):
...     m.fail(m.begin(q, "auto"), ValueError("boom"))
>>> h = m.history()
>>> h["sql"].to_list(), h["status"].to_list(), h["error_class"].to_list()
(['SELECT 2', 'SELECT 3'], ['error', 'error'], ['ValueError', 'ValueError'])
>>> h["fingerprint"].n_unique()
1

Nothing in a record or in the audit log carries a credential: texts pass through
:func:`fedlab.security.redact`.
"""

from __future__ import annotations

import datetime as dt
import getpass
import itertools
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from fedlab.audit import AuditLog, fingerprint, mask_literals, tables_in_sql
from fedlab.errors import ExecutionError, FedlabError, PolicyError, SourceError
from fedlab.security import redact
from fedlab.sql.plan import ALERT_COLOR, LOCAL_COLOR, source_colors

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "HISTORY_SCHEMA",
    "Monitor",
    "health",
    "plot_cross_source",
    "plot_error_rate",
    "plot_history",
    "plot_latency",
]

_PER_SOURCE = pl.List(
    pl.Struct(
        {
            "source": pl.String,
            "seconds": pl.Float64,
            "rows": pl.Int64,
            "bytes": pl.Int64,
            "error": pl.String,
        }
    )
)

#: columns of ``fed.history()`` (the first ten are the original ones)
HISTORY_SCHEMA: dict[str, Any] = {
    "at": pl.Float64,  # epoch seconds when the query started
    "sql": pl.String,
    "strategy": pl.String,
    "ok": pl.Boolean,
    "seconds": pl.Float64,
    "fragments": pl.Int64,
    "sources": pl.String,  # "crm, sales"
    "rows": pl.Int64,  # rows moved from the sources
    "bytes": pl.Int64,  # bytes moved from the sources
    "error": pl.String,  # "ErrorClass: message" (redacted)
    "id": pl.Int64,  # query number in this session
    "time": pl.Datetime("ms"),  # ``at`` as a local timestamp
    "user": pl.String,
    "fingerprint": pl.String,
    "status": pl.String,  # running / ok / error / partial
    "decision": pl.String,  # allowed / denied (by an access or residency rule)
    "error_class": pl.String,
    "n_sources": pl.Int64,
    "tables": pl.String,  # "crm.users, sales.orders"
    "result_rows": pl.Int64,
    "cache_hits": pl.Int64,
    "per_source": _PER_SOURCE,  # one struct per source: seconds, rows, bytes, error
}
_HISTORY_SCHEMA = HISTORY_SCHEMA  # the seam's old name

# "source crm", "source 'crm'", "on crm", "on source crm": where an error message names one
_SOURCE_IN_TEXT = re.compile(r"\b(?:source|on)\s+'?([A-Za-z_][A-Za-z0-9_]*)'?")
# without a plan, only the unambiguous forms: "source 'crm'" and "source crm (url)"
_SOURCE_NAMED = re.compile(r"\bsource (?:'([A-Za-z_]\w*)'|([A-Za-z_]\w*) \()")


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers)
        return "unknown"


class Monitor:
    """Records every query a Federation runs (bounded: the oldest records go first).

    Args:
        max_records: how many queries the history keeps in memory.
        user: who runs the queries (default: the OS user); ``fed.audit`` sets it too.
        dialect: dialect of the SQL text, for fingerprints.
    """

    def __init__(
        self, max_records: int = 10_000, *, user: str | None = None, dialect: str = "postgres"
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.user = user
        self.dialect = dialect
        self.audit_log: AuditLog | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ settings
    @property
    def max_records(self) -> int:
        return self.records.maxlen or 0

    @max_records.setter
    def max_records(self, n: int) -> None:
        if n < 1:
            raise ValueError("max_records must be >= 1")
        with self._lock:
            self.records = deque(self.records, maxlen=n)

    def clear(self) -> None:
        """Forget the history (the audit file keeps its lines)."""
        with self._lock:
            self.records.clear()

    # ------------------------------------------------------------------ the seam
    def begin(self, sql: str, strategy: str, params: Any = None) -> dict[str, Any]:
        """A query starts: record it (status ``running``)."""
        text = sql if isinstance(sql, str) else str(sql)
        record: dict[str, Any] = dict.fromkeys(HISTORY_SCHEMA)
        record.update(
            at=time.time(),
            sql=redact(text),
            strategy=strategy,
            ok=False,
            status="running",
            decision="allowed",
            user=self.user or _default_user(),
            fingerprint=fingerprint(text, self.dialect),
            per_source=[],
            _t0=time.monotonic(),
            _raw=text,
            _params=params,
        )
        with self._lock:
            record["id"] = next(self._ids)
            self.records.append(record)
        return record

    def fail(self, record: dict[str, Any], error: BaseException, plan: Any = None) -> None:
        """The query raised ``error`` (at bind, plan or run time; ``plan`` may be None)."""
        message = redact(f"{type(error).__name__}: {error}")
        denied = isinstance(error, PolicyError)
        sources = list(plan.sources) if plan is not None else []
        tables = _plan_tables(plan) if plan is not None else []
        if not tables:
            tables = [t for t in [getattr(error, "table", "")] if t] if denied else []
            tables = tables or tables_in_sql(record.get("_raw") or "", self.dialect)
        blamed = [] if denied else _error_sources(error, sources)
        if denied and not sources and getattr(error, "source", ""):
            sources = [error.source]
        record.update(
            ok=False,
            status="error",
            decision="denied" if denied else "allowed",
            error=message,
            error_class=type(error).__name__,
            seconds=time.monotonic() - record["_t0"],
            fragments=len(plan.fragments) if plan is not None else 0,
            sources=", ".join(sources or blamed),
            n_sources=len(sources or blamed),
            tables=", ".join(tables),
            rows=0,
            bytes=0,
            result_rows=0,
            cache_hits=0,
            per_source=[
                {"source": s, "seconds": None, "rows": None, "bytes": None, "error": message}
                for s in blamed
            ],
        )
        self._audit(record)

    def succeed(self, record: dict[str, Any], plan: Any, trace: Any, df: pl.DataFrame) -> None:
        """The query returned ``df``; ``trace`` says where the time and bytes went."""
        entries = list(getattr(trace, "entries", []) or [])
        per: dict[str, dict[str, Any]] = {}
        for e in entries:
            p = per.setdefault(
                e.source,
                {"source": e.source, "start": e.start, "end": e.end, "rows": 0, "bytes": 0},
            )
            p["start"], p["end"] = min(p["start"], e.start), max(p["end"], e.end)
            p["rows"] += e.moved_rows
            p["bytes"] += e.moved_bytes
            if e.error:
                p["error"] = redact(str(e.error))
        failed = [p["source"] for p in per.values() if p.get("error")]
        missing = list(getattr(trace, "missing_sources", None) or [])
        partial = bool(getattr(trace, "partial", False) or failed or missing)
        for s in missing:
            per.setdefault(s, {"source": s, "error": "did not answer (partial result)"})
        for m in getattr(trace, "missing", None) or []:  # the reason, where the trace has it
            src = getattr(m, "source", None)
            if src in per and not per[src].get("end"):
                per[src]["error"] = redact(str(m))
        record.update(
            ok=True,
            status="partial" if partial else "ok",
            seconds=trace.total_s,
            fragments=len(plan.fragments),
            sources=", ".join(plan.sources),
            n_sources=len(plan.sources),
            tables=", ".join(_plan_tables(plan)),
            rows=trace.rows,
            bytes=trace.bytes,
            result_rows=df.height,
            cache_hits=getattr(trace, "cache_hits", 0),
            per_source=[
                {
                    "source": p["source"],
                    "seconds": (p["end"] - p["start"]) if "end" in p else None,
                    "rows": p.get("rows"),
                    "bytes": p.get("bytes"),
                    "error": p.get("error"),
                }
                for p in per.values()
            ],
        )
        self._audit(record)

    # ------------------------------------------------------------------ audit
    def audit_to(
        self,
        path: str | Path | None,
        *,
        mask_literals: bool = True,
        user: str | None = None,
    ) -> None:
        """Append one JSON line per finished query to ``path`` (None: stop auditing)."""
        if user is not None:
            self.user = user
        self.audit_log = None if path is None else AuditLog(path, mask_literals=mask_literals)

    def _audit(self, record: dict[str, Any]) -> None:
        log = self.audit_log
        if log is None:
            return
        raw = record.get("_raw") or ""
        entry = {
            "timestamp": dt.datetime.fromtimestamp(record["at"], dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "query_id": record["id"],
            "user": record["user"],
            "fingerprint": record["fingerprint"],
            "sql": mask_literals(raw, self.dialect) if log.mask_literals else redact(raw),
            "strategy": record["strategy"],
            "sources": _split(record["sources"]),
            "tables": _split(record["tables"]),
            "rows": record["result_rows"],
            "seconds": round(record["seconds"] or 0.0, 6),
            "status": record["status"],
            "decision": record["decision"],
            "error_class": record["error_class"],
        }
        params = record.get("_params")
        if params and not log.mask_literals:
            entry["params"] = {str(k): _plain(v) for k, v in dict(params).items()}
        try:
            log.write(entry)
        except OSError:  # the query's answer matters more than its audit line
            import warnings

            warnings.warn(f"fedlab: could not write the audit log {log.path}", stacklevel=3)

    # ------------------------------------------------------------------ reading
    def history(self) -> pl.DataFrame:
        """One row per query, oldest first (columns: :data:`HISTORY_SCHEMA`)."""
        with self._lock:
            records = list(self.records)
        rows = []
        for r in records:
            row = {k: r.get(k) for k in HISTORY_SCHEMA}
            row["time"] = dt.datetime.fromtimestamp(r["at"])
            rows.append(row)
        return pl.DataFrame(rows, schema=HISTORY_SCHEMA)

    def last_errors(self) -> dict[str, tuple[float, str]]:
        """Per source: (epoch seconds, message) of the latest error attributed to it."""
        out: dict[str, tuple[float, str]] = {}
        with self._lock:
            records = list(self.records)
        for r in records:
            for p in r.get("per_source") or []:
                if p.get("error"):
                    out[p["source"]] = (r["at"], p["error"])
        return out

    # ------------------------------------------------------------------ plots
    def plot(self, **kwargs: Any) -> Figure:
        """Latency by source, cross-source frequency and error rate (:func:`plot_history`)."""
        return plot_history(self.history(), **kwargs)

    def plot_latency(self, ax: Axes | None = None) -> Figure:
        return plot_latency(self.history(), ax=ax)

    def plot_cross_source(self, ax: Axes | None = None, bins: int = 20) -> Figure:
        return plot_cross_source(self.history(), ax=ax, bins=bins)

    def plot_error_rate(self, ax: Axes | None = None, bins: int = 20) -> Figure:
        return plot_error_rate(self.history(), ax=ax, bins=bins)

    def __repr__(self) -> str:
        audit = f", audit: {self.audit_log.path}" if self.audit_log else ""
        return f"<Monitor {len(self.records)} quer(ies), keeps {self.max_records}{audit}>"


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, list | tuple | set | frozenset):
        return [_plain(x) for x in v]
    return str(v)


def _split(text: str | None) -> list[str]:
    return [p for p in (text or "").split(", ") if p]


def _plan_tables(plan: Any) -> list[str]:
    out: list[str] = []
    for f in getattr(plan, "fragments", []) or []:
        for t in f.tables or []:
            if t not in out:
                out.append(t)
    return out


def _error_sources(error: BaseException, sources: Iterable[str]) -> list[str]:
    """The sources an error is about: its ``source`` attribute, else names in its text
    (restricted to the plan's sources when there is a plan)."""
    if isinstance(error, FedlabError) and not isinstance(error, SourceError | ExecutionError):
        return []  # a name, the SQL text, the plan: not the source's fault
    known = list(sources)
    named = getattr(error, "source", None)
    if isinstance(named, str) and named and (not known or named in known):
        return [named]
    found: list[str] = []
    if known:
        names = [m.group(1) for m in _SOURCE_IN_TEXT.finditer(str(error))]
        names = [n for n in names if n in known]
    else:
        names = [m.group(1) or m.group(2) for m in _SOURCE_NAMED.finditer(str(error))]
    for name in names:
        if name not in found:
            found.append(name)
    return found


# ---------------------------------------------------------------------------- health
_VERSION_SQL = {
    "postgresql": "SHOW server_version",
    "mysql": "SELECT VERSION()",
    "sqlite": "SELECT sqlite_version()",
    "duckdb": "SELECT version()",
    "rest": "SELECT version()",  # answered from the probe's GET (fedlab.rest.RestConnection)
}


def _probe(source: Any, timeout: float) -> dict[str, Any]:
    """Connect, time ``SELECT 1``, read the server version."""
    opts = replace(source.options, connect_timeout=min(source.options.connect_timeout, timeout))
    quick = replace(source, options=opts)
    t0 = time.perf_counter()
    con = quick.connect()
    try:
        cur = con if source.kind == "duckdb" else con.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        latency = time.perf_counter() - t0
        cur.execute(_VERSION_SQL[source.kind])
        row = cur.fetchone()
        version = str(row[0]) if row else None
    finally:
        con.close()
    return {"latency": latency, "version": version}


def health(fed: Any, *, timeout: float = 3.0) -> pl.DataFrame:
    """Ping every source of ``fed`` in parallel, each bounded by ``timeout`` seconds.

    One row per source: ``reachable`` (also as ``up``), ``latency_ms`` (connect plus a
    ``SELECT 1`` round trip), the server ``version``, the circuit ``breaker`` state, the
    ping's ``error`` (None when reachable), and the ``last_error`` the history attributes
    to the source (with ``last_error_at``).
    """
    sources = list(fed.catalog.sources.values())
    results: dict[str, dict[str, Any]] = {}

    def run(s: Any) -> None:
        try:
            results[s.name] = _probe(s, timeout)
        except FedlabError as e:
            results[s.name] = {"error": str(e)}
        except Exception as e:  # a driver's own error: redacted, never raised from here
            results[s.name] = {"error": redact(f"{type(e).__name__}: {e}")}

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in sources]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 0.5
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    monitor = getattr(fed, "monitor", None)
    last = monitor.last_errors() if monitor is not None else {}
    rows = []
    for s in sources:
        got = results.get(s.name) or {"error": f"no answer within {timeout:g} s"}
        try:
            breaker = fed.resilience.breaker_state(s.name)
        except Exception:
            breaker = None
        error = got.get("error")
        at, last_error = last.get(s.name, (None, None))
        rows.append(
            {
                "source": s.name,
                "kind": s.kind,
                "up": error is None,
                "reachable": error is None,
                "latency_ms": None if error else got["latency"] * 1000,
                "version": got.get("version"),
                "breaker": breaker,
                "error": error,
                "last_error": last_error,
                "last_error_at": None if at is None else dt.datetime.fromtimestamp(at),
            }
        )
    schema = {
        "source": pl.String,
        "kind": pl.String,
        "up": pl.Boolean,
        "reachable": pl.Boolean,
        "latency_ms": pl.Float64,
        "version": pl.String,
        "breaker": pl.String,
        "error": pl.String,
        "last_error": pl.String,
        "last_error_at": pl.Datetime("ms"),
    }
    return pl.DataFrame(rows, schema=schema)


# ---------------------------------------------------------------------------- plots
_MULTI_COLOR = "#1f77b4"
_SINGLE_COLOR = "#aec7e8"


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Axes, bool]:
    if ax is not None:
        return ax, False
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax, True


def _finished(history: pl.DataFrame) -> pl.DataFrame:
    if "status" in history.columns:
        return history.filter(pl.col("status") != "running")
    return history


def _bins(history: pl.DataFrame, bins: int) -> tuple[list[dt.datetime], list[int]]:
    """Equal time bins over the history: (bin starts, bin index of each row)."""
    at = history["at"].to_list()
    lo, hi = min(at), max(at)
    width = (hi - lo) / bins if hi > lo else 1.0
    index = [min(int((a - lo) / width), bins - 1) for a in at]
    starts = [dt.datetime.fromtimestamp(lo + i * width) for i in range(bins)]
    return starts, index


def _bar_width(starts: list[dt.datetime]) -> float:
    if len(starts) < 2:
        return 1 / 86400  # a second, in days
    return (starts[1] - starts[0]).total_seconds() / 86400 * 0.9


def _empty(ax: Axes, title: str) -> None:
    ax.text(0.5, 0.5, "no queries yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)


def plot_latency(history: pl.DataFrame, ax: Axes | None = None) -> Figure:
    """Latency over time, one series per source (the time that source's fragments took in
    each query, ms); failed queries are red crosses at their total time."""
    ax, created = _axes(ax, (8, 3.5))
    title = "latency by source"
    hist = _finished(history)
    if hist.is_empty():
        _empty(ax, title)
        return ax.figure
    per = (
        hist.select("time", "per_source")
        .explode("per_source")
        .drop_nulls("per_source")
        .unnest("per_source")
        .drop_nulls("seconds")
    )
    colors = source_colors(per["source"].unique().to_list() if per.height else [])
    for name, color in colors.items():
        part = per.filter(pl.col("source") == name).sort("time")
        ax.plot(
            part["time"].to_list(),
            [s * 1000 for s in part["seconds"].to_list()],
            marker="o",
            markersize=4,
            linewidth=1.2,
            color=color,
            label=name,
        )
    failed = hist.filter(~pl.col("ok"))
    if failed.height:
        ax.scatter(
            failed["time"].to_list(),
            [(s or 0) * 1000 for s in failed["seconds"].to_list()],
            marker="x",
            color=ALERT_COLOR,
            label="failed query",
            zorder=3,
        )
    ax.set_ylabel("ms")
    ax.set_xlabel("time")
    ax.set_title(title)
    if colors or failed.height:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.autofmt_xdate()
    if created:
        ax.figure.tight_layout()
    return ax.figure


def plot_cross_source(history: pl.DataFrame, ax: Axes | None = None, bins: int = 20) -> Figure:
    """Cross-database query frequency: per time bin, queries that touched two or more
    sources (stacked on) those that touched one; failed queries that touched none are left
    out."""
    ax, created = _axes(ax, (8, 3.0))
    title = "cross-database queries"
    hist = _finished(history)
    if hist.is_empty():
        _empty(ax, title)
        return ax.figure
    starts, index = _bins(hist, bins)
    n = hist["n_sources"].fill_null(0).to_list()
    multi = [0] * bins
    single = [0] * bins
    for i, k in zip(index, n, strict=True):
        if k >= 2:
            multi[i] += 1
        elif k == 1:
            single[i] += 1
    width = _bar_width(starts)
    ax.bar(starts, single, width=width, align="edge", color=_SINGLE_COLOR, label="1 source")
    ax.bar(
        starts,
        multi,
        width=width,
        align="edge",
        bottom=single,
        color=_MULTI_COLOR,
        label="≥ 2 sources",
    )
    total = sum(multi) + sum(single)
    share = f" ({100 * sum(multi) / total:.0f}% cross-database)" if total else ""
    ax.set_ylabel("queries")
    ax.set_xlabel("time")
    ax.set_title(title + share)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.figure.autofmt_xdate()
    if created:
        ax.figure.tight_layout()
    return ax.figure


def plot_error_rate(history: pl.DataFrame, ax: Axes | None = None, bins: int = 20) -> Figure:
    """Error rate over time: per time bin, the share of queries that failed (line, %) over
    the number of queries (grey bars, right axis); partial results count as answered."""
    ax, created = _axes(ax, (8, 3.0))
    title = "error rate"
    hist = _finished(history)
    if hist.is_empty():
        _empty(ax, title)
        return ax.figure
    starts, index = _bins(hist, bins)
    ok = hist["ok"].fill_null(False).to_list()
    counts = [0] * bins
    errors = [0] * bins
    for i, good in zip(index, ok, strict=True):
        counts[i] += 1
        errors[i] += 0 if good else 1
    width = _bar_width(starts)
    right = ax.twinx()
    right.bar(starts, counts, width=width, align="edge", color=LOCAL_COLOR, alpha=0.25)
    right.set_ylabel("queries", color=LOCAL_COLOR)
    mids = [s + dt.timedelta(days=width / 2) for s in starts]
    rate = [100 * e / c if c else None for e, c in zip(errors, counts, strict=True)]
    pts = [(m, r) for m, r in zip(mids, rate, strict=True) if r is not None]
    ax.plot(
        [m for m, _ in pts],
        [r for _, r in pts],
        marker="o",
        markersize=4,
        color=ALERT_COLOR,
        label="failed %",
    )
    ax.set_zorder(right.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.set_ylim(0, 105)
    ax.set_ylabel("% failed", color=ALERT_COLOR)
    ax.set_xlabel("time")
    total = sum(counts)
    ax.set_title(f"{title} ({sum(errors)} of {total} failed)")
    ax.figure.autofmt_xdate()
    if created:
        ax.figure.tight_layout()
    return ax.figure


def plot_history(history: pl.DataFrame, bins: int = 20) -> Figure:
    """The three pictures of a history, stacked: latency by source, cross-database
    frequency, error rate."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    plot_latency(history, ax=axes[0])
    plot_cross_source(history, ax=axes[1], bins=bins)
    plot_error_rate(history, ax=axes[2], bins=bins)
    fig.tight_layout()
    return fig
