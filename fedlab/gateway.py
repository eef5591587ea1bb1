"""A GraphQL gateway over the federation: the seed's "GraphQL Federation" example, for real.

The schema is built from the catalog: one object type per table (sharded logical tables
included), one field per column, two root fields per table (one row by primary key, a
list with equality filters and ``limit``/``offset``), and relation fields both ways from
declared or inferred foreign keys. Every resolver is answered by ``fed.sql(...)`` with
bound parameters, and child lookups are batched per request (one query with ``IN`` for
all parents instead of one per parent: the N+1 problem)::

    >>> gw = Gateway(fed)                                          # doctest: +SKIP
    >>> out = gw.execute("{ user(id: 35) { name orders { total } } }")  # doctest: +SKIP
    >>> out["extensions"]["fedlab"]["queries"]                     # doctest: +SKIP
    2

Serving: :func:`app` (a starlette app: ``POST /graphql``, ``GET /graphql``), :func:`serve`
(uvicorn in a background thread, for notebooks and tests) and ``fedlab serve --graphql``
(:func:`main`). See docs/graphql.md for the mapping rules.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import html
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLArgument,
    GraphQLBoolean,
    GraphQLError,
    GraphQLField,
    GraphQLFloat,
    GraphQLInt,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLResolveInfo,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    InlineFragmentNode,
    IntValueNode,
    SelectionSetNode,
    StringValueNode,
    graphql,
    print_schema,
)
from sqlglot import exp

from fedlab.catalog import LOGICAL_SOURCE, TableInfo, type_family
from fedlab.errors import ConfigError, FedlabError, SourceUnavailableError
from fedlab.federation import Federation
from fedlab.security import redact

__all__ = [
    "Gateway",
    "GatewayError",
    "GatewayServer",
    "Relation",
    "app",
    "main",
    "serve",
]

log = logging.getLogger("fedlab.gateway")


class GatewayError(ConfigError):
    """The GraphQL gateway cannot be built or served as asked (a bad relation, a name
    clash, a port in use)."""


# --------------------------------------------------------------------------- scalars
#: the largest integer a JavaScript client reads exactly (2**53 - 1)
MAX_SAFE_INTEGER = 2**53 - 1


def _int_in(value: Any) -> int:
    if isinstance(value, bool):
        raise GraphQLError(f"BigInt cannot represent a boolean: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        return int(value)
    raise GraphQLError(f"BigInt cannot represent {value!r}: give an integer or a string of digits")


def _bigint_out(value: Any) -> int | str:
    v = _int_in(value if not isinstance(value, Decimal) else int(value))
    return v if -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER else str(v)


def _bigint_literal(node: Any, _variables: Any = None) -> int:
    if isinstance(node, IntValueNode | StringValueNode):
        return _int_in(node.value)
    raise GraphQLError("BigInt: expected an integer or a string of digits")


BigInt = GraphQLScalarType(
    "BigInt",
    serialize=_bigint_out,
    parse_value=_int_in,
    parse_literal=_bigint_literal,
    description=(
        "A 64-bit integer (BIGINT, and every SQLite INTEGER). Sent as a JSON number while "
        "it is exact in a JavaScript double (|n| <= 2^53-1), else as a string of digits. "
        "Accepts an integer or a string of digits."
    ),
)


def _date_in(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise GraphQLError(f"Date: expected an ISO date 'YYYY-MM-DD', got {value!r}")


def _datetime_in(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise GraphQLError(f"DateTime: expected an ISO timestamp 'YYYY-MM-DDTHH:MM:SS', got {value!r}")


def _iso_out(value: Any) -> str:
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    return str(value)


def _string_literal(parse: Callable[[Any], Any]) -> Callable[..., Any]:
    def literal(node: Any, _variables: Any = None) -> Any:
        if isinstance(node, StringValueNode):
            return parse(node.value)
        raise GraphQLError("expected an ISO string")

    return literal


Date = GraphQLScalarType(
    "Date",
    serialize=_iso_out,
    parse_value=_date_in,
    parse_literal=_string_literal(_date_in),
    description="A calendar date as an ISO string, 'YYYY-MM-DD'.",
)
DateTime = GraphQLScalarType(
    "DateTime",
    serialize=_iso_out,
    parse_value=_datetime_in,
    parse_literal=_string_literal(_datetime_in),
    description=(
        "A timestamp as an ISO string, 'YYYY-MM-DDTHH:MM:SS[.ffffff]' (without a time zone, "
        "compared as written, like fedlab's SQL)."
    ),
)

_T = exp.DataType.Type
_INT32 = {_T.TINYINT, _T.UTINYINT, _T.SMALLINT, _T.USMALLINT, _T.MEDIUMINT, _T.UMEDIUMINT, _T.INT}


def scalar_for(column_type: exp.DataType) -> GraphQLScalarType:
    """The GraphQL scalar of a column type (see docs/graphql.md, "Types")."""
    t = column_type.this
    if t in _INT32:
        return GraphQLInt
    if t in exp.DataType.INTEGER_TYPES:
        return BigInt
    if t in exp.DataType.REAL_TYPES:  # DOUBLE, FLOAT, DECIMAL (fedlab's decimals are float64)
        return GraphQLFloat
    if t == _T.BOOLEAN:
        return GraphQLBoolean
    if t == _T.DATE:
        return Date
    if t in (_T.TIMESTAMP, _T.DATETIME, _T.TIMESTAMPNTZ, _T.DATETIME2, _T.SMALLDATETIME):
        return DateTime
    return GraphQLString  # text, and anything else as its string form


def _plain(value: Any) -> Any:
    """A fetched value as the scalars serialize it (decimals as floats, bytes as base64)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# --------------------------------------------------------------------------- names
