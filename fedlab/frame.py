"""Lazy federated frames: Polars-like verbs that build the query the SQL path runs.

``fed.table("users")`` is a :class:`FederatedFrame`. Its verbs (``filter``, ``select``,
``with_columns``, ``join``, ``group_by(...).agg(...)``, ``sort``, ``limit``/``head``,
``unique``, ``rename``, ``drop``) only record what to do. ``.sql()`` compiles the record
into one sqlglot ``SELECT`` tree — each verb extends the current SELECT when that keeps
the answer, and wraps it as a derived table otherwise — and renders it as SQL text;
``.explain()``, ``.result()`` and ``.collect()`` hand that text to
:meth:`Federation.explain <fedlab.Federation.explain>` and
:meth:`Federation.sql <fedlab.Federation.sql>`, so parsing, binding, planning, pushdown,
traces, history and plots are exactly the SQL path's. ``fed.sql(frame.sql())`` is the same
query.

Semantics. Rows, NULLs, strings and joins behave as SQL (PostgreSQL) does, and where a
verb or method carries a Polars name the frame keeps Polars' meaning, written out in
the SQL so that ``.sql()`` states it:

- ``sort`` follows Polars: ``nulls_last=False`` (the default) puts NULLs **first**, in
  either direction; every key is emitted with an explicit ``NULLS FIRST``/``NULLS LAST``
  (plain SQL ``ORDER BY`` would put them last ascending). Ties are in no fixed order
  (Polars' ``maintain_order=False``).
- Order survives ``filter``, ``select``, ``with_columns``, ``limit``, ``rename`` and
  ``drop``; ``join``, ``group_by`` and ``unique`` give rows in no fixed order (as Polars
  without ``maintain_order``).
- ``a / b`` is true division (a float, as in Polars), emitted as
  ``CAST(a AS DOUBLE PRECISION) / b``; PostgreSQL's integer division is not used.
- ``sum()`` of no values is 0 (``COALESCE(SUM(x), 0)``); ``n_unique()`` counts NULL as a
  value (``COUNT(DISTINCT x)`` plus one when a NULL is present); ``count()`` counts
  non-NULL values; ``mean`` is ``AVG``.
- ``is_in`` never matches NULL (a None in the list is dropped; Polars' default).
- ``str.contains`` is a literal, case-sensitive substring test (``LIKE '%…%'`` with
  ``%``, ``_`` and ``\\`` escaped); a pattern that would mean something else as a regular
  expression must be passed with ``literal=True``.
- Join keys never match NULL keys; ``how`` and ``suffix`` and the output columns are
  Polars' (key columns coalesced for inner/left/right joins, ``_right`` on clashes).
  ``semi`` / ``anti`` are a JOIN / LEFT JOIN … IS NULL with the right side's DISTINCT
  keys, so an anti join keeps left rows whose key is NULL (as Polars does).

Column names in expressions are the frame's current output names (checked when the verb
is called). What the API cannot translate raises :class:`UnsupportedFrameError` (an
:class:`~fedlab.UnsupportedSQLError`) naming what is supported; a Polars method it does
not have raises :class:`UnsupportedMethodError` (also an ``AttributeError``).

>>> col("total") * 2 > lit(100)
((col("total") * 2) > 100)
>>> (col("country") == "US") & col("balance").is_not_null()
((col("country") == 'US') & col("balance").is_not_null())
>>> fed.table("users").filter(col("country") == "US").sql()   # doctest: +SKIP
"SELECT users.id, users.name, ... FROM crm.users WHERE users.country = 'US'"
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from fedlab.errors import FedlabError, ParameterError, UnknownColumnError, UnsupportedSQLError
from fedlab.sql.parse import literal as sql_literal

if TYPE_CHECKING:
    import polars as pl

    from fedlab.catalog import TableInfo
    from fedlab.federation import Federation
    from fedlab.result import FederatedResult
    from fedlab.sql.plan import Plan

__all__ = [
    "Expr",
    "FederatedFrame",
    "FrameError",
    "GroupBy",
    "UnsupportedFrameError",
    "UnsupportedMethodError",
    "col",
    "len_",
    "lit",
]

SUPPORTED_EXPRESSIONS = (
    "fl.col(name), fl.lit(value), fl.len(); comparisons == != < <= > >=; & | ~; "
    "+ - * / and unary -; .alias(), .is_in(list), .is_null(), .is_not_null(), .not_(), "
    ".str.contains(text, literal=True), .str.starts_with(text), .str.ends_with(text); "
    "aggregates .sum(), .mean(), .min(), .max(), .count(), .n_unique()"
)
SUPPORTED_VERBS = (
    "filter, select, with_columns, join, group_by(...).agg(...), sort, limit, head, unique, "
    "rename, drop; explain, collect, result, sql"
)


class FrameError(FedlabError):
    """A frame verb got arguments that make no query (duplicate names, missing join keys…)."""


class UnsupportedFrameError(UnsupportedSQLError):
    """An expression or verb the frame API cannot translate into SQL."""


class UnsupportedMethodError(UnsupportedFrameError, AttributeError):
    """A Polars method the frame API does not have (also an ``AttributeError``)."""


# ---------------------------------------------------------------------- expressions
_COMPARE = {"eq": exp.EQ, "ne": exp.NEQ, "lt": exp.LT, "le": exp.LTE, "gt": exp.GT, "ge": exp.GTE}
_ARITH = {"add": exp.Add, "sub": exp.Sub, "mul": exp.Mul}
_LOGIC = {"and": exp.And, "or": exp.Or}
_BINARY = {**_COMPARE, **_ARITH, **_LOGIC, "truediv": exp.Div}
_SYMBOL = {
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "add": "+",
    "sub": "-",
    "mul": "*",
    "truediv": "/",
    "and": "&",
    "or": "|",
}
_AGGREGATES = ("sum", "mean", "min", "max", "count", "n_unique", "len")


class Expr:
    """A column expression, evaluated against the columns of the frame it is used in.

    Build with :func:`col` and :func:`lit`, Python operators and the methods below;
    anything else raises :class:`UnsupportedMethodError` listing what is supported.
    """

    __slots__ = ("_args", "_op")
    __hash__ = None  # type: ignore[assignment]  # == builds an expression, as in Polars

    def __init__(self, op: str, *args: Any) -> None:
        self._op = op
        self._args = args

    # -- operators
    def _bin(self, op: str, other: Any, *, reflected: bool = False) -> Expr:
        other = _as_expr(other)
        return Expr(op, other, self) if reflected else Expr(op, self, other)

    def __eq__(self, other: Any) -> Expr:  # type: ignore[override]
        return self._bin("eq", other)

    def __ne__(self, other: Any) -> Expr:  # type: ignore[override]
        return self._bin("ne", other)

    def __lt__(self, other: Any) -> Expr:
        return self._bin("lt", other)

    def __le__(self, other: Any) -> Expr:
        return self._bin("le", other)

    def __gt__(self, other: Any) -> Expr:
        return self._bin("gt", other)

    def __ge__(self, other: Any) -> Expr:
        return self._bin("ge", other)

    def __and__(self, other: Any) -> Expr:
        return self._bin("and", other)

    def __rand__(self, other: Any) -> Expr:
        return self._bin("and", other, reflected=True)

    def __or__(self, other: Any) -> Expr:
        return self._bin("or", other)

    def __ror__(self, other: Any) -> Expr:
        return self._bin("or", other, reflected=True)

    def __invert__(self) -> Expr:
        return Expr("not", self)

    def __add__(self, other: Any) -> Expr:
        return self._bin("add", other)

    def __radd__(self, other: Any) -> Expr:
        return self._bin("add", other, reflected=True)

    def __sub__(self, other: Any) -> Expr:
        return self._bin("sub", other)

    def __rsub__(self, other: Any) -> Expr:
        return self._bin("sub", other, reflected=True)

    def __mul__(self, other: Any) -> Expr:
        return self._bin("mul", other)

    def __rmul__(self, other: Any) -> Expr:
        return self._bin("mul", other, reflected=True)

    def __truediv__(self, other: Any) -> Expr:
        return self._bin("truediv", other)

    def __rtruediv__(self, other: Any) -> Expr:
        return self._bin("truediv", other, reflected=True)

    def __neg__(self) -> Expr:
        return Expr("neg", self)

    def _unsupported_operator(self, *_: Any) -> Expr:
        raise UnsupportedFrameError(
            f"this operator is not supported by the frame API; supported: {SUPPORTED_EXPRESSIONS}"
        )

    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = _unsupported_operator
    __xor__ = __rxor__ = _unsupported_operator

    def __bool__(self) -> bool:
        raise UnsupportedFrameError(
            "the truth value of an expression is ambiguous: combine conditions with & | ~ "
            "(not and/or/not) and write (a < x) & (x < b) instead of a < x < b"
        )

    # -- methods
    def alias(self, name: str) -> Expr:
        """Name the expression's output column."""
        if not isinstance(name, str) or not name:
            raise FrameError(f"alias() takes a non-empty column name, got {name!r}")
        return Expr("alias", self, name)

    def is_in(self, values: Iterable[Any]) -> Expr:
        """True when the value is one of ``values`` (literals; None never matches)."""
        if isinstance(values, str | bytes | Expr) or not isinstance(values, Iterable):
            raise UnsupportedFrameError(
                "is_in() takes a list of literal values (not an expression or a string)"
            )
        return Expr("is_in", self, tuple(values))

    def is_null(self) -> Expr:
        return Expr("is_null", self)

    def is_not_null(self) -> Expr:
        return Expr("is_not_null", self)

    def not_(self) -> Expr:
        return Expr("not", self)

    def sum(self) -> Expr:
        return Expr("sum", self)

    def mean(self) -> Expr:
        return Expr("mean", self)

    def min(self) -> Expr:
        return Expr("min", self)

    def max(self) -> Expr:
        return Expr("max", self)

    def count(self) -> Expr:
        """Number of non-NULL values."""
        return Expr("count", self)

    def n_unique(self) -> Expr:
        """Number of distinct values, NULL counted as one (as Polars)."""
        return Expr("n_unique", self)

    @property
    def str(self) -> _StringMethods:
        """String methods: ``contains``, ``starts_with``, ``ends_with``."""
        return _StringMethods(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnsupportedMethodError(
            f"Expr.{name}() is not supported by the frame API; supported: {SUPPORTED_EXPRESSIONS}"
        )

    def __repr__(self) -> str:
        return _show(self)


class _StringMethods:
    __slots__ = ("_expr",)

    def __init__(self, expr: Expr) -> None:
        self._expr = expr

    def contains(self, pattern: str, *, literal: bool = False) -> Expr:
        """Literal, case-sensitive substring test. Without ``literal=True`` the pattern
        must mean itself as a regular expression too (no metacharacters)."""
        text = _pattern_text("contains", pattern)
        if not literal and any(ch in _REGEX_META for ch in text):
            raise UnsupportedFrameError(
                f"str.contains({text!r}): regular expressions are not supported; "
                "pass literal=True to match the text as written"
            )
        return Expr("like", self._expr, "contains", text)

    def starts_with(self, prefix: str) -> Expr:
        return Expr("like", self._expr, "starts_with", _pattern_text("starts_with", prefix))

    def ends_with(self, suffix: str) -> Expr:
        return Expr("like", self._expr, "ends_with", _pattern_text("ends_with", suffix))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnsupportedMethodError(
            f"Expr.str.{name}() is not supported by the frame API; supported string methods: "
            "contains (literal), starts_with, ends_with"
        )


_REGEX_META = set("\\.+*?()|[]{}^$")


def _pattern_text(method: str, value: Any) -> str:
    if not isinstance(value, str):
        raise UnsupportedFrameError(f"str.{method}() takes a literal string, got {value!r}")
    return value


def col(name: str) -> Expr:
    """The column ``name`` of the frame the expression is used in."""
    if not isinstance(name, str) or not name:
        raise UnsupportedFrameError(f"col() takes one column name, got {name!r}")
    if name == "*" or (name.startswith("^") and name.endswith("$")):
        raise UnsupportedFrameError(
            f"col({name!r}): wildcards and regular expressions are not supported; name one column"
        )
    return Expr("col", name)


def lit(value: Any) -> Expr:
    """A literal value (str, int, float, Decimal, bool, date, datetime or None)."""
    if isinstance(value, Expr):
        return value
    try:
        sql_literal(value)
    except ParameterError:
        raise UnsupportedFrameError(
            f"lit({value!r}): use str, int, float (finite), Decimal, bool, date, datetime or None"
        ) from None
    return Expr("lit", value)


def len_() -> Expr:
    """The number of rows (``COUNT(*)``); exported as ``fl.len()``."""
    return Expr("len")


def _as_expr(value: Any) -> Expr:
    """Operands: an expression, or a Python value taken as a literal (``col("a") == "x"``)."""
    return value if isinstance(value, Expr) else lit(value)


def _as_column(value: Any) -> Expr:
    """Verb arguments: a string names a column (``select("a")``)."""
    if isinstance(value, str):
        return col(value)
    if isinstance(value, Expr):
        return value
    raise UnsupportedFrameError(
        f"expected a column name or an expression, got {type(value).__name__} {value!r}; "
        "use fl.lit() for a literal"
    )


def _flatten(args: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, list | tuple):
            out.extend(a)
        else:
            out.append(a)
    return out


def _output_name(e: Expr) -> str:
    """Polars' rule: an alias, else the name of the left-most column (``literal``, ``len``)."""
    if e._op in ("alias", "col"):
        return e._args[-1] if e._op == "alias" else e._args[0]
    if e._op == "lit":
        return "literal"
    if e._op == "len":
        return "len"
    return _output_name(e._args[0])


def _walk(e: Expr, *, into_aggregates: bool = True) -> Iterable[Expr]:
    yield e
    if e._op in _AGGREGATES and not into_aggregates:
        return
    for a in e._args:
        if isinstance(a, Expr):
            yield from _walk(a, into_aggregates=into_aggregates)


def _has_aggregate(e: Expr) -> bool:
    return any(x._op in _AGGREGATES for x in _walk(e))


def _row_columns(e: Expr) -> bool:
    """Does ``e`` read a column outside any aggregate (a per-row value)?"""
    return any(x._op == "col" for x in _walk(e, into_aggregates=False))


def _show(e: Expr) -> str:
    op, args = e._op, e._args
    if op == "col":
        return f'col("{args[0]}")'
    if op == "lit":
        return repr(args[0])
    if op == "len":
        return "len()"
    if op in _SYMBOL:
        return f"({_show(args[0])} {_SYMBOL[op]} {_show(args[1])})"
    if op == "not":
        return f"~{_show(args[0])}"
    if op == "neg":
        return f"-{_show(args[0])}"
    if op == "alias":
        return f"{_show(args[0])}.alias({args[1]!r})"
    if op == "is_in":
        return f"{_show(args[0])}.is_in({list(args[1])!r})"
    if op == "like":
        return f"{_show(args[0])}.str.{args[1]}({args[2]!r})"
    return f"{_show(args[0])}.{op}()"


# ---------------------------------------------------------------------- SQL building
_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@functools.cache
def _needs_quotes(name: str) -> bool:
    """Quote a name unless it reads back unchanged unquoted (lower case, not a keyword)."""
    if not _PLAIN_NAME.fullmatch(name):
        return True
    try:
        tree = sqlglot.parse_one(f"SELECT {name}.{name} AS {name} FROM {name}", read="postgres")
    except sqlglot.errors.SqlglotError:
        return True
    item = tree.expressions[0] if isinstance(tree, exp.Select) and tree.expressions else None
    return not (
        isinstance(item, exp.Alias)
        and item.alias == name
        and isinstance(item.this, exp.Column)
        and item.this.name == name
        and item.this.table == name
    )


def _ident(name: str) -> exp.Identifier:
    return exp.Identifier(this=name, quoted=_needs_quotes(name))


def _column(name: str, table: str) -> exp.Column:
    return exp.Column(this=_ident(name), table=_ident(table))


def _literal(value: Any) -> exp.Expression:
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool) and value < 0:
        return exp.Neg(this=sql_literal(-value))  # the tree the parser makes of "-5"
    return sql_literal(value)


