"""Put Polars frames into real databases: the demo's ``--load-into``, the test suite's
placements and monolith, and the benchmark all load data through here.

- :func:`create_database` / :func:`drop_database` manage a database on a PostgreSQL or
  MariaDB server (idempotent; names are checked, never pasted unchecked).
- :func:`split_shards` / :func:`write_shards` split a frame into the shards of a sharded
  logical table by its rule (hash / range / list, see :mod:`fedlab.sql.shards`), so the
  rows are where ``fed.shard(...)`` will look for them.
- :func:`write_tables` (re)creates tables from frames with portable column types and
  bulk-loads them: PostgreSQL ``COPY``, MariaDB ``LOAD DATA LOCAL INFILE``, SQLite and
  DuckDB through their Python packages. MariaDB tables keep the server's default
  collation on purpose: that is the case-insensitive trap fedlab must survive.

>>> from fedlab.load import column_type
>>> import polars as pl
>>> column_type(pl.Decimal(10, 2), "postgresql"), column_type(pl.Datetime("us"), "mysql")
('NUMERIC(10, 2)', 'DATETIME(6)')
"""

from __future__ import annotations

import io
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from fedlab.errors import ConfigError
from fedlab.source import Source

__all__ = [
    "column_type",
    "create_database",
    "drop_database",
    "split_shards",
    "write_shards",
    "write_tables",
]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _check_ident(name: str, what: str) -> str:
    if not _IDENT.match(name or ""):
        raise ConfigError(f"{what} {name!r} is not a plain identifier (letters, digits, _)")
    return name


def column_type(dtype: pl.DataType, kind: str, *, max_len: int | None = None) -> str:
    """The column type a frame column gets on a database of ``kind``."""
    if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16):
        return "INTEGER"
    if dtype in (pl.Int64, pl.UInt32, pl.UInt64):
        return "BIGINT"
    if dtype in (pl.Float32, pl.Float64):
        return {"postgresql": "DOUBLE PRECISION", "sqlite": "REAL"}.get(kind, "DOUBLE")
    if isinstance(dtype, pl.Decimal):
        p, s = dtype.precision or 38, dtype.scale or 0
        return f"NUMERIC({p}, {s})" if kind == "postgresql" else f"DECIMAL({p}, {s})"
    if dtype == pl.Boolean:
        return "BOOLEAN"
    if dtype == pl.Date:
        return "DATE"
    if isinstance(dtype, pl.Datetime):
        return "DATETIME(6)" if kind == "mysql" else "TIMESTAMP"
    if dtype == pl.Time:
        return "TIME"
    # strings (and anything else, written as text)
    if kind == "mysql":
        return "VARCHAR(255)" if (max_len or 0) <= 255 else "TEXT"
    return "VARCHAR" if kind == "duckdb" else "TEXT"


def _server(url: str) -> Source:
    src = Source.from_url("server", url)
    if src.kind not in ("postgresql", "mysql"):
        raise ConfigError(
            f"{src.redacted_url}: databases are created on PostgreSQL or MariaDB servers only"
        )
    return src


def _with_database(src: Source, name: str) -> str:
    auth = src.user or ("postgres" if src.kind == "postgresql" else "root")
    if src._password:
        from urllib.parse import quote

        auth += ":" + quote(src._password, safe="")
    scheme = "postgresql" if src.kind == "postgresql" else "mysql"
    return f"{scheme}://{auth}@{src.host}:{src.port}/{name}"


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url`` if missing; return its URL."""
    _check_ident(name, "database name")
    src = _server(server_url)
    admin = Source.from_url(
        "server",
        _with_database(src, src.database or ("postgres" if src.kind == "postgresql" else "")),
    )
    con = admin.connect(read_only=False)
    try:
        cur = con.cursor()
        if src.kind == "postgresql":
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
        else:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        cur.close()
    finally:
        con.close()
    return _with_database(src, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` (and end its sessions) if it exists."""
    _check_ident(name, "database name")
    src = _server(server_url)
    admin = Source.from_url(
        "server", _with_database(src, "postgres" if src.kind == "postgresql" else "")
    )
    con = admin.connect(read_only=False)
    try:
        cur = con.cursor()
        if src.kind == "postgresql":
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cur.close()
    finally:
        con.close()


def _file_path(url: str) -> Path:
    rest = url.split("://", 1)[1]
    path = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel, sqlite:////abs
    if not path or path == ":memory:":
        raise ConfigError(f"{url!r}: give a file path to load into")
    return Path(path).expanduser().resolve()


