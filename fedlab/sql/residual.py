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

        def interval_sql(self, expression: exp.Interval) -> str:
            unit = expression.unit.name if expression.unit else ""
            value = expression.this
            if isinstance(value, exp.Literal) and unit:
                return f"INTERVAL '{value.name} {unit.lower()}'"
            return super().interval_sql(expression)


def residual_sql(tree: exp.Expression, *, pretty: bool = False) -> str:
    """The residual as Polars SQL text."""
    return tree.sql(dialect=PolarsSQL, pretty=pretty, identify=True)