_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg)
_ATOMS = (exp.Column, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.Func, exp.Star)


def _operand(e: exp.Expression) -> exp.Expression:
    return e if isinstance(e, _ATOMS) else exp.Paren(this=e)


def _like_escape(text: str) -> str:
    return re.sub(r"([\\%_])", r"\\\1", text)


class _Scope:
    """What a frame's column names stand for in the SELECT being built."""

    def __init__(self, columns: list[tuple[str, exp.Expression]]) -> None:
        self.columns = dict(columns)

    def get(self, name: str) -> exp.Expression:
        if name not in self.columns:
            raise UnknownColumnError(
                f"unknown column {name!r}: the frame's columns are {', '.join(self.columns)}"
            )
        return self.columns[name].copy()


def _forbid_aggregates(e: Expr, where: str) -> None:
    found = next((x for x in _walk(e) if x._op in _AGGREGATES), None)
    if found is not None:
        raise UnsupportedFrameError(
            f"{_show(found)}: aggregates are allowed only in group_by(...).agg(...) and in a "
            f"select() of aggregates{where}; per-row broadcasting of an aggregate is not "
            "supported (aggregate with group_by().agg() and join the result back)"
        )


def _check_nesting(e: Expr) -> None:
    for x in _walk(e):
        if x._op in _AGGREGATES and x._op != "len":
            _forbid_aggregates(x._args[0], " (not inside another aggregate)")


