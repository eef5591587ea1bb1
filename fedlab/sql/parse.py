"""Parse one read-only query and bind its ``:name`` parameters as typed literals.

>>> parse_query("SELECT a FROM t WHERE c = :c", params={"c": "US"}).sql()
"SELECT a FROM t WHERE c = 'US'"
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Mapping
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from fedlab.errors import NotAQueryError, ParameterError, SQLSyntaxError, UnsupportedSQLError

__all__ = ["literal", "parse_query"]

#: statements fedlab reads; everything else is refused before any source is touched
_QUERY_TYPES = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)
_WRITE_NODES = (
    "Insert",
    "Update",
    "Delete",
    "Create",
    "Drop",
    "Merge",
    "Into",
    "Alter",
    "Command",
    "TruncateTable",
    "Set",
    "Use",
    "Transaction",
    "Commit",
    "Rollback",
    "Grant",
    "Copy",
    "Pragma",
    "Analyze",
    "Attach",
    "Detach",
    "Cache",
    "Uncache",
    "LoadData",
)


_MISSING = re.compile(r"Required keyword: '(\w+)' missing for <class '[\w.]*?(\w+)'>")


def _plain(desc: str) -> str:
    """sqlglot's parser messages, said in SQL terms."""
    m = _MISSING.search(desc)
    if m:
        return f"incomplete {m.group(2).upper()}: something is missing after it"
    return desc


def parse_query(
    sql: str, *, dialect: str = "postgres", params: Mapping[str, Any] | None = None
) -> exp.Query:
    """Parse ``sql`` (exactly one read-only query) and bind ``params``.

    Raises:
        SQLSyntaxError: the text does not parse (the message has line and column).
        NotAQueryError: the statement would write or change something.
        ParameterError: a ``:name`` has no value, or a value cannot be a literal.
    """
    if not isinstance(sql, str) or not sql.strip():
        raise SQLSyntaxError("empty SQL: expected one SELECT query")
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except ParseError as e:
        err = e.errors[0] if e.errors else {}
        where = ""
        if err.get("line"):
            where = f" at line {err['line']}, column {err['col']}"
        near = err.get("highlight") or ""
        desc = _plain(err.get("description") or str(e).splitlines()[0])
        raise SQLSyntaxError(
            f"SQL syntax error{where}: {desc}" + (f" (near {near!r})" if near else "")
        ) from None
    except TokenError as e:
        raise SQLSyntaxError(f"SQL syntax error: {e}") from None
    except RecursionError:
        raise SQLSyntaxError("SQL syntax error: the query is nested too deeply") from None
    if len(statements) != 1:
        raise SQLSyntaxError(f"expected exactly one statement, got {len(statements)}")
    tree = statements[0]
    writes = tuple(getattr(exp, n) for n in _WRITE_NODES if hasattr(exp, n))
    if not isinstance(tree, _QUERY_TYPES + writes):
        raise SQLSyntaxError(
            f"SQL syntax error at line 1, column 1: expected a query (SELECT, WITH or VALUES), "
            f"got {sql.strip()[:40]!r}"
        )
    if not isinstance(tree, _QUERY_TYPES) or tree.find(*writes):
        kind = type(tree).__name__.upper()
        if isinstance(tree, exp.Command):
            kind = str(tree.this).upper()
        raise NotAQueryError(
            f"fedlab runs read-only queries only; this statement is {kind} "
            "(a SELECT, WITH … SELECT, VALUES or set operation)"
        )
    if any(i.quoted and not i.this for i in tree.find_all(exp.Identifier)):
        raise SQLSyntaxError('SQL syntax error: zero-length delimited identifier ""')
    if tree.find(exp.Lock):
        raise NotAQueryError(
            "SELECT ... FOR UPDATE/SHARE takes locks; fedlab queries are read-only"
        )
    if isinstance(tree, exp.Subquery):
        tree = tree.unnest()
    if params is not None and not isinstance(params, Mapping):
        raise ParameterError(
            f"params must be a mapping of names to values, not {type(params).__name__}"
        )
    return _bind_params(tree, params or {})


def literal(value: Any, name: str = "?") -> exp.Expression:
    """A typed SQL literal for a Python value (never text pasted into SQL)."""
    if value is None:
        return exp.null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ParameterError(f"parameter :{name} is {value!r}, which SQL cannot compare")
        return exp.Literal.number(repr(value))
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ParameterError(f"parameter :{name} is {value!r}, which SQL cannot compare")
        return exp.Literal.number(str(value))
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, dt.datetime):
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), "TIMESTAMP")
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), "DATE")
    raise ParameterError(
        f"parameter :{name} has type {type(value).__name__}; "
        "use str, int, float, Decimal, bool, date, datetime, None, or a list of these"
    )


def _bind_params(tree: exp.Expression, params: Mapping[str, Any]) -> exp.Query:
    placeholders = list(tree.find_all(exp.Placeholder))
    if not placeholders:
        return tree  # type: ignore[return-value]
    missing = sorted({p.name for p in placeholders if p.name and p.name not in params})
    if missing:
        raise ParameterError(
            f"missing value for parameter(s) {', '.join(':' + m for m in missing)}; "
            f"given: {', '.join(sorted(map(str, params))) or 'none'}"
        )
    for p in placeholders:
        if not p.name:
            raise UnsupportedSQLError("positional '?' parameters are not supported; use :name")
        value = params[p.name]
        if isinstance(value, list | tuple | set | frozenset):
            items = [literal(v, p.name) for v in value]
            parent = p.parent
            if isinstance(parent, exp.In) and p in parent.expressions:
                idx = parent.expressions.index(p)
                parent.set(
                    "expressions",
                    parent.expressions[:idx] + items + parent.expressions[idx + 1 :],
                )
                continue
            if isinstance(parent, exp.In) and parent.args.get("field") is p:  # IN :ids
                if not items:
                    raise ParameterError(f"parameter :{p.name} is an empty list")
                parent.set("field", None)
                parent.set("expressions", items)
                continue
            raise ParameterError(
                f"parameter :{p.name} is a list; lists are allowed only inside IN (:{p.name})"
            )
        p.replace(literal(value, p.name))
    return tree  # type: ignore[return-value]
