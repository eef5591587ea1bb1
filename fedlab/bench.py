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

Each of the 22 queries runs on the monolith (read with connectorx: the reference answer
and the single-database time), on DuckDB attaching the same three databases through its
scanner extensions (loaded from the files of the ``duckdb-extension-*-scanner`` wheels),
and through :class:`fedlab.Federation` under each strategy (by default every one in
:data:`fedlab.sql.planner.STRATEGIES`). Every answer, DuckDB's included, is checked against
the monolith with :func:`fedlab.testing.same_result`; a query that raises is recorded, not
fatal. Untimed semantics probes (:data:`PROBES`) then show where a system's string
comparisons differ from PostgreSQL's.

``--sharded`` runs the other benchmark: one table of ``--rows`` rows over four shard
databases (two PostgreSQL, two MariaDB), declared with ``fed.shard`` and compared with a
hand-written ``UNION ALL`` and the monolith (see :func:`run_sharded`).

``--engines polars,spark-local,spark-standalone`` runs the engines benchmark instead: the
same TPC-H placement under ``auto`` through the local Polars engine and the Spark engine
(``local[2]`` and a two-worker standalone cluster), each in a fresh process, with peak
memory (see :mod:`fedlab.bench_engines`).

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
    "DUCKDB",
    "DUCKDB_SCANNERS",
    "EVENT_KINDS",
    "FOREIGN_KEY_INDEXES",
    "PLACEMENT",
    "PRIMARY_KEYS",
    "PROBES",
    "RESULT_SCHEMA",
    "SHARDED_SCHEMA",
    "SHARD_LAYOUT",
    "TABLES",
    "TARGETS",
    "BenchConfig",
    "DuckDBFederation",
    "ShardedSetup",
    "Systems",
    "available_strategies",
    "compare",
    "compare_duckdb",
    "drop_databases",
    "duckdb_attach",
    "ensure_indexes",
    "extension_path",
    "geometric_mean",
    "headline_strategy",
    "is_ordered",
    "load_tpch",
    "main",
    "make_events",
    "max_in_flight",
    "open_systems",
    "order_keys",
    "parse_queries",
    "parse_strategies",
    "place_shards",
    "prepare_databases",
    "prepare_sharded",
    "range_bounds",
    "render_markdown",
    "render_sharded",
    "render_sharded_markdown",
    "render_summary",
    "render_table",
    "run",
    "run_probes",
    "run_sharded",
    "sharded_findings",
    "sharded_queries",
    "summarize",
    "write_markdown",
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

#: The name DuckDB's rows carry: DuckDB attaching the same three databases (a baseline).
DUCKDB = "duckdb"

ALL_QUERIES: tuple[int, ...] = tuple(range(1, 23))


def available_strategies() -> tuple[str, ...]:
    """fedlab's planning strategies, read at run time from
    :data:`fedlab.sql.planner.STRATEGIES` (so a new strategy is benchmarked by default)."""
    from fedlab.sql.planner import STRATEGIES

    return tuple(STRATEGIES)


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


