"""Render the engine-neutral residual tree as SQL that Polars' SQL engine runs.

Polars SQL is close to PostgreSQL; the differences that change answers are handled here:
integer division (``//`` truncates in Polars, ``/`` would give a float) and identifiers
(always quoted, so ``"?column?"`` and mixed case survive).
"""

from __future__ import annotations

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres

__all__ = ["PolarsSQL", "residual_sql"]


class PolarsSQL(Postgres):
    """sqlglot dialect for Polars' SQLContext (PostgreSQL-flavoured)."""

    class Generator(Postgres.Generator):
        TRANSFORMS = {
            **Postgres.Generator.TRANSFORMS,
            exp.IntDiv: lambda self, e: f"({self.sql(e, 'this')} // {self.sql(e, 'expression')})",
        }

        def like_sql(self, expression: exp.Like) -> str:
            regex = _like_regex(expression.expression, "\\")
            if regex is None:
                return super().like_sql(expression)
            return _neg(
                expression,
                f"({self.sql(expression, 'this')} ~ {self.sql(exp.Literal.string(regex))})",
            )

        def ilike_sql(self, expression: exp.ILike) -> str:
            regex = _like_regex(expression.expression, "\\")
            if regex is None:
                return super().ilike_sql(expression)
            return _neg(
                expression,
                f"({self.sql(expression, 'this')} ~ {self.sql(exp.Literal.string('(?i)' + regex))})",
            )

        def escape_sql(self, expression: exp.Escape) -> str:
            inner, esc = expression.this, expression.expression
            if isinstance(inner, exp.Like | exp.ILike) and isinstance(esc, exp.Literal):
                regex = _like_regex(inner.expression, esc.name)
                if regex is not None:
                    flag = "(?i)" if isinstance(inner, exp.ILike) else ""
                    return _neg(
                        inner,
                        f"({self.sql(inner, 'this')} ~ {self.sql(exp.Literal.string(flag + regex))})",
                    )
            return super().escape_sql(expression)

        def interval_sql(self, expression: exp.Interval) -> str:
            unit = expression.unit.name if expression.unit else ""
            value = expression.this
            if isinstance(value, exp.Literal) and unit:
                return f"INTERVAL '{value.name} {unit.lower()}'"
            return super().interval_sql(expression)


def _neg(node: exp.Expression, sql: str) -> str:
    return f"(NOT {sql})" if node.args.get("negate") else sql


_REGEX_META = set("\\.+*?()|[]{}^$")


def _like_regex(pattern: exp.Expression, escape: str) -> str | None:
    r"""A LIKE pattern literal as an anchored regex (Polars' LIKE knows no escapes).

    >>> _like_regex(exp.Literal.string("a\\_b%"), "\\")
    '(?s)^a_b.*$'
    """
    if not (isinstance(pattern, exp.Literal) and pattern.is_string):
        return None
    text, out, i = pattern.this, [], 0
    while i < len(text):
        ch = text[i]
        if escape and ch == escape and i + 1 < len(text):
            i += 1
            lit = text[i]
            out.append("\\" + lit if lit in _REGEX_META else lit)
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append("\\" + ch if ch in _REGEX_META else ch)
        i += 1
    return "(?s)^" + "".join(out) + "$"


HIDDEN_PREFIX = "__fl_order_"


def _order_by_outputs(select: exp.Select, *, allow_hidden: bool) -> None:
    """Polars resolves ORDER BY names against the *output* columns, ignoring qualifiers
    (``ORDER BY o.id`` picks an output column ``id`` that may be ``p.id``). Point every
    ORDER BY key at an output column: the projection it equals, else (outermost query
    only) a hidden projection that the executor drops."""
    order = select.args.get("order")
    if order is None:
        return
    outputs = {s.alias_or_name for s in select.selects}
    for i, o in enumerate(order.expressions):
        key = o.this
        if isinstance(key, exp.Literal):  # ordinal
            continue
        match = next(
            (s for s in select.selects if isinstance(s, exp.Alias) and s.this == key), None
        )
        if match is not None:
            o.set("this", exp.column(match.alias, quoted=True))
            continue
        if isinstance(key, exp.Column) and not key.table and key.name in outputs:
            continue  # already an output name
        if isinstance(key, exp.Column) and key.name not in outputs:
            continue  # no output column it could be confused with
        if allow_hidden and not select.args.get("distinct"):
            name = f"{HIDDEN_PREFIX}{i}"
            select.select(exp.alias_(key.copy(), name, quoted=True), copy=False)
            o.set("this", exp.column(name, quoted=True))


def _round_half_away(x: exp.Expression) -> exp.Expression:
    return exp.Case(
        ifs=[
            exp.If(
                this=exp.LT(this=x.copy(), expression=exp.Literal.number(0)),
                true=exp.Ceil(this=exp.Sub(this=x.copy(), expression=exp.Literal.number(0.5))),
            )
        ],
        default=exp.Floor(this=exp.Add(this=x.copy(), expression=exp.Literal.number(0.5))),
    )


def _cast_rounds(node: exp.Expression) -> exp.Expression:
    """PostgreSQL rounds (half away from zero) a numeric cast to an integer; Polars truncates."""
    if (
        isinstance(node, exp.Cast)
        and node.to.is_type(*exp.DataType.INTEGER_TYPES)
        and node.this.type is not None
        and node.this.type.is_type(*exp.DataType.REAL_TYPES)
    ):
        node.set("this", _round_half_away(node.this))
    return node


def _one_side_on_filters(select: exp.Select) -> None:
    """Polars SQL resolves some ON predicates (e.g. ``NOT (…)``) against the left input
    only. A predicate of an ON clause that reads just one input of the join is moved into
    a filtered derived table of that input (same answer for inner and outer joins)."""
    joins = select.args.get("joins") or []
    for j in joins:
        side = (j.side or "").upper()
        if j.args.get("on") is None or side == "FULL":
            continue
        # the input the predicate may filter: the null-supplying one of an outer join
        targets = []
        if side in ("", "LEFT"):
            targets.append(j.this)
        if side == "RIGHT" and len(joins) == 1 and select.args.get("from_") is not None:
            targets.append(select.args["from_"].this)
        for item in targets:
            if not isinstance(item, exp.Table) or not item.alias_or_name:
                continue
            alias = item.alias_or_name
            on = j.args["on"]
            conj = list(on.flatten()) if isinstance(on, exp.And) else [on]
            mine = [
                c
                for c in conj
                if not c.find(exp.Query)
                and {col.table for col in c.find_all(exp.Column)} == {alias}
            ]
            if not mine or len(mine) == len(conj):
                continue  # nothing to move, or keep the join condition in ON
            inner = exp.select("*").from_(item.copy()).where(exp.and_(*[c.copy() for c in mine]))
            item.replace(
                exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias)))
            )
            j.set("on", exp.and_(*[c.copy() for c in conj if not any(c is m for m in mine)]))


def prepare(tree: exp.Expression) -> exp.Expression:
    """A copy of the engine-neutral residual adjusted to Polars' semantics."""
    tree = tree.copy()
    for select in list(tree.find_all(exp.Select)):
        _one_side_on_filters(select)
    tree = tree.transform(_cast_rounds, copy=False)
    for select in tree.find_all(exp.Select):
        _order_by_outputs(select, allow_hidden=select is tree)
    return tree


def residual_sql(tree: exp.Expression, *, pretty: bool = False) -> str:
    """The residual as Polars SQL text."""
    return prepare(tree).sql(dialect=PolarsSQL, pretty=pretty, identify=True)
