"""Data residency: what may leave a protected source, checked on the plan and at run time.

>>> import fedlab as fl
>>> fed = fl.Federation()
>>> fed.policy(residency={"EU": "aggregate-only"}, k=5, keys={"eu.users": ["email"]})
Policy(residency={'EU': 'aggregate-only'}, k=5, keys={'eu.users': ['email']})

A **rule** maps a *selector* to a *mode*. Selectors match sources by their tags
(``fed.attach(name, url, tags={...})``):

``"EU"``
    a bare word matches the ``region`` tag (``region=EU``), case-insensitively;
``"tenant=A"``, ``"function=billing"``
    ``tag=value`` matches any tag, case-insensitively;
``"source=crm"``
    one source by name;
``"*"``
    every source.

When several rules match one source the most specific wins (``source=`` over a tag over
``*``); among equally specific ones, the strictest (``deny`` over ``aggregate-only`` over
``allow``). So ``{"*": "deny", "region=US": "allow"}`` protects everything but the US.

Modes:

``allow``
    no restriction (the default for a source no rule matches).
``aggregate-only``
    a plan may take out of the source only aggregates grouped by non-key columns, with at
    least ``k`` rows in every group, and may never ship a list of keys into it. *Keys* are
    each table's primary-key columns plus the columns declared identifying with
    ``keys={"source.table": [...]}``. :func:`check_plan` refuses a fragment that returns
    rows, groups by a key, returns a key (or a MIN/MAX/list of keys, or a bare column that
    is not grouped), or filters a key by a literal list (``IN (...)``, ``= ANY(...)``);
    :func:`run_guards` counts, on the source itself, the groups that would be smaller than
    ``k`` and refuses the query if there is any (only that count leaves the source).
``deny``
    nothing may be read from the source.

Every refusal is a :class:`~fedlab.errors.ResidencyError` naming the table, the source,
the rule and what would be allowed; it is raised before any row is fetched.

**Access control** (``fed.policy(allow=[...], deny=[...])``) is checked when a query is
bound, on every column it reads (``SELECT *`` expanded, WHERE, JOIN, GROUP BY, HAVING,
ORDER BY, window functions, CTEs and subqueries). A rule is a pattern
``source[.table[.column]]`` whose parts may use globs (``*``, ``?``, ``[ab]``),
case-insensitively: ``"hr"`` / ``"hr.*"`` is a whole source, ``"crm.users"`` a table,
``"crm.users.email"`` one column, ``"*.*.email"`` every column named ``email``.
``deny`` wins over ``allow``; a non-empty ``allow`` list means *only* what it names may be
read (a column rule also lets the table be counted: ``SELECT count(*)``). A sharded
logical table is checked as ``logical.<name>`` and as each of its shards' physical tables.
A refusal is an :class:`~fedlab.errors.AccessDeniedError` naming the column or table and
the rule:

>>> make_policy(None, deny=["crm.users.email", "hr.*"])
Policy(residency={}, k=5, keys={}, deny=('crm.users.email', 'hr.*'))
"""

from __future__ import annotations

import fnmatch
import html
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import sqlglot
from sqlglot import exp

from fedlab.errors import (
    AccessDeniedError,
    ConfigError,
    QueryTimeoutError,
    ResidencyError,
    SourceError,
)

__all__ = [
    "MODES",
    "AccessRule",
    "Policy",
    "check_access",
    "check_plan",
    "guard_sql",
    "make_policy",
    "run_guards",
]

#: the residency modes, least strict first
MODES = ("allow", "aggregate-only", "deny")
_STRICTNESS = {m: i for i, m in enumerate(MODES)}
_MODE_ALIASES = {
    "allow": "allow",
    "aggregate-only": "aggregate-only",
    "aggregate_only": "aggregate-only",
    "aggregates-only": "aggregate-only",
    "aggregates": "aggregate-only",
    "aggregate": "aggregate-only",
    "deny": "deny",
}
#: sqlglot dialect of each source kind
_DIALECT = {"postgresql": "postgres", "mysql": "mysql", "sqlite": "sqlite", "duckdb": "duckdb"}
#: aggregates that hand rows out as one list value
_LIST_AGGREGATES = (exp.ArrayAgg, exp.GroupConcat, exp.ArrayConcatAgg, exp.ArrayUniqueAgg)
_RULE_KEYS = ("residency", "k", "keys", "allow", "deny", "reset")


# ---------------------------------------------------------------------------- the policy
def _norm(text: str) -> str:
    return str(text).strip().lower()


@dataclass(frozen=True)
class Rule:
    """One residency rule: a selector (which sources) and a mode (what may leave them)."""

    selector: str
    mode: str

    @property
    def specificity(self) -> int:
        if self.selector == "*":
            return 0
        if _norm(self.selector).startswith("source="):
            return 2
        return 1

    def matches(self, source: Any) -> bool:
        """Does this rule apply to ``source`` (a :class:`~fedlab.source.Source`)?"""
        sel = self.selector.strip()
        if sel == "*":
            return True
        if "=" in sel:
            key, value = (_norm(p) for p in sel.split("=", 1))
        else:
            key, value = "region", _norm(sel)
        if key == "source":
            return _norm(source.name) == value
        tags = {_norm(k): _norm(v) for k, v in (source.tags or {}).items()}
        return tags.get(key) == value

    def __str__(self) -> str:
        return f"{self.selector!r}: {self.mode}"


