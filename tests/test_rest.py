"""REST sources and the seed's API gateway (issue #7), over real HTTP servers on loopback.

The demo's services (:mod:`fedlab.apis`: starlette + uvicorn over the demo's SQLite files)
run on free ports; every federated answer is checked, by the equality rule, against the
monolith oracle: the same SQL run by SQLite on one file holding all the demo's tables.
No mocks: failures are real HTTP statuses from the servers (``apis.fail``), closed ports
and a socket that never answers.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

import fedlab as fl
from fedlab.apis import GATEWAY_SQL, serve_demo_apis
from fedlab.errors import (
    ConfigError,
    FedlabError,
    QueryTimeoutError,
    RestHTTPError,
    SourceUnavailableError,
)
from fedlab.resilience import RetryPolicy, is_transient
from fedlab.rest import pushdown_params
from fedlab.source import Source

TOKEN = "s3cr3t-bearer-tok3n-9f2e"


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fl.demo.build(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def apis(demo_dir: Path):
    with serve_demo_apis(demo_dir=demo_dir) as running:
        yield running


@pytest.fixture
def fresh(apis):
    apis.reset_log()
    for s in apis.services.values():
        s.fail[:] = [0, 503]
    return apis


@pytest.fixture(scope="module")
def oracle_db(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file holding the demo's four tables (the monolith)."""
    path = tmp_path_factory.mktemp("oracle") / "all.db"
    con = sqlite3.connect(path)
    try:
        for part in fl.demo.LAYOUT:
            con.execute(f"ATTACH DATABASE '{demo_dir / part.file}' AS src")
            con.execute(f'CREATE TABLE "{part.table}" AS SELECT * FROM src."{part.table}"')
            con.commit()
            con.execute("DETACH DATABASE src")
    finally:
        con.close()
    return path


def oracle(db: Path, sql: str, params: dict | None = None) -> pl.DataFrame:
    """The query run directly by SQLite on the monolith (qualifiers ``x_api.`` dropped)."""
    text = re.sub(r"\b\w+_api\.", "", sql)
    for k, v in (params or {}).items():
        text = text.replace(f":{k}", repr(v) if isinstance(v, str) else str(v))
    con = sqlite3.connect(db)
    try:
        cur = con.execute(text)
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)


def check(fed: fl.Federation, db: Path, sql: str, params=None, strategy=None):
    res = fed.sql(sql, params, strategy=strategy)
    fl.testing.assert_same_result(res.df, oracle(db, sql, params), ordered=res.plan.ordered)
    return res


def served(apis, service: str) -> list[str]:
    return [r["query"] for r in apis.requests(service)]


# ---------------------------------------------------------------------- schema
def test_meta_schema_catalog_and_seed_query(fresh, oracle_db) -> None:
    fed = fresh.federation()
    tables = {r["table"]: r for r in fed.tables().to_dicts()}
    assert set(tables) == {"users", "orders", "products"}
    assert tables["users"]["primary_key"] == "id"
    assert tables["users"]["rows_estimate"] == 100
    assert "signup_date DATE" in tables["users"]["columns"]
    assert "active BOOLEAN" in tables["users"]["columns"]
    kinds = dict(fed.sources().select("name", "kind").iter_rows())
    assert kinds == dict.fromkeys(("users_api", "orders_api", "products_api"), "rest")
    for strategy in ("naive", "pushdown", "semijoin", "auto"):
        check(fed, oracle_db, fl.demo.SEED_QUERY, strategy=strategy)
    # types as declared by _meta: dates and booleans arrive typed
    df = fed.sql("SELECT signup_date, active, balance FROM users WHERE id = 1").df
    assert df.schema == {"signup_date": pl.Date, "active": pl.Boolean, "balance": pl.Float64}


def test_inferred_schema_without_meta(fresh, oracle_db) -> None:
    fed = fl.Federation()
    fed.attach("users_api", fresh.urls["users"], kind="rest", meta=False)
    cols = fed.tables().row(0, named=True)["columns"]
    for expected in ("id BIGINT", "name TEXT", "balance DOUBLE", "signup_date DATE"):
        assert expected in cols
    assert "active BOOLEAN" in cols
    assert not any("_meta" in r["path"] for r in fresh.requests("users"))
    # no _meta: pages are followed through the body's next links (100 rows each)
    fed.attach("orders_api", fresh.urls["orders"], kind="rest", meta=False)
    fresh.reset_log()
    res = check(
        fed,
        oracle_db,
        "SELECT user_id, count(*) AS n, sum(total) AS s FROM orders GROUP BY user_id",
    )
    assert len(fresh.requests("orders")) == 6
    assert "6 requests" in res.trace.to_polars()["reader"][0]


