"""Partitioned reads: a large single-table fragment read as several key ranges at once.

:func:`assign_partitions` runs after planning (every strategy but ``naive``). It marks a
fragment with ``Fragment.partition = (column, low, high, partitions)`` when all hold:

* it reads one table (role ``table``, or a whole query that is a plain
  ``SELECT cols FROM t``: no WHERE, GROUP BY, DISTINCT, ORDER BY, LIMIT, join or
  aggregate, checked on its SQL) from a source whose kind has a threshold in
  :data:`PARTITION_MIN_ROWS` (PostgreSQL by default; MariaDB is off: it did not pay here);
* no filter was pushed into it (the catalog's row estimate is then the fragment's size;
  with a filter it is only an upper bound, and each range would scan again);
* the table has a one-column integer primary key whose min/max the catalog read at
  attach (``TableInfo.key_ranges``), and that column is one of the fragment's outputs;
* the table's row estimate exceeds the threshold, and at least two partitions fit
  (``max_workers``, :data:`MAX_PARTITIONS` and the CPUs allow it).

The fetch seam (:func:`fedlab.execute.fetch.partition_queries`) turns the mark into one
range query per partition, read concurrently by connectorx. The outer ranges are open
(``key < b1`` … ``key >= b(n-1)``), so rows inserted after attach, outside the cached
min/max, are still read. Why the threshold and why MariaDB is off: ``docs/caching.md``.

>>> from sqlglot import exp
>>> from fedlab.catalog import Catalog, ColumnInfo, TableInfo
>>> from fedlab.source import Source
>>> from fedlab.sql.plan import Fragment, Plan
>>> cat = Catalog()
>>> big = TableInfo("crm", "events", [ColumnInfo("id", "bigint", exp.DataType.build("BIGINT"))],
...                 primary_key=["id"], row_estimate=1_000_000, key_ranges={"id": (1, 1_000_000)})
>>> cat.add_static(Source.from_url("crm", "postgresql://u@h:5432/crm"), [big])
>>> f = Fragment("f1", "crm", "postgresql", 'SELECT "events"."id" AS "id" FROM "events" AS "events"',
...              [("id", exp.DataType.build("BIGINT"))], tables=["crm.events"],
...              estimated_rows=1_000_000)
>>> assign_partitions(Plan("", "pushdown", [f], None, None), cat, max_workers=2)
>>> f.partition
('id', 1, 1000000, 2)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import sqlglot
from sqlglot import exp

from fedlab.catalog import Catalog, TableInfo
from fedlab.sql.plan import Fragment, Plan

__all__ = ["MAX_PARTITIONS", "PARTITION_MIN_ROWS", "assign_partitions", "partition_for"]

#: Smallest table (catalog row estimate, exclusive) read in partitions, per source kind;
#: None: never. Measured on a 2-CPU machine (docs/caching.md): PostgreSQL gains ~20 % from
#: 250k rows on (2 ranges); MariaDB gained nothing up to 1M rows, so it is off.
PARTITION_MIN_ROWS: dict[str, int | None] = {"postgresql": 250_000, "mysql": None}

#: Most ranges one fragment is split into (further capped by CPUs and ``max_workers``).
MAX_PARTITIONS = 4

_DIALECT = {"postgresql": "postgres", "mysql": "mysql"}

#: a single-table read (``table``), or a whole (sub)query that turned out to be one (a plain
#: ``SELECT cols FROM t``; checked on its SQL)
_ROLES = ("table", "query", "subquery")


def _table_info(frag: Fragment, catalog: Catalog) -> TableInfo | None:
    if len(frag.tables) != 1:
        return None
    source, _, table = frag.tables[0].partition(".")
    return catalog.tables.get(source, {}).get(table)


def _plain_read(frag: Fragment) -> bool:
    """True when the SQL is a plain ``SELECT cols FROM t``: ranges of it add up to it."""
    try:
        tree = sqlglot.parse_one(frag.sql, dialect=_DIALECT.get(frag.kind))
    except sqlglot.errors.ParseError:
        return False
    if not isinstance(tree, exp.Select) or tree.args.get("where") is not None:
        return False
    blockers = (exp.Limit, exp.Offset, exp.Order, exp.Group, exp.Distinct, exp.Join, exp.Having)
    return next(tree.find_all(*blockers), None) is None and not tree.find(exp.AggFunc)


def partition_for(
    frag: Fragment,
    catalog: Catalog,
    *,
    max_workers: int = 8,
    min_rows: Mapping[str, int | None] | None = None,
    cpus: int | None = None,
) -> tuple[str, int, int, int] | None:
    """The ``(column, low, high, partitions)`` a fragment would be read with, or None.

    Args:
        frag: a planned fragment.
        catalog: where its table's key, key range and row estimate are.
        max_workers: the federation's parallelism (an upper bound on partitions).
        min_rows: thresholds per source kind (default :data:`PARTITION_MIN_ROWS`).
        cpus: CPUs to count on (default ``os.cpu_count()``).
    """
    thresholds = PARTITION_MIN_ROWS if min_rows is None else min_rows
    threshold = thresholds.get(frag.kind)
    if threshold is None or frag.role not in _ROLES or frag.partition is not None:
        return None
    if any(p.startswith("filter") for p in frag.pushed):
        return None
    rows = frag.estimated_rows
    if rows is None or rows <= threshold:
        return None
    info = _table_info(frag, catalog)
    if info is None or len(info.primary_key) != 1:
        return None
    key = info.primary_key[0]
    col = info.column(key)
    bounds: Any = info.key_ranges.get(key)
    if col is None or not col.is_integer or not bounds or None in bounds:
        return None
    if key not in frag.column_names:
        return None
    lo, hi = int(bounds[0]), int(bounds[1])
    n = min(MAX_PARTITIONS, max_workers, cpus or os.cpu_count() or 1, hi - lo + 1)
    if n < 2 or not _plain_read(frag):
        return None
    return (key, lo, hi, n)


def assign_partitions(
    plan: Plan,
    catalog: Catalog,
    *,
    max_workers: int = 8,
    min_rows: Mapping[str, int | None] | None = None,
) -> None:
    """Mark large single-table fragments for concurrent range reads (``Fragment.partition``).

    Each marked fragment gets a ``pushed`` entry, so EXPLAIN shows the ranges.
    """
    for frag in plan.fragments:
        if frag.dynamic:  # keys shipped in at run time: already a restricted read
            continue
        part = partition_for(frag, catalog, max_workers=max_workers, min_rows=min_rows)
        if part is None:
            continue
        key, lo, hi, n = part
        frag.partition = part
        frag.pushed.append(
            f"partitioned read: {n} ranges on {key} (catalog min/max {lo}..{hi}, outer ranges open)"
        )