@dataclass(frozen=True)
class Policy:
    """The federation's residency rules (``fed.policy(...)``); immutable, composed by
    :func:`make_policy`.

    Attributes:
        residency: selector -> mode (see the module docstring).
        k: the minimum number of rows in a group that leaves an aggregate-only source.
        keys: identifying columns per table (``"source.table"`` or a bare table name),
            added to the tables' primary keys.
    """

    residency: dict[str, str] = field(default_factory=dict)
    k: int = 5
    keys: dict[str, list[str]] = field(default_factory=dict)
    #: access rules: only what these patterns name may be read (empty: everything)
    allow: tuple[str, ...] = ()
    #: access rules: what may never be read (wins over ``allow``)
    deny: tuple[str, ...] = ()

    @property
    def allow_rules(self) -> list[AccessRule]:
        return [AccessRule.parse(p) for p in self.allow]

    @property
    def deny_rules(self) -> list[AccessRule]:
        return [AccessRule.parse(p) for p in self.deny]

    # ------------------------------------------------------------------ lookups
    @property
    def rules(self) -> list[Rule]:
        return [Rule(s, m) for s, m in self.residency.items()]

    def rule_for(self, source: Any) -> Rule | None:
        """The rule that governs ``source`` (None: no rule matches, the source is free)."""
        hits = [r for r in self.rules if r.matches(source)]
        if not hits:
            return None
        return max(hits, key=lambda r: (r.specificity, _STRICTNESS[r.mode]))

    def mode_of(self, source: Any) -> str:
        rule = self.rule_for(source)
        return rule.mode if rule else "allow"

    def protected_sources(self, catalog: Any) -> set[str]:
        """Names of the sources into which no keys may be shipped (and out of which no rows
        may come): those whose rule is ``aggregate-only`` or ``deny``."""
        return {name for name, s in catalog.sources.items() if self.mode_of(s) != "allow"}

    def key_columns(self, table: Any) -> list[str]:
        """Primary key plus declared identifying columns of ``table`` (a TableInfo)."""
        cols = list(table.primary_key)
        for name in (f"{table.source}.{table.name}", table.name):
            for ref, declared in self.keys.items():
                if _norm(ref) == _norm(name):
                    cols += [c for c in declared if _norm(c) not in {_norm(x) for x in cols}]
        return cols

    def describe(self, catalog: Any) -> Any:
        """One row per attached source: its tags, the rule that governs it, and its keys."""
        import polars as pl

        rows = []
        for name, s in catalog.sources.items():
            rule = self.rule_for(s)
            keys = [
                f"{t.name}({', '.join(self.key_columns(t))})"
                for t in catalog.tables.get(name, {}).values()
                if self.key_columns(t)
            ]
            rows.append(
                {
                    "source": name,
                    "tags": ", ".join(f"{k}={v}" for k, v in s.tags.items()),
                    "rule": rule.selector if rule else None,
                    "mode": rule.mode if rule else "allow",
                    "k": self.k if rule and rule.mode == "aggregate-only" else None,
                    "keys": "; ".join(keys),
                }
            )
        schema = {
            "source": pl.String,
            "tags": pl.String,
            "rule": pl.String,
            "mode": pl.String,
            "k": pl.Int64,
            "keys": pl.String,
        }
        return pl.DataFrame(rows, schema=schema)

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        text = f"Policy(residency={self.residency!r}, k={self.k!r}, keys={self.keys!r}"
        if self.allow:
            text += f", allow={self.allow!r}"
        if self.deny:
            text += f", deny={self.deny!r}"
        return text + ")"

    def _access_lines(self) -> list[str]:
        lines = []
        if self.allow:
            lines.append(f"  allow only: {', '.join(self.allow)}")
        if self.deny:
            lines.append(f"  deny: {', '.join(self.deny)}")
        return lines

    def __str__(self) -> str:
        if not self.residency:
            head = "Policy: no residency rules (every source may be read freely)"
            access = self._access_lines()
            return "\n".join([head, "access rules:", *access]) if access else head
        lines = ["Policy:", *self._access_lines()]
        for r in self.rules:
            what = {
                "allow": "no restriction",
                "deny": "nothing may leave",
                "aggregate-only": f"only aggregates by non-key columns, groups of >= {self.k} "
                "rows; no keys shipped in",
            }[r.mode]
            lines.append(f"  {_selector_text(r.selector)}: {r.mode} ({what})")
        for t, cols in self.keys.items():
            lines.append(f"  identifying columns of {t}: {', '.join(cols)}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self.residency:
            body = "<i>no residency rules: every source may be read freely</i>"
        else:
            colors = {"allow": "#2ca02c", "aggregate-only": "#ff7f0e", "deny": "#d62728"}
            rows = "".join(
                f"<tr><td><code>{html.escape(r.selector)}</code></td>"
                f"<td>{html.escape(_selector_text(r.selector))}</td>"
                f"<td><b style='color:{colors[r.mode]}'>{html.escape(r.mode)}</b></td></tr>"
                for r in self.rules
            )
            body = (
                "<table><tr><th>rule</th><th>matches</th><th>mode</th></tr>"
                f"{rows}</table>"
                f"<div>aggregate-only: groups of at least <b>k = {self.k}</b> rows; "
                "no key column grouped, returned or shipped in</div>"
            )
        if self.keys:
            items = "".join(
                f"<li><code>{html.escape(t)}</code>: {html.escape(', '.join(c))}</li>"
                for t, c in self.keys.items()
            )
            body += f"<div>identifying columns (besides primary keys):<ul>{items}</ul></div>"
        for label, pats in (("allow only", self.allow), ("deny", self.deny)):
            if pats:
                codes = ", ".join(f"<code>{html.escape(p)}</code>" for p in pats)
                body += f"<div>access: <b>{label}</b> {codes}</div>"
        return f"<div class='fedlab-policy'><b>Policy</b>{body}</div>"


def _selector_text(selector: str) -> str:
    sel = selector.strip()
    if sel == "*":
        return "every source"
    if "=" not in sel:
        return f"sources tagged region={sel}"
    key, value = (p.strip() for p in sel.split("=", 1))
    if key.lower() == "source":
        return f"the source named {value}"
    return f"sources tagged {key}={value}"


def make_policy(current: Policy | None, **rules: Any) -> Policy:
    """``fed.policy(...)``: ``current`` updated with ``rules`` (a new Policy; calls compose).

    Args (all optional):
        residency: ``{selector: mode}``; a selector already present is replaced, a mode of
            ``None`` removes it.
        k: minimum rows per group leaving an aggregate-only source (an int >= 1).
        keys: ``{"source.table": [columns]}``: identifying columns besides the primary key;
            a table already present is replaced, ``None`` or ``[]`` removes it.
        allow: patterns ``source[.table[.column]]`` (globs allowed): only these may be
            read. Replaces the current allow list; ``[]`` clears it.
        deny: patterns that may never be read (wins over allow). Replaces the current deny
            list; ``[]`` clears it.
        reset: start from an empty policy (then apply the other arguments).
    """
    unknown = sorted(set(rules) - set(_RULE_KEYS))
    if unknown:
        raise ConfigError(f"unknown policy argument(s) {unknown}; known: {', '.join(_RULE_KEYS)}")
    policy = Policy() if (current is None or rules.get("reset")) else current
    if "residency" in rules and rules["residency"] is not None:
        residency = dict(policy.residency)
        given = rules["residency"]
        if not isinstance(given, Mapping):
            raise ConfigError(
                "residency= must be a mapping {selector: mode}, e.g. "
                "{'EU': 'aggregate-only'} or {'tenant=A': 'deny'}"
            )
        for selector, mode in given.items():
            sel = _check_selector(selector)
            if mode is None:
                residency.pop(sel, None)
                continue
            residency[sel] = _check_mode(sel, mode)
        policy = replace(policy, residency=residency)
    if "k" in rules and rules["k"] is not None:
        k = rules["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be an integer >= 1 (minimum rows per group), got {k!r}")
        policy = replace(policy, k=k)
    if "keys" in rules and rules["keys"] is not None:
        given = rules["keys"]
        if not isinstance(given, Mapping):
            raise ConfigError("keys= must be a mapping {'source.table': ['column', ...]}")
        keys = dict(policy.keys)
        for table, cols in given.items():
            if not isinstance(table, str) or not table.strip():
                raise ConfigError(f"keys=: {table!r} is not a table name ('source.table')")
            if not cols:
                keys.pop(table, None)
                continue
            cols = [cols] if isinstance(cols, str) else list(cols)
            if not all(isinstance(c, str) and c for c in cols):
                raise ConfigError(f"keys[{table!r}] must be column names, got {cols!r}")
            keys[table] = cols
        policy = replace(policy, keys=keys)
    for which in ("allow", "deny"):
        if which in rules and rules[which] is not None:
            policy = replace(policy, **{which: _check_patterns(which, rules[which])})
    return policy


def _check_patterns(which: str, given: Any) -> tuple[str, ...]:
    if isinstance(given, str):
        given = [given]
    if not isinstance(given, Iterable) or isinstance(given, Mapping):
        raise ConfigError(
            f"{which}= must be a list of patterns 'source[.table[.column]]', "
            f"e.g. {which}=['crm.users.email', 'hr.*'], got {given!r}"
        )
    out: list[str] = []
    for p in given:
        rule = AccessRule.parse(p, which=which)
        if rule.pattern not in out:
            out.append(rule.pattern)
    return tuple(out)


def _check_selector(selector: Any) -> str:
    if not isinstance(selector, str) or not selector.strip():
        raise ConfigError(
            f"residency selector {selector!r} must be a non-empty string: a region ('EU'), "
            "'tag=value', 'source=NAME' or '*'"
        )
    sel = selector.strip()
    if "=" in sel:
        key, value = (p.strip() for p in sel.split("=", 1))
        if not key or not value:
            raise ConfigError(
                f"residency selector {selector!r}: expected 'tag=value' with both parts"
            )
    return sel


def _check_mode(selector: str, mode: Any) -> str:
    norm = _MODE_ALIASES.get(_norm(mode)) if isinstance(mode, str) else None
    if norm is None:
        raise ConfigError(
            f"residency rule {selector!r}: unknown mode {mode!r}; "
            f"choose one of {', '.join(MODES)} (or None to remove the rule)"
        )
    return norm


# ---------------------------------------------------------------------------- analysis
@dataclass
class _Finding:
    """Why a fragment may not leave its source."""

    problem: str
    allowed: str


class _Scope:
    """Tables visible in one SELECT: alias -> (columns, key columns), by lower-case name."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[list[str] | None, set[str]]] = {}

    def add(self, alias: str, columns: list[str] | None, keys: Iterable[str]) -> None:
        self.items[_norm(alias)] = (columns, {_norm(k) for k in keys})

    def tainted(self, col: exp.Column) -> bool:
        """Is ``col`` a key column (or possibly one: unknown items count as keys)?"""
        name = _norm(col.name)
        if col.table:
            item = self.items.get(_norm(col.table))
            if item is None:
                return False  # an outer query's column (correlated): judged there
            columns, keys = item
            return columns is None or name in keys
        return any(name in keys or columns is None for columns, keys in self.items.values())


class _Analyzer:
    def __init__(self, policy: Policy, tables: Mapping[str, Any]) -> None:
        self.policy = policy
        #: physical table name (lower case) -> TableInfo, for the fragment's source
        self.tables = {_norm(n): t for n, t in tables.items()}
        self.read: list[Any] = []

    # --------------------------------------------------------------- scopes
    def scope(self, select: exp.Select, ctes: Mapping[str, exp.Query]) -> _Scope:
        scope = _Scope()
        ctes = {**ctes, **_ctes_of(select)}
        items = []
        if select.args.get("from_") is not None:
            items.append(select.args["from_"].this)
        items += [j.this for j in select.args.get("joins") or []]
        for item in items:
            alias = item.alias_or_name
            if isinstance(item, exp.Table) and not item.args.get("db"):
                name = _norm(item.name)
                if name in ctes:
                    outs = self.outputs(ctes[name], ctes)
                    scope.add(alias, list(outs), [n for n, t in outs.items() if t])
                    continue
                info = self.tables.get(name)
                if info is not None:
                    self.read.append(info)
                    scope.add(alias, [c.name for c in info.columns], self.policy.key_columns(info))
                    continue
            if isinstance(item, exp.Subquery) and isinstance(item.this, exp.Query):
                outs = self.outputs(item.this, ctes)
                scope.add(alias, list(outs), [n for n, t in outs.items() if t])
                continue
            scope.add(alias, None, [])  # a table function, a VALUES list…: unknown
        return scope

    def outputs(self, query: exp.Query, ctes: Mapping[str, exp.Query]) -> dict[str, bool]:
        """Output column name -> does it carry key values."""
        if isinstance(query, exp.Subquery):
            return self.outputs(query.this, ctes)
        if isinstance(query, exp.SetOperation):
            left = self.outputs(query.this, ctes)
            right = list(self.outputs(query.expression, ctes).values())
            return {n: t or (i < len(right) and right[i]) for i, (n, t) in enumerate(left.items())}
        if not isinstance(query, exp.Select):
            return {}
        scope = self.scope(query, ctes)
        out: dict[str, bool] = {}
        for proj in query.selects:
            if isinstance(proj, exp.Star) or (
                isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star)
            ):
                wanted = _norm(proj.table) if isinstance(proj, exp.Column) else None
                for alias, (columns, keys) in scope.items.items():
                    if wanted and alias != wanted:
                        continue
                    for c in columns or []:
                        out[_norm(c)] = _norm(c) in keys
                continue
            out[_norm(proj.alias_or_name)] = _carries_keys(proj, scope)
        return out

    # --------------------------------------------------------------- the check
    def check(self, tree: exp.Query) -> tuple[_Finding | None, list[exp.Select]]:
        """The first problem of a fragment's tree (None: it may leave), and the SELECTs
        whose groups leave the source (for the k guard)."""
        leaving: list[exp.Select] = []
        ctes = _ctes_of(tree)
        shipped = self.key_lists(tree, ctes)
        if shipped:
            return shipped, []
        for select in _leaving(tree, ctes):
            finding = self.check_select(select, ctes)
            if finding is not None:
                return finding, []
            leaving.append(select)
        return None, leaving

    def key_lists(self, tree: exp.Query, ctes: Mapping[str, exp.Query]) -> _Finding | None:
        """A literal list of keys in the fragment (``k IN (1, 2, …)``, ``k = ANY(ARRAY[…])``,
        ``k IN (VALUES …)``): keys shipped into the source, e.g. by a semi-join."""
        for select in tree.find_all(exp.Select):
            scope = self.scope(select, ctes)
            for node in select.find_all(exp.In, exp.EQ):
                if node.parent_select is not select:
                    continue
                if isinstance(node, exp.In):
                    listed = (
                        bool(node.expressions)
                        or isinstance(node.args.get("query"), exp.Values)
                        or isinstance(getattr(node.args.get("query"), "this", None), exp.Values)
                    )
                else:
                    listed = isinstance(node.expression, exp.Any) and not node.expression.find(
                        exp.Query
                    )
                if not listed:
                    continue
                cols = [c for c in node.this.find_all(exp.Column) if scope.tainted(c)]
                if cols:
                    n = len(node.expressions) if isinstance(node, exp.In) else None
                    if n == 1 and isinstance(node.expressions[0], exp.Values):
                        n = len(node.expressions[0].expressions)
                    count = f" of {n} value(s)" if n else ""
                    return _Finding(
                        f"it filters key column {cols[0].name} by a literal list{count} "
                        f"({_short(node.sql(dialect='postgres'), 80)}): keys shipped into the "
                        "source select individuals by identity",
                        "filter by non-key columns (or join outside the protected source "
                        "on aggregates); never ship a list of keys into it",
                    )
        return None

    def check_select(self, select: exp.Select, ctes: Mapping[str, exp.Query]) -> _Finding | None:
        scope = self.scope(select, ctes)
        allowed = (
            "aggregate it by non-key columns (GROUP BY non-key columns with COUNT/SUM/AVG…), "
            f"with at least k={self.policy.k} rows per group"
        )
        projections = list(select.selects)
        distinct = select.args.get("distinct")
        if distinct is not None and distinct.args.get("on"):
            return _Finding("it returns rows (DISTINCT ON picks one row per group)", allowed)
        for proj in projections:
            if proj.find(exp.Window):
                return _Finding(
                    f"it returns one value per row (window function in "
                    f"{_short(proj.sql(dialect='postgres'))})",
                    allowed,
                )
            if proj.find(exp.Query):
                return _Finding(
                    f"a subquery in its select list ({_short(proj.sql(dialect='postgres'))}) "
                    "cannot be verified",
                    allowed + ", without subqueries in the select list",
                )
        aggregated = any(_has_aggregate(p) for p in projections)
        group = select.args.get("group")
        groups: list[exp.Expression] = list(group.expressions) if group is not None else []
        if group is None and distinct is not None and not aggregated:
            groups = [p.unalias() for p in projections]  # SELECT DISTINCT a, b = GROUP BY a, b
        if not aggregated and not groups:
            return _Finding("it returns rows (no aggregation)", allowed)
        aliases = {_norm(p.alias): p.unalias() for p in projections if isinstance(p, exp.Alias)}
        resolved: list[exp.Expression] = []
        for g in groups:
            if isinstance(g, exp.Literal) and g.is_int and 0 < int(g.name) <= len(projections):
                g = projections[int(g.name) - 1].unalias()
            elif isinstance(g, exp.Column) and not g.table and _norm(g.name) in aliases:
                resolved.append(aliases[_norm(g.name)])  # GROUP BY an output alias
            resolved.append(g)
        for g in resolved:
            keys = [c.name for c in g.find_all(exp.Column) if scope.tainted(c)]
            if keys:
                return _Finding(
                    f"it groups by key column {keys[0]} (one group per individual)", allowed
                )
        group_sql = {_canon(g) for g in resolved}
        group_cols = {
            (_norm(g.table), _norm(g.name)) for g in resolved if isinstance(g, exp.Column)
        }
        for proj in projections:
            expr = proj.unalias()
            for agg in _aggregates(expr):
                if isinstance(agg, _LIST_AGGREGATES):
                    return _Finding(
                        f"it returns rows as a list ({_short(agg.sql(dialect='postgres'))})",
                        allowed + ", with scalar aggregates",
                    )
                if not isinstance(agg, exp.Count):
                    keys = [c.name for c in agg.find_all(exp.Column) if scope.tainted(c)]
                    if keys:
                        return _Finding(
                            f"it returns a key value ({_short(agg.sql(dialect='postgres'))})",
                            allowed + "; only COUNT may read a key column",
                        )
            if _canon(expr) in group_sql:
                continue
            for c in _bare_columns(expr):
                if scope.tainted(c):
                    return _Finding(f"it returns key column {c.name}", allowed)
                if (_norm(c.table), _norm(c.name)) in group_cols or (
                    not c.table and any(n == _norm(c.name) for _, n in group_cols)
                ):
                    continue
                if c.table and ("", _norm(c.name)) in group_cols:
                    continue
                return _Finding(
                    f"it returns column {c.name}, which is neither aggregated nor grouped "
                    "(a value of one row per group)",
                    allowed,
                )
        return None


def _ctes_of(node: exp.Expression) -> dict[str, exp.Query]:
    with_ = node.args.get("with_")
    if with_ is None:
        return {}
    return {_norm(c.alias): c.this for c in with_.expressions}


def _branches(tree: exp.Query) -> list[exp.Select]:
    if isinstance(tree, exp.Subquery):
        return _branches(tree.this)
    if isinstance(tree, exp.SetOperation):
        return _branches(tree.this) + _branches(tree.expression)
    if isinstance(tree, exp.Select):
        return [tree]
    raise ResidencyError(f"cannot verify a fragment of type {type(tree).__name__}")


def _leaving(tree: exp.Query, ctes: Mapping[str, exp.Query]) -> list[exp.Select]:
    """The SELECTs whose rows leave the source: every branch of a set operation, looking
    through pass-through wrappers (``SELECT * FROM (q) AS x ORDER BY …``, MariaDB's grouped
    fragments; ``SELECT x.a, x.b * 2 FROM (q) AS x WHERE …``): their rows are ``q``'s groups."""
    out: list[exp.Select] = []
    for select in _branches(tree):
        from_ = select.args.get("from_")
        inner = from_.this if from_ is not None else None
        if isinstance(inner, exp.Table) and not inner.args.get("db") and _norm(inner.name) in ctes:
            inner = exp.Subquery(this=ctes[_norm(inner.name)])  # WITH a AS (q) SELECT … FROM a
        if (
            isinstance(inner, exp.Subquery)
            and isinstance(inner.this, exp.Query)
            and not select.args.get("joins")
            and not select.args.get("group")
            and not select.args.get("having")
            and not select.args.get("distinct")
            and not any(p.find(exp.Query, exp.Window, exp.AggFunc) for p in select.selects)
            and not (select.args.get("where") and select.args["where"].find(exp.Query))
        ):
            out.extend(_leaving(inner.this, ctes))
        else:
            out.append(select)
    return out


def _aggregates(e: exp.Expression) -> list[exp.AggFunc]:
    """The outermost aggregate calls of ``e`` (not those inside windows or subqueries)."""
    found = []
    for node in e.walk(bfs=False, prune=lambda n: isinstance(n, exp.AggFunc | exp.Query)):
        if isinstance(node, exp.AggFunc):
            found.append(node)
    return found


def _has_aggregate(e: exp.Expression) -> bool:
    return bool(_aggregates(e))


def _bare_columns(e: exp.Expression) -> list[exp.Column]:
    """Columns of ``e`` outside any aggregate call."""
    cols = []
    for node in e.walk(bfs=False, prune=lambda n: isinstance(n, exp.AggFunc | exp.Query)):
        if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
            cols.append(node)
    return cols


def _carries_keys(proj: exp.Expression, scope: _Scope) -> bool:
    """Does an output expression carry key values (COUNT of a key does not)?"""
    for node in proj.walk(bfs=False, prune=lambda n: isinstance(n, exp.Count | exp.Query)):
        if isinstance(node, exp.Column) and scope.tainted(node):
            return True
    return False


def _canon(e: exp.Expression) -> str:
    return e.sql(dialect="postgres", normalize=True, identify=False).lower()


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------------- plan check
def _parse(fragment: Any) -> exp.Query:
    dialect = _DIALECT.get(fragment.kind, fragment.kind)
    try:
        tree = sqlglot.parse_one(fragment.sql, read=dialect)
    except sqlglot.errors.ParseError as e:
        raise ResidencyError(
            f"fragment {fragment.id} @ {fragment.source}: its SQL could not be parsed to check "
            f"the residency rule ({str(e).splitlines()[0]}); refused",
            source=fragment.source,
            fragment=fragment.id,
        ) from None
    if not isinstance(tree, exp.Query):
        raise ResidencyError(
            f"fragment {fragment.id} @ {fragment.source} is not a query; refused",
            source=fragment.source,
            fragment=fragment.id,
        )
    return tree


def _tables_text(fragment: Any, analyzer: _Analyzer | None = None) -> str:
    if fragment.tables:
        return ", ".join(fragment.tables)
    if analyzer is not None and analyzer.read:
        return ", ".join(dict.fromkeys(f"{t.source}.{t.name}" for t in analyzer.read))
    return f"{fragment.source}.?"


def _tags_text(source: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in source.tags.items()) or "no tags"


def check_plan(plan: Any, catalog: Any, policy: Policy | None) -> None:
    """Raise a :class:`~fedlab.errors.ResidencyError` if ``plan`` takes out of a source what
    the policy forbids; otherwise add a note per protected fragment to ``plan.notes``."""
    if policy is None or not policy.residency:
        return
    problems: list[tuple[Any, Rule, str, str]] = []
    notes: list[str] = []
    for frag in plan.fragments:
        source = catalog.sources.get(frag.source)
        if source is None:
            continue
        rule = policy.rule_for(source)
        if rule is None or rule.mode == "allow":
            continue
        if rule.mode == "deny":
            problems.append(
                (
                    frag,
                    rule,
                    f"{frag.id} would read {_tables_text(frag)}: nothing may leave the source",
                    "nothing: answer this question inside the source, or without its tables",
                )
            )
            continue
        if source.kind == "rest":
            # a REST service answers with its rows: they cross HTTP before any aggregate
            # fedlab pushes down could run (locally, over the fetched rows)
            problems.append(
                (
                    frag,
                    rule,
                    f"{frag.id} would read {_tables_text(frag)} from a REST service, which "
                    "sends its rows over HTTP: aggregates cannot be computed inside it",
                    "nothing through this endpoint: expose an aggregate endpoint, or attach "
                    "the database behind it",
                )
            )
            continue
        analyzer = _Analyzer(policy, catalog.tables.get(frag.source, {}))
        finding, _ = analyzer.check(_parse(frag))
        if finding is None and frag.partition is not None:
            finding = _Finding(
                "it is split into partitioned range reads (each part's groups could be "
                "smaller than k)",
                "the same fragment read whole",
            )
        if finding is not None:
            problems.append(
                (
                    frag,
                    rule,
                    f"{frag.id} would take out of {_tables_text(frag, analyzer)}: "
                    f"{finding.problem}",
                    finding.allowed + _join_hint(plan, frag, finding),
                )
            )
            continue
        notes.append(
            f"residency: {frag.id} @ {frag.source} (rule {rule}) returns aggregates by "
            f"non-key columns; groups of fewer than k={policy.k} rows are refused at run time"
        )
    if problems:
        frag, rule = problems[0][:2]
        source = catalog.sources[frag.source]
        lines = [
            f"residency rule {rule} refuses this plan: table {_tables_text(frag)} in source "
            f"{frag.source!r} ({_tags_text(source)}) may not leave it this way.",
        ]
        for f, r, w, a in problems:
            lines.append(f"  - {w} [rule {r} on source {f.source!r}]")
            lines.append(f"    allowed: {a}")
        lines.append("Nothing was fetched. The rules: fed.policy() (docs/policy.md).")
        raise ResidencyError(
            "\n".join(lines),
            source=frag.source,
            table=_tables_text(frag),
            rule=str(rule),
            fragment=frag.id,
        )
    for n in notes:
        if n not in plan.notes:
            plan.notes.append(n)
    for ref in policy.keys:
        if not _known_table(catalog, ref):
            note = f"policy: keys= names table {ref!r}, which no attached source has"
            if note not in plan.notes:
                plan.notes.append(note)


def _join_hint(plan: Any, frag: Any, finding: _Finding) -> str:
    """For a row-level read that a cross-source join or local work needs: how to rewrite."""
    if not finding.problem.startswith("it returns rows") or frag.role == "query":
        return ""
    others = sorted({f.source for f in plan.fragments} - {frag.source})
    where = f" with {', '.join(others)}" if others else " locally"
    return (
        f"; this query needs its rows to be combined{where}: aggregate inside "
        f"{frag.source} first (a subquery grouped by non-key columns) and combine the "
        "aggregates"
    )


def _known_table(catalog: Any, ref: str) -> bool:
    for source, tables in catalog.tables.items():
        for t in tables.values():
            if _norm(ref) in (_norm(t.name), _norm(f"{source}.{t.name}")):
                return True
    return False


# ---------------------------------------------------------------------------- run time
def guard_sql(fragment: Any, catalog: Any, policy: Policy) -> list[str]:
    """The group-size checks of one fragment, in its source's dialect: each returns how
    many groups that would leave hold fewer than ``policy.k`` rows (one per UNION branch).

    ``SELECT COUNT(*) FROM (SELECT COUNT(*) AS n FROM … WHERE … GROUP BY … [HAVING …]) AS g
    WHERE g.n < k``: only that count leaves the source.
    """
    dialect = _DIALECT.get(fragment.kind, fragment.kind)
    analyzer = _Analyzer(policy, catalog.tables.get(fragment.source, {}))
    tree = _parse(fragment)
    finding, leaving = analyzer.check(tree)
    if finding is not None:  # check_plan refuses it first; never run a guard for it
        raise ResidencyError(
            f"{fragment.id} @ {fragment.source}: {finding.problem}", source=fragment.source
        )
    out = []
    for select in leaving:
        # the fragment's own projections stay (HAVING may name them) but never leave
        inner = select.copy()
        if (
            select.args.get("group") is None
            and select.args.get("distinct") is not None
            and not any(_has_aggregate(p) for p in select.selects)
        ):
            keys = [p.unalias().copy() for p in select.selects]
            inner.set("group", exp.Group(expressions=keys))
        inner.set("distinct", None)
        inner.set(
            "expressions",
            [*inner.expressions, exp.alias_(exp.Count(this=exp.Star()), "_fedlab_n")],
        )
        for arg in ("order", "limit", "offset"):
            inner.set(arg, None)
        outer = (
            exp.select(exp.Count(this=exp.Star()))
            .from_(inner.subquery("_fedlab_groups"))
            .where(
                exp.LT(
                    this=exp.column("_fedlab_n", table="_fedlab_groups"),
                    expression=exp.Literal.number(policy.k),
                )
            )
        )
        if tree.args.get("with_") is not None and inner.find(exp.Table):
            outer.set("with_", tree.args["with_"].copy())  # the groups may read its CTEs
        out.append(outer.sql(dialect=dialect))
    return out


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise QueryTimeoutError("the query passed its deadline while checking residency rules")
    return left


def _run_count(source: Any, sql: str, deadline: float | None) -> int:
    left = _remaining(deadline)
    con = source.connect()
    timer = None
    try:
        cur = (
            con if source.kind == "duckdb" else con.cursor()
        )  # a DuckDB cursor is another connection
        if left is not None:
            if source.kind == "postgresql":
                cur.execute(f"SET statement_timeout = {max(1, int(left * 1000))}")
            elif source.kind == "mysql":
                cur.execute(f"SET SESSION max_statement_time = {max(0.001, left):.3f}")
            elif source.kind in ("sqlite", "duckdb"):
                timer = threading.Timer(left, con.interrupt)
                timer.daemon = True
                timer.start()
        try:
            cur.execute(sql)
            row = cur.fetchone()
        except Exception as e:
            if deadline is not None and time.monotonic() >= deadline - 0.01:
                raise QueryTimeoutError(
                    f"source {source.name!r}: the residency group-size check passed the "
                    "query's deadline"
                ) from None
            text = str(e).lower()
            if "timeout" in text or "max_statement_time" in text or "interrupt" in text:
                raise QueryTimeoutError(
                    f"source {source.name!r}: the residency group-size check passed the "
                    f"query's deadline ({type(e).__name__})"
                ) from None
            raise SourceError(
                f"source {source.describe()}: the residency group-size check failed: "
                f"{type(e).__name__}: {e}"
            ) from None
        return int(row[0]) if row and row[0] is not None else 0
    finally:
        if timer is not None:
            timer.cancel()
        con.close()


def run_guards(plan: Any, catalog: Any, policy: Policy | None, deadline: float | None) -> None:
    """Before anything is fetched: on each aggregate-only source, count the groups that
    would leave with fewer than ``policy.k`` rows; refuse the query if there is any."""
    if policy is None or not policy.residency:
        return
    for frag in plan.fragments:
        source = catalog.sources.get(frag.source)
        if source is None:
            continue
        rule = policy.rule_for(source)
        if rule is None or rule.mode != "aggregate-only" or policy.k <= 1:
            continue
        for sql in guard_sql(frag, catalog, policy):
            small = _run_count(source, sql, deadline)
            if small:
                raise ResidencyError(
                    f"residency rule {rule} refuses this query: {frag.id} would take out of "
                    f"table {_tables_text(frag)} in source {frag.source!r} "
                    f"({_tags_text(source)}) {small} group(s) of fewer than k={policy.k} rows.\n"
                    f"  allowed: aggregates by non-key columns whose every group holds at "
                    f"least {policy.k} rows: group by coarser columns, or filter less.\n"
                    "Nothing was fetched (only the count of small groups left the source).",
                    source=frag.source,
                    table=_tables_text(frag),
                    rule=str(rule),
                    fragment=frag.id,
                )


# ---------------------------------------------------------------------------- access control
_PATTERN_PART = re.compile(r"^[A-Za-z0-9_$*?\[\]!\-]+$")


@dataclass(frozen=True)
class AccessRule:
    """One access pattern ``source[.table[.column]]`` (globs allowed, case-insensitive).

    >>> r = AccessRule.parse("crm.users.email")
    >>> r.column_level, r.matches_column("crm", "users", "EMAIL"), r.matches_table("crm", "users")
    (True, True, False)
    >>> AccessRule.parse("hr.*").matches_table("hr", "salaries")
    True
    """

    pattern: str
    source: str
    table: str = "*"
    column: str = "*"

    @classmethod
    def parse(cls, text: Any, *, which: str = "access") -> AccessRule:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(
                f"{which} rule {text!r} must be a non-empty string 'source[.table[.column]]'"
            )
        pattern = text.strip()
        parts = [p.strip() for p in pattern.split(".")]
        if len(parts) > 3:
            raise ConfigError(
                f"{which} rule {pattern!r} has {len(parts)} parts; expected at most "
                "source.table.column"
            )
        for part in parts:
            if not part or not _PATTERN_PART.match(part):
                raise ConfigError(
                    f"{which} rule {pattern!r}: {part!r} is not a name or glob "
                    "(letters, digits, _, *, ?, [...])"
                )
        parts = [p.lower() for p in parts] + ["*"] * (3 - len(parts))
        return cls(pattern, parts[0], parts[1], parts[2])

    @property
    def column_level(self) -> bool:
        """Does the rule name columns (not a whole table or source)?"""
        return self.column != "*"

    def matches_table(self, source: str, table: str) -> bool:
        """Does the rule cover the whole table ``source.table``?"""
        return not self.column_level and self.touches_table(source, table)

    def touches_table(self, source: str, table: str) -> bool:
        """Does the rule name ``source.table`` or some of its columns?"""
        return fnmatch.fnmatchcase(_norm(source), self.source) and fnmatch.fnmatchcase(
            _norm(table), self.table
        )

    def matches_column(self, source: str, table: str, column: str) -> bool:
        return self.touches_table(source, table) and fnmatch.fnmatchcase(_norm(column), self.column)

    def __str__(self) -> str:
        return self.pattern


_CLAUSES = {
    "expressions": "SELECT",
    "where": "WHERE",
    "joins": "JOIN",
    "group": "GROUP BY",
    "having": "HAVING",
    "order": "ORDER BY",
    "qualify": "QUALIFY",
    "from_": "FROM",
    "distinct": "DISTINCT ON",
}


def _clause(node: exp.Expression, scope: Any = None) -> str:
    """Where in its SELECT ``node`` is read (``WHERE``, ``JOIN``, ``window function``…)."""
    where = ""
    child, parent = node, node.parent
    window = False
    while parent is not None and not isinstance(parent, exp.Select):
        window = window or isinstance(parent, exp.Window)
        child, parent = parent, parent.parent
    if parent is not None:
        where = _CLAUSES.get(child.arg_key, child.arg_key.upper())
    if window:
        where = f"a window function in {where}" if where else "a window function"
    if scope is not None:
        if getattr(scope, "is_cte", False):
            where += " of a CTE"
        elif getattr(scope, "is_subquery", False) or getattr(scope, "is_derived_table", False):
            where += " of a subquery"
    return where or "the query"


def _targets(info: Any) -> tuple[tuple[str, str] | None, list[tuple[str, str]]]:
    """(logical name or None, physical (source, table) list) of a bound table."""
    lt = getattr(info, "logical", None)
    if lt is not None:
        return (info.source, lt.name), [(sh.table.source, sh.table.name) for sh in lt.shards]
    return None, [(info.source, info.name)]


class _AccessCheck:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.allow = policy.allow_rules
        self.deny = policy.deny_rules
        self.problems: list[tuple[str, dict[str, str]]] = []
        self.seen: set[tuple[str, str, str]] = set()

    def _refuse(self, what: str, info: Any, column: str, rule: str, where: str) -> None:
        table = f"{info.source}.{info.name}"
        key = (table, column, rule)
        if key in self.seen:
            return
        self.seen.add(key)
        self.problems.append(
            (
                f"{what} (read in {where}) [{rule}]",
                {"source": info.source, "table": table, "column": column, "rule": rule},
            )
        )

    def _allowed_list(self) -> str:
        return f"allow list {list(self.policy.allow)}"

    def table(self, info: Any, where: str) -> None:
        logical, physical = _targets(info)
        everything = ([logical] if logical else []) + physical
        for rule in self.deny:
            for src, tab in everything:
                if rule.matches_table(src, tab):
                    self._refuse(
                        f"table {_shown(info, src, tab)} is denied",
                        info,
                        "",
                        f"deny {rule.pattern!r}",
                        where,
                    )
                    return
        if self.allow:

            def covered(src: str, tab: str) -> bool:
                return any(r.touches_table(src, tab) for r in self.allow)

            if not ((logical and covered(*logical)) or all(covered(*t) for t in physical)):
                self._refuse(
                    f"table {_shown(info, *physical[0])} is not in the allow list",
                    info,
                    "",
                    self._allowed_list(),
                    where,
                )

    def column(self, info: Any, column: str, where: str) -> None:
        logical, physical = _targets(info)
        everything = ([logical] if logical else []) + physical
        for rule in self.deny:
            for src, tab in everything:
                if rule.matches_column(src, tab, column):
                    self._refuse(
                        f"column {_shown(info, src, tab)}.{column} is denied",
                        info,
                        column,
                        f"deny {rule.pattern!r}",
                        where,
                    )
                    return
        if self.allow:

            def covered(src: str, tab: str) -> bool:
                return any(r.matches_column(src, tab, column) for r in self.allow)

            if not ((logical and covered(*logical)) or all(covered(*t) for t in physical)):
                self._refuse(
                    f"column {_shown(info, *physical[0])}.{column} is not in the allow list",
                    info,
                    column,
                    self._allowed_list(),
                    where,
                )


def _shown(info: Any, src: str, tab: str) -> str:
    if getattr(info, "logical", None) is not None and (src, tab) != (info.source, info.name):
        return f"{info.source}.{info.name} (shard {src}.{tab})"
    return f"{src}.{tab}"


def check_access(bound: Any, catalog: Any, policy: Policy | None) -> None:
    """Refuse a bound query that reads a source, table or column the policy denies (or that
    a non-empty allow list does not name). Every column reference of the bound tree is
    checked, in every scope: the expanded ``SELECT *``, WHERE, JOIN, GROUP BY, HAVING,
    ORDER BY, window functions, CTEs and subqueries (correlated ones included).

    Raises:
        AccessDeniedError: naming the column or table, where it is read, and the rule.
    """
    if policy is None or not (policy.allow or policy.deny):
        return
    from sqlglot.optimizer.scope import traverse_scope

    tree = bound.tree
    check = _AccessCheck(policy)
    tables = [t for t in tree.find_all(exp.Table) if t.meta.get("fedlab_table") is not None]
    for t in tables:
        check.table(t.meta["fedlab_table"], "FROM/JOIN")
    aliases = dict(getattr(bound, "aliases", {}) or {})
    done: set[int] = set()
    try:
        scopes = list(traverse_scope(tree))
    except Exception:  # an exotic tree: fall back to the query-wide aliases below
        scopes = []
    for scope in scopes:
        for col in scope.columns:
            src = scope.sources.get(col.table) if col.table else None
            if isinstance(src, exp.Table):
                info = src.meta.get("fedlab_table")
                if info is None:
                    continue
                done.add(id(col))
                _check_column(check, info, col, _clause(col, scope))
            elif src is not None:
                done.add(id(col))  # a CTE or derived table: its own scope reads the base columns
    for col in tree.find_all(exp.Column):
        if id(col) in done or not col.table:
            continue
        info = aliases.get(col.table)
        if info is not None:
            _check_column(check, info, col, _clause(col))
    if check.problems:
        first = check.problems[0][1]
        lines = [f"access denied: {check.problems[0][0]}"]
        lines += [f"  also: {text}" for text, _ in check.problems[1:6]]
        if len(check.problems) > 6:
            lines.append(f"  … and {len(check.problems) - 6} more")
        lines.append("Nothing was read. The rules: fed.policy() (allow=…, deny=…; docs/policy.md).")
        raise AccessDeniedError("\n".join(lines), **first)


def _check_column(check: _AccessCheck, info: Any, col: exp.Column, where: str) -> None:
    if isinstance(col.this, exp.Star):  # an unexpanded t.*: every column is read
        for c in info.columns:
            check.column(info, c.name, where)
        return
    check.column(info, col.name, where)