def _ddl(table: str, df: pl.DataFrame, kind: str, pk: Sequence[str] | None) -> str:
    q = "`" if kind == "mysql" else '"'
    cols = []
    for name, dtype in df.schema.items():
        max_len = None
        if dtype == pl.String and kind == "mysql" and df.height:
            max_len = df.get_column(name).str.len_chars().max() or 0
        cols.append(f"{q}{name}{q} {column_type(dtype, kind, max_len=max_len)}")
    if pk:
        cols.append("PRIMARY KEY (" + ", ".join(f"{q}{c}{q}" for c in pk) + ")")
    suffix = " DEFAULT CHARSET=utf8mb4" if kind == "mysql" else ""
    return f"CREATE TABLE {q}{table}{q} (" + ", ".join(cols) + ")" + suffix


def _for_text(df: pl.DataFrame, kind: str) -> pl.DataFrame:
    """Columns converted to what the target's bulk loader reads back exactly."""
    exprs = []
    for name, dtype in df.schema.items():
        c = pl.col(name)
        if dtype == pl.Boolean and kind == "mysql":
            exprs.append(c.cast(pl.Int8))
        elif isinstance(dtype, pl.Datetime):
            exprs.append(c.dt.to_string("%Y-%m-%d %H:%M:%S%.6f"))
        else:
            exprs.append(c)
    return df.select(exprs)


def _load_postgresql(con, table: str, df: pl.DataFrame) -> None:
    buf = io.BytesIO()
    # quoted strings ("" is the empty string), unquoted empty field is NULL
    _for_text(df, "postgresql").write_csv(
        buf, include_header=False, quote_style="non_numeric", null_value=""
    )
    cols = ", ".join(f'"{c}"' for c in df.columns)
    with con.cursor() as cur, cur.copy(f'COPY "{table}" ({cols}) FROM STDIN (FORMAT csv)') as cp:
        cp.write(buf.getvalue())


def _load_mysql(con, table: str, df: pl.DataFrame) -> None:
    import tempfile

    out = _for_text(df, "mysql")
    with tempfile.NamedTemporaryFile(suffix=".csv", delete=True) as f:
        # ESCAPED BY '' makes an unquoted NULL the SQL NULL; strings are always quoted
        out.write_csv(f.name, include_header=False, quote_style="non_numeric", null_value="NULL")
        cols = ", ".join(f"`{c}`" for c in df.columns)
        with con.cursor() as cur:
            cur.execute(
                f"LOAD DATA LOCAL INFILE %s INTO TABLE `{table}` CHARACTER SET utf8mb4 "
                "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' "
                f"LINES TERMINATED BY '\\n' ({cols})",
                (f.name,),
            )
            warnings = cur.execute("SHOW WARNINGS") and cur.fetchall()
        if warnings:
            raise ConfigError(f"loading {table!r} into MariaDB gave warnings: {list(warnings)[:3]}")


def _py_rows(df: pl.DataFrame) -> list[tuple]:
    exprs = []
    for name, dtype in df.schema.items():
        c = pl.col(name)
        if isinstance(dtype, pl.Decimal):
            exprs.append(c.cast(pl.Float64))
        elif dtype == pl.Date:
            exprs.append(c.dt.to_string("%Y-%m-%d"))
        elif isinstance(dtype, pl.Datetime):
            exprs.append(c.dt.to_string("%Y-%m-%d %H:%M:%S"))
        elif dtype == pl.Boolean:
            exprs.append(c.cast(pl.Int8))
        else:
            exprs.append(c)
    return df.select(exprs).rows()


