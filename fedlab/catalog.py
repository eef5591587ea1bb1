"""The catalog: what every source holds (tables, columns, types, keys, statistics).

Introspected once per source on attach and cached; :meth:`Catalog.refresh` re-reads.
Types are kept as sqlglot ``DataType`` objects so the planner can reason about them
(is this a text comparison? an integer division?) in one vocabulary for every dialect.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from fedlab.errors import AmbiguousTableError, ConfigError, SourceError, UnknownTableError
from fedlab.source import Source

__all__ = [
    "LOGICAL_SOURCE",
    "Catalog",
    "ColumnInfo",
    "LogicalTable",
    "Shard",
    "TableInfo",
    "introspect",
    "type_family",
]

#: the pseudo-source of sharded logical tables: ``logical.<name>`` always names one
LOGICAL_SOURCE = "logical"

_INTEGER_TYPES = exp.DataType.INTEGER_TYPES


@dataclass
class ColumnInfo:
    """One column: its name in the source, its declared type, and its type as fedlab sees it."""

    name: str
    declared: str
    type: exp.DataType
    nullable: bool = True

    @property
    def is_text(self) -> bool:
        return self.type.this in exp.DataType.TEXT_TYPES

    @property
    def is_integer(self) -> bool:
        return self.type.this in _INTEGER_TYPES


@dataclass
class TableInfo:
    """One physical table of one source."""

    source: str
    name: str
    columns: list[ColumnInfo]
    primary_key: list[str] = field(default_factory=list)
    row_estimate: int | None = None
    key_ranges: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    #: set on the table info of a sharded logical table (source :data:`LOGICAL_SOURCE`)
    logical: LogicalTable | None = field(default=None, repr=False, compare=False)

    def column(self, name: str) -> ColumnInfo | None:
        for c in self.columns:
            if c.name == name:
                return c
        lowered = [c for c in self.columns if c.name.lower() == name.lower()]
        return lowered[0] if len(lowered) == 1 else None


@dataclass
class Shard:
    """One shard of a logical table: a physical table, and the keys it holds."""

    name: str
    table: TableInfo
    #: position in the declaration (the hash rule's shard number)
    index: int
    #: range rule: the half-open interval ``[lo, hi)`` of keys (None: unbounded)
    lo: Any = None
    hi: Any = None
    #: list rule: the key values this shard holds
    values: tuple[Any, ...] = ()

    @property
    def source(self) -> str:
        return self.table.source

    def describe(self) -> str:
        return f"{self.name} ({self.table.source}.{self.table.name})"


@dataclass
class LogicalTable:
    """A table the user queries by one name, stored as shards of equal schema.

    ``method`` is ``hash``, ``range`` or ``list`` on column ``key`` (see
    :mod:`fedlab.sql.shards` for the rules).
    """

    name: str
    key: str
    method: str
    shards: list[Shard]
    info: TableInfo

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(s.source for s in self.shards))

    def shard(self, name: str) -> Shard:
        for s in self.shards:
            if s.name == name:
                return s
        raise KeyError(name)

    def physical(self) -> set[tuple[str, str]]:
        """(source, table) of every shard."""
        return {(s.table.source, s.table.name) for s in self.shards}


def type_family(t: exp.DataType) -> str:
    """The kind of value a column holds, as compared across shards of different engines
    (SQLite's INTEGER and PostgreSQL's int4 are both ``integer``)."""
    if t.this in _INTEGER_TYPES:
        return "integer"
    if t.this in exp.DataType.REAL_TYPES:
        return "number"
    if t.this in exp.DataType.TEXT_TYPES:
        return "text"
    if t.this in (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.DATETIME):
        return "timestamp"
    return t.this.value.lower()


def _to_type(declared: str, dialect: str) -> exp.DataType:
    """Map a declared column type to a sqlglot DataType (UNKNOWN when it does not parse)."""
    text = (declared or "").strip()
    if not text:
        return exp.DataType.build("UNKNOWN")
    if dialect == "sqlite":
        # SQLite affinity rules (https://sqlite.org/datatype3.html#affinity_name_examples),
        # plus the conventional DATE/TIMESTAMP/DECIMAL/BOOLEAN declarations.
        up = text.upper()
        if "INT" in up:
            return exp.DataType.build("BIGINT")
        if any(k in up for k in ("CHAR", "CLOB", "TEXT")):
            return exp.DataType.build("TEXT")
        if up.startswith(("TIMESTAMP", "DATETIME")):
            return exp.DataType.build("TIMESTAMP")
        if up.startswith("DATE"):
            return exp.DataType.build("DATE")
        if up.startswith("BOOL"):
            return exp.DataType.build("BOOLEAN")
        if any(k in up for k in ("REAL", "FLOA", "DOUB", "DEC", "NUM")):
            return exp.DataType.build("DOUBLE")
        return exp.DataType.build("UNKNOWN")
    try:
        dt = exp.DataType.build(text, dialect=dialect)
    except Exception:
        return exp.DataType.build("UNKNOWN")
    if dt.this in (exp.DataType.Type.DECIMAL, exp.DataType.Type.BIGDECIMAL):
        # fedlab's decimal policy: decimals are computed as float64 (see docs/sql.md)
        return exp.DataType.build("DOUBLE")
    if dialect == "mysql" and text.lower().startswith("tinyint(1)"):
        return exp.DataType.build("BOOLEAN")
    if dt.is_type(*exp.DataType.INTEGER_TYPES) and dt.expressions:
        # MariaDB's display width (BIGINT(20)) is not a type parameter: drop it, or type
        # inference would keep BIGINT(20) for decimal arithmetic on it
        return exp.DataType(this=dt.this)
    return dt


# --------------------------------------------------------------------------- introspection
def _rows(con: Any, sql: str, params: tuple = ()) -> list[tuple]:
    cur = con.cursor()
    cur.execute(sql, params) if params else cur.execute(sql)
    rows = cur.fetchall()
    return [tuple(r) for r in rows]


def _introspect_sqlite(con: Any) -> list[TableInfo]:
    tables = []
    names = [
        r[0]
        for r in _rows(
            con,
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
    ]
    stats: dict[str, int] = {}
    if _rows(con, "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"):
        for tbl, _idx, stat in _rows(con, "SELECT tbl, idx, stat FROM sqlite_stat1"):
            with contextlib.suppress(ValueError):
                stats[tbl] = max(stats.get(tbl, 0), int(str(stat).split()[0]))
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        info = _rows(con, f"PRAGMA table_info({quoted})")
        cols = [
            ColumnInfo(r[1], r[2] or "", _to_type(r[2] or "", "sqlite"), not r[3] and not r[5])
            for r in info
        ]
        pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
        estimate = stats.get(name)
        if estimate is None:
            estimate = _rows(con, f"SELECT COUNT(*) FROM {quoted}")[0][0]
        tables.append(TableInfo("", name, cols, pk, estimate))
    return tables


def _introspect_postgres(con: Any) -> list[TableInfo]:
    cols = _rows(
        con,
        """
        SELECT c.table_name, c.column_name, c.data_type,
               COALESCE(c.numeric_precision, 0), COALESCE(c.numeric_scale, 0),
               c.is_nullable = 'YES'
        FROM information_schema.columns c
        JOIN information_schema.tables t
          ON t.table_schema = c.table_schema AND t.table_name = c.table_name
        WHERE c.table_schema = current_schema()
        ORDER BY c.table_name, c.ordinal_position
        """,
    )
    pks = _rows(
        con,
        """
        SELECT tc.table_name, kcu.column_name
        FROM information_schema.table_constraints tc
        JOIN information_schema.key_column_usage kcu
          ON kcu.constraint_name = tc.constraint_name AND kcu.table_schema = tc.table_schema
        WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = current_schema()
        ORDER BY tc.table_name, kcu.ordinal_position
        """,
    )
    estimates = dict(
        _rows(
            con,
            """
            SELECT c.relname, c.reltuples::bigint FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
            """,
        )
    )
    return _assemble(cols, pks, estimates, "postgres")


def _introspect_mysql(con: Any) -> list[TableInfo]:
    cols = _rows(
        con,
        """
        SELECT table_name, column_name, column_type, 0, 0, is_nullable = 'YES'
        FROM information_schema.columns WHERE table_schema = DATABASE()
        ORDER BY table_name, ordinal_position
        """,
    )
    pks = _rows(
        con,
        """
        SELECT table_name, column_name FROM information_schema.key_column_usage
        WHERE table_schema = DATABASE() AND constraint_name = 'PRIMARY'
        ORDER BY table_name, ordinal_position
        """,
    )
    estimates = dict(
        _rows(
            con,
            "SELECT table_name, table_rows FROM information_schema.tables "
            "WHERE table_schema = DATABASE()",
        )
    )
    return _assemble(cols, pks, estimates, "mysql")


def _introspect_duckdb(con: Any) -> list[TableInfo]:
    cols = _rows(
        con,
        """
        SELECT table_name, column_name, data_type, 0, 0, is_nullable = 'YES'
        FROM information_schema.columns WHERE table_schema = current_schema()
        ORDER BY table_name, ordinal_position
        """,
    )
    pks = []
    for tbl, keycols in _rows(
        con,
        "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
        "WHERE constraint_type = 'PRIMARY KEY' AND schema_name = current_schema()",
    ):
        pks.extend((tbl, c) for c in keycols)
    estimates = dict(
        _rows(
            con,
            "SELECT table_name, estimated_size FROM duckdb_tables() "
            "WHERE schema_name = current_schema()",
        )
    )
    return _assemble(cols, pks, estimates, "duckdb")


def _assemble(cols, pks, estimates, dialect: str) -> list[TableInfo]:
    by_table: dict[str, TableInfo] = {}
    for tbl, col, dtype, prec, scale, nullable in cols:
        declared = str(dtype)
        if dialect == "postgres" and declared == "numeric" and prec:
            declared = f"numeric({prec},{scale})"
        info = by_table.setdefault(tbl, TableInfo("", tbl, []))
        info.columns.append(ColumnInfo(col, declared, _to_type(declared, dialect), bool(nullable)))
    for tbl, col in pks:
        if tbl in by_table:
            by_table[tbl].primary_key.append(col)
    for tbl, info in by_table.items():
        est = estimates.get(tbl)
        info.row_estimate = int(est) if est is not None and int(est) >= 0 else None
    return [by_table[k] for k in sorted(by_table)]


_INTROSPECT = {
    "sqlite": _introspect_sqlite,
    "postgresql": _introspect_postgres,
    "mysql": _introspect_mysql,
    "duckdb": _introspect_duckdb,
}


def _quote(name: str, kind: str) -> str:
    if kind == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def introspect(source: Source) -> list[TableInfo]:
    """Read tables, columns, keys and statistics of one source."""
    if source.kind == "rest":  # a JSON endpoint: _meta, a declared schema or the first page
        from fedlab.rest import introspect_rest

        return introspect_rest(source)
    con = source.connect()
    source._login_checked = time.monotonic()  # type: ignore[attr-defined]  # see fetch
    try:
        tables = _INTROSPECT[source.kind](con)
        for t in tables:
            t.source = source.name
            q = _quote(t.name, source.kind)
            if t.row_estimate is None or (source.kind == "postgresql" and t.row_estimate <= 0):
                t.row_estimate = int(_rows(con, f"SELECT COUNT(*) FROM {q}")[0][0])
            # min/max of integer key columns: used later for partitioned reads and shard pruning
            for key in t.primary_key[:1]:
                col = t.column(key)
                if col is not None and col.is_integer:
                    kq = _quote(key, source.kind)
                    lo, hi = _rows(con, f"SELECT MIN({kq}), MAX({kq}) FROM {q}")[0]
                    t.key_ranges[key] = (lo, hi)
        return tables
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(
            f"source {source.describe()}: could not read its catalog: {type(e).__name__}: {e}"
        ) from None
    finally:
        con.close()


class Catalog:
    """Sources and their tables; resolves the names a query uses."""

    def __init__(self) -> None:
        self.sources: dict[str, Source] = {}
        self.tables: dict[str, dict[str, TableInfo]] = {}
        self.read_at: dict[str, float] = {}
        #: sharded logical tables by name (``fed.shard(...)``)
        self.logical: dict[str, LogicalTable] = {}

    def _check_name(self, source: Source) -> None:
        if source.name == LOGICAL_SOURCE:
            raise ConfigError(
                f"the source name {LOGICAL_SOURCE!r} is reserved for sharded logical tables "
                f"({LOGICAL_SOURCE}.<table>); attach the database under another name"
            )

    def add(self, source: Source) -> None:
        self._check_name(source)
        tables = introspect(source)
        self.sources[source.name] = source
        self.tables[source.name] = {t.name: t for t in tables}
        self.read_at[source.name] = time.time()

    def add_static(self, source: Source, tables: list[TableInfo]) -> None:
        """Register a source with a known schema, without connecting (planner tests, docs)."""
        self._check_name(source)
        self.sources[source.name] = source
        self.tables[source.name] = {t.name: t for t in tables}
        self.read_at[source.name] = time.time()

    def remove(self, name: str) -> None:
        self.sources.pop(name, None)
        self.tables.pop(name, None)
        self.read_at.pop(name, None)
        for lname, lt in list(self.logical.items()):
            if name in lt.sources:  # a logical table cannot lose a shard
                del self.logical[lname]

    def add_logical(self, table: LogicalTable) -> None:
        """Register a sharded logical table (see :func:`fedlab.sql.shards.declare_shard`)."""
        self.logical[table.name] = table

    def logical_rows(self) -> list[dict[str, Any]]:
        """One row per logical table, shaped like ``fed.tables()`` rows plus the shard rule."""
        return [
            {
                "source": LOGICAL_SOURCE,
                "table": lt.name,
                "columns": ", ".join(f"{c.name} {c.declared}".strip() for c in lt.info.columns),
                "primary_key": ", ".join(lt.info.primary_key),
                "rows_estimate": lt.info.row_estimate,
                "shards": ", ".join(f"{s.name}={s.table.source}.{s.table.name}" for s in lt.shards),
                "rule": f"{lt.method}({lt.key})",
            }
            for lt in self.logical.values()
        ]

    def _logical_lookup(self, table: str) -> LogicalTable | None:
        if table in self.logical:
            return self.logical[table]
        folded = [t for n, t in self.logical.items() if n.lower() == table.lower()]
        return folded[0] if len(folded) == 1 else None

    def refresh(self, name: str | None = None) -> None:
        for n in [name] if name else list(self.sources):
            self.add(self.sources[n])

    def _lookup(self, source: str, table: str) -> TableInfo | None:
        tables = self.tables.get(source, {})
        if table in tables:
            return tables[table]
        folded = [t for n, t in tables.items() if n.lower() == table.lower()]
        return folded[0] if len(folded) == 1 else None

    def resolve(self, table: str, source: str | None = None) -> TableInfo:
        """Find the table a query names; bare names must be unique across sources."""
        if source is not None:
            if source == LOGICAL_SOURCE:
                lt = self._logical_lookup(table)
                if lt is None:
                    have = ", ".join(sorted(self.logical)) or "none declared"
                    raise UnknownTableError(
                        f"no sharded logical table named {table!r} (logical tables: {have})"
                    )
                return lt.info
            if source not in self.sources:
                # "a.b" where a is not a source: maybe a schema-qualified name in one source
                raise UnknownTableError(
                    f"unknown source {source!r} in table name {source}.{table} "
                    f"(attached sources: {', '.join(sorted(self.sources)) or 'none'})"
                )
            found = self._lookup(source, table)
            if found is None:
                have = ", ".join(sorted(self.tables[source])) or "no tables"
                raise UnknownTableError(
                    f"table {table!r} not found in source {source!r} (it has: {have})"
                )
            return found
        hits = [t for s in self.sources if (t := self._lookup(s, table)) is not None]
        lt = self._logical_lookup(table)
        if lt is not None:
            # a logical table hides the physical tables that are its own shards
            shards = lt.physical()
            hits = [lt.info] + [t for t in hits if (t.source, t.name) not in shards]
        if not hits:
            every = sorted(f"{s}.{t}" for s in self.tables for t in self.tables[s])
            every += sorted(f"{LOGICAL_SOURCE}.{n}" for n in self.logical)
            raise UnknownTableError(
                f"unknown table {table!r}: no attached source has it "
                f"(known tables: {', '.join(every) or 'none'})"
            )
        if len(hits) > 1:
            cands = ", ".join(f"{t.source}.{t.name}" for t in hits)
            raise AmbiguousTableError(
                f"table name {table!r} is ambiguous: it exists in several sources ({cands}); "
                "qualify it as source.table"
            )
        return hits[0]
