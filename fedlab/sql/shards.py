"""Horizontal federation: sharded logical tables.

``fed.shard("orders", key="user_id", method="hash", shards={"s0": "lite.orders", ...})``
declares one table the user queries by one name, stored as several physical tables of
the same schema (the *shards*) on one or several sources. Which shard holds a row is
fixed by a rule on the *key* column:

``hash``
    :func:`shard_of` ``(key, n)``: integers (and integral decimals/floats, booleans)
    ``value mod n``; strings ``crc32(utf-8) mod n``; dates and timestamps ``crc32`` of
    their ISO text; NULL goes to shard 0. Shards are numbered in declaration order.
``range``
    ``bounds={shard: (lo, hi)}``: the half-open interval ``lo <= key < hi`` (None is
    unbounded). Ranges may not overlap or leave gaps between them. NULL keys live in the
    shard without a lower bound (else the lowest one).
``list``
    ``values={shard: [v, ...]}``: the listed key values, disjoint between shards; when
    omitted, each shard's value is its source's tag named like the key
    (``attach(..., tags={"region": "EU"})``). NULL keys live in the shard that lists None
    (else the first one).

:func:`fedlab.load.split_shards` / :func:`fedlab.load.write_shards` place rows by the
same rule, so data built with them is where the planner looks for it.

When a query is planned, :func:`expand_shards` replaces every reference to a logical
table: it prunes the shards the query's single-table predicates on the key exclude
(and, with ``tenant=``, the shards of other tenants), then rewrites the scope so that
the planner pushes one sub-query to each surviving shard — a partial aggregate, a
top-n, or a filtered projection — and finishes locally (see docs/sharding.md).
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import zlib
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types

from fedlab.catalog import (
    LOGICAL_SOURCE,
    Catalog,
    ColumnInfo,
    LogicalTable,
    Shard,
    TableInfo,
    type_family,
)
from fedlab.errors import FedlabError, ShardError, TenantError
from fedlab.sql import pushdown as rules

__all__ = [
    "METHODS",
    "declare_shard",
    "expand_shards",
    "prune",
    "shard_index",
    "shard_of",
]

METHODS = ("hash", "range", "list")

#: a BETWEEN / range on an integer hash key spanning at most this many values is
#: pruned value by value
_HASH_SPAN = 64


# ---------------------------------------------------------------------------- the rules
def shard_of(value: Any, n: int) -> int:
    """The hash rule: the shard number (0 .. n-1) of key ``value`` among ``n`` shards.

    >>> shard_of(7, 3), shard_of(-7, 3), shard_of(None, 3), shard_of(True, 2)
    (1, 2, 0, 1)
    >>> shard_of("US", 3) == __import__("zlib").crc32(b"US") % 3
    True
    """
    if n <= 0:
        raise ShardError(f"the hash rule needs at least one shard, got n={n}")
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value) % n
    if isinstance(value, int):
        return value % n
    if isinstance(value, float | Decimal):
        if value == value and value == int(value):  # integral, not NaN
            return int(value) % n
        raise ShardError(f"cannot hash the non-integral number {value!r}: use an integer key")
    if isinstance(value, str):
        return zlib.crc32(value.encode("utf-8")) % n
    if isinstance(value, bytes):
        return zlib.crc32(value) % n
    if isinstance(value, dt.date | dt.datetime):
        return zlib.crc32(value.isoformat().encode("utf-8")) % n
    raise ShardError(f"cannot hash a {type(value).__name__} key ({value!r})")


def _in_range(value: Any, lo: Any, hi: Any) -> bool:
    return (lo is None or lo <= value) and (hi is None or value < hi)


def shard_index(
    value: Any,
    method: str,
    n: int,
    *,
    ranges: list[tuple[Any, Any]] | None = None,
    lists: list[tuple[Any, ...]] | None = None,
) -> int | None:
    """The shard (position in declaration order) that holds a row with key ``value``.

    ``ranges`` (range rule) and ``lists`` (list rule) are given per shard, in order.
    None: no shard may hold it (outside every range, or not listed).
    """
    if method == "hash":
        return shard_of(value, n)
    if method == "range":
        ranges = ranges or []
        if value is None:
            open_low = [i for i, (lo, _) in enumerate(ranges) if lo is None]
            if open_low:
                return open_low[0]
            return min(range(n), key=lambda i: ranges[i][0])
        for i, (lo, hi) in enumerate(ranges):
            if _in_range(value, lo, hi):
                return i
        return None
    if method == "list":
        lists = lists or []
        for i, vals in enumerate(lists):
            if value in vals:
                return i
        return 0 if value is None else None
    raise ShardError(f"unknown shard method {method!r}; choose one of {', '.join(METHODS)}")


# ---------------------------------------------------------------------------- declaring
def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ShardError(f"unknown shard method {method!r}; choose one of {', '.join(METHODS)}")


def check_bounds(name: str, shard_names: list[str], bounds: Mapping[str, Any] | None) -> dict:
    """Validate range bounds: one ``(lo, hi)`` per shard, ``lo < hi``, no overlap, no gap."""
    if not bounds:
        raise ShardError(
            f"range-sharded table {name!r} needs bounds={{shard: (lo, hi), ...}} "
            "(half-open intervals lo <= key < hi; None is unbounded)"
        )
    extra = sorted(set(bounds) - set(shard_names))
    if extra:
        raise ShardError(f"{name!r}: bounds given for unknown shard(s) {extra}")
    out: dict[str, tuple[Any, Any]] = {}
    for s in shard_names:
        if s not in bounds:
            raise ShardError(f"{name!r}: shard {s!r} has no bounds (give (lo, hi))")
        b = bounds[s]
        if not isinstance(b, tuple | list) or len(b) != 2:
            raise ShardError(f"{name!r}: bounds of shard {s!r} must be a pair (lo, hi), got {b!r}")
        lo, hi = b
        try:
            if lo is not None and hi is not None and not lo < hi:
                raise ShardError(f"{name!r}: shard {s!r} has an empty range [{lo!r}, {hi!r})")
        except TypeError:
            raise ShardError(f"{name!r}: bounds of shard {s!r} are not comparable") from None
        out[s] = (lo, hi)

    def low(item: tuple[str, tuple[Any, Any]]) -> tuple[int, Any]:
        lo = item[1][0]
        return (0, 0) if lo is None else (1, lo)

    try:
        ordered = sorted(out.items(), key=low)
    except TypeError:
        raise ShardError(f"{name!r}: range bounds of different types") from None
    for (s1, (lo1, hi1)), (s2, (lo2, _)) in itertools.pairwise(ordered):
        if hi1 is None or lo2 is None or lo2 < hi1:
            raise ShardError(
                f"{name!r}: the ranges of shards {s1!r} [{lo1!r}, {hi1!r}) and {s2!r} "
                f"(from {lo2!r}) overlap"
            )
        if lo2 != hi1:
            raise ShardError(
                f"{name!r}: gap between shards {s1!r} (up to {hi1!r}) and {s2!r} "
                f"(from {lo2!r}): keys in between would belong to no shard"
            )
    return out


def check_values(
    name: str, shard_names: list[str], values: Mapping[str, Any]
) -> dict[str, tuple[Any, ...]]:
    """Validate list values: given for every shard, disjoint."""
    extra = sorted(set(values) - set(shard_names))
    if extra:
        raise ShardError(f"{name!r}: values given for unknown shard(s) {extra}")
    out: dict[str, tuple[Any, ...]] = {}
    owner: dict[Any, str] = {}
    for s in shard_names:
        if s not in values:
            raise ShardError(f"{name!r}: shard {s!r} has no list values")
        v = values[s]
        vals = tuple(v) if isinstance(v, list | tuple | set | frozenset) else (v,)
        if not vals:
            raise ShardError(f"{name!r}: shard {s!r} lists no values")
        for x in vals:
            if x in owner and owner[x] != s:
                raise ShardError(
                    f"{name!r}: value {x!r} is listed for shards {owner[x]!r} and {s!r} "
                    "(list values must be disjoint)"
                )
            owner[x] = s
        out[s] = vals
    return out


def _coerce_tag(value: str, family: str) -> Any:
    if family == "integer":
        try:
            return int(value)
        except ValueError:
            return value
    if family == "date":
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            return value
    return value


def _shard_target(fed: Any, name: str, shard: str, spec: str, table: str | None):
    """(source, table, attached-here?) for one shard spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise ShardError(f"{name!r}: shard {shard!r} must be a URL or 'source.table', got {spec!r}")
    if "://" in spec:
        source = re.sub(r"\W", "_", f"{name}_{shard}")
        fed.attach(source, spec)
        return source, table or name, True
    if spec in fed.catalog.sources:
        return spec, table or name, False
    try:
        ref = exp.to_table(spec, dialect=getattr(fed, "dialect", "postgres"))
    except Exception:
        raise ShardError(
            f"{name!r}: shard {shard!r}: {spec!r} is neither a URL nor 'source.table'"
        ) from None
    if not ref.db or ref.args.get("catalog"):
        raise ShardError(
            f"{name!r}: shard {shard!r}: {spec!r} is neither a URL, an attached source, "
            "nor 'source.table'"
        )
    return ref.db, ref.name, False