def test_declared_schema(fresh, oracle_db) -> None:
    fed = fl.Federation()
    fed.attach(
        "users_api",
        fresh.urls["users"],
        kind="rest",
        schema={"id": "BIGINT", "name": "TEXT", "country": "TEXT"},
        filters=["country"],
        primary_key="id",
    )
    info = fed.catalog.resolve("users")
    assert [c.name for c in info.columns] == ["id", "name", "country"]
    assert info.primary_key == ["id"]
    check(fed, oracle_db, "SELECT id, name FROM users WHERE country = 'US '")
    with pytest.raises(fl.UnknownColumnError):
        fed.sql("SELECT email FROM users")


# ---------------------------------------------------------------------- pagination
@pytest.mark.parametrize("style", ["page", "offset", "next"])
def test_pagination_more_rows_than_a_page(fresh, oracle_db, style) -> None:
    fed = fl.Federation()
    fed.attach("orders_api", fresh.urls["orders"], kind="rest", pagination=style, page_size=50)
    fresh.reset_log()
    res = check(fed, oracle_db, "SELECT id, user_id, status, total FROM orders")
    assert res.df.height == 600
    queries = served(fresh, "orders")
    assert len(queries) in (12, 13)  # 600 rows / 50 (page and offset may ask once more)
    assert res.trace.to_polars()["reader"][0].startswith(f"rest ({len(queries)} requests")
    key = {"page": "per_page=50", "offset": "limit=50", "next": "per_page=50"}[style]
    assert all(key in q for q in queries)


# ---------------------------------------------------------------------- pushdown
def test_filter_pushdown_sends_params_and_moves_fewer_bytes(fresh, oracle_db) -> None:
    fed = fresh.federation()
    sql = "SELECT id, user_id, total FROM orders WHERE status = 'paid' AND user_id IN (3, 7, 35)"
    fresh.reset_log()
    pushed = check(fed, oracle_db, sql, strategy="pushdown")
    (query,) = served(fresh, "orders")
    assert "status=paid" in query and "user_id=3&user_id=7&user_id=35" in query
    reader = pushed.trace.to_polars()["reader"][0]
    assert "sent status=paid" in reader and "user_id (3 values)" in reader
    fresh.reset_log()
    naive = check(fed, oracle_db, sql, strategy="naive")
    assert "status=" not in served(fresh, "orders")[0]
    assert pushed.trace.bytes * 20 < naive.trace.bytes
    # exact text: 'paid' is not 'PAID' nor 'paid ' (the server's filter is exact too)
    check(fed, oracle_db, "SELECT count(*) AS n FROM orders WHERE status = 'paid '")
    cmp = fed.compare(sql, strategies=("naive", "pushdown", "semijoin", "auto"))
    assert cmp.table["same_result"].all()


def test_max_bytes_stops_the_paging(fresh) -> None:
    fed = fl.Federation()
    fresh.attach(fed, page_size=50)
    fresh.reset_log()
    with pytest.raises(fl.LimitExceededError, match=r"orders_api.*max_bytes=20,000") as err:
        fed.sql("SELECT id FROM orders", max_bytes=20_000)
    assert err.value.limit == "max_bytes" and err.value.source == "orders_api"
    assert len(fresh.requests("orders")) < 5  # 12 pages in all: it stopped early
    assert fed.sql("SELECT id FROM orders WHERE user_id = 3", max_bytes=20_000).df.height


def test_filters_on_undeclared_columns_stay_local(fresh, oracle_db) -> None:
    fed = fresh.federation()
    fresh.reset_log()
    check(fed, oracle_db, "SELECT id FROM orders WHERE quantity = 3 AND total > 100")
    assert served(fresh, "orders") == ["page=1&per_page=1000"]


