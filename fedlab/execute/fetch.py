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
* fallback: SQLAlchemy, when connectorx cannot map a column type.

A fragment marked for a partitioned read (``Fragment.partition``, set by
:func:`fedlab.sql.partition.assign_partitions`) is read by connectorx as one range query
per partition, concurrently (:func:`partition_queries`).
"""

from __future__ import annotations

import itertools
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
from sqlglot import exp

from fedlab.errors import FragmentError, QueryTimeoutError, SourceUnavailableError
from fedlab.source import Source
from fedlab.sql.plan import Fragment

__all__ = [
    "FetchResult",
    "Fetcher",
    "coerce",
    "default_fetch",
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
    """A dead server fails here in seconds (connectorx would retry for ~30 s)."""
    if source.path is not None:
        return
    try:
        socket.create_connection(
            (source.host, source.port), timeout=source.options.connect_timeout
        ).close()
    except OSError as e:
        raise SourceUnavailableError(f"source {source.describe()} is not reachable: {e}") from None


def _read_sqlite(fragment: Fragment, source: Source, deadline: float | None) -> FetchResult:
    con = sqlite3.connect(f"file:{source.path}?mode=ro", uri=True, check_same_thread=False)
    try:
        if deadline is not None:
            con.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        try:
            cur = con.execute(fragment.sql)
            rows = cur.fetchall()
        except sqlite3.OperationalError as e:
            if "interrupted" in str(e) and deadline is not None:
                raise QueryTimeoutError(
                    f"fragment {fragment.id} on {source.name} passed the query deadline"
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
    import duckdb

    con = duckdb.connect(str(source.path), read_only=True)
    try:
        table = con.execute(fragment.sql).to_arrow_table()
    finally:
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

    _probe(source)
    setup = source.session_setup()
    if deadline is not None:
        left = max(deadline - time.monotonic(), 0.001)
        if source.kind == "postgresql":
            setup.append(f"SET statement_timeout = {max(int(left * 1000), 1)}")
        elif source.kind == "mysql":
            setup.append(f"SET SESSION max_statement_time = {left:.3f}")
    queries = partition_queries(fragment)
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


_SQLALCHEMY_DIALECT = {"postgresql": "postgresql+psycopg://", "mysql": "mysql+pymysql://"}


def _read_sqlalchemy(fragment: Fragment, source: Source, deadline: float | None) -> FetchResult:
    """Fallback reader: SQLAlchemy over fedlab's own read-only, time-limited connection."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    def creator():
        con = source.connect()  # read-only session, connect timeout
        if deadline is not None:
            left = max(deadline - time.monotonic(), 0.001)
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
            result = con.exec_driver_sql(fragment.sql.replace("%", "%%"), ())
            names = list(result.keys())
            rows = result.fetchall()
    finally:
        engine.dispose()
    df = pl.DataFrame([list(r) for r in rows], schema=names, orient="row", infer_schema_length=None)
    return FetchResult(df, df.to_arrow().nbytes if df.width else 0, "sqlalchemy")


_READERS = {
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


def default_fetch(fragment: Fragment, source: Source, deadline: float | None = None) -> FetchResult:
    """Read one fragment with the best reader for its source; type it as declared."""
    if deadline is not None and time.monotonic() > deadline:
        raise QueryTimeoutError(
            f"fragment {fragment.id} on {source.name}: deadline passed before it started"
        )
    reader = _READERS[source.kind]
    try:
        try:
            result = reader(fragment, source, deadline)
        except RuntimeError as e:
            # connectorx cannot map some column types: fall back to the DB-API driver
            if reader is _read_connectorx and any(p in str(e).lower() for p in _TYPE_PROBLEMS):
                result = _read_sqlalchemy(fragment, source, deadline)
            else:
                raise
    except (SourceUnavailableError, QueryTimeoutError):
        raise
    except Exception as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if any(
            w in text.lower() for w in ("statement timeout", "max_statement_time", "interrupted")
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
    result.df = coerce(result.df, fragment.columns)
    return result