def _unify(name: str, shards: list[Shard]) -> list[ColumnInfo]:
    """Same column names and type families on every shard; the logical columns."""
    first = shards[0]
    cols = first.table.columns
    names = [c.name.lower() for c in cols]
    for s in shards[1:]:
        have = {c.name.lower(): c for c in s.table.columns}
        for c in cols:
            other = have.get(c.name.lower())
            if other is None:
                raise ShardError(
                    f"{name!r}: shard {s.describe()} has no column {c.name!r} "
                    f"(shard {first.describe()} has it)"
                )
            if type_family(other.type) != type_family(c.type):
                raise ShardError(
                    f"{name!r}: column {c.name!r} is {other.declared or '?'} "
                    f"({type_family(other.type)}) on shard {s.describe()} but "
                    f"{c.declared or '?'} ({type_family(c.type)}) on shard {first.describe()}"
                )
        for n, c in have.items():
            if n not in names:
                raise ShardError(
                    f"{name!r}: shard {s.describe()} has column {c.name!r} that shard "
                    f"{first.describe()} lacks (shards must have the same columns)"
                )
    out = []
    for c in cols:
        types = {s.table.column(c.name).type.sql(dialect="postgres") for s in shards}  # type: ignore[union-attr]
        t = c.type
        if len(types) > 1:
            family = type_family(c.type)
            t = exp.DataType.build(
                {"integer": "BIGINT", "number": "DOUBLE", "text": "TEXT"}.get(
                    family, c.type.sql(dialect="postgres")
                )
            )
        nullable = any(s.table.column(c.name).nullable for s in shards)  # type: ignore[union-attr]
        out.append(ColumnInfo(c.name, c.declared, t, nullable))
    return out


