"""The planner: a bound query in, a :class:`~fedlab.sql.plan.Plan` out.

Strategies:

``naive``
    every table is fetched whole (all columns, all rows); everything runs locally.
``pushdown`` (and ``auto`` for now)
    top-down: a (sub)query that reads one source and that source can evaluate exactly is
    sent whole. Otherwise its CTEs, derived tables and subqueries are planned the same
    way, tables of one source that are joined to each other become one join fragment, and
    each remaining table is read with only the columns the query uses and the filters
    that touch only that table.

The residual keeps every fragment as a table named ``f<n>`` and is run by Polars.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from sqlglot import exp

from fedlab.catalog import Catalog, TableInfo
from fedlab.errors import PlanError
from fedlab.sql import pushdown as rules
from fedlab.sql.bind import BoundQuery
from fedlab.sql.dialects import blocker, to_source_sql
from fedlab.sql.partition import assign_partitions
from fedlab.sql.plan import Fragment, Plan
from fedlab.sql.residual import residual_sql
from fedlab.sql.shards import expand_shards

__all__ = ["STRATEGIES", "plan_query"]

STRATEGIES = ("naive", "pushdown", "auto")

#: the pushdown rules, each of which can be switched off (``fed.sql(..., disable=…)``, the
#: explorer widget): what a plan looks like without it, and what it costs
RULES = {
    "whole": "send a whole (sub)query to the one source that holds all its tables",
    "projection": "read only the columns the query needs",
    "filters": "push single-table filters to the source",
    "joins": "run joins between tables of one source on that source",
    "implied_filters": "derive per-table filters from OR predicates",
    "decorrelate": "turn correlated SUM/AVG/MIN/MAX subqueries into pushed GROUP BYs",
}


def plan_query(
    bound: BoundQuery,
    catalog: Catalog,
    strategy: str = "auto",
    sql: str = "",
    disable: Iterable[str] = (),
    *,
    tenant: str | None = None,
    max_workers: int = 8,
) -> Plan:
    """Plan ``bound`` under ``strategy``; the bound tree itself is not modified.

    ``tenant``: only the shards (and sources) of that tenant are read.
    """
    if strategy not in STRATEGIES:
        raise PlanError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    off = frozenset(disable)
    unknown = off - set(RULES)
    if unknown:
        raise PlanError(
            f"unknown pushdown rule(s) {sorted(unknown)}; the rules are {', '.join(RULES)}"
        )
    planner = _Planner(catalog, "naive" if strategy == "naive" else "pushdown", strategy)
    planner.off = off
    planner.tenant = tenant
    plan = planner.run(bound, sql)
    if strategy != "naive":
        assign_partitions(plan, catalog, max_workers=max_workers)
    return plan


class _Planner:
    def __init__(self, catalog: Catalog, mode: str, strategy: str) -> None:
        self.catalog = catalog
        self.mode = mode
        self.strategy = strategy
        self.fragments: list[Fragment] = []
        self.by_sql: dict[tuple[str, str], Fragment] = {}
        self.notes: list[str] = []
        self.counter = itertools.count(1)
        self.root: exp.Query | None = None
        self.off: frozenset[str] = frozenset()
        self.tenant: str | None = None

    # ------------------------------------------------------------------ entry
    def run(self, bound: BoundQuery, sql: str) -> Plan:
        tree = bound.tree.copy()
        tree = expand_shards(
            tree,
            self.catalog,
            naive=self.mode == "naive",
            tenant=self.tenant,
            notes=self.notes,
        )
        _exists_select_one(tree)
        self.root = tree
        outputs = list(tree.named_selects)
        if self.mode == "naive":
            self._naive(tree)
            new_root = tree
        else:
            if "decorrelate" not in self.off and rules.decorrelate_scalar_aggregates(
                tree, itertools.count(1)
            ):
                self.notes.append(
                    "correlated scalar aggregate subquery rewritten as a grouped lookup "
                    "(the aggregate is pushed to its source)"
                )
            new_root = self._push(tree, top=True)
        if (
            len(self.fragments) == 1
            and self.fragments[0].role == "query"
            and isinstance(new_root, exp.Select)
            and _is_select_star_from(new_root, self.fragments[0].id)
        ):
            residual, text = None, None
        else:
            residual, text = new_root, residual_sql(new_root)
        return Plan(
            sql=sql,
            strategy=self.strategy,
            fragments=self.fragments,
            residual=residual,
            residual_sql=text,
            notes=list(dict.fromkeys(self.notes)),
            output_columns=outputs,
            ordered=bound.ordered,
        )

    # ------------------------------------------------------------------ fragments
    def _fragment(
        self,
        source: str,
        tree: exp.Query,
        columns: list[tuple[str, exp.DataType]],
        *,
        role: str,
        tables: list[TableInfo],
        pushed: list[str],
    ) -> Fragment:
        src = self.catalog.sources[source]
        physical = _physical(tree)
        if src.kind in ("postgresql", "mysql"):
            _decimals_as_double(physical, columns)
        sql = to_source_sql(physical, src.kind)
        key = (source, sql)
        if key in self.by_sql:
            return self.by_sql[key]
        frag = Fragment(
            id=f"f{next(self.counter)}",
            source=source,
            kind=src.kind,
            sql=sql,
            columns=columns,
            tables=list(dict.fromkeys(f"{t.source}.{t.name}" for t in tables)),
            pushed=pushed,
            role=role,
            estimated_rows=max((t.row_estimate or 0 for t in tables), default=None) or None,
        )
        self.fragments.append(frag)
        self.by_sql[key] = frag
        return frag

    def _table_fragment(
        self, table: exp.Table, filters: list[exp.Expression], *, whole: bool = False
    ) -> Fragment:
        info: TableInfo = table.meta["fedlab_table"]
        alias = table.alias_or_name
        if whole or "projection" in self.off:
            names = [c.name for c in info.columns]
        else:  # in the table's column order: equal reads give equal SQL (one fragment)
            needed = rules.needed_columns(self.root, alias)
            names = [c.name for c in info.columns if c.name in needed]
            names += [n for n in needed if n not in names]
        cols = []
        for n in names:
            ci = info.column(n)
            cols.append((n, ci.type if ci else exp.DataType.build("UNKNOWN")))
        # the fragment names the table by itself, not by the query's alias, so that the
        # same read under two aliases (self-joins, EXISTS over the same table) is one fragment
        own = info.name
        source_table = table.copy()
        source_table.set("alias", exp.TableAlias(this=exp.to_identifier(own)))

        def requalify(e: exp.Expression) -> exp.Expression:
            e = e.copy()
            for c in e.find_all(exp.Column):
                if c.table == alias:
                    c.set("table", exp.to_identifier(own))
            return e

        select = exp.select(
            *[exp.alias_(exp.column(n, table=own), n, quoted=True) for n in names]
        ).from_(source_table)
        if not names:
            select = exp.select(exp.alias_(exp.Literal.number(1), "__row", quoted=True)).from_(
                source_table
            )
            cols = [("__row", exp.DataType.build("BIGINT"))]
        if filters:
            select = select.where(exp.and_(*[requalify(f) for f in filters]))
        pushed = (
            ["whole table"]
            if whole
            else [f"projection ({len(names)} of {len(info.columns)} columns)"]
        )
        pushed += [f"filter {f.sql(dialect='postgres')}" for f in filters]
        return self._fragment(info.source, select, cols, role="table", tables=[info], pushed=pushed)

    # ------------------------------------------------------------------ naive
    def _naive(self, tree: exp.Query) -> None:
        for table in rules.base_tables(tree):
            frag = self._table_fragment(table, [], whole=True)
            table.replace(_frame(frag.id, table.alias_or_name))

    # ------------------------------------------------------------------ pushdown
    def _push(self, node: exp.Query, *, top: bool = False) -> exp.Query:
        """Plan ``node``; return what replaces it in the residual."""
        if isinstance(node, exp.Subquery):  # keep the parentheses, plan what is inside
            inner = node.unnest()
            new = self._push(inner, top=top)
            if new is not inner:
                inner.replace(new)
            return node
        source = None if "whole" in self.off else rules.single_source(node)
        if source is not None:
            kind = self.catalog.sources[source].kind
            reason = blocker(node, kind)
            if reason is None:
                return self._push_whole(node, source, role="query" if top else "subquery")
            self.notes.append(f"not pushed whole to {source}: {reason}")
        if isinstance(node, exp.SetOperation):
            self._push_ctes(node)
            for side in ("this", "expression"):
                child = node.args[side]
                inner = child.unnest() if isinstance(child, exp.Subquery) else child
                new = self._push(inner)
                if new is not inner:
                    inner.replace(new)
            return node
        if isinstance(node, exp.Select):
            self._push_select(node)
            return node
        return node

    def _push_whole(self, node: exp.Query, source: str, role: str) -> exp.Query:
        tables = [t.meta["fedlab_table"] for t in rules.base_tables(node)]
        names = list(node.named_selects)
        if len(set(names)) != len(names) or any(not n or n == "*" for n in names):
            names = [f"_col_{i}" for i in range(len(node.selects))]
            node = _rename_outputs(node, names)
        cols = [
            (n, s.type or exp.DataType.build("UNKNOWN"))
            for n, s in zip(names, node.selects, strict=True)
        ]
        pushed = ["whole query" if role == "query" else "whole subquery"]
        frag = self._fragment(source, node, cols, role=role, tables=tables, pushed=pushed)
        return exp.select("*").from_(exp.to_table(frag.id))

    def _push_ctes(self, node: exp.Query) -> None:
        with_ = node.args.get("with_")
        if with_ is None:
            return
        for cte in with_.expressions:
            inner = cte.this
            new = self._push(inner)
            if new is not inner:
                cte.set("this", new)

    def _push_select(self, select: exp.Select) -> None:
        self._push_ctes(select)
        # derived tables in FROM / JOIN
        items = self._from_items(select)
        for item in items:
            if isinstance(item, exp.Subquery):
                inner = item.unnest()
                new = self._push(inner)
                if new is not inner:
                    frame = _single_frame(new)
                    if frame is not None:
                        item.replace(_frame(frame, item.alias))
                    else:
                        inner.replace(new)
        # subqueries in SELECT / WHERE / HAVING / ON
        for key in ("expressions", "where", "having", "qualify"):
            value = select.args.get(key)
            for part in value if isinstance(value, list) else [value] if value else []:
                for q in list(rules.child_queries(part)):
                    new = self._push(q)
                    if new is not q:
                        q.replace(new)
        for join in select.args.get("joins") or []:
            on = join.args.get("on")
            if on is not None:
                for q in list(rules.child_queries(on)):
                    new = self._push(q)
                    if new is not q:
                        q.replace(new)
        self._push_tables(select)

    @staticmethod
    def _from_items(select: exp.Select) -> list[exp.Expression]:
        items = []
        if select.args.get("from_") is not None:
            items.append(select.args["from_"].this)
        items.extend(j.this for j in select.args.get("joins") or [])
        return items

    def _kind(self, table: exp.Table) -> str:
        return self.catalog.sources[table.meta["fedlab_table"].source].kind

    def _push_tables(self, select: exp.Select) -> None:
        items = self._from_items(select)
        tables = [i for i in items if isinstance(i, exp.Table) and i.meta.get("fedlab_table")]
        # tables nested in parenthesised joins etc.: read them with projection only
        for other in items:
            if not isinstance(other, exp.Table | exp.Subquery):
                for t in rules.base_tables(other):
                    frag = self._table_fragment(t, [])
                    t.replace(_frame(frag.id, t.alias_or_name))
        if not tables:
            return
        joins = select.args.get("joins") or []
        outer = any((j.side or "").upper() in ("LEFT", "RIGHT", "FULL") for j in joins)
        nullable = rules.null_supplying(select)
        by_alias = {t.alias_or_name: t for t in tables}

        # candidate predicates: (conjunct, where it lives)
        where_conj = rules.conjuncts(select.args.get("where"))
        inner_on: list[tuple[exp.Join, exp.Expression]] = []
        left_on: list[tuple[exp.Join, exp.Expression]] = []
        for j in joins:
            side = (j.side or "").upper()
            for c in rules.conjuncts(j.args.get("on")):
                if side == "LEFT":
                    left_on.append((j, c))
                elif not side:
                    inner_on.append((j, c))

        def usable(c: exp.Expression) -> bool:
            return not rules.has_subquery(c) and not rules.has_aggregate_or_window(c)

        filters: dict[str, list[exp.Expression]] = {a: [] for a in by_alias}
        removed: list[exp.Expression] = []
        for c, origin_join in (
            []
            if "filters" in self.off
            else (
                [(c, None) for c in where_conj]
                + [(c, j) for j, c in inner_on]
                + [(c, j) for j, c in left_on]
            )
        ):
            refs = rules.aliases_of(c)
            if len(refs) != 1 or not usable(c):
                continue
            (alias,) = refs
            if alias not in by_alias:
                continue
            is_left_on = origin_join is not None and (origin_join.side or "").upper() == "LEFT"
            if is_left_on:
                if alias not in rules._item_aliases(origin_join.this):
                    continue
            elif alias in nullable:
                continue
            reason = blocker(c, self._kind(by_alias[alias]))
            if reason:
                self.notes.append(f"filter {c.sql(dialect='postgres')} kept local: {reason}")
                continue
            filters[alias].append(c)
            if not is_left_on:
                removed.append(c)

        # implied single-table filters from disjunctions (TPC-H Q19): from
        # (a.x = 1 AND b.y = 2) OR (a.x = 3 AND …) each table gets OR(its own conjuncts);
        # the original predicate stays in the residual
        for c in [] if "implied_filters" in self.off else where_conj + [c for _, c in inner_on]:
            if not isinstance(c, exp.Or) or not usable(c):
                continue
            for alias in by_alias:
                if alias in nullable:
                    continue
                derived = _implied_filter(c, alias)
                if derived is None or blocker(derived, self._kind(by_alias[alias])):
                    continue
                filters[alias].append(derived)

        # same-source joins (inner-join scopes only)
        groups: list[list[str]] = []
        join_preds: dict[int, list[exp.Expression]] = {}
        if not outer and len(tables) > 1 and "joins" not in self.off:
            by_source: dict[str, list[str]] = {}
            for a, t in by_alias.items():
                by_source.setdefault(t.meta["fedlab_table"].source, []).append(a)
            candidates = where_conj + [c for _, c in inner_on]
            for source, aliases in by_source.items():
                if len(aliases) < 2:
                    continue
                kind = self.catalog.sources[source].kind
                edges = []
                for c in candidates:
                    refs = rules.aliases_of(c)
                    if len(refs) >= 2 and refs <= set(aliases) and usable(c):
                        reason = blocker(c, kind)
                        if reason:
                            self.notes.append(
                                f"join condition {c.sql(dialect='postgres')} kept local: {reason}"
                            )
                            continue
                        edges.append((refs, c))
                for group in rules.connected_groups(aliases, [e for e, _ in edges]):
                    if len(group) < 2:
                        continue
                    preds = [c for refs, c in edges if refs <= set(group)]
                    groups.append(group)
                    join_preds[len(groups) - 1] = preds
                    removed.extend(preds)

        # remove pushed predicates from the residual
        for c in removed:
            _remove_conjunct(c)

        grouped = {a for g in groups for a in g}
        for gi, group in enumerate(groups):
            self._join_fragment(select, [by_alias[a] for a in group], join_preds[gi], filters)
        for alias, table in by_alias.items():
            if alias in grouped:
                continue
            frag = self._table_fragment(table, filters[alias])
            table.replace(_frame(frag.id, alias))
        if not outer:
            _reorder_joins(select)

    def _join_fragment(
        self,
        select: exp.Select,
        members: list[exp.Table],
        preds: list[exp.Expression],
        filters: dict[str, list[exp.Expression]],
    ) -> None:
        source = members[0].meta["fedlab_table"].source
        aliases = [m.alias_or_name for m in members]
        group_alias = "_".join(aliases)[:40]
        # the columns the rest of the query reads from the group's tables
        outputs: list[tuple[str, str, exp.Column]] = []
        for a, m in zip(aliases, members, strict=True):
            info: TableInfo = m.meta["fedlab_table"]
            for n in rules.needed_columns(self.root, a):
                ci = info.column(n)
                col = exp.column(n, table=a)
                col.type = ci.type if ci else exp.DataType.build("UNKNOWN")
                outputs.append((a, n, col))
        all_filters = [f for a in aliases for f in filters[a]]
        query = exp.select(
            *[exp.alias_(col.copy(), f"{a}__{n}", quoted=True) for a, n, col in outputs]
            or [exp.alias_(exp.Literal.number(1), "__row", quoted=True)]
        )
        query.set("from_", exp.From(this=members[0].copy()))
        query.set("joins", [exp.Join(this=m.copy()) for m in members[1:]])
        where = [p.copy() for p in preds] + [f.copy() for f in all_filters]
        if where:
            query = query.where(exp.and_(*where))
        cols = [(f"{a}__{n}", col.type) for a, n, col in outputs] or [
            ("__row", exp.DataType.build("BIGINT"))
        ]
        pushed = [f"join of {', '.join(aliases)}"] + [
            f"filter {f.sql(dialect='postgres')}" for f in all_filters
        ]
        frag = self._fragment(
            source,
            query,
            cols,
            role="join",
            tables=[m.meta["fedlab_table"] for m in members],
            pushed=pushed,
        )
        # residual: first member becomes the group frame, the others disappear
        members[0].replace(_frame(frag.id, group_alias))
        for m in members[1:]:
            parent = m.parent
            if isinstance(parent, exp.Join):
                on = parent.args.get("on")
                parent.pop()
                if on is not None:
                    select.where(on, copy=False)
            else:  # pragma: no cover - tables of a group are FROM or JOIN items
                raise PlanError(f"cannot regroup table {m.sql()}")
        rename = {(a, n): f"{a}__{n}" for a, n, _ in outputs}
        for col in list(self.root.find_all(exp.Column)):
            key = (col.table, col.name)
            if key in rename:
                col.set("this", exp.to_identifier(rename[key]))
                col.set("table", exp.to_identifier(group_alias))


# ---------------------------------------------------------------------- helpers
_DOUBLE = exp.DataType.build("DOUBLE")


def _decimals_as_double(tree: exp.Query, columns: list[tuple[str, exp.DataType]]) -> None:
    """fedlab's decimal policy (decimals are float64) applied in the source's output: a
    column fedlab types DOUBLE leaves the server as an 8-byte double, not as connectorx's
    16-byte Decimal(38,10). Only the outputs are cast; the source computes in decimals."""
    if not isinstance(tree, exp.Select) or len(tree.selects) != len(columns):
        return
    for proj, (_, t) in zip(tree.selects, columns, strict=True):
        if t is None or not t.is_type(exp.DataType.Type.DOUBLE):
            continue
        if isinstance(proj, exp.Alias) and not isinstance(proj.this, exp.Cast):
            proj.set("this", exp.Cast(this=proj.this, to=_DOUBLE.copy()))


def _implied_filter(disjunction: exp.Or, alias: str) -> exp.Expression | None:
    """OR over the disjuncts of the conjuncts that read only ``alias`` (None if a disjunct
    has no such conjunct, or if the disjunction reads only ``alias`` already)."""
    if rules.aliases_of(disjunction) <= {alias}:
        return None
    parts = []
    for d in disjunction.flatten():
        d = d.unnest()
        mine = [c for c in rules.conjuncts(d) if rules.aliases_of(c) == {alias}]
        if not mine:
            return None
        parts.append(exp.paren(exp.and_(*[m.copy() for m in mine]), copy=False))
    return exp.or_(*parts) if len(parts) > 1 else parts[0].unnest()


def _exists_select_one(tree: exp.Expression) -> None:
    """``EXISTS (SELECT * …)``: the select list is irrelevant; read no columns for it."""
    for ex in tree.find_all(exp.Exists):
        q = ex.this
        if isinstance(q, exp.Select) and not q.args.get("group") and not q.args.get("distinct"):
            if not any(p.find(exp.AggFunc, exp.Window) for p in q.selects):
                q.set("expressions", [exp.alias_(exp.Literal.number(1), "_one")])


def _frame(frag_id: str, alias: str) -> exp.Table:
    return exp.Table(
        this=exp.to_identifier(frag_id), alias=exp.TableAlias(this=exp.to_identifier(alias))
    )


def _is_select_star_from(select: exp.Select, frame: str) -> bool:
    return (
        len(select.expressions) == 1
        and isinstance(select.expressions[0], exp.Star)
        and isinstance(select.args.get("from_") and select.args["from_"].this, exp.Table)
        and select.args["from_"].this.name == frame
        and not select.args.get("joins")
        and not select.args.get("where")
    )


def _single_frame(q: exp.Query) -> str | None:
    if (
        isinstance(q, exp.Select)
        and q.args.get("from_")
        and _is_select_star_from(q, q.args["from_"].this.name)
    ):
        return q.args["from_"].this.name
    return None


def _rename_outputs(node: exp.Query, names: list[str]) -> exp.Query:
    node = node.copy()
    target = node
    while isinstance(target, exp.SetOperation):
        target = target.this
    if isinstance(target, exp.Select):
        target.set(
            "expressions",
            [
                exp.alias_(p.unalias() if isinstance(p, exp.Alias) else p, n, quoted=True)
                for p, n in zip(target.expressions, names, strict=True)
            ],
        )
    return node


def _physical(tree: exp.Query) -> exp.Query:
    """Source-side names: drop the source qualifier, use the table's and columns' real names."""
    tree = tree.copy()
    alias_info: dict[str, TableInfo] = {}
    for t in tree.find_all(exp.Table):
        info = t.meta.get("fedlab_table")
        if info is None:
            continue
        alias_info[t.alias_or_name] = info
        t.set("db", None)
        t.set("this", exp.to_identifier(info.name, quoted=True))
    for c in tree.find_all(exp.Column):
        info = alias_info.get(c.table)
        if info is not None:
            ci = info.column(c.name)
            if ci is not None:
                c.set("this", exp.to_identifier(ci.name, quoted=True))
    return tree


def _remove_conjunct(c: exp.Expression) -> None:
    """Remove one conjunct from the AND-tree it lives in (WHERE or ON)."""
    parent = c.parent
    while isinstance(parent, exp.Paren) and parent.parent is not None:
        c, parent = parent, parent.parent
    if isinstance(parent, exp.And):
        other = parent.expression if parent.this is c else parent.this
        parent.replace(other)
        return
    if isinstance(parent, exp.Where):
        parent.pop()
        return
    if isinstance(parent, exp.Join):
        parent.set("on", None)
        return
    c.replace(exp.true())


def _equi_sides(c: exp.Expression) -> tuple[str, str] | None:
    if (
        (
            isinstance(c, exp.EQ)
            and isinstance(c.this, exp.Column)
            and isinstance(c.expression, exp.Column)
        )
        and c.this.table
        and c.expression.table
        and c.this.table != c.expression.table
    ):
        return c.this.table, c.expression.table
    return None


def _reorder_joins(select: exp.Select) -> None:
    """Inner-join scope: rebuild FROM as a chain of equi-joins (no cross products if avoidable).

    Polars joins on ``JOIN … ON a = b``; a comma join with the condition in WHERE would be
    a cross product first.
    """
    from_ = select.args.get("from_")
    if from_ is None:
        return
    items = [from_.this] + [j.this for j in select.args.get("joins") or []]
    if len(items) < 2:
        return
    preds = rules.conjuncts(select.args.get("where"))
    for j in select.args.get("joins") or []:
        preds += rules.conjuncts(j.args.get("on"))
    alias_of = [i.alias_or_name for i in items]
    remaining = list(range(1, len(items)))
    joined = {alias_of[0]}
    used: set[int] = set()
    new_joins = []
    while remaining:
        pick, on = None, []
        for idx in remaining:
            cand = []
            for pi, p in enumerate(preds):
                if pi in used:
                    continue
                sides = _equi_sides(p)
                if sides and (
                    (sides[0] in joined and sides[1] == alias_of[idx])
                    or (sides[1] in joined and sides[0] == alias_of[idx])
                ):
                    cand.append(pi)
            if cand:
                pick, on = idx, cand
                break
        if pick is None:
            pick = remaining[0]
        remaining.remove(pick)
        joined.add(alias_of[pick])
        used.update(on)
        join = exp.Join(this=items[pick].copy())
        if on:
            join.set("on", exp.and_(*[preds[i].copy() for i in on]))
        else:
            join.set("kind", "CROSS")
        new_joins.append(join)
    rest = [p.copy() for i, p in enumerate(preds) if i not in used]
    select.set("from_", exp.From(this=items[0].copy()))
    select.set("joins", new_joins)
    select.set("where", exp.Where(this=exp.and_(*rest)) if rest else None)
