"""The GraphQL gateway (issue #7), over real HTTP with a GraphQL client (gql + httpx).

The gateway (:mod:`fedlab.gateway`) runs under uvicorn on a free loopback port; every
answer is flattened to a frame and checked, by the equality rule
(``fl.testing.assert_same_result``), against the monolith oracle: the same question as
SQL on one database holding all the tables (a SQLite file for the embedded demo, a
PostgreSQL database for the test over real servers), read without fedlab. The batching
tests read the count of federated queries from the response's ``extensions.fedlab``.
"""

from __future__ import annotations

import datetime as dt
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXTransport

import fedlab as fl
from fedlab.gateway import Gateway, GatewayError, graphql_name, serve, singular

SEED_GRAPHQL = "{ user(id: 35) { name orders { total } } }"
SEED_ID = 35


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fl.demo.build(tmp_path_factory.mktemp("gql_demo"))


@pytest.fixture(scope="module")
def demo_fed(demo_dir: Path) -> fl.Federation:
    return fl.demo.federation(demo_dir, build=False)


@pytest.fixture(scope="module")
def server(demo_fed: fl.Federation):
    with serve(demo_fed) as running:
        yield running


@pytest.fixture(scope="module")
def oracle_db(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file holding the demo's four tables (the monolith)."""
    path = tmp_path_factory.mktemp("gql_oracle") / "all.db"
    con = sqlite3.connect(path)
    try:
        for part in fl.demo.LAYOUT:
            con.execute("ATTACH DATABASE ? AS src", (str(demo_dir / part.file),))
            con.execute(f'CREATE TABLE "{part.table}" AS SELECT * FROM src."{part.table}"')
            con.commit()
            con.execute("DETACH DATABASE src")
    finally:
        con.close()
    return path


def oracle(db: Path, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """``sql`` run by SQLite on the monolith, parameters bound by sqlite3."""
    con = sqlite3.connect(db)
    try:
        cur = con.execute(sql, params or {})
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)


def client(url: str, *, schema: bool = True) -> Client:
    """A gql client over httpx; with ``schema`` it introspects the gateway first and
    validates queries against it (as a real GraphQL client does)."""
    return Client(transport=HTTPXTransport(url=url, timeout=60), fetch_schema_from_transport=schema)


def run(url: str, query: str, variables: dict[str, Any] | None = None, *, schema: bool = True):
    """The ExecutionResult (data + extensions) of one request through gql."""
    with client(url, schema=schema) as session:
        return session.execute(
            GraphQLRequest(query, variable_values=variables), get_execution_result=True
        )


def frame(rows: list[dict[str, Any]], schema: list[str]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema, orient="row", infer_schema_length=None)


def flatten_user_orders(users: list[dict[str, Any]], *fields: str) -> pl.DataFrame:
    """users[*].orders[*] as (user fields..., order fields...): an inner join's rows."""
    rows = [
        {**{f"u_{k}": v for k, v in u.items() if k != "orders"}, **o}
        for u in users
        for o in u["orders"]
    ]
    return frame(rows, list(fields)) if rows else pl.DataFrame(schema=list(fields))


# ---------------------------------------------------------------------- names
def test_naming_rules() -> None:
    assert [singular(n) for n in ("users", "orders", "categories", "boxes", "addresses")] == [
        "user",
        "order",
        "category",
        "box",
        "address",
    ]
    assert [singular(n) for n in ("inventory", "status", "analysis", "class")] == [
        "inventory",
        "status",
        "analysis",
        "class",
    ]
    assert graphql_name("order total") == "order_total"
    assert graphql_name("2fa") == "_2fa"
    assert graphql_name("__secret") == "f__secret"


def test_schema_from_the_catalog(demo_fed: fl.Federation) -> None:
    gw = Gateway(demo_fed)
    sdl = gw.sdl
    for text in (
        "type User {",
        "type Order {",
        "type Product {",
        "type Inventory {",
        "user(id: BigInt!): User",
        "inventory(product_id: BigInt!, warehouse: String!): Inventory",
        "user: User",  # on Order (parent)
        "total: Float",
        "signup_date: Date",
        "ordered_at: DateTime",
        "active: Boolean",
        "scalar BigInt",
    ):
        assert text in sdl, text
    user_orders = gw.schema.type_map["User"].fields["orders"]  # children, with filter args
    assert str(user_orders.type) == "[Order!]" and {"status", "limit"} <= set(user_orders.args)
    assert "inventoryList(" in sdl  # a table named in the singular: list field gets "List"
    rels = {str(r) for r in gw.relations}
    assert rels == {
        "sales.orders.user_id -> crm.users.id (inferred)",
        "sales.orders.product_id -> catalog.products.id (inferred)",
        "stock.inventory.product_id -> catalog.products.id (inferred)",
    }
    none = Gateway(demo_fed, infer_relations=False)
    assert none.relations == [] and "orders" not in none.schema.type_map["User"].fields


def test_declared_relations_are_checked(demo_fed: fl.Federation) -> None:
    gw = Gateway(
        demo_fed, relations=[("sales.orders.user_id", "crm.users.id")], infer_relations=False
    )
    assert [str(r) for r in gw.relations] == ["sales.orders.user_id -> crm.users.id (declared)"]
    with pytest.raises(GatewayError, match="has no column 'nope'"):
        Gateway(demo_fed, relations=[("orders.nope", "users.id")])
    with pytest.raises(GatewayError, match="is not a table of the gateway"):
        Gateway(demo_fed, relations=[("orderz.user_id", "users.id")])
    with pytest.raises(GatewayError, match="one kind"):
        Gateway(demo_fed, relations=[("orders.status", "users.id")])
    assert issubclass(GatewayError, fl.FedlabError)


# ---------------------------------------------------------------------- the seed's query
def test_seed_query_over_http(server, oracle_db: Path) -> None:
    # the seed asks for user 123; the demo (scale 1) has users 1..100: user 35 has orders.
    # The demo's orders keep their amount in `total`, so the seed's field name fits as is.
    res = run(server.url, SEED_GRAPHQL)
    user = res.data["user"]
    got = frame([{"name": user["name"], **o} for o in user["orders"]], ["name", "total"])
    expected = oracle(
        oracle_db,
        "SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id "
        "WHERE u.id = :id ORDER BY o.id",
        {"id": SEED_ID},
    )
    assert expected.height >= 2
    fl.testing.assert_same_result(got, expected, ordered=True)  # children ordered by id
    ext = res.extensions["fedlab"]
    assert ext["queries"] == 2 and ext["batching"] is True
    first, second = ext["log"]
    assert first["field"] == "Query.user" and second["field"] == "User.orders"
    assert [f["source"] for f in first["fragments"]] == ["crm"]
    assert [f["source"] for f in second["fragments"]] == ["sales"]
    assert second["rows"] == expected.height and second["bytes"] > 0
    # values are bound, never pasted into the text the gateway hands to fedlab
    assert "35" not in first["sql"] and first["params"] == {"k": [35]}
    # only the columns asked for are fetched (projection pushed to the sources)
    assert '"email"' not in first["fragments"][0]["sql"]


def test_unknown_id_is_null(server) -> None:
    assert run(server.url, "{ user(id: 999999) { name } }").data == {"user": None}


# ---------------------------------------------------------------------- batching
BATCH_QUERY = '{ users(country: "US", limit: 10) { id name orders { id total } } }'
BATCH_SQL = (
    "SELECT u.id AS u_id, u.name AS u_name, o.id, o.total "
    "FROM (SELECT * FROM users WHERE country = 'US' ORDER BY id LIMIT 10) u "
    "JOIN orders o ON o.user_id = u.id"
)


def test_batching_replaces_n_plus_1(server, oracle_db: Path) -> None:
    batched = run(server.url, BATCH_QUERY)
    users = batched.data["users"]
    assert len(users) == 10
    expected = oracle(oracle_db, BATCH_SQL)
    fl.testing.assert_same_result(
        flatten_user_orders(users, "u_id", "u_name", "id", "total"), expected
    )
    ext = batched.extensions["fedlab"]
    assert ext["queries"] == 2
    children = ext["log"][1]
    assert children["field"] == "User.orders" and children["keys"] == 10
    assert " IN (:k)" in children["sql"] and sorted(children["params"]["k"]) == sorted(
        u["id"] for u in users
    )

    # the same request without batching (?batching=0): one query per user, N+1 = 11
    naive = run(server.url + "?batching=0", BATCH_QUERY)
    assert naive.data == batched.data
    ext_off = naive.extensions["fedlab"]
    assert ext_off["batching"] is False and ext_off["queries"] == 11
    assert {q["keys"] for q in ext_off["log"][1:]} == {1}
    print(
        f"\nbatching on: {ext['queries']} queries, {ext['elapsed_s'] * 1000:.1f} ms; "
        f"off: {ext_off['queries']} queries, {ext_off['elapsed_s'] * 1000:.1f} ms"
    )


def test_batching_switch_on_the_gateway(demo_fed: fl.Federation) -> None:
    with serve(demo_fed, batching=False) as off:
        ext = run(off.url, BATCH_QUERY).extensions["fedlab"]
        assert ext["queries"] == 11 and ext["batching"] is False
        # and a request may switch it back on
        body = {"query": BATCH_QUERY, "extensions": {"batching": True}}
        assert httpx.post(off.url, json=body).json()["extensions"]["fedlab"]["queries"] == 2


def test_three_levels_three_queries(server, oracle_db: Path) -> None:
    q = '{ users(country: "US", limit: 10) { id orders { id product { title price } } } }'
    res = run(server.url, q)
    assert res.extensions["fedlab"]["queries"] == 3  # users, their orders, those products
    rows = [
        {
            "u_id": u["id"],
            "id": o["id"],
            "title": (o["product"] or {}).get("title"),
            "price": (o["product"] or {}).get("price"),
        }
        for u in res.data["users"]
        for o in u["orders"]
    ]
    expected = oracle(
        oracle_db,
        "SELECT u.id AS u_id, o.id, p.title, p.price "
        "FROM (SELECT * FROM users WHERE country = 'US' ORDER BY id LIMIT 10) u "
        "JOIN orders o ON o.user_id = u.id LEFT JOIN products p ON p.id = o.product_id",
    )
    fl.testing.assert_same_result(frame(rows, ["u_id", "id", "title", "price"]), expected)
    # without batching: one query for the users, one per user, one per distinct product
    products = oracle(
        oracle_db,
        "SELECT COUNT(DISTINCT o.product_id) AS n FROM orders o WHERE o.user_id IN "
        "(SELECT id FROM users WHERE country = 'US' ORDER BY id LIMIT 10)",
    )["n"][0]
    off = server.gateway.execute(q, batching=False)
    assert off["data"] == res.data
    assert off["extensions"]["fedlab"]["queries"] == 1 + 10 + products


def test_parent_lookup_nulls_and_orphans(server, oracle_db: Path) -> None:
    res = run(server.url, "{ orders(limit: 8) { id user_id user { name country } } }")
    rows = [
        {
            "id": o["id"],
            "name": (o["user"] or {}).get("name"),
            "country": (o["user"] or {}).get("country"),
        }
        for o in res.data["orders"]
    ]
    expected = oracle(
        oracle_db,
        "SELECT o.id, u.name, u.country FROM (SELECT * FROM orders ORDER BY id LIMIT 8) o "
        "LEFT JOIN users u ON u.id = o.user_id ORDER BY o.id",
    )
    fl.testing.assert_same_result(frame(rows, ["id", "name", "country"]), expected, ordered=True)
    orders = res.data["orders"]
    assert orders[0]["user_id"] is None and orders[0]["user"] is None  # a NULL key
    assert orders[1]["user_id"] > 100 and orders[1]["user"] is None  # an orphan
    ext = res.extensions["fedlab"]
    assert ext["queries"] == 2  # NULL keys are not looked up, the rest in one batch
    assert None not in ext["log"][1]["params"]["k"]


def test_aliases_share_one_batch(server, oracle_db: Path) -> None:
    res = run(
        server.url, "{ a: user(id: 1) { name } b: user(id: 2) { name } c: user(id: 1) { name } }"
    )
    names = oracle(oracle_db, "SELECT id, name FROM users WHERE id IN (1, 2) ORDER BY id")
    assert [res.data[k]["name"] for k in "abc"] == [*names["name"].to_list(), names["name"][0]]
    assert res.extensions["fedlab"]["queries"] == 1


# ---------------------------------------------------------------------- filters
@pytest.mark.parametrize(
    ("args", "where", "params"),
    [
        ('status: "paid"', "status = :v", {"v": "paid"}),  # case- and pad-sensitive
        ('status: "paid "', "status = :v", {"v": "paid "}),
        ("user_id: null", "user_id IS NULL", {}),
        ('order_date: "2024-03-01"', "order_date = :v", {"v": "2024-03-01"}),
        ('status: "PAID", quantity: 3', "status = :v AND quantity = :q", {"v": "PAID", "q": 3}),
        ('status: "paid", limit: 4, offset: 3', "status = :v", {"v": "paid"}),
    ],
)
def test_list_filters(server, oracle_db: Path, args: str, where: str, params: dict) -> None:
    res = run(server.url, f"{{ orders({args}) {{ id status total order_date }} }}")
    got = frame(res.data["orders"], ["id", "status", "total", "order_date"])
    sql = f"SELECT id, status, total, order_date FROM orders WHERE {where} ORDER BY id"
    if "limit" in args:
        sql += " LIMIT 4 OFFSET 3"
    expected = oracle(oracle_db, sql, params)
    assert expected.height > 0
    got = got.with_columns(pl.col("order_date").cast(pl.String))
    fl.testing.assert_same_result(got, expected, ordered=True)
    assert res.extensions["fedlab"]["queries"] == 1


def test_variables_and_children_filters(server, oracle_db: Path) -> None:
    q = """query($c: String, $n: Int, $s: String) {
      users(country: $c, limit: $n) { id orders(status: $s, limit: 1) { id status } }
    }"""
    res = run(server.url, q, {"c": "us", "n": 20, "s": "paid"})
    users = res.data["users"]
    expected_users = oracle(oracle_db, "SELECT id FROM users WHERE country = 'us' ORDER BY id")
    assert [u["id"] for u in users] == expected_users["id"].to_list()[:20]
    first_paid = oracle(
        oracle_db,
        "SELECT user_id AS u_id, MIN(id) AS id FROM orders WHERE status = 'paid' AND user_id "
        "IN (SELECT id FROM users WHERE country = 'us' ORDER BY id LIMIT 20) GROUP BY user_id",
    )
    got = frame(
        [{"u_id": u["id"], "id": o["id"]} for u in users for o in u["orders"]], ["u_id", "id"]
    )
    assert first_paid.height > 0
    fl.testing.assert_same_result(got, first_paid)
    assert res.extensions["fedlab"]["queries"] == 2


def test_composite_key_lookup(server, oracle_db: Path) -> None:
    q = '{ inventory(product_id: 1, warehouse: "north") { stock region product { title } } }'
    res = run(server.url, q)
    expected = oracle(
        oracle_db,
        "SELECT i.stock, i.region, p.title FROM inventory i JOIN products p "
        "ON p.id = i.product_id WHERE i.product_id = 1 AND i.warehouse = 'north'",
    )
    inv = res.data["inventory"]
    got = frame(
        [{"stock": inv["stock"], "region": inv["region"], "title": inv["product"]["title"]}],
        ["stock", "region", "title"],
    )
    fl.testing.assert_same_result(got, expected)
    # the same pair with a different case is another key (fedlab compares exactly)
    assert run(server.url, q.replace("north", "North")).data == {"inventory": None}


def test_bigint_as_string_and_dates(server) -> None:
    res = run(server.url, '{ user(id: "35") { id signup_date } orders(limit: 1) { ordered_at } }')
    assert res.data["user"]["id"] == 35
    dt.date.fromisoformat(res.data["user"]["signup_date"])
    dt.datetime.fromisoformat(res.data["orders"][0]["ordered_at"])


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("{ user(id: 35) { nme } }", "Cannot query field 'nme' on type 'User'"),
        ("{ user { name } }", "Argument 'Query.user(id:)' of type 'BigInt!' is required"),
        ('{ user(id: "abc") { name } }', "BigInt cannot represent 'abc'"),
        ('{ orders(order_date: "March") { id } }', "expected an ISO date"),
        ("{ orders(limit: -1) { id } }", "limit must be 0 or more"),
        ("{ userz { id } }", "Cannot query field 'userz' on type 'Query'"),
        ("mutation { x }", "The mutation operation is not supported"),
    ],
)
def test_bad_queries_give_graphql_errors(server, query: str, message: str) -> None:
    with pytest.raises(TransportQueryError) as err:
        run(server.url, query, schema=False)  # no client-side validation: the server's own
    assert message in str(err.value.errors), err.value.errors


