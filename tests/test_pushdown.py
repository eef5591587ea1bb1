"""Pushdown rules, frozen as per-dialect SQL fixtures of the exact fragments emitted.

Each case plans a query (no database: the catalog is declared) with its tables placed on
sources of given kinds and compares every fragment's SQL, and what stays local, with
``tests/fixtures/pushdown.json``. A trap's safe form (MariaDB ``BINARY``, SQLite ``GLOB``,
DuckDB ``ESCAPE``, explicit NULL ordering, ``CHAR_LENGTH``, integer division) is pinned
here, so "keep it local" can never silently replace a pushdown, nor the reverse.

After an intended planner change, regenerate with ``FEDLAB_UPDATE_FIXTURES=1 pytest
tests/test_pushdown.py`` and review the diff of the JSON file like code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlglot import exp

import fedlab as fl
from fedlab.catalog import Catalog, ColumnInfo, TableInfo
from fedlab.source import KINDS, Source
from fedlab.sql.bind import bind
from fedlab.sql.parse import parse_query
from fedlab.sql.planner import plan_query

FIXTURES = Path(__file__).parent / "fixtures" / "pushdown.json"

SCHEMA = {
    "users": [
        ("id", "BIGINT"),
        ("name", "TEXT"),
        ("country", "TEXT"),
        ("balance", "DOUBLE"),
        ("signup_date", "DATE"),
    ],
    "orders": [
        ("id", "BIGINT"),
        ("user_id", "BIGINT"),
        ("quantity", "BIGINT"),
        ("total", "DOUBLE"),
        ("status", "TEXT"),
        ("ordered_at", "TIMESTAMP"),
        ("order_date", "DATE"),
    ],
}
DIALECT_OF = dict(KINDS.values())
ALL_KINDS = ("postgresql", "mysql", "sqlite", "duckdb")

# (name, sql, placement: "one" = both tables on the kind under test, "split" = orders on
# the kind under test and users on PostgreSQL, so that only fragments are pushed)
QUERIES: list[tuple[str, str, str]] = [
    ("text_eq", "SELECT id FROM orders WHERE status = 'paid'", "one"),
    ("text_neq", "SELECT id FROM orders WHERE status <> 'paid'", "one"),
    ("text_in", "SELECT id FROM orders WHERE status IN ('paid', 'PAID')", "one"),
    ("text_range", "SELECT id FROM orders WHERE status > 'p' AND status <= 'q'", "one"),
    ("text_between", "SELECT id FROM orders WHERE status BETWEEN 'a' AND 'p'", "one"),
    ("like", "SELECT id FROM orders WHERE status LIKE 'pa%'", "one"),
    ("not_like_escaped", "SELECT id FROM orders WHERE status NOT LIKE 'a\\_b%'", "one"),
    ("length", "SELECT name, length(name) AS n FROM users", "one"),
    ("int_division", "SELECT id, quantity / 3 AS q FROM orders", "one"),
    ("order_nulls", "SELECT id FROM users ORDER BY country, id LIMIT 5", "one"),
    ("order_desc", "SELECT id FROM users ORDER BY balance DESC, id", "one"),
    ("group_text", "SELECT status, count(*) AS n FROM orders GROUP BY status", "one"),
    ("distinct_text", "SELECT DISTINCT status FROM orders", "one"),
    ("min_text", "SELECT min(name) AS m FROM users", "one"),
    ("count_distinct", "SELECT count(DISTINCT status) AS n FROM orders", "one"),
    ("extract_year", "SELECT EXTRACT(YEAR FROM order_date) AS y FROM orders", "one"),
    (
        "date_interval",
        "SELECT id FROM orders WHERE order_date < DATE '2021-06-01' + INTERVAL '30' DAY",
        "one",
    ),
    ("cast_int", "SELECT CAST(balance AS INTEGER) AS b FROM users", "one"),
    ("upper", "SELECT upper(name) AS u FROM users WHERE upper(name) = 'ANNA'", "one"),
    (
        "same_source_join",
        "SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id "
        "WHERE u.country = 'US'",
        "one",
    ),
    (
        "split_join_filters",
        "SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id "
        "WHERE o.status = 'paid' AND o.quantity > 2 AND u.country = 'US'",
        "split",
    ),
    (
        "split_aggregate_after_join",
        "SELECT u.country, sum(o.total) AS s FROM users u JOIN orders o ON u.id = o.user_id "
        "WHERE o.status LIKE 'p%' GROUP BY u.country",
        "split",
    ),
    (
        "split_subquery_in",
        "SELECT name FROM users WHERE id IN (SELECT user_id FROM orders WHERE status = 'paid')",
        "split",
    ),
    (
        "split_derived_aggregate",
        "SELECT u.name, t.n FROM users u JOIN (SELECT user_id, count(*) AS n FROM orders "
        "GROUP BY user_id) t ON t.user_id = u.id",
        "split",
    ),
]


def catalog_for(placement: dict[str, str]) -> Catalog:
    cat = Catalog()
    by_kind: dict[str, list[str]] = {}
    for table, kind in placement.items():
        by_kind.setdefault(kind, []).append(table)
    for kind, tables in by_kind.items():
        name = {"postgresql": "pg", "mysql": "my", "sqlite": "lite", "duckdb": "duck"}[kind]
        src = Source(name, kind, DIALECT_OF[kind])
        infos = [
            TableInfo(
                source=name,
                name=t,
                columns=[ColumnInfo(c, d, exp.DataType.build(d)) for c, d in SCHEMA[t]],
                primary_key=["id"],
                row_estimate=1000,
            )
            for t in tables
        ]
        cat.add_static(src, infos)
    return cat


def plan_case(sql: str, kind: str, where: str) -> dict[str, object]:
    placement = (
        dict.fromkeys(SCHEMA, kind) if where == "one" else {"orders": kind, "users": "postgresql"}
    )
    cat = catalog_for(placement)
    plan = plan_query(bind(parse_query(sql), cat), cat, "pushdown", sql)
    return {
        "fragments": [f"{f.source}: {f.sql}" for f in plan.fragments],
        "local": plan.residual_sql,
        "notes": plan.notes,
    }


def cases() -> list[tuple[str, str, str, str]]:
    out = []
    for name, sql, where in QUERIES:
        for kind in ALL_KINDS:
            if where == "split" and kind == "postgresql":
                continue  # both on PostgreSQL would be one source
            out.append((f"{name}[{kind}]", sql, kind, where))
    return out


def _regenerate() -> dict[str, object]:
    return {cid: {"sql": sql, **plan_case(sql, kind, where)} for cid, sql, kind, where in cases()}


if os.environ.get("FEDLAB_UPDATE_FIXTURES") == "1":  # pragma: no cover
    FIXTURES.write_text(json.dumps(_regenerate(), indent=1, ensure_ascii=False) + "\n")

EXPECTED: dict[str, dict] = json.loads(FIXTURES.read_text()) if FIXTURES.exists() else {}


@pytest.mark.parametrize(("cid", "sql", "kind", "where"), cases(), ids=[c[0] for c in cases()])
def test_fragment_fixture(cid: str, sql: str, kind: str, where: str) -> None:
    assert cid in EXPECTED, f"no fixture for {cid}; regenerate with FEDLAB_UPDATE_FIXTURES=1"
    got = plan_case(sql, kind, where)
    want = EXPECTED[cid]
    assert want["sql"] == sql
    assert got["fragments"] == want["fragments"]
    assert got["local"] == want["local"]
    assert got["notes"] == want["notes"]


def test_fixtures_have_no_stale_cases() -> None:
    assert set(EXPECTED) == {c[0] for c in cases()}


# The properties the fixtures must show, stated directly so a regenerated fixture that
# loses a safe form fails here even if someone approves the JSON diff.
def test_mariadb_text_equality_is_pushed_exact() -> None:
    frag = plan_case("SELECT id FROM orders WHERE status = 'paid'", "mysql", "one")
    assert frag["local"] is None  # whole query pushed
    assert "CAST(`orders`.`status` AS BINARY) = CAST('paid' AS BINARY)" in frag["fragments"][0]


def test_mariadb_like_is_binary_and_sqlite_like_is_glob() -> None:
    my = plan_case("SELECT id FROM orders WHERE status LIKE 'pa%'", "mysql", "one")
    assert "CAST(`orders`.`status` AS BINARY) LIKE 'pa%'" in my["fragments"][0]
    lite = plan_case("SELECT id FROM orders WHERE status NOT LIKE 'a\\_b%'", "sqlite", "one")
    assert 'NOT ("orders"."status" GLOB \'a_b*\')' in lite["fragments"][0]


def test_split_join_pushes_filters_to_each_side() -> None:
    sql = next(q for n, q, _ in QUERIES if n == "split_join_filters")
    got = plan_case(sql, "mysql", "split")
    joined = "\n".join(got["fragments"])
    assert "`orders`.`quantity` > 2" in joined and '"users"."country" = \'US\'' in joined
    assert got["local"] is not None and "JOIN" in got["local"]


def test_mariadb_integer_division_and_length_are_translated() -> None:
    div = plan_case("SELECT id, quantity / 3 AS q FROM orders", "mysql", "one")
    assert " DIV 3" in div["fragments"][0]
    length = plan_case("SELECT name, length(name) AS n FROM users", "mysql", "one")
    assert "CHAR_LENGTH(" in length["fragments"][0]


def test_explain_names_what_stays_local() -> None:
    got = plan_case("SELECT upper(name) AS u FROM users", "sqlite", "one")
    assert any("UPPER" in n for n in got["notes"])
    assert got["local"] is not None and "UPPER(" in got["local"]
    assert got["fragments"] == ['lite: SELECT "users"."name" AS "name" FROM "users" AS "users"']
    assert isinstance(fl.Plan, type)


def test_disjunction_implies_filters_for_each_table() -> None:
    # TPC-H Q19's shape: each table gets the OR of its own conjuncts; the original stays local
    got = plan_case(
        "SELECT u.name FROM users u JOIN orders o ON u.id = o.user_id "
        "WHERE (o.quantity > 5 AND u.country = 'US') OR (o.quantity < 2 AND u.country = 'DE')",
        "sqlite",
        "split",
    )
    lite = next(f for f in got["fragments"] if f.startswith("lite:"))
    pg = next(f for f in got["fragments"] if f.startswith("pg:"))
    flat = lite.replace("(", "").replace(")", "")
    assert '"orders"."quantity" < 2 OR "orders"."quantity" > 5' in flat
    assert '"users"."country" = \'US\'' in pg and '"users"."country" = \'DE\'' in pg
    assert "OR" in got["local"]


def test_exists_reads_no_columns_and_equal_reads_share_a_fragment() -> None:
    got = plan_case(
        "SELECT u.name FROM users u WHERE EXISTS (SELECT * FROM orders o WHERE o.user_id = u.id) "
        "AND EXISTS (SELECT * FROM orders o2 WHERE o2.user_id = u.id)",
        "mysql",
        "split",
    )
    mine = [f for f in got["fragments"] if f.startswith("my:")]
    assert mine == ["my: SELECT `orders`.`user_id` AS `user_id` FROM `orders` AS `orders`"]


@pytest.mark.parametrize("rule", ["whole", "projection", "filters", "joins"])
def test_each_rule_can_be_switched_off(rule: str) -> None:
    from fedlab.sql.planner import RULES

    assert rule in RULES
    sql = "SELECT u.name FROM users u JOIN orders o ON u.id = o.user_id WHERE o.status = 'paid'"
    cat = catalog_for(dict.fromkeys(SCHEMA, "postgresql"))
    on = plan_query(bind(parse_query(sql), cat), cat, "pushdown", sql)
    off = plan_query(bind(parse_query(sql), cat), cat, "pushdown", sql, disable=[rule])
    on_sql = [f.sql for f in on.fragments]
    off_sql = [f.sql for f in off.fragments]
    if rule == "whole":
        assert len(on_sql) == 1 and len(off_sql) == 1 and "JOIN" not in off_sql[0]
    elif rule == "joins":
        cat2 = catalog_for(dict.fromkeys(SCHEMA, "postgresql"))
        off2 = plan_query(bind(parse_query(sql), cat2), cat2, "pushdown", sql, ["whole", "joins"])
        assert len(off2.fragments) == 2
    else:
        base = ["whole", "joins"]
        whole_off = plan_query(bind(parse_query(sql), cat), cat, "pushdown", sql, base)
        both = plan_query(bind(parse_query(sql), cat), cat, "pushdown", sql, [*base, rule])
        assert [f.sql for f in both.fragments] != [f.sql for f in whole_off.fragments]
    with pytest.raises(fl.PlanError, match="unknown pushdown rule"):
        plan_query(bind(parse_query(sql), cat), cat, "pushdown", sql, ["nope"])
