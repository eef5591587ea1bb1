"""Data residency (issue #4): ``fed.policy(residency=..., k=..., keys=...)``.

Unit tests run on static catalogs (no server); the end-to-end tests put EU customers on a
real PostgreSQL (and MariaDB) database tagged ``region=EU`` and US orders in a SQLite file.
"""

from __future__ import annotations

import time

import polars as pl
import pytest
from sqlglot import exp

import fedlab as fl
from fedlab.catalog import ColumnInfo, TableInfo
from fedlab.errors import ConfigError, PolicyError, QueryTimeoutError, ResidencyError
from fedlab.execute.fetch import default_fetch
from fedlab.load import write_tables
from fedlab.policy import Policy, _run_count, check_plan, guard_sql, make_policy
from fedlab.source import Source

# ---------------------------------------------------------------------------- data
# 40 EU customers: DE 20, FR 15, IT 5 (of which segment 'b2b' 2), and a tiny MT group of 2
COUNTRIES = ["DE"] * 20 + ["FR"] * 15 + ["IT"] * 3 + ["MT"] * 2
CUSTOMERS = pl.DataFrame(
    {
        "id": list(range(1, 41)),
        "email": [f"person{i}@example.eu" for i in range(1, 41)],
        "name": [f"Person {i}" for i in range(1, 41)],
        "country": COUNTRIES,
        "segment": ["b2b" if i % 4 == 0 else "b2c" for i in range(1, 41)],
        "balance": [float(i * 10) for i in range(1, 41)],
    }
)
ORDERS = pl.DataFrame(
    {
        "id": list(range(1, 81)),
        "customer_id": [(i % 40) + 1 for i in range(80)],
        "total": [float(5 + i) for i in range(80)],
    }
)
TARGETS = pl.DataFrame({"country": ["DE", "FR", "IT", "MT"], "target": [25, 10, 5, 1]})

ALLOWED = (
    "SELECT country, count(*) AS customers, sum(balance) AS balance "
    "FROM eu.customers WHERE country IN ('DE', 'FR') GROUP BY country"
)


def _column(name: str, declared: str) -> ColumnInfo:
    return ColumnInfo(name, declared, exp.DataType.build(declared))


def static_federation(eu_kind: str = "postgresql", region: str = "EU") -> fl.Federation:
    """EU customers on ``eu_kind`` and US orders on SQLite, schema only (no server)."""
    fed = fl.Federation()
    dialect = {"postgresql": "postgres", "mysql": "mysql", "sqlite": "sqlite"}[eu_kind]
    eu = Source("eu", eu_kind, dialect, tags={"region": region, "function": "crm"})
    fed.catalog.add_static(
        eu,
        [
            TableInfo(
                "eu",
                "customers",
                [
                    _column("id", "BIGINT"),
                    _column("email", "TEXT"),
                    _column("name", "TEXT"),
                    _column("country", "TEXT"),
                    _column("segment", "TEXT"),
                    _column("balance", "DOUBLE"),
                ],
                primary_key=["id"],
                row_estimate=40,
            )
        ],
    )
    us = Source("us", "sqlite", "sqlite", tags={"region": "US", "function": "sales"})
    fed.catalog.add_static(
        us,
        [
            TableInfo(
                "us",
                "orders",
                [
                    _column("id", "BIGINT"),
                    _column("customer_id", "BIGINT"),
                    _column("total", "DOUBLE"),
                ],
                primary_key=["id"],
                row_estimate=80,
            ),
            TableInfo(
                "us",
                "targets",
                [_column("country", "TEXT"), _column("target", "BIGINT")],
                primary_key=["country"],
                row_estimate=4,
            ),
        ],
    )
    return fed


def refused(fed: fl.Federation, sql: str, **kwargs) -> ResidencyError:
    with pytest.raises(ResidencyError) as info:
        fed.explain(sql, **kwargs)
    return info.value


