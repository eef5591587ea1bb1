"""Bind a parsed query to the catalog.

After binding:

* every base table is ``source.table`` (``exp.Table`` with ``db`` = source name) and has
  an alias that is unique in the whole query (the user's alias when it is free);
* every column is qualified by its table alias, ``*`` is expanded;
* the outermost projections carry the names PostgreSQL would give them;
* integer ``/`` integer is an explicit :class:`sqlglot.exp.IntDiv`;
* every node has a type (``annotate_types``) so later rules can ask "is this text?".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.simplify import simplify
from sqlglot.schema import MappingSchema

from fedlab.catalog import LOGICAL_SOURCE, Catalog, TableInfo
from fedlab.errors import (
    AmbiguousColumnError,
    UnknownColumnError,
    UnsupportedSQLError,
)

__all__ = ["BoundQuery", "bind", "catalog_schema", "pg_output_name"]


@dataclass
class BoundQuery:
    """A query whose names all resolve: the tree plus what each alias stands for."""

    tree: exp.Query
    #: alias -> table info, for every base-table reference
    aliases: dict[str, TableInfo] = field(default_factory=dict)
    #: True when the outermost query has ORDER BY (the result order is then fixed)
    ordered: bool = False

    def sources(self) -> set[str]:
        """The sources the query may read (a sharded logical table: all its shards')."""
        out: set[str] = set()
        for t in self.aliases.values():
            out.update(t.logical.sources if t.logical is not None else [t.source])
        return out


# PostgreSQL's names for unaliased output columns ("count", "sum", "?column?", ...)
def pg_output_name(e: exp.Expression) -> str:
    """The column name PostgreSQL gives an unaliased select item.

    >>> import sqlglot
    >>> [pg_output_name(p) for p in sqlglot.parse_one("SELECT a, t.b, count(*), sum(x) + 1, CAST(c AS INT), CASE WHEN 1=1 THEN 1 END").expressions]
    ['a', 'b', 'count', '?column?', 'c', 'case']
    """
    if isinstance(e, exp.Alias):
        return e.alias
    if isinstance(e, exp.Column):
        return e.name
    if isinstance(e, exp.Paren):
        return pg_output_name(e.this)
    if isinstance(e, exp.Cast | exp.TryCast):
        inner = e.this
        if isinstance(inner, exp.Column | exp.Func | exp.Cast):
            return pg_output_name(inner)
        return _PG_TYPE_NAMES.get(e.to.this, e.to.this.value.lower())
    if isinstance(e, exp.Case):
        return "case"
    if isinstance(e, exp.Coalesce):
        return "coalesce"
    if isinstance(e, exp.Exists):
        return "exists"
    if isinstance(e, exp.Anonymous):
        return str(e.this).lower()
    if isinstance(e, exp.Func):
        if isinstance(e, exp.Count):
            return "count"
        name = e.sql_name().lower()
        return _PG_FUNC_NAMES.get(name, name)
    if isinstance(e, exp.Subquery):
        inner = e.unnest()
        if isinstance(inner, exp.Select) and len(inner.expressions) == 1:
            return pg_output_name(inner.expressions[0])
    return "?column?"


_PG_TYPE_NAMES = {
    exp.DataType.Type.INT: "int4",
    exp.DataType.Type.BIGINT: "int8",
    exp.DataType.Type.SMALLINT: "int2",
    exp.DataType.Type.DOUBLE: "float8",
    exp.DataType.Type.FLOAT: "float4",
    exp.DataType.Type.DECIMAL: "numeric",
    exp.DataType.Type.TEXT: "text",
    exp.DataType.Type.VARCHAR: "varchar",
    exp.DataType.Type.DATE: "date",
    exp.DataType.Type.TIMESTAMP: "timestamp",
    exp.DataType.Type.BOOLEAN: "bool",
}
_PG_FUNC_NAMES = {"substring": "substring", "char_length": "length", "stddev_samp": "stddev"}


def _name_outputs(tree: exp.Query) -> None:
    """Alias every outermost projection with PostgreSQL's name for it."""
    selects = [tree] if isinstance(tree, exp.Select) else []
    if isinstance(tree, exp.SetOperation):
        left = tree
        while isinstance(left, exp.SetOperation):
            left = left.left
        if isinstance(left, exp.Select):
            selects = [left]
    for select in selects:
        new = []
        for p in select.expressions:
            if isinstance(p, exp.Alias | exp.Star) or (
                isinstance(p, exp.Column) and isinstance(p.this, exp.Star)
            ):
                new.append(p)
            else:
                new.append(exp.alias_(p, pg_output_name(p), quoted=True))
        select.set("expressions", new)


def _cte_names(tree: exp.Expression) -> set[str]:
    return {cte.alias_or_name for cte in tree.find_all(exp.CTE)}


def _resolve_tables(tree: exp.Expression, catalog: Catalog) -> None:
    ctes = _cte_names(tree)
    for table in list(tree.find_all(exp.Table)):
        if isinstance(table.this, exp.Func | exp.Anonymous) or not table.name:
            raise UnsupportedSQLError(f"table function {table.sql()!r} is not supported")
        if table.args.get("catalog"):
            raise UnsupportedSQLError(
                f"three-part name {table.sql()!r}: use source.table (schemas are not supported yet)"
            )
        if not table.db and table.name in ctes:
            continue
        info = catalog.resolve(table.name, table.db or None)
        table.set("this", exp.to_identifier(info.name, quoted=info.name != info.name.lower()))
        table.set("db", exp.to_identifier(info.source))
        table.meta["fedlab_table"] = info
        table.meta["fedlab_alias"] = table.alias_or_name
        if info.logical is not None:  # a sharded table: expand_shards replaces it when planning
            table.meta["fedlab_logical"] = info.logical


def catalog_schema(catalog: Catalog) -> MappingSchema:
    """The catalog as a sqlglot schema: ``source.table.column`` (logical tables under
    :data:`fedlab.catalog.LOGICAL_SOURCE`)."""
    mapping = {
        src: {
            t.name: {c.name: c.type.sql(dialect="postgres") for c in t.columns}
            for t in tables.values()
        }
        for src, tables in catalog.tables.items()
    }
    if catalog.logical:
        mapping[LOGICAL_SOURCE] = {
            lt.name: {c.name: c.type.sql(dialect="postgres") for c in lt.info.columns}
            for lt in catalog.logical.values()
        }
    return MappingSchema(mapping, dialect="postgres")


_schema = catalog_schema


_UNRESOLVED = re.compile(r"Column '([^']+)' could not be resolved")


def _column_error(e: OptimizeError, tree: exp.Expression, catalog: Catalog) -> Exception:
    msg = str(e)
    m = _UNRESOLVED.search(msg)
    where = msg.split(" Line:", 1)[1].strip() if " Line:" in msg else ""
    where = f" (line {where.replace(', Col:', ', column')})" if where else ""
    if not m:
        return UnsupportedSQLError(f"could not resolve the query's columns: {msg}")
    col = m.group(1).split(".")[-1].strip('"')
    refs = [
        (t.meta["fedlab_table"], t.meta.get("fedlab_alias") or t.name)
        for t in tree.find_all(exp.Table)
        if "fedlab_table" in t.meta
    ]
    tables = [info for info, _ in refs]
    having = sorted({f"{i.source}.{i.name} AS {a}" for i, a in refs if i.column(col) is not None})
    if len(having) > 1:
        return AmbiguousColumnError(
            f"column {col!r} is ambiguous{where}: it is in {', '.join(having)}; "
            "qualify it with a table alias"
        )
    scope = sorted({f"{t.source}.{t.name}" for t in tables})
    return UnknownColumnError(
        f"unknown column {col!r}{where}: not in "
        f"{', '.join(scope) if scope else 'any table of the query'}"
    )


def _restore_aliases(tree: exp.Expression) -> None:
    """Replace sqlglot's canonical aliases (_0, _1…) by the user's, kept unique."""
    used: set[str] = set()
    renames: dict[str, str] = {}
    for table in tree.find_all(exp.Table):
        canonical = table.alias
        if not canonical or not re.fullmatch(r"_\d+", canonical):
            continue
        wanted = table.meta.get("fedlab_alias") or table.name
        wanted = wanted.lower() if wanted.isidentifier() else "t"
        new, n = wanted, 1
        while new in used:
            n += 1
            new = f"{wanted}_{n}"
        used.add(new)
        renames[canonical] = new
        table.set("alias", exp.TableAlias(this=exp.to_identifier(new)))
    for col in tree.find_all(exp.Column):
        if col.table in renames:
            col.set("table", exp.to_identifier(renames[col.table]))


def _explicit_int_division(tree: exp.Expression) -> None:
    """PostgreSQL: integer / integer truncates. Make it an IntDiv so every dialect keeps that."""
    for div in list(tree.find_all(exp.Div)):
        left, right = div.this, div.expression
        if (
            div.args.get("typed")
            and left.type is not None
            and right.type is not None
            and left.type.is_type(*exp.DataType.INTEGER_TYPES)
            and right.type.is_type(*exp.DataType.INTEGER_TYPES)
        ):
            div.replace(exp.IntDiv(this=left, expression=right))


def _expand_table_stars(tree: exp.Expression) -> None:
    """``alias.*`` of a base table becomes its columns (sqlglot's alias canonicalization
    would otherwise lose which table the star meant)."""
    for select in list(tree.find_all(exp.Select)):
        stars = [
            p
            for p in select.expressions
            if isinstance(p, exp.Column) and isinstance(p.this, exp.Star) and p.table
        ]
        if not stars:
            continue
        items = []
        if select.args.get("from_") is not None:
            items.append(select.args["from_"].this)
        items += [j.this for j in select.args.get("joins") or []]
        tables = {
            t.alias_or_name: t.meta["fedlab_table"]
            for t in items
            if isinstance(t, exp.Table) and t.meta.get("fedlab_table")
        }
        new = []
        for p in select.expressions:
            info = tables.get(p.table) if p in stars else None
            if info is None:
                new.append(p)
                continue
            new.extend(exp.column(c.name, table=p.table, quoted=True) for c in info.columns)
        select.set("expressions", new)


#: AND / OR chains longer than this are not simplified (sqlglot's simplify is quadratic in
#: a chain's length: 300 terms ~1 s, 700 ~9 s)
MAX_SIMPLIFY_TERMS = 64


def _chain(node: exp.Expression, kind: type[exp.Expression]) -> list[exp.Expression]:
    """The terms of a flat ``kind`` (AND / OR) chain rooted at ``node``, parentheses
    looked through (iteratively: a long chain is a deep left-leaning tree)."""
    out: list[exp.Expression] = []
    stack = [node]
    while stack:
        n = stack.pop()
        while isinstance(n, exp.Paren):
            n = n.this
        if isinstance(n, kind):
            stack.append(n.expression)
            stack.append(n.this)
        else:
            out.append(n)
    return out


def _longest_chain(tree: exp.Expression) -> int:
    longest = 0
    for node in tree.find_all(exp.Connector):
        if isinstance(node.parent, type(node)):
            continue  # counted from the chain's root
        longest = max(longest, len(_chain(node, type(node))))
    return longest


def _or_chains_to_in(tree: exp.Expression) -> None:
    """Rewrite ``c = v1 OR c = v2 OR …`` (one column, literals or parameters, at least
    :data:`MAX_SIMPLIFY_TERMS` terms: the shape query builders generate) as
    ``c IN (v1, v2, …)``: the same three-valued logic (IN is defined as that OR chain), a
    shallow tree, and no quadratic simplify."""
    roots = [n for n in tree.find_all(exp.Or) if not isinstance(n.parent, (exp.Or, exp.Paren))]
    for root in roots:
        terms = _chain(root, exp.Or)
        if len(terms) < MAX_SIMPLIFY_TERMS:
            continue
        column = None
        values: list[exp.Expression] = []
        for t in terms:
            if not isinstance(t, exp.EQ):
                break
            a, b = t.this, t.expression
            if isinstance(b, exp.Column) and not isinstance(a, exp.Column):
                a, b = b, a
            if not isinstance(a, exp.Column) or not isinstance(b, (exp.Literal, exp.Placeholder)):
                break
            if column is None:
                column = a
            elif a != column:
                break
            values.append(b)
        else:
            assert column is not None
            root.replace(exp.paren(exp.In(this=column.copy(), expressions=values)))


def bind(tree: exp.Query, catalog: Catalog) -> BoundQuery:
    """Resolve tables and columns of ``tree`` against ``catalog`` (mutates and returns it)."""
    _or_chains_to_in(tree)  # first: qualify is quadratic in the depth of a long OR chain
    _resolve_tables(tree, catalog)
    _expand_table_stars(tree)
    _name_outputs(tree)
    try:
        tree = qualify(
            tree,
            schema=_schema(catalog),
            dialect="postgres",
            validate_qualify_columns=True,
            canonicalize_table_aliases=True,
            quote_identifiers=False,
            identify=False,
        )
    except OptimizeError as e:
        raise _column_error(e, tree, catalog) from None
    _restore_aliases(tree)
    try:
        if _longest_chain(tree) <= MAX_SIMPLIFY_TERMS:
            # folds DATE '…' + INTERVAL '…' and friends; sqlglot compares every pair of terms
            # of an AND / OR chain, so a very long one is left as it is (still correct)
            tree = simplify(tree, dialect="postgres")
    except (TypeError, ValueError, ArithmeticError) as e:  # e.g. INTERVAL NULL DAY
        raise UnsupportedSQLError(f"cannot fold the constants of this query: {e}") from None
    annotate_types(tree, schema=_schema(catalog), dialect="postgres")
    _explicit_int_division(tree)
    aliases = {
        t.alias: t.meta["fedlab_table"]
        for t in tree.find_all(exp.Table)
        if t.meta.get("fedlab_table")
    }
    return BoundQuery(tree, aliases, ordered=bool(tree.args.get("order")))
