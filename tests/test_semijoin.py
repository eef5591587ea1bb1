"""Semi-joins (bind joins) and the cost-based ``auto`` strategy.

Planning is checked on declared catalogs (no database): which fragment waits for which,
which keys it receives, and where the keys go in its SQL. Execution is checked on real
SQLite, PostgreSQL and MariaDB databases: the answer never changes (the monolith oracle in
test_oracle.py runs every query under ``semijoin`` and ``auto`` as well), and the trace
shows the keys shipped, batched, turned into a range, or not sent at all.
"""

from __future__ import annotations

import polars as pl
import pytest
from sqlglot import exp

import fedlab as fl
from fedlab.catalog import Catalog, ColumnInfo, TableInfo
from fedlab.execute import executor
from fedlab.load import write_tables
from fedlab.source import Source
from fedlab.sql.bind import bind
from fedlab.sql.cost import estimate_query, selectivity
from fedlab.sql.parse import parse_query
from fedlab.sql.planner import plan_query

USERS = [("id", "BIGINT"), ("name", "TEXT"), ("country", "TEXT"), ("joined", "DATE")]
ORDERS = [("id", "BIGINT"), ("user_id", "BIGINT"), ("total", "DOUBLE"), ("day", "DATE")]


def catalog(users_rows: int = 1_000, orders_rows: int = 100_000) -> Catalog:
    cat = Catalog()

    def info(src: str, name: str, cols, rows: int) -> TableInfo:
        return TableInfo(
            src,
            name,
            [ColumnInfo(c, t, exp.DataType.build(t)) for c, t in cols],
            primary_key=["id"],
            row_estimate=rows,
            key_ranges={"id": (1, rows)},
        )

    cat.add_static(Source("crm", "sqlite", "sqlite"), [info("crm", "users", USERS, users_rows)])
    cat.add_static(
        Source("sales", "postgresql", "postgres"),
        [info("sales", "orders", ORDERS, orders_rows)],
    )
    return cat


def plan(sql: str, strategy: str = "semijoin", cat: Catalog | None = None, **kw):
    cat = cat or catalog()
    return plan_query(bind(parse_query(sql), cat), cat, strategy, sql, **kw)


def by_table(p, table: str):
    (frag,) = [f for f in p.fragments if any(t.endswith("." + table) for t in f.tables)]
    return frag


JOIN = (
    "SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id WHERE u.country = 'US'"
)


# ------------------------------------------------------------------ cost model
def test_selectivity_uses_keys_and_ranges() -> None:
    users = catalog().tables["crm"]["users"]
    assert selectivity(parse_query("SELECT 1 WHERE u.id = 3").args["where"].this, users) == 1 / 1000
    between = parse_query("SELECT 1 WHERE u.id BETWEEN 1 AND 500").args["where"].this
    assert selectivity(between, users) == pytest.approx(0.5, abs=0.01)
    assert selectivity(parse_query("SELECT 1 WHERE u.name = 'x'").args["where"].this) == 0.1


def test_estimates_follow_filters_groups_and_limits() -> None:
    cat = catalog()
    q = bind(parse_query("SELECT count(*) FROM orders"), cat).tree
    assert estimate_query(q) == 1
    q = bind(parse_query("SELECT user_id, count(*) FROM orders GROUP BY user_id"), cat).tree
    assert estimate_query(q) == pytest.approx(10_000)
    q = bind(parse_query("SELECT id FROM orders WHERE total > 5 LIMIT 7"), cat).tree
    assert estimate_query(q) == 7


# ------------------------------------------------------------------ planning
def test_semijoin_ships_the_small_sides_keys_into_the_large_side() -> None:
    p = plan(JOIN)
    users, orders = by_table(p, "users"), by_table(p, "orders")
    assert not users.dynamic
    (d,) = orders.dynamic
    assert (d.provider, d.provider_column, d.column) == (users.id, "id", "user_id")
    assert orders.depends_on == [users.id]
    assert d.target == '"orders"."user_id"'
    # the SQL shown says where the keys go; the template holds the placeholder
    assert '"orders"."user_id" IN (/* keys of ' in orders.sql
    assert d.placeholder in orders.template
    assert orders.estimated_rows < 100_000
    text = str(p)
    assert f"waits for {users.id}: ships user_id IN (keys of {users.id}.id)" in text
    assert "semi-join:" in text
    assert "waits for" in p._repr_html_()