def _to_sql(e: Expr, scope: _Scope, *, aggregates: bool, where: str = "") -> exp.Expression:
    """Compile ``e`` over ``scope``; ``aggregates``: may ``e`` aggregate here?"""
    op, args = e._op, e._args

    def sub(x: Expr, agg: bool = aggregates) -> exp.Expression:
        return _to_sql(x, scope, aggregates=agg, where=where)

    if op == "col":
        return scope.get(args[0])
    if op == "lit":
        return _literal(args[0])
    if op == "alias":
        return sub(args[0])
    if op in _LOGIC:  # a AND b AND c as the parser nests it; other mixes in parentheses
        cls, (left, right) = _LOGIC[op], map(sub, args)
        if isinstance(left, exp.Connector) and not isinstance(left, cls):
            left = exp.Paren(this=left)
        if isinstance(right, exp.Connector):
            right = exp.Paren(this=right)
        return cls(this=left, expression=right)
    if op == "truediv":
        left, right = (sub(a) for a in args)
        numerator = exp.Cast(this=left, to=exp.DataType.build("DOUBLE PRECISION"))
        return exp.Div(this=numerator, expression=_operand(right), typed=True, safe=False)
    if op in _COMPARE:  # arithmetic binds tighter than a comparison: no parentheses
        left, right = (x if isinstance(x, _ARITHMETIC) else _operand(x) for x in map(sub, args))
        return _COMPARE[op](this=left, expression=right)
    if op in _BINARY:
        left, right = (sub(a) for a in args)
        return _BINARY[op](this=_operand(left), expression=_operand(right))
    if op == "not":
        return exp.Not(this=_operand(sub(args[0])))
    if op == "neg":
        return exp.Neg(this=_operand(sub(args[0])))
    if op in ("is_null", "is_not_null"):
        test = exp.Is(this=_operand(sub(args[0])), expression=exp.Null())
        if op == "is_not_null":
            test.set("negate", True)
        return test
    if op == "is_in":
        value = _operand(sub(args[0]))
        items = [_literal(lit(v)._args[0]) for v in args[1] if v is not None]
        if not items:  # nothing to match: FALSE, NULL for NULL
            return exp.Case(
                ifs=[exp.If(this=exp.Is(this=value, expression=exp.Null()), true=exp.Null())],
                default=exp.false(),
            )
        return exp.In(this=value, expressions=items)
    if op == "like":
        kind, text = args[1], _like_escape(args[2])
        pattern = {"contains": f"%{text}%", "starts_with": f"{text}%", "ends_with": f"%{text}"}
        return exp.Like(this=_operand(sub(args[0])), expression=exp.Literal.string(pattern[kind]))
    if op in _AGGREGATES:
        if not aggregates:
            _forbid_aggregates(e, where)
        if op == "len":
            return exp.Count(this=exp.Star(), big_int=True)
        inner = sub(args[0], False)
        if op == "sum":
            return exp.Coalesce(this=exp.Sum(this=inner), expressions=[exp.Literal.number(0)])
        if op == "mean":
            return exp.Avg(this=inner)
        if op == "min":
            return exp.Min(this=inner)
        if op == "max":
            return exp.Max(this=inner)
        if op == "count":
            return exp.Count(this=inner, big_int=True)
        distinct = exp.Count(this=exp.Distinct(expressions=[inner]), big_int=True)
        has_null = exp.Case(
            ifs=[
                exp.If(
                    this=exp.GT(
                        this=exp.Count(this=exp.Star(), big_int=True),
                        expression=exp.Count(this=inner.copy(), big_int=True),
                    ),
                    true=exp.Literal.number(1),
                )
            ],
            default=exp.Literal.number(0),
        )
        return exp.Add(this=distinct, expression=has_null)
    raise UnsupportedFrameError(f"unknown expression {op!r}")  # pragma: no cover