def write_tables(
    url: str,
    frames: Mapping[str, pl.DataFrame],
    *,
    primary_keys: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """(Re)create each table of ``frames`` in the database at ``url`` and fill it.

    SQLite and DuckDB files are created when missing (this is the one place fedlab
    creates a database file on purpose).
    """
    primary_keys = primary_keys or {}
    scheme = url.split("://", 1)[0].lower().split("+", 1)[0]
    for t in frames:
        _check_ident(t, "table name")
    if scheme == "sqlite":
        path = _file_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path)
        try:
            for t, df in frames.items():
                con.execute(f'DROP TABLE IF EXISTS "{t}"')
                con.execute(_ddl(t, df, "sqlite", primary_keys.get(t)))
                marks = ", ".join("?" for _ in df.columns)
                con.executemany(f'INSERT INTO "{t}" VALUES ({marks})', _py_rows(df))
            con.commit()
            con.execute("ANALYZE")
            con.commit()
        finally:
            con.close()
        return
    if scheme == "duckdb":
        import duckdb

        path = _file_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        con = duckdb.connect(str(path))
        try:
            for t, df in frames.items():
                con.execute(f'DROP TABLE IF EXISTS "{t}"')
                con.execute(_ddl(t, df, "duckdb", primary_keys.get(t)))
                con.register("_fedlab_frame", df.to_arrow())
                con.execute(f'INSERT INTO "{t}" SELECT * FROM _fedlab_frame')
                con.unregister("_fedlab_frame")
        finally:
            con.close()
        return
    src = Source.from_url("target", url)
    if src.kind == "postgresql":
        con = src.connect(read_only=False)
        try:
            for t, df in frames.items():
                con.execute(f'DROP TABLE IF EXISTS "{t}"')
                con.execute(_ddl(t, df, "postgresql", primary_keys.get(t)))
                _load_postgresql(con, t, df)
                con.execute(f'ANALYZE "{t}"')
        finally:
            con.close()
        return
    if src.kind == "mysql":
        import pymysql

        con = pymysql.connect(
            host=src.host,
            port=src.port,
            user=src.user or "root",
            password=src._password or "",
            database=src.database,
            charset="utf8mb4",
            autocommit=True,
            local_infile=True,
            connect_timeout=src.options.connect_timeout,
        )
        try:
            for t, df in frames.items():
                with con.cursor() as cur:
                    cur.execute(f"DROP TABLE IF EXISTS `{t}`")
                    cur.execute(_ddl(t, df, "mysql", primary_keys.get(t)))
                _load_mysql(con, t, df)
                with con.cursor() as cur:
                    cur.execute(f"ANALYZE TABLE `{t}`")
                    cur.fetchall()
        finally:
            con.close()
        return
    raise ConfigError(f"cannot load into {src.redacted_url}")  # pragma: no cover


def split_shards(
    frame: pl.DataFrame,
    key: str,
    method: str,
    shards: Sequence[str],
    *,
    bounds: Mapping[str, tuple] | None = None,
    values: Mapping[str, object] | None = None,
) -> dict[str, pl.DataFrame]:
    """Split ``frame`` into one frame per shard by the shard rule on column ``key``.

    ``shards`` are the shard names in declaration order (the hash rule numbers them
    so); ``bounds`` / ``values`` as for ``fed.shard``. Every row lands in exactly one
    shard; a key no shard may hold (outside every range, not listed) is an error.

    >>> import polars as pl
    >>> parts = split_shards(pl.DataFrame({"id": [1, 2, 3, 4]}), "id", "hash", ["a", "b"])
    >>> {k: v["id"].to_list() for k, v in parts.items()}
    {'a': [2, 4], 'b': [1, 3]}
    """
    from fedlab.errors import ShardError
    from fedlab.sql.shards import check_bounds, check_values, shard_index

    names = list(shards)
    if not names:
        raise ShardError("split_shards: give at least one shard name")
    if key not in frame.columns:
        raise ShardError(f"split_shards: the frame has no key column {key!r}")
    ranges = lists = None
    if method == "range":
        checked = check_bounds("frame", names, bounds)
        ranges = [checked[n] for n in names]
    elif method == "list":
        checked_v = check_values("frame", names, values or {})
        lists = [checked_v[n] for n in names]
    index = [
        shard_index(v, method, len(names), ranges=ranges, lists=lists)
        for v in frame.get_column(key).to_list()
    ]
    homeless = sorted(
        {repr(v) for v, i in zip(frame[key].to_list(), index, strict=True) if i is None}
    )
    if homeless:
        raise ShardError(
            f"split_shards: no shard may hold key value(s) {', '.join(homeless[:5])} "
            f"of column {key!r} ({method} rule)"
        )
    tagged = frame.with_columns(pl.Series("__fl_shard", index, dtype=pl.Int64))
    return {
        n: tagged.filter(pl.col("__fl_shard") == i).drop("__fl_shard") for i, n in enumerate(names)
    }


def write_shards(
    frame: pl.DataFrame,
    name: str,
    key: str,
    method: str,
    targets: Mapping[str, str],
    *,
    bounds: Mapping[str, tuple] | None = None,
    values: Mapping[str, object] | None = None,
    primary_key: Sequence[str] | None = None,
    table: str | None = None,
) -> dict[str, pl.DataFrame]:
    """Split ``frame`` by the shard rule and write each part to its database.

    ``targets``: ``{shard_name: url}`` in declaration order; each part becomes table
    ``table`` (default ``name``) there. Returns the parts. Declare the same layout
    with ``fed.shard(name, key=key, method=method, shards=targets, ...)``.
    """
    parts = split_shards(frame, key, method, list(targets), bounds=bounds, values=values)
    physical = table or name
    for shard, url in targets.items():
        write_tables(
            url,
            {physical: parts[shard]},
            primary_keys={physical: list(primary_key)} if primary_key else None,
        )
    return parts
