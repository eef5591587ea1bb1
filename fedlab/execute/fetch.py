"""The fetch seam: one fragment in, one Polars frame (typed as the plan expects) out.

``fetch(fragment, source, deadline)`` is the only function in fedlab that reads rows
from a database. The executor takes it as a parameter, so tests, caching, retries and
fault injection wrap it without touching the planner or the executor.

Readers:

* PostgreSQL and MariaDB: connectorx → Arrow, in a session made read-only (and exact:
  MariaDB ``div_precision_increment = 30``) by ``pre_execution_query``;
* SQLite: the standard library, opened ``mode=ro``, with a progress handler that stops a
  fragment at its deadline (connectorx cannot open SQLite read-only);
* DuckDB: its own package (connectorx cannot read DuckDB), opened read-only, Arrow out;
* REST (:mod:`fedlab.rest`): httpx pages of JSON, the fragment run by DuckDB over them;
* fallback: SQLAlchemy, when connectorx cannot map a column type.

A fragment marked for a partitioned read (``Fragment.partition``, set by
:func:`fedlab.sql.partition.assign_partitions`) is read by connectorx as one range query
per partition, concurrently (:func:`partition_queries`).
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
from sqlglot import exp

from fedlab.errors import (
    FragmentError,
    LimitExceededError,
    QueryCancelledError,
    QueryTimeoutError,
    SourceUnavailableError,
)
from fedlab.execute.cancel import CURRENT, FetchContext, tag_sql
from fedlab.source import PG_TLS_REQUIRED, Source
from fedlab.sql.plan import Fragment

__all__ = [
    "FetchResult",
    "Fetcher",
    "check_limits",
    "coerce",
    "default_fetch",
    "limit_sql",
    "partition_queries",
    "polars_dtype",
]


@dataclass
class FetchResult:
    """What a fetch returns: the rows, their Arrow size, and which reader got them.

    ``cache_hit``: the rows came from the fragment cache (:mod:`fedlab.cache`), not from
    the source; ``nbytes`` is then their size, bytes that did not move.
    """

    df: pl.DataFrame
    nbytes: int
    reader: str
    cache_hit: bool = False
    #: attempts beyond the first (set by the retry wrapper)
    retries: int = 0
    #: the source's circuit-breaker state (set by the resilience wrapper)
    breaker: str | None = None


#: the seam's signature
Fetcher = Callable[[Fragment, Source, float | None], FetchResult]

_T = exp.DataType.Type


def polars_dtype(t: exp.DataType | None) -> pl.DataType | None:
    """fedlab's type policy: the Polars dtype a SQL type arrives as (None: keep as read)."""
    if t is None:
        return None
    if t.this in exp.DataType.INTEGER_TYPES:
        return pl.Int64()
    if t.this in exp.DataType.REAL_TYPES:  # FLOAT, DOUBLE, DECIMAL…: one decimal policy
        return pl.Float64()
    if t.this in exp.DataType.TEXT_TYPES:
        return pl.String()
    if t.this == _T.DATE:
        return pl.Date()
    if t.this in (_T.TIMESTAMP, _T.DATETIME, _T.TIMESTAMPNTZ, _T.DATETIME64):
        return pl.Datetime("us")
    if t.this == _T.BOOLEAN:
        return pl.Boolean()
    return None