# ---------------------------------------------------------------------- logical plan
@dataclass(eq=False)
class _Node:
    columns: list[str]


@dataclass(eq=False)
class _Scan(_Node):
    info: TableInfo


@dataclass(eq=False)
class _Filter(_Node):
    child: _Node
    predicate: Expr


@dataclass(eq=False)
class _Project(_Node):
    child: _Node
    items: list[tuple[str, Expr]]


@dataclass(eq=False)
class _Aggregate(_Node):
    child: _Node
    keys: list[tuple[str, Expr]]
    aggs: list[tuple[str, Expr]]


@dataclass(eq=False)
class _Sort(_Node):
    child: _Node
    keys: list[tuple[Expr, bool, bool]]  # expression, descending, nulls_last


@dataclass(eq=False)
class _Limit(_Node):
    child: _Node
    n: int


@dataclass(eq=False)
class _Distinct(_Node):
    child: _Node


@dataclass(eq=False)
class _Join(_Node):
    left: _Node
    right: _Node
    how: str
    left_on: list[str]
    right_on: list[str]
    layout: list[tuple[str, str, str]]  # (output name, side "l"/"r"/"coalesce", input name)


# ---------------------------------------------------------------------- compiling
class _Aliases:
    """Table aliases, unique in the whole statement."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def new(self, base: str) -> str:
        base = base if _PLAIN_NAME.fullmatch(base) else "t"
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name


@dataclass
class _Block:
    """One SELECT under construction; projections and ORDER BY keys are written over the
    FROM items' columns, so a verb can extend the SELECT by substitution."""

    from_: exp.Expression
    projections: list[tuple[str, exp.Expression]]
    joins: list[exp.Join] = field(default_factory=list)
    where: list[exp.Expression] = field(default_factory=list)
    group: list[exp.Expression] | None = None  # [] for an aggregate without keys
    having: list[exp.Expression] = field(default_factory=list)
    distinct: bool = False
    order: list[exp.Ordered] = field(default_factory=list)
    limit: int | None = None

    @property
    def plain(self) -> bool:
        """Rows are still one per FROM row: WHERE, projections and ORDER BY may change."""
        return self.group is None and not self.distinct and self.limit is None

    def scope(self) -> _Scope:
        return _Scope(self.projections)

    def select(self, hidden: Sequence[tuple[str, exp.Expression]] = ()) -> exp.Select:
        items = []
        for name, e in [*self.projections, *hidden]:
            if isinstance(e, exp.Column) and e.name == name:
                items.append(e.copy())
            else:
                items.append(exp.Alias(this=e.copy(), alias=_ident(name)))
        s = exp.Select(expressions=items)
        s.set("from_", exp.From(this=self.from_.copy()))
        if self.joins:
            s.set("joins", [j.copy() for j in self.joins])
        if self.where:
            s.set("where", exp.Where(this=exp.and_(*[w.copy() for w in self.where])))
        if self.group:
            s.set("group", exp.Group(expressions=[g.copy() for g in self.group]))
        if self.having:
            s.set("having", exp.Having(this=exp.and_(*[h.copy() for h in self.having])))
        if self.distinct:
            s.set("distinct", exp.Distinct())
        if self.order:
            s.set("order", exp.Order(expressions=[o.copy() for o in self.order]))
        if self.limit is not None:
            s.set("limit", exp.Limit(expression=exp.Literal.number(self.limit)))
        return s


