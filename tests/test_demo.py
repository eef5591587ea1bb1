"""The embedded demo: deterministic data full of traps, files, federation, real servers.

Expected answers are computed independently with Polars on :func:`fedlab.demo.frames`
and compared with the equality rule; no number is hard-coded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

import fedlab as fl
from fedlab import demo
from fedlab.testing import assert_same_result

TABLES = {
    "users": "users.db",
    "orders": "orders.db",
    "products": "products.db",
    "inventory": "inventory.db",
}


def _dump(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.build(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def fed(built: Path) -> fl.Federation:
    return demo.federation(built, build=False)


@pytest.fixture(scope="module")
def data() -> dict[str, pl.DataFrame]:
    return demo.frames()


# ------------------------------------------------------------------ determinism
def test_frames_are_deterministic_and_scale() -> None:
    a, b = demo.frames(), demo.frames()
    for name in TABLES:
        assert a[name].equals(b[name]), name
    big = demo.frames(2)
    assert big["users"].height == 2 * a["users"].height
    assert big["orders"].height == 2 * a["orders"].height
    assert not big["orders"].head(a["orders"].height).equals(a["orders"])


def test_two_builds_are_equal(tmp_path: Path) -> None:
    one, two = demo.build(tmp_path / "one"), demo.build(tmp_path / "two")
    for file in [*TABLES.values(), "fedlab.toml"]:
        assert (one / file).is_file() and (two / file).is_file(), file
    for file in TABLES.values():
        assert _dump(one / file) == _dump(two / file), file
    assert (one / "fedlab.toml").read_text() == (two / "fedlab.toml").read_text()
    # the demo's fedlab.toml in git is exactly what build() writes
    repo_toml = Path(__file__).resolve().parent.parent / "data" / "demo" / "fedlab.toml"
    if repo_toml.is_file():
        assert repo_toml.read_text() == (one / "fedlab.toml").read_text()


def test_build_is_idempotent_and_rebuilds_on_scale_or_damage(tmp_path: Path) -> None:
    d = demo.build(tmp_path, scale=1)
    assert demo.built_scale(d) == 1
    stamp = (d / "orders.db").stat().st_mtime_ns
    assert demo.build(d, scale=1) == d.resolve()
    assert (d / "orders.db").stat().st_mtime_ns == stamp  # nothing rewritten

    demo.build(d, scale=2)
    assert demo.built_scale(d) == 2
    con = sqlite3.connect(d / "users.db")
    assert con.execute("SELECT count(*) FROM users").fetchone()[0] == demo.frames(2)["users"].height
    con.close()

    (d / "inventory.db").unlink()
    assert demo.built_scale(d) is None
    fed = demo.federation(d)  # rebuilds what is missing, at scale 1
    assert demo.built_scale(d) == 1
    assert sorted(fed.sources()["name"]) == ["catalog", "crm", "sales", "stock"]
    assert not list(d.glob(".*.tmp"))


def test_bad_scale_and_missing_build_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(fl.ConfigError, match="at least 1"):
        demo.build(tmp_path, scale=0)
    with pytest.raises(fl.MissingDatabaseFileError, match="fedlab demo"):
        demo.federation(tmp_path / "empty", build=False)
    assert not (tmp_path / "empty").exists()


# ------------------------------------------------------------------ traps
def test_traps_are_in_the_data(data: dict[str, pl.DataFrame]) -> None:
    users, orders, products = data["users"], data["orders"], data["products"]
    inventory = data["inventory"]
    assert {"paid", "PAID", "paid "} <= set(orders["status"])
    assert {"US", "us", "US "} <= set(users["country"].drop_nulls())
    assert users["country"].null_count() > 0
    assert {"Zoë", "José", "李雷"} <= set(users["name"])
    assert any(n != n.rstrip() for n in users["name"])
    assert orders["user_id"].null_count() > 0
    user_ids, product_ids = set(users["id"]), set(products["id"])
    assert set(orders["user_id"].drop_nulls()) - user_ids  # orders of unknown users
    assert set(orders["product_id"]) - product_ids  # orders of unknown products
    assert user_ids - set(orders["user_id"].drop_nulls())  # users without orders
    assert product_ids - set(inventory["product_id"])  # products never stocked
    assert set(inventory["product_id"]) - product_ids  # stock of delisted products
    titles = products["title"].to_list()
    assert any("%" in t for t in titles) and any("_" in t for t in titles)
    assert any("\\" in t for t in titles)
    assert {"Widget", "widget"} <= set(titles)
    for name, df in data.items():
        pk = demo.PRIMARY_KEYS[name]
        assert df.select(pk).is_duplicated().sum() == 0, name
    # distinct keys even for a case- and pad-insensitive collation (MariaDB's default)
    folded = inventory.select(
        "product_id", pl.col("warehouse").str.to_lowercase().str.strip_chars_end()
    )
    assert folded.is_duplicated().sum() == 0


def test_traps_survive_the_sqlite_files(fed: fl.Federation, data) -> None:
    got = fed.sql("SELECT status, count(*) AS n FROM orders GROUP BY status")
    expected = data["orders"].group_by("status").agg(n=pl.len())
    assert_same_result(got, expected)
    got = fed.sql("SELECT id, name, country, balance, signup_date, active FROM users")
    assert_same_result(got, data["users"].drop("email"))
    got = fed.sql("SELECT * FROM orders")
    assert_same_result(got, data["orders"])


# ------------------------------------------------------------------ queries vs Polars
def _seed(f: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return (
        f["users"]
        .filter(pl.col("country") == "US")
        .join(f["orders"], left_on="id", right_on="user_id")
        .select("name", "total")
    )


@pytest.mark.parametrize("strategy", ["naive", "pushdown", "auto"])
def test_seed_query_matches_polars(fed: fl.Federation, data, strategy: str) -> None:
    res = fed.sql(demo.SEED_QUERY, strategy=strategy)
    expected = _seed(data)
    assert expected.height > 0
    assert_same_result(res, expected)
    assert sorted(res.plan.sources) == ["crm", "sales"]


def _spend(f: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return (
        f["users"]
        .join(f["orders"], left_on="id", right_on="user_id")
        .group_by("country")
        .agg(spend=pl.col("total").sum(), orders=pl.len())
    )


def _orphans(f: dict[str, pl.DataFrame]) -> pl.DataFrame:
    known = f["orders"]["user_id"].is_in(f["users"]["id"].implode())
    return pl.DataFrame({"n": [f["orders"].filter(~known.fill_null(False)).height]})


def _like(f: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return (
        f["products"]
        .filter(pl.col("title").str.contains("_", literal=True))
        .join(f["inventory"], left_on="id", right_on="product_id")
        .select("title", "warehouse", "stock")
    )


QUERIES: dict[str, tuple[str, Callable[[dict[str, pl.DataFrame]], pl.DataFrame]]] = {
    "spend_by_country": (
        "SELECT u.country, sum(o.total) AS spend, count(*) AS orders "
        "FROM users u JOIN orders o ON u.id = o.user_id GROUP BY u.country",
        _spend,
    ),
    "orders_without_user": (
        "SELECT count(*) AS n FROM orders o LEFT JOIN users u ON u.id = o.user_id "
        "WHERE u.id IS NULL",
        _orphans,
    ),
    "like_underscore_escaped": (
        "SELECT p.title, i.warehouse, i.stock FROM products p "
        "JOIN inventory i ON p.id = i.product_id WHERE p.title LIKE '%\\_%'",
        _like,
    ),
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_demo_queries_match_polars(fed: fl.Federation, data, name: str) -> None:
    sql, expected = QUERIES[name]
    for strategy in ("naive", "pushdown"):
        assert_same_result(fed.sql(sql, strategy=strategy), expected(data))


# ------------------------------------------------------------------ federation()
def test_federation_attaches_four_sqlite_sources(fed: fl.Federation) -> None:
    sources = fed.sources()
    assert sources["name"].to_list() == ["crm", "sales", "catalog", "stock"]
    assert set(sources["kind"]) == {"sqlite"}
    tables = fed.tables()
    assert dict(zip(tables["source"], tables["table"], strict=True)) == {
        "crm": "users",
        "sales": "orders",
        "catalog": "products",
        "stock": "inventory",
    }
    assert tables.filter(pl.col("table") == "inventory")["primary_key"][0] == (
        "product_id, warehouse"
    )


def test_default_dir_follows_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDLAB_DEMO_DIR", str(tmp_path / "env"))
    assert demo.default_dir() == tmp_path / "env"
    fed = demo.federation()
    assert demo.built_scale(tmp_path / "env") == 1
    assert len(fed.sources()) == 4

    monkeypatch.delenv("FEDLAB_DEMO_DIR")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "demo").mkdir(parents=True)
    assert demo.default_dir() == Path("data") / "demo"

    monkeypatch.chdir(tmp_path / "data")  # no ./data/demo here: checkout, else the cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checkout = Path(demo.__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
        assert demo.default_dir() == checkout / "data" / "demo"
    else:  # pragma: no cover - an installed package
        assert demo.default_dir() == tmp_path / "cache" / "fedlab" / "demo"


# ------------------------------------------------------------------ real servers
@pytest.mark.servers
def test_load_into_spans_four_engines(tmp_path: Path, pg_database, mariadb_database, data) -> None:
    fed = demo.load_into(
        pg_database("fedlab_demo_t"), mariadb_database("fedlab_demo_t"), path=tmp_path
    )
    kinds = dict(zip(fed.sources()["name"], fed.sources()["kind"], strict=True))
    assert kinds == {"crm": "postgresql", "sales": "mysql", "catalog": "sqlite", "stock": "duckdb"}
    for strategy in ("naive", "pushdown"):
        res = fed.sql(demo.SEED_QUERY, strategy=strategy)
        assert_same_result(res, _seed(data))
        assert {e.kind for e in res.trace.entries} == {"postgresql", "mysql"}
    # MariaDB's collation folds case and trailing spaces; the answer must not
    got = fed.sql("SELECT count(*) AS n FROM orders WHERE status = 'paid'")
    assert_same_result(got, pl.DataFrame({"n": [(data["orders"]["status"] == "paid").sum()]}))
    got = fed.sql(
        "SELECT p.category, sum(i.stock) AS stock FROM products p "
        "JOIN inventory i ON p.id = i.product_id GROUP BY p.category"
    )
    expected = (
        data["products"]
        .join(data["inventory"], left_on="id", right_on="product_id")
        .group_by("category")
        .agg(stock=pl.col("stock").sum())
    )
    assert_same_result(got, expected)


@pytest.mark.servers
def test_load_into_server_url_and_refuses_foreign_tables(
    tmp_path: Path, pg_server_url: str, pg_database
) -> None:
    from fedlab.load import drop_database, write_tables
    from tests.conftest import unique_name

    name = unique_name("fedlab_demo_t")
    try:  # a server URL (…/postgres): the demo goes into a database of its own
        fed = demo.load_into(pg_server_url, path=tmp_path, duckdb=False, database=name)
        url = fed.sources().filter(pl.col("name") == "crm")["url"][0]
        assert url.endswith(f"/{name}")
        assert fed.sources().filter(pl.col("name") == "stock")["kind"][0] == "sqlite"
        fed = demo.load_into(pg_server_url, path=tmp_path, duckdb=False, database=name)
    finally:
        drop_database(pg_server_url, name)

    busy = pg_database("fedlab_demo_t")
    write_tables(busy, {"payroll": pl.DataFrame({"id": [1]})})
    with pytest.raises(fl.ConfigError, match="payroll"):
        demo.load_into(busy, path=tmp_path)