def test_declared_decimals_are_computed_as_decimals(fresh) -> None:
    """A column declared DECIMAL(10, 2) stays a decimal in the fragment's SQL run by DuckDB,
    so a cast to INTEGER rounds halves away from zero, as PostgreSQL's NUMERIC cast (a
    float cast rounds 1514.5 to even: 1514); answers still arrive as floats."""
    from decimal import ROUND_HALF_UP, Decimal

    fed = fresh.federation()
    balances = dict(fed.sql("SELECT id, balance FROM users").df.iter_rows())
    halves = [i for i, b in balances.items() if b is not None and abs(b) % 1 == 0.5]
    assert any(int(abs(balances[i])) % 2 == 0 for i in halves)  # where half-even differs
    expected = pl.DataFrame(
        [
            (i, None if b is None else int(Decimal(str(b)).quantize(Decimal(1), ROUND_HALF_UP)))
            for i, b in balances.items()
        ],
        schema=["id", "b"],
        orient="row",
    )
    sql = "SELECT id, CAST(balance AS INTEGER) AS b FROM users ORDER BY id"
    for strategy in ("naive", "pushdown", "auto"):
        res = fed.sql(sql, strategy=strategy)
        fl.testing.assert_same_result(res.df, expected, ordered=True)
    res = fed.sql("SELECT sum(balance) AS s, max(balance) AS m FROM users", strategy="pushdown")
    assert res.df.schema == {"s": pl.Float64, "m": pl.Float64}
    assert res.df["s"][0] == pytest.approx(sum(b for b in balances.values() if b is not None))


def test_pushdown_params_rules() -> None:
    cols = [("id", "BIGINT"), ("status", "TEXT"), ("active", "BOOLEAN"), ("total", "DOUBLE")]
    filters = {"id": "id", "status": "state", "active": "active", "total": "total"}

    def params(where: str) -> dict:
        return pushdown_params(
            f'SELECT "t"."id" FROM "t" AS "t" WHERE {where}', "t", cols, filters
        )[0]

    assert params('"t"."id" = 5 AND "t"."status" = \'x\'') == {"id": ["5"], "state": ["x"]}
    assert params('"t"."id" = -2 AND "t"."active" = TRUE') == {"id": ["-2"], "active": ["true"]}
    assert params('"t"."id" IN (1, 2, 3) AND "t"."id" IN (2, 3, 4)') == {"id": ["2", "3"]}
    assert params('"t"."id" = \'5\'') == {}  # a text literal on an integer column
    assert params('"t"."total" = 1.5') == {}  # floats are never sent
    assert params('NOT "t"."id" IN (1, 2)') == {}
    assert params('"t"."id" = 1 OR "t"."id" = 2') == {}
    assert params('"t"."id" > 1') == {}
    # a table read twice, or joined, is not filtered by parameters
    two = 'SELECT a."id" FROM "t" AS a JOIN "t" AS b ON a."id" = b."id" WHERE a."id" = 1'
    assert pushdown_params(two, "t", cols, filters)[0] == {}
    # in a subquery: the WHERE of the SELECT reading the table is what counts
    sub = 'SELECT count(*) FROM (SELECT "t"."id" FROM "t" AS "t" WHERE "t"."id" = 4) AS s'
    assert pushdown_params(sub, "t", cols, filters)[0] == {"id": ["4"]}
    many = ", ".join(str(i) for i in range(20))
    got, notes = pushdown_params(
        f'SELECT "t"."id" FROM "t" AS "t" WHERE "t"."id" IN ({many})', "t", cols, filters, max_in=10
    )
    assert got == {} and "max_in" in notes[0]


# ---------------------------------------------------------------------- joins
def test_rest_join_sqlite(fresh, oracle_db, demo_dir) -> None:
    fed = fl.Federation()
    fed.attach("orders_api", fresh.urls["orders"], kind="rest")
    fed.attach("catalog", f"sqlite:///{demo_dir / 'products.db'}")
    sql = (
        "SELECT p.category, count(*) AS n, sum(o.total) AS spend FROM orders o "
        "JOIN products p ON o.product_id = p.id WHERE o.status = 'paid' GROUP BY p.category"
    )
    for strategy in ("naive", "pushdown", "semijoin", "auto"):
        check(fed, oracle_db, sql, strategy=strategy)
    # SQLite products restricted to a category: its ids go to the order API as parameters
    fresh.reset_log()
    sql = (
        "SELECT o.id, o.total, p.title FROM orders o JOIN products p ON o.product_id = p.id "
        "WHERE p.category = 'toys'"
    )
    check(fed, oracle_db, sql, strategy="semijoin")
    assert all("product_id=" in q for q in served(fresh, "orders"))