def _wrap(block: _Block, aliases: _Aliases, *, keep_order: bool = False) -> _Block:
    """``SELECT … FROM (block) AS qN``; with ``keep_order`` the outer query keeps the order
    (through hidden columns of the inner one when a key is not an output)."""
    alias = aliases.new("q")
    hidden: list[tuple[str, exp.Expression]] = []
    order: list[exp.Ordered] = []
    if keep_order:
        for i, o in enumerate(block.order):
            name = next((n for n, e in block.projections if e == o.this), None)
            if name is None:
                name = f"__fl_sort_{i}"
                hidden.append((name, o.this))
            order.append(
                exp.Ordered(
                    this=_column(name, alias),
                    desc=o.args.get("desc"),
                    nulls_first=o.args.get("nulls_first"),
                )
            )
    inner = block.select(hidden)
    if block.limit is None:
        inner.set("order", None)  # order inside a derived table means nothing without LIMIT
    sub = exp.Subquery(this=inner, alias=exp.TableAlias(this=_ident(alias)))
    return _Block(
        from_=sub, projections=[(n, _column(n, alias)) for n, _ in block.projections], order=order
    )


def _compile(node: _Node, aliases: _Aliases) -> _Block:
    if isinstance(node, _Scan):
        info = node.info
        alias = aliases.new(info.name.lower())
        table = exp.Table(this=_ident(info.name), db=_ident(info.source))
        if alias != info.name:
            table.set("alias", exp.TableAlias(this=_ident(alias)))
        return _Block(
            from_=table, projections=[(c.name, _column(c.name, alias)) for c in info.columns]
        )
    if isinstance(node, _Join):
        return _compile_join(node, aliases)
    block = _compile(node.child, aliases)  # type: ignore[attr-defined]
    if isinstance(node, _Filter):
        if block.limit is not None or block.distinct or block.group == []:
            block = _wrap(block, aliases, keep_order=True)
        condition = _to_sql(
            node.predicate, block.scope(), aggregates=False, where=" (not in filter)"
        )
        (block.having if block.group else block.where).append(condition)
        return block
    if isinstance(node, _Project):
        if block.group is not None or block.distinct:
            block = _wrap(block, aliases)
        scope = block.scope()
        block.projections = [(n, _to_sql(e, scope, aggregates=False)) for n, e in node.items]
        return block
    if isinstance(node, _Aggregate):
        if not block.plain:
            block = _wrap(block, aliases)
        block.order = []
        scope = block.scope()
        keys = [
            (n, _to_sql(e, scope, aggregates=False, where=" (not in a key)")) for n, e in node.keys
        ]
        aggs = [(n, _to_sql(e, scope, aggregates=True)) for n, e in node.aggs]
        block.group = [k.copy() for _, k in keys]
        block.projections = keys + aggs
        return block
    if isinstance(node, _Sort):
        if not block.plain:
            block = _wrap(block, aliases)
        scope = block.scope()
        block.order = [
            exp.Ordered(
                this=_to_sql(e, scope, aggregates=False, where=" (not in sort)"),
                desc=descending,
                nulls_first=not nulls_last,
            )
            for e, descending, nulls_last in node.keys
        ]
        return block
    if isinstance(node, _Limit):
        block.limit = node.n if block.limit is None else min(block.limit, node.n)
        return block
    if isinstance(node, _Distinct):
        if block.limit is not None or block.group is not None:
            block = _wrap(block, aliases)
        block.distinct = True
        block.order = []
        return block
    raise FrameError(f"unknown frame step {type(node).__name__}")  # pragma: no cover


