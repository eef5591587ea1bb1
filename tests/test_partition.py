"""Partitioned reads: which fragments are split (no server needed), and real reads that agree."""

from __future__ import annotations

import polars as pl
import pytest
from sqlglot import exp

import fedlab as fl
import fedlab.sql.partition as partition
from fedlab.catalog import ColumnInfo, TableInfo
from fedlab.execute.fetch import partition_queries
from fedlab.load import write_tables
from fedlab.source import Source
from fedlab.sql.partition import assign_partitions, partition_for
from fedlab.sql.plan import Fragment, Plan

BIG = 1_000_000


def col(name: str, t: str = "BIGINT") -> ColumnInfo:
    return ColumnInfo(name, t.lower(), exp.DataType.build(t))


def table(source: str, name: str = "events", **kw) -> TableInfo:
    cols = kw.pop("columns", [col("id"), col("user_id"), col("kind", "TEXT")])
    kw.setdefault("primary_key", ["id"])
    kw.setdefault("row_estimate", BIG)
    kw.setdefault("key_ranges", {"id": (1, BIG)})
    return TableInfo(source, name, cols, **kw)


def federation(**tables: TableInfo) -> fl.Federation:
    """Sources with known schemas, no server: pg (PostgreSQL), my (MariaDB), lite (SQLite)."""
    urls = {
        "pg": "postgresql://u@127.0.0.1:5432/db",
        "my": "mysql://u@127.0.0.1:3306/db",
        "lite": "sqlite:///:memory:",
    }
    fed = fl.Federation(max_workers=8)
    for source, url in urls.items():
        src = Source.from_url(source, url) if source != "lite" else _sqlite(source)
        mine = [t for t in tables.values() if t.source == source]
        if mine:
            fed.catalog.add_static(src, mine)
    return fed


def _sqlite(name: str) -> Source:
    return Source(name=name, kind="sqlite", dialect="sqlite", path=None)


def only(plan: Plan) -> Fragment:
    assert len(plan.fragments) == 1
    return plan.fragments[0]


# ---------------------------------------------------------------------- assignment rules
def test_large_postgres_table_read_is_partitioned_and_explained(monkeypatch) -> None:
    monkeypatch.setattr(partition.os, "cpu_count", lambda: 8)
    fed = federation(a=table("pg"))
    plan = fed.explain("SELECT id, kind FROM pg.events")
    f = only(plan)
    assert f.partition == ("id", 1, BIG, partition.MAX_PARTITIONS)
    assert "partitioned read: 4 ranges on id" in str(plan)
    # a join across sources: the large side's single-table fragment is split, the other not
    fed = federation(a=table("pg"), b=table("my", "users", row_estimate=10))
    plan = fed.explain(
        "SELECT e.kind, u.id FROM pg.events e JOIN my.users u ON e.user_id = u.id",
        strategy="pushdown",
    )
    parts = {f.source: f.partition for f in plan.fragments}
    assert parts == {"pg": None, "my": None}  # the key (id) is not read from events
    join = "SELECT e.id, u.id FROM pg.events e JOIN my.users u ON e.user_id = u.id"
    plan = fed.explain(join, strategy="pushdown")
    parts = {f.source: f.partition for f in plan.fragments}
    assert parts == {"pg": ("id", 1, BIG, 4), "my": None}
    # keys shipped into the large side at run time (a WHERE): not split
    plan = fed.explain(join, strategy="semijoin")
    assert all(f.partition is None for f in plan.fragments if "WHERE" in f.sql)
    # the same source: the join is pushed whole, not a single-table read
    fed = federation(a=table("pg"), b=table("pg", "users", row_estimate=10))
    plan = fed.explain("SELECT e.id, u.id FROM pg.events e JOIN pg.users u ON e.user_id = u.id")
    assert only(plan).partition is None


def test_partitions_capped_by_cpus_and_workers() -> None:
    fed = federation(a=table("pg"))
    f = only(fed.explain("SELECT id FROM pg.events"))
    f.partition = None
    assert partition_for(f, fed.catalog, cpus=2)[3] == 2
    assert partition_for(f, fed.catalog, cpus=16)[3] == partition.MAX_PARTITIONS
    assert partition_for(f, fed.catalog, cpus=16, max_workers=3)[3] == 3
    assert partition_for(f, fed.catalog, cpus=16, max_workers=1) is None
    assert partition_for(f, fed.catalog, cpus=1) is None


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT id FROM pg.events WHERE kind = 'x'", "a filter: the estimate is an upper bound"),
        ("SELECT kind FROM pg.events", "the key is not among the outputs"),
        ("SELECT id FROM pg.events ORDER BY id LIMIT 10", "order and limit"),
        ("SELECT count(*) FROM pg.events", "an aggregate"),
        ("SELECT DISTINCT id FROM pg.events", "distinct"),
        ("SELECT id FROM pg.small", "below the threshold"),
        ("SELECT id FROM my.events", "MariaDB: off by default (did not pay)"),
        ("SELECT id FROM pg.nokey", "no primary key"),
        ("SELECT id FROM pg.twokeys", "composite key"),
        ("SELECT id FROM pg.textkey", "text key"),
        ("SELECT id FROM pg.norange", "no key range in the catalog"),
    ],
)
def test_fragments_that_are_not_partitioned(sql: str, why: str) -> None:
    fed = federation(
        a=table("pg"),
        b=table("pg", "small", row_estimate=partition.PARTITION_MIN_ROWS["postgresql"]),
        c=table("my"),
        d=table("pg", "nokey", primary_key=[], key_ranges={}),
        e=table("pg", "twokeys", primary_key=["id", "user_id"]),
        f=table("pg", "textkey", columns=[col("id", "TEXT")], key_ranges={"id": ("a", "z")}),
        g=table("pg", "norange", key_ranges={}),
    )
    plan = fed.explain(sql)
    assert all(f.partition is None for f in plan.fragments), why
    assert "partitioned read" not in str(plan)