# ---------------------------------------------------------------------------- rules
def test_policy_is_composable_and_shown():
    fed = fl.Federation()
    p = fed.policy(residency={"EU": "aggregate-only"})
    assert p.residency == {"EU": "aggregate-only"} and p.k == 5
    p = fed.policy(k=10, keys={"eu.customers": ["email"]})
    assert p.residency == {"EU": "aggregate-only"} and p.k == 10  # earlier rules kept
    assert p.keys == {"eu.customers": ["email"]}
    p = fed.policy(residency={"tenant=A": "deny", "EU": "aggregate_only"})
    assert p.residency == {"EU": "aggregate-only", "tenant=A": "deny"}
    p = fed.policy(residency={"tenant=A": None})  # None removes a rule
    assert p.residency == {"EU": "aggregate-only"}
    assert fed.policy() is fed._policy and fed.policy().k == 10
    assert "region=EU" in str(p) and "aggregate-only" in str(p) and "email" in str(p)
    assert repr(p) == (
        "Policy(residency={'EU': 'aggregate-only'}, k=10, keys={'eu.customers': ['email']})"
    )
    html = p._repr_html_()
    assert "aggregate-only" in html and "k = 10" in html and "eu.customers" in html
    p = fed.policy(reset=True)
    assert p == Policy()
    assert "no residency rules" in str(p) and "no residency rules" in p._repr_html_()


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"allow": ["crm.users.email.x"]}, "at most source.table.column"),
        ({"deny": ["crm.us ers"]}, "not a name or glob"),
        ({"deny": [""]}, "non-empty string"),
        ({"deny": {"crm": "users"}}, "must be a list of patterns"),
        ({"residency": {"EU": "aggregated-maybe"}}, "unknown mode"),
        ({"residency": {"": "deny"}}, "non-empty string"),
        ({"residency": {"region=": "deny"}}, "both parts"),
        ({"residency": ["EU"]}, "must be a mapping"),
        ({"k": 0}, "k must be an integer >= 1"),
        ({"k": "5"}, "k must be an integer >= 1"),
        ({"k": True}, "k must be an integer >= 1"),
        ({"keys": {"eu.customers": [1]}}, "column names"),
        ({"keyz": {}}, "unknown policy argument"),
    ],
)
def test_bad_policy_arguments_are_config_errors(rules, message):
    with pytest.raises(ConfigError, match=message):
        make_policy(None, **rules)


def test_selectors_match_tags_and_the_most_specific_rule_wins():
    def src(name, **tags):
        return Source(name, "sqlite", "sqlite", tags=tags)

    eu, us, a = src("eu", region="EU"), src("us", region="us"), src("a1", tenant="A")
    p = make_policy(None, residency={"eu": "aggregate-only"})  # values case-insensitive
    assert p.mode_of(eu) == "aggregate-only" and p.mode_of(us) == "allow"
    p = make_policy(None, residency={"Tenant=a": "deny"})
    assert p.mode_of(a) == "deny" and p.mode_of(eu) == "allow"
    p = make_policy(None, residency={"*": "deny", "region=US": "allow", "source=a1": "allow"})
    assert [p.mode_of(s) for s in (eu, us, a)] == ["deny", "allow", "allow"]
    p = make_policy(None, residency={"EU": "aggregate-only", "function=crm": "deny"})
    both = src("both", region="EU", function="crm")
    assert p.mode_of(both) == "deny"  # equally specific: the strictest


def test_protected_sources_and_describe():
    fed = static_federation()
    p = fed.policy(residency={"EU": "aggregate-only"}, keys={"eu.customers": ["email"]})
    assert p.protected_sources(fed.catalog) == {"eu"}
    assert make_policy(None).protected_sources(fed.catalog) == set()
    table = p.describe(fed.catalog)
    row = table.filter(pl.col("source") == "eu").to_dicts()[0]
    assert row["mode"] == "aggregate-only" and row["k"] == 5
    assert row["keys"] == "customers(id, email)"
    assert table.filter(pl.col("source") == "us")["mode"].to_list() == ["allow"]


