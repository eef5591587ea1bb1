"""Horizontal federation: sharded logical tables (``fed.shard``).

Shards are real databases: SQLite files for the fast tests, and PostgreSQL + MariaDB +
SQLite for the cross-engine ones. Answers are compared with a monolith (one database
holding the whole table) by the equality rule; plans are checked on their fragments.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import polars as pl
import pytest

import fedlab as fl
from fedlab.errors import ShardError, TenantError, UnknownTableError
from fedlab.load import split_shards, write_shards, write_tables
from fedlab.sql.shards import shard_of
from tests.oracle_data import PRIMARY_KEYS, frames

DATA = frames()
ORDERS = DATA["orders"]
USERS = DATA["users"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shards")


@pytest.fixture(scope="module")
def monolith(root) -> fl.Federation:
    url = f"sqlite:///{root / 'mono.db'}"
    write_tables(url, DATA, primary_keys=PRIMARY_KEYS)
    fed = fl.Federation()
    fed.attach("mono", url)
    return fed


@pytest.fixture(scope="module")
def hashed(root) -> fl.Federation:
    """orders hash-sharded on id over three SQLite files; users range-sharded on id over
    two; products and inventory in a third database (a hybrid)."""
    urls = {f"s{i}": f"sqlite:///{root / f'orders_s{i}.db'}" for i in range(3)}
    write_shards(ORDERS, "orders", "id", "hash", urls, primary_key=["id"])
    users = {"lo": f"sqlite:///{root / 'users_lo.db'}", "hi": f"sqlite:///{root / 'users_hi.db'}"}
    bounds = {"lo": (None, 30), "hi": (30, None)}
    write_shards(USERS, "users", "id", "range", users, bounds=bounds, primary_key=["id"])
    write_tables(
        f"sqlite:///{root / 'catalog.db'}",
        {"products": DATA["products"], "inventory": DATA["inventory"]},
        primary_keys=PRIMARY_KEYS,
    )
    fed = fl.Federation()
    fed.attach("catalog", f"sqlite:///{root / 'catalog.db'}")
    fed.shard("orders", key="id", method="hash", shards=urls)
    fed.shard("users", key="id", method="range", shards=users, bounds=bounds)
    return fed


def same(fed: fl.Federation, monolith: fl.Federation, sql: str, **kw) -> fl.FederatedResult:
    got = fed.sql(sql, **kw)
    fl.testing.assert_same_result(
        got.df, monolith.sql(sql).df, ordered=got.plan.ordered and "ORDER BY" in sql
    )
    return got


# --------------------------------------------------------------------------- the hash rule
def test_shard_of_is_the_documented_rule() -> None:
    assert [shard_of(v, 3) for v in (0, 1, 2, 3, 7, -1)] == [0, 1, 2, 0, 1, 2]
    assert shard_of(None, 4) == 0
    assert shard_of("US", 5) == zlib.crc32(b"US") % 5
    assert shard_of("Zoë", 7) == zlib.crc32("Zoë".encode()) % 7
    assert shard_of(6.0, 4) == 2
    with pytest.raises(ShardError, match="non-integral"):
        shard_of(1.5, 2)
    with pytest.raises(ShardError):
        shard_of(1, 0)


def test_split_shards_places_every_row_once_by_the_rule() -> None:
    parts = split_shards(ORDERS, "id", "hash", ["a", "b", "c"])
    assert sum(p.height for p in parts.values()) == ORDERS.height
    for i, name in enumerate(["a", "b", "c"]):
        assert all(shard_of(v, 3) == i for v in parts[name]["id"].to_list())
    text = split_shards(USERS, "country", "hash", ["x", "y"])
    for i, name in enumerate(["x", "y"]):
        assert all(shard_of(v, 2) == i for v in text[name]["country"].to_list())
    fl.testing.assert_same_result(pl.concat(list(parts.values())), ORDERS)


def test_split_shards_range_and_list() -> None:
    parts = split_shards(USERS, "id", "range", ["a", "b"], bounds={"a": (1, 10), "b": (10, None)})
    assert parts["a"]["id"].to_list() == list(range(1, 10))
    with pytest.raises(ShardError, match="no shard may hold"):
        split_shards(USERS, "id", "range", ["a"], bounds={"a": (5, None)})
    values = {"us": ["US"], "rest": ["us", "UK", "DE", "FR", "JP", "US ", None]}
    lists = split_shards(USERS, "country", "list", ["us", "rest"], values=values)
    assert set(lists["us"]["country"].to_list()) == {"US"}
    with pytest.raises(ShardError, match="no shard may hold"):
        split_shards(USERS, "country", "list", ["us"], values={"us": ["US"]})


def test_hash_loader_round_trip(hashed, monolith) -> None:
    res = same(hashed, monolith, "SELECT * FROM orders")
    assert len(res.plan.fragments) == 3
    assert {f.source for f in res.plan.fragments} == {"orders_s0", "orders_s1", "orders_s2"}
    # each shard holds exactly the rows the rule gives it
    for i in range(3):
        ids = hashed.sql(f"SELECT id FROM orders_s{i}.orders").df["id"].to_list()
        assert ids and all(shard_of(v, 3) == i for v in ids)


# --------------------------------------------------------------------------- pruning
def shards_read(plan) -> set[str]:
    return {f.source for f in plan.fragments}


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("id = 7", {"orders_s1"}),
        ("7 = id", {"orders_s1"}),
        ("id IN (3, 6)", {"orders_s0"}),
        ("id IN (3, 4)", {"orders_s0", "orders_s1"}),
        ("id BETWEEN 9 AND 10", {"orders_s0", "orders_s1"}),
        ("id >= 9 AND id < 10", {"orders_s0"}),
        ("(id = 3 OR id = 5) AND quantity > 1", {"orders_s0", "orders_s2"}),
        ("id > 7", {"orders_s0", "orders_s1", "orders_s2"}),  # hash: no range pruning
        ("id = 7 OR quantity > 1", {"orders_s0", "orders_s1", "orders_s2"}),
    ],
)
def test_hash_pruning(hashed, monolith, where, expected) -> None:
    sql = f"SELECT id, total FROM orders WHERE {where}"
    res = same(hashed, monolith, sql)
    assert shards_read(res.plan) == expected
    if len(expected) < 3:
        assert any("pruned" in n for n in res.plan.notes), res.plan.notes


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("id = 29", {"users_lo"}),
        ("id = 30", {"users_hi"}),
        ("id < 30", {"users_lo"}),
        ("id <= 30", {"users_lo", "users_hi"}),
        ("id BETWEEN 31 AND 1000", {"users_hi"}),
        ("id > 29 AND id < 31", {"users_hi"}),
        ("id IN (1, 2)", {"users_lo"}),
        ("id % 7 = 5", {"users_lo", "users_hi"}),  # not on the bare key: both read
    ],
)
def test_range_pruning(hashed, monolith, where, expected) -> None:
    res = same(hashed, monolith, f"SELECT id, name FROM users WHERE {where}")
    assert shards_read(res.plan) == expected


def test_point_lookup_is_exactly_one_fragment(hashed, monolith) -> None:
    res = same(hashed, monolith, "SELECT * FROM orders WHERE id = 5")
    assert len(res.plan.fragments) == 1
    frag = res.plan.fragments[0]
    assert frag.source == "orders_s2" and frag.role == "query"
    assert frag.sql.endswith('FROM "orders" AS "orders" WHERE "orders"."id" = 5')
    assert res.plan.residual_sql is None
    assert res.df.height == 1
    note = next(n for n in res.plan.notes if n.startswith("sharded table orders"))
    assert "1 of 3 shards read (s2); pruned s0, s1 by orders.id = 5" in note


def test_point_lookup_with_parameter(hashed, monolith) -> None:
    res = hashed.sql("SELECT id, total FROM orders WHERE id = :id", params={"id": 8})
    assert len(res.plan.fragments) == 1 and res.plan.fragments[0].source == "orders_s2"
    assert res.df["id"].to_list() == [8]


def test_no_shard_left_reads_nothing_and_answers_empty(root, monolith) -> None:
    urls = {"us": f"sqlite:///{root / 'l_us.db'}", "rest": f"sqlite:///{root / 'l_rest.db'}"}
    values = {"us": ["US"], "rest": ["us", "UK", "DE", "FR", "JP", "US ", None]}
    write_shards(USERS, "users", "country", "list", urls, values=values)
    fed = fl.Federation()
    fed.shard("users", key="country", method="list", shards=urls, values=values)
    assert shards_read(same(fed, monolith, "SELECT id FROM users WHERE country = 'US'").plan) == {
        "users_us"
    }
    assert shards_read(
        same(fed, monolith, "SELECT id FROM users WHERE country IN ('UK', 'JP')").plan
    ) == {"users_rest"}
    res = same(
        fed, monolith, "SELECT count(*) AS n, sum(balance) AS s FROM users WHERE country = 'XX'"
    )
    assert len(res.plan.fragments) == 1 and "1 = 0" in res.plan.fragments[0].sql
    assert res.df.rows() == [(0, None)]
    # a range on a text key is not pruned (the order depends on the collation)
    res = same(fed, monolith, "SELECT id FROM users WHERE country > 'UK'")
    assert len(res.plan.fragments) == 2


# --------------------------------------------------------------------------- rewrites
def test_partial_aggregation_per_shard(hashed, monolith) -> None:
    sql = (
        "SELECT status, count(*) AS n, sum(total) AS s, avg(quantity) AS a, min(id) AS lo, "
        "count(DISTINCT user_id) AS buyers FROM orders WHERE quantity > 2 "
        "GROUP BY status HAVING count(*) > 3 ORDER BY status"
    )
    res = same(hashed, monolith, sql)
    assert len(res.plan.fragments) == 3
    assert res.plan.fragments[0].sql == (
        'SELECT "orders"."status" AS "_g1", COUNT(*) AS "_p2", SUM("orders"."total") AS "_p3", '
        'SUM("orders"."quantity") AS "_p4", COUNT("orders"."quantity") AS "_p5", '
        'MIN("orders"."id") AS "_p6", "orders"."user_id" AS "_d1" FROM "orders" AS "orders" '
        'WHERE "orders"."quantity" > 2 GROUP BY "orders"."status", "orders"."user_id"'
    )
    assert "COALESCE(SUM" in res.plan.residual_sql and "NULLIF(SUM" in res.plan.residual_sql
    assert any("aggregated in each shard" in n for n in res.plan.notes)


def test_partial_aggregation_over_no_rows(hashed, monolith) -> None:
    sql = "SELECT count(*) AS n, count(total) AS c, sum(total) AS s, avg(total) AS a, max(id) AS m FROM orders WHERE quantity > 100"
    res = same(hashed, monolith, sql)
    assert res.df.rows() == [(0, 0, None, None, None)]
    grouped = same(hashed, monolith, sql + " GROUP BY status")
    assert grouped.df.height == 0


def test_global_aggregate_moves_one_row_per_shard(hashed, monolith) -> None:
    res = same(hashed, monolith, "SELECT count(*), sum(total) FROM orders")
    assert [e.rows for e in res.trace.entries] == [1, 1, 1]
    naive = same(hashed, monolith, "SELECT count(*), sum(total) FROM orders", strategy="naive")
    assert naive.trace.rows == ORDERS.height


def test_top_n_per_shard(hashed, monolith) -> None:
    sql = "SELECT id, total FROM orders ORDER BY total DESC, id LIMIT 7 OFFSET 3"
    res = same(hashed, monolith, sql)
    assert len(res.plan.fragments) == 3
    for f in res.plan.fragments:
        assert f.sql == (
            'SELECT "orders"."id" AS "id", "orders"."total" AS "total" FROM "orders" AS "orders" '
            'ORDER BY "orders"."total" DESC NULLS FIRST, "orders"."id" NULLS LAST LIMIT 10'
        )
    assert res.trace.rows == 30
    assert any("top 10 rows per shard" in n for n in res.plan.notes)


def test_hybrid_join_reads_each_surviving_shard_once(hashed, monolith) -> None:
    sql = (
        "SELECT u.name, o.total, p.title FROM users u JOIN orders o ON u.id = o.user_id "
        "JOIN products p ON p.id = o.product_id WHERE u.id < 20 AND o.status = 'paid' "
        "ORDER BY o.total DESC, u.name, p.title"
    )
    res = same(hashed, monolith, sql)
    assert sorted(f.source for f in res.plan.fragments) == [
        "catalog",
        "orders_s0",
        "orders_s1",
        "orders_s2",
        "users_lo",
    ]
    for f in res.plan.fragments:
        if f.source.startswith("orders_"):
            assert f.sql == (
                'SELECT "orders"."user_id" AS "user_id", "orders"."product_id" AS "product_id", '
                '"orders"."total" AS "total" FROM "orders" AS "orders" '
                'WHERE "orders"."status" = \'paid\''
            )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT u.id FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.status = 'PAID') ORDER BY u.id",
        "SELECT id, total FROM orders WHERE total > (SELECT avg(total) FROM orders) * 1.8 ORDER BY id",
        "SELECT u.id, count(o.id) AS n FROM users u LEFT JOIN orders o ON o.user_id = u.id AND NOT (o.quantity > 5) GROUP BY u.id ORDER BY u.id",
        "WITH big AS (SELECT user_id, sum(total) AS spend FROM orders GROUP BY user_id) SELECT u.name, b.spend FROM big b JOIN users u ON u.id = b.user_id WHERE b.spend > 1500 ORDER BY b.spend DESC, u.name",
        "SELECT a.id, b.id AS next_id FROM orders a JOIN orders b ON b.id = a.id + 1 WHERE a.user_id = b.user_id ORDER BY a.id",
        "SELECT DISTINCT status FROM orders",
    ],
)
@pytest.mark.parametrize("strategy", ["naive", "pushdown"])
def test_subqueries_and_joins_over_shards(hashed, monolith, sql, strategy) -> None:
    same(hashed, monolith, sql, strategy=strategy)


def test_naive_reads_every_shard_whole(hashed, monolith) -> None:
    res = same(hashed, monolith, "SELECT total FROM orders WHERE id = 5", strategy="naive")
    assert len(res.plan.fragments) == 3
    assert all("whole table" in f.pushed for f in res.plan.fragments)
    assert any("naive: all 3 shards read whole" in n for n in res.plan.notes)


def test_logical_names(hashed) -> None:
    assert hashed.sql("SELECT count(*) AS n FROM logical.orders").df["n"][0] == ORDERS.height
    assert "orders" in hashed.catalog.logical
    assert hashed.bind("SELECT id FROM orders").sources() == {"orders_s0", "orders_s1", "orders_s2"}
    with pytest.raises(UnknownTableError, match="no sharded logical table named 'nope'"):
        hashed.sql("SELECT * FROM logical.nope")
    rows = hashed.catalog.logical_rows()
    assert {r["table"]: r["rule"] for r in rows} == {"orders": "hash(id)", "users": "range(id)"}
    # a physical shard can still be read by its own name
    assert hashed.sql("SELECT count(*) AS n FROM orders_s0.orders").df["n"][0] < ORDERS.height


def test_dataframe_api_over_a_logical_table(hashed, monolith) -> None:
    q = hashed.table("orders").filter(fl.col("id") == 7).select("id", "total")
    assert len(q.explain().fragments) == 1
    fl.testing.assert_same_result(
        q.collect(), monolith.sql("SELECT id, total FROM orders WHERE id = 7").df
    )


# --------------------------------------------------------------------------- validation
@pytest.fixture()
def two_sources(root) -> fl.Federation:
    a, b = f"sqlite:///{root / 'va.db'}", f"sqlite:///{root / 'vb.db'}"
    write_tables(a, {"t": pl.DataFrame({"k": [1, 2], "v": ["x", "y"]})})
    write_tables(
        b,
        {
            "t": pl.DataFrame({"k": [3], "v": ["z"]}),
            "bad_type": pl.DataFrame({"k": [3], "v": [1.5]}),
            "missing": pl.DataFrame({"k": [3]}),
            "extra": pl.DataFrame({"k": [3], "v": ["z"], "w": [1]}),
        },
    )
    fed = fl.Federation()
    fed.attach("a", a, tags={"tenant": "A", "region": "EU"})
    fed.attach("b", b, tags={"tenant": "B", "region": "US"})
    return fed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"key": "k", "shards": {"s0": "a.t", "s1": "b.bad_type"}},
            r"column 'v' is REAL \(number\) on shard s1 \(b.bad_type\) but TEXT \(text\) on shard s0",
        ),
        ({"key": "k", "shards": {"s0": "a.t", "s1": "b.missing"}}, "shard s1 .* has no column 'v'"),
        ({"key": "k", "shards": {"s0": "a.t", "s1": "b.extra"}}, "has column 'w' that shard s0"),
        ({"key": "nope", "shards": {"s0": "a.t", "s1": "b.t"}}, "shard key 'nope' is not a column"),
        ({"key": "k", "shards": {"s0": "a.t", "s1": "b.zzz"}}, "shard 's1': table 'zzz' not found"),
        ({"key": "k", "shards": {"s0": "a.t"}, "method": "modulo"}, "unknown shard method"),
        (
            {
                "key": "k",
                "method": "range",
                "shards": {"s0": "a.t", "s1": "b.t"},
                "bounds": {"s0": (None, 3), "s1": (2, None)},
            },
            "overlap",
        ),
        (
            {
                "key": "k",
                "method": "range",
                "shards": {"s0": "a.t", "s1": "b.t"},
                "bounds": {"s0": (None, 3), "s1": (4, None)},
            },
            "gap between shards 's0'",
        ),
        (
            {"key": "k", "method": "range", "shards": {"s0": "a.t", "s1": "b.t"}},
            "needs bounds",
        ),
        (
            {
                "key": "k",
                "method": "list",
                "shards": {"s0": "a.t", "s1": "b.t"},
                "values": {"s0": [1, 2], "s1": [2, 3]},
            },
            "value 2 is listed for shards 's0' and 's1'",
        ),
        (
            {"key": "k", "method": "list", "shards": {"s0": "a.t", "s1": "b.t"}},
            "has no values: give values=",
        ),
    ],
)
def test_declaration_errors(two_sources, kwargs, message) -> None:
    with pytest.raises(ShardError, match=message):
        two_sources.shard("logi", **kwargs)
    assert "logi" not in two_sources.catalog.logical


def test_failed_declaration_detaches_what_it_attached(two_sources, root) -> None:
    url = f"sqlite:///{root / 'vb.db'}"
    with pytest.raises(ShardError):
        two_sources.shard("bad_type", key="k", shards={"s0": "a.t", "s1": url})
    assert "bad_type_s1" not in two_sources.catalog.sources
    with pytest.raises(fl.FedlabError, match="reserved"):
        two_sources.attach("logical", url)


def test_list_values_given_explicitly(two_sources) -> None:
    assert two_sources.catalog.resolve("t", "a").logical is None  # the physical table
    two_sources.shard(
        "byk",
        key="k",
        method="list",
        shards={"s0": "a.t", "s1": "b.t"},
        values={"s0": [1, 2], "s1": [3]},
    )
    assert two_sources.explain("SELECT v FROM byk WHERE k = 3").sources == ["b"]
    assert two_sources.explain("SELECT v FROM byk WHERE k IN (1, 2)").sources == ["a"]
    assert two_sources.explain("SELECT v FROM byk WHERE k >= 2").sources == ["a", "b"]
    assert two_sources.explain("SELECT v FROM byk WHERE k > 2").sources == ["b"]


def test_list_values_from_tags_and_tenant_routing(root) -> None:
    a, b, shared = (f"sqlite:///{root / n}" for n in ("ta.db", "tb.db", "tshared.db"))
    write_tables(
        a,
        {
            "events": pl.DataFrame({"tenant": ["A", "A"], "x": [1, 2]}),
            "secrets": pl.DataFrame({"s": [1]}),
        },
    )
    write_tables(b, {"events": pl.DataFrame({"tenant": ["B"], "x": [3]})})
    write_tables(shared, {"plans": pl.DataFrame({"name": ["free"]})})
    fed = fl.Federation()
    fed.attach("ta", a, tags={"tenant": "A"})
    fed.attach("tb", b, tags={"tenant": "B"})
    fed.attach("shared", shared)
    fed.shard("events", key="tenant", method="list", shards={"a": "ta", "b": "tb"})
    assert [s.values for s in fed.catalog.logical["events"].shards] == [("A",), ("B",)]
    # list pruning on the tag values
    assert fed.explain("SELECT x FROM events WHERE tenant = 'B'").sources == ["tb"]
    # tenant routing: only that tenant's shards, whatever the query says
    res = fed.sql("SELECT sum(x) AS s FROM events", tenant="A")
    assert res.df["s"][0] == 3 and res.plan.sources == ["ta"]
    assert any("tenant 'A': skipped shard(s) b" in n for n in res.plan.notes)
    assert fed.sql("SELECT x FROM events WHERE tenant = 'B'", tenant="A").df.height == 0
    # plain tables: a shared source is fine, another tenant's source is refused
    assert fed.sql("SELECT name FROM plans", tenant="B").df.height == 1
    with pytest.raises(TenantError, match=r"tenant .B. may not read ta\.secrets"):
        fed.sql("SELECT s FROM secrets", tenant="B")
    assert fed.sql("SELECT s FROM secrets", tenant="A").df.height == 1


# --------------------------------------------------------------------------- real servers
@pytest.mark.servers
def test_hash_shards_over_postgresql_mariadb_and_sqlite(
    pg_database, mariadb_database, root, monolith
) -> None:
    urls = {
        "s0": f"sqlite:///{root / 'x_s0.db'}",
        "s1": pg_database("fedlab_shard"),
        "s2": mariadb_database("fedlab_shard"),
    }
    write_shards(ORDERS, "orders", "id", "hash", urls, primary_key=["id"])
    users = {"lo": urls["s1"], "hi": urls["s2"]}
    bounds = {"lo": (None, 30), "hi": (30, None)}
    write_shards(USERS, "users", "id", "range", users, bounds=bounds, primary_key=["id"])
    fed = fl.Federation()
    fed.attach("pg", urls["s1"])
    fed.attach("my", urls["s2"])
    # a URL shard is attached as <table>_<shard>; the others name attached sources' tables
    fed.shard(
        "orders", key="id", method="hash", shards={"s0": urls["s0"], "s1": "pg.orders", "s2": "my"}
    )
    fed.shard(
        "users",
        key="id",
        method="range",
        shards={"lo": "pg.users", "hi": "my.users"},
        bounds=bounds,
    )
    assert {s.name: s.kind for s in fed.catalog.sources.values()} == {
        "orders_s0": "sqlite",
        "pg": "postgresql",
        "my": "mysql",
    }
    point = same(fed, monolith, "SELECT id, status, total FROM orders WHERE id = 8")
    assert [f.source for f in point.plan.fragments] == ["my"]
    for sql in [
        "SELECT status, count(*) AS n, sum(total) AS s, avg(total) AS a FROM orders GROUP BY status ORDER BY status",
        "SELECT id, status FROM orders WHERE status = 'paid' ORDER BY id",
        "SELECT min(status) AS lo, max(status) AS hi, count(DISTINCT status) AS k FROM orders",
        "SELECT id, total FROM orders ORDER BY total DESC, id LIMIT 5",
        "SELECT u.name, sum(o.total) AS spend FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id BETWEEN 20 AND 40 GROUP BY u.name ORDER BY u.name",
    ]:
        for strategy in ("naive", "pushdown"):
            same(fed, monolith, sql, strategy=strategy)
    agg = fed.sql("SELECT count(*) AS n FROM orders")
    assert sorted(f.source for f in agg.plan.fragments) == ["my", "orders_s0", "pg"]
    assert agg.trace.rows == 3