def declare_shard(
    fed: Any,
    name: str,
    *,
    key: str,
    method: str = "hash",
    shards: Mapping[str, str],
    bounds: Mapping[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
    table: str | None = None,
) -> LogicalTable:
    """Register the sharded logical table ``name`` on federation ``fed``.

    Args:
        name: the table name queries use (also ``logical.<name>``).
        key: the shard key column.
        method: ``hash``, ``range`` or ``list`` (see the module docstring).
        shards: ``{shard_name: spec}``; a spec is ``"source.table"`` of an attached
            source, an attached source's name (its table ``table`` or ``name``), or a
            database URL, attached here as source ``<name>_<shard_name>``.
        bounds: range rule: ``{shard: (lo, hi)}``, half-open, no overlap, no gap.
        values: list rule: ``{shard: [values]}``, disjoint; default: each shard source's
            tag named ``key``.
        table: the physical table name on URL / source-name shards (default ``name``).

    Raises:
        ShardError: a shard's schema differs (names the shard and the column), the key
            is missing, bounds overlap or leave gaps, list values repeat...
    """
    _check_method(method)
    catalog: Catalog = fed.catalog
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ShardError(f"logical table name {name!r} is not a plain identifier")
    if name in catalog.logical:
        raise ShardError(f"a logical table named {name!r} is already declared")
    if not shards:
        raise ShardError(f"{name!r}: give at least one shard (shards={{name: url_or_table}})")
    attached: list[str] = []
    try:
        members: list[Shard] = []
        for i, (sname, spec) in enumerate(shards.items()):
            source, tname, new = _shard_target(fed, name, sname, spec, table)
            if new:
                attached.append(source)
            try:
                info = catalog.resolve(tname, source)
            except FedlabError as e:
                raise ShardError(f"{name!r}: shard {sname!r}: {e}") from None
            if any(m.table is info for m in members):
                raise ShardError(f"{name!r}: shard {sname!r} repeats table {source}.{tname}")
            members.append(Shard(sname, info, i))
        columns = _unify(name, members)
        key_col = next((c for c in columns if c.name.lower() == key.lower()), None)
        if key_col is None:
            raise ShardError(
                f"{name!r}: shard key {key!r} is not a column of the shards "
                f"(columns: {', '.join(c.name for c in columns)})"
            )
        family = type_family(key_col.type)
        names = [m.name for m in members]
        if method == "range":
            for m in members:
                m.lo, m.hi = check_bounds(name, names, bounds)[m.name]
        elif method == "list":
            if values is None:
                values = {}
                for m in members:
                    tags = catalog.sources[m.source].tags
                    if key_col.name not in tags and key not in tags:
                        raise ShardError(
                            f"{name!r}: list shard {m.describe()} has no values: give "
                            f"values={{...}} or tag its source with {key!r} "
                            f"(attach(..., tags={{{key!r}: ...}}))"
                        )
                    values[m.name] = _coerce_tag(tags.get(key, tags.get(key_col.name)), family)
            for m in members:
                m.values = check_values(name, names, values)[m.name]
        elif bounds or values:
            raise ShardError(f"{name!r}: bounds/values are for range/list shards, not hash")
        info = TableInfo(
            LOGICAL_SOURCE,
            name,
            columns,
            primary_key=list(members[0].table.primary_key),
            row_estimate=sum(m.table.row_estimate or 0 for m in members),
        )
        lt = LogicalTable(name, key_col.name, method, members, info)
        info.logical = lt
    except BaseException:
        for s in attached:
            catalog.remove(s)
        raise
    catalog.add_logical(lt)
    return lt


# ---------------------------------------------------------------------------- pruning
class _Unknown:
    pass


_NO = _Unknown()


def _literal_value(node: exp.Expression, family: str) -> Any:
    """The Python value of a constant compared with a key of ``family`` (or _NO)."""
    node = node.unnest() if isinstance(node, exp.Paren) else node
    if isinstance(node, exp.Neg):
        v = _literal_value(node.this, family)
        return _NO if v is _NO or not isinstance(v, int | Decimal) else -v
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal):
        to = node.to
        if to.this == exp.DataType.Type.DATE and family == "date":
            try:
                return dt.date.fromisoformat(node.this.name)
            except ValueError:
                return _NO
        if to.this in (exp.DataType.Type.TIMESTAMP, exp.DataType.Type.DATETIME) and (
            family == "timestamp"
        ):
            try:
                return dt.datetime.fromisoformat(node.this.name)
            except ValueError:
                return _NO
        return _NO
    if isinstance(node, exp.Boolean):
        return node.this if family == "boolean" else _NO
    if not isinstance(node, exp.Literal):
        return _NO
    if node.is_string:
        text = node.name
        if family == "text":
            return text
        if family == "date":
            try:
                return dt.date.fromisoformat(text)
            except ValueError:
                return _NO
        if family == "timestamp":
            try:
                return dt.datetime.fromisoformat(text)
            except ValueError:
                return _NO
        return _NO
    try:
        num = Decimal(node.name)
    except Exception:
        return _NO
    if family == "integer":
        return int(num) if num == num.to_integral_value() else _NO
    if family == "number":
        return num
    return _NO