# ---------------------------------------------------------------------------- plan checks
@pytest.mark.parametrize("kind", ["postgresql", "mysql", "sqlite"])
def test_aggregate_by_a_non_key_column_is_allowed_with_a_note(kind):
    fed = static_federation(kind)
    fed.policy(residency={"EU": "aggregate-only"})
    plan = fed.explain(ALLOWED + " ORDER BY country")
    assert plan.sources == ["eu"]
    assert any("residency: f1 @ eu" in n and "k=5" in n for n in plan.notes)


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("SELECT name, country FROM eu.customers", "returns rows (no aggregation)"),
        ("SELECT * FROM eu.customers WHERE country = 'DE'", "returns rows"),
        ("SELECT id, count(*) FROM eu.customers GROUP BY id", "groups by key column id"),
        ("SELECT country, id FROM eu.customers GROUP BY country, id", "groups by key column id"),
        ("SELECT country, max(id) FROM eu.customers GROUP BY country", "returns a key value"),
        ("SELECT country, name FROM eu.customers GROUP BY country", "neither aggregated nor"),
        ("SELECT country, string_agg(name, ',') FROM eu.customers GROUP BY country", "list"),
        ("SELECT country, count(*) OVER () FROM eu.customers", "window function"),
        ("SELECT DISTINCT id FROM eu.customers", "groups by key column id"),
        (
            "SELECT t.i, count(*) FROM (SELECT id AS i FROM eu.customers) t GROUP BY t.i",
            "groups by key column i",
        ),
        (
            "SELECT country, count(*) FROM eu.customers WHERE id IN (1, 2, 3) GROUP BY country",
            "filters key column id by a literal list of 3 value(s)",
        ),
        (
            "SELECT country, count(*) FROM eu.customers WHERE id IN (VALUES (1), (2)) "
            "GROUP BY country",
            "filters key column id by a literal list of 2 value(s)",
        ),
        (
            "SELECT country, count(*) FROM eu.customers WHERE id = ANY(ARRAY[1, 2]) "
            "GROUP BY country",
            "filters key column id by a literal list",
        ),
    ],
)
def test_refusals_name_table_source_rule_and_what_is_allowed(sql, problem):
    fed = static_federation()
    fed.policy(residency={"EU": "aggregate-only"})
    err = refused(fed, sql)
    msg = str(err)
    assert problem in msg
    assert "eu.customers" in msg and "'eu'" in msg and "'EU': aggregate-only" in msg
    assert "allowed:" in msg
    assert err.source == "eu" and err.table == "eu.customers" and err.rule == "'EU': aggregate-only"
    assert isinstance(err, PolicyError) and isinstance(err, fl.FedlabError)


def test_declared_identifying_columns_are_keys():
    fed = static_federation()
    fed.policy(residency={"EU": "aggregate-only"})
    sql = "SELECT email, count(*) FROM eu.customers GROUP BY email"
    fed.explain(sql)  # email is no key yet
    fed.policy(keys={"eu.customers": ["email"]})
    assert "groups by key column email" in str(refused(fed, sql))
    assert "returns a key value" in str(
        refused(fed, "SELECT country, min(email) FROM eu.customers GROUP BY country")
    )
    # counting keys is an aggregate: allowed
    fed.explain("SELECT country, count(DISTINCT email) FROM eu.customers GROUP BY country")


def test_a_join_that_needs_eu_rows_is_refused_with_a_rewrite_hint():
    fed = static_federation()
    fed.policy(residency={"EU": "aggregate-only"})
    err = refused(
        fed,
        "SELECT c.country, sum(o.total) AS revenue FROM eu.customers c "
        "JOIN us.orders o ON o.customer_id = c.id GROUP BY c.country",
    )
    assert "returns rows" in str(err) and "combined with us" in str(err)
    assert "aggregate inside eu first" in str(err)
    # the rewrite it suggests: aggregate in the EU, join the aggregates elsewhere
    plan = fed.explain(
        "SELECT e.country, e.customers, t.target FROM (SELECT country, count(*) AS customers "
        "FROM eu.customers GROUP BY country) e JOIN us.targets t ON t.country = e.country"
    )
    assert plan.sources == ["eu", "us"]


def test_deny_allow_and_unprotected_sources():
    fed = static_federation()
    fed.policy(residency={"EU": "deny"})
    err = refused(fed, "SELECT count(*) FROM eu.customers")
    assert "nothing may leave" in str(err) and err.rule == "'EU': deny"
    fed.explain("SELECT customer_id, total FROM us.orders")  # the US is not protected
    fed.policy(residency={"EU": "allow"})
    fed.explain("SELECT * FROM eu.customers")


