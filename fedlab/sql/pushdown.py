"""Pushdown rules: small pure functions over bound sqlglot trees.

Each answers one question the planner asks, in the order it asks them:

1. :func:`single_source` — does a whole (sub)query read one source only, uncorrelated?
2. :func:`conjuncts` / :func:`aliases_of` — split a predicate, see which tables it touches.
3. :func:`null_supplying` — which tables of a SELECT sit on the NULL side of an outer join
   (a WHERE filter on those may not be pushed below the join).
4. :func:`connected_groups` — which tables of one source are joined to each other, so the
   join can run on that source.
5. :func:`needed_columns` — which columns of a table the rest of the query still reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator

from sqlglot import exp

__all__ = [
    "aliases_of",
    "child_queries",
    "conjuncts",
    "connected_groups",
    "defined_aliases",
    "needed_columns",
    "null_supplying",
    "single_source",
]


def conjuncts(predicate: exp.Expression | None) -> list[exp.Expression]:
    """Split ``a AND b AND c`` into ``[a, b, c]`` (parentheses around ANDs flattened).

    >>> import sqlglot
    >>> [c.sql() for c in conjuncts(sqlglot.parse_one("x = 1 AND (y = 2 AND z > 3) OR w = 1"))]
    ['x = 1 AND (y = 2 AND z > 3) OR w = 1']
    >>> [c.sql() for c in conjuncts(sqlglot.parse_one("x = 1 AND (y = 2 AND z > 3)"))]
    ['x = 1', 'y = 2', 'z > 3']
    """
    if predicate is None:
        return []
    if isinstance(predicate, exp.Where):
        predicate = predicate.this
    if isinstance(predicate, exp.Paren) and isinstance(predicate.this, exp.And):
        predicate = predicate.this
    if isinstance(predicate, exp.And):
        return conjuncts(predicate.this) + conjuncts(predicate.expression)
    return [predicate]


def aliases_of(e: exp.Expression) -> set[str]:
    """Table aliases the columns of ``e`` refer to (including inside subqueries)."""
    return {c.table for c in e.find_all(exp.Column) if c.table}


def has_subquery(e: exp.Expression) -> bool:
    return any(isinstance(x, exp.Query) for x in e.walk() if x is not e) or isinstance(e, exp.Query)


def has_aggregate_or_window(e: exp.Expression) -> bool:
    return any(isinstance(x, exp.AggFunc | exp.Window) for x in e.walk())


def child_queries(e: exp.Expression) -> Iterator[exp.Query]:
    """The queries directly nested in ``e`` (not descending into them)."""
    for child in e.iter_expressions():
        if isinstance(child, exp.Query):
            yield child
        else:
            yield from child_queries(child)


def defined_aliases(node: exp.Expression) -> set[str]:
    """Every alias a query defines for itself: tables, derived tables, CTE names."""
    out: set[str] = set()
    for t in node.find_all(exp.Table):
        out.add(t.alias_or_name)
    for s in node.find_all(exp.Subquery):
        if s.alias:
            out.add(s.alias)
    for c in node.find_all(exp.CTE):
        out.add(c.alias_or_name)
    return out


def base_tables(node: exp.Expression) -> list[exp.Table]:
    return [t for t in node.find_all(exp.Table) if t.meta.get("fedlab_table") is not None]


def single_source(node: exp.Query) -> str | None:
    """The one source a whole query reads, or None.

    None when it reads several sources (or none), refers to a CTE defined outside it,
    or is correlated (reads a column of an enclosing query).
    """
    tables = list(node.find_all(exp.Table))
    inner_ctes = {c.alias_or_name for c in node.find_all(exp.CTE)}
    sources: set[str] = set()
    for t in tables:
        info = t.meta.get("fedlab_table")
        if info is None:
            if t.name not in inner_ctes:
                return None  # a CTE of an enclosing query, or a local frame
            continue
        sources.add(info.source)
    if len(sources) != 1:
        return None
    if not aliases_of(node) <= defined_aliases(node):
        return None  # correlated
    return sources.pop()


def null_supplying(select: exp.Select) -> set[str]:
    """Aliases on the NULL-supplying side of an outer join in ``select``'s FROM clause."""
    joins = select.args.get("joins") or []
    seen: list[set[str]] = []
    from_ = select.args.get("from_")
    if from_ is not None:
        seen.append(_item_aliases(from_.this))
    out: set[str] = set()
    for j in joins:
        right = _item_aliases(j.this)
        side = (j.side or "").upper()
        if side in ("LEFT", "FULL"):
            out |= right
        if side in ("RIGHT", "FULL"):
            for s in seen:
                out |= s
        seen.append(right)
    return out


def _item_aliases(item: exp.Expression) -> set[str]:
    if isinstance(item, exp.Table | exp.Subquery):
        return {item.alias_or_name}
    return defined_aliases(item)


def connected_groups(aliases: Iterable[str], edges: Iterable[set[str]]) -> list[list[str]]:
    """Connected components of ``aliases`` under ``edges`` (each a set of aliases).

    >>> connected_groups(["a", "b", "c", "d"], [{"a", "b"}, {"b", "c"}])
    [['a', 'b', 'c'], ['d']]
    """
    order = list(dict.fromkeys(aliases))
    parent = {a: a for a in order}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for edge in edges:
        members = [a for a in edge if a in parent]
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    groups: dict[str, list[str]] = defaultdict(list)
    for a in order:
        groups[find(a)].append(a)
    return sorted(groups.values(), key=lambda g: order.index(g[0]))