def _compile_join(node: _Join, aliases: _Aliases) -> _Block:
    how = node.how
    left = _compile(node.left, aliases)
    right = _compile(node.right, aliases)
    # extend the left SELECT (FROM l … JOIN r) when the left rows are still FROM rows; a
    # RIGHT/FULL join would keep right rows that the left WHERE must not filter
    lscope = left.scope()
    if (
        not left.plain
        or (how in ("right", "full") and left.where)
        or not all(isinstance(lscope.get(k), exp.Column) for k in node.left_on)
    ):
        left = _wrap(left, aliases)
    left.order = []
    lscope = left.scope()

    if how in ("semi", "anti"):
        if not right.plain:
            right = _wrap(right, aliases)
        rscope = right.scope()
        keys = [f"__fl_key_{i}" for i in range(len(node.right_on))]
        right.projections = [(k, rscope.get(r)) for k, r in zip(keys, node.right_on, strict=True)]
        right.distinct = True
        right.order = []
        alias = aliases.new("keys")
        on = exp.and_(
            *[
                exp.EQ(this=lscope.get(lk), expression=_column(k, alias))
                for lk, k in zip(node.left_on, keys, strict=True)
            ]
        )
        sub = exp.Subquery(this=right.select(), alias=exp.TableAlias(this=_ident(alias)))
        if how == "semi":
            left.joins.append(exp.Join(this=sub, on=on))
        else:
            left.joins.append(exp.Join(this=sub, on=on, side="LEFT"))
            left.where.append(exp.Is(this=_column(keys[0], alias), expression=exp.Null()))
        return left

    # the right side: its table itself when it is a plain scan (its filters join the ON
    # clause of an inner or left join), else a derived table
    simple = (
        isinstance(right.from_, exp.Table)
        and not right.joins
        and right.plain
        and all(isinstance(e, exp.Column) for _, e in right.projections)
    )
    if simple and (not right.where or how in ("inner", "left")):
        source, rscope, extra = right.from_, right.scope(), right.where
    else:
        right = _wrap(right, aliases)
        source, rscope, extra = right.from_, right.scope(), []
    conditions = [
        exp.EQ(this=lscope.get(lk), expression=rscope.get(rk))
        for lk, rk in zip(node.left_on, node.right_on, strict=True)
    ] + [e.copy() for e in extra]
    if how == "cross":
        join = exp.Join(this=source, kind="CROSS")
    else:
        side = {"inner": None, "left": "LEFT", "right": "RIGHT", "full": "FULL"}[how]
        join = exp.Join(this=source, on=exp.and_(*conditions), side=side)
    left.joins.append(join)
    projections = []
    for name, side, source_name in node.layout:
        if side == "l":
            projections.append((name, lscope.get(source_name)))
        elif side == "r":
            projections.append((name, rscope.get(source_name)))
        else:  # full join with coalesce=True: the key from whichever side has it
            rk = node.right_on[node.left_on.index(source_name)]
            projections.append(
                (name, exp.Coalesce(this=lscope.get(source_name), expressions=[rscope.get(rk)]))
            )
    left.projections = projections
    return left


def _join_layout(
    how: str,
    left: list[str],
    right: list[str],
    left_on: list[str],
    right_on: list[str],
    suffix: str,
    coalesce: bool | None,
) -> list[tuple[str, str, str]]:
    """Polars' output columns of a join: (name, side, input column)."""
    if how in ("semi", "anti"):
        return [(c, "l", c) for c in left]
    if coalesce is None:
        coalesce = how in ("inner", "left", "right")
    if how == "cross":
        coalesce = False
    if how == "right" and coalesce:
        lefts = [(c, "l", c) for c in left if c not in left_on]
        rights = list(right)
    else:
        full_keys = how == "full" and coalesce
        lefts = [(c, "coalesce" if full_keys and c in left_on else "l", c) for c in left]
        rights = [c for c in right if not (coalesce and c in right_on)]
    left_names = {name for name, _, _ in lefts}
    taken = set(left_names)
    out = list(lefts)
    for c in rights:
        name = c + suffix if c in left_names else c
        if name in taken:
            raise FrameError(
                f"join output would have two columns named {name!r}; rename a column "
                "before joining or choose another suffix="
            )
        taken.add(name)
        out.append((name, "r", c))
    return out


# ---------------------------------------------------------------------- the frame
_HOWS = ("inner", "left", "right", "full", "cross", "semi", "anti")