def test_set_operations_and_wrappers_are_checked_branch_by_branch():
    fed = static_federation()
    fed.policy(residency={"EU": "aggregate-only"})
    fed.explain(
        "SELECT country, count(*) AS n FROM eu.customers GROUP BY country "
        "UNION ALL SELECT 'all', count(*) FROM eu.customers"
    )
    fed.explain(
        "SELECT c, n FROM (SELECT country AS c, count(*) AS n FROM eu.customers "
        "GROUP BY country) t WHERE n > 1"
    )
    fed.explain(
        "WITH a AS (SELECT country, count(*) AS n FROM eu.customers GROUP BY country) "
        "SELECT * FROM a"
    )
    refused(
        fed,
        "SELECT country, count(*) FROM eu.customers GROUP BY country "
        "UNION ALL SELECT email, 1 FROM eu.customers",
    )


def test_mariadb_grouped_fragment_wrapper_and_partitioned_reads():
    fed = static_federation("mysql")
    policy = fed.policy(residency={"EU": "aggregate-only"})
    plan = fed.explain(ALLOWED + " ORDER BY country")
    (frag,) = plan.fragments
    assert "_sorted" in frag.sql or "GROUP BY" in frag.sql
    (check,) = guard_sql(frag, fed.catalog, policy)
    assert check.startswith("SELECT COUNT(*) FROM (SELECT") and "_fedlab_n < 5" in check
    assert "ORDER BY" not in check
    frag.partition = ("id", 1, 40, 4)  # a partitioned read splits groups: refused
    with pytest.raises(ResidencyError, match="partitioned"):
        check_plan(plan, fed.catalog, policy)


def test_guard_sql_keeps_filters_groups_and_having():
    fed = static_federation()
    policy = fed.policy(residency={"EU": "aggregate-only"}, k=7)
    plan = fed.explain(
        "SELECT segment, count(*) AS n FROM eu.customers WHERE balance > 10 "
        "GROUP BY segment HAVING count(*) > 2"
    )
    (check,) = guard_sql(plan.fragments[0], fed.catalog, policy)
    assert 'WHERE "customers"."balance" > 10' in check
    assert "GROUP BY" in check and "HAVING COUNT(*) > 2" in check
    assert check.endswith("_fedlab_groups._fedlab_n < 7")


def test_no_policy_no_checks():
    fed = static_federation()
    plan = fed.explain("SELECT * FROM eu.customers")
    assert not any("residency" in n for n in plan.notes)
    check_plan(plan, fed.catalog, None)
    check_plan(plan, fed.catalog, Policy())


# ---------------------------------------------------------------------------- real databases
@pytest.fixture(scope="module")
def us_file(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('residency') / 'us.db'}"
    write_tables(
        url,
        {"orders": ORDERS, "targets": TARGETS},
        primary_keys={"orders": ["id"], "targets": ["country"]},
    )
    return url


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def eu_url(request) -> str:
    fixture = "pg_database" if request.param == "postgresql" else "mariadb_database"
    url = request.getfixturevalue(fixture)("fedlab_res")
    write_tables(url, {"customers": CUSTOMERS}, primary_keys={"customers": ["id"]})
    return url


class CountingFetch:
    def __init__(self) -> None:
        self.sources: list[str] = []

    def __call__(self, fragment, source, deadline=None):
        self.sources.append(fragment.source)
        return default_fetch(fragment, source, deadline)


def make_fed(eu_url: str, us_file: str, **policy) -> tuple[fl.Federation, CountingFetch]:
    fetch = CountingFetch()
    fed = fl.Federation(fetch=fetch)
    fed.attach("eu", eu_url, tags={"region": "EU"})
    fed.attach("us", us_file, tags={"region": "US"})
    if policy:
        fed.policy(**policy)
    return fed, fetch