def needed_columns(root: exp.Expression, alias: str) -> list[str]:
    """Column names of ``alias`` that ``root`` still reads, in first-use order."""
    return list(dict.fromkeys(c.name for c in root.find_all(exp.Column) if c.table == alias))


_NULL_ON_EMPTY = (exp.Sum, exp.Avg, exp.Min, exp.Max)
_NULL_PROPAGATING = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Paren, exp.Neg, exp.Cast)


def _null_propagating_over_aggregates(e: exp.Expression) -> bool:
    """Literals and SUM/AVG/MIN/MAX combined by arithmetic: NULL whenever an aggregate is
    NULL (true of an aggregate over no rows), so "no group" and "empty group" agree."""
    if isinstance(e, _NULL_ON_EMPTY):
        return not e.find(exp.Query, exp.Window) and not isinstance(e.this, exp.Distinct)
    if isinstance(e, exp.Literal):
        return True
    if isinstance(e, _NULL_PROPAGATING):
        kids = [v for v in e.args.values() if isinstance(v, exp.Expression)]
        kids = [k for k in kids if not isinstance(k, exp.DataType)]
        return all(_null_propagating_over_aggregates(k) for k in kids) and any(
            k.find(*_NULL_ON_EMPTY) for k in kids
        )
    return False


def decorrelate_scalar_aggregates(tree: exp.Expression, counter: Iterator[int]) -> int:
    """Rewrite correlated scalar aggregate subqueries as a lookup into a grouped derived
    table, which is uncorrelated and so can be pushed to its source whole (TPC-H Q17)::

        (SELECT 0.2 * AVG(l.q) FROM lineitem l WHERE l.k = p.k AND l.x > 1)
        → (SELECT 0.2 * d._a1 FROM (SELECT l.k AS _k1, AVG(l.q) AS _a1 FROM lineitem l
                                     WHERE l.x > 1 GROUP BY l.k) AS d WHERE d._k1 = p.k)

    Only when the correlation is equalities between inner and outer columns and the
    select expression is NULL on an empty group (SUM/AVG/MIN/MAX under arithmetic, not
    COUNT or COALESCE), so a missing group gives the same NULL. Returns the number of
    subqueries rewritten.
    """
    done = 0
    for sub in list(tree.find_all(exp.Subquery)):
        inner = sub.this
        parent = sub.parent
        if not isinstance(inner, exp.Select) or isinstance(parent, exp.From | exp.Join):
            continue
        if isinstance(parent, exp.Exists | exp.In):
            continue
        if any(
            inner.args.get(k)
            for k in ("group", "having", "order", "limit", "offset", "distinct", "joins", "with_")
        ):
            continue
        from_ = inner.args.get("from_")
        if from_ is None or not isinstance(from_.this, exp.Table) or len(inner.selects) != 1:
            continue
        table = from_.this
        if "fedlab_table" not in table.meta:
            continue
        alias = table.alias_or_name
        proj = inner.selects[0]
        body = proj.unalias()
        if not _null_propagating_over_aggregates(body):
            continue
        if any(
            c.table != alias for a in body.find_all(*_NULL_ON_EMPTY) for c in a.find_all(exp.Column)
        ):
            continue
        keys: list[tuple[exp.Column, exp.Expression]] = []
        local: list[exp.Expression] = []
        ok = True
        for c in conjuncts(inner.args.get("where")):
            refs = aliases_of(c)
            if refs <= {alias} and not has_subquery(c):
                local.append(c)
                continue
            if (
                isinstance(c, exp.EQ)
                and isinstance(c.this, exp.Column)
                and isinstance(c.expression, exp.Column)
                and {c.this.table, c.expression.table} & {alias}
                and c.this.table != c.expression.table
            ):
                mine, outer = (
                    (c.this, c.expression) if c.this.table == alias else (c.expression, c.this)
                )
                keys.append((mine, outer))
                continue
            ok = False
            break
        if not ok or not keys:
            continue
        n = next(counter)
        d = f"_dc{n}"
        aggs = list(dict.fromkeys(body.find_all(*_NULL_ON_EMPTY)))
        agg_names = {id(a): f"_a{i}" for i, a in enumerate(aggs, 1)}
        derived = exp.select(
            *[exp.alias_(k.copy(), f"_k{i}") for i, (k, _) in enumerate(keys, 1)],
            *[exp.alias_(a.copy(), agg_names[id(a)]) for a in aggs],
        ).from_(table.copy())
        for p in derived.selects:  # keep the inferred types for the fragment's columns
            p.type = p.this.type
        if local:
            derived = derived.where(exp.and_(*[c.copy() for c in local]))
        derived = derived.group_by(*[k.copy() for k, _ in keys])
        new_body = body.copy()
        for old, new in zip(
            list(body.find_all(*_NULL_ON_EMPTY)),
            list(new_body.find_all(*_NULL_ON_EMPTY)),
            strict=True,
        ):
            ref = exp.column(agg_names[id(old)], table=d)
            if new is new_body:
                new_body = ref
            else:
                new.replace(ref)
        lookup = exp.select(
            exp.alias_(new_body, proj.alias_or_name) if isinstance(proj, exp.Alias) else new_body
        ).from_(exp.Subquery(this=derived, alias=exp.TableAlias(this=exp.to_identifier(d))))
        lookup = lookup.where(
            exp.and_(
                *[
                    exp.EQ(this=exp.column(f"_k{i}", table=d), expression=o.copy())
                    for i, (_, o) in enumerate(keys, 1)
                ]
            )
        )
        sub.set("this", lookup)
        done += 1
    return done