class FederatedFrame:
    """A lazy query over the federation, built with Polars-like verbs.

    Nothing runs until :meth:`collect`, :meth:`result` or :meth:`explain`; every verb
    returns a new frame. See the module docstring for the semantics.
    """

    def __init__(self, federation: Federation, node: _Node) -> None:
        self._fed = federation
        self._node = node

    @classmethod
    def table(cls, federation: Federation, name: str) -> FederatedFrame:
        """All rows and columns of table ``name`` (bare or ``source.table``, as in SQL)."""
        if not isinstance(name, str) or not name.strip():
            raise FrameError(f"table() takes a table name, got {name!r}")
        try:
            ref = exp.to_table(name, dialect=federation.dialect)
        except sqlglot.errors.SqlglotError:
            raise FrameError(f"not a table name: {name!r} (use table or source.table)") from None
        if ref.args.get("catalog") or not ref.name:
            raise FrameError(f"not a table name: {name!r} (use table or source.table)")
        info = federation.catalog.resolve(ref.name, ref.db or None)
        return cls(federation, _Scan([c.name for c in info.columns], info))

    # -- inspection
    @property
    def columns(self) -> list[str]:
        """The output column names, in order."""
        return list(self._node.columns)

    def _tree(self) -> exp.Select:
        return _compile(self._node, _Aliases()).select()

    def sql(self, *, pretty: bool = False, dialect: str | None = None) -> str:
        """The query as SQL text (the federation's input dialect, PostgreSQL by default)."""
        return self._tree().sql(dialect=dialect or self._fed.dialect, pretty=pretty)

    def explain(self, strategy: str | None = None) -> Plan:
        """The plan the query would run under ``strategy``; nothing is executed."""
        return self._fed.explain(self.sql(), strategy=strategy)

    def result(
        self, strategy: str | None = None, *, timeout: float | None = None
    ) -> FederatedResult:
        """Run the query: the frame, its plan and its trace."""
        return self._fed.sql(self.sql(), strategy=strategy, timeout=timeout)

    def collect(self, strategy: str | None = None, *, timeout: float | None = None) -> pl.DataFrame:
        """Run the query and return its rows as a Polars frame."""
        return self.result(strategy, timeout=timeout).df

    # -- verbs
    def _with(self, node: _Node) -> FederatedFrame:
        return FederatedFrame(self._fed, node)

    def _check(self, e: Expr) -> None:
        """Fail now (not at collect) on a column the frame does not have."""
        for x in _walk(e):
            if x._op == "col" and x._args[0] not in self._node.columns:
                raise UnknownColumnError(
                    f"unknown column {x._args[0]!r}: the frame's columns are "
                    f"{', '.join(self._node.columns)}"
                )

    def _items(
        self, exprs: Sequence[Any], named: dict[str, Any], verb: str
    ) -> list[tuple[str, Expr]]:
        items = [(_output_name(e), e) for e in map(_as_column, _flatten(exprs))]
        # as in Polars, a string names a column here too (select(x="a")); other values are literals
        items += [
            (n, _as_column(v) if isinstance(v, str) else _as_expr(v)) for n, v in named.items()
        ]
        names = [n for n, _ in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise FrameError(
                f"{verb}() would make several columns named {', '.join(map(repr, dupes))}; "
                "give them distinct names with .alias()"
            )
        for _, e in items:
            self._check(e)
        return items

    def filter(self, *predicates: Any, **constraints: Any) -> FederatedFrame:
        """Keep the rows where every predicate is true (``name=value`` means ``col == value``)."""
        parts = [_as_column(p) for p in _flatten(predicates)]
        parts += [col(name) == value for name, value in constraints.items()]
        if not parts:
            raise FrameError("filter() needs at least one predicate")
        predicate = parts[0]
        for p in parts[1:]:
            predicate = predicate & p
        self._check(predicate)
        _forbid_aggregates(predicate, " (not in filter)")
        return self._with(_Filter(self.columns, self._node, predicate))

    def select(self, *exprs: Any, **named: Any) -> FederatedFrame:
        """These columns / expressions only (all aggregates: one row)."""
        items = self._items(exprs, named, "select")
        if not items:
            raise FrameError("select() needs at least one column or expression")
        per_row = [e for _, e in items if _row_columns(e)]
        aggregated = [e for _, e in items if _has_aggregate(e)]
        if aggregated and per_row:
            raise UnsupportedFrameError(
                f"select() mixes per-row expressions ({_show(per_row[0])}) with aggregates "
                f"({_show(aggregated[0])}); broadcasting is not supported: use "
                "group_by(...).agg(...) or select only aggregates"
            )
        if aggregated:
            for e in aggregated:
                _check_nesting(e)
            return self._with(_Aggregate([n for n, _ in items], self._node, [], items))
        if not per_row:
            raise UnsupportedFrameError(
                "select() of literals only is not supported; select at least one column"
            )
        return self._with(_Project([n for n, _ in items], self._node, items))

    def with_columns(self, *exprs: Any, **named: Any) -> FederatedFrame:
        """Add columns, or replace those of the same name (all computed from this frame)."""
        items = self._items(exprs, named, "with_columns")
        for _, e in items:
            _forbid_aggregates(e, " (not in with_columns)")
        new = dict(items)
        out = [(c, new.pop(c) if c in new else col(c)) for c in self.columns]
        out += list(new.items())
        return self._with(_Project([n for n, _ in out], self._node, out))

    def rename(self, mapping: dict[str, str]) -> FederatedFrame:
        """Rename columns (``{"old": "new"}``)."""
        for old in mapping:
            self._check(col(old))
        out = [(mapping.get(c, c), col(c)) for c in self.columns]
        names = [n for n, _ in out]
        if len(set(names)) != len(names):
            raise FrameError(f"rename() would make duplicate column names: {names}")
        return self._with(_Project(names, self._node, out))

    def drop(self, *columns: str) -> FederatedFrame:
        """All columns but these."""
        gone = _key_names(columns)
        for c in gone:
            self._check(col(c))
        keep = [c for c in self.columns if c not in gone]
        if not keep:
            raise FrameError("drop() would leave no columns")
        return self._with(_Project(keep, self._node, [(c, col(c)) for c in keep]))

    def group_by(self, *by: Any, maintain_order: bool = False, **named_by: Any) -> GroupBy:
        """Group by these columns / expressions; finish with ``.agg(...)``."""
        if maintain_order:
            raise UnsupportedFrameError(
                "group_by(maintain_order=True) is not supported: groups come in no fixed "
                "order; sort() the result"
            )
        keys = self._items(by, named_by, "group_by")
        if not keys:
            raise FrameError("group_by() needs at least one key")
        for _, k in keys:
            _require_column(k, "group_by")
            _forbid_aggregates(k, " (not in a group_by key)")
        return GroupBy(self, keys)

    def sort(
        self,
        by: Any,
        *more_by: Any,
        descending: bool | Sequence[bool] = False,
        nulls_last: bool | Sequence[bool] = False,
        maintain_order: bool = False,
    ) -> FederatedFrame:
        """Sort as Polars does: NULLs first unless ``nulls_last=True`` (either direction)."""
        if maintain_order:
            raise UnsupportedFrameError(
                "sort(maintain_order=True) (a stable sort) is not supported"
            )
        keys = [_as_column(k) for k in _flatten([by, *more_by])]
        desc = _per_key(descending, len(keys), "descending")
        last = _per_key(nulls_last, len(keys), "nulls_last")
        for k in keys:
            self._check(k)
            _require_column(k, "sort")
            _forbid_aggregates(k, " (not in sort)")
        node = _Sort(self.columns, self._node, list(zip(keys, desc, last, strict=True)))
        return self._with(node)

    def limit(self, n: int = 5) -> FederatedFrame:
        """The first ``n`` rows (of the current order, if any)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise FrameError(f"limit() takes a whole number of rows >= 0, got {n!r}")
        return self._with(_Limit(self.columns, self._node, n))

    def head(self, n: int = 5) -> FederatedFrame:
        """The first ``n`` rows (same as :meth:`limit`)."""
        return self.limit(n)

    def unique(
        self, subset: Any = None, *, keep: str = "any", maintain_order: bool = False
    ) -> FederatedFrame:
        """Distinct rows (``SELECT DISTINCT``)."""
        if subset is not None:
            names = [subset] if isinstance(subset, str) else list(subset)
            if sorted(names) != sorted(self.columns):
                raise UnsupportedFrameError(
                    "unique(subset=...) keeps an arbitrary row per key and is not supported; "
                    "use unique() on a select() of the key columns, or group_by().agg()"
                )
        if keep not in ("any", "first", "last") or maintain_order:
            raise UnsupportedFrameError(
                "unique() supports keep='any' (or 'first'/'last', the same for whole rows) "
                "without maintain_order"
            )
        return self._with(_Distinct(self.columns, self._node))

    def join(
        self,
        other: FederatedFrame,
        on: Any = None,
        how: str = "inner",
        *,
        left_on: Any = None,
        right_on: Any = None,
        suffix: str = "_right",
        coalesce: bool | None = None,
    ) -> FederatedFrame:
        """Join with ``other`` as Polars does (``how``: inner, left, right, full, cross,
        semi, anti; clashing right columns get ``suffix``). NULL keys never match."""
        if not isinstance(other, FederatedFrame):
            raise FrameError(
                f"join() takes another frame of the federation, got {type(other).__name__}"
            )
        if other._fed is not self._fed:
            raise FrameError("join() needs two frames of the same federation")
        if how not in _HOWS:
            raise UnsupportedFrameError(
                f"join(how={how!r}) is not supported; choose one of {', '.join(_HOWS)}"
            )
        if how == "cross":
            if on is not None or left_on is not None or right_on is not None:
                raise FrameError("a cross join takes no keys (on / left_on / right_on)")
            lk: list[str] = []
            rk: list[str] = []
        elif on is not None:
            if left_on is not None or right_on is not None:
                raise FrameError("join() takes on= or left_on=/right_on=, not both")
            lk = rk = _key_names(on)
        elif left_on is not None and right_on is not None:
            lk, rk = _key_names(left_on), _key_names(right_on)
        else:
            raise FrameError(f"a {how} join needs on= or both left_on= and right_on=")
        if len(lk) != len(rk):
            raise FrameError(f"left_on has {len(lk)} key(s) but right_on has {len(rk)}")
        for k in lk:
            self._check(col(k))
        for k in rk:
            other._check(col(k))
        layout = _join_layout(how, self.columns, other.columns, lk, rk, suffix, coalesce)
        node = _Join([n for n, _, _ in layout], self._node, other._node, how, lk, rk, layout)
        return self._with(node)

    # -- display
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnsupportedMethodError(
            f"FederatedFrame.{name}() is not supported; supported verbs: {SUPPORTED_VERBS}"
        )

    def __repr__(self) -> str:
        return f"<FederatedFrame [{', '.join(self.columns)}]>\n{self.sql(pretty=True)}"


class GroupBy:
    """``frame.group_by(keys)``: finish with :meth:`agg` (or :meth:`len`)."""

    def __init__(self, frame: FederatedFrame, keys: list[tuple[str, Expr]]) -> None:
        self._frame = frame
        self._keys = keys

    def agg(self, *aggs: Any, **named_aggs: Any) -> FederatedFrame:
        """One row per group: the keys, then these aggregates."""
        frame = self._frame
        items = frame._items(aggs, named_aggs, "agg")
        for _, e in items:
            _check_nesting(e)
            if _row_columns(e):
                raise UnsupportedFrameError(
                    f"agg({_show(e)}): every column must be inside an aggregate "
                    "(sum, mean, min, max, count, n_unique, len); per-group lists are not supported"
                )
        names = [n for n, _ in self._keys] + [n for n, _ in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise FrameError(
                f"group_by().agg() would make several columns named {', '.join(map(repr, dupes))}; "
                "give them distinct names with .alias()"
            )
        return frame._with(_Aggregate(names, frame._node, list(self._keys), items))

    def len(self, name: str | None = None) -> FederatedFrame:
        """Rows per group (a column ``len``)."""
        return self.agg(len_().alias(name or "len"))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnsupportedMethodError(
            f"GroupBy.{name}() is not supported; use .agg(...) with {SUPPORTED_EXPRESSIONS}"
        )


def _key_names(keys: Any) -> list[str]:
    out = []
    for k in _flatten([keys]):
        if isinstance(k, str):
            out.append(k)
        elif isinstance(k, Expr) and k._op == "col":
            out.append(k._args[0])
        else:
            raise UnsupportedFrameError(f"join keys must be column names, got {k!r}")
    if not out:
        raise FrameError("join keys are empty")
    return out


def _per_key(value: bool | Sequence[bool], n: int, what: str) -> list[bool]:
    if isinstance(value, bool):
        return [value] * n
    values = list(value)
    if len(values) != n or not all(isinstance(v, bool) for v in values):
        raise FrameError(f"sort({what}=...) takes one bool or one per key ({n})")
    return values


def _require_column(e: Expr, verb: str) -> None:
    # a constant key would be read as a column position (ORDER BY 1, GROUP BY 1)
    if not any(x._op == "col" for x in _walk(e)):
        raise UnsupportedFrameError(f"{verb}() by a constant ({_show(e)}) is not supported")
