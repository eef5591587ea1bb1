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
