"""fedlab.fdw: a real PostgreSQL hub with postgres_fdw and mysql_fdw over real sources.

The placement: ``crm.users`` on PostgreSQL (postgres_fdw), ``sales.orders`` on MariaDB read
by a user with a password (mysql_fdw), ``cat.products`` / ``cat.inventory`` in a SQLite
file (copied into the hub). Answers are checked against the monolith oracle (one
PostgreSQL database holding all four tables, read with psycopg), as in test_oracle.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import psycopg
import pytest

import fedlab as fl
from fedlab.errors import FdwError, FedlabError, NoFdwHubError
from fedlab.load import write_tables
from tests.conftest import _require_servers
from tests.oracle_data import PRIMARY_KEYS, frames
from tests.test_oracle import PARAM_LITERALS, PARAMS, QUERIES, is_ordered

pytestmark = pytest.mark.servers

SECRET = f"fdw-S3cret-{uuid.uuid4().hex[:8]}"
#: oracle queries whose answer the hub gets right on this placement (no text comparison,
#: sort or grouping that mysql_fdw evaluates on MariaDB): joins over all three engines,
#: NULL semantics, windows, parameters
SAFE = (
    "seed_join",
    "four_way_join",
    "left_join_null_keys",
    "not_in_with_null",
    "window_running_sum",
    "params_bound",
    "integer_division",
    "order_nulls_asc",
)
PAID = "SELECT id, status FROM orders WHERE status = 'paid' ORDER BY id"


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _frame(con: Any, sql: str) -> pl.DataFrame:
    cur = con.execute(sql)
    cols = [d.name for d in cur.description]
    rows = cur.fetchall()
    return pl.DataFrame(
        [list(r) for r in zip(*rows, strict=True)] if rows else [[] for _ in cols],
        schema=cols,
        orient="col",
        strict=False,
        infer_schema_length=None,
    )


@pytest.fixture(scope="module")
def fdw_available(pg_server_url: str) -> None:
    with psycopg.connect(pg_server_url, autocommit=True) as con:
        have = {
            r[0]
            for r in con.execute(
                "SELECT name FROM pg_available_extensions "
                "WHERE name IN ('postgres_fdw', 'mysql_fdw')"
            )
        }
    if have != {"postgres_fdw", "mysql_fdw"}:
        msg = f"FDW extensions missing on the server: have {sorted(have)} (run scripts/setup.sh)"
        if _require_servers():
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def world(fdw_available, pg_database, mariadb_database, tmp_path_factory) -> Iterator[dict]:
    """The sources, the monolith, an empty hub database and the MariaDB password user."""
    import pymysql

    data = frames()
    crm = pg_database("fedlab_fdw")
    write_tables(crm, {"users": data["users"]}, primary_keys=PRIMARY_KEYS)
    sales = mariadb_database("fedlab_fdw")
    write_tables(sales, {"orders": data["orders"]}, primary_keys=PRIMARY_KEYS)
    lite = f"sqlite:///{tmp_path_factory.mktemp('fdw') / 'cat.sqlite'}"
    write_tables(
        lite,
        {"products": data["products"], "inventory": data["inventory"]},
        primary_keys=PRIMARY_KEYS,
    )
    mono = pg_database("fedlab_fdw_mono")
    write_tables(mono, data, primary_keys=PRIMARY_KEYS)
    hub = pg_database("fedlab_fdw_hub")
    user = f"fedlab_fdw_{uuid.uuid4().hex[:8]}"
    db = urlsplit(sales).path.lstrip("/")
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{SECRET}'")
                cur.execute(f"GRANT SELECT ON `{db}`.* TO '{user}'@'{host}'")
        yield {
            "crm": crm,
            "sales": _with_user(sales, user, SECRET),
            "lite": lite,
            "mono": mono,
            "hub": hub,
        }
    finally:
        with admin.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        admin.close()


def _federation(world: dict) -> fl.Federation:
    fed = fl.Federation()
    fed.attach("crm", world["crm"])
    fed.attach("sales", world["sales"])
    fed.attach("cat", world["lite"])
    return fed


@pytest.fixture(scope="module")
def fed(world) -> fl.Federation:
    return _federation(world)


@pytest.fixture(scope="module")
def hub(fed, world) -> Iterator[fl.fdw.FdwHub]:
    h = fl.fdw.setup(fed, world["hub"], verbose=False)
    yield h
    h.teardown()


@pytest.fixture(scope="module")
def oracle(world) -> Iterator[Any]:
    con = psycopg.connect(world["mono"], autocommit=True)
    yield lambda sql: _frame(con, sql)
    con.close()


# ---------------------------------------------------------------------- DDL and secrets
def test_ddl_shows_wrappers_and_options_but_no_password(fed, world) -> None:
    text = fl.fdw.ddl(fed, hub=world["hub"])
    assert SECRET not in text
    assert "password '***'" in text  # the mapping says a password is there, not what it is
    assert "CREATE EXTENSION IF NOT EXISTS postgres_fdw" in text
    assert "CREATE EXTENSION IF NOT EXISTS mysql_fdw" in text
    assert "FOREIGN DATA WRAPPER postgres_fdw" in text and "FOREIGN DATA WRAPPER mysql_fdw" in text
    assert "use_remote_estimate 'true'" in text and "fetch_size '10000'" in text
    assert "IMPORT FOREIGN SCHEMA public LIMIT TO (users)" in text
    assert (
        "INTO sales" in text and "CREATE USER MAPPING FOR CURRENT_USER SERVER fedlab_sales" in text
    )
    assert "CREATE TABLE cat.products" in text and "COPY cat.products FROM STDIN" in text
    # the same without a hub, and with other options: nothing connects, nothing leaks
    other = fl.fdw.ddl(fed, schema_prefix="t_", copy_sqlite=False, fetch_size=500)
    assert SECRET not in other and "INTO t_crm" in other and "fetch_size '500'" in other
    assert "skipped: copy_sqlite=False" in other and "CREATE TABLE" not in other


def test_setup_keeps_the_password_in_the_user_mapping_only(hub, world) -> None:
    texts = [hub.ddl(), repr(hub), hub._repr_html_(), "\n".join(hub.messages)]
    assert all(SECRET not in t for t in texts)
    # the mapping holds it (mysql_fdw logs in with it: the query below works) ...
    assert hub.sql("SELECT count(*) AS n FROM sales.orders", measure=False).df["n"][0] == 400
    with psycopg.connect(world["hub"], autocommit=True) as con:
        opts = con.execute(
            "SELECT umoptions FROM pg_user_mappings WHERE srvname = 'fedlab_sales'"
        ).fetchone()[0]
        # ... and no statement the hub saw carries it: setup bound it as a parameter
        stmts = con.execute(
            "SELECT coalesce(string_agg(query, ' '), '') FROM pg_stat_activity"
        ).fetchone()[0]
    assert f"password={SECRET}" in opts
    assert SECRET not in stmts


def test_errors_carry_no_password(fed, hub) -> None:
    with pytest.raises(FedlabError) as err:
        hub.sql("SELECT no_such_column FROM sales.orders")
    assert isinstance(err.value, FdwError) and "no_such_column" in str(err.value)
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)


# ---------------------------------------------------------------------- answers
@pytest.mark.parametrize("name", SAFE)
def test_hub_answers_equal_the_oracle(name: str, hub, oracle) -> None:
    sql = QUERIES[name]
    params = {k: v for k, v in PARAMS.items() if f":{k}" in sql} or None
    ref = sql
    for k, v in PARAM_LITERALS.items():
        ref = ref.replace(f":{k}", v)
    got = hub.sql(sql, params, measure=False)
    fl.testing.assert_same_result(got.df, oracle(ref), ordered=is_ordered(sql))


def test_translation_maps_sources_to_hub_schemas(hub) -> None:
    # bare names resolve as fedlab resolves them; CTE names are left alone
    sql = "WITH big AS (SELECT * FROM orders WHERE total > 100) SELECT count(*) FROM big"
    assert hub.translate(sql) == (
        "WITH big AS (SELECT * FROM sales.orders WHERE total > 100) SELECT COUNT(*) FROM big"
    )
    assert "crm.users" in hub.translate("SELECT id FROM users WHERE country = :c", {"c": "US"})
    assert hub.tables["cat.products"] == "cat.products"
    assert hub.copied == {"cat.inventory": 90, "cat.products": 30}


def test_explain_verbose_shows_what_each_wrapper_pushed(hub) -> None:
    text = hub.explain(QUERIES["seed_join"])
    assert "Foreign Scan" in text
    assert "Remote SQL:" in text  # postgres_fdw
    assert "Remote query:" in text  # mysql_fdw
    assert "country = 'US'" in text  # the filter went to PostgreSQL
    res = hub.sql(QUERIES["seed_join"])
    scans = res.plan.pushed()
    assert set(scans["source"]) == {"crm", "sales"}
    assert "filter" in scans.filter(pl.col("source") == "crm")["pushed"][0]
    moved = res.trace.by_source()
    assert set(moved["source"]) == {"crm", "sales", "hub"}
    assert 0 < moved.filter(pl.col("source") == "sales")["rows"][0] <= 400
    assert res.trace.bytes > 0 and res.bytes_basis == "estimate"


# ---------------------------------------------------------------------- compare
def test_compare_runs_the_hub_next_to_fedlab(fed, hub, oracle) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sql = QUERIES["four_way_join"]
    cmp = fed.compare(sql, strategies=("pushdown", "fdw"))
    t = cmp.table
    assert t["strategy"].to_list() == ["pushdown", "fdw"]
    assert t["same_result"].to_list() == [True, True]
    assert t["bytes_basis"].to_list() == ["arrow", "estimate"]
    assert t.filter(pl.col("strategy") == "fdw")["rows"][0] > 0
    assert all(v > 0 for v in t["total_s"])
    fl.testing.assert_same_result(cmp.results["fdw"], oracle(sql), ordered=is_ordered(sql))
    assert "EXPLAIN (VERBOSE)" in cmp.explain("fdw") and "Foreign Scan" in cmp.explain("fdw")
    assert cmp.explain("pushdown").startswith("Plan [pushdown]")
    assert set(cmp.pushed()["strategy"]) == {"pushdown", "fdw"}
    html = cmp._repr_html_()
    assert "plans side by side" in html and "Foreign Scan" in html and SECRET not in html
    plt.close(cmp.plot())


def test_mysql_fdw_pushes_text_equality_to_mariadb_collation(fed, hub, oracle) -> None:
    """The trap: mysql_fdw sends ``status = 'paid'`` to MariaDB, whose default collation
    (utf8mb4_general_ci, PAD SPACE) also matches 'PAID', 'Paid' and 'paid '. fedlab keeps
    PostgreSQL semantics; compare's same_result shows the hub's answer is different."""
    expected = oracle(PAID)
    assert set(expected["status"]) == {"paid"}
    cmp = fed.compare(PAID, strategies=("pushdown", "fdw"))
    fl.testing.assert_same_result(cmp.results["pushdown"], expected, ordered=True)
    row = cmp.table.filter(pl.col("strategy") == "fdw").row(0, named=True)
    assert row["same_result"] is False
    assert "row counts differ" in row["difference"]
    assert cmp.mismatches == ["fdw"]
    got = cmp.results["fdw"].df
    assert {"paid", "PAID", "Paid", "paid "} <= set(got["status"])
    assert got.height > expected.height
    # the hub did not filter: the comparison ran on MariaDB
    assert "WHERE ((`status` = 'paid'))" in cmp.explain("fdw")
    ok, why = fl.testing.same_result(got, expected, ordered=True)
    assert not ok and why


def test_mysql_fdw_sorted_stream_breaks_distinct(fed, hub, oracle) -> None:
    """A second face of the collation: the hub asks MariaDB for rows ORDER BY status and
    removes adjacent duplicates (Unique); MariaDB's order interleaves 'paid' and 'PAID',
    so the same value comes back many times."""
    sql = "SELECT DISTINCT status FROM orders"
    expected = oracle(sql)
    got = hub.sql(sql, measure=False).df
    ok, _ = fl.testing.same_result(got, expected)
    assert not ok and got.height > expected.height
    assert "ORDER BY `status`" in hub.explain(sql)
    fl.testing.assert_same_result(fed.sql(sql).df, expected)


def test_compare_without_a_hub_says_what_to_do(world) -> None:
    fed = fl.Federation()
    fed.attach("cat", world["lite"])
    with pytest.raises(NoFdwHubError, match=r"fl\.fdw\.setup"):
        fed.compare("SELECT count(*) FROM products", strategies=("pushdown", "fdw"))


# ---------------------------------------------------------------------- copies, skips, life cycle
def test_sqlite_skipped_with_a_message_then_torn_down(world, capsys) -> None:
    fed = _federation(world)
    h = fl.fdw.setup(fed, world["hub"], schema_prefix="fl2_", copy_sqlite=False)
    try:
        out = capsys.readouterr().out
        assert "source 'cat' (sqlite) skipped: copy_sqlite=False" in out
        assert set(h.skipped) == {"cat"} and h.copied == {}
        assert fed.fdw_hub is h
        with pytest.raises(FdwError, match=r"cat\.products is not on the FDW hub.*copy_sqlite"):
            h.sql("SELECT * FROM products")
        assert h.translate("SELECT id FROM crm.users") == "SELECT id FROM fl2_crm.users"
        assert h.sql("SELECT count(*) AS n FROM users", measure=False).df["n"][0] == 60
    finally:
        h.teardown()
    assert fed.fdw_hub is None and "torn down" in repr(h)
    with psycopg.connect(world["hub"], autocommit=True) as con:
        left = con.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'fl2\\_%'"
        ).fetchone()[0]
        servers = con.execute(
            "SELECT count(*) FROM pg_foreign_server WHERE srvname LIKE 'fedlab\\_fl2\\_%'"
        ).fetchone()[0]
    assert (left, servers) == (0, 0)
    with pytest.raises(FdwError, match="torn down"):
        h.sql("SELECT 1 FROM users")


def test_setup_never_drops_a_schema_it_did_not_make(world) -> None:
    fed = fl.Federation()
    fed.attach("cat", world["lite"])
    with psycopg.connect(world["hub"], autocommit=True) as con:
        con.execute("CREATE SCHEMA mine_cat")
        con.execute("CREATE TABLE mine_cat.keep (x int)")
    try:
        with pytest.raises(FdwError, match=r"'mine_cat'.*did not create"):
            fl.fdw.setup(fed, world["hub"], schema_prefix="mine_", verbose=False)
        with psycopg.connect(world["hub"], autocommit=True) as con:
            assert con.execute("SELECT count(*) FROM mine_cat.keep").fetchone()[0] == 0
    finally:
        with psycopg.connect(world["hub"], autocommit=True) as con:
            con.execute("DROP SCHEMA mine_cat CASCADE")


def test_hub_must_be_postgresql(fed, world) -> None:
    with pytest.raises(FdwError, match="must be a PostgreSQL database"):
        fl.fdw.setup(fed, world["lite"])
