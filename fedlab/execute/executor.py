"""Run a plan: fragments in parallel through the fetch seam, then the residual in Polars."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import polars as pl
from sqlglot import exp

from fedlab.catalog import Catalog
from fedlab.errors import ExecutionError, FedlabError, QueryTimeoutError, UnsupportedSQLError
from fedlab.execute.fetch import Fetcher, FetchResult, default_fetch, polars_dtype
from fedlab.result import Trace, TraceEntry
from fedlab.sql.dialects import DIALECT
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
    on_error: str = "raise",
    max_rows: int | None = None,
    max_bytes: int | None = None,
    cache=None,
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
        on_error: ``raise`` (default), ``partial`` or ``stale`` (seam: only ``raise`` so far).
        max_rows, max_bytes: limits per fragment and per result (seam: not enforced yet).
        cache: the federation's fragment cache (for ``stale``).
    """
    t0 = time.monotonic() if t0 is None else t0
    deadline = t0 + timeout if timeout else None
    trace = Trace()
    frames: dict[str, pl.DataFrame] = {}

    def notify(event: str, frag: Fragment, entry: TraceEntry | None) -> None:
        if progress is not None:
            with contextlib.suppress(Exception):  # a display problem never fails the query
                progress(event, frag, entry)

    def run_one(frag: Fragment):
        notify("start", frag, None)
        start = time.monotonic() - t0
        shown_sql, note = frag.sql, ""
        try:
            if frag.dynamic:
                texts, shown_sql, note = fill_keys(frag, frames)
                if not texts:  # a provider returned no keys: nothing can match
                    res = FetchResult(empty_frame(frag), 0, "skipped")
                else:
                    parts = [
                        fetch(
                            dataclasses.replace(frag, sql=t), catalog.sources[frag.source], deadline
                        )
                        for t in texts
                    ]
                    res = parts[0]
                    if len(parts) > 1:
                        res = FetchResult(
                            pl.concat([p.df for p in parts], how="vertical_relaxed"),
                            sum(p.nbytes for p in parts),
                            parts[0].reader,
                            cache_hit=all(p.cache_hit for p in parts),
                        )
            else:
                res = fetch(frag, catalog.sources[frag.source], deadline)
        except BaseException:
            notify("error", frag, None)
            raise
        end = time.monotonic() - t0
        entry = TraceEntry(
            fragment=frag.id,
            source=frag.source,
            kind=frag.kind,
            sql=shown_sql,
            start=start,
            end=end,
            rows=res.df.height,
            bytes=res.nbytes,
            reader=res.reader + note,
            cache_hit=res.cache_hit,
            retries=res.retries,
            breaker=res.breaker,
        )
        notify("end", frag, entry)
        return frag, res, entry

    fetch_start = time.monotonic()
    if plan.fragments:
        pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(plan.fragments))))
        try:
            waiting = list(plan.fragments)
            running: dict = {}
            entries: dict[str, TraceEntry] = {}

            def launch() -> None:
                for f in list(waiting):
                    if all(d in frames for d in f.depends_on):
                        waiting.remove(f)
                        running[pool.submit(run_one, f)] = f

            launch()
            while running:
                left = None if deadline is None else max(deadline - time.monotonic(), 0) + 1.0
                done, _ = wait(list(running), timeout=left, return_when=FIRST_COMPLETED)
                if not done:
                    for f in running:
                        f.cancel()
                    raise QueryTimeoutError(
                        f"query passed its {timeout:g} s deadline with {len(running)} "
                        "fragment(s) still running"
                    )
                for fut in done:
                    running.pop(fut)
                    err = fut.exception()
                    if err is not None:
                        for f in running:
                            f.cancel()
                        if isinstance(err, FedlabError):
                            raise err
                        raise ExecutionError(
                            f"fragment failed: {type(err).__name__}: {err}"
                        ) from None
                    frag, res, entry = fut.result()
                    frames[frag.id] = res.df
                    entries[frag.id] = entry
                    frag.actual_rows = res.df.height
                launch()
            if waiting:  # pragma: no cover - the planner never makes a cycle
                raise ExecutionError(
                    "fragments wait for each other: " + ", ".join(f.id for f in waiting)
                )
            trace.entries.extend(entries[f.id] for f in plan.fragments)
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


# ------------------------------------------------------------------ semi-join keys
#: keys per ``IN (…)`` list; more keys are sent as several statements
KEY_BATCH = 10_000
#: beyond this many distinct keys, ship a ``BETWEEN min AND max`` range instead
MAX_KEYS = 100_000


def _literal(value, key_type: str, kind: str) -> str:
    if key_type == "int":
        return str(int(value))
    return exp.Literal.string(str(value)).sql(dialect=DIALECT[kind])


def fill_keys(frag: Fragment, frames: dict[str, pl.DataFrame]) -> tuple[list[str], str, str]:
    """The statements to send for a fragment that receives keys, the SQL to show in the
    trace (keys abridged), and a note for the trace's reader column.

    The smallest key set is always applied (in batches of :data:`KEY_BATCH`, or as a
    range beyond :data:`MAX_KEYS`); further key sets only when they fit in one list, since
    a filter is only an optimization: the local join checks the keys again. Returns no
    statement when a provider has no keys at all (nothing can match).
    """
    dialect = DIALECT[frag.kind]
    template = frag.template or frag.sql
    sets = []
    for d in frag.dynamic:
        token = exp.column(d.placeholder).sql(dialect=dialect, identify=True)
        keys = frames[d.provider].get_column(d.provider_column).drop_nulls().unique().sort()
        if keys.len() == 0:
            return [], frag.sql, " (no keys: not sent)"
        sets.append((keys.len(), token, d, keys))
    sets.sort(key=lambda x: x[0])
    notes = []
    fixed: dict[str, str] = {}
    batched: tuple[str, str, list[str]] | None = None
    for i, (n, token, d, keys) in enumerate(sets):
        if i == 0 and n > MAX_KEYS:
            lo = _literal(keys.min(), d.key_type, frag.kind)
            hi = _literal(keys.max(), d.key_type, frag.kind)
            fixed[token] = f"{d.target} BETWEEN {lo} AND {hi}"
            notes.append(f"{n:,} keys as a range")
        elif i == 0:
            batched = (token, d.target, [_literal(v, d.key_type, frag.kind) for v in keys])
            notes.append(f"{n:,} keys")
        elif n <= KEY_BATCH:
            lits = ", ".join(_literal(v, d.key_type, frag.kind) for v in keys)
            fixed[token] = f"{d.target} IN ({lits})"
            notes.append(f"{n:,} keys")
        else:
            fixed[token] = "1 = 1"
            notes.append(f"{n:,} keys of {d.provider} not sent")
    base = template
    for token, text in fixed.items():
        base = base.replace(token, text)
    shown, texts = base, [base]
    if batched is not None:
        token, target, lits = batched
        texts = [
            base.replace(token, f"{target} IN ({', '.join(lits[i : i + KEY_BATCH])})")
            for i in range(0, len(lits), KEY_BATCH)
        ]
        more = f", … {len(lits) - 5:,} more" if len(lits) > 5 else ""
        shown = base.replace(token, f"{target} IN ({', '.join(lits[:5])}{more})")
    batches = f", {len(texts)} statements" if len(texts) > 1 else ""
    return texts, shown, f" ({'; '.join(notes)}{batches})"


def empty_frame(frag: Fragment) -> pl.DataFrame:
    """No rows, with the fragment's columns and types."""
    return pl.DataFrame(
        schema={n: polars_dtype(t) or pl.String() for n, t in frag.columns},
    )
