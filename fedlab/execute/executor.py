"""Run a plan: fragments in parallel through the fetch seam, then the residual in Polars."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import polars as pl

from fedlab.catalog import Catalog
from fedlab.errors import ExecutionError, FedlabError, QueryTimeoutError, UnsupportedSQLError
from fedlab.execute.fetch import Fetcher, default_fetch
from fedlab.result import Trace, TraceEntry
from fedlab.sql.plan import Fragment, Plan

__all__ = ["Progress", "execute"]

#: ``progress(event, fragment, entry)``: event is "start", "end" (entry: the TraceEntry) or
#: "error" (entry: None). Called from worker threads; must be quick and never raise.
Progress = Callable[[str, Fragment, "TraceEntry | None"], None]


def execute(
    plan: Plan,
    catalog: Catalog,
    *,
    fetch: Fetcher = default_fetch,
    max_workers: int = 8,
    timeout: float | None = None,
    t0: float | None = None,
    progress: Progress | None = None,
) -> tuple[pl.DataFrame, Trace]:
    """Fetch every fragment (in parallel), run the residual, return the frame and its trace.

    Args:
        plan: what to run.
        catalog: where the sources are.
        fetch: the fetch seam (see :mod:`fedlab.execute.fetch`).
        max_workers: fragments fetched at once.
        timeout: whole-query deadline in seconds (None: none).
        t0: ``time.monotonic()`` when the query started (for the trace's clock).
        progress: optional per-fragment callback (see :data:`Progress`).
    """
    t0 = time.monotonic() if t0 is None else t0
    deadline = t0 + timeout if timeout else None
    trace = Trace()
    frames: dict[str, pl.DataFrame] = {}

    def notify(event: str, frag: Fragment, entry: TraceEntry | None) -> None:
        if progress is not None:
            with contextlib.suppress(Exception):  # a display problem never fails the query
                progress(event, frag, entry)

    def run_one(frag):
        notify("start", frag, None)
        start = time.monotonic() - t0
        try:
            res = fetch(frag, catalog.sources[frag.source], deadline)
        except BaseException:
            notify("error", frag, None)
            raise
        end = time.monotonic() - t0
        entry = TraceEntry(
            fragment=frag.id,
            source=frag.source,
            kind=frag.kind,
            sql=frag.sql,
            start=start,
            end=end,
            rows=res.df.height,
            bytes=res.nbytes,
            reader=res.reader,
            cache_hit=res.cache_hit,
        )
        notify("end", frag, entry)
        return frag, res, entry

    fetch_start = time.monotonic()
    if plan.fragments:
        pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(plan.fragments))))
        try:
            futures = [pool.submit(run_one, f) for f in plan.fragments]
            wait_for = None if deadline is None else max(deadline - time.monotonic(), 0) + 1.0
            done, pending = wait(futures, timeout=wait_for, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                err = failed[0].exception()
                for f in pending:
                    f.cancel()
                if isinstance(err, FedlabError):
                    raise err
                raise ExecutionError(f"fragment failed: {type(err).__name__}: {err}") from None
            if pending:
                for f in pending:
                    f.cancel()
                raise QueryTimeoutError(
                    f"query passed its {timeout:g} s deadline with {len(pending)} fragment(s) still running"
                )
            for fut in futures:
                frag, res, entry = fut.result()
                frames[frag.id] = res.df
                trace.entries.append(entry)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    trace.fetch_s = time.monotonic() - fetch_start
    res_start = time.monotonic()
    trace.residual_start = res_start - t0
    if plan.residual_sql is None:
        df = frames[plan.fragments[0].id]
    else:
        ctx = pl.SQLContext({k: v.lazy() for k, v in frames.items()})
        try:
            df = ctx.execute(plan.residual_sql, eager=False).collect()
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UnsupportedSQLError(
                f"the local engine (Polars SQL) could not run the residual: {type(e).__name__}: {msg}\n"
                f"  residual: {plan.residual_sql[:800]}"
            ) from None
    if plan.output_columns and df.width > len(plan.output_columns):
        df = df[:, : len(plan.output_columns)]  # hidden ORDER BY keys of the residual
    if (
        plan.output_columns
        and len(plan.output_columns) == df.width
        and len(set(plan.output_columns)) == df.width
    ):
        df = df.rename(dict(zip(df.columns, plan.output_columns, strict=True)))
    trace.residual_s = time.monotonic() - res_start
    trace.result_rows = df.height
    return df, trace
