"""Federation the database way: a PostgreSQL *hub* with foreign data wrappers.

The seed's "Database Views" federation, built for real from a :class:`~fedlab.Federation`:
one PostgreSQL database (the hub) gets, for every attached source, a schema of the same
name holding

- ``postgres_fdw`` foreign tables for PostgreSQL sources,
- ``mysql_fdw`` foreign tables for MariaDB / MySQL sources,
- plain tables *copied* from SQLite and DuckDB files (and REST endpoints), which no FDW
  here reaches (``copy_sqlite=False`` skips them, with a message),
- views ``logical.<name>`` (``UNION ALL`` of the shards) for sharded logical tables,

so that a query written for fedlab (``crm.users JOIN sales.orders``) runs on the hub
unchanged, and PostgreSQL's planner decides what each wrapper pushes to its source.

>>> import fedlab as fl
>>> hub = fl.fdw.setup(fed, hub="postgresql://postgres@127.0.0.1:5432/hub")  # doctest: +SKIP
>>> print(fl.fdw.ddl(fed))                                          # doctest: +SKIP
>>> hub.sql("SELECT u.name, o.total FROM crm.users u JOIN sales.orders o ON ...").df  # doctest: +SKIP
>>> print(hub.explain("SELECT ..."))                                # EXPLAIN (VERBOSE)  # doctest: +SKIP
>>> fed.compare(sql, strategies=("pushdown", "fdw"))                # doctest: +SKIP
>>> hub.teardown()                                                  # doctest: +SKIP

Credentials go into ``USER MAPPING`` options only. The DDL that :func:`ddl` returns, the
hub's repr, its messages and its errors show ``password '***'``; when :func:`setup` runs
the mapping, the password travels as a bound parameter (``set_config``) and is spliced in
server-side by a ``DO`` block, so it is not in any statement text either.

Beware: the wrappers push filters, sorts and aggregates to the sources, where they are
evaluated with *the source's* semantics. MariaDB's default collation is case- and
trailing-space-insensitive, so ``WHERE status = 'paid'`` through ``mysql_fdw`` also returns
``'PAID'`` and ``'paid '``; ``length()`` there counts bytes. fedlab answers as one
PostgreSQL database would; ``fed.compare(..., strategies=(..., "fdw"))`` shows the
difference in its ``same_result`` column (see ``docs/fdw.md``).
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl
from sqlglot import exp

from fedlab.errors import FdwError, FedlabError, NoFdwHubError
from fedlab.result import Trace, TraceEntry
from fedlab.security import redact
from fedlab.source import Source
from fedlab.sql.plan import Fragment, safe_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fedlab.federation import Federation

__all__ = ["FdwError", "FdwHub", "FdwPlan", "FdwResult", "NoFdwHubError", "ddl", "setup"]

#: fedlab source kinds copied into the hub (no wrapper used for them)
COPIED_KINDS = ("sqlite", "duckdb", "rest")
#: marks the schemas and servers fedlab made: only those are ever dropped
MARK = "created by fedlab.fdw"
#: default rows per round trip (postgres_fdw's own default is 100: far too few for scans)
DEFAULT_FETCH_SIZE = 10_000

# PostgreSQL's reserved key words (and the non-reserved ones that cannot name a table):
# such identifiers are quoted in the DDL, plain lower-case ones are not
_RESERVED = frozenset(
    re.findall(
        r"\w+",
        """all analyse analyze and any array as asc asymmetric authorization between binary both
    case cast check collate collation column concurrently constraint create cross
    current_catalog current_date current_role current_schema current_time current_timestamp
    current_user default deferrable desc distinct do else end except false fetch for foreign
    freeze from full grant group having ilike in initially inner intersect into is isnull join
    lateral leading left like limit localtime localtimestamp natural not notnull null offset
    on only or order outer overlaps placing primary references returning right select
    session_user similar some symmetric system_user table tablesample then to trailing true
    union unique user using variadic verbose when where window with""",
    )
)
_PLAIN = re.compile(r"^[a-z_][a-z0-9_]*$")


def _q(name: str) -> str:
    """An identifier for the hub's SQL: bare when it is plain lower case, else quoted."""
    if _PLAIN.match(name) and name not in _RESERVED and len(name) <= 63:
        return name
    return '"' + name.replace('"', '""') + '"'