_NAME_OK = re.compile(r"[_A-Za-z][_0-9A-Za-z]*")
_RESERVED_TYPES = {"Query", "Mutation", "Subscription", "String", "Int", "Float", "Boolean"}
_RESERVED_TYPES |= {"ID", "BigInt", "Date", "DateTime"}
#: list-field arguments that are not column filters
_LIST_ARGS = ("limit", "offset")


def graphql_name(name: str) -> str:
    """``name`` made a valid GraphQL name: other characters become ``_``, a leading digit
    gets a ``_`` before it, a leading ``__`` (reserved for introspection) an ``f``."""
    out = re.sub(r"[^_0-9A-Za-z]", "_", name) or "_"
    if out[0].isdigit():
        out = "_" + out
    if out.startswith("__"):
        out = "f" + out
    return out


def singular(name: str) -> str:
    """English singular of a table name, by suffix: ``categories`` → ``category``,
    ``boxes``/``addresses`` → ``box``/``address``, ``users`` → ``user``; names ending in
    ``ss``, ``us`` or ``is`` (and names without a final ``s``) are kept."""
    low = name.lower()
    if low.endswith("ies") and len(name) > 3:
        return name[:-3] + ("Y" if name[-3].isupper() else "y")
    if low.endswith(("sses", "xes", "ches", "shes", "zes", "uses")):
        return name[:-2]
    if low.endswith("s") and not low.endswith(("ss", "us", "is")) and len(name) > 1:
        return name[:-1]
    return name


def _pascal(name: str) -> str:
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", name) if p]
    out = "".join(p[:1].upper() + p[1:] for p in parts) or "T"
    return "_" + out if out[0].isdigit() else out


# --------------------------------------------------------------------------- model
@dataclasses.dataclass
class _Column:
    name: str  # in the database
    field: str  # in GraphQL
    scalar: GraphQLScalarType
    nullable: bool
    family: str


@dataclasses.dataclass(eq=False)
class _Table:
    source: str
    name: str
    info: TableInfo
    type_name: str
    one_field: str | None  # root field: one row by primary key
    list_field: str  # root field: a list; also the name of reverse relation fields
    columns: list[_Column]
    key: list[str]  # primary key columns (database names)
    type: GraphQLObjectType | None = None
    relations: dict[str, tuple[Relation, bool]] = dataclasses.field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.source}.{self.name}"

    def sql_name(self) -> str:
        return f"{_q(self.source)}.{_q(self.name)}"

    def column(self, name: str) -> _Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        folded = [c for c in self.columns if c.name.lower() == name.lower()]
        return folded[0] if len(folded) == 1 else None

    def by_field(self) -> dict[str, _Column]:
        return {c.field: c for c in self.columns}

    def field_of(self, column: str) -> str:
        c = self.column(column)
        return c.field if c is not None else column


@dataclasses.dataclass(frozen=True)
class Relation:
    """A foreign key the schema exposes: ``child.column`` references ``parent.key``.

    ``parent_field`` is the field on the child's type that gives the parent row
    (``Order.user``); ``children_field`` the field on the parent's type that lists the
    children (``User.orders``). ``how`` is ``declared`` or ``inferred``.
    """

    child: str  # source.table
    column: str
    parent: str  # source.table
    key: str
    how: str
    parent_field: str = ""
    children_field: str = ""

    def __str__(self) -> str:
        return f"{self.child}.{self.column} -> {self.parent}.{self.key} ({self.how})"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- per request
@dataclasses.dataclass
class QueryRecord:
    """One ``fed.sql`` the gateway ran for a request (the ``extensions.fedlab.log`` items)."""

    field: str
    sql: str
    params: dict[str, Any]
    keys: int
    seconds: float  # fed.sql's own time (in its worker thread)
    queued: float  # waiting for a worker thread first
    rows: int
    moved_rows: int
    bytes: int
    fragments: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "sql": self.sql,
            "params": {k: _jsonable(v) for k, v in self.params.items()},
            "keys": self.keys,
            "seconds": round(self.seconds, 6),
            "queued_s": round(self.queued, 6),
            "rows": self.rows,
            "moved_rows": self.moved_rows,
            "bytes": self.bytes,
            "fragments": self.fragments,
        }