def _is_key(node: exp.Expression, alias: str, key: str) -> bool:
    node = node.unnest() if isinstance(node, exp.Paren) else node
    return isinstance(node, exp.Column) and node.table == alias and node.name.lower() == key.lower()


class _Pruner:
    def __init__(self, lt: LogicalTable, alias: str) -> None:
        self.lt = lt
        self.alias = alias
        self.family = type_family(lt.info.column(lt.key).type)  # type: ignore[union-attr]
        self.all = set(range(len(lt.shards)))

    def point(self, v: Any) -> set[int] | None:
        lt = self.lt
        try:
            if lt.method == "hash":
                return {shard_of(v, len(lt.shards))}
            if lt.method == "range":
                return {i for i, s in enumerate(lt.shards) if _in_range(v, s.lo, s.hi)}
            return {i for i, s in enumerate(lt.shards) if v in s.values}
        except (TypeError, ShardError):
            return None

    def interval(self, lo: Any, lo_incl: bool, hi: Any, hi_incl: bool) -> set[int] | None:
        """Shards that may hold keys in the interval (None bounds: unbounded)."""
        lt = self.lt
        if self.family == "integer":  # k > 29 is k >= 30: exact bounds on integers
            if isinstance(lo, int) and not lo_incl:
                lo, lo_incl = lo + 1, True
            if isinstance(hi, int) and not hi_incl:
                hi, hi_incl = hi - 1, True
        try:
            if lt.method == "hash":
                if self.family != "integer" or lo is None or hi is None:
                    return None
                first = lo if lo_incl else lo + 1
                last = hi if hi_incl else hi - 1
                if last - first > _HASH_SPAN:
                    return None
                out: set[int] = set()
                for v in range(first, last + 1):
                    out |= self.point(v) or set()
                return out
            if self.family not in ("integer", "number", "date", "timestamp"):
                return None  # text order depends on the collation: no pruning on ranges
            if lt.method == "range":
                return {
                    i
                    for i, s in enumerate(lt.shards)
                    if (s.hi is None or lo is None or lo < s.hi)
                    and (s.lo is None or hi is None or (hi >= s.lo if hi_incl else hi > s.lo))
                }
            return {
                i
                for i, s in enumerate(lt.shards)
                if any(
                    x is not None
                    and (lo is None or (x >= lo if lo_incl else x > lo))
                    and (hi is None or (x <= hi if hi_incl else x < hi))
                    for x in s.values
                )
            }
        except TypeError:
            return None

    def one_sided(self, e: exp.Expression) -> tuple[Any, bool, bool] | None:
        """``k > v`` & co as (v, inclusive, is_lower_bound); None if not of that form."""
        if not isinstance(e, exp.GT | exp.GTE | exp.LT | exp.LTE):
            return None
        left, right = e.this, e.expression
        op = type(e)
        key = lambda n: _is_key(n, self.alias, self.lt.key)  # noqa: E731
        if key(right) and not key(left):  # 5 < k  ->  k > 5
            left, right = right, left
            op = {exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE}[op]
        if not key(left):
            return None
        val = _literal_value(right, self.family)
        if val is _NO:
            return None
        return val, op in (exp.GTE, exp.LTE), op in (exp.GT, exp.GTE)

    def combined(self, conjuncts: list[exp.Expression]) -> set[int] | None:
        """The shards of the interval that one-sided comparisons ANDed together leave
        (``k >= 10 AND k <= 11``, BETWEEN as simplified)."""
        lo = hi = None
        lo_incl = hi_incl = False
        try:
            for c in conjuncts:
                got = self.one_sided(c.unnest() if isinstance(c, exp.Paren) else c)
                if got is None:
                    continue
                v, incl, lower = got
                if lower and (lo is None or v > lo or (v == lo and not incl)):
                    lo, lo_incl = v, incl
                elif not lower and (hi is None or v < hi or (v == hi and not incl)):
                    hi, hi_incl = v, incl
        except TypeError:
            return None
        if lo is None and hi is None:
            return None
        return self.interval(lo, lo_incl, hi, hi_incl)

    def shards_for(self, e: exp.Expression) -> set[int] | None:
        """Shards that can hold rows satisfying ``e`` (None: no restriction known)."""
        if isinstance(e, exp.Paren):
            return self.shards_for(e.this)
        if isinstance(e, exp.And):
            parts = rules.conjuncts(e)
            out = self.combined(parts)
            for part in parts:
                got = self.shards_for(part)
                if got is not None:
                    out = got if out is None else out & got
            return out
        if isinstance(e, exp.Or):
            left, right = self.shards_for(e.this), self.shards_for(e.expression)
            return None if left is None or right is None else left | right
        key = lambda n: _is_key(n, self.alias, self.lt.key)  # noqa: E731
        value = lambda n: _literal_value(n, self.family)  # noqa: E731
        if isinstance(e, exp.EQ):
            for k, v in ((e.this, e.expression), (e.expression, e.this)):
                if key(k) and (val := value(v)) is not _NO:
                    return self.point(val)
            return None
        if isinstance(e, exp.In):
            if not key(e.this) or e.args.get("query") or e.args.get("unnest"):
                return None
            if e.args.get("field") or not e.expressions:
                return None
            out: set[int] = set()
            for v in e.expressions:
                val = value(v)
                got = None if val is _NO else self.point(val)
                if got is None:
                    return None
                out |= got
            return out
        if isinstance(e, exp.Between):
            if not key(e.this):
                return None
            lo, hi = value(e.args["low"]), value(e.args["high"])
            if lo is _NO or hi is _NO:
                return None
            return self.interval(lo, True, hi, True)
        if isinstance(e, exp.GT | exp.GTE | exp.LT | exp.LTE):
            left, right = e.this, e.expression
            op = type(e)
            if key(right) and not key(left):  # 5 < k  ->  k > 5
                left, right = right, left
                op = {exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE}[op]
            if not key(left):
                return None
            val = value(right)
            if val is _NO:
                return None
            if op in (exp.GT, exp.GTE):
                return self.interval(val, op is exp.GTE, None, False)
            return self.interval(None, False, val, op is exp.LTE)
        return None