def coerce(df: pl.DataFrame, columns: list[tuple[str, exp.DataType]]) -> pl.DataFrame:
    """Name and type a fetched frame as the fragment declared (dates as Date, decimals as Float64…)."""
    if len(df.columns) == len(columns):
        df = df.rename(dict(zip(df.columns, [n for n, _ in columns], strict=True)))
    exprs = []
    handled: set[str] = set()
    for name, t in columns:
        if name not in df.columns or name in handled:
            continue
        handled.add(name)
        have = df.schema[name]
        want = polars_dtype(t)
        col = pl.col(name)
        if want is None:
            if isinstance(have, pl.Decimal):
                exprs.append(col.cast(pl.Float64))
            continue
        if have == want:
            continue
        if have == pl.String() and want == pl.Date():
            exprs.append(col.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False))
        elif have == pl.String() and isinstance(want, pl.Datetime):
            exprs.append(col.str.replace("T", " ").str.to_datetime(strict=False, time_unit="us"))
        elif isinstance(have, pl.Datetime) and want == pl.Date():
            exprs.append(col.dt.date())
        elif isinstance(have, pl.Datetime) and isinstance(want, pl.Datetime):
            exprs.append(
                col.dt.replace_time_zone(None).dt.cast_time_unit("us")
                if have.time_zone
                else col.dt.cast_time_unit("us")
            )
        else:
            exprs.append(col.cast(want, strict=False))
    if any(isinstance(d, pl.Decimal) for d in df.schema.values()):
        exprs += [
            pl.col(n).cast(pl.Float64)
            for n, d in df.schema.items()
            if isinstance(d, pl.Decimal) and n not in handled
        ]
    return df.with_columns(exprs) if exprs else df


def _probe(source: Source) -> None:
    """A dead or silent server fails here within its ``connect_timeout``, quietly.

    connectorx would retry a failed connect for ~30 s, and would wait just as long on a
    server that accepts the TCP connection but never answers (a network partition, a
    blackholing proxy). So the probe speaks the first step of the protocol: PostgreSQL
    answers an ``SSLRequest`` with one byte (``S`` / ``N``: whether it offers TLS, which
    also catches ``sslmode=require`` against a server without TLS), MariaDB sends its
    greeting unasked (its capability flags say whether it offers TLS).
    """
    if source.path is not None:
        return
    timeout = source.options.connect_timeout
    try:
        with socket.create_connection((source.host, source.port), timeout=timeout) as sock:
            sock.settimeout(max(timeout - 0.0, 0.1))
            if source.kind == "postgresql":
                sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
                answer = sock.recv(1)
                if not answer:
                    raise OSError("the server closed the connection without answering")
                if answer == b"N" and source.tls_options.get("sslmode") in PG_TLS_REQUIRED:
                    raise SourceUnavailableError(
                        f"source {source.describe()} does not offer TLS, but the URL says "
                        f"sslmode={source.tls_options['sslmode']} (turn ssl on in the "
                        "server, or change sslmode)"
                    )
            elif source.kind == "mysql":
                head = b""
                while len(head) < 4:
                    chunk = sock.recv(4 - len(head))
                    if not chunk:
                        raise OSError("the server closed the connection without a greeting")
                    head += chunk
                n = int.from_bytes(head[:3], "little")
                body = b""
                while len(body) < n:
                    chunk = sock.recv(n - len(body))
                    if not chunk:
                        break
                    body += chunk
                if source.wants_tls and body[:1] == b"\x0a":
                    rest = body[1:]
                    rest = rest[rest.index(b"\x00") + 1 :]  # server version
                    caps = int.from_bytes(rest[13:15], "little") if len(rest) >= 15 else 0
                    if not caps & 0x800:  # CLIENT_SSL
                        raise SourceUnavailableError(
                            f"source {source.describe()} does not offer TLS, but the URL "
                            "asks for it (configure ssl in the server, or drop the ssl_* "
                            "settings)"
                        )
    except TimeoutError:
        raise SourceUnavailableError(
            f"source {source.describe()} accepted a connection but did not answer within "
            f"{timeout:g} s (connect_timeout)"
        ) from None
    except OSError as e:
        raise SourceUnavailableError(f"source {source.describe()} is not reachable: {e}") from None


#: seconds a successful login to a source is trusted before a read checks it again
LOGIN_TTL_S = 60.0


def _check_login(source: Source) -> None:
    """Log in with the driver (psycopg / pymysql) unless that succeeded within
    :data:`LOGIN_TTL_S` (attaching counts): a refused login (wrong password, a user that
    needs TLS, a dropped role) then fails at once with the server's message. connectorx
    would retry it in its pool for ~30 s, logging each attempt."""
    now = time.monotonic()
    if now - getattr(source, "_login_checked", -LOGIN_TTL_S - 1.0) < LOGIN_TTL_S:
        return
    con = source.connect()  # raises SourceUnavailableError with the driver's message
    with contextlib.suppress(Exception):
        con.close()
    source._login_checked = now  # type: ignore[attr-defined]


