"""``fedlab bench``: TPC-H over SQLite + PostgreSQL + MariaDB, fedlab against one PostgreSQL.

The benchmark generates TPC-H with DuckDB's ``tpch`` extension (loaded from the file
shipped in the ``duckdb-extension-tpch`` wheel, so no network is needed), caches the
tables as Parquet, and places them the way the issue describes:

========================================  ===========================================
PostgreSQL database ``fedlab_bench_pg``   customer, orders
MariaDB database ``fedlab_bench_my``      lineitem
SQLite file ``<cache>/sqlite.db``         part, partsupp, supplier, nation, region
PostgreSQL database ``fedlab_bench_mono`` all eight tables (the "monolith")
========================================  ===========================================

Each of the 22 queries runs once on the monolith (read with connectorx: the reference
answer and the single-database time) and then through :class:`fedlab.Federation` under
each strategy. Every fedlab answer is checked against the monolith with
:func:`fedlab.testing.same_result`; a query that raises is recorded, not fatal.

Run it with ``python -m fedlab.bench --sf 0.1`` (or ``python bench/tpch.py``); see
``--help`` and ``docs/benchmarks.md``.

The pure parts (query selection, the summary arithmetic, the renderers) take and return
plain values or Polars frames and need no database.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

__all__ = [
    "FOREIGN_KEY_INDEXES",
    "PLACEMENT",
    "PRIMARY_KEYS",
    "RESULT_SCHEMA",
    "TABLES",
    "BenchConfig",
    "compare",
    "drop_databases",
    "ensure_indexes",
    "geometric_mean",
    "is_ordered",
    "load_tpch",
    "main",
    "order_keys",
    "parse_queries",
    "parse_strategies",
    "render_markdown",
    "render_summary",
    "render_table",
    "run",
    "summarize",
]

#: The eight TPC-H tables, smallest first.
TABLES: tuple[str, ...] = (
    "region",
    "nation",
    "supplier",
    "customer",
    "part",
    "partsupp",
    "orders",
    "lineitem",
)

#: TPC-H primary keys (specification, clause 1.4.2).
PRIMARY_KEYS: dict[str, list[str]] = {
    "region": ["r_regionkey"],
    "nation": ["n_nationkey"],
    "supplier": ["s_suppkey"],
    "customer": ["c_custkey"],
    "part": ["p_partkey"],
    "partsupp": ["ps_partkey", "ps_suppkey"],
    "orders": ["o_orderkey"],
    "lineitem": ["l_orderkey", "l_linenumber"],
}

#: Secondary indexes on the TPC-H foreign keys (the specification, clause 1.4.2.3, allows
#: indexes on primary and foreign key columns). Every database holding a table gets them, the
#: monolith included: without an index on ``lineitem.l_partkey``, PostgreSQL runs the
#: correlated subqueries of Q17 and Q20 as one scan of lineitem per outer row (about a
#: minute each at SF 0.1), and the "single database" time would measure that alone.
FOREIGN_KEY_INDEXES: dict[str, tuple[tuple[str, ...], ...]] = {
    "nation": (("n_regionkey",),),
    "supplier": (("s_nationkey",),),
    "customer": (("c_nationkey",),),
    "partsupp": (("ps_suppkey",),),  # ps_partkey leads the primary key
    "orders": (("o_custkey",),),
    "lineitem": (("l_partkey", "l_suppkey"), ("l_suppkey",)),  # l_orderkey leads the key
}

#: Federation source name -> the tables it holds (the issue's placement).
PLACEMENT: dict[str, tuple[str, ...]] = {
    "postgres": ("customer", "orders"),
    "mariadb": ("lineitem",),
    "sqlite": ("part", "partsupp", "supplier", "nation", "region"),
}

#: The name the monolith's rows carry in the results frame.
MONOLITH = "monolith"

#: Columns (and types) of the results frame: one row per (query, strategy).
RESULT_SCHEMA: dict[str, pl.DataType] = {
    "query": pl.Int64(),
    "strategy": pl.String(),
    "correct": pl.Boolean(),  # null for the monolith (it is the reference) or when unchecked
    "seconds": pl.Float64(),  # median wall time over --repeat runs; null on error
    "rows": pl.Int64(),  # rows moved from the sources (monolith: rows of the answer)
    "bytes": pl.Int64(),  # bytes moved from the sources (monolith: size of the answer)
    "fragments": pl.Int64(),  # remote sub-queries sent (monolith: 1)
    "error": pl.String(),  # "ErrorClass: message" when the run raised
    "detail": pl.String(),  # why the answer differs from the monolith's
}

ALL_QUERIES: tuple[int, ...] = tuple(range(1, 23))
DEFAULT_STRATEGIES: tuple[str, ...] = ("naive", "pushdown")
KNOWN_STRATEGIES: tuple[str, ...] = ("naive", "pushdown", "semijoin", "auto")


# ---------------------------------------------------------------------- argument parsing
def parse_queries(spec: str | None) -> list[int]:
    """Parse ``--queries``: ``"1,3,5"``, ranges ``"1-5,7"``, or ``"all"`` (also ``None``/``""``).

    Returns the selected TPC-H query numbers, sorted and without duplicates.

    >>> parse_queries("3,1,2-4")
    [1, 2, 3, 4]
    """
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(ALL_QUERIES)
    selected: set[int] = set()
    for raw in spec.split(","):
        part = raw.strip().lower().removeprefix("q")
        if not part:
            continue
        try:
            if "-" in part:
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text.strip().removeprefix("q"))
                if lo > hi:
                    raise ValueError
                numbers = range(lo, hi + 1)
            else:
                numbers = range(int(part), int(part) + 1)
        except ValueError:
            raise ValueError(
                f"bad query selection {raw.strip()!r} (expected numbers or ranges such as 1,3,5-7)"
            ) from None
        for n in numbers:
            if n not in ALL_QUERIES:
                raise ValueError(f"TPC-H has queries 1 to 22, not {n}")
            selected.add(n)
    if not selected:
        raise ValueError(f"no query selected by {spec!r}")
    return sorted(selected)


def parse_strategies(spec: str | None) -> list[str]:
    """Parse ``--strategies`` (comma-separated, order kept, duplicates dropped).

    >>> parse_strategies("pushdown, naive,pushdown")
    ['pushdown', 'naive']
    """
    if spec is None or not spec.strip():
        return list(DEFAULT_STRATEGIES)
    out: list[str] = []
    for raw in spec.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name not in KNOWN_STRATEGIES:
            raise ValueError(f"unknown strategy {name!r} (known: {', '.join(KNOWN_STRATEGIES)})")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no strategy selected by {spec!r}")
    return out


def default_cache_dir() -> Path:
    """``.cache/bench`` of the source checkout fedlab runs from (gitignored), else of the
    working directory."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        return root / ".cache" / "bench"
    return Path(".cache") / "bench"