def prune(
    lt: LogicalTable, alias: str, predicates: Iterable[exp.Expression]
) -> tuple[list[Shard], list[str]]:
    """The shards of ``lt`` that can hold rows satisfying every predicate (each reading
    only ``alias``), and the SQL of the predicates that pruned."""
    p = _Pruner(lt, alias)
    allowed = set(p.all)
    used = []
    predicates = list(predicates)
    both = p.combined(predicates)
    if both is not None and both != p.all:
        allowed &= both
        used += [c.sql(dialect="postgres") for c in predicates if p.one_sided(c) is not None]
    for c in predicates:
        got = p.shards_for(c)
        if got is None:
            continue
        if got != p.all:
            used.append(c.sql(dialect="postgres"))
        allowed &= got
    return [s for i, s in enumerate(lt.shards) if i in allowed], used


# ---------------------------------------------------------------------------- rewriting
def _usable(c: exp.Expression) -> bool:
    return not rules.has_subquery(c) and not rules.has_aggregate_or_window(c)


def _scope_filters(table: exp.Table, alias: str) -> tuple[exp.Select | None, list, list, list]:
    """(scope, filters, where, on): conjuncts of the table's SELECT that read only this
    table and restrict its rows; ``where`` are the WHERE conjuncts among them and ``on``
    those of the ON clause of the table's own (outer) join, which a filtered derived
    table makes redundant."""
    parent = table.parent
    select = parent.parent if isinstance(parent, exp.From | exp.Join) else None
    if not isinstance(select, exp.Select):
        return None, [], [], []
    nullable = rules.null_supplying(select)
    filters: list[exp.Expression] = []
    where: list[exp.Expression] = []
    on: list[exp.Expression] = []

    def mine(c: exp.Expression) -> bool:
        return rules.aliases_of(c) == {alias} and _usable(c)

    if alias not in nullable:
        where = [c for c in rules.conjuncts(select.args.get("where")) if mine(c)]
        filters += where
    joins = select.args.get("joins") or []
    for j in joins:
        side = (j.side or "").upper()
        if (j.kind or "").upper() in ("CROSS", "SEMI", "ANTI"):
            continue
        own = j.this is table or (
            # the preserved-side's partner of a single RIGHT JOIN: the FROM item
            side == "RIGHT" and len(joins) == 1 and isinstance(parent, exp.From)
        )
        conj = [c for c in rules.conjuncts(j.args.get("on")) if mine(c)]
        if own and side in ("", "LEFT", "RIGHT"):
            filters += conj
            if len(conj) < len(rules.conjuncts(j.args.get("on"))):
                on += conj  # the join keeps its other conditions
        elif side == "" and alias not in nullable:
            filters += conj
    return select, filters, where, on


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _branch_table(shard: Shard, balias: str) -> exp.Table:
    t = exp.Table(
        this=exp.to_identifier(shard.table.name),
        db=exp.to_identifier(shard.source),
        alias=exp.TableAlias(this=exp.to_identifier(balias)),
    )
    t.meta["fedlab_table"] = shard.table
    t.meta["fedlab_alias"] = balias
    return t


def _requalify(e: exp.Expression, alias: str, balias: str) -> exp.Expression:
    e = e.copy()
    cols = [e] if isinstance(e, exp.Column) else list(e.find_all(exp.Column))
    for c in cols:
        if c.table == alias:
            c.set("table", exp.to_identifier(balias))
    return e


