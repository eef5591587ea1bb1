"""Run a plan: fragments in parallel through the fetch seam, then the residual in Polars.

Reliability (see docs/reliability.md):

* **deadline**: ``timeout`` bounds the whole query; every fragment's server statement is
  limited to the time left (``statement_timeout`` / ``max_statement_time``), and at the
  deadline the executor cancels what still runs and raises :class:`QueryTimeoutError`.
* **cancellation**: each fragment runs in a daemon thread named ``fedlab-<qid>-<fid>``
  and its server sessions are tagged the same way (:mod:`fedlab.execute.cancel`). When a
  fragment fails, the deadline passes or the calling thread gets a KeyboardInterrupt,
  the other fragments are cancelled on their servers before the error is raised.
* **limits**: ``max_rows`` / ``max_bytes`` per fragment (the fetch stops) and per result.
* **fallbacks**: ``on_error="partial"`` drops a failed fragment that is a branch of a
  UNION (a shard of a sharded table, or a user's UNION ALL) and says so in the result;
  ``on_error="stale"`` serves a failed fragment from the fragment cache, however old.

Local engine (docs/streaming.md): the residual runs on Polars' in-memory engine, or on its
streaming engine when the fragments feeding it are large (``streaming="auto"`` and their
Arrow size at least ``streaming_threshold_bytes``) or when ``streaming=True``. The engine
is always named: Polars 2's own default (``collect()``, engine ``"auto"``) is the
streaming engine, unless the ``POLARS_ENGINE_AFFINITY`` variable says otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import polars as pl
from sqlglot import exp

from fedlab.catalog import Catalog
from fedlab.errors import (
    ConfigError,
    ExecutionError,
    FedlabError,
    LimitExceededError,
    QueryTimeoutError,
    UnsupportedSQLError,
)
from fedlab.execute.cancel import (
    CURRENT,
    FetchContext,
    cancel_query,
    new_query_id,
    own_sockets,
    session_tag,
)
from fedlab.execute.fetch import Fetcher, FetchResult, check_limits, default_fetch, polars_dtype
from fedlab.result import MissingFragment, Trace, TraceEntry
from fedlab.sql.dialects import DIALECT
from fedlab.sql.plan import Fragment, Plan

__all__ = [
    "ON_ERROR",
    "STREAMING",
    "STREAMING_THRESHOLD_BYTES",
    "Progress",
    "check_streaming",
    "execute",
    "residual_engine",
    "union_branches",
]

#: ``progress(event, fragment, entry)``: event is "start", "end" (entry: the TraceEntry) or
#: "error" (entry: None). Called from worker threads; must be quick and never raise.
Progress = Callable[[str, Fragment, "TraceEntry | None"], None]

#: the fallback policies of ``on_error``
ON_ERROR = ("raise", "partial", "stale")

#: the values of ``streaming``: ``"auto"`` (by the inputs' size), ``True``, ``False``
STREAMING = ("auto", True, False)
#: ``streaming="auto"``: when the fragments a residual reads weigh this many bytes (their
#: Arrow size, as the trace counts them) or more, it runs on the streaming engine
STREAMING_THRESHOLD_BYTES = 64 * 2**20


def check_streaming(
    streaming: object, streaming_threshold_bytes: object = STREAMING_THRESHOLD_BYTES
) -> None:
    """Raise :class:`ConfigError` for a bad ``streaming`` or ``streaming_threshold_bytes``.

    >>> check_streaming("yes")
    Traceback (most recent call last):
    ...
    fedlab.errors.ConfigError: streaming must be 'auto', True or False, not 'yes' ('auto': the streaming engine when the residual's inputs reach streaming_threshold_bytes)
    """
    if not isinstance(streaming, bool) and not (isinstance(streaming, str) and streaming == "auto"):
        raise ConfigError(
            f"streaming must be 'auto', True or False, not {streaming!r} ('auto': the "
            "streaming engine when the residual's inputs reach streaming_threshold_bytes)"
        )
    value = streaming_threshold_bytes
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"streaming_threshold_bytes must be a non-negative integer (bytes), not {value!r}"
        )


def residual_engine(streaming: bool | str, input_bytes: int, threshold_bytes: int) -> str:
    """The Polars engine a residual runs on: ``"streaming"`` or ``"in-memory"``.

    >>> residual_engine("auto", 10, 100), residual_engine("auto", 100, 100)
    ('in-memory', 'streaming')
    >>> residual_engine(False, 10**12, 100), residual_engine(True, 0, 100)
    ('in-memory', 'streaming')
    """
    if streaming is True or (streaming == "auto" and input_bytes >= threshold_bytes):
        return "streaming"
    return "in-memory"


#: seconds the executor waits, after cancelling, for fragment threads to return before it
#: raises (the cancelling goes on in the background until they do)
CANCEL_WAIT_S = 0.9
#: seconds after a cancel began when the connections of fragments still blocked (a server
#: that stopped answering) are shut down (fedlab.execute.cancel.sever)
SEVER_AFTER_S = 1.0


def union_branches(plan: Plan) -> set[str]:
    """Fragments whose loss only removes rows: each is read by the residual only as a
    plain branch of a UNION (``SELECT … FROM fN`` with no join, grouping or aggregate),
    as the shards of a sharded table and the arms of a user's UNION ALL are, and provides
    no semi-join keys. These are what ``on_error="partial"`` may drop.
    """
    if plan.residual is None:
        return set()
    ids = {f.id for f in plan.fragments}
    providers = {d.provider for f in plan.fragments for d in f.dynamic}
    ok: dict[str, bool] = {}
    for t in plan.residual.find_all(exp.Table):
        if t.name in ids:
            ok[t.name] = ok.get(t.name, True) and _is_branch(t)
    return {k for k, v in ok.items() if v and k not in providers}


def _is_branch(table: exp.Table) -> bool:
    sel = table.parent.parent if isinstance(table.parent, exp.From) else None
    if not isinstance(sel, exp.Select) or sel.args.get("from_") is not table.parent:
        return False
    if any(sel.args.get(k) for k in ("joins", "group", "having", "laterals")):
        return False
    if any(True for _ in sel.find_all(exp.AggFunc, exp.Window)):
        return False
    node = sel.parent
    while isinstance(node, (exp.Subquery, exp.Paren)):
        node = node.parent
    return isinstance(node, exp.Union)


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
    cache: Any = None,
    streaming: bool | str = "auto",
    streaming_threshold_bytes: int = STREAMING_THRESHOLD_BYTES,
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
        on_error: ``raise`` (default), ``partial`` (drop failed UNION branches, see
            :func:`union_branches`) or ``stale`` (serve failed fragments from ``cache``).
        max_rows, max_bytes: limits per fragment (the fetch stops) and per result.
        cache: the federation's fragment cache (for ``stale``).
        streaming: the residual on Polars' streaming engine: ``"auto"`` (when the
            fragments' Arrow size reaches ``streaming_threshold_bytes``), ``True`` or
            ``False`` (the in-memory engine); ``trace.residual_engine`` says which ran.
        streaming_threshold_bytes: see ``streaming``.

    Raises:
        QueryTimeoutError: the deadline passed (running fragments were cancelled).
        LimitExceededError: a fragment or the result went over a limit.
        FedlabError: a fragment failed (the others were cancelled), or the residual did.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
    for name, value in (("max_rows", max_rows), ("max_bytes", max_bytes)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name} must be a non-negative integer or None, not {value!r}")
    check_streaming(streaming, streaming_threshold_bytes)
    t0 = time.monotonic() if t0 is None else t0
    deadline = t0 + timeout if timeout else None
    qid = new_query_id()
    # the sockets that exist before this query: a sever (see stop) never touches them
    keep = (
        set(own_sockets())
        if any(catalog.sources[f.source].kind in ("postgresql", "mysql") for f in plan.fragments)
        else set()
    )
    trace = Trace(query_id=qid)
    frames: dict[str, pl.DataFrame] = {}
    cancelled = threading.Event()
    done_q: queue.Queue = queue.Queue()
    threads: dict[str, threading.Thread] = {}
    droppable = union_branches(plan) if on_error == "partial" else set()

    def notify(event: str, frag: Fragment, entry: TraceEntry | None) -> None:
        if progress is not None:
            with contextlib.suppress(Exception):  # a display problem never fails the query
                progress(event, frag, entry)

    #: on_error="stale": each fragment's cached copy, taken before it is fetched (the
    #: cache drops an expired entry on the miss that precedes the fetch)
    stale_copies: dict[str, tuple[pl.DataFrame, int, float] | None] = {}

    def fetch_one(frag: Fragment) -> tuple[FetchResult, str, str]:
        shown_sql, note = frag.sql, ""
        if on_error == "stale":
            stale_copies[frag.id] = _stale(frag, cache, catalog, frames)
        if frag.dynamic:
            texts, shown_sql, note = fill_keys(frag, frames)
            if not texts:  # a provider returned no keys: nothing can match
                return FetchResult(empty_frame(frag), 0, "skipped"), shown_sql, note
            parts = [
                fetch(dataclasses.replace(frag, sql=t), catalog.sources[frag.source], deadline)
                for t in texts
            ]
            res = parts[0]
            if len(parts) > 1:
                res = FetchResult(
                    pl.concat([p.df for p in parts], how="vertical_relaxed"),
                    sum(p.nbytes for p in parts),
                    parts[0].reader,
                    cache_hit=all(p.cache_hit for p in parts),
                    retries=sum(p.retries for p in parts),
                    breaker=parts[-1].breaker,
                )
        else:
            res = fetch(frag, catalog.sources[frag.source], deadline)
        # again here: a cache hit, or a wrapped seam, did not pass default_fetch's check
        check_limits(frag, catalog.sources[frag.source], res.df.height, res.nbytes)
        return res, shown_sql, note

    def run_one(frag: Fragment) -> None:
        CURRENT.set(
            FetchContext(
                tag=session_tag(qid, frag.id),
                cancelled=cancelled,
                max_rows=max_rows,
                max_bytes=max_bytes,
            )
        )
        notify("start", frag, None)
        start = time.monotonic() - t0
        try:
            res, shown_sql, note = fetch_one(frag)
        except BaseException as e:  # handed to the calling thread, which decides
            notify("error", frag, None)
            done_q.put((frag, None, e, start))
            return
        entry = TraceEntry(
            fragment=frag.id,
            source=frag.source,
            kind=frag.kind,
            sql=shown_sql,
            start=start,
            end=time.monotonic() - t0,
            rows=res.df.height,
            bytes=res.nbytes,
            reader=res.reader + note,
            cache_hit=res.cache_hit,
            retries=res.retries,
            breaker=res.breaker,
        )
        notify("end", frag, entry)
        done_q.put((frag, (res, entry), None, start))

    entries: dict[str, TraceEntry] = {}

    def fallback(frag: Fragment, err: BaseException, start: float) -> bool:
        """Apply ``on_error`` to a failed fragment; True when the query can go on."""
        if not isinstance(err, Exception) or isinstance(err, LimitExceededError):
            return False  # an interrupt, or a limit the user set: never papered over
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        now = time.monotonic() - t0
        if on_error == "partial" and frag.id in droppable:
            frames[frag.id] = empty_frame(frag)
            trace.missing.append(MissingFragment(frag.id, frag.source, type(err).__name__, text))
            entries[frag.id] = TraceEntry(
                fragment=frag.id,
                source=frag.source,
                kind=frag.kind,
                sql=frag.sql,
                start=start,
                end=now,
                rows=0,
                bytes=0,
                reader="missing (partial result)",
                error=f"{type(err).__name__}: {text}",
            )
            frag.actual_rows = 0
            return True
        if on_error == "stale":
            got = stale_copies.get(frag.id) or _stale(frag, cache, catalog, frames)
            if got is None:
                why = (
                    "the fragment cache is off (fed.cache.enable())"
                    if cache is None or not getattr(cache, "enabled", False)
                    else "the fragment cache has no copy of it"
                )
                with contextlib.suppress(Exception):
                    err.add_note(f"on_error='stale': no stale answer for {frag.id}: {why}")
                return False
            df, nbytes, age = got
            frames[frag.id] = df
            trace.stale[frag.id] = age
            entries[frag.id] = TraceEntry(
                fragment=frag.id,
                source=frag.source,
                kind=frag.kind,
                sql=frag.sql,
                start=start,
                end=now,
                rows=df.height,
                bytes=nbytes,
                reader=f"cache (stale: {age:,.0f} s old)",
                cache_hit=True,
                error=f"{type(err).__name__}: {text}",
            )
            frag.actual_rows = df.height
            return True
        return False

    def stop(*, wait_s: float = CANCEL_WAIT_S) -> None:
        """Cancel whatever still runs, locally and on the servers; wait a little for the
        fragment threads, and leave a background canceller for any that hang on."""
        cancelled.set()
        alive = [t for t in threads.values() if t.is_alive()]
        if not alive:
            return
        sources = {
            catalog.sources[f.source].name: catalog.sources[f.source] for f in plan.fragments
        }

        def is_alive() -> bool:
            return any(t.is_alive() for t in alive)

        canceller = threading.Thread(
            target=cancel_query,
            args=(qid, list(sources.values()), is_alive),
            kwargs={"grace": 2.0, "sever_after": SEVER_AFTER_S, "keep": keep},
            name=f"fedlab-cancel-{qid}",
            daemon=True,
        )
        canceller.start()
        end = time.monotonic() + wait_s
        for t in alive:
            t.join(max(end - time.monotonic(), 0))

    fetch_start = time.monotonic()
    if plan.fragments:
        workers = max(1, min(max_workers, len(plan.fragments)))
        waiting = list(plan.fragments)
        running: dict[str, tuple[Fragment, float]] = {}

        def launch() -> None:
            for f in list(waiting):
                if len(running) >= workers:
                    return
                if all(d in frames for d in f.depends_on):
                    waiting.remove(f)
                    running[f.id] = (f, time.monotonic() - t0)
                    t = threading.Thread(
                        target=run_one, args=(f,), name=session_tag(qid, f.id), daemon=True
                    )
                    threads[f.id] = t
                    t.start()

        try:
            launch()
            while running:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    late = [f for f, _ in running.values()] + list(waiting)
                    late_err = QueryTimeoutError(
                        f"query passed its {timeout:g} s deadline with {len(late)} fragment(s) "
                        "unfinished: "
                        + ", ".join(f"{f.id} on {f.source}" for f in late)
                        + " (their server statements were cancelled)"
                    )
                    if on_error == "raise" or not all(
                        fallback(f, late_err, running.get(f.id, (f, now - t0))[1]) for f in late
                    ):
                        raise late_err
                    running.clear()
                    waiting.clear()
                    stop(wait_s=0.0)
                    break
                step = 0.1 if deadline is None else min(0.1, deadline - now)
                try:
                    frag, out, err, start = done_q.get(timeout=max(step, 0.001))
                except queue.Empty:
                    continue
                running.pop(frag.id, None)
                if err is not None:
                    if not fallback(frag, err, start):
                        if isinstance(err, FedlabError):
                            raise err
                        if not isinstance(err, Exception):
                            raise err
                        raise ExecutionError(
                            f"fragment {frag.id} on {frag.source} failed: "
                            f"{type(err).__name__}: {err}"
                        ) from None
                else:
                    res, entry = out
                    frames[frag.id] = res.df
                    entries[frag.id] = entry
                    frag.actual_rows = res.df.height
                launch()
            if waiting:  # pragma: no cover - the planner never makes a cycle
                raise ExecutionError(
                    "fragments wait for each other: " + ", ".join(f.id for f in waiting)
                )
        except BaseException:  # a failure, the deadline, or KeyboardInterrupt
            stop()
            raise
        trace.entries.extend(entries[f.id] for f in plan.fragments if f.id in entries)
    trace.fetch_s = time.monotonic() - fetch_start
    res_start = time.monotonic()
    trace.residual_start = res_start - t0
    if plan.residual_sql is None:
        df = frames[plan.fragments[0].id]
    else:
        trace.residual_engine = residual_engine(
            streaming, sum(e.bytes for e in trace.entries), streaming_threshold_bytes
        )
        ctx = pl.SQLContext({k: v.lazy() for k, v in frames.items()})
        try:
            df = ctx.execute(plan.residual_sql, eager=False).collect(engine=trace.residual_engine)
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
    _check_result(df, max_rows, max_bytes)
    return df, trace


def _check_result(df: pl.DataFrame, max_rows: int | None, max_bytes: int | None) -> None:
    over = None
    if max_rows is not None and df.height > max_rows:
        over = ("max_rows", f"{df.height:,} rows, more than max_rows={max_rows:,}")
    elif max_bytes is not None:
        size = int(df.estimated_size())
        if size > max_bytes:
            over = ("max_bytes", f"{size:,} bytes, more than max_bytes={max_bytes:,}")
    if over is not None:
        raise LimitExceededError(
            f"the query's result has {over[1]}; add a filter, an aggregate or a LIMIT, or "
            "raise the limit (fed.sql(..., max_rows=…, max_bytes=…))",
            fragment="result",
            limit=over[0],
        )


def _stale(
    frag: Fragment, cache: Any, catalog: Catalog, frames: dict[str, pl.DataFrame]
) -> tuple[pl.DataFrame, int, float] | None:
    """A failed fragment's last cached answer, however old: (rows, bytes, age in s)."""
    if cache is None or not getattr(cache, "enabled", False):
        return None
    source = catalog.sources[frag.source]
    variants = [frag]
    if frag.dynamic:
        try:
            texts = fill_keys(frag, frames)[0]
        except Exception:
            return None
        variants = [dataclasses.replace(frag, sql=t) for t in texts]
    got = [cache.lookup(v, source, allow_expired=True) for v in variants]
    if not got or any(e is None for e in got):
        return None
    ages = [cache.age(v, source) or 0.0 for v in variants]
    df = pl.concat([e.df.clone() for e in got], how="vertical_relaxed")
    return df, sum(int(e.nbytes) for e in got), max(ages)


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
