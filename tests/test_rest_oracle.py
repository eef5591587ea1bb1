"""The monolith oracle with REST sources (issue #7): tables served as JSON over HTTP.

The oracle's four trap tables (``tests/oracle_data.py``) are written to one SQLite file and
each is served as a JSON collection by the demo-service machinery of :mod:`fedlab.apis`
(:class:`~fedlab.apis.TableService` behind uvicorn on a free loopback port: ``_meta``,
pagination, exact equality filters as query parameters). Each placement attaches one or
two of those collections as REST sources (``kind="rest"``) next to the other tables on
SQLite, PostgreSQL and MariaDB, and every query of ``tests/fixtures/oracle_queries.sql``
runs under every strategy and is compared, by the equality rule, with the same SQL run
directly on the PostgreSQL monolith (the fixtures of ``tests/test_oracle.py``).

The default suite runs two placements (a REST table joined with database tables; two REST
tables joined with each other, read through ``next`` links). The ``slow`` matrix puts each
table alone on REST, every table on REST, and pages of a few rows with offset paging.
No query is skipped: a REST fragment is computed by DuckDB over the fetched rows, so every
query shape the planner sends a REST source is answered exactly (see docs/rest.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fedlab as fl
from fedlab.apis import DemoAPIs, TableService, table_app
from fedlab.load import write_tables
from tests.oracle_data import PRIMARY_KEYS
from tests.test_oracle import (  # the oracle suite's fixtures: the data and the monolith
    PARAMS,
    QUERIES,
    STRATEGIES,
    TABLES,
    attach_by_kind,
    data,  # noqa: F401
    is_ordered,
    monolith,  # noqa: F401
    reference,  # noqa: F401
)

pytestmark = pytest.mark.servers

#: the columns each service filters by query parameter (exact SQLite ``=``; repeated: IN)
FILTERS: dict[str, tuple[str, ...]] = {
    "users": ("id", "country", "active", "name"),
    "orders": ("id", "user_id", "product_id", "status"),
    "products": ("id", "category", "title"),
    "inventory": ("product_id", "warehouse", "region"),
}

#: placement -> (table -> "rest" or an engine, options for every REST attach)
REST_PLACEMENTS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    # one REST table joined with a table on every engine
    "rest_orders": (
        {"orders": "rest", "users": "postgresql", "products": "sqlite", "inventory": "mysql"},
        {},
    ),
    # two REST tables (a join of two services), paged by following the bodies' next links
    "rest_users_products": (
        {"users": "rest", "products": "rest", "orders": "sqlite", "inventory": "postgresql"},
        {"pagination": "next", "page_size": 25},
    ),
}
SLOW_PLACEMENTS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    **{
        f"rest_{t}_alone": ({u: "rest" if u == t else "sqlite" for u in TABLES}, {})
        for t in TABLES
        if t != "orders"
    },
    "rest_all": (dict.fromkeys(TABLES, "rest"), {}),
    "rest_orders_inventory_small_pages": (
        {"orders": "rest", "inventory": "rest", "users": "mysql", "products": "postgresql"},
        {"pagination": "offset", "page_size": 7, "in_batch": 5},
    ),
}
PLACEMENTS = {**REST_PLACEMENTS, **SLOW_PLACEMENTS}


@pytest.fixture(scope="module")
def services(data, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoAPIs]:  # noqa: F811
    """The four tables, each a JSON collection on its own loopback port."""
    db: Path = tmp_path_factory.mktemp("rest_oracle") / "tables.db"
    write_tables(f"sqlite:///{db}", data, primary_keys=PRIMARY_KEYS)
    tables = {t: TableService(t, db, t, FILTERS[t]) for t in TABLES}
    apps = {t: table_app(svc) for t, svc in tables.items()}
    with DemoAPIs(tables, apps, "127.0.0.1", dict.fromkeys(TABLES, 0)).start() as running:
        yield running


@pytest.fixture(scope="module")
def federations(services, data, pg_database, mariadb_database, tmp_path_factory):  # noqa: F811
    built: dict[str, fl.Federation] = {}
    root = tmp_path_factory.mktemp("rest_placements")

    def get(placement: str) -> fl.Federation:
        if placement in built:
            return built[placement]
        where, options = PLACEMENTS[placement]
        fed = fl.Federation()
        for t, kind in where.items():
            if kind == "rest":
                fed.attach(f"{t}_api", services.urls[t], kind="rest", **options)
        attach_by_kind(
            fed,
            {t: kind for t, kind in where.items() if kind != "rest"},
            data,
            server_database={"postgresql": pg_database, "mysql": mariadb_database},
            prefix="fedlab_ro",
            file=lambda kind: root / f"{placement}.{kind}",
        )
        built[placement] = fed
        return fed

    return get


def check(name: str, placement: str, strategy: str, federations, reference) -> None:  # noqa: F811
    fed = federations(placement)
    sql = QUERIES[name]
    params = {k: v for k, v in PARAMS.items() if f":{k}" in sql} or None
    got = fed.sql(sql, params=params, strategy=strategy)
    ok, why = fl.testing.same_result(got.df, reference(name), ordered=is_ordered(sql))
    assert ok, f"{name} on {placement} under {strategy}:\n{why}\n\nplan:\n{got.plan}"


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("placement", list(REST_PLACEMENTS))
@pytest.mark.parametrize("name", list(QUERIES))
def test_rest_oracle(name, placement, strategy, federations, reference) -> None:  # noqa: F811
    check(name, placement, strategy, federations, reference)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("placement", list(SLOW_PLACEMENTS))
@pytest.mark.parametrize("name", list(QUERIES))
def test_rest_oracle_matrix(name, placement, strategy, federations, reference) -> None:  # noqa: F811
    check(name, placement, strategy, federations, reference)


def test_rest_placements_read_over_http(federations, services) -> None:
    """The REST tables were really fetched over HTTP, with filters sent as parameters."""
    services.reset_log()
    fed = federations("rest_orders")
    res = fed.sql("SELECT id, total FROM orders WHERE status = 'paid' AND user_id IN (3, 7)")
    assert {e.source for e in res.trace.entries} == {"orders_api"}
    queries = [r["query"] for r in services.requests("orders")]
    assert queries and all("status=paid" in q and "user_id=3" in q for q in queries), queries
    assert not services.requests("users")