def _union(branches: list[exp.Query], *, parens: bool = False) -> exp.Query:
    wrap = (lambda b: exp.Subquery(this=b)) if parens else (lambda b: b)
    out: exp.Query = wrap(branches[0])
    for b in branches[1:]:
        out = exp.Union(this=out, expression=wrap(b), distinct=False)
    return out


def _derived(query: exp.Query, alias: str) -> exp.Subquery:
    return exp.Subquery(this=query, alias=exp.TableAlias(this=exp.to_identifier(alias)))


def _false() -> exp.Expression:
    return exp.EQ(this=exp.Literal.number(1), expression=exp.Literal.number(0))


def _remove_conjunct(c: exp.Expression) -> None:
    parent = c.parent
    while isinstance(parent, exp.Paren) and parent.parent is not None:
        c, parent = parent, parent.parent
    if isinstance(parent, exp.And):
        other = parent.expression if parent.this is c else parent.this
        parent.replace(other)
    elif isinstance(parent, exp.Where):
        parent.pop()
    else:
        c.replace(exp.true())


class _Expander:
    def __init__(
        self, tree: exp.Query, catalog: Catalog, naive: bool, tenant: str | None, notes: list
    ) -> None:
        self.tree = tree
        self.catalog = catalog
        self.naive = naive
        self.tenant = tenant
        self.notes = notes

    def balias(self, alias: str, shard: Shard) -> str:
        # named by the physical table (as the planner names table reads), so that equal
        # reads of one shard under different aliases are one fragment
        return shard.table.name

    # -- one reference
    def expand(self, table: exp.Table) -> None:
        lt: LogicalTable = table.meta["fedlab_logical"]
        alias = table.alias_or_name
        select, filters, where, on = _scope_filters(table, alias)
        n = len(lt.shards)
        head = f"sharded table {lt.name} AS {alias} ({lt.method} on {lt.key})"
        if self.naive:
            survivors, used = list(lt.shards), []
        else:
            survivors, used = prune(lt, alias, filters)
        pruned = [s.name for s in lt.shards if s not in survivors]
        if self.tenant is not None:
            mine = [
                s
                for s in survivors
                if self.catalog.sources[s.source].tags.get("tenant") == self.tenant
            ]
            other = [s.name for s in survivors if s not in mine]
            if other:
                self.notes.append(
                    f"{head}: tenant {self.tenant!r}: skipped shard(s) {', '.join(other)} "
                    "of other tenants"
                )
            survivors = mine
        read = ", ".join(s.name for s in survivors) or "none"
        if self.naive:
            self.notes.append(f"{head}: naive: all {n} shards read whole ({read})")
        elif pruned:
            self.notes.append(
                f"{head}: {len(survivors)} of {n} shards read ({read}); pruned "
                f"{', '.join(pruned)} by {' AND '.join(used)}"
            )
        else:
            self.notes.append(f"{head}: {len(survivors)} of {n} shards read ({read})")
        if self.naive:  # ON filters still move into the union (Polars' ON needs that)
            self.generic(table, lt, alias, survivors, on, on, whole=True)
            return
        if len(survivors) == 1:
            shard = survivors[0]
            new = _branch_table(shard, alias)
            new.meta["fedlab_alias"] = table.meta.get("fedlab_alias") or alias
            table.replace(new)
            return
        if survivors and select is not None:
            if self.partial_aggregate(select, table, lt, alias, survivors):
                return
            if self.top_n(select, table, lt, alias, survivors):
                return
        self.generic(table, lt, alias, survivors, filters, where + on)

    # -- otherwise: a derived table, one filtered projection per shard
    def generic(
        self,
        table: exp.Table,
        lt: LogicalTable,
        alias: str,
        survivors: list[Shard],
        filters: list[exp.Expression],
        removable: list[exp.Expression],
        *,
        whole: bool = False,
    ) -> None:
        for c in removable:  # before counting the needed columns
            _remove_conjunct(c)
        if whole:
            names = [c.name for c in lt.info.columns]
        else:
            needed = {n.lower() for n in rules.needed_columns(self.tree, alias)}
            names = [c.name for c in lt.info.columns if c.name.lower() in needed]
        extra = []
        if not survivors:
            survivors = lt.shards[:1]
            extra = [_false()]
        branches = []
        for s in survivors:
            b = self.balias(alias, s)
            cols = [exp.alias_(exp.column(n, table=b), n, quoted=True) for n in names] or [
                exp.alias_(exp.Literal.number(1), "__row", quoted=True)
            ]
            q = exp.select(*cols).from_(_branch_table(s, b))
            conds = [_requalify(f, alias, b) for f in filters] + [e.copy() for e in extra]
            if conds:
                q = q.where(exp.and_(*conds))
            branches.append(q)
        table.replace(_derived(_union(branches), alias))

    # -- GROUP BY / aggregates over one sharded table: partial aggregates per shard
    def partial_aggregate(
        self,
        select: exp.Select,
        table: exp.Table,
        lt: LogicalTable,
        alias: str,
        survivors: list[Shard],
    ) -> bool:
        if select.args.get("joins") or select.args["from_"].this is not table:
            return False
        if any(select.args.get(k) for k in ("qualify", "windows", "with_", "laterals", "pivots")):
            return False
        distinct = select.args.get("distinct")
        if distinct is not None and distinct.args.get("on"):
            return False
        work = select.copy()  # rewritten here; copied back only when the rewrite applies
        group = work.args.get("group")
        if group is not None and any(
            group.args.get(k) for k in ("rollup", "cube", "grouping_sets", "totals")
        ):
            return False
        keys = list(group.expressions) if group is not None else []
        order = work.args.get("order")
        parts = list(work.expressions)
        if work.args.get("having") is not None:
            parts.append(work.args["having"])
        if order is not None:
            parts.extend(order.expressions)
        aggs = [a for p in parts for a in p.find_all(exp.AggFunc)]
        if not aggs and not keys:
            return False
        if any(p.find(exp.Query, exp.Window) for p in [*parts, *keys]):
            return False
        where = rules.conjuncts(select.args.get("where"))
        if not all(rules.aliases_of(c) <= {alias} and _usable(c) for c in where):
            return False
        if any(rules.aliases_of(k) - {alias} or k.find(exp.AggFunc) for k in keys):
            return False

        inner: list[tuple[exp.Expression, str]] = [(k, f"_g{i}") for i, k in enumerate(keys, 1)]
        distinct_args: list[tuple[exp.Expression, str]] = []
        finish: dict[int, exp.Expression] = {}

        dalias = f"{alias}__partial"  # not a table name: the shards' reads keep theirs

        def col(name: str) -> exp.Column:
            return exp.column(name, table=dalias)

        def partial(e: exp.Expression) -> str:
            name = f"_p{len(inner) + 1}"
            inner.append((e, name))
            return name

        done: list[tuple[exp.Expression, exp.Expression]] = []  # equal aggregates: one partial
        for a in aggs:
            again = next((f for other, f in done if other == a), None)
            if again is not None:
                finish[id(a)] = again.copy()
                continue
            if isinstance(a.parent, exp.Filter | exp.WithinGroup):
                return False
            if any(x is not a for x in a.find_all(exp.AggFunc)):
                return False  # nested aggregates
            if rules.aliases_of(a) - {alias}:
                return False  # correlated
            if type(a) not in (exp.Count, exp.Sum, exp.Min, exp.Max, exp.Avg):
                return False
            arg = a.this
            if isinstance(arg, exp.Distinct):
                if len(arg.expressions) != 1:
                    return False
                x = arg.expressions[0]
                name = next((nm for e, nm in distinct_args if e == x), None)
                if name is None:
                    name = f"_d{len(distinct_args) + 1}"
                    distinct_args.append((x, name))
                finish[id(a)] = type(a)(this=exp.Distinct(expressions=[col(name)]))
            elif type(a) is exp.Count:
                # COUNT over no rows is 0, and so is the finished count
                finish[id(a)] = exp.Coalesce(
                    this=exp.Sum(this=col(partial(a.copy()))),
                    expressions=[exp.Literal.number(0)],
                )
            elif type(a) is exp.Avg:
                total = partial(exp.Sum(this=arg.copy()))
                count = partial(exp.Count(this=arg.copy()))
                finish[id(a)] = exp.Div(
                    this=exp.Cast(this=exp.Sum(this=col(total)), to=exp.DataType.build("DOUBLE")),
                    expression=exp.Nullif(
                        this=exp.Sum(this=col(count)), expression=exp.Literal.number(0)
                    ),
                )
            else:  # SUM, MIN, MAX: the same aggregate over the partials (NULL over no rows)
                finish[id(a)] = type(a)(this=col(partial(a.copy())))
            done.append((a, finish[id(a)]))
        inner += distinct_args
        if not inner:
            return False

        def rewrite(node: exp.Expression) -> exp.Expression:
            if id(node) in finish:
                return finish[id(node)]
            if not isinstance(node, exp.Literal):
                for i, k in enumerate(keys, 1):
                    if node == k:
                        return col(f"_g{i}")
            return node

        new_parts: dict[str, Any] = {}
        for key_name in ("expressions", "having", "order"):
            value = work.args.get(key_name)
            if isinstance(value, list):
                new_parts[key_name] = [v.transform(rewrite, copy=False) for v in value]
            elif value is not None:
                new_parts[key_name] = value.transform(rewrite, copy=False)
        for v in new_parts.values():
            for node in v if isinstance(v, list) else [v]:
                if any(c.table == alias for c in node.find_all(exp.Column)):
                    return False  # a column that is neither a key nor aggregated

        grouping = keys + [x for x, _ in distinct_args]
        branches = []
        for s in survivors:
            b = self.balias(alias, s)
            q = exp.select(
                *[exp.alias_(_requalify(e, alias, b), nm, quoted=True) for e, nm in inner]
            ).from_(_branch_table(s, b))
            if where:
                q = q.where(exp.and_(*[_requalify(c, alias, b) for c in where]))
            if grouping:
                q = q.group_by(*[_requalify(g, alias, b) for g in grouping])
            branches.append(q)
        for key_name, v in new_parts.items():
            select.set(key_name, v)
        select.set("where", None)
        select.set(
            "group",
            exp.Group(expressions=[col(f"_g{i}") for i in range(1, len(keys) + 1)])
            if keys
            else None,
        )
        table.replace(_derived(_union(branches), dalias))
        self.notes.append(
            f"{lt.name} AS {alias}: aggregated in each shard ({len(survivors)} partial "
            "aggregates), finished locally"
        )
        return True

    # -- ORDER BY ... LIMIT over one sharded table: top-(n+m) per shard, merged locally
    def top_n(
        self,
        select: exp.Select,
        table: exp.Table,
        lt: LogicalTable,
        alias: str,
        survivors: list[Shard],
    ) -> bool:
        order, limit = select.args.get("order"), select.args.get("limit")
        if order is None or limit is None:
            return False
        if select.args.get("joins") or select.args["from_"].this is not table:
            return False
        if any(select.args.get(k) for k in ("group", "having", "qualify", "distinct", "with_")):
            return False
        parts = [*select.expressions, *order.expressions]
        if any(p.find(exp.AggFunc, exp.Window, exp.Query) for p in parts):
            return False
        n = _int_literal(limit.expression)
        offset = select.args.get("offset")
        m = 0 if offset is None else _int_literal(offset.expression)
        if n is None or m is None:
            return False
        where = rules.conjuncts(select.args.get("where"))
        if not all(rules.aliases_of(c) <= {alias} and _usable(c) for c in where):
            return False
        outputs = {s.alias: s.this for s in select.expressions if isinstance(s, exp.Alias)}
        keys = []
        for o in order.expressions:
            k = o.this
            if isinstance(k, exp.Column) and not k.table:
                if k.name not in outputs:
                    return False
                k = outputs[k.name]
            if isinstance(k, exp.Literal) or rules.aliases_of(k) - {alias}:
                return False
            if not list(k.find_all(exp.Column)) and not isinstance(k, exp.Column):
                return False
            ordered = o.copy()
            ordered.set("this", k.copy())
            keys.append(ordered)
        needed = {c.lower() for c in rules.needed_columns(self.tree, alias)}
        names = [c.name for c in lt.info.columns if c.name.lower() in needed]
        branches = []
        for s in survivors:
            b = self.balias(alias, s)
            q = exp.select(
                *[exp.alias_(exp.column(nm, table=b), nm, quoted=True) for nm in names]
                or [exp.alias_(exp.Literal.number(1), "__row", quoted=True)]
            ).from_(_branch_table(s, b))
            if where:
                q = q.where(exp.and_(*[_requalify(c, alias, b) for c in where]))
            q = q.order_by(*[_requalify(k, alias, b) for k in keys]).limit(n + m)
            branches.append(q)
        select.set("where", None)
        table.replace(_derived(_union(branches, parens=True), alias))
        self.notes.append(
            f"{lt.name} AS {alias}: top {n + m} rows per shard "
            f"(ORDER BY … LIMIT {n}{f' OFFSET {m}' if m else ''}), merged locally"
        )
        return True


