"""The equality rule: when two query results are "the same answer".

DESIGN.md's rule, used by the tests, by :meth:`Federation.compare` and by the benchmark:

- same column names, in the same order;
- same multiset of rows; row order matters only when ``ordered=True`` (the query's
  outermost ORDER BY fixes it);
- numbers compared as numbers, whatever their type (integers, decimals, floats): equal when
  within a relative 1e-9 or an absolute 1e-6, after rounding decimals to their scale;
- dates and timestamps compared as values (a Date equals a midnight Datetime of that day,
  a string is never a date);
- strings exactly (case and trailing spaces matter);
- NULL equals NULL.

>>> import polars as pl
>>> from fedlab.testing import same_result
>>> same_result(pl.DataFrame({"a": [1, 2]}), pl.DataFrame({"a": [2.0, 1.0]}))
(True, '')
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from decimal import Decimal
from typing import Any

import polars as pl

__all__ = ["assert_same_result", "same_result"]

REL_TOL = 1e-9
ABS_TOL = 1e-6
_SHOWN = 5  # rows shown in a difference report


def _frame(x: Any) -> pl.DataFrame:
    if isinstance(x, pl.DataFrame):
        return x
    df = getattr(x, "df", None)  # FederatedResult
    if isinstance(df, pl.DataFrame):
        return df
    if hasattr(x, "to_pandas") or type(x).__module__.startswith("pandas"):
        return pl.from_pandas(x)
    return pl.DataFrame(x)


def _kind(dtype: pl.DataType) -> str:
    if dtype.is_numeric():
        return "number"
    if dtype == pl.Boolean:
        return "bool"
    if dtype in (pl.Date, pl.Datetime) or isinstance(dtype, pl.Datetime):
        return "temporal"
    if dtype == pl.Null:
        return "null"
    return "other"


def _canon_number(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return v


def _canon_temporal(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        return (
            v.replace(tzinfo=None)
            if v.tzinfo is None
            else v.astimezone(dt.UTC).replace(tzinfo=None)
        )
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day)
    return v


def _numbers_close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _cell_equal(a: Any, b: Any, kind: str) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if kind == "number":
        return _numbers_close(a, b)
    return a == b


def _rows(df: pl.DataFrame, kinds: list[str]) -> list[tuple]:
    cols = []
    for name, kind in zip(df.columns, kinds, strict=True):
        s = df.get_column(name)
        values = s.to_list()
        if kind == "number":
            values = [_canon_number(v) for v in values]
        elif kind == "temporal":
            values = [_canon_temporal(v) for v in values]
        cols.append(values)
    return list(zip(*cols, strict=True)) if cols else [() for _ in range(df.height)]


def _sort_key(row: tuple) -> tuple:
    # None first, then by type name, then value: a total order over mixed cells
    out = []
    for v in row:
        if v is None:
            out.append((0, "", 0))
        elif isinstance(v, float):
            out.append((1, "number", 0.0 if math.isnan(v) else v))
        else:
            out.append((2, type(v).__name__, v))
    return tuple(out)


def _show(row: tuple) -> str:
    return "(" + ", ".join(repr(v) for v in row) + ")"


def same_result(got: Any, expected: Any, *, ordered: bool = False) -> tuple[bool, str]:
    """Compare two results by the equality rule; return ``(equal, why_not)``.

    ``got`` and ``expected`` may be Polars frames, pandas frames or FederatedResults.
    ``why_not`` is empty when they are equal, else a short human-readable difference.
    """
    a, b = _frame(got), _frame(expected)
    if a.columns != b.columns:
        return False, f"columns differ: got {a.columns}, expected {b.columns}"
    if a.height != b.height:
        return False, f"row counts differ: got {a.height}, expected {b.height}"
    kinds: list[str] = []
    for name in a.columns:
        ka, kb = _kind(a.schema[name]), _kind(b.schema[name])
        if ka == "null":
            ka = kb
        if kb == "null":
            kb = ka
        if (ka == "bool" and kb == "number") or (ka == "number" and kb == "bool"):
            ka = kb = "number"
        if ka != kb:
            return False, (
                f"column {name!r}: got type {a.schema[name]}, expected {b.schema[name]} "
                "(not comparable as values)"
            )
        kinds.append(ka)
    ra, rb = _rows(a, kinds), _rows(b, kinds)
    if not ordered:
        # numbers: sort both sides the same way; close floats sort next to each other
        ra, rb = sorted(ra, key=_sort_key), sorted(rb, key=_sort_key)
    bad = [
        i
        for i, (x, y) in enumerate(zip(ra, rb, strict=True))
        if not all(_cell_equal(p, q, k) for p, q, k in zip(x, y, kinds, strict=True))
    ]
    if not bad:
        return True, ""
    if not ordered and any(k == "number" for k in kinds):
        # sorting can interleave rows whose floats differ by rounding noise: fall back to
        # matching exact-key multisets, then close numbers within each key group
        if _multiset_close(ra, rb, kinds):
            return True, ""
    where = "at position" if ordered else "in sorted position"
    lines = [f"{len(bad)} of {len(ra)} rows differ; first {where} {bad[0]}:"]
    for i in bad[:_SHOWN]:
        lines.append(f"  got      {_show(ra[i])}")
        lines.append(f"  expected {_show(rb[i])}")
    return False, "\n".join(lines)


def _multiset_close(ra: list[tuple], rb: list[tuple], kinds: list[str]) -> bool:
    """Greedy matching of rows, non-number cells exact and numbers close (small results)."""
    if len(ra) > 20000:
        return False
    non_num = [i for i, k in enumerate(kinds) if k != "number"]
    groups: dict[tuple, list[tuple]] = {}
    for r in rb:
        groups.setdefault(tuple(r[i] for i in non_num), []).append(r)
    counts_a = Counter(tuple(r[i] for i in non_num) for r in ra)
    if any(len(groups.get(k, [])) != n for k, n in counts_a.items()):
        return False
    for r in ra:
        pool = groups[tuple(r[i] for i in non_num)]
        for j, cand in enumerate(pool):
            if all(_cell_equal(p, q, k) for p, q, k in zip(r, cand, kinds, strict=True)):
                pool.pop(j)
                break
        else:
            return False
    return True


def assert_same_result(got: Any, expected: Any, *, ordered: bool = False) -> None:
    """Raise ``AssertionError`` (with the difference) unless the results are equal.

    >>> import polars as pl
    >>> assert_same_result(pl.DataFrame({"s": ["a"]}), pl.DataFrame({"s": ["a "]}))
    Traceback (most recent call last):
    ...
    AssertionError: 1 of 1 rows differ; first in sorted position 0:
      got      ('a')
      expected ('a ')
    """
    ok, why = same_result(got, expected, ordered=ordered)
    if not ok:
        raise AssertionError(why)