def test_allowed_aggregate_equals_the_unprotected_answer(eu_url, us_file):
    fed, fetch = make_fed(eu_url, us_file, residency={"EU": "aggregate-only"})
    free, _ = make_fed(eu_url, us_file)
    got = fed.sql(ALLOWED)
    fl.testing.assert_same_result(got.df, free.sql(ALLOWED).df)
    assert got.df.height == 2 and fetch.sources == ["eu"]
    # aggregate inside the EU, join the aggregates with US data (HAVING drops small groups)
    joined = (
        "SELECT e.country, e.customers, t.target FROM (SELECT country, count(*) AS customers "
        "FROM eu.customers GROUP BY country HAVING count(*) >= 5) e "
        "JOIN us.targets t ON t.country = e.country"
    )
    fl.testing.assert_same_result(fed.sql(joined).df, free.sql(joined).df)
    assert sorted(fed.sql(joined).df["country"].to_list()) == ["DE", "FR"]


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("SELECT name, email FROM eu.customers WHERE country = 'DE'", "returns rows"),
        ("SELECT id, count(*) AS n FROM eu.customers GROUP BY id", "groups by key column id"),
        ("SELECT country, id FROM eu.customers GROUP BY country, id", "groups by key column id"),
        (
            "SELECT c.country, sum(o.total) AS revenue FROM eu.customers c "
            "JOIN us.orders o ON o.customer_id = c.id GROUP BY c.country",
            "returns rows",
        ),
        (
            "SELECT country, count(*) AS n FROM eu.customers WHERE id IN (1, 2, 3, 4, 5, 6) "
            "GROUP BY country",
            "filters key column id by a literal list",
        ),
    ],
)
def test_refused_before_anything_is_fetched(eu_url, us_file, sql, problem):
    fed, fetch = make_fed(eu_url, us_file, residency={"EU": "aggregate-only"})
    with pytest.raises(ResidencyError, match=problem) as info:
        fed.sql(sql)
    assert "eu.customers" in str(info.value) and "'EU': aggregate-only" in str(info.value)
    assert fetch.sources == []
    last = fed.history().row(-1, named=True)
    assert not last["ok"] and last["error"].startswith("ResidencyError")


def test_shipped_keys_from_a_parameter_list_are_refused(eu_url, us_file):
    """A semi-join ships the other side's keys as ``IN (...)``: the same shape, written by
    hand from US data, must not reach the EU source."""
    fed, fetch = make_fed(eu_url, us_file, residency={"EU": "aggregate-only"})
    ids = fed.sql("SELECT DISTINCT customer_id FROM us.orders WHERE total > 60").df
    with pytest.raises(ResidencyError, match="keys shipped into the source"):
        fed.sql(
            "SELECT country, count(*) AS n FROM eu.customers WHERE id IN :ids GROUP BY country",
            params={"ids": ids["customer_id"].to_list()},
        )
    assert fetch.sources == ["us"]


def test_small_groups_are_refused_at_run_time(eu_url, us_file):
    fed, fetch = make_fed(eu_url, us_file, residency={"EU": "aggregate-only"})
    by_country = (
        "SELECT country, count(*) AS n, avg(balance) AS b FROM eu.customers GROUP BY country"
    )
    fed.explain(by_country)  # the shape is fine…
    with pytest.raises(ResidencyError) as info:
        fed.sql(by_country)  # …but IT (3) and MT (2) hold fewer than 5 customers
    msg = str(info.value)
    assert "2 group(s) of fewer than k=5 rows" in msg and "eu.customers" in msg
    assert "'EU': aggregate-only" in msg
    assert fetch.sources == []  # only the count of small groups left the source
    # a filter can make a group small too
    with pytest.raises(ResidencyError, match="1 group"):
        fed.sql("SELECT count(*) FROM eu.customers WHERE country = 'MT'")
    # k is configurable: with k=2 every group is big enough
    fed.policy(k=2)
    free, _ = make_fed(eu_url, us_file)
    fl.testing.assert_same_result(fed.sql(by_country).df, free.sql(by_country).df)
    # groups removed by HAVING never leave: they do not count
    fed.policy(k=5)
    fed.sql(by_country + " HAVING count(*) >= 5")


def test_guard_honors_the_deadline(eu_url, us_file):
    fed, _ = make_fed(eu_url, us_file)
    source = fed.catalog.sources["eu"]
    with pytest.raises(QueryTimeoutError):
        _run_count(source, "SELECT 1", time.monotonic() - 1)
    sleep = "SELECT pg_sleep(5)" if source.kind == "postgresql" else "SELECT SLEEP(5)"
    t0 = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        _run_count(source, sleep, time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 3


def test_sqlite_guard_is_interrupted_at_the_deadline(us_file):
    source = Source.from_url("us", us_file)
    slow = (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100000000) "
        "SELECT count(*) FROM r"
    )
    t0 = time.monotonic()
    with pytest.raises(QueryTimeoutError):
        _run_count(source, slow, time.monotonic() + 0.3)
    assert time.monotonic() - t0 < 3