def test_pushdown_ships_no_keys_and_auto_decides_by_cost() -> None:
    assert not any(f.dynamic for f in plan(JOIN, "pushdown").fragments)
    assert by_table(plan(JOIN, "auto"), "orders").dynamic  # 100 users vs 100k orders
    # a small receiver is not worth the wait: auto reads both sides at once
    small = catalog(users_rows=1_000, orders_rows=1_500)
    assert not any(f.dynamic for f in plan(JOIN, "auto", small).fragments)
    # keys of a whole (unfiltered) key column restrict nothing
    whole = "SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id"
    assert not any(f.dynamic for f in plan(whole, "semijoin").fragments)
    assert not any(f.dynamic for f in plan(whole, "auto").fragments)


def test_left_join_restricts_only_the_null_supplying_side() -> None:
    big_users = catalog(users_rows=1_000_000, orders_rows=1_000)
    # orders is preserved: it must never be restricted by users' keys
    sql = (
        "SELECT o.id, u.name FROM orders o LEFT JOIN users u "
        "ON u.id = o.user_id AND u.country = 'US' WHERE o.total > 100"
    )
    p = plan(sql, cat=big_users)
    assert not by_table(p, "orders").dynamic
    assert by_table(p, "users").dynamic  # users (null-supplying) gets the orders' keys
    # the other way round: users preserved, orders null-supplying and restricted
    sql = (
        "SELECT u.id, o.total FROM users u LEFT JOIN orders o ON o.user_id = u.id "
        "WHERE u.country = 'US'"
    )
    p = plan(sql)
    assert by_table(p, "orders").dynamic and not by_table(p, "users").dynamic


def test_in_subquery_and_correlated_exists_provide_keys() -> None:
    p = plan(
        "SELECT o.id FROM orders o WHERE o.user_id IN "
        "(SELECT u.id FROM users u WHERE u.country = 'US')"
    )
    assert by_table(p, "orders").dynamic
    p = plan(
        "SELECT u.id FROM users u WHERE u.country = 'US' AND "
        "EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.total > 10)"
    )
    orders = by_table(p, "orders")
    (d,) = orders.dynamic
    assert d.provider == by_table(p, "users").id and d.column == "user_id"


def test_keys_reach_a_grouped_fragment_through_its_where() -> None:
    p = plan(
        "SELECT u.name, t.n FROM users u JOIN (SELECT user_id, count(*) AS n FROM orders "
        "GROUP BY user_id) t ON t.user_id = u.id WHERE u.country = 'US'"
    )
    orders = by_table(p, "orders")
    assert orders.role == "subquery" and orders.dynamic
    assert orders.template.index("IN") if "IN" in orders.template else True
    where, group = orders.template.index("WHERE"), orders.template.index("GROUP BY")
    assert where < group  # a grouping column: filtered before grouping, not around it


def test_a_read_used_twice_is_copied_before_it_is_restricted() -> None:
    sql = (
        "SELECT o1.id FROM orders o1 JOIN users u ON u.id = o1.user_id "
        "WHERE u.country = 'US' AND NOT EXISTS "
        "(SELECT 1 FROM orders o2 WHERE o2.total > 10 AND o2.id = 0)"
    )
    p = plan(sql)
    restricted = [f for f in p.fragments if f.dynamic]
    assert restricted
    frames = [t.name for t in p.residual.find_all(exp.Table)]
    for f in restricted:
        assert frames.count(f.id) == 1


def test_no_keys_into_protected_sources_and_only_int_or_text_keys() -> None:
    p = plan(JOIN, protected={"sales"})
    assert not any(f.dynamic for f in p.fragments)
    assert any("data residency" in n for n in p.notes)
    dates = "SELECT u.name FROM users u JOIN orders o ON o.day = u.joined WHERE u.country = 'US'"
    assert not any(f.dynamic for f in plan(dates).fragments)


# ------------------------------------------------------------------ execution
NAMES = ["O'Brien", "back\\slash", "Zoë", "plain", "trailing ", "UPPER"]