def test_rest_join_rest_with_keys_as_params(fresh, oracle_db) -> None:
    fed = fresh.federation(in_batch=10)
    sql = (
        "SELECT u.name, count(o.id) AS n, sum(o.total) AS spend FROM users u "
        "LEFT JOIN orders o ON o.user_id = u.id WHERE u.country = :c GROUP BY u.name"
    )
    fresh.reset_log()
    res = check(fed, oracle_db, sql, {"c": "US"})  # auto
    users = fed.sql("SELECT count(*) AS n FROM users WHERE country = 'US'").df["n"][0]
    queries = served(fresh, "orders")
    assert len(queries) == -(-users // 10)  # the US users' ids, 10 per request
    assert all(q.count("user_id=") <= 10 for q in queries)
    assert res.trace.bytes < 40_000
    check(fed, oracle_db, sql, {"c": "US"}, strategy="naive")
    # three REST sources in one query
    check(
        fed,
        oracle_db,
        "SELECT u.country, p.category, sum(o.quantity) AS q FROM users u JOIN orders o "
        "ON o.user_id = u.id JOIN products p ON p.id = o.product_id GROUP BY u.country, p.category",
    )


# ---------------------------------------------------------------------- the gateway
def test_gateway_flow_equals_sql(fresh, oracle_db) -> None:
    fed = fresh.federation()
    cmp = fl.apis.compare_gateway(
        fed, user_id=35, gateway=fresh.urls["gateway"], strategies=("naive", "auto")
    )
    table = {r["approach"]: r for r in cmp.table.to_dicts()}
    assert all(r["same_result"] for r in table.values()), cmp.table
    assert table["gateway (by hand)"]["calls"] == 2  # GET /users/35, GET /orders?user_id=35
    assert table["gateway service"]["calls"] == 3  # the client's call + the gateway's two
    assert table["fedlab SQL (auto)"]["calls"] == 2
    assert table["fedlab SQL (auto)"]["rows"] == table["gateway (by hand)"]["rows"] > 0
    assert table["fedlab SQL (naive)"]["bytes"] > 20 * table["fedlab SQL (auto)"]["bytes"]
    expected = oracle(
        oracle_db, GATEWAY_SQL.format(users="users_api", orders="orders_api"), {"user_id": 35}
    )
    fl.testing.assert_same_result(cmp.answers["gateway (by hand)"], expected)
    fl.testing.assert_same_result(cmp.answers["fedlab SQL (auto)"], expected)
    fig = cmp.plot()
    assert len(fig.axes) == 3
    import matplotlib.pyplot as plt

    plt.close(fig)
    # the seed's own route on the gateway, and on the order service
    body = httpx.get(f"{fresh.urls['gateway']}/api/users/35/orders").json()
    assert body["user"]["id"] == 35 and len(body["orders"]) == expected.height
    root = fresh.urls["orders"].rsplit("/", 1)[0]
    assert httpx.get(f"{root}/users/35/orders").json()["total"] == expected.height
    # a user the user API does not know: no rows anywhere
    missing = fl.apis.compare_gateway(fed, user_id=123, strategies=("auto",))
    assert missing.table["same_result"].all() and missing.table["rows"].sum() == 0
    assert httpx.get(f"{fresh.urls['gateway']}/api/users/123/orders").status_code == 404


# ---------------------------------------------------------------------- failures
def test_503_then_ok_is_retried(fresh, oracle_db) -> None:
    fed = fl.Federation(retry=RetryPolicy(attempts=3, initial=0.01, max=0.05, jitter=0.0))
    fresh.attach(fed)
    fresh.fail("orders", times=2, status=503)
    res = check(fed, oracle_db, "SELECT id, total FROM orders WHERE user_id = 7")
    assert res.trace.to_polars()["retries"][0] == 2
    assert [r["status"] for r in fresh.requests("orders")][-3:] == [503, 503, 200]
    # without retries: the 503 is a clear error naming the source and the status
    plain = fresh.federation()
    fresh.fail("orders", times=1, status=503)
    with pytest.raises(RestHTTPError) as err:
        plain.sql("SELECT id FROM orders WHERE user_id = 7")
    assert err.value.http_status == 503 and "orders_api" in str(err.value)
    assert is_transient(err.value)
    # a 4xx is permanent: never retried
    fresh.reset_log()
    fresh.fail("orders", times=1, status=404)
    with pytest.raises(RestHTTPError) as err:
        fed.sql("SELECT id FROM orders WHERE user_id = 7")
    assert err.value.http_status == 404 and not is_transient(err.value)
    assert len(fresh.requests("orders")) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_down_server_fails_fast_naming_the_source(demo_dir) -> None:
    port = _free_port()
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=r"orders_api.*not reachable"):
        fl.Federation().attach("orders_api", f"http://127.0.0.1:{port}/orders", kind="rest")
    assert time.monotonic() - t0 < 2
    # a service that goes away after attach
    apis = serve_demo_apis(demo_dir=demo_dir, services=["users"], gateway=False)
    with apis:
        fed = apis.federation(connect_timeout=1)
        assert fed.health()["up"].to_list() == [True]
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="users_api") as err:
        fed.sql("SELECT count(*) FROM users")
    assert time.monotonic() - t0 < 2
    assert is_transient(err.value)
    health = fed.health().row(0, named=True)
    assert health["up"] is False and "users_api" in health["error"]