def _lit(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _options(opts: Mapping[str, object]) -> str:
    return ", ".join(f"{k} {_lit(v)}" for k, v in opts.items())


# ---------------------------------------------------------------------------- layout
@dataclass
class _Step:
    """One step of the hub's setup: a SQL statement (as shown: secrets masked), a user
    mapping whose password is spliced in server-side, a copy of rows, or a comment."""

    kind: str  # "sql" | "mapping" | "copy" | "comment"
    text: str
    #: mapping steps: (server, options without the secret, secret option name, secret)
    mapping: tuple[str, dict[str, str], str, str] | None = field(default=None, repr=False)
    #: copy steps: (fedlab source, table, hub schema, hub table, column names)
    copy: tuple[str, str, str, str, list[str]] | None = None


@dataclass
class _Layout:
    schemas: dict[str, str] = field(default_factory=dict)  # fedlab source -> hub schema
    servers: dict[str, str] = field(default_factory=dict)  # fedlab source -> foreign server
    wrappers: dict[str, str] = field(default_factory=dict)  # fedlab source -> fdw name
    tables: dict[str, tuple[str, str]] = field(default_factory=dict)  # "src.t" -> (schema, t)
    skipped: dict[str, str] = field(default_factory=dict)  # fedlab source -> why
    messages: list[str] = field(default_factory=list)
    steps: list[_Step] = field(default_factory=list)

    def text(self) -> str:
        out: list[str] = []
        for s in self.steps:
            if s.kind in ("comment", "copy"):
                out.extend(f"-- {ln}" if ln else "" for ln in s.text.splitlines() or [""])
            else:
                out.append(s.text + ";")
        return redact("\n".join(out)) + "\n"


def _layout(
    fed: Federation,
    *,
    hub: Source | None,
    schema_prefix: str,
    copy_sqlite: bool,
    fetch_size: int | None,
    use_remote_estimate: bool,
) -> _Layout:
    cat = fed.catalog
    lay = _Layout()
    head = "fedlab.fdw: the federation as a PostgreSQL hub with foreign data wrappers"
    if hub is not None:
        head += f"\nhub: {hub.redacted_url}"
    lay.steps.append(_Step("comment", head))
    kinds = {s.kind for s in cat.sources.values()}
    if "postgresql" in kinds:
        lay.steps.append(_Step("sql", "CREATE EXTENSION IF NOT EXISTS postgres_fdw"))
    if "mysql" in kinds:
        lay.steps.append(_Step("sql", "CREATE EXTENSION IF NOT EXISTS mysql_fdw"))
    for name, src in cat.sources.items():
        schema = f"{schema_prefix}{name}"
        tables = sorted(cat.tables.get(name, {}))
        lay.steps.append(_Step("comment", ""))
        if src.kind in ("postgresql", "mysql"):
            _wrapped(lay, src, schema, tables, fetch_size, use_remote_estimate)
        elif src.kind in COPIED_KINDS:
            if not copy_sqlite:
                why = (
                    f"source {name!r} ({src.kind}) skipped: copy_sqlite=False and no foreign "
                    f"data wrapper reaches a {src.kind} source from the hub; queries reading "
                    f"{', '.join(f'{name}.{t}' for t in tables) or 'its tables'} cannot run there"
                )
                lay.skipped[name] = why
                lay.messages.append(why)
                lay.steps.append(_Step("comment", why))
                continue
            _copied(lay, fed, src, schema, tables)
        else:  # pragma: no cover - every kind is handled above
            why = f"source {name!r}: kind {src.kind!r} cannot be put on the hub"
            lay.skipped[name] = why
            lay.messages.append(why)
            lay.steps.append(_Step("comment", why))
    if cat.logical:
        _logical(lay, fed, f"{schema_prefix}logical")
    if getattr(fed, "_policy", None) is not None:
        lay.messages.append(
            "note: fed.policy(...) rules are fedlab's: the hub does not enforce them (its "
            "foreign tables read whole sources as the mapped users)"
        )
    return lay


def _wrapped(
    lay: _Layout,
    src: Source,
    schema: str,
    tables: list[str],
    fetch_size: int | None,
    use_remote_estimate: bool,
) -> None:
    server = f"fedlab_{schema}"
    pg = src.kind == "postgresql"
    fdw = "postgres_fdw" if pg else "mysql_fdw"
    lay.schemas[src.name], lay.servers[src.name], lay.wrappers[src.name] = schema, server, fdw
    lay.steps.append(_Step("comment", f"source {src.name} ({src.kind}, {src.redacted_url}): {fdw}"))
    opts: dict[str, str] = {"host": src.host or "127.0.0.1", "port": str(src.port)}
    tls = dict(src.tls_options)
    notes: list[str] = []
    if pg:
        opts["dbname"] = src.database or "postgres"
        for k in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            if tls.get(k):
                opts[k] = tls[k]
    else:
        for k in ("ssl_ca", "ssl_cert", "ssl_key"):
            if tls.get(k):
                opts[k] = tls[k]
        if src.wants_tls and not (tls.get("ssl_ca") or tls.get("ssl_cert")):
            notes.append(
                f"source {src.name!r} asks for TLS without a CA or certificate: mysql_fdw "
                "cannot require encryption without ssl_ca / ssl_cert"
            )
        # the hub's session speaks UTF-8: ask MariaDB for the same (4-byte characters too)
        opts["character_set"] = "utf8mb4"
    if use_remote_estimate and pg:
        opts["use_remote_estimate"] = "true"
    elif use_remote_estimate:
        # observed with mysql_fdw 2.8 on MariaDB 10.11: with use_remote_estimate every scan
        # is estimated at 1 row (MariaDB's EXPLAIN lacks MySQL's partitions / filtered
        # columns), which makes the hub's planner choose nested loops over whole tables
        notes.append(
            f"source {src.name!r}: use_remote_estimate is not set for mysql_fdw (on MariaDB "
            "it estimates every scan at 1 row); the hub assumes 1000 rows per table"
        )
    if fetch_size:
        opts["fetch_size"] = str(int(fetch_size))
    lay.steps.append(
        _Step("sql", f"DROP SERVER IF EXISTS {_q(server)} CASCADE"),
    )
    lay.steps.append(
        _Step(
            "sql",
            f"CREATE SERVER {_q(server)} FOREIGN DATA WRAPPER {fdw}\n"
            f"    OPTIONS ({_options(opts)})",
        )
    )
    lay.steps.append(_Step("sql", f"COMMENT ON SERVER {_q(server)} IS {_lit(MARK)}"))
    user_key = "user" if pg else "username"
    mapping = {user_key: src.user or ("postgres" if pg else "root")}
    shown = dict(mapping)
    secret_key, secret = "", ""
    if src._password:
        secret_key, secret = "password", src._password
        mapping["password"] = secret
        shown["password"] = "***"
    if pg and tls.get("sslpassword"):  # a second secret: the mapping holds it, masked too
        mapping["sslpassword"] = tls["sslpassword"]
        shown["sslpassword"] = "***"
    text = (
        f"CREATE USER MAPPING FOR CURRENT_USER SERVER {_q(server)}\n    OPTIONS ({_options(shown)})"
    )
    if secret or "sslpassword" in mapping:
        lay.steps.append(_Step("mapping", text, mapping=(server, mapping, secret_key, secret)))
    else:
        lay.steps.append(_Step("sql", text))
    lay.steps.append(_Step("sql", f"DROP SCHEMA IF EXISTS {_q(schema)} CASCADE"))
    lay.steps.append(_Step("sql", f"CREATE SCHEMA {_q(schema)}"))
    lay.steps.append(_Step("sql", f"COMMENT ON SCHEMA {_q(schema)} IS {_lit(MARK)}"))
    remote = "public" if pg else (src.database or "")
    if not tables:
        lay.steps.append(_Step("comment", f"source {src.name} has no tables: nothing to import"))
    else:
        limit = ", ".join(_q(t) for t in tables)
        lay.steps.append(
            _Step(
                "sql",
                f"IMPORT FOREIGN SCHEMA {_q(remote)} LIMIT TO ({limit})\n"
                f"    FROM SERVER {_q(server)} INTO {_q(schema)}",
            )
        )
    for t in tables:
        lay.tables[f"{src.name}.{t}"] = (schema, t)
    for n in notes:
        lay.messages.append(n)
        lay.steps.append(_Step("comment", n))


def _copied(lay: _Layout, fed: Federation, src: Source, schema: str, tables: list[str]) -> None:
    lay.schemas[src.name] = schema
    what = "a snapshot of the endpoint" if src.kind == "rest" else "a copy of the file's tables"
    lay.steps.append(
        _Step(
            "comment",
            f"source {src.name} ({src.kind}, {src.redacted_url}): no foreign data wrapper "
            f"here: {what},\nread through fedlab and COPYed into the hub (copy_sqlite=True); "
            "later changes to the source are not seen",
        )
    )
    lay.steps.append(_Step("sql", f"DROP SCHEMA IF EXISTS {_q(schema)} CASCADE"))
    lay.steps.append(_Step("sql", f"CREATE SCHEMA {_q(schema)}"))
    lay.steps.append(_Step("sql", f"COMMENT ON SCHEMA {_q(schema)} IS {_lit(MARK)}"))
    for t in tables:
        info = fed.catalog.tables[src.name][t]
        cols = [f"{_q(c.name)} {c.type.sql(dialect='postgres')}" for c in info.columns]
        if info.primary_key:
            cols.append("PRIMARY KEY (" + ", ".join(_q(c) for c in info.primary_key) + ")")
        target = f"{_q(schema)}.{_q(t)}"
        lay.steps.append(
            _Step("sql", f"CREATE TABLE {target} (\n    " + ",\n    ".join(cols) + "\n)")
        )
        names = [c.name for c in info.columns]
        lay.steps.append(
            _Step(
                "copy",
                f"COPY {target} FROM STDIN: the rows of {src.name}.{t}, read through fedlab",
                copy=(src.name, t, schema, t, names),
            )
        )
        lay.steps.append(_Step("sql", f"ANALYZE {target}"))
        lay.tables[f"{src.name}.{t}"] = (schema, t)


def _logical(lay: _Layout, fed: Federation, schema: str) -> None:
    lay.steps.append(_Step("comment", ""))
    lay.steps.append(
        _Step("comment", "sharded logical tables: one view per table, UNION ALL of its shards")
    )
    lay.steps.append(_Step("sql", f"DROP SCHEMA IF EXISTS {_q(schema)} CASCADE"))
    lay.steps.append(_Step("sql", f"CREATE SCHEMA {_q(schema)}"))
    lay.steps.append(_Step("sql", f"COMMENT ON SCHEMA {_q(schema)} IS {_lit(MARK)}"))
    lay.schemas["logical"] = schema
    for name, lt in fed.catalog.logical.items():
        missing = [
            s.describe() for s in lt.shards if f"{s.table.source}.{s.table.name}" not in lay.tables
        ]
        if missing:
            why = f"logical table {name!r} skipped: shard(s) {', '.join(missing)} not on the hub"
            lay.messages.append(why)
            lay.steps.append(_Step("comment", why))
            continue
        cols = ", ".join(_q(c.name) for c in lt.info.columns)
        parts = [
            f"SELECT {cols} FROM {_q(lay.tables[f'{s.table.source}.{s.table.name}'][0])}."
            f"{_q(s.table.name)}"
            for s in lt.shards
        ]
        lay.steps.append(
            _Step(
                "sql",
                f"CREATE VIEW {_q(schema)}.{_q(name)} AS\n    " + "\n    UNION ALL ".join(parts),
            )
        )
        lay.tables[f"logical.{name}"] = (schema, name)


# ---------------------------------------------------------------------------- public API
def ddl(
    fed: Federation,
    hub: str | None = None,
    *,
    schema_prefix: str = "",
    copy_sqlite: bool = True,
    fetch_size: int | None = DEFAULT_FETCH_SIZE,
    use_remote_estimate: bool = True,
) -> str:
    """The SQL :func:`setup` would run on the hub, as text (nothing is run or connected).

    Passwords show as ``'***'``; the rows of copied tables are a ``-- COPY`` comment.
    The arguments are :func:`setup`'s.
    """
    hub_src = _hub_source(hub) if hub is not None else None
    return _layout(
        fed,
        hub=hub_src,
        schema_prefix=_prefix(schema_prefix),
        copy_sqlite=copy_sqlite,
        fetch_size=fetch_size,
        use_remote_estimate=use_remote_estimate,
    ).text()


def setup(
    fed: Federation,
    hub: str,
    *,
    schema_prefix: str = "",
    copy_sqlite: bool = True,
    fetch_size: int | None = DEFAULT_FETCH_SIZE,
    use_remote_estimate: bool = True,
    verbose: bool = True,
) -> FdwHub:
    """Build the federation in the PostgreSQL database ``hub``; return the :class:`FdwHub`.

    One hub schema per fedlab source (``schema_prefix + source``): ``postgres_fdw`` foreign
    tables for PostgreSQL sources, ``mysql_fdw`` ones for MariaDB, copies of SQLite / DuckDB
    (and REST) tables when ``copy_sqlite`` (else they are skipped, with a message), and
    ``logical.<name>`` views over sharded tables. Runs in one transaction: on an error the
    hub is left as it was. Schemas or servers of the same names that fedlab did not make
    are never dropped (:class:`~fedlab.errors.FdwError`: choose another ``schema_prefix``).

    Args:
        fed: the federation whose sources and tables go on the hub.
        hub: URL of an existing PostgreSQL database (the user needs CREATE on it, and the
            right to create the extensions, or them already created).
        schema_prefix: prepended to every hub schema (and server) name.
        copy_sqlite: copy the tables of SQLite / DuckDB files (and REST endpoints) into the
            hub; False skips them.
        fetch_size: rows per round trip of each wrapper (postgres_fdw's default is 100;
            mysql_fdw's 100); None keeps the wrappers' defaults.
        use_remote_estimate: let the wrappers ask the sources for row estimates (an
            ``EXPLAIN`` on the source per planned scan) instead of guessing.
        verbose: print what was copied or skipped.

    The hub is stored as ``fed.fdw_hub`` (used by ``fed.compare(..., "fdw")``).
    """
    hub_src = _hub_source(hub)
    prefix = _prefix(schema_prefix)
    lay = _layout(
        fed,
        hub=hub_src,
        schema_prefix=prefix,
        copy_sqlite=copy_sqlite,
        fetch_size=fetch_size,
        use_remote_estimate=use_remote_estimate,
    )
    t0 = time.monotonic()
    con = hub_src.connect(read_only=False)
    copied: dict[str, int] = {}
    try:
        _check_ours(con, lay, prefix)
        with con.transaction():
            for step in lay.steps:
                _run_step(con, fed, step, copied, lay)
    except FedlabError:
        raise
    except Exception as e:
        raise FdwError(
            f"fdw setup on hub {hub_src.redacted_url} failed: {type(e).__name__}: {_pg_text(e)}"
        ) from None
    finally:
        con.close()
    hub_obj = FdwHub(
        fed,
        hub_src,
        layout=lay,
        schema_prefix=prefix,
        copied=copied,
        setup_s=time.monotonic() - t0,
        options={
            "copy_sqlite": copy_sqlite,
            "fetch_size": fetch_size,
            "use_remote_estimate": use_remote_estimate,
        },
    )
    fed.fdw_hub = hub_obj
    if verbose:
        for m in hub_obj.messages:
            print(f"fedlab.fdw: {m}")
    return hub_obj


def _hub_source(hub: str) -> Source:
    src = Source.from_url("hub", hub)
    if src.kind != "postgresql":
        raise FdwError(
            f"the FDW hub must be a PostgreSQL database, got a {src.kind} URL ({src.redacted_url})"
        )
    return src


def _prefix(prefix: str) -> str:
    if prefix and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", prefix):
        raise FdwError(f"schema_prefix {prefix!r} must be letters, digits and _")
    return prefix


def _pg_text(e: BaseException) -> str:
    return redact(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def _check_ours(con: Any, lay: _Layout, prefix: str) -> None:
    """Refuse to drop a schema or server that fedlab.fdw did not make."""
    schemas = set(lay.schemas.values())
    for (name,) in con.execute(
        "SELECT n.nspname FROM pg_namespace n WHERE n.nspname = ANY(%s) "
        "AND coalesce(obj_description(n.oid, 'pg_namespace'), '') <> %s",
        (sorted(schemas), MARK),
    ).fetchall():
        raise FdwError(
            f"the hub already has a schema {name!r} that fedlab.fdw did not create: it is "
            f"left alone; pass schema_prefix='fl_' (or another) to setup()"
        )
    servers = set(lay.servers.values())
    for (name,) in con.execute(
        "SELECT s.srvname FROM pg_foreign_server s WHERE s.srvname = ANY(%s) "
        "AND coalesce(obj_description(s.oid, 'pg_foreign_server'), '') <> %s",
        (sorted(servers), MARK),
    ).fetchall():
        raise FdwError(
            f"the hub already has a foreign server {name!r} that fedlab.fdw did not create: "
            "pass another schema_prefix to setup()"
        )


def _run_step(con: Any, fed: Federation, step: _Step, copied: dict[str, int], lay: _Layout) -> None:
    try:
        if step.kind == "sql":
            con.execute(step.text)
        elif step.kind == "mapping":
            assert step.mapping is not None
            server, opts, _, _ = step.mapping
            # the secrets go as bound parameters into transaction-local settings; a DO block
            # splices them server-side, so no statement text (pg_stat_activity, the server's
            # statement log) carries them
            parts = []
            for i, (k, v) in enumerate(opts.items()):
                con.execute("SELECT set_config(%s, %s, true)", (f"fedlab.fdw_opt{i}", v))
                parts.append(f"{k} %L")
            args = ", ".join(f"current_setting('fedlab.fdw_opt{i}')" for i in range(len(opts)))
            fmt = f"CREATE USER MAPPING FOR CURRENT_USER SERVER {_q(server)} OPTIONS ({', '.join(parts)})"
            con.execute(f"DO $fedlab$ BEGIN EXECUTE format({_lit(fmt)}, {args}); END $fedlab$")
            for i in range(len(opts)):
                con.execute("SELECT set_config(%s, '', true)", (f"fedlab.fdw_opt{i}",))
        elif step.kind == "copy":
            assert step.copy is not None
            source, table, schema, target, names = step.copy
            copied[f"{source}.{table}"] = _copy_rows(con, fed, source, table, schema, target, names)
            lay.messages.append(
                f"copied {source}.{table} ({fed.catalog.sources[source].kind}): "
                f"{copied[f'{source}.{table}']:,} rows into the hub as {schema}.{target}"
            )
    except FedlabError:
        raise
    except Exception as e:
        raise FdwError(
            f"fdw setup failed at: {step.text.splitlines()[0]} …: {type(e).__name__}: {_pg_text(e)}"
        ) from None


def _copy_rows(
    con: Any, fed: Federation, source: str, table: str, schema: str, target: str, names: list[str]
) -> int:
    cols = ", ".join(f'"{c}"' for c in names)
    res = fed.sql(f'SELECT {cols} FROM "{source}"."{table}"', strategy="pushdown")
    df = res.df
    df.columns = names
    out = []
    for name, dtype in df.schema.items():
        c = pl.col(name)
        if isinstance(dtype, pl.Datetime):
            out.append(c.dt.to_string("%Y-%m-%d %H:%M:%S%.6f"))
        elif dtype == pl.Object or isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
            out.append(c.cast(pl.String, strict=False))
        else:
            out.append(c)
    buf = io.BytesIO()
    df.select(out).write_csv(buf, include_header=False, quote_style="non_numeric", null_value="")
    with (
        con.cursor() as cur,
        cur.copy(f"COPY {_q(schema)}.{_q(target)} ({cols}) FROM STDIN (FORMAT csv)") as cp,
    ):
        cp.write(buf.getvalue())
    return df.height


# ---------------------------------------------------------------------------- results
@dataclass
class FdwPlan:
    """What the hub's planner did: its ``EXPLAIN (VERBOSE)`` and one Fragment per foreign
    scan (the SQL each wrapper sent to its source).

    Shaped like :class:`fedlab.Plan` where the views need it (``strategy``, ``fragments``,
    ``sources``, ``ordered``); ``str()`` is the hub's EXPLAIN text.
    """

    sql: str
    hub_sql: str
    explain: str
    fragments: list[Fragment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ordered: bool = False
    strategy: str = "fdw"
    output_columns: list[str] = field(default_factory=list)

    @property
    def sources(self) -> list[str]:
        return sorted({f.source for f in self.fragments})

    def pushed(self) -> pl.DataFrame:
        """One row per foreign scan: source, what it pushed, the remote SQL."""
        return pl.DataFrame(
            {
                "fragment": [f.id for f in self.fragments],
                "source": [f.source for f in self.fragments],
                "kind": [f.kind for f in self.fragments],
                "pushed": ["; ".join(f.pushed) for f in self.fragments],
                "remote_sql": [f.sql for f in self.fragments],
            },
            schema={
                "fragment": pl.String,
                "source": pl.String,
                "kind": pl.String,
                "pushed": pl.String,
                "remote_sql": pl.String,
            },
        )

    def __str__(self) -> str:
        head = (
            f"Plan [fdw]  PostgreSQL hub, {len(self.fragments)} foreign scan(s) on "
            f"{len(self.sources)} source(s)\nhub query: {self.hub_sql}\n"
        )
        notes = "".join(f"\n  - {n}" for n in self.notes)
        return redact(
            head + "EXPLAIN (VERBOSE):\n" + self.explain + (f"\nnotes:{notes}" if notes else "")
        )

    def __repr__(self) -> str:
        return f"<FdwPlan: {len(self.fragments)} foreign scan(s) on {', '.join(self.sources)}>"

    def _repr_html_(self) -> str:
        return (
            "<div class='fedlab-fdw-plan'><b>Plan</b> [fdw]: PostgreSQL hub, "
            f"{len(self.fragments)} foreign scan(s)"
            f"<pre style='font-size:12px;white-space:pre-wrap'>{safe_text(str(self))}</pre></div>"
        )


@dataclass
class FdwResult:
    """The hub's answer (``df``), its plan (:class:`FdwPlan`) and what it cost (``trace``).

    The trace has one entry per foreign scan (rows from ``EXPLAIN ANALYZE``; bytes
    estimated as rows × the planner's row width, see :attr:`bytes_basis`) and one for the
    result shipped from the hub to this process (its Arrow size).
    """

    df: pl.DataFrame
    plan: FdwPlan
    trace: Trace
    #: "estimate" (rows x plan width) or "unknown" (not measured)
    bytes_basis: str = "estimate"
    partial: bool = False
    missing_sources: list[str] = field(default_factory=list)

    @property
    def explain(self) -> str:
        """The hub's ``EXPLAIN (VERBOSE)`` text."""
        return self.plan.explain

    def plot(self, **kwargs: Any) -> Figure:
        from fedlab.viz import plot_trace

        kwargs.setdefault("title", "fdw hub")
        return plot_trace(self.trace, **kwargs)

    def to_pandas(self) -> Any:
        return self.df.to_pandas()

    def __len__(self) -> int:
        return self.df.height

    def __repr__(self) -> str:
        return f"{self.df!r}\n[fdw hub] {self.trace.summary()}"

    def _repr_html_(self) -> str:
        from fedlab.result import trace_html

        return (
            f"<div class='fedlab-fdw-result'>{self.df._repr_html_()}"
            f"<div>{self.df.height:,} row(s) in {self.trace.total_s * 1000:,.1f} ms on the FDW hub</div>"
            f"<details><summary>EXPLAIN (VERBOSE) on the hub</summary>"
            f"<pre style='font-size:12px;white-space:pre-wrap'>{safe_text(str(self.plan))}</pre>"
            f"</details>{trace_html(self.trace)}</div>"
        )


# ---------------------------------------------------------------------------- the hub
_PG_TYPES = {
    16: pl.Boolean,
    20: pl.Int64,
    21: pl.Int64,
    23: pl.Int64,
    700: pl.Float64,
    701: pl.Float64,
    25: pl.String,
    1042: pl.String,
    1043: pl.String,
    19: pl.String,
    1082: pl.Date,
    1114: pl.Datetime("us"),
}


class FdwHub:
    """A PostgreSQL hub built by :func:`setup`: run fedlab-style SQL on it, see its plans.

    Attributes:
        url: the hub's URL (password redacted).
        schemas: fedlab source -> hub schema.
        tables: ``source.table`` -> ``schema.table`` on the hub.
        skipped: fedlab source -> why it is not on the hub.
        copied: ``source.table`` -> rows copied into the hub.
        messages: what setup copied, skipped or noted.
        setup_s: seconds setup took (copies included).
    """

    def __init__(
        self,
        fed: Federation,
        hub: Source,
        *,
        layout: _Layout,
        schema_prefix: str,
        copied: dict[str, int],
        setup_s: float,
        options: dict[str, Any],
    ) -> None:
        self.fed = fed
        self._hub = hub
        self._layout = layout
        self.schema_prefix = schema_prefix
        self.schemas = dict(layout.schemas)
        self.servers = dict(layout.servers)
        self.tables = {k: f"{s}.{t}" for k, (s, t) in layout.tables.items()}
        self.skipped = dict(layout.skipped)
        self.copied = dict(copied)
        self.messages = list(layout.messages)
        self.setup_s = setup_s
        self.options = dict(options)
        self._con: Any = None
        self._closed = False

    @property
    def url(self) -> str:
        return self._hub.redacted_url

    def ddl(self) -> str:
        """The DDL this hub was built with (passwords masked)."""
        return self._layout.text()

    # -------------------------------------------------------------- translation
    def translate(self, sql: str, params: Mapping[str, Any] | None = None) -> str:
        """``sql`` (fedlab's names, ``:params``) as the hub's SQL: every table read becomes
        its ``schema.table`` on the hub, parameters become literals."""
        return self._translate(sql, params)[1]

    def _translate(
        self, sql: str, params: Mapping[str, Any] | None
    ) -> tuple[exp.Query, str, list[str]]:
        """(the parsed query, the hub's SQL, the ``source.table`` names read)."""
        from fedlab.sql.parse import parse_query

        tree = parse_query(sql, dialect=self.fed.dialect, params=params)
        keys = self._rewrite(tree)
        return tree, tree.sql(dialect="postgres"), keys

    def _rewrite(self, tree: exp.Expression) -> list[str]:
        cat = self.fed.catalog
        keys: list[str] = []
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        for table in list(tree.find_all(exp.Table)):
            if not table.name or table.args.get("catalog") is not None:
                continue
            db = table.db or None
            if db is None and table.name.lower() in ctes:
                continue
            if isinstance(table.this, exp.Func):  # a table function: leave it
                continue
            info = cat.resolve(table.name, db)
            source = "logical" if info.logical is not None else info.source
            key = f"{source}.{info.name}"
            if key not in self._layout.tables:
                why = self.skipped.get(source, "it was not put on the hub")
                raise FdwError(f"table {key} is not on the FDW hub {self.url}: {why}")
            keys.append(key)
            schema, name = self._layout.tables[key]
            table.set("db", exp.to_identifier(schema, quoted=_q(schema) != schema))
            table.set("this", exp.to_identifier(name, quoted=_q(name) != name))
        sources = set(cat.sources) | {"logical"}
        for col in tree.find_all(exp.Column):  # source.table.column references
            db = col.args.get("db")
            if db is not None and db.name in sources and db.name in self.schemas:
                col.set("db", exp.to_identifier(self.schemas[db.name]))
        return list(dict.fromkeys(keys))

    # -------------------------------------------------------------- running
    def _connection(self) -> Any:
        if self._closed:
            raise FdwError(f"the FDW hub {self.url} was torn down")
        if self._con is None or self._con.closed:
            # one session for every query: the wrappers keep their source connections per
            # session, so only the first query pays for connecting to each source
            self._con = self._hub.connect(read_only=True, application_name="fedlab:fdw")
        return self._con

    def _execute(self, sql: str, timeout: float | None = None) -> Any:
        con = self._connection()
        try:
            if timeout:
                con.execute(f"SET statement_timeout = {max(int(timeout * 1000), 1)}")
            return con.execute(sql)
        except Exception as e:
            from fedlab.errors import QueryTimeoutError

            text = _pg_text(e)
            if "statement timeout" in text:
                raise QueryTimeoutError(
                    f"the FDW hub query passed its {timeout} s timeout"
                ) from None
            raise FdwError(f"the FDW hub {self.url} failed: {type(e).__name__}: {text}") from None
        finally:
            if timeout:
                with contextlib.suppress(Exception):
                    con.execute("SET statement_timeout = 0")

    def explain(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        analyze: bool = False,
    ) -> str:
        """The hub's ``EXPLAIN (VERBOSE)`` of ``sql`` (``analyze=True`` runs it: actual rows
        and times). Each ``Foreign Scan`` shows the SQL its wrapper sends to the source
        (``Remote SQL`` for postgres_fdw, ``Remote query`` for mysql_fdw)."""
        hub_sql = self.translate(sql, params)
        opts = "ANALYZE, VERBOSE" if analyze else "VERBOSE"
        rows = self._execute(f"EXPLAIN ({opts}) {hub_sql}").fetchall()
        return redact("\n".join(r[0] for r in rows))

    def sql(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        measure: bool = True,
        timeout: float | None = None,
    ) -> FdwResult:
        """Run ``sql`` (fedlab's table names) on the hub; return an :class:`FdwResult`.

        The time is the wall clock of one plain run (the answer fetched into Polars).
        ``measure=True`` then runs it once more under ``EXPLAIN (ANALYZE, VERBOSE, FORMAT
        JSON)`` to count the rows each foreign scan moved, and asks ``EXPLAIN (VERBOSE)``
        for the plan text.
        """
        tree, hub_sql, keys = self._translate(sql, params)
        t0 = time.monotonic()
        cur = self._execute(hub_sql, timeout)
        rows = cur.fetchall()
        df = _frame(cur.description, rows)
        total = time.monotonic() - t0
        # the equality rule compares row order only when the outermost ORDER BY fixes it
        ordered = tree.args.get("order") is not None
        explain = self.explain(sql, params)
        plan = FdwPlan(
            sql=sql,
            hub_sql=hub_sql,
            explain=explain,
            ordered=ordered,
            output_columns=list(df.columns),
            notes=[
                f"{k} was copied into the hub at setup ({self.copied[k]:,} rows): read there, "
                "not from its source"
                for k in keys
                if k in self.copied
            ],
        )
        trace = Trace(total_s=total, result_rows=df.height)
        basis = "unknown"
        if measure:
            try:
                doc = self._execute(
                    f"EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) {hub_sql}", timeout
                ).fetchone()[0]
                self._measure(doc, plan, trace)
                basis = "estimate"
            except FedlabError as e:
                plan.notes.append(f"not measured: {e}")
        else:
            plan.fragments = _scans(self, _explain_json(self, hub_sql), analyzed=False)
        result_bytes = int(df.estimated_size())
        trace.entries.append(
            TraceEntry(
                fragment="result",
                source="hub",
                kind="postgresql",
                sql=hub_sql,
                start=max(total - 0.0, 0.0),
                end=total,
                rows=df.height,
                bytes=result_bytes,
                reader="hub -> client (psycopg)",
            )
        )
        return FdwResult(df, plan, trace, bytes_basis=basis)

    def _measure(self, doc: Any, plan: FdwPlan, trace: Trace) -> None:
        top = (json.loads(doc) if isinstance(doc, str) else doc)[0]
        plan.fragments = _scans(self, top, analyzed=True)
        for f in plan.fragments:
            width = getattr(f, "_width", 0)
            rows = f.actual_rows or 0
            start, end = getattr(f, "_times", (0.0, 0.0))
            trace.entries.append(
                TraceEntry(
                    fragment=f.id,
                    source=f.source,
                    kind=f.kind,
                    sql=f.sql,
                    start=start,
                    end=end,
                    rows=rows,
                    bytes=rows * width,
                    reader=f"{self.wrapper_of(f.source)} (bytes ≈ rows × plan width {width})",
                )
            )
        trace.planning_s = float(top.get("Planning Time", 0.0)) / 1000
        execution = float(top.get("Execution Time", 0.0)) / 1000
        fetch = sum(e.seconds for e in trace.entries)
        trace.fetch_s = min(fetch, execution)
        trace.residual_s = max(execution - trace.fetch_s, 0.0)
        trace.residual_start = trace.planning_s + trace.fetch_s

    def wrapper_of(self, source: str) -> str:
        """``postgres_fdw``, ``mysql_fdw``, or ``copy`` for a source on the hub."""
        return self._layout.wrappers.get(source, "copy")

    # -------------------------------------------------------------- life cycle
    def close(self) -> None:
        """Close the hub session (the foreign tables stay)."""
        if self._con is not None:
            try:
                self._con.close()
            finally:
                self._con = None

    def teardown(self) -> None:
        """Drop what :func:`setup` made on the hub (its schemas and foreign servers, with
        their user mappings); the extensions stay. ``fed.fdw_hub`` is cleared."""
        self.close()
        if self._closed:
            return
        con = self._hub.connect(read_only=False)
        try:
            with con.transaction():
                for schema in sorted(set(self.schemas.values())):
                    con.execute(f"DROP SCHEMA IF EXISTS {_q(schema)} CASCADE")
                for server in sorted(set(self.servers.values())):
                    con.execute(f"DROP SERVER IF EXISTS {_q(server)} CASCADE")
        except Exception as e:
            raise FdwError(f"teardown of the FDW hub {self.url} failed: {_pg_text(e)}") from None
        finally:
            con.close()
        self._closed = True
        if getattr(self.fed, "fdw_hub", None) is self:
            self.fed.fdw_hub = None

    def __enter__(self) -> FdwHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def __repr__(self) -> str:
        state = "torn down" if self._closed else f"{len(self.tables)} table(s)"
        skipped = f", skipped: {', '.join(self.skipped)}" if self.skipped else ""
        return f"<FdwHub {self.url}: {state}{skipped}>"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td>"
            f"<td>{html.escape(self.wrapper_of(k.split('.', 1)[0]))}</td></tr>"
            for k, v in self.tables.items()
        )
        notes = "".join(f"<li>{safe_text(m)}</li>" for m in self.messages)
        return (
            f"<div class='fedlab-fdw-hub'><b>FDW hub</b> {safe_text(self.url)}"
            f"<table><tr><th>fedlab</th><th>hub</th><th>via</th></tr>{rows}</table>"
            + (f"<ul>{notes}</ul>" if notes else "")
            + "</div>"
        )


def _explain_json(hub: FdwHub, hub_sql: str) -> dict[str, Any]:
    doc = hub._execute(f"EXPLAIN (VERBOSE, FORMAT JSON) {hub_sql}").fetchone()[0]
    return (json.loads(doc) if isinstance(doc, str) else doc)[0]


_PUSHED = (
    (re.compile(r"\bJOIN\b", re.I), "join"),
    (re.compile(r"\bWHERE\b", re.I), "filter"),
    (re.compile(r"\b(count|sum|avg|min|max)\s*\(", re.I), "aggregate"),
    (re.compile(r"\bGROUP BY\b", re.I), "group by"),
    (re.compile(r"\bORDER BY\b", re.I), "sort"),
    (re.compile(r"\bLIMIT\b", re.I), "limit"),
)


def _scans(hub: FdwHub, top: dict[str, Any], *, analyzed: bool) -> list[Fragment]:
    """One Fragment per ``Foreign Scan`` node of an EXPLAIN (FORMAT JSON) plan."""
    by_schema = {schema: src for src, schema in hub.schemas.items()}
    # mysql_fdw names pushed joins and aggregates by the remote database ("Aggregate on
    # (shop.orders)"): map those too, after the hub's own schema names
    for src, wrapper in hub._layout.wrappers.items():
        db = hub.fed.catalog.sources[src].database
        if wrapper == "mysql_fdw" and db:
            by_schema.setdefault(db, src)
    out: list[Fragment] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Node Type") == "Foreign Scan":
            remote = str(node.get("Remote SQL") or node.get("Remote query") or "")
            schema = node.get("Schema")
            rel = str(node.get("Relations") or "")
            if not schema:
                m = re.search(r"\(?([A-Za-z_][\w$]*|\"[^\"]+\")\.", rel)
                schema = m.group(1).strip('"') if m else ""
            source = by_schema.get(schema, schema or "?")
            kind = hub.fed.catalog.sources[source].kind if source in hub.fed.catalog.sources else ""
            tables = (
                [f"{source}.{node['Relation Name']}"]
                if node.get("Relation Name")
                else re.findall(r"[\w$]+\.[\w$]+", rel)
            )
            pushed = [label for rx, label in _PUSHED if rx.search(remote)]
            if node.get("Operation") not in (None, "Select"):
                pushed.append(str(node["Operation"]).lower())
            loops = int(node.get("Actual Loops", 1) or 1)
            frag = Fragment(
                id=f"fs{len(out) + 1}",
                source=source,
                kind=kind,
                sql=remote,
                columns=[],
                tables=tables,
                pushed=pushed or ["projection"],
                role="foreign scan",
                estimated_rows=int(node.get("Plan Rows", 0)),
                actual_rows=int(node.get("Actual Rows", 0)) * loops if analyzed else None,
            )
            frag._width = int(node.get("Plan Width", 0))  # type: ignore[attr-defined]
            # per-loop averages in ms: a scan run `loops` times (the inner side of a nested
            # loop) spent about total x loops
            start = float(node.get("Actual Startup Time", 0.0)) / 1000
            end = float(node.get("Actual Total Time", 0.0)) / 1000 * loops
            frag._times = (start, max(end, start))  # type: ignore[attr-defined]
            out.append(frag)
        for child in node.get("Plans", []) or []:
            walk(child)

    walk(top.get("Plan", top))
    return out


def _frame(description: Any, rows: list[tuple]) -> pl.DataFrame:
    names: list[str] = []
    for d in description or []:
        n, i = d.name, 1
        while n in names:  # duplicate output names: id, id_1 …
            n, i = f"{d.name}_{i}", i + 1
        names.append(n)
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    series = []
    for i, name in enumerate(names):
        dtype = _PG_TYPES.get(description[i].type_code)
        values = list(cols[i])
        if dtype is None and not values:
            dtype = pl.Decimal(38, 10) if description[i].type_code == 1700 else pl.String
        series.append(pl.Series(name, values, dtype=dtype, strict=False))
    return pl.DataFrame(series)