@pytest.fixture(scope="module")
def three(pg_database, mariadb_database, tmp_path_factory):
    users = pl.DataFrame(
        {
            "id": list(range(1, 61)),
            "name": [NAMES[i % len(NAMES)] + str(i // len(NAMES)) for i in range(60)],
            "country": ["US" if i % 3 == 0 else "DE" for i in range(60)],
        }
    )
    orders = pl.DataFrame(
        {
            "id": list(range(1, 601)),
            "user_id": [(i * 7) % 70 + 1 for i in range(600)],
            "buyer": [NAMES[i % len(NAMES)] + str((i // 7) % 10) for i in range(600)],
            "total": [float(i % 50) for i in range(600)],
        }
    )
    lite = tmp_path_factory.mktemp("semi") / "crm.db"
    pg, my = pg_database("fedlab_semi"), mariadb_database("fedlab_semi")
    write_tables(f"sqlite:///{lite}", {"users": users}, primary_keys={"users": ["id"]})
    write_tables(pg, {"orders": orders}, primary_keys={"orders": ["id"]})
    write_tables(my, {"orders2": orders}, primary_keys={"orders2": ["id"]})
    return fl.Federation().attach("crm", f"sqlite:///{lite}").attach("pg", pg).attach("my", my)


QUERIES = [
    JOIN,
    "SELECT u.name, o.total FROM users u JOIN orders2 o ON o.user_id = u.id WHERE u.country = 'US'",
    # text keys with a quote, a backslash, non-ASCII and trailing spaces, into both servers
    "SELECT u.id, o.id AS oid FROM users u JOIN orders o ON o.buyer = u.name WHERE u.id < 20",
    "SELECT u.id, o.id AS oid FROM users u JOIN orders2 o ON o.buyer = u.name WHERE u.id < 20",
    "SELECT u.id FROM users u WHERE u.country = 'US' AND "
    "EXISTS (SELECT 1 FROM orders2 o WHERE o.user_id = u.id AND o.total > 40)",
    "SELECT u.id, count(o.id) AS n FROM users u LEFT JOIN orders o ON o.user_id = u.id "
    "WHERE u.country = 'DE' GROUP BY u.id",
]


@pytest.mark.servers
@pytest.mark.parametrize("sql", QUERIES)
def test_semijoin_and_auto_answer_as_pushdown(three, sql: str) -> None:
    expected = three.sql(sql, strategy="naive")
    for strategy in ("semijoin", "auto"):
        got = three.sql(sql, strategy=strategy)
        fl.testing.assert_same_result(got.df, expected.df)
    semi = three.sql(sql, strategy="semijoin")
    assert any(f.dynamic for f in semi.plan.fragments), "the case should ship keys"
    assert semi.trace.rows < expected.trace.rows
    for f in semi.plan.fragments:
        assert f.actual_rows is not None
        if f.dynamic:
            entry = next(e for e in semi.trace.entries if e.fragment == f.id)
            assert "keys" in entry.reader
            assert "/* keys of" not in entry.sql  # the trace shows what was sent


@pytest.mark.servers
def test_keys_are_batched_or_sent_as_a_range(three, monkeypatch) -> None:
    sql = QUERIES[1]
    expected = three.sql(sql, strategy="pushdown").df
    monkeypatch.setattr(executor, "KEY_BATCH", 4)
    res = three.sql(sql, strategy="semijoin")
    fl.testing.assert_same_result(res.df, expected)
    (entry,) = [e for e in res.trace.entries if e.source == "my"]
    assert "20 keys, 5 statements" in entry.reader
    monkeypatch.setattr(executor, "MAX_KEYS", 3)
    res = three.sql(sql, strategy="semijoin")
    fl.testing.assert_same_result(res.df, expected)
    (entry,) = [e for e in res.trace.entries if e.source == "my"]
    assert "as a range" in entry.reader and "BETWEEN 1 AND 58" in entry.sql


@pytest.mark.servers
def test_no_keys_means_no_query(three) -> None:
    sql = "SELECT u.name, o.total FROM users u JOIN orders2 o ON o.user_id = u.id WHERE u.country = 'FR'"
    res = three.sql(sql, strategy="semijoin")
    assert res.df.height == 0 and res.df.columns == ["name", "total"]
    (entry,) = [e for e in res.trace.entries if e.source == "my"]
    assert entry.reader == "skipped (no keys: not sent)" and entry.rows == 0