def test_naive_plans_are_never_partitioned() -> None:
    fed = federation(a=table("pg"))
    assert only(fed.explain("SELECT id FROM pg.events", strategy="naive")).partition is None


def test_thresholds_can_switch_mariadb_on_and_sqlite_stays_off() -> None:
    fed = federation(a=table("my"))
    f = only(fed.explain("SELECT id, kind FROM my.events"))
    assert f.partition is None
    plan = Plan("", "pushdown", [f], None, None)
    assign_partitions(plan, fed.catalog, max_workers=2, min_rows={"mysql": 1000})
    assert f.partition == ("id", 1, BIG, 2)
    lite = Fragment(
        "f1", "lite", "sqlite", "SELECT id FROM events", [("id", exp.DataType.build("INT"))]
    )
    assert partition_for(lite, fed.catalog, min_rows={"sqlite": 1}) is None


def test_partition_queries_cover_every_key_once() -> None:
    f = Fragment(
        "f1",
        "my",
        "mysql",
        "SELECT `t`.`id` AS `id` FROM `t` AS `t`",
        [("id", exp.DataType.build("INT"))],
        partition=("id", 1, 10, 3),
    )
    qs = partition_queries(f)
    assert len(qs) == 3 and all(q.startswith("SELECT * FROM (SELECT `t`") for q in qs)
    assert "fedlab_part.`id` IS NULL OR fedlab_part.`id` < 4" in qs[0]  # open below
    assert qs[1].endswith("fedlab_part.`id` >= 4 AND fedlab_part.`id` < 7")
    assert qs[2].endswith("fedlab_part.`id` >= 7")  # open above
    f.partition = ("id", 5, 5, 4)  # one key: nothing to split
    assert partition_queries(f) == [f.sql]
    f.partition = None
    assert partition_queries(f) == [f.sql]


# ---------------------------------------------------------------------- real servers
N = 3000


def _data() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": list(range(1, N + 1)),
            "user_id": [i % 97 for i in range(N)],
            "kind": [None if i % 11 == 0 else f"k{i % 5}" for i in range(N)],
            "amount": [i * 0.25 for i in range(N)],
        }
    )


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request, pg_database, mariadb_database) -> str:
    make = pg_database if request.param == "postgresql" else mariadb_database
    url = make("fedlab_part")
    write_tables(url, {"events": _data()}, primary_keys={"events": ["id"]})
    return url


def test_partitioned_read_equals_plain_read_and_misses_no_row(server_url, monkeypatch) -> None:
    fed = fl.Federation()
    fed.attach("db", server_url)
    kind = fed.catalog.sources["db"].kind
    q = "SELECT id, user_id, kind, amount FROM db.events"
    plain = fed.sql(q)
    assert plain.plan.fragments[0].partition is None  # 3,000 rows: below the threshold
    # rows written after attach, outside the catalog's cached min/max
    con = fed.catalog.sources["db"].connect(read_only=False)
    try:
        cur = con.cursor()
        cur.execute(
            "INSERT INTO events (id, user_id, kind, amount) VALUES "
            "(-5, 1, 'low', 1.5), (0, 2, NULL, 2.5), (999999, 3, 'high', 3.5)"
        )
        con.commit()
    finally:
        con.close()
    plain = fed.sql(q)
    assert plain.df.height == N + 3
    monkeypatch.setitem(partition.PARTITION_MIN_ROWS, kind, 1000)
    monkeypatch.setattr(partition.os, "cpu_count", lambda: 4)
    split = fed.sql(q, timeout=30)  # a deadline: every range session gets the timeout
    f = split.plan.fragments[0]
    assert f.partition == ("id", 1, N, 4)
    assert split.trace.entries[0].reader == "connectorx (4 ranges)"
    assert split.df.height == N + 3
    fl.testing.assert_same_result(split.df, plain.df)
    assert split.df.schema == plain.df.schema
    # a join of two partitioned reads of the same table (self join, two fragments)
    j = fed.sql(
        "SELECT a.id, b.kind FROM db.events a JOIN db.events b ON a.id = b.id",
        strategy="pushdown",
    )
    assert j.df.height == N + 3