def _argtype(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn a ValueError-raising parser into an argparse type (clean usage errors)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__
    return convert


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``fedlab bench`` command line."""
    p = argparse.ArgumentParser(
        prog="fedlab bench",
        description=(
            "TPC-H over SQLite + PostgreSQL + MariaDB: fedlab (per strategy) against one "
            "PostgreSQL database holding all tables. Exit status: 0 when every fedlab "
            "answer matched the monolith's, 1 otherwise."
        ),
    )
    p.add_argument(
        "--sf", type=_argtype(_positive_float), default=0.1, help="TPC-H scale factor (default 0.1)"
    )
    p.add_argument(
        "--queries",
        type=_argtype(parse_queries),
        default=list(ALL_QUERIES),
        help="queries to run, e.g. 1,3,5-7 (default: all 22)",
    )
    p.add_argument(
        "--strategies",
        type=_argtype(parse_strategies),
        default=list(DEFAULT_STRATEGIES),
        help="fedlab strategies, comma-separated (default naive,pushdown)",
    )
    p.add_argument(
        "--repeat",
        type=_argtype(_positive_int),
        default=1,
        help="runs per query and strategy; the median time is reported (default 1)",
    )
    p.add_argument(
        "--server-pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server URL used to create the databases",
    )
    p.add_argument(
        "--server-mysql",
        default="mysql://root@127.0.0.1:3306/",
        help="MariaDB/MySQL server URL used to create the database",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=(
            "where generated Parquet and the SQLite file live "
            "(default: .cache/bench of the fedlab checkout, else of the working directory)"
        ),
    )
    p.add_argument(
        "--db-prefix",
        default="fedlab_bench",
        help="server database names: PREFIX_pg, PREFIX_my, PREFIX_mono (default fedlab_bench)",
    )
    p.add_argument(
        "--reload",
        action="store_true",
        help="regenerate nothing, but reload every database even if it looks complete",
    )
    p.add_argument(
        "--no-fk-indexes",
        action="store_true",
        help=(
            "primary keys only: drop (or do not create) the secondary indexes on the TPC-H "
            "foreign keys that every database gets by default"
        ),
    )
    p.add_argument(
        "--markdown",
        type=Path,
        metavar="PATH",
        help=(
            "also write the results as Markdown to PATH (between the generated-results "
            "markers when PATH has them, else the whole file)"
        ),
    )
    p.add_argument(
        "--json", type=Path, metavar="PATH", help="also write machine-readable results to PATH"
    )
    p.add_argument(
        "--drop",
        action="store_true",
        help="drop the benchmark's server databases (PREFIX_pg, PREFIX_my, PREFIX_mono) and exit",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


@dataclass
class BenchConfig:
    """Everything one benchmark run needs (what the command line parses into)."""

    sf: float = 0.1
    queries: list[int] = field(default_factory=lambda: list(ALL_QUERIES))
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    repeat: int = 1
    server_pg: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    server_mysql: str = "mysql://root@127.0.0.1:3306/"
    cache_dir: Path = field(default_factory=default_cache_dir)
    db_prefix: str = "fedlab_bench"
    reload: bool = False
    fk_indexes: bool = True
    quiet: bool = False

    @property
    def data_dir(self) -> Path:
        """The cache directory of this scale factor, e.g. ``.cache/bench/tpch-sf0.1``."""
        return self.cache_dir / f"tpch-sf{self.sf:g}"


# ---------------------------------------------------------------------- data generation
def tpch_extension_path() -> Path:
    """The ``tpch.duckdb_extension`` file shipped in the ``duckdb-extension-tpch`` wheel."""
    try:
        import duckdb
        import duckdb_extension_tpch
    except ImportError as e:
        raise RuntimeError(
            "the benchmark needs duckdb and duckdb-extension-tpch "
            "(pip install -e '.[dev]'): " + str(e)
        ) from None
    pkg_dir = Path(duckdb_extension_tpch.__file__).parent
    found = sorted(pkg_dir.glob("extensions/**/*.duckdb_extension"))
    if not found:
        raise RuntimeError(f"no .duckdb_extension file under {pkg_dir / 'extensions'}")
    matching = [f for f in found if f"v{duckdb.__version__}" in f.parts]
    return (matching or found)[-1]


def _duckdb_with_tpch() -> Any:
    import duckdb

    con = duckdb.connect()
    path = str(tpch_extension_path()).replace("'", "''")
    con.execute(f"LOAD '{path}'")  # INSTALL would need the network
    return con


def load_tpch(
    sf: float, data_dir: Path, *, log: Callable[[str], None] = print
) -> tuple[dict[str, pl.DataFrame], dict[int, str]]:
    """TPC-H tables and the 22 query texts at scale factor ``sf``, cached as Parquet.

    A complete cache (``COMPLETE`` marker present) is read back; otherwise DuckDB
    generates the data with ``CALL dbgen`` and the cache is rewritten.
    """
    marker = data_dir / "COMPLETE"
    queries_file = data_dir / "queries.json"
    files = {t: data_dir / f"{t}.parquet" for t in TABLES}
    if marker.is_file() and queries_file.is_file() and all(f.is_file() for f in files.values()):
        tables = {t: pl.read_parquet(f) for t, f in files.items()}
        queries = {int(k): v for k, v in json.loads(queries_file.read_text()).items()}
        return tables, queries

    log(f"generating TPC-H sf={sf:g} with DuckDB into {data_dir}")
    t0 = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    con = _duckdb_with_tpch()
    try:
        con.execute(f"CALL dbgen(sf={float(sf)!r})")
        tables = {t: con.sql(f"SELECT * FROM {t}").pl() for t in TABLES}
        queries = {
            int(n): q
            for n, q in con.execute("SELECT query_nr, query FROM tpch_queries()").fetchall()
        }
    finally:
        con.close()
    for t, df in tables.items():
        tmp = files[t].with_suffix(".parquet.tmp")
        df.write_parquet(tmp)
        tmp.replace(files[t])
    queries_file.write_text(json.dumps({str(k): v for k, v in sorted(queries.items())}, indent=1))
    marker.write_text(f"sf={sf:g}\n")
    log(f"  generated in {time.perf_counter() - t0:.1f} s")
    return tables, queries


# ---------------------------------------------------------------------- databases
@dataclass(frozen=True)
class Target:
    """One database the benchmark fills: its federation name, URL and tables."""

    name: str
    url: str
    tables: tuple[str, ...]


def _sqlite_url(path: Path) -> str:
    return "sqlite:///" + str(path.resolve())  # absolute path -> sqlite:////abs/...


def _row_counts(url: str, tables: Iterable[str]) -> dict[str, int | None]:
    """``count(*)`` of each table, None when a table (or the database) is missing."""
    from fedlab.source import Source

    counts: dict[str, int | None] = dict.fromkeys(tables)
    try:
        con = Source.from_url("probe", url).connect()
    except Exception:
        return counts
    try:
        for t in counts:
            cur = con.cursor()
            try:
                cur.execute(f"SELECT count(*) FROM {t}")
                counts[t] = int(cur.fetchone()[0])
            except Exception:
                counts[t] = None
                if hasattr(con, "rollback"):
                    with contextlib.suppress(Exception):
                        con.rollback()
            finally:
                cur.close()
    finally:
        con.close()
    return counts


def _analyze(url: str, tables: Iterable[str]) -> None:
    """Refresh the planner statistics after a load (fair, stable server-side plans)."""
    from fedlab.source import Source

    src = Source.from_url("probe", url)
    con = src.connect(read_only=False)
    try:
        cur = con.cursor()
        if src.kind == "mysql":
            cur.execute("ANALYZE TABLE " + ", ".join(tables))
            cur.fetchall()
        elif src.kind == "postgresql":
            for t in tables:
                cur.execute(f"ANALYZE {t}")
        else:
            cur.execute("ANALYZE")
            con.commit()
        cur.close()
    finally:
        con.close()


def _index_name(table: str, columns: Sequence[str]) -> str:
    return f"{table}_{'_'.join(columns)}_idx"


def _existing_indexes(cur: Any, kind: str) -> set[str]:
    if kind == "postgresql":
        cur.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    elif kind == "mysql":
        cur.execute(
            "SELECT DISTINCT index_name FROM information_schema.statistics "
            "WHERE table_schema = DATABASE()"
        )
    else:
        cur.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    return {str(r[0]) for r in cur.fetchall()}


def ensure_indexes(url: str, tables: Iterable[str], *, present: bool = True) -> list[str]:
    """Make the :data:`FOREIGN_KEY_INDEXES` of ``tables`` exist (``present``) or not;
    return the names of the indexes created or dropped."""
    from fedlab.source import Source

    src = Source.from_url("probe", url)
    con = src.connect(read_only=False)
    changed: list[str] = []
    try:
        cur = con.cursor()
        have = _existing_indexes(cur, src.kind)
        q = "`" if src.kind == "mysql" else '"'
        for table in tables:
            for columns in FOREIGN_KEY_INDEXES.get(table, ()):
                name = _index_name(table, columns)
                if present and name not in have:
                    cols = ", ".join(f"{q}{c}{q}" for c in columns)
                    cur.execute(f"CREATE INDEX {q}{name}{q} ON {q}{table}{q} ({cols})")
                    changed.append(name)
                elif not present and name in have:
                    on = f" ON {q}{table}{q}" if src.kind == "mysql" else ""
                    cur.execute(f"DROP INDEX {q}{name}{q}{on}")
                    changed.append(name)
        cur.close()
        if src.kind != "mysql":
            con.commit()
    finally:
        con.close()
    return changed


def prepare_databases(
    cfg: BenchConfig,
    data: dict[str, pl.DataFrame],
    *,
    log: Callable[[str], None] = print,
) -> tuple[list[Target], Target]:
    """Create and fill the three federated databases and the monolith.

    A database whose tables already hold the expected row counts is reused (unless
    ``cfg.reload``). Returns the federated targets and the monolith target.
    """
    load = importlib.import_module("fedlab.load")
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    sqlite_path = cfg.data_dir / "sqlite.db"
    targets = [
        Target(
            "postgres",
            load.create_database(cfg.server_pg, f"{cfg.db_prefix}_pg"),
            PLACEMENT["postgres"],
        ),
        Target(
            "mariadb",
            load.create_database(cfg.server_mysql, f"{cfg.db_prefix}_my"),
            PLACEMENT["mariadb"],
        ),
        Target("sqlite", _sqlite_url(sqlite_path), PLACEMENT["sqlite"]),
    ]
    monolith = Target(
        MONOLITH, load.create_database(cfg.server_pg, f"{cfg.db_prefix}_mono"), TABLES
    )
    for target in [*targets, monolith]:
        expected = {t: data[t].height for t in target.tables}
        if not cfg.reload and _row_counts(target.url, target.tables) == expected:
            log(f"{target.name}: reusing {', '.join(target.tables)} (row counts match)")
            changed = ensure_indexes(target.url, target.tables, present=cfg.fk_indexes)
            if changed:
                verb = "created" if cfg.fk_indexes else "dropped"
                log(f"  {verb} {len(changed)} foreign-key indexes")
                _analyze(target.url, target.tables)
            continue
        log(f"{target.name}: loading {', '.join(target.tables)}")
        t0 = time.perf_counter()
        load.write_tables(
            target.url,
            {t: data[t] for t in target.tables},
            primary_keys={t: PRIMARY_KEYS[t] for t in target.tables},
        )
        ensure_indexes(target.url, target.tables, present=cfg.fk_indexes)
        _analyze(target.url, target.tables)
        have = _row_counts(target.url, target.tables)
        if have != expected:
            raise RuntimeError(
                f"{target.name}: after loading, row counts are {have}, expected {expected}"
            )
        log(f"  loaded in {time.perf_counter() - t0:.1f} s")
    return targets, monolith


def drop_databases(cfg: BenchConfig, *, log: Callable[[str], None] = print) -> None:
    """Drop the server databases :func:`prepare_databases` made (the cache stays)."""
    load = importlib.import_module("fedlab.load")
    for server, suffix in (
        (cfg.server_pg, "pg"),
        (cfg.server_mysql, "my"),
        (cfg.server_pg, "mono"),
    ):
        name = f"{cfg.db_prefix}_{suffix}"
        load.drop_database(server, name)
        log(f"dropped {name} (if it existed)")


# ---------------------------------------------------------------------- running
def is_ordered(sql: str) -> bool:
    """True when the outermost query has an ORDER BY (then row order is part of the answer).

    >>> is_ordered("SELECT a FROM t ORDER BY a LIMIT 3")
    True
    >>> is_ordered("SELECT a FROM (SELECT a FROM t ORDER BY a) s")
    False
    """
    import sqlglot

    tree = sqlglot.parse_one(sql, read="postgres")
    return tree.args.get("order") is not None


def order_keys(sql: str) -> list[str] | None:
    """The output columns the outermost ORDER BY sorts on; None when it sorts on anything
    else (an expression that is not an output column) or when there is no ORDER BY.

    >>> order_keys("SELECT a, b AS x FROM t ORDER BY x DESC, 1")
    ['x', 'a']
    >>> order_keys("SELECT a FROM t ORDER BY a + 1") is None
    True
    """
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="postgres")
    order = tree.args.get("order")
    if order is None or not isinstance(tree, exp.Select):
        return None
    outputs = [e.alias_or_name for e in tree.expressions]
    keys: list[str] = []
    for o in order.expressions:
        key = o.this
        if isinstance(key, exp.Literal) and key.is_int:
            i = int(key.name) - 1
            if not 0 <= i < len(outputs):
                return None
            keys.append(outputs[i])
        elif isinstance(key, exp.Column) and key.name in outputs:
            keys.append(key.name)
        else:
            return None
    return keys


def compare(got: pl.DataFrame, expected: pl.DataFrame, sql: str) -> tuple[bool, str]:
    """The equality rule for the answer of ``sql``: row order is checked exactly as far as
    the outermost ORDER BY fixes it.

    Without ORDER BY the rows are compared as multisets. With one, when its keys are output
    columns, the rows are compared as multisets *and* the sequence of key values must be
    the expected one (rows tied on every key may come in any order); when a key is not an
    output column, the rows are compared in order.
    """
    from fedlab.testing import same_result

    if not is_ordered(sql):
        return same_result(got, expected, ordered=False)
    keys = order_keys(sql)
    if keys is None:
        return same_result(got, expected, ordered=True)
    ok, why = same_result(got, expected, ordered=False)
    if not ok:
        return ok, why
    if not set(keys) <= set(got.columns):  # same columns as expected (checked above)
        return same_result(got, expected, ordered=True)
    ok, why = same_result(got.select(keys), expected.select(keys), ordered=True)
    return ok, ("" if ok else f"same rows, wrong order by {keys}: {why}")


def _clean_sql(sql: str) -> str:
    return sql.strip().rstrip(";").strip()


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


@dataclass
class _Outcome:
    seconds: list[float] = field(default_factory=list)
    df: pl.DataFrame | None = None
    rows: int | None = None
    nbytes: int | None = None
    fragments: int | None = None
    error: str | None = None


def _measure(once: Callable[[], tuple[pl.DataFrame, int, int, int]], repeat: int) -> _Outcome:
    """Run ``once`` ``repeat`` times, timing each; stop at the first exception."""
    out = _Outcome()
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            df, rows, nbytes, fragments = once()
        except Exception as e:  # recorded, never fatal: the benchmark goes on
            out.error = _error_text(e)
            out.df = None
            return out
        out.seconds.append(time.perf_counter() - t0)
        out.df, out.rows, out.nbytes, out.fragments = df, rows, nbytes, fragments
    return out


def run(
    cfg: BenchConfig,
    targets: Sequence[Target],
    monolith: Target,
    queries: dict[int, str],
    *,
    log: Callable[[str], None] = print,
) -> pl.DataFrame:
    """Run the selected queries on the monolith and through fedlab; the results frame."""
    import connectorx as cx

    import fedlab as fl

    fed = fl.Federation()
    for target in targets:
        fed.attach(target.name, target.url)
    try:  # introspect the catalog before the clock starts (if it is lazy)
        fed.tables()
    except Exception as e:
        log(f"warning: fed.tables() failed before the run: {_error_text(e)}")

    records: list[dict[str, Any]] = []
    for q in cfg.queries:
        sql = _clean_sql(queries[q])

        def monolith_once(sql: str = sql) -> tuple[pl.DataFrame, int, int, int]:
            df = cx.read_sql(monolith.url, sql, return_type="polars")
            return df, df.height, int(df.estimated_size()), 1

        ref = _measure(monolith_once, cfg.repeat)
        records.append(_record(q, MONOLITH, ref, correct=None, detail=None))
        log(_progress(records[-1]))

        for strategy in cfg.strategies:

            def fed_once(
                sql: str = sql, strategy: str = strategy
            ) -> tuple[pl.DataFrame, int, int, int]:
                res = fed.sql(sql, strategy=strategy)
                return (
                    res.df,
                    int(res.trace.rows),
                    int(res.trace.bytes),
                    len(res.plan.fragments),
                )

            out = _measure(fed_once, cfg.repeat)
            correct: bool | None = None
            detail: str | None = None
            if out.error is None and out.df is not None and ref.df is not None:
                try:
                    correct, why = compare(out.df, ref.df, sql)
                    detail = None if correct else why
                except Exception as e:
                    correct, detail = False, f"comparison raised {_error_text(e)}"
            records.append(_record(q, strategy, out, correct=correct, detail=detail))
            log(_progress(records[-1]))
            out.df = None
    return pl.DataFrame(records, schema=RESULT_SCHEMA, orient="row")


def _record(
    q: int, strategy: str, out: _Outcome, *, correct: bool | None, detail: str | None
) -> dict[str, Any]:
    ok = out.error is None and out.seconds
    return {
        "query": q,
        "strategy": strategy,
        "correct": correct,
        "seconds": statistics.median(out.seconds) if ok else None,
        "rows": out.rows if ok else None,
        "bytes": out.nbytes if ok else None,
        "fragments": out.fragments if ok else None,
        "error": out.error,
        "detail": detail,
    }


def _progress(r: dict[str, Any]) -> str:
    if r["error"]:
        status = "ERROR " + _shorten(r["error"], 120)
    elif r["correct"] is False:
        status = "WRONG " + _shorten(r["detail"] or "", 120)
    else:
        status = "ok" if r["correct"] else "reference"
    return f"Q{r['query']:02d} {r['strategy']:<9} {_fmt_seconds(r['seconds']):>8}  {status}"


# ---------------------------------------------------------------------- summary math
def geometric_mean(values: Iterable[float]) -> float | None:
    """Geometric mean of positive numbers; None for an empty input.

    >>> round(geometric_mean([1.0, 4.0]), 6)
    2.0
    """
    logs = [math.log(v) for v in values]
    if not logs:
        return None
    return math.exp(sum(logs) / len(logs))


_TINY = 1e-9  # a zero duration would make a ratio infinite


def _usable(r: dict[str, Any] | None) -> bool:
    """A run that finished and was not found wrong (its time means something)."""
    return (
        r is not None
        and r["error"] is None
        and r["seconds"] is not None
        and r["correct"] is not False
    )


def summarize(
    results: pl.DataFrame, baseline: str = "naive", candidate: str = "pushdown"
) -> dict[str, Any]:
    """The headline numbers of a results frame (see :data:`RESULT_SCHEMA`).

    * ``correct`` / ``wrong`` / ``failed``: per strategy, how many queries gave the
      monolith's answer, a different answer, or raised (``queries`` is the total).
    * ``speedup``: geometric mean over queries of ``baseline`` seconds / ``candidate``
      seconds, and ``bytes_ratio``/``rows_ratio``: total moved by ``baseline`` / total
      moved by ``candidate``; both over the queries where the two strategies finished
      with a correct answer (``compared``).
    * ``vs_monolith``: per strategy, total seconds / monolith total seconds and the
      geometric mean of the per-query ratios, over the queries both answered.
    * ``total_seconds``: per strategy (monolith included), over its usable queries.
    """
    rows = results.to_dicts()
    by = {(r["query"], r["strategy"]): r for r in rows}
    queries = sorted({r["query"] for r in rows})
    strategies = [s for s in dict.fromkeys(r["strategy"] for r in rows) if s != MONOLITH]

    summary: dict[str, Any] = {
        "queries": len(queries),
        "strategies": strategies,
        "correct": {
            s: sum(1 for q in queries if (by.get((q, s)) or {}).get("correct") is True)
            for s in strategies
        },
        "wrong": {
            s: sum(1 for q in queries if (by.get((q, s)) or {}).get("correct") is False)
            for s in strategies
        },
        "failed": {
            s: sum(1 for q in queries if (by.get((q, s)) or {}).get("error") is not None)
            for s in [MONOLITH, *strategies]
        },
        "total_seconds": {
            s: sum(by[(q, s)]["seconds"] for q in queries if _usable(by.get((q, s))))
            for s in [MONOLITH, *strategies]
            if any((q, s) in by for q in queries)
        },
        "baseline": baseline,
        "candidate": candidate,
        "compared": 0,
        "speedup": None,
        "bytes_ratio": None,
        "rows_ratio": None,
        "bytes": None,
        "vs_monolith": {},
    }

    if baseline in strategies and candidate in strategies:
        pairs = [
            (by[(q, baseline)], by[(q, candidate)])
            for q in queries
            if _usable(by.get((q, baseline))) and _usable(by.get((q, candidate)))
        ]
        summary["compared"] = len(pairs)
        summary["speedup"] = geometric_mean(
            max(b["seconds"], _TINY) / max(c["seconds"], _TINY) for b, c in pairs
        )
        for key, col in (("bytes_ratio", "bytes"), ("rows_ratio", "rows")):
            base_total = sum(b[col] or 0 for b, _ in pairs)
            cand_total = sum(c[col] or 0 for _, c in pairs)
            summary[key] = base_total / cand_total if pairs and cand_total > 0 else None
            if col == "bytes" and pairs:
                summary["bytes"] = {baseline: base_total, candidate: cand_total}

    for s in strategies:
        pairs = [
            (by[(q, MONOLITH)], by[(q, s)])
            for q in queries
            if _usable(by.get((q, MONOLITH))) and _usable(by.get((q, s)))
        ]
        if not pairs:
            continue
        mono_total = sum(m["seconds"] for m, _ in pairs)
        s_total = sum(r["seconds"] for _, r in pairs)
        summary["vs_monolith"][s] = {
            "queries": len(pairs),
            "total_ratio": s_total / max(mono_total, _TINY),
            "geomean_ratio": geometric_mean(
                max(r["seconds"], _TINY) / max(m["seconds"], _TINY) for m, r in pairs
            ),
        }
    return summary


# ---------------------------------------------------------------------- rendering
def _fmt_seconds(s: float | None) -> str:
    return "—" if s is None else f"{s:.3f}"


def _fmt_int(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _fmt_ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _correct_cell(r: dict[str, Any]) -> str:
    if r["strategy"] == MONOLITH:
        return "reference" if r["error"] is None else "error"
    if r["error"] is not None:
        return "error"
    return {True: "yes", False: "NO", None: "?"}[r["correct"]]


_HEADERS = ("query", "strategy", "correct", "seconds", "rows moved", "bytes moved", "fragments")


def _table_cells(results: pl.DataFrame) -> list[list[str]]:
    return [
        [
            f"Q{r['query']:02d}",
            r["strategy"],
            _correct_cell(r),
            _fmt_seconds(r["seconds"]),
            _fmt_int(r["rows"]),
            _fmt_bytes(r["bytes"]),
            _fmt_int(r["fragments"]),
        ]
        for r in results.to_dicts()
    ]


def _problems(results: pl.DataFrame) -> list[tuple[str, str, str]]:
    """(query, strategy, message) for every run that raised or answered differently."""
    out = []
    for r in results.to_dicts():
        if r["error"] is not None:
            out.append((f"Q{r['query']:02d}", r["strategy"], r["error"]))
        elif r["correct"] is False:
            out.append(
                (f"Q{r['query']:02d}", r["strategy"], "wrong answer: " + (r["detail"] or ""))
            )
    return out


def render_table(results: pl.DataFrame) -> str:
    """The per-query table as aligned plain text, followed by the failures."""
    cells = _table_cells(results)
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
        for i, h in enumerate(_HEADERS)
    ]
    right = {3, 4, 5, 6}

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    lines = [line(_HEADERS), line(["-" * w for w in widths])]
    lines += [line(c) for c in cells]
    problems = _problems(results)
    if problems:
        lines += ["", "failures:"]
        lines += [f"  {q} {s}: {_shorten(msg, 300)}" for q, s, msg in problems]
    return "\n".join(lines)


def _summary_items(summary: dict[str, Any]) -> list[tuple[str, str]]:
    n = summary["queries"]
    base, cand = summary["baseline"], summary["candidate"]
    items: list[tuple[str, str]] = []
    for s in summary["strategies"]:
        extra = []
        if summary["wrong"].get(s):
            extra.append(f"{summary['wrong'][s]} wrong")
        if summary["failed"].get(s):
            extra.append(f"{summary['failed'][s]} failed")
        items.append(
            (
                f"correct ({s})",
                f"{summary['correct'][s]}/{n}" + (f" ({', '.join(extra)})" if extra else ""),
            )
        )
    if summary["speedup"] is not None:
        items.append(
            (
                f"speedup {cand} over {base} (geometric mean)",
                f"{_fmt_ratio(summary['speedup'])} over {summary['compared']} queries",
            )
        )
    if summary["bytes_ratio"] is not None:
        moved = summary["bytes"]
        items.append(
            (
                f"bytes moved {base} / {cand}",
                f"{_fmt_ratio(summary['bytes_ratio'])} "
                f"({_fmt_bytes(moved[base])} vs {_fmt_bytes(moved[cand])})",
            )
        )
    if summary["rows_ratio"] is not None:
        items.append((f"rows moved {base} / {cand}", _fmt_ratio(summary["rows_ratio"])))
    for s, v in summary["vs_monolith"].items():
        items.append(
            (
                f"time {s} / monolith",
                f"{_fmt_ratio(v['total_ratio'])} total, {_fmt_ratio(v['geomean_ratio'])} "
                f"geometric mean, over {v['queries']} queries",
            )
        )
    totals = ", ".join(f"{s} {t:.2f} s" for s, t in summary["total_seconds"].items())
    items.append(("total seconds (usable runs)", totals))
    return items


def render_summary(summary: dict[str, Any]) -> str:
    """The summary as ``label: value`` lines."""
    items = _summary_items(summary)
    width = max(len(k) for k, _ in items)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in items)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(results: pl.DataFrame, summary: dict[str, Any], meta: dict[str, Any]) -> str:
    """A Markdown section (for ``docs/benchmarks.md``): setup, summary, per-query table."""
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    servers = ", ".join(f"{k} {v}" for k, v in meta.get("servers", {}).items())
    out = [
        f"### Run: TPC-H SF {meta.get('sf', '?'):g}, {meta.get('date', '?')}",
        "",
        f"- command: `{meta.get('command', '?')}`",
        f"- machine: `{meta.get('machine', '?')}`, {meta.get('nproc', '?')} CPUs"
        + (f", {meta['os']}" if meta.get("os") else "")
        + (
            f"; load average {meta['load'][0]:.1f} at the start, {meta['load'][1]:.1f} at the end"
            if meta.get("load")
            else ""
        ),
        f"- versions: {versions}" if versions else "- versions: ?",
    ]
    if servers:
        out.append(f"- servers: {servers}")
    if "fk_indexes" in meta:
        out.append(
            "- indexes: primary keys"
            + (" and foreign-key indexes" if meta["fk_indexes"] else " only")
            + " on every database"
        )
    out += [
        f"- runs per query and strategy: {meta.get('repeat', 1)} (median reported)",
        "",
        "#### Summary",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    out += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in _summary_items(summary)]
    out += [
        "",
        "#### Per query",
        "",
        "| " + " | ".join(_HEADERS) + " |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    out += [
        "| " + " | ".join(_md_escape(c) for c in cells) + " |" for cells in _table_cells(results)
    ]
    problems = _problems(results)
    if problems:
        out += ["", "#### Failures", ""]
        out += [
            "- **{} {}**: `{}`".format(q, s, _md_escape(_shorten(msg, 400)).replace("`", "'"))
            for q, s, msg in problems
        ]
    return "\n".join(out) + "\n"


#: ``--markdown`` replaces what lies between these two lines when the file has them
#: (so a hand-written page keeps its prose), and writes the whole file otherwise.
MARK_BEGIN = "<!-- fedlab bench: begin generated results -->"
MARK_END = "<!-- fedlab bench: end generated results -->"


def write_markdown(path: Path, section: str) -> None:
    """Write ``section`` to ``path``, between :data:`MARK_BEGIN` and :data:`MARK_END` when
    the file already has both markers."""
    block = f"{MARK_BEGIN}\n{section.rstrip()}\n{MARK_END}\n"
    if path.is_file():
        text = path.read_text()
        start, end = text.find(MARK_BEGIN), text.find(MARK_END)
        if 0 <= start < end:
            rest = text[end + len(MARK_END) :].lstrip("\n")
            path.write_text(text[:start] + block + ("\n" + rest if rest else ""))
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------- metadata
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("fedlab", "polars", "connectorx", "sqlglot", "duckdb"):
        try:
            out[mod] = str(importlib.import_module(mod).__version__)
        except Exception:
            out[mod] = "?"
    return out


def _server_versions(targets: Sequence[Target]) -> dict[str, str]:
    from fedlab.source import Source

    out: dict[str, str] = {}
    for t in targets:
        try:
            con = Source.from_url("probe", t.url).connect()
            try:
                cur = con.cursor()
                query = (
                    "SELECT sqlite_version()" if t.url.startswith("sqlite") else "SELECT version()"
                )
                cur.execute(query)
                version = str(cur.fetchone()[0])
            finally:
                con.close()
        except Exception:
            continue
        label = {"postgres": "PostgreSQL", "mariadb": "MariaDB", "sqlite": "SQLite"}[t.name]
        out[label] = version.split(",")[0].removeprefix("PostgreSQL ").split(" on ")[0]
    return out


def _load() -> float | None:
    """The 1-minute load average (None where the OS has none): noise is part of a result."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _command(argv: Sequence[str] | None) -> str:
    """The command line of this run, as a person would type it again."""
    if argv is not None:
        return shlex.join(["fedlab", "bench", *argv])
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("-")
    if script.name == "bench.py" and script.parent.name == "fedlab":
        prefix = ["python", "-m", "fedlab.bench"]  # python -m fedlab.bench
    elif script.name == "tpch.py":
        prefix = ["python", "bench/tpch.py"]
    else:
        prefix = ["fedlab", "bench"]
    return shlex.join([*prefix, *sys.argv[1:]])


# ---------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """``fedlab bench``: 0 when every fedlab answer matched the monolith, 1 otherwise."""
    args = build_parser().parse_args(argv)
    cfg = BenchConfig(
        sf=args.sf,
        queries=args.queries,
        strategies=args.strategies,
        repeat=args.repeat,
        server_pg=args.server_pg,
        server_mysql=args.server_mysql,
        cache_dir=args.cache_dir or default_cache_dir(),
        db_prefix=args.db_prefix,
        reload=args.reload,
        fk_indexes=not args.no_fk_indexes,
        quiet=args.quiet,
    )

    def log(msg: str) -> None:
        if not cfg.quiet:
            print(msg, file=sys.stderr, flush=True)

    if args.drop:
        drop_databases(cfg, log=log)
        return 0
    started = dt.datetime.now(dt.UTC)
    load_start = _load()
    data, queries = load_tpch(cfg.sf, cfg.data_dir, log=log)
    targets, monolith = prepare_databases(cfg, data, log=log)
    del data
    results = run(cfg, targets, monolith, queries, log=log)
    summary = summarize(results)

    meta = {
        "command": _command(argv),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "sf": cfg.sf,
        "queries": cfg.queries,
        "strategies": cfg.strategies,
        "repeat": cfg.repeat,
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "load": [load_start, _load()] if load_start is not None else None,
        "os": f"{platform.system()} {platform.release()}",
        "versions": _versions(),
        "servers": _server_versions(targets),
        "placement": {k: list(v) for k, v in PLACEMENT.items()},
        "fk_indexes": cfg.fk_indexes,
    }
    print(render_table(results))
    print()
    print(render_summary(summary))
    if args.markdown:
        write_markdown(args.markdown, render_markdown(results, summary, meta))
        log(f"wrote {args.markdown}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "summary": summary, "results": results.to_dicts()}
        args.json.write_text(json.dumps(_jsonable(payload), indent=1, default=str) + "\n")
        log(f"wrote {args.json}")
    all_good = all(
        r["error"] is None and r["correct"] is True
        for r in results.to_dicts()
        if r["strategy"] != MONOLITH
    )
    return 0 if all_good else 1


if __name__ == "__main__":
    raise SystemExit(main())