def limit_sql(sql: str, max_rows: int | None) -> str:
    """Wrap ``sql`` so that the source returns at most ``max_rows + 1`` rows (one more
    than allowed, so that going over the limit is seen without reading further).

    >>> limit_sql("SELECT a FROM t", 10)
    'SELECT * FROM (SELECT a FROM t) AS fedlab_limit LIMIT 11'
    """
    if max_rows is None:
        return sql
    return f"SELECT * FROM ({sql}) AS fedlab_limit LIMIT {int(max_rows) + 1}"


def _context() -> FetchContext:
    return CURRENT.get() or FetchContext()


def _time_left(source: Source, deadline: float | None) -> float | None:
    """Seconds a statement may run: the smaller of the query's time left and the
    source's ``statement_timeout`` (None: no limit)."""
    limits = [source.options.statement_timeout] if source.options.statement_timeout else []
    if deadline is not None:
        limits.append(max(deadline - time.monotonic(), 0.001))
    return min(limits) if limits else None


def check_limits(
    fragment: Fragment, source: Source, rows: int, nbytes: int, *, stopped: bool = False
) -> None:
    """Raise :class:`LimitExceededError` when a fragment's rows or bytes pass the limits
    of the running query (:class:`FetchContext`); ``stopped``: the read was stopped there
    (a streamed read), so ``rows`` / ``nbytes`` are what came before it stopped."""
    ctx = _context()
    over = None
    if ctx.max_rows is not None and rows > ctx.max_rows:
        over = f"more than max_rows={ctx.max_rows:,} rows (the read stopped at {rows:,})"
    elif ctx.max_bytes is not None and nbytes > ctx.max_bytes:
        over = f"{nbytes:,} bytes, more than max_bytes={ctx.max_bytes:,}"
        if stopped:
            over = f"more than max_bytes={ctx.max_bytes:,} bytes (the read stopped at {nbytes:,} bytes, {rows:,} rows)"
    if over is not None:
        raise LimitExceededError(
            f"fragment {fragment.id} on source {source.name} returned {over}; add a filter "
            "or an aggregate so that less comes back, or raise the limit "
            "(fed.sql(..., max_rows=…, max_bytes=…) or Federation(max_rows=…, max_bytes=…))",
            fragment=fragment.id,
            source=source.name,
            limit="max_rows" if "max_rows" in over else "max_bytes",
        )


def _read_sqlite(fragment: Fragment, source: Source, deadline: float | None) -> FetchResult:
    ctx = _context()
    left = _time_left(source, deadline)
    stop_at = None if left is None else time.monotonic() + left
    con = sqlite3.connect(f"file:{source.path}?mode=ro", uri=True, check_same_thread=False)
    try:

        def stop() -> int:
            if ctx.cancelled.is_set():
                return 1
            return 1 if stop_at is not None and time.monotonic() > stop_at else 0

        con.set_progress_handler(stop, 10_000)
        try:
            cur = con.execute(limit_sql(fragment.sql, ctx.max_rows))
            rows = cur.fetchall()
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e):
                if ctx.cancelled.is_set():
                    raise QueryCancelledError(
                        f"fragment {fragment.id} on {source.name} was cancelled"
                    ) from None
                raise QueryTimeoutError(
                    f"fragment {fragment.id} on {source.name} passed its deadline "
                    "(query timeout or the source's statement_timeout)"
                ) from None
            raise
        names = [d[0] for d in cur.description]
    finally:
        con.close()
    series = []
    types = dict(fragment.columns)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    for name, values in zip(names, columns, strict=True):
        want = polars_dtype(types.get(name))
        if want in (pl.Date(), pl.Datetime("us")) or want is None:
            try:
                s = pl.Series(name, values, strict=False)
            except Exception:
                s = pl.Series(
                    name, [None if v is None else str(v) for v in values], dtype=pl.String
                )
        else:
            s = pl.Series(name, values, dtype=want, strict=False)
        series.append(s)
    df = pl.DataFrame(series)
    return FetchResult(df, df.to_arrow().nbytes if df.width else 0, "sqlite3")


