"""The cost model: how many rows a fragment is expected to return.

Deliberately simple, in the System R tradition: the catalog's row counts (and min/max of
integer key columns) times fixed selectivities per predicate shape. The planner only
needs the *order of magnitude* right, to decide which side of a cross-database join is
small enough to read first and ship its keys to the other side.

>>> import sqlglot
>>> from fedlab.catalog import ColumnInfo, TableInfo
>>> from sqlglot import exp
>>> t = TableInfo("s", "orders", [ColumnInfo("id", "bigint", exp.DataType.build("BIGINT"))],
...               primary_key=["id"], row_estimate=1000, key_ranges={"id": (0, 1000)})
>>> selectivity(sqlglot.parse_one("o.id = 7"), t)
0.001
>>> selectivity(sqlglot.parse_one("o.id <= 250"), t)
0.25
>>> round(selectivity(sqlglot.parse_one("o.status = 'x' OR o.status = 'y'"), t), 2)
0.19
"""

from __future__ import annotations

from sqlglot import exp

from fedlab.catalog import TableInfo

__all__ = ["estimate_query", "selectivity"]

#: selectivity of a predicate shape when the catalog knows nothing better
EQ = 0.1
RANGE = 1 / 3
BETWEEN = 0.25
LIKE = 0.1
IS_NULL = 0.05
OTHER = 0.5
#: fraction of input rows that become groups, and that pass a HAVING
GROUPS = 0.1
HAVING = 1 / 3


def _number(e: exp.Expression) -> float | None:
    if isinstance(e, exp.Neg):
        v = _number(e.this)
        return None if v is None else -v
    if isinstance(e, exp.Literal) and not e.is_string:
        try:
            return float(e.this)
        except ValueError:
            return None
    return None


def _column(e: exp.Expression, info: TableInfo | None) -> str | None:
    if isinstance(e, exp.Column) and info is not None and info.column(e.name) is not None:
        return info.column(e.name).name
    return None


def _fraction(info: TableInfo, col: str, lo: float | None, hi: float | None) -> float | None:
    rng = info.key_ranges.get(col)
    if not rng or rng[0] is None or rng[1] is None:
        return None
    a, b = float(rng[0]), float(rng[1])
    if b <= a:
        return None
    lo = a if lo is None else max(lo, a)
    hi = b if hi is None else min(hi, b)
    return max(0.0, min(1.0, (hi - lo) / (b - a)))


def _rows(info: TableInfo | None) -> int:
    return max(1, (info.row_estimate or 1) if info else 1)


def _is_key(info: TableInfo | None, col: str | None) -> bool:
    return bool(info and col and info.primary_key == [col])


def selectivity(pred: exp.Expression, info: TableInfo | None = None) -> float:
    """Fraction of ``info``'s rows that satisfy ``pred`` (a filter on that one table)."""
    if isinstance(pred, exp.Paren):
        return selectivity(pred.this, info)
    if isinstance(pred, exp.And):
        return selectivity(pred.this, info) * selectivity(pred.expression, info)
    if isinstance(pred, exp.Or):
        a, b = selectivity(pred.this, info), selectivity(pred.expression, info)
        return a + b - a * b
    if isinstance(pred, exp.Not):
        return max(0.0, 1.0 - selectivity(pred.this, info))
    if isinstance(pred, exp.EQ):
        col = _column(pred.this, info) or _column(pred.expression, info)
        return 1.0 / _rows(info) if _is_key(info, col) else EQ
    if isinstance(pred, exp.NEQ):
        return 1.0 - EQ
    if isinstance(pred, exp.In):
        col = _column(pred.this, info)
        n = len(pred.expressions)
        if not n:  # IN (subquery)
            return OTHER
        if _is_key(info, col):
            return min(1.0, n / _rows(info))
        return min(OTHER, EQ * n)
    if isinstance(pred, exp.Between):
        col = _column(pred.this, info)
        lo, hi = _number(pred.args["low"]), _number(pred.args["high"])
        if col and lo is not None and hi is not None:
            f = _fraction(info, col, lo, hi)
            if f is not None:
                return f
        return BETWEEN
    if isinstance(pred, exp.GT | exp.GTE | exp.LT | exp.LTE):
        left, right = pred.this, pred.expression
        col, value, upper = _column(left, info), _number(right), isinstance(pred, exp.LT | exp.LTE)
        if col is None:  # literal on the left: flip
            col, value, upper = _column(right, info), _number(left), not upper
        if col and value is not None:
            f = _fraction(info, col, None, value) if upper else _fraction(info, col, value, None)
            if f is not None:
                return f
        return RANGE
    if isinstance(pred, exp.Like | exp.ILike):
        return LIKE
    if isinstance(pred, exp.Is):
        return IS_NULL
    return OTHER


