"""The planner: a bound query in, a :class:`~fedlab.sql.plan.Plan` out.

Strategies:

``naive``
    every table is fetched whole (all columns, all rows); everything runs locally.
``pushdown``
    top-down: a (sub)query that reads one source and that source can evaluate exactly is
    sent whole. Otherwise its CTEs, derived tables and subqueries are planned the same
    way, tables of one source that are joined to each other become one join fragment, and
    each remaining table is read with only the columns the query uses and the filters
    that touch only that table.
``semijoin``
    pushdown, and for every cross-source equi-join (and ``x IN (subquery)``) the side the
    cost model expects to be smaller is read first and its distinct join keys are shipped
    to the other side's source (:class:`~fedlab.sql.plan.DynamicFilter`).
``auto`` (the default)
    pushdown, with keys shipped only where the cost model says it pays (a small side
    against a large one), and joins ordered smallest first.

The residual keeps every fragment as a table named ``f<n>`` and is run by Polars.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable

from sqlglot import exp

from fedlab.catalog import Catalog, TableInfo, type_family
from fedlab.errors import PlanError
from fedlab.sql import pushdown as rules
from fedlab.sql.bind import BoundQuery
from fedlab.sql.cost import estimate_query, selectivity
from fedlab.sql.dialects import DIALECT, blocker, to_source_sql
from fedlab.sql.partition import assign_partitions
from fedlab.sql.plan import DynamicFilter, Fragment, Plan
from fedlab.sql.residual import residual_sql
from fedlab.sql.shards import expand_shards

__all__ = ["STRATEGIES", "plan_query"]

STRATEGIES = ("naive", "pushdown", "semijoin", "auto")

#: ``auto`` ships keys only into fragments expected to return at least this many rows…
AUTO_MIN_RECEIVER_ROWS = 2_000
#: …from a side expected to return at most this many rows…
AUTO_MAX_KEYS = 50_000
#: …and at most this fraction of the receiver's expected rows
AUTO_MAX_RATIO = 0.5

#: the pushdown rules, each of which can be switched off (``fed.sql(..., disable=…)``, the
#: explorer widget): what a plan looks like without it, and what it costs
RULES = {
    "whole": "send a whole (sub)query to the one source that holds all its tables",
    "projection": "read only the columns the query needs",
    "filters": "push single-table filters to the source",
    "joins": "run joins between tables of one source on that source",
    "implied_filters": "derive per-table filters from OR predicates",
    "transitive_filters": "carry a.x = 5 across a join a.x = b.y to b's source as b.y = 5",
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
    protected: Iterable[str] = (),
) -> Plan:
    """Plan ``bound`` under ``strategy``; the bound tree itself is not modified.

    ``tenant``: only the shards (and sources) of that tenant are read; ``protected``:
    sources into which no join keys may be shipped (data residency).
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
    planner.protected = frozenset(protected)
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
        self.protected: frozenset[str] = frozenset()
        self.by_id: dict[str, Fragment] = {}
        #: per fragment: the source-side tree (before dialect rendering) and tables read
        self.physical: dict[str, exp.Query] = {}
        self.infos: dict[str, list[TableInfo]] = {}
        #: per fragment: output column -> (table, column) it reads, for key statistics
        self.origin: dict[str, dict[str, tuple[TableInfo, str]]] = {}

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
            self._check_dynamic(new_root)
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
        estimate: float | None = None,
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
            estimated_rows=None if estimate is None else max(1, round(estimate)),
        )
        self.fragments.append(frag)
        self.by_sql[key] = frag
        self.by_id[frag.id] = frag
        self.physical[frag.id] = physical
        self.infos[frag.id] = tables
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
        estimate = float(info.row_estimate or 1)
        for f in filters:
            estimate *= selectivity(f, info)
        frag = self._fragment(
            info.source,
            select,
            cols,
            role="table",
            tables=[info],
            pushed=pushed,
            estimate=estimate,
        )
        self.origin.setdefault(frag.id, {n: (info, n) for n in names if info.column(n)})
        return frag

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
        frag = self._fragment(
            source,
            node,
            cols,
            role=role,
            tables=tables,
            pushed=pushed,
            estimate=estimate_query(node),
        )
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
        if self.strategy in ("semijoin", "auto"):
            self._ship_keys(select)

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

        # transitive filters: a.x = b.y (both sides preserved) and a.x = 5 (or IN (…))
        # give b.y = 5, read at b's source; the original predicates stay where they are
        if not {"filters", "transitive_filters"} & set(self.off):
            self._transitive_filters(
                where_conj + [c for _, c in inner_on], by_alias, nullable, filters
            )

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
            _reorder_joins(select, self._estimates() if self.strategy == "auto" else None)

    def _transitive_filters(
        self,
        candidates: list[exp.Expression],
        by_alias: dict[str, exp.Table],
        nullable: set[str],
        filters: dict[str, list[exp.Expression]],
    ) -> None:
        edges: list[tuple[exp.Column, exp.Column]] = []
        for c in candidates:
            if not (
                isinstance(c, exp.EQ)
                and isinstance(c.this, exp.Column)
                and isinstance(c.expression, exp.Column)
            ):
                continue
            a, b = c.this.table, c.expression.table
            if a == b or a not in by_alias or b not in by_alias or {a, b} & nullable:
                continue
            if _column_family(by_alias[a], c.this.name) != _column_family(
                by_alias[b], c.expression.name
            ):
                continue  # 5 = text column would not even compare on PostgreSQL
            edges.append((c.this, c.expression))
        for _ in range(2):  # a chain a = b = c: two hops
            for left, right in edges:
                for src, dst in ((left, right), (right, left)):
                    for f in list(filters[src.table]):
                        derived = _transfer_filter(f, src, dst)
                        if derived is None or any(derived == g for g in filters[dst.table]):
                            continue
                        if blocker(derived, self._kind(by_alias[dst.table])):
                            continue
                        filters[dst.table].append(derived)
                        self.notes.append(
                            f"filter {derived.sql(dialect='postgres')} implied by "
                            f"{f.sql(dialect='postgres')} and the join "
                            f"{src.sql(dialect='postgres')} = {dst.sql(dialect='postgres')}"
                        )

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
            estimate=estimate_query(query),
        )
        self.origin.setdefault(
            frag.id,
            {
                f"{a}__{n}": (m.meta["fedlab_table"], n)
                for a, m in zip(aliases, members, strict=True)
                for n in rules.needed_columns(self.root, a)
            },
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

    # ------------------------------------------------------------------ semi-joins
    def _estimates(self) -> dict[str, float]:
        return {f.id: float(f.estimated_rows or 1) for f in self.fragments}

    def _ship_keys(self, select: exp.Select) -> None:
        """Choose, for the cross-source equi-joins of ``select`` (and the equi-correlations
        of its subqueries), which side is read first and ships its distinct keys into the
        other side's fragment."""
        frames = self._frames(select)
        if not frames:
            return
        # (receiver frame node, receiver column, provider, provider column); the provider
        # is a frame node (its fragment may still be copied by _own) or a fragment
        edges: list[tuple[exp.Table, str, exp.Table | Fragment, str]] = []

        def equi(
            c: exp.Expression, left: dict[str, exp.Table], right: dict[str, exp.Table]
        ) -> tuple[exp.Column, exp.Column] | None:
            if not (
                isinstance(c, exp.EQ)
                and isinstance(c.this, exp.Column)
                and isinstance(c.expression, exp.Column)
                and c.this.table != c.expression.table
            ):
                return None
            a, b = c.this, c.expression
            if a.table in left and b.table in right:
                return a, b
            if b.table in left and a.table in right:
                return b, a
            return None

        def frag_of(node: exp.Table) -> exp.Table:
            return node

        # equalities of the inner-join scope form classes of equal columns: a column is
        # restricted by the keys of any other column of its class (a = b AND b = c: a by c)
        classes: dict[tuple[str, str], tuple[str, str]] = {}

        def find(x: tuple[str, str]) -> tuple[str, str]:
            while classes.setdefault(x, x) != x:
                x = classes[x]
            return x

        inner_eqs = list(rules.conjuncts(select.args.get("where")))
        for j in select.args.get("joins") or []:
            if not (j.side or "") and (j.kind or "").upper() not in ("ANTI", "SEMI"):
                inner_eqs += rules.conjuncts(j.args.get("on"))
        for c in inner_eqs:
            pair = equi(c, frames, frames)
            if pair:
                a, b = pair
                classes[find((a.table, a.name))] = find((b.table, b.name))
        members: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for x in list(classes):
            members.setdefault(find(x), []).append(x)
        for cols in members.values():
            for ra, rc in cols:
                for pa, pc in cols:
                    if ra != pa:
                        edges.append((frames[ra], rc, frag_of(frames[pa]), pc))

        for c in rules.conjuncts(select.args.get("where")):
            if equi(c, frames, frames):
                continue
            if (
                isinstance(c, exp.In)
                and isinstance(c.this, exp.Column)
                and c.this.table in frames
                and isinstance(c.args.get("query"), exp.Subquery | exp.Select)
            ):
                inner = c.args["query"]
                inner = inner.unnest() if isinstance(inner, exp.Subquery) else inner
                frame = _single_frame(inner) if isinstance(inner, exp.Query) else None
                if frame in self.by_id and len(self.by_id[frame].columns) == 1:
                    prov = self.by_id[frame]
                    edges.append((frames[c.this.table], c.this.name, prov, prov.columns[0][0]))
        for j in select.args.get("joins") or []:
            side = (j.side or "").upper()
            if side not in ("", "LEFT") or (j.kind or "").upper() in ("ANTI", "SEMI"):
                continue
            for c in rules.conjuncts(j.args.get("on")):
                pair = equi(c, frames, frames)
                if not pair:
                    continue
                if not side:
                    continue  # in the classes above
                else:  # LEFT: only the joined (null-supplying) item may be restricted
                    inner_aliases = rules._item_aliases(j.this)
                    a, b = pair
                    if a.table in inner_aliases and b.table not in inner_aliases:
                        edges.append((frames[a.table], a.name, frag_of(frames[b.table]), b.name))
                    elif b.table in inner_aliases and a.table not in inner_aliases:
                        edges.append((frames[b.table], b.name, frag_of(frames[a.table]), a.name))
        # correlated subqueries (EXISTS, NOT EXISTS, IN, scalar): an inner row whose
        # correlation key is not among the outer keys is never looked at
        for key in ("expressions", "where", "having"):
            value = select.args.get(key)
            for part in value if isinstance(value, list) else [value] if value else []:
                for q in rules.child_queries(part):
                    q = q.unnest() if isinstance(q, exp.Subquery) else q
                    if not isinstance(q, exp.Select):
                        continue
                    inner = self._frames(q)
                    for c in rules.conjuncts(q.args.get("where")):
                        pair = equi(c, inner, frames)
                        if pair:
                            a, b = pair
                            edges.append((inner[a.table], a.name, frag_of(frames[b.table]), b.name))

        est = self._estimates()

        def provider(e: tuple) -> Fragment:
            p = e[2]
            return p if isinstance(p, Fragment) else self.by_id[p.name]

        while edges:
            # smallest provider first: its keys are the cheapest to ship, and what it
            # restricts may then become a small provider itself
            edge = min(edges, key=lambda e: est.get(provider(e).id, 1))
            edges.remove(edge)
            node, r_col, _, p_col = edge
            prov = provider(edge)
            recv = self.by_id[node.name]
            if recv is prov or recv.role == "query":
                continue
            if recv.source in self.protected:
                self.notes.append(
                    f"no keys shipped into {recv.id} @ {recv.source}: data residency protects it"
                )
                continue
            if any(d.provider == prov.id and d.column == r_col for d in recv.dynamic):
                continue
            if recv.id in self._closure(prov):
                continue  # prov already waits for recv
            key_type = _key_type(recv, r_col, prov, p_col)
            if key_type is None:
                continue
            e_r, e_p = est.get(recv.id, 1), est.get(prov.id, 1)
            after = self._reduced(recv, r_col, prov, p_col, e_r, e_p)
            if self.strategy == "auto":
                rest_keys = self._rest_param(recv, r_col)
                if rest_keys is False:
                    continue  # a REST column that is no query parameter: nothing saved
                if not (
                    (e_r >= AUTO_MIN_RECEIVER_ROWS or rest_keys)
                    and e_p <= (rest_keys or AUTO_MAX_KEYS)
                    and e_p <= AUTO_MAX_RATIO * e_r
                    and after <= AUTO_MAX_RATIO * e_r
                ):
                    continue
            elif e_p > e_r or after >= e_r:  # semijoin: the smaller side is read first
                continue
            recv = self._own(node, recv)
            if self._add_dynamic(recv, r_col, prov, p_col, key_type):
                est[recv.id] = after
                recv.estimated_rows = max(1, round(after))
                self.notes.append(
                    f"semi-join: {prov.id} @ {prov.source} is read first; its keys "
                    f"{p_col} are shipped into {recv.id} @ {recv.source} ({r_col} IN …)"
                )

    def _rest_param(self, recv: Fragment, r_col: str) -> int | bool | None:
        """For a REST receiver (:mod:`fedlab.rest`): the most keys its endpoint takes as
        a query parameter on ``r_col`` (``max_in``), or False when ``r_col`` is no filter
        parameter; None for other sources. Keys sent as a parameter save whole pages of
        HTTP, so ``auto`` ships them however small the receiver."""
        src = self.catalog.sources[recv.source]
        state = getattr(src, "rest", None)
        if src.kind != "rest" or state is None:
            return None
        origin = self.origin.get(recv.id, {}).get(r_col)
        if origin is None or origin[1] not in state.filters:
            return False
        return int(state.options.max_in)

    def _frames(self, select: exp.Select) -> dict[str, exp.Table]:
        """alias -> the residual's frame node, for the fragment frames in FROM / JOIN."""
        return {
            item.alias_or_name: item
            for item in self._from_items(select)
            if isinstance(item, exp.Table) and not item.db and item.name in self.by_id
        }

    def _own(self, node: exp.Table, frag: Fragment) -> Fragment:
        """The fragment ``node`` reads, made private to it: restricting a read that the
        residual also uses elsewhere (self-joins, EXISTS over the same table) would
        restrict the other use too, so such a read is copied first."""
        uses = sum(1 for t in self.root.find_all(exp.Table) if not t.db and t.name == frag.id)
        if uses > 1:
            clone = dataclasses.replace(
                frag,
                id=f"f{next(self.counter)}",
                dynamic=[],
                pushed=list(frag.pushed),
                template=None,
            )
            self.fragments.append(clone)
            self.by_id[clone.id] = clone
            self.physical[clone.id] = self.physical[frag.id]
            self.infos[clone.id] = self.infos[frag.id]
            self.origin[clone.id] = self.origin.get(frag.id, {})
            node.set("this", exp.to_identifier(clone.id))
            frag = clone
        # later reads of the same SQL must not share a restricted fragment
        self.by_sql = {k: v for k, v in self.by_sql.items() if v is not frag}
        return frag

    def _closure(self, frag: Fragment) -> set[str]:
        """Every fragment ``frag`` waits for, directly or not."""
        out: set[str] = set()
        todo = list(frag.depends_on)
        while todo:
            f = todo.pop()
            if f not in out:
                out.add(f)
                todo.extend(self.by_id[f].depends_on)
        return out

    def _reduced(
        self, recv: Fragment, r_col: str, prov: Fragment, p_col: str, e_r: float, e_p: float
    ) -> float:
        """The receiver's expected rows once restricted to the provider's keys."""
        r = self.origin.get(recv.id, {}).get(r_col)
        if r is not None and r[0].primary_key == [r[1]]:
            biggest = max((t.row_estimate or 0) for t in self.infos.get(recv.id, [r[0]]))
            if (r[0].row_estimate or 0) >= biggest:
                return min(e_r, e_p)  # at most one row per key
        p = self.origin.get(prov.id, {}).get(p_col)
        if p is not None and p[0].primary_key == [p[1]]:
            total = max(1, p[0].row_estimate or 1)  # keys of a filtered dimension
            return max(1.0, e_r * min(1.0, e_p / total))
        return e_r * 0.5 if e_p < e_r else e_r

    def _add_dynamic(
        self, recv: Fragment, r_col: str, prov: Fragment, p_col: str, key_type: str
    ) -> bool:
        """Attach a key filter to ``recv``: in its WHERE when the output column is a plain
        column there, else around it (``SELECT * FROM (…) WHERE col IN …``)."""
        kind = recv.kind
        dialect = DIALECT[kind]
        physical = self.physical[recv.id]
        n = len(recv.dynamic)
        token_name = f"__fedlab_keys_{n}__"
        target_col = _plain_output_column(physical, r_col)
        if target_col is not None:
            target = target_col.sql(dialect=dialect, identify=True)
        else:
            wrap = exp.to_identifier("_fedlab_k", quoted=True).sql(dialect=dialect)
            col = exp.to_identifier(r_col, quoted=True).sql(dialect=dialect)
            target = f"{wrap}.{col}"
        recv.dynamic.append(
            DynamicFilter(
                column=r_col,
                provider=prov.id,
                provider_column=p_col,
                target=target,
                placeholder=token_name,
                key_type=key_type,
            )
        )
        # rebuild the template with one placeholder per filter
        tree = physical.copy()
        wrapped = []
        for d in recv.dynamic:
            if _plain_output_column(physical, d.column) is not None:
                tree = tree.where(exp.column(d.placeholder), copy=False)
            else:
                wrapped.append(d)
        text = to_source_sql(tree, kind)
        if wrapped:
            wrap = exp.to_identifier("_fedlab_k", quoted=True).sql(dialect=dialect)
            conds = " AND ".join(
                exp.column(d.placeholder).sql(dialect=dialect, identify=True) for d in wrapped
            )
            text = f"SELECT * FROM ({text}) AS {wrap} WHERE {conds}"
        recv.template = text
        shown = text
        for d in recv.dynamic:
            token = exp.column(d.placeholder).sql(dialect=dialect, identify=True)
            if token not in text:  # pragma: no cover - the generator dropped it
                recv.dynamic.pop()
                recv.template = None
                return False
            shown = shown.replace(
                token, f"{d.target} IN (/* keys of {d.provider}.{d.provider_column} */)"
            )
        recv.sql = shown
        if "semi-join keys" not in "".join(recv.pushed):
            recv.pushed.append("semi-join keys shipped in at run time")
        return True

    def _check_dynamic(self, root: exp.Expression) -> None:
        """A fragment read twice by the residual (self-joins…) must not be restricted for
        one of its uses only: drop its key filters."""
        if not any(f.dynamic for f in self.fragments):
            return
        uses: dict[str, int] = {}
        for t in root.find_all(exp.Table):
            if not t.db:
                uses[t.name] = uses.get(t.name, 0) + 1
        for f in self.fragments:
            if f.dynamic and uses.get(f.id, 0) != 1:
                f.dynamic = []
                f.template = None
                f.sql = to_source_sql(self.physical[f.id], f.kind)
                f.pushed = [p for p in f.pushed if "semi-join keys" not in p]
                self.notes.append(f"no keys shipped into {f.id}: the query reads it twice")
        # a provider whose receivers lost their filters is fine: it is read first anyway


def _key_type(recv: Fragment, r_col: str, prov: Fragment, p_col: str) -> str | None:
    """``int`` / ``text`` when both columns are of that family (keys written as literals)."""
    rt, pt = dict(recv.columns).get(r_col), dict(prov.columns).get(p_col)
    if rt is None or pt is None:
        return None
    if rt.is_type(*exp.DataType.INTEGER_TYPES) and pt.is_type(*exp.DataType.INTEGER_TYPES):
        return "int"
    if rt.is_type(*exp.DataType.TEXT_TYPES) and pt.is_type(*exp.DataType.TEXT_TYPES):
        return "text"
    return None


def _plain_output_column(tree: exp.Query, name: str) -> exp.Column | None:
    """The source column behind output ``name`` when a WHERE filter on it is equivalent to
    filtering the output (no LIMIT, no window; grouped queries: a grouping column)."""
    if not isinstance(tree, exp.Select) or tree.args.get("limit") or tree.args.get("offset"):
        return None
    if any(p.find(exp.Window) for p in tree.expressions):
        return None
    distinct = tree.args.get("distinct")
    if distinct is not None and distinct.args.get("on"):
        return None
    for p in tree.expressions:
        if p.alias_or_name != name:
            continue
        inner = p.this if isinstance(p, exp.Alias) else p
        if not isinstance(inner, exp.Column):
            return None
        group = tree.args.get("group")
        has_agg = any(x.find(exp.AggFunc) for x in tree.expressions)
        if group is not None:
            if not any(g == inner for g in group.expressions):
                return None
        elif has_agg:
            return None
        return inner.copy()
    return None


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


def _column_family(table: exp.Table, column: str) -> str | None:
    info = table.meta.get("fedlab_table")
    col = info.column(column) if info is not None else None
    return type_family(col.type) if col is not None else None


def _same_column(a: exp.Expression, b: exp.Column) -> bool:
    return isinstance(a, exp.Column) and a.table == b.table and a.name == b.name


def _transfer_filter(f: exp.Expression, src: exp.Column, dst: exp.Column) -> exp.Expression | None:
    """``src = <literal>`` / ``<literal> = src`` / ``src IN (<literals>)`` as the same
    predicate on ``dst`` (None for any other shape)."""
    if isinstance(f, exp.EQ):
        col, value = f.this, f.expression
        if not _same_column(col, src):
            col, value = value, col
        if _same_column(col, src) and isinstance(value, exp.Literal):
            return exp.EQ(this=dst.copy(), expression=value.copy())
        return None
    if (
        isinstance(f, exp.In)
        and _same_column(f.this, src)
        and not f.args.get("query")
        and f.expressions
        and all(isinstance(v, exp.Literal) for v in f.expressions)
    ):
        return exp.In(this=dst.copy(), expressions=[v.copy() for v in f.expressions])
    return None


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


def _reorder_joins(select: exp.Select, estimates: dict[str, float] | None = None) -> None:
    """Inner-join scope: rebuild FROM as a chain of equi-joins (no cross products if avoidable).

    Polars joins on ``JOIN … ON a = b``; a comma join with the condition in WHERE would be
    a cross product first. With ``estimates`` (rows expected per fragment), the chain
    starts from the smallest input and adds the smallest connected one next.
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

    def size(i: int) -> float:
        item = items[i]
        if estimates is None or not isinstance(item, exp.Table) or item.db:
            return float("inf")
        return estimates.get(item.name, float("inf"))

    if estimates is not None and all(size(i) < float("inf") for i in range(len(items))):
        items = sorted(items, key=lambda it: estimates[it.name])
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