def _read_duckdb(fragment: Fragment, source: Source, deadline: float | None) -> FetchResult:
    """DuckDB, read-only; at the deadline (or on cancel) a watcher thread calls
    ``interrupt()`` on the connection, which stops the running statement."""
    import duckdb

    ctx = _context()
    left = _time_left(source, deadline)
    stop_at = None if left is None else time.monotonic() + left
    con = duckdb.connect(str(source.path), read_only=True)
    done = threading.Event()
    why: list[str] = []

    def watch() -> None:
        while not done.wait(0.02):
            if ctx.cancelled.is_set() or (stop_at is not None and time.monotonic() > stop_at):
                why.append("cancelled" if ctx.cancelled.is_set() else "deadline")
                with contextlib.suppress(Exception):
                    con.interrupt()
                return

    watcher = threading.Thread(target=watch, name=f"fedlab-duckdb-{fragment.id}", daemon=True)
    watcher.start()
    try:
        table = con.execute(limit_sql(fragment.sql, ctx.max_rows)).to_arrow_table()
    except Exception:
        if why:
            cls = QueryCancelledError if why[0] == "cancelled" else QueryTimeoutError
            raise cls(
                f"fragment {fragment.id} on {source.name} was interrupted "
                f"({'cancelled' if why[0] == 'cancelled' else 'passed its deadline'})"
            ) from None
        raise
    finally:
        done.set()
        watcher.join()
        con.close()
    return FetchResult(pl.from_arrow(table), table.nbytes, "duckdb")