def _table_estimate(table: exp.Table, conjuncts: list[exp.Expression]) -> float:
    info: TableInfo | None = table.meta.get("fedlab_table")
    alias = table.alias_or_name
    sel = 1.0
    for c in conjuncts:
        refs = {col.table for col in c.find_all(exp.Column) if col.table}
        if refs == {alias}:
            sel *= selectivity(c, info)
    return _rows(info) * sel


def estimate_query(node: exp.Expression) -> float:
    """Rows a bound (sub)query is expected to return (catalog statistics × selectivities).

    Joins are assumed to follow foreign keys: a join returns about as many rows as its
    largest filtered input, times the selectivity of the filters on the other inputs.
    """
    if isinstance(node, exp.Subquery):
        return estimate_query(node.this)
    if isinstance(node, exp.SetOperation):
        return estimate_query(node.left) + estimate_query(node.right)
    if not isinstance(node, exp.Select):
        return 1.0
    from_ = node.args.get("from_")
    items = ([from_.this] if from_ is not None else []) + [
        j.this for j in node.args.get("joins") or []
    ]
    where = node.args.get("where")
    conj = _flatten(where.this if where is not None else None)
    for j in node.args.get("joins") or []:
        conj += _flatten(j.args.get("on"))
    sizes, fractions = [], []
    for item in items:
        if isinstance(item, exp.Table) and item.meta.get("fedlab_table"):
            info: TableInfo = item.meta["fedlab_table"]
            est = _table_estimate(item, conj)
            sizes.append(est)
            fractions.append(est / _rows(info))
        elif isinstance(item, exp.Subquery | exp.Table):
            est = estimate_query(item.this) if isinstance(item, exp.Subquery) else 1.0
            sizes.append(est)
            fractions.append(1.0)
    if not sizes:
        rows = 1.0
    else:
        big = max(range(len(sizes)), key=lambda i: sizes[i])
        rows = sizes[big]
        for i, f in enumerate(fractions):
            if i != big:
                rows *= f
    # subquery predicates (IN / EXISTS over another query): a rough halving each
    for c in conj:
        if any(isinstance(x, exp.Query) for x in c.walk() if x is not c):
            rows *= OTHER
    group = node.args.get("group")
    has_agg = any(p.find(exp.AggFunc) for p in node.expressions)
    if group is not None:
        rows = max(1.0, rows * GROUPS)
        if node.args.get("having") is not None:
            rows *= HAVING
    elif has_agg:
        rows = 1.0
    elif node.args.get("distinct") is not None:
        rows *= OTHER
    limit = node.args.get("limit")
    if limit is not None:
        n = _number(limit.expression) if isinstance(limit, exp.Limit) else None
        if n is not None:
            rows = min(rows, n)
    return max(1.0, rows)


def _flatten(e: exp.Expression | None) -> list[exp.Expression]:
    if e is None:
        return []
    if isinstance(e, exp.Paren) and isinstance(e.this, exp.And):
        e = e.this
    if isinstance(e, exp.And):
        return _flatten(e.this) + _flatten(e.expression)
    return [e]