def test_http_edges(server) -> None:
    # a syntax error (gql would refuse it before sending): the server's answer
    r = httpx.post(server.url, json={"query": "{ user(id: 35) { name "})
    assert r.status_code == 200 and "data" not in r.json()
    assert r.json()["errors"][0]["message"].startswith("Syntax Error: Expected Name")
    r = httpx.post(server.url, content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["errors"][0]["message"]
    r = httpx.post(server.url, json={"variables": {}})
    assert r.status_code == 400 and "no GraphQL query" in r.json()["errors"][0]["message"]
    r = httpx.get(server.url, params={"query": SEED_GRAPHQL})
    assert r.status_code == 200 and r.json()["data"]["user"]["orders"]
    page = httpx.get(server.url)
    assert page.status_code == 200 and "fedlab GraphQL gateway" in page.text
    assert "type User" in page.text and "<script src" not in page.text and "cdn" not in page.text
    assert httpx.get(server.url + "/schema").text == server.gateway.sdl
    assert httpx.get(server.url.rsplit("/", 1)[0] + "/", follow_redirects=True).url == server.url


def test_source_failure_is_a_clear_error(demo_dir: Path, tmp_path: Path) -> None:
    # a copy of the demo whose orders file is replaced under the gateway: the error names
    # the source, and is a GraphQL error on that field while the rest of the answer stays
    import shutil

    d = tmp_path / "demo"
    shutil.copytree(demo_dir, d)
    fed = fl.demo.federation(d, build=False)
    with serve(fed) as gw:
        con = sqlite3.connect(d / "orders.db")
        con.execute("DROP TABLE orders")
        con.commit()
        con.close()
        body = httpx.post(gw.url, json={"query": SEED_GRAPHQL}).json()
    assert body["data"]["user"]["name"]  # the users' part was answered
    assert body["data"]["user"]["orders"] is None
    (error,) = body["errors"]
    assert error["path"] == ["user", "orders"]
    assert "sales" in error["message"]
    assert error["extensions"]["code"].endswith("Error")


def test_max_limit(demo_fed: fl.Federation) -> None:
    gw = Gateway(demo_fed, max_limit=5)
    out = gw.execute("{ users(limit: 6) { id } }")
    assert "over this gateway's max_limit 5" in out["errors"][0]["message"]
    out = gw.execute("{ users { id } }")
    assert "limit must be given" in out["errors"][0]["message"]
    assert len(gw.execute("{ users(limit: 5) { id } }")["data"]["users"]) == 5


# ---------------------------------------------------------------------- serving
def test_serve_stops_cleanly(demo_fed: fl.Federation) -> None:
    with serve(demo_fed) as gw:
        url = gw.url
        assert httpx.post(url, json={"query": "{ user(id: 1) { id } }"}).status_code == 200
    assert not gw.running
    with pytest.raises(httpx.ConnectError):
        httpx.post(url, json={"query": "{ user(id: 1) { id } }"}, timeout=2)


def test_python_api_execute_inside_a_running_loop(demo_fed: fl.Federation) -> None:
    import asyncio

    gw = Gateway(demo_fed)

    async def inside() -> dict:
        return gw.execute(SEED_GRAPHQL)  # as in a notebook, where a loop is running

    out = asyncio.run(inside())
    assert out["data"]["user"]["orders"] and out["extensions"]["fedlab"]["queries"] == 2
    assert fl.gateway.Gateway is Gateway


def test_cli_serve_graphql(demo_dir: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedlab",
            "serve",
            "--graphql",
            "--port",
            "0",
            "--config",
            str(demo_dir / "fedlab.toml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("fedlab GraphQL gateway: http://127.0.0.1:"), (
            line + proc.stderr.read() if proc.poll() is not None else line
        )
        url = line.split()[3]
        res = run(url, SEED_GRAPHQL)
        assert res.data["user"]["orders"] and res.extensions["fedlab"]["queries"] == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    bad = subprocess.run(
        [sys.executable, "-m", "fedlab", "serve"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--graphql" in bad.stderr


# ---------------------------------------------------------------------- real servers
@pytest.mark.servers
def test_over_postgresql_and_mariadb(pg_database, mariadb_database, tmp_path: Path) -> None:
    """users on PostgreSQL, orders on MariaDB, inventory in DuckDB, products in SQLite;
    the relation declared; answers checked against a PostgreSQL monolith."""
    import psycopg

    pg_url, my_url = pg_database("fedlab_gql"), mariadb_database("fedlab_gql")
    fed = fl.demo.load_into(pg_url, my_url, path=tmp_path / "demo")
    kinds = {r["name"]: r["kind"] for r in fed.sources().iter_rows(named=True)}
    assert kinds["crm"] == "postgresql" and kinds["sales"] == "mysql"
    mono = pg_database("fedlab_gqlmono")
    from fedlab.load import write_tables

    write_tables(mono, fl.demo.frames(), primary_keys=fl.demo.PRIMARY_KEYS)

    def expected(sql: str, params: dict[str, Any]) -> pl.DataFrame:
        with psycopg.connect(mono, autocommit=True) as con:
            cur = con.execute(sql, params)
            names = [d.name for d in cur.description]
            return pl.DataFrame(cur.fetchall(), schema=names, orient="row")

    with serve(
        fed, relations=[("sales.orders.user_id", "crm.users.id")], infer_relations=False
    ) as gw:
        res = run(gw.url, SEED_GRAPHQL)
        user = res.data["user"]
        got = frame([{"name": user["name"], **o} for o in user["orders"]], ["name", "total"])
        fl.testing.assert_same_result(
            got,
            expected(
                "SELECT u.name, o.total FROM users u JOIN orders o ON o.user_id = u.id "
                "WHERE u.id = %(id)s ORDER BY o.id",
                {"id": SEED_ID},
            ),
            ordered=True,
        )
        log = res.extensions["fedlab"]["log"]
        assert [q["fragments"][0]["source"] for q in log] == ["crm", "sales"]

        batched = run(gw.url, BATCH_QUERY)
        fl.testing.assert_same_result(
            flatten_user_orders(batched.data["users"], "u_id", "u_name", "id", "total"),
            expected(BATCH_SQL, {}),
        )
        assert batched.extensions["fedlab"]["queries"] == 2
        naive = run(gw.url + "?batching=0", BATCH_QUERY)
        assert naive.data == batched.data and naive.extensions["fedlab"]["queries"] == 11
        # PostgreSQL-style exact comparison even for the text on MariaDB
        paid = run(gw.url, '{ orders(status: "paid") { id } }').data["orders"]
        exp_paid = expected("SELECT id FROM orders WHERE status = 'paid' ORDER BY id", {})
        assert [o["id"] for o in paid] == exp_paid["id"].to_list()


@pytest.mark.servers
def test_no_credentials_in_errors(pg_database, demo_dir: Path) -> None:
    """A PostgreSQL source attached with a password (trust auth lets it in); its table is
    dropped under the gateway: the GraphQL error says what failed, and no password."""
    import psycopg

    from fedlab.load import write_tables

    url = pg_database("fedlab_gqlpw")
    write_tables(url, {"users": fl.demo.frames()["users"]}, primary_keys=fl.demo.PRIMARY_KEYS)
    secret = "Sup3rS3cretPw42"
    with_pw = url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@", 1)
    assert secret in with_pw
    fed = fl.Federation()
    fed.attach("crm", with_pw)
    fed.attach("sales", f"sqlite:///{demo_dir / 'orders.db'}")
    with serve(fed) as gw:
        assert run(gw.url, "{ user(id: 3) { name } }").data["user"]["name"] == "Zoë"
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("DROP TABLE users")
        r = httpx.post(gw.url, json={"query": SEED_GRAPHQL})
    assert secret not in r.text
    err = r.json()["errors"][0]
    assert "crm" in err["message"] and err["path"] == ["user"]


# ---------------------------------------------------------------------- sharded tables
@pytest.mark.servers
def test_sharded_logical_table(pg_database, demo_dir: Path, tmp_path: Path) -> None:
    """orders as a logical table hashed over a SQLite file and a PostgreSQL database: one
    GraphQL type, the relation to users inferred, batching over both shards."""
    from fedlab.load import write_shards

    orders = fl.demo.frames()["orders"]
    targets = {"s0": f"sqlite:///{tmp_path / 'orders_s0.db'}", "s1": pg_database("fedlab_gqlsh")}
    write_shards(orders, "orders", "id", "hash", targets, primary_key=["id"])
    fed = fl.Federation()
    fed.attach("crm", f"sqlite:///{demo_dir / 'users.db'}")
    fed.shard("orders", key="id", method="hash", shards=targets)
    gw = Gateway(fed)
    assert "type Order {" in gw.sdl and [str(r) for r in gw.relations] == [
        "logical.orders.user_id -> crm.users.id (inferred)"
    ]
    out = gw.execute(BATCH_QUERY)
    assert out["extensions"]["fedlab"]["queries"] == 2
    sources = {f["source"] for f in out["extensions"]["fedlab"]["log"][1]["fragments"]}
    assert len(sources) == 2  # both shards read in the one batched query
    users = fl.demo.frames()["users"]
    us = users.filter(pl.col("country") == "US").sort("id").head(10)
    exp = us.join(orders, left_on="id", right_on="user_id").select(
        pl.col("id").alias("u_id"),
        pl.col("name").alias("u_name"),
        pl.col("id_right").alias("id"),
        "total",
    )
    fl.testing.assert_same_result(
        flatten_user_orders(out["data"]["users"], "u_id", "u_name", "id", "total"), exp
    )


def test_awkward_names_and_big_integers(tmp_path: Path) -> None:
    """Same table name in two sources, column names GraphQL does not allow, a column named
    like a list argument, a table without a primary key, integers beyond 2^53."""
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    con = sqlite3.connect(a)
    con.executescript(
        'CREATE TABLE users (id INTEGER PRIMARY KEY, "first name" TEXT, "2fa" INTEGER, '
        "big INTEGER);"
        "INSERT INTO users VALUES (1, 'Ann', 1, 4611686018427387904), (2, 'Bo', 0, -5);"
        "CREATE TABLE log (msg TEXT, \"limit\" INTEGER); INSERT INTO log VALUES ('hi', 3);"
    )
    con.close()
    con = sqlite3.connect(b)
    con.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY); INSERT INTO users VALUES (7);")
    con.close()
    fed = fl.Federation()
    fed.attach("a", f"sqlite:///{a}")
    fed.attach("b", f"sqlite:///{b}")
    gw = Gateway(fed)
    assert {t["type"] for t in gw.tables()} == {"AUser", "BUser", "Log"}
    out = gw.execute(
        '{ a_users(first_name: "Ann") { id first_name _2fa big } b_user(id: 7) { id } '
        "logList { msg } }"
    )
    assert "errors" not in out, out
    assert out["data"]["a_users"] == [
        {"id": 1, "first_name": "Ann", "_2fa": 1, "big": "4611686018427387904"}
    ]
    assert out["data"]["b_user"] == {"id": 7} and out["data"]["logList"] == [{"msg": "hi"}]
    assert "log(" not in gw.sdl  # no primary key: no one-row field
    assert "limit: BigInt" not in gw.sdl  # the column named limit is left out
    small = gw.execute('{ a_users(big: "4611686018427387904") { id } }')
    assert small["data"]["a_users"] == [{"id": 1}]