class _Loader:
    """A per-request batch of lookups by key (the DataLoader pattern).

    ``load(key)`` returns a future; the keys asked for while the executor walks one level
    of the query are sent as one ``fed.sql`` (``WHERE key IN (...)``) once no new key has
    arrived for a loop iteration; the rows are split by key. Without batching each key
    is its own query at once (the N+1 behaviour, for comparison).
    """

    def __init__(
        self,
        ctx: _Request,
        table: _Table,
        key: tuple[str, ...],
        columns: tuple[str, ...],
        filters: tuple[tuple[str, Any], ...],
        many: bool,
        label: str,
    ) -> None:
        self.ctx, self.table, self.key, self.many, self.label = ctx, table, key, many, label
        self.columns = tuple(dict.fromkeys(key + columns))
        self.filters = filters
        self.results: dict[tuple, asyncio.Future] = {}
        self.pending: list[tuple] = []
        self._scheduled = False
        self._seen = -1

    def load(self, key: tuple) -> asyncio.Future:
        fut = self.results.get(key)
        if fut is not None:
            return fut
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.results[key] = fut
        if not self.ctx.batching:
            self.ctx.spawn(self._fetch([key]))
            return fut
        self.pending.append(key)
        if not self._scheduled:
            self._scheduled = True
            self._seen = -1
            loop.call_soon(self._tick)
        return fut

    def _tick(self) -> None:
        # wait until a whole loop iteration passes without a new key: sibling branches of
        # the query reach this loader at slightly different moments
        if len(self.pending) != self._seen:
            self._seen = len(self.pending)
            asyncio.get_running_loop().call_soon(self._tick)
            return
        keys, self.pending, self._scheduled = self.pending, [], False
        size = self.ctx.gateway.batch_size
        for i in range(0, len(keys), size):
            self.ctx.spawn(self._fetch(keys[i : i + size]))

    async def _fetch(self, keys: list[tuple]) -> None:
        try:
            rows = await self.ctx.run(self._sql(keys), self._params(keys), self.label, len(keys))
        except BaseException as e:
            for k in keys:
                if not self.results[k].done():
                    self.results[k].set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        found: dict[tuple, list[dict[str, Any]]] = {}
        for row in rows:
            found.setdefault(tuple(row[c] for c in self.key), []).append(row)
        for k in keys:
            got = found.get(k, [])
            if not self.results[k].done():
                self.results[k].set_result(got if self.many else (got[0] if got else None))

    def _where(self, keys: list[tuple]) -> list[str]:
        t = "t"
        conds = []
        if len(self.key) == 1:
            conds.append(f"{t}.{_q(self.key[0])} IN (:k)")
        else:
            ors = []
            for i in range(len(keys)):
                ands = " AND ".join(f"{t}.{_q(c)} = :k{i}_{j}" for j, c in enumerate(self.key))
                ors.append(f"({ands})")
            conds.append("(" + " OR ".join(ors) + ")")
        conds += _filter_sql(self.filters)
        return conds

    def _sql(self, keys: list[tuple]) -> str:
        cols = ", ".join(f"t.{_q(c)}" for c in self.columns)
        order = _order_sql(self.table)
        return (
            f"SELECT {cols} FROM {self.table.sql_name()} AS t "
            f"WHERE {' AND '.join(self._where(keys))}{order}"
        )

    def _params(self, keys: list[tuple]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if len(self.key) == 1:
            params["k"] = [k[0] for k in keys]
        else:
            for i, k in enumerate(keys):
                for j, v in enumerate(k):
                    params[f"k{i}_{j}"] = v
        params.update(_filter_params(self.filters))
        return params


def _filter_sql(filters: Iterable[tuple[str, Any]]) -> list[str]:
    return [
        f"t.{_q(c)} IS NULL" if v is None else f"t.{_q(c)} = :f{i}"
        for i, (c, v) in enumerate(filters)
    ]


def _filter_params(filters: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    return {f"f{i}": v for i, (_c, v) in enumerate(filters) if v is not None}


def _order_sql(table: _Table) -> str:
    cols = table.key or [c.name for c in table.columns if c.family != "unknown"]
    return (" ORDER BY " + ", ".join(f"t.{_q(c)}" for c in cols)) if cols else ""


class _Request:
    """What one GraphQL request shares: its loaders and the log of queries it ran."""

    def __init__(self, gateway: Gateway, batching: bool) -> None:
        self.gateway = gateway
        self.batching = batching
        self.loaders: dict[tuple, _Loader] = {}
        self.queries: list[QueryRecord] = []
        self.tasks: set[asyncio.Task] = set()
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def loader(
        self,
        table: _Table,
        key: tuple[str, ...],
        columns: tuple[str, ...],
        filters: tuple[tuple[str, Any], ...],
        many: bool,
        label: str,
    ) -> _Loader:
        ident = (id(table), key, columns, filters, many)
        found = self.loaders.get(ident)
        if found is None:
            found = self.loaders[ident] = _Loader(self, table, key, columns, filters, many, label)
        return found

    async def run(
        self, sql: str, params: dict[str, Any], label: str, keys: int = 0
    ) -> list[dict[str, Any]]:
        """``fed.sql(sql, params)`` in a worker thread; logged; rows as dicts."""
        fed = self.gateway.fed
        asked = time.monotonic()
        began: list[float] = []

        def timed() -> Any:
            began.append(time.monotonic())
            return fed.sql(sql, params)

        res = await asyncio.to_thread(timed)
        done = time.monotonic()
        seconds, queued = done - began[0], began[0] - asked
        tr = res.trace
        record = QueryRecord(
            field=label,
            sql=sql,
            params=params,
            keys=keys,
            seconds=seconds,
            queued=queued,
            rows=res.df.height,
            moved_rows=tr.rows,
            bytes=tr.bytes,
            fragments=[
                {
                    "source": e.source,
                    "sql": e.sql,
                    "rows": e.rows,
                    "bytes": e.bytes,
                    "seconds": round(e.seconds, 6),
                    "cache_hit": e.cache_hit,
                }
                for e in tr.fragments
            ],
        )
        with self._lock:
            self.queries.append(record)
        return [{k: _plain(v) for k, v in row.items()} for row in res.df.to_dicts()]

    def extension(self) -> dict[str, Any]:
        return {
            "batching": self.batching,
            "queries": len(self.queries),
            "seconds": round(sum(q.seconds for q in self.queries), 6),
            "elapsed_s": round(time.monotonic() - self.started, 6),
            "rows": sum(q.rows for q in self.queries),
            "moved_rows": sum(q.moved_rows for q in self.queries),
            "bytes": sum(q.bytes for q in self.queries),
            "log": [q.to_json() for q in self.queries],
        }


# --------------------------------------------------------------------------- selections
def _selected_fields(info: GraphQLResolveInfo) -> set[str]:
    """Names of the fields requested under the resolved field (fragments followed)."""
    names: set[str] = set()

    def walk(selection_set: SelectionSetNode | None) -> None:
        if selection_set is None:
            return
        for sel in selection_set.selections:
            if isinstance(sel, FieldNode):
                names.add(sel.name.value)
            elif isinstance(sel, InlineFragmentNode):
                walk(sel.selection_set)
            elif isinstance(sel, FragmentSpreadNode):
                frag = info.fragments.get(sel.name.value)
                if frag is not None:
                    walk(frag.selection_set)

    for node in info.field_nodes:
        walk(node.selection_set)
    return names


def _needed_columns(table: _Table, info: GraphQLResolveInfo) -> tuple[str, ...]:
    """The columns a selection needs: its scalar fields and the keys of its relations."""
    wanted = _selected_fields(info)
    by_field = table.by_field()
    cols: list[str] = []
    for name in sorted(wanted):
        if name in by_field:
            cols.append(by_field[name].name)
        elif name in table.relations:
            rel, forward = table.relations[name]
            cols.append(rel.column if forward else rel.key)
    if not cols:  # only __typename: still fetch the key, so rows exist
        cols = list(table.key or [table.columns[0].name])
    return tuple(dict.fromkeys(cols))


# --------------------------------------------------------------------------- the gateway
class Gateway:
    """The catalog of ``fed`` as a GraphQL schema, with resolvers that run ``fed.sql``.

    Args:
        fed: the federation.
        relations: declared foreign keys, ``("sales.orders.user_id", "crm.users.id")``
            (child column, referenced column; ``table.column`` when the table name is
            unique).
        infer_relations: also infer relations by name (``orders.user_id`` →
            ``users.id``; see docs/graphql.md).
        batching: batch child lookups per request (default); ``False`` runs one query per
            parent (the N+1 pattern), for comparison. :meth:`execute` can override it.
        batch_size: keys per batched query at most (more keys: several queries).
        max_limit: largest ``limit`` a list field accepts (None: no cap).
        tables: only these tables (``source.table`` names); default: all.
    """

    def __init__(
        self,
        fed: Federation,
        *,
        relations: Sequence[tuple[str, str]] = (),
        infer_relations: bool = True,
        batching: bool = True,
        batch_size: int = 1000,
        max_limit: int | None = None,
        tables: Sequence[str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise GatewayError(f"batch_size must be at least 1, got {batch_size}")
        if max_limit is not None and max_limit < 1:
            raise GatewayError(f"max_limit must be at least 1 or None, got {max_limit}")
        self.fed = fed
        self.batching = batching
        self.batch_size = batch_size
        self.max_limit = max_limit
        self._declared = list(relations)
        self._infer = infer_relations
        self._only = list(tables) if tables is not None else None
        self.refresh()

    # ------------------------------------------------------------------ schema
    def refresh(self) -> None:
        """Rebuild the schema from the catalog (after ``fed.attach``/``fed.shard``)."""
        self._tables = self._collect_tables()
        self.relations: list[Relation] = self._relations()
        self.schema: GraphQLSchema = self._build_schema()

    def _collect_tables(self) -> list[_Table]:
        cat = self.fed.catalog
        infos: list[TableInfo] = []
        shards = {p for lt in cat.logical.values() for p in lt.physical()}
        for source in sorted(cat.tables):
            for name in sorted(cat.tables[source]):
                if (source, name) not in shards:
                    infos.append(cat.tables[source][name])
        infos += [cat.logical[n].info for n in sorted(cat.logical)]
        if self._only is not None:
            want = set(self._only)
            picked = [
                i for i in infos if f"{self._source_of(i)}.{i.name}" in want or i.name in want
            ]
            unknown = (
                want - {f"{self._source_of(i)}.{i.name}" for i in picked} - {i.name for i in picked}
            )
            if unknown:
                raise GatewayError(f"tables= names unknown tables: {', '.join(sorted(unknown))}")
            infos = picked
        counts: dict[str, int] = {}
        for i in infos:
            counts[i.name.lower()] = counts.get(i.name.lower(), 0) + 1
        tables: list[_Table] = []
        used_types: set[str] = set(_RESERVED_TYPES)
        used_fields: set[str] = set()
        for info in infos:
            source = self._source_of(info)
            base = graphql_name(info.name)
            if counts[info.name.lower()] > 1:
                base = f"{graphql_name(source)}_{base}"
            one = singular(base)
            type_name = _pascal(one)
            if type_name in used_types:
                type_name = _pascal(f"{source}_{one}")
            while type_name in used_types:
                type_name += "_"
            used_types.add(type_name)
            list_field = base if base != one else f"{base}List"
            one_field: str | None = one
            if list_field in used_fields or one in used_fields:
                raise GatewayError(
                    f"table {source}.{info.name}: its GraphQL fields {one!r}/{list_field!r} "
                    "clash with another table's; pass tables= to leave one out"
                )
            used_fields |= {list_field, one}
            columns: list[_Column] = []
            seen: set[str] = set()
            for c in info.columns:
                field = graphql_name(c.name)
                if field in seen or field in _LIST_ARGS:
                    log.warning(
                        "gateway: column %s.%s.%s left out (its GraphQL name %r is taken)",
                        source,
                        info.name,
                        c.name,
                        field,
                    )
                    continue
                seen.add(field)
                columns.append(
                    _Column(c.name, field, scalar_for(c.type), c.nullable, type_family(c.type))
                )
            key = [k for k in info.primary_key if any(c.name == k for c in columns)]
            if len(key) != len(info.primary_key):
                key = []  # a key column was left out: no lookup by key
            if not key:
                one_field = None
            tables.append(
                _Table(source, info.name, info, type_name, one_field, list_field, columns, key)
            )
        return tables

    @staticmethod
    def _source_of(info: TableInfo) -> str:
        return LOGICAL_SOURCE if info.logical is not None else info.source

    def _table(self, name: str, what: str) -> _Table:
        """A table by ``source.table`` or a unique bare ``table`` name."""
        hits = [t for t in self._tables if t.qualified == name] or [
            t for t in self._tables if t.name == name
        ]
        if not hits:
            hits = [t for t in self._tables if t.name.lower() == name.lower()]
        if len(hits) != 1:
            known = ", ".join(t.qualified for t in self._tables)
            why = "is ambiguous" if hits else "is not a table of the gateway"
            raise GatewayError(f"{what}: {name!r} {why} (tables: {known})")
        return hits[0]

    def _column_ref(self, ref: str, what: str) -> tuple[_Table, _Column]:
        table_name, _, column = ref.rpartition(".")
        if not table_name:
            raise GatewayError(f"{what}: {ref!r} must be table.column or source.table.column")
        table = self._table(table_name, what)
        col = table.column(column)
        if col is None:
            have = ", ".join(c.name for c in table.columns)
            raise GatewayError(
                f"{what}: table {table.qualified} has no column {column!r} (it has: {have})"
            )
        return table, col

    def _relations(self) -> list[Relation]:
        found: list[tuple[_Table, _Column, _Table, _Column, str]] = []
        for child_ref, parent_ref in self._declared:
            what = f"relation ({child_ref!r}, {parent_ref!r})"
            child, ccol = self._column_ref(child_ref, what)
            parent, pcol = self._column_ref(parent_ref, what)
            if ccol.family != pcol.family:
                raise GatewayError(
                    f"{what}: {ccol.name} holds {ccol.family} values and {pcol.name} "
                    f"{pcol.family}; a relation joins columns of one kind"
                )
            found.append((child, ccol, parent, pcol, "declared"))
        if self._infer:
            declared = {(c.qualified, cc.name) for c, cc, _p, _pc, _h in found}
            for child in self._tables:
                for ccol in child.columns:
                    m = re.fullmatch(r"(.+)_id", ccol.name, flags=re.I)
                    if m is None:
                        continue
                    if (child.qualified, ccol.name) in declared:
                        continue
                    stem = m.group(1).lower()
                    cands = [
                        t
                        for t in self._tables
                        if stem in (t.name.lower(), singular(t.name).lower())
                    ]
                    if len(cands) != 1:
                        continue
                    parent = cands[0]
                    if len(parent.key) > 1:
                        continue  # a composite key: no single column to reference
                    pcol = parent.column(parent.key[0] if parent.key else "id")
                    if pcol is None or pcol.family != ccol.family:
                        continue
                    if parent is child and pcol.name == ccol.name:
                        continue
                    found.append((child, ccol, parent, pcol, "inferred"))
        out: list[Relation] = []
        for child, ccol, parent, pcol, how in found:
            child_fields = {c.field for c in child.columns} | set(child.relations)
            parent_fields = {c.field for c in parent.columns} | set(parent.relations)
            fwd = ccol.field[:-3] if ccol.field.lower().endswith("_id") else ""
            if not fwd or fwd in child_fields:
                fwd = f"{ccol.field}_{parent.one_field or singular(parent.list_field)}"
            back = graphql_name(child.name)
            if back in parent_fields or any(
                r.child == child.qualified and r.parent == parent.qualified for r in out
            ):
                back = f"{back}_by_{ccol.field}"
            if fwd in child_fields or back in parent_fields or (parent is child and fwd == back):
                log.warning("gateway: relation %s.%s left out (name clash)", child, ccol.name)
                continue
            rel = Relation(child.qualified, ccol.name, parent.qualified, pcol.name, how, fwd, back)
            child.relations[fwd] = (rel, True)
            parent.relations[back] = (rel, False)
            out.append(rel)
        return out

    def _build_schema(self) -> GraphQLSchema:
        by_name = {t.qualified: t for t in self._tables}
        for table in self._tables:
            table.type = GraphQLObjectType(
                table.type_name,
                fields=self._fields_thunk(table, by_name),
                description=f"table {table.qualified} ({table.info.row_estimate or 0} rows "
                "estimated)" + (f"; primary key ({', '.join(table.key)})" if table.key else ""),
            )
        query_fields: dict[str, GraphQLField] = {}
        for table in self._tables:
            assert table.type is not None
            if table.one_field is not None:
                query_fields[table.one_field] = GraphQLField(
                    table.type,
                    args={
                        c.field: GraphQLArgument(GraphQLNonNull(c.scalar))
                        for k in table.key
                        if (c := table.column(k)) is not None
                    },
                    resolve=self._resolve_one(table),
                    description=f"One row of {table.qualified} by its primary key.",
                )
            query_fields[table.list_field] = GraphQLField(
                GraphQLList(GraphQLNonNull(table.type)),
                args=self._list_args(table),
                resolve=self._resolve_list(table),
                description=f"Rows of {table.qualified}, ordered by "
                + (", ".join(table.key) if table.key else "all its columns")
                + "; each column argument is an equality filter (null: IS NULL). Null (with "
                "an error) when a source fails.",
            )
        if not query_fields:
            raise GatewayError("the federation has no tables to expose: attach a source first")
        query = GraphQLObjectType(
            "Query", query_fields, description="The federation's tables (fedlab gateway)."
        )
        return GraphQLSchema(query)

    def _list_args(self, table: _Table) -> dict[str, GraphQLArgument]:
        args = {
            c.field: GraphQLArgument(c.scalar, description=f"{c.name} = value (null: IS NULL)")
            for c in table.columns
        }
        args["limit"] = GraphQLArgument(GraphQLInt, description="at most this many rows")
        args["offset"] = GraphQLArgument(GraphQLInt, description="skip this many rows first")
        return args

    def _fields_thunk(
        self, table: _Table, by_name: dict[str, _Table]
    ) -> Callable[[], dict[str, GraphQLField]]:
        def fields() -> dict[str, GraphQLField]:
            out: dict[str, GraphQLField] = {}
            for c in table.columns:
                typ = (
                    c.scalar if c.nullable and c.name not in table.key else GraphQLNonNull(c.scalar)
                )
                out[c.field] = GraphQLField(
                    typ,
                    resolve=_column_resolver(c.name),
                    description=f"column {c.name} ({_declared(table, c.name)})",
                )
            for name, (rel, forward) in table.relations.items():
                if forward:
                    parent = by_name[rel.parent]
                    assert parent.type is not None
                    out[name] = GraphQLField(
                        parent.type,
                        resolve=self._resolve_parent(rel, parent),
                        description=f"the {rel.parent} row whose {rel.key} = {rel.column} "
                        f"({rel.how} relation)",
                    )
                else:
                    child = by_name[rel.child]
                    assert child.type is not None
                    out[name] = GraphQLField(
                        GraphQLList(GraphQLNonNull(child.type)),
                        args=self._list_args(child),
                        resolve=self._resolve_children(rel, child),
                        description=f"the {rel.child} rows whose {rel.column} = {rel.key} "
                        f"({rel.how} relation); limit/offset apply per parent; null (with an "
                        "error) when a source fails",
                    )
            return out

        return fields

    # ------------------------------------------------------------------ resolvers
    def _filters(self, table: _Table, args: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
        by_field = table.by_field()
        return tuple((by_field[k].name, v) for k, v in sorted(args.items()) if k in by_field)

    def _page(self, args: Mapping[str, Any]) -> tuple[int | None, int]:
        limit, offset = args.get("limit"), args.get("offset") or 0
        if limit is not None and limit < 0:
            raise GraphQLError(f"limit must be 0 or more, got {limit}")
        if offset < 0:
            raise GraphQLError(f"offset must be 0 or more, got {offset}")
        if self.max_limit is not None and (limit is None or limit > self.max_limit):
            raise GraphQLError(
                f"limit must be given and at most {self.max_limit} (this gateway's max_limit)"
                if limit is None
                else f"limit {limit} is over this gateway's max_limit {self.max_limit}"
            )
        return limit, offset

    def _resolve_one(self, table: _Table) -> Callable[..., Any]:
        async def resolve(_obj: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
            ctx: _Request = info.context
            key = tuple(table.key)
            by_field = table.by_field()
            values = {by_field[f].name: v for f, v in args.items()}
            loader = ctx.loader(
                table, key, _needed_columns(table, info), (), False, f"Query.{info.field_name}"
            )
            return await _guard(loader.load(tuple(values[k] for k in key)))

        return resolve

    def _resolve_list(self, table: _Table) -> Callable[..., Any]:
        async def resolve(_obj: Any, info: GraphQLResolveInfo, **args: Any) -> Any:
            ctx: _Request = info.context
            limit, offset = self._page(args)
            filters = self._filters(table, args)
            cols = ", ".join(f"t.{_q(c)}" for c in _needed_columns(table, info))
            where = _filter_sql(filters)
            sql = f"SELECT {cols} FROM {table.sql_name()} AS t"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += _order_sql(table)
            params = _filter_params(filters)
            if limit is not None:
                sql += " LIMIT :limit"
                params["limit"] = limit
            if offset:
                sql += " OFFSET :offset"
                params["offset"] = offset
            return await _guard(ctx.run(sql, params, f"Query.{info.field_name}"))

        return resolve

    def _resolve_parent(self, rel: Relation, parent: _Table) -> Callable[..., Any]:
        async def resolve(obj: Mapping[str, Any], info: GraphQLResolveInfo) -> Any:
            value = obj.get(rel.column)
            if value is None:
                return None
            ctx: _Request = info.context
            loader = ctx.loader(
                parent,
                (rel.key,),
                _needed_columns(parent, info),
                (),
                False,
                f"{info.parent_type.name}.{info.field_name}",
            )
            return await _guard(loader.load((value,)))

        return resolve

    def _resolve_children(self, rel: Relation, child: _Table) -> Callable[..., Any]:
        async def resolve(obj: Mapping[str, Any], info: GraphQLResolveInfo, **args: Any) -> Any:
            value = obj.get(rel.key)
            limit, offset = self._page(args)
            if value is None:
                return []
            ctx: _Request = info.context
            loader = ctx.loader(
                child,
                (rel.column,),
                _needed_columns(child, info),
                self._filters(child, args),
                True,
                f"{info.parent_type.name}.{info.field_name}",
            )
            rows = await _guard(loader.load((value,)))
            return rows[offset : None if limit is None else offset + limit]

        return resolve

    # ------------------------------------------------------------------ running
    @property
    def sdl(self) -> str:
        """The schema in GraphQL's schema definition language."""
        return print_schema(self.schema)

    def tables(self) -> list[dict[str, Any]]:
        """One row per exposed table: source, table, GraphQL type and root fields."""
        return [
            {
                "source": t.source,
                "table": t.name,
                "type": t.type_name,
                "one": t.one_field,
                "list": t.list_field,
                "key": list(t.key),
            }
            for t in self._tables
        ]

    async def execute_async(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        *,
        batching: bool | None = None,
    ) -> dict[str, Any]:
        """Run one GraphQL request; the response as a dict (``data``, ``errors``,
        ``extensions.fedlab``)."""
        ctx = _Request(self, self.batching if batching is None else batching)
        result = await graphql(
            self.schema,
            query,
            context_value=ctx,
            variable_values=dict(variables) if variables else None,
            operation_name=operation_name,
        )
        if ctx.tasks:  # a failed sibling may leave batches running: let them finish
            await asyncio.gather(*ctx.tasks, return_exceptions=True)
        out: dict[str, Any] = {}
        if result.errors:
            out["errors"] = [_error_json(e) for e in result.errors]
        if result.data is not None or not result.errors:
            out["data"] = result.data
        out["extensions"] = {"fedlab": ctx.extension()}
        return out

    def execute(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        operation_name: str | None = None,
        *,
        batching: bool | None = None,
    ) -> dict[str, Any]:
        """:meth:`execute_async` from synchronous code (a notebook cell, a test)."""
        coro = self.execute_async(query, variables, operation_name, batching=batching)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        # inside a running loop (Jupyter): run it on a loop of its own thread
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["out"] = asyncio.run(coro)
            except BaseException as e:
                box["err"] = e

        th = threading.Thread(target=run, name="fedlab-graphql-execute")
        th.start()
        th.join()
        if "err" in box:
            raise box["err"]
        return box["out"]

    def __repr__(self) -> str:
        return (
            f"<fedlab.Gateway {len(self._tables)} table(s), {len(self.relations)} relation(s), "
            f"batching={'on' if self.batching else 'off'}>"
        )


def _declared(table: _Table, column: str) -> str:
    c = table.info.column(column)
    return (c.declared or "?") if c is not None else "?"


def _column_resolver(name: str) -> Callable[..., Any]:
    def resolve(obj: Mapping[str, Any], _info: GraphQLResolveInfo) -> Any:
        return obj.get(name)

    return resolve


async def _guard(awaitable: Awaitable[Any]) -> Any:
    """Await a lookup; fedlab errors become GraphQL errors with their (redacted) message,
    anything else an "internal error" that names only the exception class."""
    try:
        return await awaitable
    except GraphQLError:
        raise
    except FedlabError as e:
        raise GraphQLError(str(e), extensions={"code": type(e).__name__}) from e
    except Exception as e:
        log.exception("gateway: resolver failed")
        raise GraphQLError(
            f"internal error in the fedlab gateway ({type(e).__name__}); see the server log",
            extensions={"code": "INTERNAL"},
        ) from e


def _error_json(e: GraphQLError) -> dict[str, Any]:
    out = e.formatted
    out["message"] = redact(str(out.get("message", "")))
    return dict(out)


# --------------------------------------------------------------------------- HTTP
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedlab GraphQL gateway</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
textarea, pre {{ width: 100%; font-family: ui-monospace, monospace; font-size: 13px; }}
pre {{ background: #f5f5f5; padding: .8em; overflow: auto; max-height: 30em; }}
</style></head><body>
<h1>fedlab GraphQL gateway</h1>
<p>POST JSON <code>{{"query": "...", "variables": {{...}}}}</code> to <code>{path}</code>
(or GET <code>{path}?query=...</code>). Each response's <code>extensions.fedlab</code> lists
the federated queries the request ran (count, SQL, seconds, rows, bytes).
Batching of child lookups: <b>{batching}</b>.</p>
<form id="f"><textarea id="q" rows="8">{example}</textarea>
<p><button type="submit">Run</button></p></form>
<pre id="out"></pre>
<h2>Schema</h2>
<pre>{sdl}</pre>
<script>
document.getElementById("f").addEventListener("submit", async (ev) => {{
  ev.preventDefault();
  const r = await fetch("{path}", {{method: "POST",
    headers: {{"Content-Type": "application/json"}},
    body: JSON.stringify({{query: document.getElementById("q").value}})}});
  document.getElementById("out").textContent = JSON.stringify(await r.json(), null, 2);
}});
</script></body></html>
"""


def example_query(gateway: Gateway) -> str:
    """A query to start from: the first table with a children relation, like the seed's
    ``{ user(id: 123) { name orders { total } } }``."""
    for t in gateway._tables:
        kids = [(n, r) for n, (r, fwd) in t.relations.items() if not fwd]
        if t.one_field and len(t.key) == 1 and kids:
            name, rel = kids[0]
            child = gateway._table(rel.child, "example")
            lo = t.info.key_ranges.get(t.key[0], (1, 1))[0] or 1
            scalars = [c.field for c in t.columns if c.name not in t.key][:1]
            kid_cols = [c.field for c in child.columns if c.name != rel.column][:2]
            inner = " ".join(kid_cols) or "__typename"
            return (
                f"{{ {t.one_field}({t.field_of(t.key[0])}: {lo}) "
                f"{{ {' '.join(scalars)} {name} {{ {inner} }} }} }}"
            )
    t = gateway._tables[0]
    return f"{{ {t.list_field}(limit: 5) {{ {' '.join(c.field for c in t.columns[:3])} }} }}"


def app(
    fed: Federation | Gateway,
    *,
    path: str = "/graphql",
    **options: Any,
) -> Any:
    """A starlette app serving ``fed`` (or a built :class:`Gateway`) over GraphQL.

    ``POST path`` with JSON ``{"query", "variables", "operationName"}``; ``GET path`` with
    ``?query=`` runs a query, without it returns an HTML page (schema, a form; no external
    assets); ``GET path/schema`` returns the SDL; ``GET /`` redirects to ``path``. A
    request may add ``"extensions": {"batching": false}`` (or ``?batching=0``) to run
    without batching. ``options`` go to :class:`Gateway`.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import (
        HTMLResponse,
        JSONResponse,
        PlainTextResponse,
        RedirectResponse,
        Response,
    )
    from starlette.routing import Route

    gateway = fed if isinstance(fed, Gateway) else Gateway(fed, **options)
    if isinstance(fed, Gateway) and options:
        raise GatewayError("pass Gateway options to Gateway(...), not app(gateway, ...)")

    def bad(message: str, status: int = 400) -> Response:
        return JSONResponse({"errors": [{"message": message}]}, status_code=status)

    def flag(value: Any) -> bool | None:
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        return str(value).lower() not in ("0", "false", "no", "off")

    async def run(query: Any, variables: Any, op: Any, batching: bool | None) -> Response:
        if not isinstance(query, str) or not query.strip():
            return bad("the request has no GraphQL query ('query' must be a non-empty string)")
        if isinstance(variables, str):
            try:
                variables = json.loads(variables) if variables else None
            except ValueError:
                return bad("'variables' is not valid JSON")
        if variables is not None and not isinstance(variables, dict):
            return bad("'variables' must be a JSON object")
        if op is not None and not isinstance(op, str):
            return bad("'operationName' must be a string")
        out = await gateway.execute_async(query, variables, op, batching=batching)
        return JSONResponse(out)

    async def graphql_post(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return bad('the request body is not JSON; send {"query": "..."}')
        if not isinstance(body, dict):
            return bad("the request body must be a JSON object with a 'query'")
        ext = body.get("extensions") or {}
        batching = flag(ext.get("batching")) if isinstance(ext, dict) else None
        if batching is None:
            batching = flag(request.query_params.get("batching"))
        return await run(
            body.get("query"), body.get("variables"), body.get("operationName"), batching
        )

    async def graphql_get(request: Request) -> Response:
        qp = request.query_params
        if "query" in qp:
            if qp["query"].lstrip().startswith("mutation"):
                return bad("mutations are not served over GET", 405)
            return await run(
                qp["query"], qp.get("variables"), qp.get("operationName"), flag(qp.get("batching"))
            )
        page = _PAGE.format(
            path=html.escape(path),
            batching="on" if gateway.batching else "off",
            example=html.escape(example_query(gateway)),
            sdl=html.escape(gateway.sdl),
        )
        return HTMLResponse(page)

    async def schema(_request: Request) -> Response:
        return PlainTextResponse(gateway.sdl)

    async def root(_request: Request) -> Response:
        return RedirectResponse(path)

    routes = [
        Route(path, graphql_post, methods=["POST"]),
        Route(path, graphql_get, methods=["GET"]),
        Route(path.rstrip("/") + "/schema", schema, methods=["GET"]),
    ]
    if path != "/":
        routes.append(Route("/", root, methods=["GET"]))
    web = Starlette(routes=routes)
    web.state.gateway = gateway
    return web


class GatewayServer:
    """A running gateway (uvicorn in a background thread): ``url``, ``gateway``,
    ``close()``; a context manager. Made by :func:`serve`."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int = 0) -> None:
        self.gateway = gateway
        self.host = host
        self.port = port
        self.url = ""
        self._server: Any = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> GatewayServer:
        import uvicorn

        sock = socket.socket(
            socket.AF_INET6 if ":" in self.host else socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,  # asyncio sets TCP_NODELAY only for such sockets
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise GatewayError(f"cannot listen on {self.host}:{self.port}: {e}") from None
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}/graphql"
        config = uvicorn.Config(
            app(self.gateway),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)

        def run() -> None:
            try:
                asyncio.run(self._server.serve(sockets=[sock]))
            except BaseException as e:  # reported by start()
                self._error = e

        self._thread = threading.Thread(target=run, name=f"fedlab-graphql-{self.port}", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                self.close()
                raise SourceUnavailableError(f"the GraphQL gateway did not start: {self._error}")
            if time.monotonic() > end:
                self.close()
                raise SourceUnavailableError(
                    f"the GraphQL gateway did not start within {timeout} s"
                )
            time.sleep(0.01)
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop the server and wait for its thread; the port is free afterwards."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> GatewayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<fedlab GatewayServer {self.url or '(not started)'} {state}>"


def serve(
    fed: Federation | Gateway,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    **options: Any,
) -> GatewayServer:
    """Serve ``fed`` over GraphQL on ``host:port`` (0: a free port) in a background thread.

    >>> with serve(fed) as gw:                     # doctest: +SKIP
    ...     httpx.post(gw.url, json={"query": "{ user(id: 35) { name } }"}).json()

    ``options`` go to :class:`Gateway` (``relations=``, ``batching=``...).
    """
    gateway = fed if isinstance(fed, Gateway) else Gateway(fed, **options)
    return GatewayServer(gateway, host, port).start()


# --------------------------------------------------------------------------- command line
def _relation_arg(text: str) -> tuple[str, str]:
    child, sep, parent = text.partition("=")
    if not sep or not child.strip() or not parent.strip():
        raise argparse.ArgumentTypeError(
            f"expected CHILD_COLUMN=PARENT_COLUMN, e.g. sales.orders.user_id=crm.users.id; "
            f"got {text!r}"
        )
    return child.strip(), parent.strip()


def main(argv: Sequence[str] | None = None) -> int:
    """``fedlab serve --graphql``: serve the federation's catalog over GraphQL until Ctrl-C."""
    p = argparse.ArgumentParser(
        prog="fedlab serve",
        description="Serve the federation (--config, ./fedlab.toml, else the demo) as a "
        "GraphQL endpoint: one type per table, relations from foreign keys, batched lookups.",
    )
    p.add_argument("--graphql", action="store_true", help="serve GraphQL (the only kind so far)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--config", default=None, help="a fedlab.toml (default: ./fedlab.toml or demo)")
    p.add_argument(
        "--relation",
        action="append",
        type=_relation_arg,
        default=[],
        metavar="CHILD=PARENT",
        help="declare a foreign key, e.g. sales.orders.user_id=crm.users.id (repeatable)",
    )
    p.add_argument("--no-infer-relations", action="store_true", help="only declared relations")
    p.add_argument("--no-batching", action="store_true", help="one query per parent (to show N+1)")
    p.add_argument("--max-limit", type=int, default=None, help="cap on list fields' limit")
    try:
        args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if not args.graphql:
        print("error: fedlab serve: say what to serve: --graphql", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return 2
    from fedlab.cli import _federation

    try:
        fed = _federation(args.config)
        gateway = Gateway(
            fed,
            relations=args.relation,
            infer_relations=not args.no_infer_relations,
            batching=not args.no_batching,
            max_limit=args.max_limit,
        )
        server = GatewayServer(gateway, args.host, args.port).start()
    except FedlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with server:
        print(f"fedlab GraphQL gateway: {server.url}  (Ctrl-C stops it)")
        print(f"  {len(gateway._tables)} table(s), {len(gateway.relations)} relation(s):")
        for rel in gateway.relations:
            print(f"    {rel}")
        print(f"  try: {example_query(gateway)}")
        sys.stdout.flush()
        try:
            while server.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0
