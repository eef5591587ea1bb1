"""Transitive filters: ``a.x = 5`` and the join ``a.x = b.y`` give ``b.y = 5`` at b's source.

Checked on the embedded demo (SQLite files): the derived filter is in the fragment sent,
fewer rows move, and the answer equals the plan without the rule (``disable=``), which the
oracle suite checks against the monolith for every strategy and placement.
"""

from __future__ import annotations

import pytest

import fedlab as fl
from fedlab import demo


@pytest.fixture(scope="module")
def fed() -> fl.Federation:
    return demo.federation()


def _fragment(res: fl.FederatedResult, source: str) -> str:
    return next(f.sql for f in res.plan.fragments if f.source == source)


@pytest.mark.parametrize(
    ("where", "derived"),
    [
        ("u.id = 35", '"orders"."user_id" = 35'),
        ("u.id IN (3, 35, 41)", '"orders"."user_id" IN (3, 35, 41)'),
        ("o.user_id = 35", '"users"."id" = 35'),
    ],
)
def test_a_filter_crosses_an_inner_join(fed: fl.Federation, where: str, derived: str) -> None:
    sql = (
        "SELECT u.name, o.id AS order_id, o.total FROM users u JOIN orders o "
        f"ON o.user_id = u.id WHERE {where} ORDER BY o.id"
    )
    res = fed.sql(sql, strategy="pushdown")
    without = fed.sql(sql, strategy="pushdown", disable=["transitive_filters"])
    sent = _fragment(res, "sales") + _fragment(res, "crm")
    assert derived in sent
    assert any("implied by" in n for n in res.plan.notes)
    assert res.trace.rows < without.trace.rows  # fewer rows moved
    fl.testing.assert_same_result(res.df, without.df, ordered=True)


def test_not_into_the_null_supplying_side(fed: fl.Federation) -> None:
    """Conservative: only between preserved sides (inner joins, WHERE equalities); a LEFT
    JOIN's right side gets no derived filter, and the answer is the same either way."""
    sql = (
        "SELECT u.id, o.id AS order_id FROM users u LEFT JOIN orders o ON o.user_id = u.id "
        "WHERE u.id = 35"
    )
    res = fed.sql(sql, strategy="pushdown")
    assert '"user_id" = 35' not in _fragment(res, "sales")
    fl.testing.assert_same_result(
        res.df, fed.sql(sql, strategy="pushdown", disable=["transitive_filters"]).df
    )