def test_silent_server_fails_within_its_timeout() -> None:
    # accepts TCP connections (the kernel does), never answers HTTP
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/orders"
        fed = fl.Federation()
        fed.attach(
            "orders_api",
            url,
            kind="rest",
            meta=False,
            schema={"id": "BIGINT", "total": "DOUBLE"},
            row_estimate=10,
            read_timeout=0.5,
        )
        t0 = time.monotonic()
        with pytest.raises(SourceUnavailableError, match=r"orders_api.*did not answer within 0\.5"):
            fed.sql("SELECT id FROM orders")
        assert time.monotonic() - t0 < 1.5
        # the query's deadline is shorter: a timeout, not a dead source
        t0 = time.monotonic()
        with pytest.raises(QueryTimeoutError):
            fed.sql("SELECT id FROM orders", timeout=0.3)
        assert time.monotonic() - t0 < 1.2


def test_tokens_are_never_printed(demo_dir, capsys) -> None:
    url_secret = "url-k3y-0f-the-api"
    with serve_demo_apis(demo_dir=demo_dir, token=TOKEN, services=["users", "orders"]) as apis:
        fed = fl.Federation()
        for name in ("users", "orders"):
            fed.attach(
                f"{name}_api",
                apis.urls[name],
                kind="rest",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        res = fed.sql(fl.demo.SEED_QUERY)
        assert res.df.height > 0
        cmp = fl.apis.compare_gateway(fed, user_id=35, gateway=apis.urls["gateway"])
        assert cmp.table["same_result"].all()
        # without the header: 401, permanent, and the message carries no token
        bare = fl.Federation()
        with pytest.raises(RestHTTPError) as err:
            bare.attach("users_api", apis.urls["users"], kind="rest")
        assert err.value.http_status == 401 and not is_transient(err.value)
        src = Source.from_url(
            "tok",
            f"{apis.urls['users']}?access_token={url_secret}",
            kind="rest",
            headers={"X-Api-Key": "hdr-s3cret-value"},
        )
        texts = [
            repr(fed),
            fed._repr_html_(),
            str(fed.sources()),
            str(fed.sources().to_dicts()),
            str(res.plan),
            res.plan._repr_html_(),
            str(res.trace.to_polars().to_dicts()),
            str(fed.history().to_dicts()),
            str(fed.health().to_dicts()),
            repr(fed.catalog.sources["users_api"]),
            repr(fed.catalog.sources["users_api"].rest.options),
            repr(src),
            src.redacted_url,
            str(err.value),
            repr(cmp),
        ]
        fed2 = fl.Federation()
        with pytest.raises(FedlabError) as down:
            fed2.attach(
                "x",
                f"http://127.0.0.1:{_free_port()}/x?token={url_secret}",
                kind="rest",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
        texts.append(str(down.value))
    out = capsys.readouterr()
    texts += [out.out, out.err]
    for text in texts:
        assert TOKEN not in text and url_secret not in text and "hdr-s3cret" not in text, text
    assert "access_token=***" in src.redacted_url


# ---------------------------------------------------------------------- options, health
def test_bad_options_are_config_errors(fresh, demo_dir) -> None:
    url = fresh.urls["users"]
    with pytest.raises(ConfigError, match=r"unknown option.*'filtres'"):
        Source.from_url("u", url, kind="rest", filtres=["id"])
    with pytest.raises(ConfigError, match="kind='rest' needs an http"):
        Source.from_url("u", f"sqlite:///{demo_dir / 'users.db'}", kind="rest")
    with pytest.raises(ConfigError, match="pagination='pages'"):
        Source.from_url("u", url, kind="rest", pagination="pages")
    with pytest.raises(ConfigError, match="schema must be a non-empty mapping"):
        Source.from_url("u", url, kind="rest", schema=["id"])
    with pytest.raises(ConfigError, match=r"filter column\(s\) \['nope'\]"):
        fl.Federation().attach("u", url, kind="rest", filters=["nope"])
    with pytest.raises(RestHTTPError, match="404"):  # a path the service does not have
        fl.Federation().attach("u", url + "x", kind="rest", meta=False)


def test_health_ping_and_explain(fresh) -> None:
    fed = fresh.federation()
    health = fed.health()
    assert health["up"].all()
    assert health.filter(pl.col("source") == "orders_api")["version"][0].startswith(
        "fedlab demo orders"
    )
    assert fed.catalog.sources["users_api"].ping() < 2
    # the health probe's connection answers SELECT 1 and nothing else: a REST service
    # runs no SQL (a residency group-size check cannot be faked)
    con = fed.catalog.sources["users_api"].connect()
    with pytest.raises(fl.SourceError, match="runs no SQL"):
        con.cursor().execute("SELECT count(*) FROM users")
    plan = fed.explain("SELECT name FROM users WHERE id = 3")
    assert "(rest)" in str(plan) and '"users"."id" = 3' in str(plan)


def test_no_threads_or_sockets_left(demo_dir) -> None:
    before = {t.name for t in threading.enumerate()}
    apis = serve_demo_apis(demo_dir=demo_dir)
    urls = dict(apis.urls)
    thread = apis._thread
    assert thread is not None and thread.is_alive()
    apis.close()
    assert not thread.is_alive()
    assert {t.name for t in threading.enumerate()} <= before
    with pytest.raises(httpx.ConnectError):
        httpx.get(urls["users"], timeout=1)


def test_serve_demo_apis_command(demo_dir) -> None:
    port = _free_port()
    # the four ports must be free: pick a base whose next three are free too
    for _ in range(20):
        try:
            socks = []
            for i in range(4):
                s = socket.socket()
                s.bind(("127.0.0.1", port + i))
                socks.append(s)
            break
        except OSError:
            port = _free_port()
        finally:
            for s in socks:
                s.close()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedlab",
            "serve-demo-apis",
            "--port-base",
            str(port),
            "--demo-dir",
            str(demo_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if 'fed.attach("products_api"' in line:
                break
        text = "".join(lines)
        assert f"http://127.0.0.1:{port}/users" in text, text + proc.stderr.read()
        assert f"http://127.0.0.1:{port + 1}/orders" in text
        body = httpx.get(f"http://127.0.0.1:{port + 1}/orders/_meta", timeout=5).json()
        assert body["name"] == "orders" and "user_id" in body["filters"]
        gw = httpx.get(f"http://127.0.0.1:{port + 3}/api/users/35/orders", timeout=5)
        assert gw.status_code == 200 and gw.json()["gateway"]["calls"] == 2
    finally:
        proc.send_signal(2)  # SIGINT: Ctrl-C
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0


def test_residency_refuses_an_aggregate_only_rest_source(fresh) -> None:
    """A REST service sends rows, so an aggregate-only source behind it can give nothing
    (whatever k): the plan is refused before any request, naming the rule and table."""
    fed = fl.Federation()
    fed.attach("orders_api", fresh.urls["orders"], kind="rest", tags={"region": "EU"})
    fed.policy(residency={"EU": "aggregate-only"}, k=1)
    fresh.reset_log()
    with pytest.raises(fl.ResidencyError, match="REST service") as ei:
        fed.sql("SELECT status, count(*) AS n FROM orders GROUP BY status")
    assert ei.value.source == "orders_api" and "aggregate-only" in str(ei.value)
    assert fresh.requests("orders") == []  # nothing was fetched