def partition_queries(fragment: Fragment) -> list[str]:
    """One SQL text per key range of a fragment marked ``partition = (col, lo, hi, n)``.

    Each wraps the fragment (``SELECT * FROM (<fragment>) AS fedlab_part WHERE <range>``),
    as connectorx's ``partition_on`` does, but the outer ranges are open: the first is
    ``col IS NULL OR col < b1``, the last ``col >= b(n-1)``. connectorx's own
    ``partition_range=(lo, hi)`` would drop rows outside the catalog's min/max (rows
    inserted after attach); this way every row is in exactly one range.

    >>> from sqlglot import exp
    >>> f = Fragment("f1", "s", "postgresql", 'SELECT "t"."id" AS "id" FROM "t" AS "t"',
    ...              [("id", exp.DataType.build("INT"))], partition=("id", 1, 100, 2))
    >>> for q in partition_queries(f): print(q)
    SELECT * FROM (SELECT "t"."id" AS "id" FROM "t" AS "t") AS fedlab_part WHERE fedlab_part."id" IS NULL OR fedlab_part."id" < 51
    SELECT * FROM (SELECT "t"."id" AS "id" FROM "t" AS "t") AS fedlab_part WHERE fedlab_part."id" >= 51
    """
    if fragment.partition is None:
        return [fragment.sql]
    col, lo, hi, n = fragment.partition
    q = "`" if fragment.kind == "mysql" else '"'
    ref = f"fedlab_part.{q}{col.replace(q, q + q)}{q}"
    width = hi - lo + 1
    n = min(n, width)
    cuts = sorted({lo + width * i // n for i in range(1, n)} - {lo})
    if not cuts:
        return [fragment.sql]
    conds = [f"{ref} IS NULL OR {ref} < {cuts[0]}"]
    conds += [f"{ref} >= {a} AND {ref} < {b}" for a, b in itertools.pairwise(cuts)]
    conds.append(f"{ref} >= {cuts[-1]}")
    return [f"SELECT * FROM ({fragment.sql}) AS fedlab_part WHERE {c}" for c in conds]


def _read_connectorx(fragment: Fragment, source: Source, deadline: float | None) -> FetchResult:
    import connectorx as cx

    if not source.connectorx_tls:  # MariaDB with TLS settings: connectorx has no TLS knob
        _probe(source)
        return _read_sqlalchemy(fragment, source, deadline)
    ctx = _context()
    _probe(source)
    _check_login(source)
    setup = source.session_setup(statement_timeout=_time_left(source, deadline), tag=ctx.tag)
    queries = [
        tag_sql(limit_sql(q, ctx.max_rows), source.kind, ctx.tag)
        for q in partition_queries(fragment)
    ]
    if ctx.max_bytes is not None and len(queries) == 1:
        return _stream_connectorx(fragment, source, queries[0], setup, ctx)
    # a list of queries: connectorx reads them concurrently (one connection each, every
    # one set up by pre_execution_query) and concatenates the Arrow batches
    table = cx.read_sql(
        source.connectorx_url,
        queries if len(queries) > 1 else queries[0],
        return_type="arrow",
        pre_execution_query=setup,
    )
    if isinstance(table, pa.RecordBatchReader):  # pragma: no cover - arrow_stream only
        table = table.read_all()
    reader = "connectorx" if len(queries) == 1 else f"connectorx ({len(queries)} ranges)"
    return FetchResult(pl.from_arrow(table), table.nbytes, reader)


#: rows per Arrow batch when a fragment is streamed (a byte limit is checked per batch)
STREAM_BATCH_ROWS = 16_384


def _stream_connectorx(
    fragment: Fragment, source: Source, query: str, setup: list[str], ctx: FetchContext
) -> FetchResult:
    """Read one query as a stream of Arrow batches (connectorx ``arrow_stream``), checking
    ``max_bytes`` and the cancel event after every batch. Going over the limit stops the
    read: the server statement is cancelled (by the session's tag) and
    :class:`LimitExceededError` says how far it got. Measured: as fast as a whole read."""
    import connectorx as cx

    from fedlab.execute.cancel import cancel_sessions

    reader = cx.read_sql(
        source.connectorx_url,
        query,
        return_type="arrow_stream",
        batch_size=STREAM_BATCH_ROWS,
        pre_execution_query=setup,
    )
    batches: list[pa.RecordBatch] = []
    nbytes = rows = 0
    try:
        for batch in reader:
            batches.append(batch)
            nbytes += batch.nbytes
            rows += batch.num_rows
            if ctx.cancelled.is_set():
                raise QueryCancelledError(
                    f"fragment {fragment.id} on {source.name}: query cancelled"
                )
            if ctx.max_bytes is not None and nbytes > ctx.max_bytes:
                check_limits(fragment, source, rows, nbytes, stopped=True)
    except (LimitExceededError, QueryCancelledError):
        # the rows keep coming from the server until its statement ends: end it
        if ctx.tag is not None:
            cancel_sessions(source, ctx.tag)
        raise
    table = pa.Table.from_batches(batches, schema=reader.schema)
    return FetchResult(pl.from_arrow(table), table.nbytes, "connectorx (stream)")


_SQLALCHEMY_DIALECT = {"postgresql": "postgresql+psycopg://", "mysql": "mysql+pymysql://"}


def _read_sqlalchemy(fragment: Fragment, source: Source, deadline: float | None) -> FetchResult:
    """Fallback reader: SQLAlchemy over fedlab's own read-only, time-limited connection."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    ctx = _context()

    def creator():
        # read-only session, connect timeout, TLS settings, tagged for cancellation
        con = source.connect(application_name=ctx.tag)
        left = _time_left(source, deadline)
        if left is not None:
            with con.cursor() as cur:
                if source.kind == "postgresql":
                    cur.execute(f"SET statement_timeout = {max(int(left * 1000), 1)}")
                elif source.kind == "mysql":
                    cur.execute(f"SET SESSION max_statement_time = {left:.3f}")
        return con

    engine = sa.create_engine(
        _SQLALCHEMY_DIALECT.get(source.kind, f"{source.kind}://"),
        creator=creator,
        poolclass=NullPool,
    )
    try:
        with engine.connect() as con:
            # the drivers parse "%" as a placeholder even without parameters: double it
            text = tag_sql(limit_sql(fragment.sql, ctx.max_rows), source.kind, ctx.tag)
            result = con.exec_driver_sql(text.replace("%", "%%"), ())
            names = list(result.keys())
            rows = result.fetchall()
    finally:
        engine.dispose()
    df = pl.DataFrame([list(r) for r in rows], schema=names, orient="row", infer_schema_length=None)
    return FetchResult(df, df.to_arrow().nbytes if df.width else 0, "sqlalchemy")


def _read_rest(fragment: Fragment, source: Source, deadline: float | None) -> FetchResult:
    """REST sources: the endpoint's pages over HTTP, the fragment run by DuckDB over them
    (:func:`fedlab.rest.read_fragment`)."""
    from fedlab.rest import read_fragment

    return read_fragment(fragment, source, deadline)


_READERS = {
    "rest": _read_rest,
    "sqlite": _read_sqlite,
    "duckdb": _read_duckdb,
    "postgresql": _read_connectorx,
    "mysql": _read_connectorx,
}

_TYPE_PROBLEMS = (
    "not implemented",
    "unsupported",
    "not supported",
    "cannot convert",
    "no conversion",
)


def _is_panic(e: BaseException) -> bool:
    """connectorx reports some failures as a Rust panic (``pyo3_runtime.PanicException``,
    a BaseException): a type it cannot map, for instance."""
    return type(e).__name__ == "PanicException"


def default_fetch(fragment: Fragment, source: Source, deadline: float | None = None) -> FetchResult:
    """Read one fragment with the best reader for its source; type it as declared.

    What the executor says about the running fragment (:class:`FetchContext`: session
    tag, cancel event, ``max_rows`` / ``max_bytes``) comes through
    :data:`fedlab.execute.cancel.CURRENT`. The tag and the row limit change the SQL
    *sent*, never ``fragment.sql`` (the fragment cache's key); a read over a limit raises
    :class:`~fedlab.errors.LimitExceededError` here, before anything could be cached.
    """
    ctx = _context()
    if ctx.cancelled.is_set():
        raise QueryCancelledError(f"fragment {fragment.id} on {source.name}: query cancelled")
    if deadline is not None and time.monotonic() > deadline:
        raise QueryTimeoutError(
            f"fragment {fragment.id} on {source.name}: deadline passed before it started"
        )
    reader = _READERS[source.kind]
    try:
        try:
            result = reader(fragment, source, deadline)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            # connectorx cannot map some column types: fall back to the DB-API driver
            text = str(e).lower()
            if (
                reader is _read_connectorx
                and (isinstance(e, RuntimeError) or _is_panic(e))
                and any(p in text for p in _TYPE_PROBLEMS)
            ):
                result = _read_sqlalchemy(fragment, source, deadline)
            elif _is_panic(e):
                raise RuntimeError(str(e)) from None
            else:
                raise
    except (
        SourceUnavailableError,
        QueryTimeoutError,
        QueryCancelledError,
        LimitExceededError,
        FragmentError,  # already names the source and the fragment (REST: with its status)
    ):
        raise
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        low = text.lower()
        if ctx.cancelled.is_set() and any(
            w in low
            for w in ("cancel", "interrupted", "killed", "terminat", "closed", "lost connection")
        ):
            raise QueryCancelledError(
                f"fragment {fragment.id} on source {source.name} ({source.kind}) was "
                f"cancelled: {text}"
            ) from None
        if any(
            w in low
            for w in (
                "statement timeout",
                "max_statement_time",
                "interrupted",
            )
        ):
            raise QueryTimeoutError(
                f"fragment {fragment.id} on source {source.name} ({source.kind}) timed out: {text}"
            ) from None
        raise FragmentError(
            f"fragment {fragment.id} on source {source.name} ({source.kind}) failed: {text}\n"
            f"  SQL: {fragment.sql[:500]}",
            source=source.name,
            sql=fragment.sql,
        ) from None
    check_limits(fragment, source, result.df.height, result.nbytes)
    result.df = coerce(result.df, fragment.columns)
    return result