def parse_strategies(spec: str | None, known: Sequence[str] | None = None) -> list[str]:
    """Parse ``--strategies`` (comma-separated, order kept, duplicates dropped); ``"all"``,
    ``""`` and ``None`` select every strategy fedlab has (``known``, by default
    :func:`available_strategies`).

    >>> parse_strategies("pushdown, naive,pushdown")
    ['pushdown', 'naive']
    >>> parse_strategies("all", known=("naive", "auto"))
    ['naive', 'auto']
    """
    known = tuple(known) if known is not None else available_strategies()
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(known)
    out: list[str] = []
    for raw in spec.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name not in known:
            raise ValueError(f"unknown strategy {name!r} (known: {', '.join(known)})")
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
        default=None,
        help=(
            "fedlab strategies, comma-separated, or 'all' (default: all of "
            "fedlab.sql.planner.STRATEGIES; with --sharded: auto)"
        ),
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
        "--no-duckdb",
        action="store_true",
        help="skip the DuckDB baseline (DuckDB attaching the same three databases)",
    )
    p.add_argument(
        "--sharded",
        action="store_true",
        help=(
            "run the sharded benchmark instead of TPC-H: one table of --rows rows over 4 shards "
            "(2 PostgreSQL, 2 MariaDB databases), declared with fed.shard"
        ),
    )
    p.add_argument(
        "--rows",
        type=_argtype(_positive_int),
        default=1_000_000,
        help="--sharded: rows of the sharded table (default 1000000)",
    )
    p.add_argument(
        "--shard-method",
        choices=("range", "hash"),
        default="range",
        help="--sharded: how rows are placed on the shards by the key (default range)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="--sharded: save the latency waterfall of the full aggregate to PNG",
    )
    p.add_argument(
        "--drop",
        action="store_true",
        help=(
            "drop the benchmark's server databases (PREFIX_pg, PREFIX_my, PREFIX_mono and the "
            "sharded benchmark's PREFIX_shard_*) and exit; the cache directory stays"
        ),
    )
    p.add_argument(
        "--engines",
        type=_argtype(_parse_engines),
        default=None,
        metavar="E1,E2",
        help=(
            "run the engines benchmark instead: TPC-H under one strategy (default auto) on "
            "each engine, each in a fresh process, with peak memory: polars, spark-local, "
            "spark-standalone (or all); see fedlab.bench_engines"
        ),
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _parse_engines(spec: str) -> list[str]:
    from fedlab.bench_engines import parse_engines

    return parse_engines(spec)


@dataclass
class BenchConfig:
    """Everything one benchmark run needs (what the command line parses into)."""

    sf: float = 0.1
    queries: list[int] = field(default_factory=lambda: list(ALL_QUERIES))
    strategies: list[str] = field(default_factory=lambda: list(available_strategies()))
    repeat: int = 1
    server_pg: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    server_mysql: str = "mysql://root@127.0.0.1:3306/"
    cache_dir: Path = field(default_factory=default_cache_dir)
    db_prefix: str = "fedlab_bench"
    reload: bool = False
    fk_indexes: bool = True
    duckdb: bool = True
    quiet: bool = False

    @property
    def data_dir(self) -> Path:
        """The cache directory of this scale factor, e.g. ``.cache/bench/tpch-sf0.1``."""
        return self.cache_dir / f"tpch-sf{self.sf:g}"


# ---------------------------------------------------------------------- data generation
def extension_path(name: str) -> Path:
    """The ``<name>.duckdb_extension`` file shipped in the ``duckdb-extension-<name>`` wheel
    (``tpch``, ``postgres_scanner``, ``mysql_scanner``, ``sqlite_scanner``): loaded with
    ``LOAD '<path>'``, since ``INSTALL`` would need the network."""
    package = "duckdb-extension-" + name.replace("_", "-")
    try:
        import duckdb

        module = importlib.import_module("duckdb_extension_" + name)
    except ImportError as e:
        raise RuntimeError(
            f"the benchmark needs duckdb and {package} (pip install -e '.[dev]'): {e}"
        ) from None
    pkg_dir = Path(module.__file__ or "").parent
    found = sorted(pkg_dir.glob("extensions/**/*.duckdb_extension"))
    if not found:
        raise RuntimeError(f"no .duckdb_extension file under {pkg_dir / 'extensions'}")
    matching = [f for f in found if f"v{duckdb.__version__}" in f.parts]
    return (matching or found)[-1]


def tpch_extension_path() -> Path:
    """The ``tpch.duckdb_extension`` file shipped in the ``duckdb-extension-tpch`` wheel."""
    return extension_path("tpch")


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
    """Drop the server databases :func:`prepare_databases` and :func:`prepare_sharded` made
    (the cached data stays; the sharded benchmark's reuse marker goes)."""
    load = importlib.import_module("fedlab.load")
    servers = {"pg": cfg.server_pg, "my": cfg.server_mysql}
    names = [("pg", f"{cfg.db_prefix}_pg"), ("my", f"{cfg.db_prefix}_my")]
    names += [("pg", f"{cfg.db_prefix}_mono"), *_sharded_db_names(cfg.db_prefix)]
    for server, name in names:
        load.drop_database(servers[server], name)
        log(f"dropped {name} (if it existed)")
    (cfg.cache_dir / f"sharded-{cfg.db_prefix}.json").unlink(missing_ok=True)


# ---------------------------------------------------------------------- DuckDB baseline
#: Scanner extension per URL scheme, each loaded from its PyPI package's file.
DUCKDB_SCANNERS: dict[str, str] = {
    "postgresql": "postgres_scanner",
    "mysql": "mysql_scanner",
    "sqlite": "sqlite_scanner",
}


def _url_scheme(url: str) -> str:
    scheme = url.split("://", 1)[0].lower().split("+", 1)[0]
    return {"postgres": "postgresql", "mariadb": "mysql"}.get(scheme, scheme)


def duckdb_attach(name: str, url: str) -> tuple[str, str]:
    """The ``ATTACH`` statement that makes the database at ``url`` DuckDB's catalog ``name``
    (read-only), and the schema its tables live in.

    >>> attach, schema = duckdb_attach("pg", "postgresql://postgres@127.0.0.1:5432/bench")
    >>> print(attach, schema)
    ATTACH 'host=127.0.0.1 port=5432 user=postgres dbname=bench' AS "pg" (TYPE postgres, READ_ONLY) public
    >>> duckdb_attach("my", "mysql://root@127.0.0.1:3306/bench")[1]
    'bench'
    """
    from urllib.parse import unquote, urlsplit

    scheme = _url_scheme(url)
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel, sqlite:////abs
        target, kind, schema = path, "sqlite", "main"
    elif scheme in ("postgresql", "mysql"):
        parts = urlsplit(url)
        database = unquote(parts.path.lstrip("/"))
        fields = {
            "host": parts.hostname or "127.0.0.1",
            "port": str(parts.port or (5432 if scheme == "postgresql" else 3306)),
            "user": unquote(parts.username or ("postgres" if scheme == "postgresql" else "root")),
            "password": unquote(parts.password or ""),
            "dbname" if scheme == "postgresql" else "database": database,
        }
        target = " ".join(f"{k}={v}" for k, v in fields.items() if v)
        kind = "postgres" if scheme == "postgresql" else "mysql"
        schema = "public" if scheme == "postgresql" else database
    else:
        raise ValueError(f"DuckDB cannot attach {scheme!r} URLs here")
    quoted = target.replace("'", "''")
    return f"ATTACH '{quoted}' AS \"{name}\" (TYPE {kind}, READ_ONLY)", schema


class DuckDBFederation:
    """DuckDB (in memory) attaching the benchmark's three databases through its scanner
    extensions, with one view per TPC-H table so the query texts run unchanged.

    The extensions are loaded from the files of the ``duckdb-extension-*-scanner`` wheels
    (no network). Attaching and a first read of every table (DuckDB loads a catalog
    lazily) happen here, before any clock starts, as ``fed.tables()`` does for fedlab.
    """

    def __init__(self, targets: Sequence[Target]) -> None:
        import duckdb

        self.con = duckdb.connect()
        try:
            for scheme in sorted({_url_scheme(t.url) for t in targets}):
                path = str(extension_path(DUCKDB_SCANNERS[scheme])).replace("'", "''")
                self.con.execute(f"LOAD '{path}'")
            for t in targets:
                catalog = f"src_{t.name}"
                attach, schema = duckdb_attach(catalog, t.url)
                self.con.execute(attach)
                for table in t.tables:
                    self.con.execute(
                        f'CREATE VIEW "{table}" AS SELECT * FROM "{catalog}"."{schema}"."{table}"'
                    )
                    self.con.execute(f'SELECT * FROM "{table}" LIMIT 0').fetchall()
        except Exception:
            self.con.close()
            raise

    def query(self, sql: str) -> pl.DataFrame:
        return self.con.execute(sql).pl()

    def close(self) -> None:
        self.con.close()


def compare_duckdb(got: pl.DataFrame, expected: pl.DataFrame, sql: str) -> tuple[bool, str]:
    """:func:`compare` for DuckDB's answers, forgiving only column *names*: DuckDB names an
    unaliased ``sum(x)`` ``"sum(x)"`` where PostgreSQL says ``"sum"`` (TPC-H Q18). When
    the values match under PostgreSQL's names, the answer counts as correct and the
    second item says which names differed (reported as a note, not hidden)."""
    ok, why = compare(got, expected, sql)
    if ok or got.columns == expected.columns or got.width != expected.width:
        return ok, why
    renamed = got.rename(dict(zip(got.columns, expected.columns, strict=True)))
    ok2, _ = compare(renamed, expected, sql)
    if not ok2:
        return ok, why
    differ = [
        f"{g!r} for {e!r}" for g, e in zip(got.columns, expected.columns, strict=True) if g != e
    ]
    return True, "same values, DuckDB's column names differ: " + ", ".join(differ)


#: Semantics probes (not timed): queries on the TPC-H tables whose answer depends on
#: PostgreSQL's string semantics (case- and pad-sensitive ``=`` and ``LIKE``) or that
#: group text keys of the MariaDB table. All TPC-H strings are upper case without trailing
#: spaces, so the 22 queries cannot tell these apart; a system that pushes a comparison to
#: MariaDB's default collation unchanged answers these differently.
PROBES: dict[str, str] = {
    "lower-case =": (
        "SELECT count(*) AS n, sum(l_quantity) AS q FROM lineitem WHERE l_shipmode = 'mail'"
    ),
    "trailing space =": (
        "SELECT count(*) AS n, sum(l_quantity) AS q FROM lineitem WHERE l_shipmode = 'MAIL '"
    ),
    "lower-case LIKE": (
        "SELECT count(*) AS n, sum(l_quantity) AS q FROM lineitem "
        "WHERE l_shipinstruct LIKE 'deliver%'"
    ),
    "IN, lower case": (
        "SELECT count(*) AS n, sum(l_quantity) AS q FROM lineitem "
        "WHERE l_returnflag IN ('r', 'a') AND l_linestatus = 'F'"
    ),
    "group text key": (
        "SELECT l_shipmode, count(*) AS n, sum(l_quantity) AS q FROM lineitem "
        "GROUP BY l_shipmode ORDER BY l_shipmode"
    ),
    # DuckDB 1.5.5 with the MySQL scanner failed with an internal binder error on an
    # aggregate query over the MariaDB table whose only aggregate is a count
    "count only": "SELECT count(*) AS n FROM lineitem WHERE l_shipmode = 'MAIL'",
}

#: Columns of the probes frame: one row per (probe, system).
PROBE_SCHEMA: dict[str, pl.DataType] = {
    "probe": pl.String(),
    "system": pl.String(),
    "correct": pl.Boolean(),
    "answer": pl.String(),
    "error": pl.String(),
}


def _short_answer(df: pl.DataFrame) -> str:
    if df.height == 1:
        row = df.row(0)
        return str(row[0]) if df.width == 1 else "(" + ", ".join(map(str, row)) + ")"
    return (
        f"{df.height} row(s): "
        + ", ".join("(" + ", ".join(map(str, row)) + ")" for row in df.head(3).rows())
        + (", …" if df.height > 3 else "")
    )


def run_probes(
    fed: Any, duck: DuckDBFederation | None, monolith: Target, strategy: str
) -> pl.DataFrame:
    """Every :data:`PROBES` query on the monolith, on DuckDB and through fedlab."""
    import connectorx as cx

    records = []
    for name, sql in PROBES.items():
        ref = _measure(
            lambda sql=sql: (cx.read_sql(monolith.url, sql, return_type="polars"),) * 4, 1
        )
        systems: list[tuple[str, Callable[[], pl.DataFrame]]] = [
            (strategy, lambda sql=sql: fed.sql(sql, strategy=strategy).df)
        ]
        if duck is not None:
            systems.insert(0, (DUCKDB, lambda sql=sql: duck.query(sql)))
        records.append(
            {
                "probe": name,
                "system": MONOLITH,
                "correct": None,
                "answer": None if ref.df is None else _short_answer(ref.df),
                "error": ref.error,
            }
        )
        for system, once in systems:
            out = _measure(lambda once=once: (once(),) * 4, 1)
            correct, _ = _check(out, ref, sql, compare)
            records.append(
                {
                    "probe": name,
                    "system": system,
                    "correct": correct,
                    "answer": None if out.df is None else _short_answer(out.df),
                    "error": out.error,
                }
            )
    return pl.DataFrame(records, schema=PROBE_SCHEMA, orient="row")


def _probe_cells(probes: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    systems = list(dict.fromkeys(probes["system"].to_list()))
    by = {(r["probe"], r["system"]): r for r in probes.to_dicts()}
    headers = ["probe", *systems]
    cells = []
    for name in dict.fromkeys(probes["probe"].to_list()):
        row = [name]
        for s in systems:
            r = by.get((name, s))
            if r is None:
                row.append("")
            elif r["error"] is not None:
                row.append("error: " + _shorten(r["error"], 80))
            else:
                mark = {True: " ✓", False: " ✗ WRONG", None: ""}[r["correct"]]
                row.append(_shorten(r["answer"] or "", 60) + mark)
        cells.append(row)
    return headers, cells


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
    text = str(e).split("\n\nStack Trace:", 1)[0].strip()  # DuckDB appends a C++ trace
    return f"{type(e).__name__}: {text}"


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


@dataclass
class Systems:
    """What the queries run on besides the monolith: fedlab's federation, and DuckDB
    attaching the same databases (None, with the reason, when it could not be set up)."""

    fed: Any
    duck: DuckDBFederation | None = None
    duck_error: str | None = None

    def close(self) -> None:
        if self.duck is not None:
            self.duck.close()
            self.duck = None


def open_systems(
    cfg: BenchConfig, targets: Sequence[Target], *, log: Callable[[str], None] = print
) -> Systems:
    """Attach the targets to a :class:`fedlab.Federation` and (``cfg.duckdb``) to DuckDB;
    catalogs are read here, before any clock starts."""
    import fedlab as fl

    fed = fl.Federation()
    for target in targets:
        fed.attach(target.name, target.url)
    try:  # introspect the catalog before the clock starts (if it is lazy)
        fed.tables()
    except Exception as e:
        log(f"warning: fed.tables() failed before the run: {_error_text(e)}")
    systems = Systems(fed)
    if cfg.duckdb:
        try:
            systems.duck = DuckDBFederation(targets)
        except Exception as e:  # every DuckDB row then carries the reason
            systems.duck_error = _error_text(e)
            log(f"warning: DuckDB could not attach the databases: {systems.duck_error}")
    return systems


def run(
    cfg: BenchConfig,
    targets: Sequence[Target],
    monolith: Target,
    queries: dict[int, str],
    *,
    log: Callable[[str], None] = print,
    systems: Systems | None = None,
) -> pl.DataFrame:
    """Run the selected queries on the monolith, on DuckDB and through fedlab; the
    results frame (:data:`RESULT_SCHEMA`). ``systems`` defaults to
    ``open_systems(cfg, targets)``, closed at the end."""
    own = systems is None
    if systems is None:
        systems = open_systems(cfg, targets, log=log)
    records: list[dict[str, Any]] = []
    try:
        for q in cfg.queries:
            records += _run_query(
                cfg,
                q,
                _clean_sql(queries[q]),
                systems.fed,
                monolith,
                systems.duck,
                systems.duck_error,
                log,
            )
    finally:
        if own:
            systems.close()
    return pl.DataFrame(records, schema=RESULT_SCHEMA, orient="row")


def _run_query(
    cfg: BenchConfig,
    q: int,
    sql: str,
    fed: Any,
    monolith: Target,
    duck: DuckDBFederation | None,
    duck_error: str | None,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One query on the monolith, on DuckDB (``cfg.duckdb``) and under each strategy."""
    import connectorx as cx

    records: list[dict[str, Any]] = []

    def monolith_once() -> tuple[pl.DataFrame, int, int, int]:
        df = cx.read_sql(monolith.url, sql, return_type="polars")
        return df, df.height, int(df.estimated_size()), 1

    ref = _measure(monolith_once, cfg.repeat)
    records.append(_record(q, MONOLITH, ref, correct=None, detail=None))
    log(_progress(records[-1]))

    if cfg.duckdb:
        if duck is None:
            out = _Outcome(error=duck_error or "DuckDB unavailable")
        else:

            def duck_once(duck: DuckDBFederation = duck) -> tuple[pl.DataFrame, Any, Any, Any]:
                return duck.query(sql), None, None, None  # what the scanners move: unknown

            out = _measure(duck_once, cfg.repeat)
        correct, detail = _check(out, ref, sql, compare_duckdb)
        records.append(_record(q, DUCKDB, out, correct=correct, detail=detail))
        log(_progress(records[-1]))
        out.df = None

    for strategy in cfg.strategies:

        def fed_once(strategy: str = strategy) -> tuple[pl.DataFrame, int, int, int]:
            res = fed.sql(sql, strategy=strategy)
            return (
                res.df,
                int(res.trace.rows),
                int(res.trace.bytes),
                len(res.plan.fragments),
            )

        out = _measure(fed_once, cfg.repeat)
        correct, detail = _check(out, ref, sql, compare)
        records.append(_record(q, strategy, out, correct=correct, detail=detail))
        log(_progress(records[-1]))
        out.df = None
    return records


def _check(
    out: _Outcome,
    ref: _Outcome,
    sql: str,
    rule: Callable[[pl.DataFrame, pl.DataFrame, str], tuple[bool, str]],
) -> tuple[bool | None, str | None]:
    """(correct, detail) of one run against the monolith's answer; ``detail`` explains a
    wrong answer, or carries a note on a correct one (``rule`` may return both)."""
    if out.error is not None or out.df is None or ref.df is None:
        return None, None
    try:
        correct, why = rule(out.df, ref.df, sql)
    except Exception as e:
        return False, f"comparison raised {_error_text(e)}"
    return correct, (why or None)


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


#: The issue's targets for the headline strategy (``auto`` when it ran): (summary key,
#: label, comparison, bound). "≤" means at most, "≥" at least.
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("vs_duckdb", "time {c} / DuckDB (total)", "≤", 0.5),
    ("bytes_ratio", "bytes moved {b} / {c}", "≥", 10.0),
    ("vs_monolith", "time {c} / single PostgreSQL (total)", "≤", 2.0),
)


def headline_strategy(strategies: Sequence[str]) -> str | None:
    """The strategy the summary's ratios are about: ``auto`` (fedlab's default) when it
    ran, else ``pushdown``, else the last one that is not ``naive``.

    >>> headline_strategy(["naive", "pushdown", "auto", "semijoin"])
    'auto'
    >>> headline_strategy(["naive", "pushdown"])
    'pushdown'
    """
    for name in ("auto", "pushdown"):
        if name in strategies:
            return name
    others = [s for s in strategies if s != "naive"]
    return others[-1] if others else None


def _time_ratio(
    by: dict[tuple[int, str], dict[str, Any]], queries: Sequence[int], num: str, den: str
) -> dict[str, Any] | None:
    """``num`` seconds over ``den`` seconds, over the queries both answered correctly:
    ratio of totals and geometric mean of per-query ratios."""
    pairs = [
        (by[(q, num)], by[(q, den)])
        for q in queries
        if _usable(by.get((q, num))) and _usable(by.get((q, den)))
    ]
    if not pairs:
        return None
    num_total = sum(n["seconds"] for n, _ in pairs)
    den_total = sum(d["seconds"] for _, d in pairs)
    return {
        "queries": len(pairs),
        "total_ratio": num_total / max(den_total, _TINY),
        "geomean_ratio": geometric_mean(
            max(n["seconds"], _TINY) / max(d["seconds"], _TINY) for n, d in pairs
        ),
    }


def summarize(
    results: pl.DataFrame, baseline: str = "naive", candidate: str | None = None
) -> dict[str, Any]:
    """The headline numbers of a results frame (see :data:`RESULT_SCHEMA`).

    * ``correct`` / ``wrong`` / ``failed`` / ``notes``: per system (strategy or DuckDB), how
      many queries gave the monolith's answer, a different answer, raised, or were correct
      with a remark (DuckDB's column names); ``queries`` is the total.
    * ``candidate`` is the strategy the ratios are about (default
      :func:`headline_strategy`). ``speedup``: geometric mean over queries of ``baseline``
      seconds / ``candidate`` seconds, and ``bytes_ratio``/``rows_ratio``: total moved by
      ``baseline`` / total moved by ``candidate``; both over the queries where the two
      strategies finished with a correct answer (``compared``).
    * ``vs_monolith`` / ``vs_duckdb``: per system, total seconds / the monolith's (DuckDB's)
      total seconds and the geometric mean of the per-query ratios, over the queries both
      answered correctly.
    * ``targets``: the issue's targets for ``candidate`` (see :data:`TARGETS`), met or not.
    * ``total_seconds``: per system (monolith included), over its usable queries.
    """
    rows = results.to_dicts()
    by = {(r["query"], r["strategy"]): r for r in rows}
    queries = sorted({r["query"] for r in rows})
    systems = [s for s in dict.fromkeys(r["strategy"] for r in rows) if s != MONOLITH]
    strategies = [s for s in systems if s != DUCKDB]
    if candidate is None:
        candidate = headline_strategy(strategies)

    def count(s: str, test: Callable[[dict[str, Any]], bool]) -> int:
        return sum(1 for q in queries if (r := by.get((q, s))) is not None and test(r))

    summary: dict[str, Any] = {
        "queries": len(queries),
        "strategies": systems,
        "correct": {s: count(s, lambda r: r["correct"] is True) for s in systems},
        "wrong": {s: count(s, lambda r: r["correct"] is False) for s in systems},
        "failed": {s: count(s, lambda r: r["error"] is not None) for s in [MONOLITH, *systems]},
        "notes": {
            s: count(s, lambda r: r["correct"] is True and bool(r["detail"])) for s in systems
        },
        "total_seconds": {
            s: sum(by[(q, s)]["seconds"] for q in queries if _usable(by.get((q, s))))
            for s in [MONOLITH, *systems]
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
        "vs_duckdb": {},
        "targets": [],
    }

    if candidate is not None and baseline in strategies and candidate in strategies:
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

    for s in systems:
        if (ratio := _time_ratio(by, queries, s, MONOLITH)) is not None:
            summary["vs_monolith"][s] = ratio
        if s != DUCKDB and (ratio := _time_ratio(by, queries, s, DUCKDB)) is not None:
            summary["vs_duckdb"][s] = ratio

    if candidate is not None:
        for key, label, op, bound in TARGETS:
            value = summary[key]
            if isinstance(value, dict):
                value = (value.get(candidate) or {}).get("total_ratio")
            met = None if value is None else (value <= bound if op == "≤" else value >= bound)
            summary["targets"].append(
                {
                    "measure": label.format(b=baseline, c=candidate),
                    "target": f"{op} {bound:g}",
                    "value": value,
                    "met": met,
                }
            )
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


def _systems(results: pl.DataFrame) -> list[str]:
    """The systems of a results frame in display order: monolith, DuckDB, strategies."""
    names = list(dict.fromkeys(results["strategy"].to_list()))
    first = [n for n in (MONOLITH, DUCKDB) if n in names]
    return first + [n for n in names if n not in first]


def _time_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r["error"] is not None:
        return "error"
    text = _fmt_seconds(r["seconds"])
    return text + " ✗" if r["correct"] is False else text


def _answer_cell(rows: Sequence[dict[str, Any]]) -> str:
    bad = []
    for r in rows:
        if r["error"] is not None:
            bad.append(f"{r['strategy']} error")
        elif r["correct"] is False:
            bad.append(f"{r['strategy']} WRONG")
        elif r["correct"] is True and r["detail"]:
            bad.append(f"{r['strategy']} ok*")
    return ", ".join(bad) if bad else "all ok"


def _wide_table(results: pl.DataFrame) -> tuple[list[str], list[list[str]], set[int]]:
    """One row per query: seconds per system, bytes moved per strategy, and a verdict on
    the answers (fragment counts are in ``--json``). Returns headers, cells and the
    right-aligned columns."""
    systems = _systems(results)
    strategies = [s for s in systems if s not in (MONOLITH, DUCKDB)]
    by = {(r["query"], r["strategy"]): r for r in results.to_dicts()}
    queries = sorted({q for q, _ in by})
    headers = ["query", *(f"{s} s" for s in systems)]
    headers += [f"{s} bytes" for s in strategies]
    headers.append("answers")
    cells = []
    for q in queries:
        row = [f"Q{q:02d}", *(_time_cell(by.get((q, s))) for s in systems)]
        for s in strategies:
            r = by.get((q, s))
            row.append("" if r is None else _fmt_bytes(r["bytes"]))
        row.append(_answer_cell([by[(q, s)] for s in systems if s != MONOLITH and (q, s) in by]))
        cells.append(row)
    return headers, cells, set(range(1, len(headers) - 1))


def _problems(results: pl.DataFrame) -> list[tuple[str, str, str]]:
    """(query, system, message) for every run that raised or answered differently."""
    out = []
    for r in results.to_dicts():
        if r["error"] is not None:
            out.append((f"Q{r['query']:02d}", r["strategy"], r["error"]))
        elif r["correct"] is False:
            out.append(
                (f"Q{r['query']:02d}", r["strategy"], "wrong answer: " + (r["detail"] or ""))
            )
    return out


def _notes(results: pl.DataFrame) -> list[tuple[str, str, str]]:
    """(query, system, note) for correct answers that carry a remark."""
    return [
        (f"Q{r['query']:02d}", r["strategy"], r["detail"])
        for r in results.to_dicts()
        if r["correct"] is True and r["detail"]
    ]


def _aligned(headers: Sequence[str], cells: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def render_table(results: pl.DataFrame) -> str:
    """The per-query table as aligned plain text, followed by failures and notes.

    Seconds are per system (``✗``: a wrong answer, ``error``: the run raised); bytes moved
    per fedlab strategy."""
    headers, cells, right = _wide_table(results)
    lines = [_aligned(headers, cells, right)]
    problems = _problems(results)
    if problems:
        lines += ["", "failures:"]
        lines += [f"  {q} {s}: {_shorten(msg, 300)}" for q, s, msg in problems]
    notes = _notes(results)
    if notes:
        lines += ["", "notes (correct answers, ok* above):"]
        lines += [f"  {q} {s}: {_shorten(msg, 300)}" for q, s, msg in notes]
    return "\n".join(lines)


def _summary_items(summary: dict[str, Any]) -> list[tuple[str, str]]:
    n = summary["queries"]
    base, cand = summary["baseline"], summary["candidate"]
    items: list[tuple[str, str]] = []
    for t in summary.get("targets", []):
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        value = "—" if t["value"] is None else _fmt_ratio(t["value"])
        items.append((f"target: {t['measure']} {t['target']}", f"{value}: {verdict}"))
    for s in summary["strategies"]:
        extra = []
        if summary["wrong"].get(s):
            extra.append(f"{summary['wrong'][s]} wrong")
        if summary["failed"].get(s):
            extra.append(f"{summary['failed'][s]} failed")
        if summary.get("notes", {}).get(s):
            extra.append(f"{summary['notes'][s]} with a note")
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
    for key, other in (("vs_duckdb", "DuckDB"), ("vs_monolith", "single PostgreSQL")):
        for s, v in summary.get(key, {}).items():
            items.append(
                (
                    f"time {s} / {other}",
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


def _md_table(headers: Sequence[str], cells: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |"]
    out.append("|" + "|".join("--:" if i in right else "---" for i in range(len(headers))) + "|")
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in cells]
    return out


def _md_meta(meta: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    servers = ", ".join(f"{k} {v}" for k, v in meta.get("servers", {}).items())
    out = [
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
    return out


def _md_issues(results: pl.DataFrame) -> list[str]:
    out: list[str] = []
    problems = _problems(results)
    if problems:
        out += ["", "#### Failures", ""]
        out += [
            "- **{} {}**: `{}`".format(q, s, _md_escape(_shorten(msg, 400)).replace("`", "'"))
            for q, s, msg in problems
        ]
    notes = _notes(results)
    if notes:
        out += ["", "#### Notes (answers counted correct, marked ok* above)", ""]
        out += [
            "- **{} {}**: {}".format(q, s, _md_escape(_shorten(msg, 400)).replace("`", "'"))
            for q, s, msg in notes
        ]
    return out


def render_markdown(
    results: pl.DataFrame,
    summary: dict[str, Any],
    meta: dict[str, Any],
    probes: pl.DataFrame | None = None,
) -> str:
    """A Markdown section (for ``docs/benchmarks.md``): setup, summary, per-query table,
    failures and notes, and the semantics probes when given."""
    out = [f"### Run: TPC-H SF {meta.get('sf', '?'):g}, {meta.get('date', '?')}", ""]
    out += _md_meta(meta)
    if "fk_indexes" in meta:
        out.append(
            "- indexes: primary keys"
            + (" and foreign-key indexes" if meta["fk_indexes"] else " only")
            + " on every database"
        )
    out += [
        f"- runs per query and system: {meta.get('repeat', 1)} (median reported)",
        "",
        "#### Summary",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    out += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in _summary_items(summary)]
    headers, cells, right = _wide_table(results)
    out += [
        "",
        "#### Per query",
        "",
        "Seconds per system (`✗`: wrong answer, not counted in the ratios); bytes moved from "
        "the sources per fedlab strategy (DuckDB's scanners are not measured).",
        "",
        *_md_table(headers, cells, right),
    ]
    out += _md_issues(results)
    if probes is not None and probes.height:
        headers, cells = _probe_cells(probes)
        out += [
            "",
            "#### Semantics probes (not timed)",
            "",
            "Answers to queries whose result depends on PostgreSQL's string semantics "
            "(`✗`: differs from the single PostgreSQL). The TPC-H data cannot show these "
            "differences: its strings are upper case without trailing spaces.",
            "",
            *_md_table(headers, cells, set()),
            "",
            *(f"- **{name}**: `{sql}`" for name, sql in PROBES.items()),
        ]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- sharded benchmark
#: The sharded benchmark's logical table and its shard key.
SHARD_TABLE = "events"
SHARD_KEY = "id"

#: Shard name -> (fedlab source name, server): each shard is a database of its own,
#: ``<prefix>_shard_<source>``, holding one table ``events``.
SHARD_LAYOUT: dict[str, tuple[str, str]] = {
    "s0": ("pg0", "pg"),
    "s1": ("pg1", "pg"),
    "s2": ("my0", "my"),
    "s3": ("my1", "my"),
}

EVENT_KINDS: tuple[str, ...] = (
    "buy",
    "cart",
    "click",
    "login",
    "refund",
    "search",
    "share",
    "view",
)

#: Columns (and types) of the sharded benchmark's results: one row per (query, system,
#: strategy). ``system`` is ``monolith`` (one PostgreSQL table), ``shard`` (the logical
#: table declared with ``fed.shard``) or ``union`` (the same four tables read through a
#: hand-written ``UNION ALL``: what a query costs without a shard rule to prune with).
SHARDED_SCHEMA: dict[str, pl.DataType] = {
    "query": pl.String(),
    "system": pl.String(),
    "strategy": pl.String(),
    "correct": pl.Boolean(),
    "seconds": pl.Float64(),
    "rows": pl.Int64(),
    "bytes": pl.Int64(),
    "fragments": pl.Int64(),
    "shards_read": pl.Int64(),  # shard sources the fragments went to
    "expected_shards": pl.Int64(),  # what the shard rule allows (monolith: null)
    "in_flight": pl.Int64(),  # most fragments running at the same moment
    "error": pl.String(),
    "detail": pl.String(),
}


def make_events(rows: int) -> pl.DataFrame:
    """The sharded benchmark's table: ``rows`` events with keys ``1..rows``, every other
    column a deterministic function of the key (no random state, same data everywhere).

    >>> make_events(3).columns
    ['id', 'user_id', 'kind', 'amount', 'day']
    """
    h = (pl.col("id") * 2_654_435_761) % (1 << 32)  # Knuth's multiplicative hash
    kinds = dict(enumerate(EVENT_KINDS))
    return (
        pl.DataFrame({"id": pl.int_range(1, rows + 1, dtype=pl.Int64, eager=True)})
        .with_columns(h.alias("_h"))
        .select(
            "id",
            ((pl.col("_h") % 100_003) + 1).alias("user_id"),
            ((pl.col("_h") // 7) % len(EVENT_KINDS))
            .replace_strict(kinds, return_dtype=pl.String)
            .alias("kind"),
            (((pl.col("_h") // 13) % 100_000) / 100.0).alias("amount"),
            (pl.date(2024, 1, 1) + pl.duration(days=(pl.col("_h") // 17) % 366)).alias("day"),
        )
    )


def range_bounds(rows: int, shards: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Equal key ranges ``[lo, hi)`` over ``1..rows``, one per shard, in order.

    >>> range_bounds(10, ["a", "b"])
    {'a': (1, 6), 'b': (6, 11)}
    """
    n = len(shards)
    cuts = [1 + i * rows // n for i in range(n)] + [rows + 1]
    return {s: (cuts[i], cuts[i + 1]) for i, s in enumerate(shards)}


def place_shards(df: pl.DataFrame, method: str, shards: Sequence[str]) -> dict[str, pl.DataFrame]:
    """Split ``df`` over ``shards`` by :data:`SHARD_KEY` with fedlab's own loader
    (:func:`fedlab.load.split_shards`: ``range`` by :func:`range_bounds`, ``hash`` by
    fedlab's hash rule), so the placement is exactly the one ``fed.shard`` prunes by.

    >>> parts = place_shards(make_events(8), "range", ["a", "b"])
    >>> {s: part["id"].to_list() for s, part in parts.items()}
    {'a': [1, 2, 3, 4], 'b': [5, 6, 7, 8]}
    """
    load = importlib.import_module("fedlab.load")
    bounds = range_bounds(df.height, shards) if method == "range" else None
    return load.split_shards(df, SHARD_KEY, method, list(shards), bounds=bounds)


def sharded_queries(rows: int, method: str) -> dict[str, tuple[str, int]]:
    """Query name -> (SQL with ``{events}`` for the table, shards the rule must read).

    A point and a narrow range on the key (1 shard under range placement; a range reads
    every shard under hash placement), and three that need every shard: a grouped
    aggregate, a distinct count (which cannot be summed over shards) and a top-k.
    """
    n = len(SHARD_LAYOUT)
    point = rows * 5 // 8 + 3
    lo = max(1, rows // 10)
    hi = min(rows // 4, lo + max(1, rows // 20))
    kinds = ", ".join(f"'{k}'" for k in EVENT_KINDS[:3])
    return {
        "point": (f"SELECT id, user_id, kind, amount, day FROM {{events}} WHERE id = {point}", 1),
        "range": (
            f"SELECT count(*) AS n, sum(amount) AS total FROM {{events}} "
            f"WHERE id BETWEEN {lo} AND {hi}",
            1 if method == "range" else n,
        ),
        "aggregate": (
            "SELECT kind, count(*) AS n, sum(amount) AS total, avg(amount) AS mean, "
            "min(day) AS first_day, max(day) AS last_day "
            "FROM {events} GROUP BY kind ORDER BY kind",
            n,
        ),
        "distinct": (
            "SELECT count(DISTINCT user_id) AS users FROM {events} "
            f"WHERE day >= DATE '2024-12-01' AND kind IN ({kinds})",
            n,
        ),
        "top": ("SELECT id, amount FROM {events} ORDER BY amount DESC, id LIMIT 10", n),
    }


@dataclass(frozen=True)
class ShardedSetup:
    """The databases of the sharded benchmark: shard -> (source, URL), and the monolith."""

    shards: dict[str, tuple[str, str]]
    monolith: str
    bounds: dict[str, tuple[int, int]] | None


def _sharded_db_names(prefix: str) -> list[tuple[str, str]]:
    """(server kind, database name) of every database the sharded benchmark makes."""
    names = [(server, f"{prefix}_shard_{source}") for source, server in SHARD_LAYOUT.values()]
    return [*names, ("pg", f"{prefix}_shard_mono")]


def prepare_sharded(
    cfg: BenchConfig, rows: int, method: str, *, log: Callable[[str], None] = print
) -> ShardedSetup:
    """Create and fill the four shard databases and the monolith (reused when a marker
    file in the cache says they hold this placement and the row counts still match)."""
    load = importlib.import_module("fedlab.load")
    servers = {"pg": cfg.server_pg, "my": cfg.server_mysql}
    names = list(SHARD_LAYOUT)
    urls = {
        shard: (source, load.create_database(servers[server], f"{cfg.db_prefix}_shard_{source}"))
        for shard, (source, server) in SHARD_LAYOUT.items()
    }
    mono_url = load.create_database(cfg.server_pg, f"{cfg.db_prefix}_shard_mono")
    bounds = range_bounds(rows, names) if method == "range" else None
    setup = ShardedSetup(urls, mono_url, bounds)

    marker = cfg.cache_dir / f"sharded-{cfg.db_prefix}.json"
    want = {"rows": rows, "method": method, "layout": {s: list(v) for s, v in SHARD_LAYOUT.items()}}
    if not cfg.reload and marker.is_file() and json.loads(marker.read_text()).get("want") == want:
        expected = json.loads(marker.read_text())["counts"]
        have = {s: _row_counts(url, [SHARD_TABLE])[SHARD_TABLE] for s, (_, url) in urls.items()}
        have["monolith"] = _row_counts(mono_url, [SHARD_TABLE])[SHARD_TABLE]
        if have == expected:
            log(f"sharded: reusing {rows:,} rows over {len(urls)} shards ({method})")
            return setup

    marker.unlink(missing_ok=True)
    t0 = time.perf_counter()
    log(f"sharded: generating {rows:,} rows and placing them by {method} over {len(urls)} shards")
    df = make_events(rows)
    parts = place_shards(df, method, names)
    counts: dict[str, int] = {}
    for shard, (source, url) in urls.items():
        log(f"  {shard} ({source}): loading {parts[shard].height:,} rows")
        load.write_tables(url, {SHARD_TABLE: parts[shard]}, primary_keys={SHARD_TABLE: [SHARD_KEY]})
        _analyze(url, [SHARD_TABLE])
        counts[shard] = parts[shard].height
    log(f"  monolith: loading {df.height:,} rows")
    load.write_tables(mono_url, {SHARD_TABLE: df}, primary_keys={SHARD_TABLE: [SHARD_KEY]})
    _analyze(mono_url, [SHARD_TABLE])
    counts["monolith"] = df.height
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"want": want, "counts": counts}, indent=1) + "\n")
    log(f"  loaded in {time.perf_counter() - t0:.1f} s")
    return setup


def union_sql(setup: ShardedSetup) -> str:
    """The four shard tables as one derived table, written by hand (no shard rule)."""
    parts = [f"SELECT * FROM {source}.{SHARD_TABLE}" for source, _ in setup.shards.values()]
    return f"({' UNION ALL '.join(parts)}) AS {SHARD_TABLE}"


def max_in_flight(spans: Iterable[tuple[float, float]]) -> int:
    """The most intervals ``(start, end)`` open at one moment.

    >>> max_in_flight([(0, 2), (1, 3), (2.5, 4), (5, 6)])
    2
    """
    events = sorted((t, step) for a, b in spans for t, step in ((a, 1), (b, -1)))
    best = current = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        current += step
        best = max(best, current)
    return best


def _sharded_federation(setup: ShardedSetup, method: str, *, declare: bool) -> Any:
    import fedlab as fl

    fed = fl.Federation()
    for source, url in setup.shards.values():
        fed.attach(source, url)
    if declare:
        spec: dict[str, Any] = {}
        if method == "range" and setup.bounds is not None:
            spec["bounds"] = setup.bounds
        fed.shard(
            SHARD_TABLE,
            key=SHARD_KEY,
            method=method,
            shards={s: f"{source}.{SHARD_TABLE}" for s, (source, _) in setup.shards.items()},
            **spec,
        )
    fed.tables()  # catalog read before the clock starts
    return fed


def run_sharded(
    cfg: BenchConfig,
    setup: ShardedSetup,
    method: str,
    rows: int,
    *,
    log: Callable[[str], None] = print,
) -> tuple[pl.DataFrame, Any]:
    """Every sharded query on the monolith, on the declared sharded table (``shard``) and
    through a hand-written ``UNION ALL`` (``union``); the results frame and the
    :class:`~fedlab.FederatedResult` of the full aggregate (for its waterfall)."""
    import connectorx as cx

    shard_sources = {source for source, _ in setup.shards.values()}
    systems: dict[str, tuple[Any, str | None]] = {}
    for system, declare in (("shard", True), ("union", False)):
        try:
            systems[system] = (_sharded_federation(setup, method, declare=declare), None)
        except Exception as e:
            systems[system] = (None, _error_text(e))
            log(f"warning: {system}: {_error_text(e)}")

    records: list[dict[str, Any]] = []
    waterfall: dict[str, Any] = {}
    for name, (template, expected_shards) in sharded_queries(rows, method).items():
        sql = template.format(events=SHARD_TABLE)

        def mono_once(sql: str = sql) -> tuple[pl.DataFrame, int, int, int]:
            df = cx.read_sql(setup.monolith, sql, return_type="polars")
            return df, df.height, int(df.estimated_size()), 1

        ref = _measure(mono_once, cfg.repeat)
        records.append(_sharded_record(name, MONOLITH, MONOLITH, ref, None, None, None, None, None))
        log(_sharded_progress(records[-1]))
        for system, (fed, error) in systems.items():
            text = sql if system == "shard" else template.format(events=union_sql(setup))
            for strategy in cfg.strategies:
                kept: dict[str, Any] = {}

                def fed_once(
                    fed: Any = fed, text: str = text, strategy: str = strategy, kept: dict = kept
                ) -> tuple[pl.DataFrame, int, int, int]:
                    res = fed.sql(text, strategy=strategy)
                    kept["res"] = res
                    return res.df, res.trace.rows, res.trace.bytes, len(res.plan.fragments)

                out = _Outcome(error=error) if fed is None else _measure(fed_once, cfg.repeat)
                correct, detail = _check(out, ref, sql, compare)
                res = kept.get("res")
                read = in_flight = None
                if res is not None and out.error is None:
                    entries = res.trace.entries
                    read = len({e.source for e in entries if e.source in shard_sources})
                    in_flight = max_in_flight((e.start, e.end) for e in entries)
                    if name == "aggregate":
                        waterfall.setdefault(system, res)
                records.append(
                    _sharded_record(
                        name,
                        system,
                        strategy,
                        out,
                        correct,
                        detail,
                        read,
                        expected_shards if system == "shard" else len(shard_sources),
                        in_flight,
                    )
                )
                log(_sharded_progress(records[-1]))
                out.df = None
    frame = pl.DataFrame(records, schema=SHARDED_SCHEMA, orient="row")
    return frame, waterfall.get("shard") or waterfall.get("union")


def _sharded_record(
    query: str,
    system: str,
    strategy: str,
    out: _Outcome,
    correct: bool | None,
    detail: str | None,
    read: int | None,
    expected: int | None,
    in_flight: int | None,
) -> dict[str, Any]:
    r = _record(0, strategy, out, correct=correct, detail=detail)
    return {
        "query": query,
        "system": system,
        "strategy": strategy,
        "correct": r["correct"],
        "seconds": r["seconds"],
        "rows": r["rows"],
        "bytes": r["bytes"],
        "fragments": r["fragments"],
        "shards_read": read,
        "expected_shards": expected,
        "in_flight": in_flight,
        "error": r["error"],
        "detail": r["detail"],
    }


def _sharded_progress(r: dict[str, Any]) -> str:
    if r["error"]:
        status = "ERROR " + _shorten(r["error"], 120)
    elif r["correct"] is False:
        status = "WRONG " + _shorten(r["detail"] or "", 120)
    else:
        status = "ok" if r["correct"] else "reference"
    if r["shards_read"] is not None:
        status += f", {r['shards_read']} shard(s) read, {r['in_flight']} fragment(s) in flight"
    label = r["system"] if r["system"] == MONOLITH else f"{r['system']}/{r['strategy']}"
    return f"{r['query']:<9} {label:<14} {_fmt_seconds(r['seconds']):>8}  {status}"


def _sharded_cells(results: pl.DataFrame) -> tuple[list[str], list[list[str]], set[int]]:
    headers = [
        "query",
        "system",
        "correct",
        "seconds",
        "rows moved",
        "bytes moved",
        "fragments",
        "shards read",
        "in flight",
    ]
    cells = []
    for r in results.to_dicts():
        if r["system"] == MONOLITH:
            verdict = "reference" if r["error"] is None else "error"
        elif r["error"] is not None:
            verdict = "error"
        else:
            verdict = {True: "yes", False: "NO", None: "?"}[r["correct"]]
        read = _fmt_int(r["shards_read"]) if r["shards_read"] is not None else ""
        if read and r["expected_shards"] is not None and r["shards_read"] != r["expected_shards"]:
            read += f" (rule allows {r['expected_shards']})"
        cells.append(
            [
                r["query"],
                r["system"] if r["system"] == MONOLITH else f"{r['system']} ({r['strategy']})",
                verdict,
                _fmt_seconds(r["seconds"]),
                _fmt_int(r["rows"]),
                _fmt_bytes(r["bytes"]),
                _fmt_int(r["fragments"]),
                read,
                "" if r["in_flight"] is None else str(r["in_flight"]),
            ]
        )
    return headers, cells, {3, 4, 5, 6, 7, 8}


def sharded_findings(results: pl.DataFrame) -> list[tuple[str, str]]:
    """The sharded run's checks as (label, value): answers, pruning, parallelism."""
    rows = results.to_dicts()
    fed_rows = [r for r in rows if r["system"] != MONOLITH]
    out: list[tuple[str, str]] = []
    for system in dict.fromkeys(r["system"] for r in fed_rows):
        mine = [r for r in fed_rows if r["system"] == system]
        good = sum(1 for r in mine if r["correct"] is True)
        failed = [r for r in mine if r["error"] is not None]
        text = f"{good}/{len(mine)}"
        if failed:
            text += f" ({len(failed)} failed: {_shorten(failed[0]['error'], 120)})"
        out.append((f"correct ({system})", text))
    for r in fed_rows:
        if r["shards_read"] is None:
            continue
        label = f"{r['query']}, {r['system']} ({r['strategy']})"
        if r["query"] in ("point", "range"):
            value = f"{r['shards_read']} of {len(SHARD_LAYOUT)}"
            if r["system"] == "shard":
                value += f" (the rule allows {r['expected_shards']})"
            out.append((f"{label}: shards read", value))
        elif r["query"] == "aggregate":
            out.append(
                (
                    f"{label}: shards read / most fragments in flight at once",
                    f"{r['shards_read']} / {r['in_flight']}",
                )
            )
    by = {(r["query"], r["system"], r["strategy"]): r for r in rows}
    for r in fed_rows:
        mono = by.get((r["query"], MONOLITH, MONOLITH))
        if r["query"] == "aggregate" and _usable(r) and mono and _usable(mono):
            ratio = r["seconds"] / max(mono["seconds"], _TINY)
            out.append(
                (
                    f"aggregate time {r['system']} ({r['strategy']}) / single PostgreSQL",
                    _fmt_ratio(ratio),
                )
            )
    return out


def render_sharded(results: pl.DataFrame) -> str:
    """The sharded results as aligned text, then the findings."""
    headers, cells, right = _sharded_cells(results)
    lines = [_aligned(headers, cells, right), ""]
    findings = sharded_findings(results)
    width = max((len(k) for k, _ in findings), default=0)
    lines += [f"{k.ljust(width)}  {v}" for k, v in findings]
    problems = [
        (r["query"], f"{r['system']}/{r['strategy']}", r["error"] or f"wrong: {r['detail']}")
        for r in results.to_dicts()
        if r["system"] != MONOLITH and (r["error"] is not None or r["correct"] is False)
    ]
    if problems:
        lines += ["", "failures:"]
        lines += [f"  {q} {s}: {_shorten(m, 300)}" for q, s, m in problems]
    return "\n".join(lines)


def render_sharded_markdown(
    results: pl.DataFrame, meta: dict[str, Any], queries: dict[str, tuple[str, int]]
) -> str:
    """A Markdown section for the sharded run (``docs/benchmarks.md``)."""
    out = [
        f"### Run: sharded, {meta.get('rows', 0):,} rows over {len(SHARD_LAYOUT)} shards "
        f"({meta.get('method', '?')}), {meta.get('date', '?')}",
        "",
        *_md_meta(meta),
        f"- runs per query and system: {meta.get('repeat', 1)} (median reported)",
    ]
    if meta.get("plot"):
        out.append(f"- waterfall of the full aggregate: ![waterfall]({meta['plot']})")
    out += ["", "#### Findings", "", "| check | value |", "|---|---|"]
    out += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in sharded_findings(results)]
    headers, cells, right = _sharded_cells(results)
    out += ["", "#### Per query", "", *_md_table(headers, cells, right), "", "#### Queries", ""]
    out += [
        f"- **{name}**: `{sql.format(events=SHARD_TABLE)}`" for name, (sql, _) in queries.items()
    ]
    problems = [
        (r["query"], f"{r['system']}/{r['strategy']}", r["error"] or f"wrong: {r['detail']}")
        for r in results.to_dicts()
        if r["system"] != MONOLITH and (r["error"] is not None or r["correct"] is False)
    ]
    if problems:
        out += ["", "#### Failures", ""]
        out += [
            "- **{} {}**: `{}`".format(q, s, _md_escape(_shorten(m, 400)).replace("`", "'"))
            for q, s, m in problems
        ]
    return "\n".join(out) + "\n"


def save_waterfall(res: Any, path: Path, title: str) -> None:
    """Save ``res.plot()`` (fedlab's waterfall and volume figure) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = res.plot(title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


#: ``--markdown`` replaces what lies between these two lines when the file has them
#: (so a hand-written page keeps its prose), and writes the whole file otherwise.
MARK_BEGIN = "<!-- fedlab bench: begin generated results -->"
MARK_END = "<!-- fedlab bench: end generated results -->"
#: The same for ``--sharded`` runs (their own section of the page).
MARK_BEGIN_SHARDED = "<!-- fedlab bench --sharded: begin generated results -->"
MARK_END_SHARDED = "<!-- fedlab bench --sharded: end generated results -->"


def write_markdown(
    path: Path, section: str, *, begin: str = MARK_BEGIN, end: str = MARK_END
) -> None:
    """Write ``section`` to ``path``, between ``begin`` and ``end`` (default
    :data:`MARK_BEGIN` and :data:`MARK_END`) when the file already has both markers;
    otherwise a file that exists gets the block appended, and a new file is the block."""
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    if path.is_file():
        text = path.read_text()
        start, stop = text.find(begin), text.find(end)
        if 0 <= start < stop:
            rest = text[stop + len(end) :].lstrip("\n")
            path.write_text(text[:start] + block + ("\n" + rest if rest else ""))
            return
        if begin != MARK_BEGIN:  # a second section: keep the page, add it at the end
            path.write_text(text.rstrip("\n") + "\n\n" + block)
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
        label = {"postgresql": "PostgreSQL", "mysql": "MariaDB", "sqlite": "SQLite"}.get(
            _url_scheme(t.url), t.name
        )
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
    strategies = args.strategies
    if strategies is None:
        one = args.sharded or args.engines
        strategies = ["auto"] if one else list(available_strategies())
    if args.engines and len(strategies) != 1:
        build_parser().error("--engines runs one strategy: give at most one to --strategies")
    cfg = BenchConfig(
        sf=args.sf,
        queries=args.queries,
        strategies=strategies,
        repeat=args.repeat,
        server_pg=args.server_pg,
        server_mysql=args.server_mysql,
        cache_dir=args.cache_dir or default_cache_dir(),
        db_prefix=args.db_prefix,
        reload=args.reload,
        fk_indexes=not args.no_fk_indexes,
        duckdb=not args.no_duckdb,
        quiet=args.quiet,
    )

    def log(msg: str) -> None:
        if not cfg.quiet:
            print(msg, file=sys.stderr, flush=True)

    if args.drop:
        drop_databases(cfg, log=log)
        return 0
    if args.sharded:
        return _main_sharded(cfg, args, argv, log)
    if args.engines:
        from fedlab.bench_engines import main_engines

        return main_engines(cfg, args.engines, args, argv, log)
    started = dt.datetime.now(dt.UTC)
    load_start = _load()
    data, queries = load_tpch(cfg.sf, cfg.data_dir, log=log)
    targets, monolith = prepare_databases(cfg, data, log=log)
    del data
    systems = open_systems(cfg, targets, log=log)
    try:
        results = run(cfg, targets, monolith, queries, log=log, systems=systems)
        summary = summarize(results)
        probes = run_probes(
            systems.fed, systems.duck, monolith, summary["candidate"] or cfg.strategies[-1]
        )
    finally:
        systems.close()

    meta = {
        **_meta(cfg, argv, started, load_start),
        "sf": cfg.sf,
        "queries": cfg.queries,
        "duckdb": cfg.duckdb,
        "servers": _server_versions(targets),
        "placement": {k: list(v) for k, v in PLACEMENT.items()},
        "fk_indexes": cfg.fk_indexes,
    }
    print(render_table(results))
    print()
    print(render_summary(summary))
    print()
    print("semantics probes (not timed; ✗: differs from the single PostgreSQL):")
    print(_aligned(*_probe_cells(probes), set()))
    if args.markdown:
        write_markdown(args.markdown, render_markdown(results, summary, meta, probes))
        log(f"wrote {args.markdown}")
    if args.json:
        payload = {
            "meta": meta,
            "summary": summary,
            "results": results.to_dicts(),
            "probes": probes.to_dicts(),
        }
        _write_json(args.json, payload)
        log(f"wrote {args.json}")
    all_good = all(
        r["error"] is None and r["correct"] is True
        for r in results.to_dicts()
        if r["strategy"] not in (MONOLITH, DUCKDB)
    )
    return 0 if all_good else 1


def _meta(
    cfg: BenchConfig, argv: Sequence[str] | None, started: dt.datetime, load_start: float | None
) -> dict[str, Any]:
    return {
        "command": _command(argv),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "strategies": cfg.strategies,
        "repeat": cfg.repeat,
        "machine": platform.machine(),
        "nproc": os.cpu_count(),
        "load": [load_start, _load()] if load_start is not None else None,
        "os": f"{platform.system()} {platform.release()}",
        "versions": _versions(),
    }


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=1, default=str) + "\n")


def _main_sharded(
    cfg: BenchConfig,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    log: Callable[[str], None],
) -> int:
    """``fedlab bench --sharded``: 0 when every answer matched the monolith's and every
    query read no more shards than the rule allows, 1 otherwise."""
    started = dt.datetime.now(dt.UTC)
    load_start = _load()
    setup = prepare_sharded(cfg, args.rows, args.shard_method, log=log)
    results, aggregate = run_sharded(cfg, setup, args.shard_method, args.rows, log=log)
    plot: str | None = None
    if args.plot and aggregate is not None:
        title = (
            f"full aggregate over {len(SHARD_LAYOUT)} shards ({args.rows:,} rows, "
            f"{args.shard_method})"
        )
        save_waterfall(aggregate, args.plot, title)
        log(f"wrote {args.plot}")
        plot = str(args.plot)
        if args.markdown:  # the link is relative to the page
            plot = os.path.relpath(args.plot.resolve(), args.markdown.resolve().parent)
    targets = [Target(source, url, (SHARD_TABLE,)) for source, url in setup.shards.values()]
    meta = {
        **_meta(cfg, argv, started, load_start),
        "rows": args.rows,
        "method": args.shard_method,
        "layout": {s: list(v) for s, v in SHARD_LAYOUT.items()},
        "plot": plot,
        "servers": _server_versions(targets),
    }
    print(render_sharded(results))
    queries = sharded_queries(args.rows, args.shard_method)
    if args.markdown:
        write_markdown(
            args.markdown,
            render_sharded_markdown(results, meta, queries),
            begin=MARK_BEGIN_SHARDED,
            end=MARK_END_SHARDED,
        )
        log(f"wrote {args.markdown}")
    if args.json:
        _write_json(args.json, {"meta": meta, "results": results.to_dicts()})
        log(f"wrote {args.json}")
    all_good = all(
        r["error"] is None
        and r["correct"] is True
        and (r["shards_read"] or 0) <= (r["expected_shards"] or 0)
        for r in results.to_dicts()
        if r["system"] != MONOLITH
    )
    return 0 if all_good else 1


if __name__ == "__main__":
    raise SystemExit(main())
