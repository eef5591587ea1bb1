"""Monitoring: the query history and source health (seam; extended by the monitoring work)."""

from __future__ import annotations

import time
from typing import Any

import polars as pl

from fedlab.errors import FedlabError

__all__ = ["Monitor", "health"]

_HISTORY_SCHEMA = {
    "at": pl.Float64,
    "sql": pl.String,
    "strategy": pl.String,
    "ok": pl.Boolean,
    "seconds": pl.Float64,
    "fragments": pl.Int64,
    "sources": pl.String,
    "rows": pl.Int64,
    "bytes": pl.Int64,
    "error": pl.String,
}


class Monitor:
    """Records every query a Federation runs."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def begin(self, sql: str, strategy: str, params: Any = None) -> dict[str, Any]:
        record: dict[str, Any] = dict.fromkeys(_HISTORY_SCHEMA)
        record.update(at=time.time(), sql=sql, strategy=strategy, ok=False)
        record["_t0"] = time.monotonic()
        self.records.append(record)
        return record

    def fail(self, record: dict[str, Any], error: BaseException, plan: Any = None) -> None:
        record.update(
            error=f"{type(error).__name__}: {error}",
            seconds=time.monotonic() - record["_t0"],
        )

    def succeed(self, record: dict[str, Any], plan: Any, trace: Any, df: pl.DataFrame) -> None:
        record.update(
            ok=True,
            seconds=trace.total_s,
            fragments=len(plan.fragments),
            sources=", ".join(plan.sources),
            rows=trace.rows,
            bytes=trace.bytes,
        )

    def audit_to(self, path: Any, *, mask_literals: bool = True, user: str | None = None) -> None:
        """Write an audit log (seam; filled in by the monitoring work)."""
        raise NotImplementedError("the audit log is being built")

    def history(self) -> pl.DataFrame:
        rows = [{k: r.get(k) for k in _HISTORY_SCHEMA} for r in self.records]
        return pl.DataFrame(rows, schema=_HISTORY_SCHEMA)


def health(fed: Any) -> pl.DataFrame:
    """Ping every source of ``fed``: one row each with its round-trip latency or its error."""
    rows = []
    for s in fed.catalog.sources.values():
        try:
            latency, error = s.ping(), None
        except FedlabError as e:
            latency, error = None, str(e)
        rows.append(
            {
                "source": s.name,
                "kind": s.kind,
                "up": error is None,
                "latency_ms": None if latency is None else latency * 1000,
                "breaker": fed.resilience.breaker_state(s.name),
                "error": error,
            }
        )
    schema = {
        "source": pl.String,
        "kind": pl.String,
        "up": pl.Boolean,
        "latency_ms": pl.Float64,
        "breaker": pl.String,
        "error": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)