def _int_literal(node: exp.Expression | None) -> int | None:
    if isinstance(node, exp.Literal) and node.is_int:
        return int(node.name)
    return None


def _depth(node: exp.Expression) -> int:
    d = 0
    while node.parent is not None:
        node, d = node.parent, d + 1
    return d


def _check_tenant(tree: exp.Expression, catalog: Catalog, tenant: str) -> None:
    for t in rules.base_tables(tree):
        if t.meta.get("fedlab_logical") is not None:
            continue
        info: TableInfo = t.meta["fedlab_table"]
        owner = catalog.sources[info.source].tags.get("tenant")
        if owner is not None and owner != tenant:
            raise TenantError(
                f"tenant {tenant!r} may not read {info.source}.{info.name}: source "
                f"{info.source!r} belongs to tenant {owner!r}"
            )


def expand_shards(
    tree: exp.Query,
    catalog: Catalog,
    *,
    naive: bool,
    tenant: str | None,
    notes: list[str],
) -> exp.Query:
    """Replace every sharded logical table of ``tree`` by its (pruned) shard reads.

    ``tree`` is a bound tree (a copy: it is modified). ``naive``: every shard is read
    whole, nothing is pruned. ``tenant``: only shards whose source is tagged with that
    tenant are read, and a plain table on another tenant's source is refused
    (:class:`~fedlab.errors.TenantError`). One note per reference says which shards
    were read and why the others were not.
    """
    if tenant is not None:
        _check_tenant(tree, catalog, tenant)
    refs = [t for t in tree.find_all(exp.Table) if t.meta.get("fedlab_logical") is not None]
    if not refs:
        return tree
    expander = _Expander(tree, catalog, naive, tenant, notes)
    for table in sorted(refs, key=_depth, reverse=True):  # innermost scopes first
        expander.expand(table)
    from fedlab.sql.bind import catalog_schema

    annotate_types(tree, schema=catalog_schema(catalog), dialect="postgres")
    return tree
