"""Security: access control on every place a column is read, no credential anywhere, and
parameters bound as literals (injection) on PostgreSQL, MariaDB and SQLite.

The no-leak test uses real users with real passwords (a PostgreSQL role and a MariaDB
user created for it, dropped afterwards) and searches everything fedlab prints or stores.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import pytest

import fedlab as fl
from fedlab.errors import AccessDeniedError
from fedlab.load import write_tables
from fedlab.policy import AccessRule, check_access
from fedlab.source import Source

USERS = pl.DataFrame(
    {
        "id": [1, 2, 3, 4],
        "name": ["ann", "a'b", "back\\slash", "'; DROP TABLE users; --"],
        "email": ["a@x.org", "b@x.org", "c@x.org", "d@x.org"],
        "country": ["US", "FR", "US", "DE"],
    }
)
ORDERS = pl.DataFrame({"id": [10, 11, 12], "user_id": [1, 1, 3], "total": [5.0, 7.5, 2.0]})


# --------------------------------------------------------------------------- access control
@pytest.fixture
def fed() -> fl.Federation:
    return fl.demo.federation()


DENIED_EMAIL = [
    ("SELECT * FROM users", "SELECT"),
    ("SELECT name FROM users WHERE email LIKE '%@example.com'", "WHERE"),
    ("SELECT o.id FROM orders o JOIN users u ON u.email = o.status", "JOIN"),
    ("SELECT email, count(*) FROM users GROUP BY email", "SELECT"),
    ("SELECT count(*) FROM users GROUP BY email", "GROUP BY"),
    ("SELECT country FROM users GROUP BY country HAVING max(email) > 'a'", "HAVING"),
    ("SELECT name FROM users ORDER BY email", "ORDER BY"),
    ("SELECT name, row_number() OVER (PARTITION BY email) FROM users", "window function"),
    ("SELECT name, rank() OVER (ORDER BY email) FROM users", "window function"),
    ("WITH c AS (SELECT email FROM users) SELECT count(*) FROM c", "CTE"),
    ("WITH c AS (SELECT * FROM users) SELECT name FROM c", "CTE"),
    ("SELECT x.n FROM (SELECT email AS n FROM users) x", "subquery"),
    ("SELECT id FROM orders WHERE user_id IN (SELECT id FROM users WHERE email = 'a')", "subquery"),
    (
        "SELECT o.id FROM orders o WHERE EXISTS "
        "(SELECT 1 FROM users u WHERE u.id = o.user_id AND u.email IS NULL)",
        "subquery",
    ),
    ("SELECT name FROM users UNION ALL SELECT email FROM users", "SELECT"),
    ("SELECT (SELECT max(email) FROM users) AS m FROM orders", "subquery"),
    ("SELECT count(DISTINCT email) FROM users", "SELECT"),
    ("SELECT CASE WHEN email IS NULL THEN 1 ELSE 0 END AS e FROM users", "SELECT"),
]


@pytest.mark.parametrize(("sql", "where"), DENIED_EMAIL)
def test_a_denied_column_is_refused_wherever_it_is_read(
    fed: fl.Federation, sql: str, where: str
) -> None:
    fed.policy(deny=["crm.users.email"])
    with pytest.raises(AccessDeniedError) as info:
        fed.sql(sql)
    e = info.value
    assert isinstance(e, fl.PolicyError)
    assert e.table == "crm.users" and e.column == "email" and e.source == "crm"
    assert e.rule == "deny 'crm.users.email'"
    assert "crm.users.email" in str(e) and "deny 'crm.users.email'" in str(e)
    assert where in str(e)
    assert fed.history()["decision"].to_list() == ["denied"]
    assert fed.history()["fragments"].to_list() == [0]  # refused before planning


ALLOWED_WITH_EMAIL_DENIED = [
    "SELECT name, country FROM users",
    "SELECT count(*) FROM users",
    "SELECT country, count(*) FROM users GROUP BY country ORDER BY 2 DESC",
    "SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id",
    "WITH c AS (SELECT id, name FROM users) SELECT count(*) FROM c",
    "SELECT email FROM (SELECT name AS email FROM users) x",  # an alias named email is fine
]


@pytest.mark.parametrize("sql", ALLOWED_WITH_EMAIL_DENIED)
def test_queries_that_do_not_read_the_denied_column_run(fed: fl.Federation, sql: str) -> None:
    fed.policy(deny=["crm.users.email"])
    assert fed.sql(sql).df.height >= 1


def test_deny_tables_sources_and_globs(fed: fl.Federation) -> None:
    fed.policy(deny=["sales.*"])
    with pytest.raises(AccessDeniedError, match=r"table sales\.orders is denied") as info:
        fed.sql("SELECT count(*) FROM orders")
    assert info.value.column == "" and info.value.rule == "deny 'sales.*'"
    fed.sql("SELECT count(*) FROM users")
    fed.policy(deny=["CRM.Users"])  # case-insensitive; a table rule refuses even count(*)
    with pytest.raises(AccessDeniedError, match=r"crm\.users"):
        fed.sql("SELECT count(*) FROM users")
    fed.policy(deny=["*.*.email", "catalog"])
    with pytest.raises(AccessDeniedError, match="email"):
        fed.sql("SELECT email FROM users")
    with pytest.raises(AccessDeniedError, match=r"catalog\.products"):
        fed.sql("SELECT count(*) FROM products")
    fed.policy(deny=[])  # cleared
    assert fed.sql("SELECT count(*) FROM products").df.item() > 0


def test_allow_list_means_only_those(fed: fl.Federation) -> None:
    p = fed.policy(allow=["crm.users.name", "crm.users.country", "sales"])
    assert p.allow == ("crm.users.name", "crm.users.country", "sales")
    fed.sql("SELECT name FROM users WHERE country = 'US' ORDER BY name")
    fed.sql("SELECT count(*) FROM users")  # a column rule lets the table be counted
    fed.sql("SELECT * FROM orders")
    with pytest.raises(AccessDeniedError, match=r"crm\.users\.id is not in the allow list") as i:
        fed.sql("SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id")
    assert i.value.rule.startswith("allow list")
    with pytest.raises(AccessDeniedError, match=r"table catalog\.products"):
        fed.sql("SELECT count(*) FROM products")
    # deny wins over allow
    fed.policy(deny=["sales.orders.total"])
    with pytest.raises(AccessDeniedError, match=r"deny 'sales\.orders\.total'"):
        fed.sql("SELECT sum(total) FROM orders")
    fed.policy(reset=True)
    fed.sql("SELECT email FROM users LIMIT 1")


def test_explain_and_bind_are_checked_too(fed: fl.Federation) -> None:
    fed.policy(deny=["crm.users.email"])
    with pytest.raises(AccessDeniedError):
        fed.explain("SELECT email FROM users")
    with pytest.raises(AccessDeniedError):
        fed.bind("SELECT email FROM users")
    with pytest.raises(AccessDeniedError):  # the dataframe API binds the same way
        fed.table("users").select("email").collect()


def test_residency_and_access_rules_live_together(fed: fl.Federation) -> None:
    p = fed.policy(residency={"source=stock": "deny"}, deny=["crm.users.email"])
    assert p.residency == {"source=stock": "deny"} and p.deny == ("crm.users.email",)
    assert "deny: crm.users.email" in str(p) and "crm.users.email" in p._repr_html_()
    assert repr(p).endswith("deny=('crm.users.email',))")
    with pytest.raises(fl.ResidencyError):
        fed.sql("SELECT count(*) FROM inventory")
    with pytest.raises(AccessDeniedError):
        fed.sql("SELECT email FROM users")
    check_access(fed.bind("SELECT name FROM users"), fed.catalog, None)  # no policy: no-op


def test_access_rule_patterns() -> None:
    r = AccessRule.parse(" crm.users.email ")
    assert (r.source, r.table, r.column, r.column_level) == ("crm", "users", "email", True)
    assert AccessRule.parse("hr").matches_table("HR", "anything")
    assert AccessRule.parse("hr.*").matches_table("hr", "salaries")
    assert AccessRule.parse("*.secret_*").matches_table("crm", "secret_notes")
    assert not AccessRule.parse("crm.users.email").matches_table("crm", "users")
    for bad in ("a.b.c.d", "a..b", "a.b c", "", "crm.users;--"):
        with pytest.raises(fl.ConfigError):
            AccessRule.parse(bad)


def test_sharded_tables_resolve_to_their_shards(tmp_path: Path) -> None:
    urls = {f"s{i}": f"sqlite:///{tmp_path / f'u{i}.db'}" for i in range(2)}
    from fedlab.load import write_shards

    write_shards(USERS, "users", "id", "hash", urls, primary_key=["id"])
    fed = fl.Federation()
    fed.shard("users", key="id", method="hash", shards=urls)
    assert fed.sql("SELECT count(*) FROM users").df.item() == 4
    assert sorted(fed.catalog.sources) == ["users_s0", "users_s1"]  # one source per shard
    fed.policy(deny=["users_s1.users.email"])  # one shard's column refuses the logical one
    with pytest.raises(AccessDeniedError, match=r"shard users_s1\.users") as info:
        fed.sql("SELECT email FROM users WHERE id = 2")
    assert info.value.column == "email"
    fed.policy(deny=["logical.users.email"])  # or by its logical name
    with pytest.raises(AccessDeniedError, match=r"logical\.users\.email"):
        fed.sql("SELECT count(*) FROM users WHERE email IS NULL")
    fed.policy(deny=["users_s0"])  # a whole shard's source
    with pytest.raises(AccessDeniedError, match="users_s0"):
        fed.sql("SELECT count(*) FROM users")
    fed.policy(deny=[], allow=["users_s0", "users_s1.users.name"])  # every shard covered
    fed.sql("SELECT name FROM users")
    with pytest.raises(AccessDeniedError, match="allow list"):
        fed.sql("SELECT country FROM users")
    fed.policy(allow=["logical.users"])
    fed.sql("SELECT country FROM users")


# --------------------------------------------------------------------------- no leak
SECRET = f"Sx{uuid.uuid4().hex[:12]}Pw"
WRONG = f"Wr{uuid.uuid4().hex[:12]}Pw"


def _with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(
        parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port or ''}")
    )


@pytest.fixture
def secret_pg(pg_database) -> Iterator[str]:
    """A PostgreSQL database readable by a role that has a password (dropped after)."""
    import psycopg

    url = pg_database("fedlab_sec")
    write_tables(url, {"users": USERS, "big": pl.DataFrame({"id": list(range(200))})})
    role = f"fedlab_secret_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(url, autocommit=True)
    try:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
        admin.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
        yield _with_user(url, role, SECRET)
    finally:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )
        admin.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}")
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


@pytest.fixture
def secret_mariadb(mariadb_database) -> Iterator[str]:
    """A MariaDB database readable by a user with a password (dropped after)."""
    import pymysql

    url = mariadb_database("fedlab_sec")
    write_tables(url, {"orders": ORDERS})
    user = f"fedlab_sec_{uuid.uuid4().hex[:8]}"
    db = urlsplit(url).path.lstrip("/")
    admin = pymysql.connect(host="127.0.0.1", user="root", password="", autocommit=True)
    try:
        with admin.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{SECRET}'")
                cur.execute(f"GRANT SELECT ON `{db}`.* TO '{user}'@'{host}'")
        yield _with_user(url, user, SECRET)
    finally:
        with admin.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        admin.close()


def _texts_of(obj: object) -> list[str]:
    out = [str(obj), repr(obj)]
    html = getattr(obj, "_repr_html_", None)
    if callable(html):
        out.append(html())
    if isinstance(obj, pl.DataFrame):
        out.append(obj.write_json())
        out.append(obj.write_csv() if not any(isinstance(t, pl.List) for t in obj.dtypes) else "")
    return out


def _error_texts(e: BaseException) -> list[str]:
    out = [str(e), repr(e), "".join(traceback.format_exception(e))]
    out += [str(v) for v in vars(e).values()]
    return out


@pytest.mark.servers
def test_no_credential_leaks_anywhere(
    secret_pg: str, secret_mariadb: str, tmp_path: Path, caplog, capfd
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    audit = tmp_path / "audit.jsonl"
    fed = fl.Federation(user="auditor")
    fed.audit(audit, mask_literals=False)
    fed.attach("pg", secret_pg, statement_timeout=0.3)
    fed.attach("my", secret_mariadb)
    seen += _texts_of(fed) + _texts_of(fed.sources()) + _texts_of(fed.tables())
    seen += [repr(s) + s.describe() + s.redacted_url for s in fed.catalog.sources.values()]
    # successes: a cross-source join and a single-source read
    res = fed.sql(
        "SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id WHERE u.id = :i",
        params={"i": 1},
    )
    assert res.df.height == 2
    seen += _texts_of(res) + _texts_of(res.plan) + _texts_of(res.trace)
    seen += _texts_of(res.trace.to_polars()) + [e.sql + str(e) for e in res.trace.entries]
    seen += _texts_of(fed.explain("SELECT count(*) FROM big"))
    # failures: unknown table, a driver error on the server, a timeout, a policy refusal
    errors: list[BaseException] = []
    failing = [
        "SELECT * FROM no_such_table",
        "SELECT id / (id - id) AS boom FROM big",  # division by zero on PostgreSQL
        "SELECT count(*) FROM big a, big b, big c, big d WHERE (a.id * 7 + b.id * 3 + c.id "
        "+ d.id) % 1000003 = 999999",  # passes its statement timeout
        "SELECT email FROM users",
    ]
    fed.policy(deny=["pg.users.email"])
    for sql in failing:
        with pytest.raises(fl.FedlabError) as info:
            fed.sql(sql)
        errors.append(info.value)
    assert [type(e).__name__ for e in errors] == [
        "UnknownTableError",
        "FragmentError",
        "QueryTimeoutError",
        "AccessDeniedError",
    ]
    # bad logins: a wrong password (MariaDB refuses it), a database that is not there
    # (PostgreSQL trusts loopback here, so its wrong password is not checked), a closed port
    bad_urls = [
        _with_user(secret_mariadb, urlsplit(secret_mariadb).username, WRONG),
        secret_pg.rsplit("/", 1)[0] + "/no_such_db_fedlab",
        _with_user(secret_pg, "nobody", SECRET).replace(f":{urlsplit(secret_pg).port}/", ":1/"),
    ]
    for i, url in enumerate(bad_urls):
        with pytest.raises(fl.SourceError) as info:
            fed.attach(f"bad{i}", url, connect_timeout=2)
        errors.append(info.value)
    assert "Access denied" in str(errors[-3])
    for e in errors:
        seen += _error_texts(e)
    seen += _texts_of(fed.history()) + _texts_of(fed.health()) + _texts_of(fed.policy())
    seen += _texts_of(fed.monitor)
    seen.append(audit.read_text())
    seen += [r.getMessage() for r in caplog.records] + [caplog.text]
    out, err = capfd.readouterr()
    seen += [out, err]
    text = "\n".join(seen)
    assert "users" in text and "FragmentError" in text  # the search looked at real output
    assert SECRET not in text and WRONG not in text
    assert len(audit.read_text().splitlines()) == 5


def test_redact_masks_urls_key_values_and_registered_secrets() -> None:
    from fedlab.security import redact, register_secret

    assert redact("postgresql://u:p4ss@h:1/db") == "postgresql://u:***@h:1/db"
    assert redact("host=h password=abc user=u") == "host=h password=*** user=u"
    assert redact("PWD='x y z';") == "PWD=***;"
    token = f"tok{uuid.uuid4().hex}"
    register_secret(token)
    assert token not in redact(f"driver said: auth failed for {token}")
    s = Source.from_url("x", f"mysql://u:{token}x@127.0.0.1:1/db")
    assert f"{token}x" not in repr(s) + s.describe() + s.redacted_url


# --------------------------------------------------------------------------- injection
INJECTIONS = [
    "'; DROP TABLE users; --",
    "1 OR 1=1",
    "' OR '1'='1",
    "a'b",
    "back\\slash",
    "\\'; DROP TABLE users; --",
    "\\",
    'x"; DROP TABLE users; --',
    "Robert'); DROP TABLE users;--",
]


@pytest.fixture(scope="module")
def three_kinds(pg_database, mariadb_database, tmp_path_factory) -> dict[str, str]:
    urls = {
        "pg": pg_database("fedlab_inj"),
        "my": mariadb_database("fedlab_inj"),
        "lite": f"sqlite:///{tmp_path_factory.mktemp('inj') / 'inj.db'}",
    }
    for url in urls.values():
        write_tables(url, {"users": USERS})
    return urls


@pytest.mark.servers
@pytest.mark.parametrize("kind", ["pg", "my", "lite"])
def test_parameters_are_bound_as_literals(three_kinds: dict[str, str], kind: str) -> None:
    fed = fl.Federation().attach(kind, three_kinds[kind])
    expected = dict(zip(USERS["name"], USERS["id"], strict=True))
    for value in INJECTIONS:
        got = fed.sql("SELECT id FROM users WHERE name = :n", params={"n": value})
        want = [expected[value]] if value in expected else []
        assert got.df["id"].to_list() == want, (kind, value)
        got = fed.sql(
            "SELECT count(*) AS n FROM users WHERE id = :i OR name = :n",
            {
                "i": -1,
                "n": value,
            },
        )
        assert got.df["n"].item() == len(want)
    got = fed.sql("SELECT id FROM users WHERE name IN (:names)", {"names": INJECTIONS})
    assert sorted(got.df["id"].to_list()) == [2, 3, 4]
    with pytest.raises(fl.FedlabError):  # a number parameter is a number, never SQL text
        fed.sql("SELECT id FROM users WHERE id = :i", {"i": object()})
    assert fed.sql("SELECT count(*) FROM users").df.item() == 4  # the table survived


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT * FROM "users; DROP TABLE users"',
        'SELECT * FROM "users""; DROP TABLE users; --"',
        'SELECT "name; DROP TABLE users" FROM users',
        "SELECT name FROM users; DROP TABLE users",
        "SELECT name FROM users -- ; DROP TABLE users\n; DELETE FROM users",
        "SELECT `name` FROM users",
    ],
)
def test_identifiers_with_quotes_and_semicolons_are_refused(sql: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ids.db'}"
    write_tables(url, {"users": USERS})
    fed = fl.Federation().attach("lite", url)
    with pytest.raises(fl.FedlabError):
        fed.sql(sql)
    assert fed.sql("SELECT count(*) FROM users").df.item() == 4


def test_an_odd_but_real_column_name_is_refused_cleanly(tmp_path: Path) -> None:
    """A real column named ``we;ird``: fedlab's binder does not resolve it (a clear
    FedlabError, nothing sent to the source), and the table is intact."""
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    write_tables(url, {"t": pl.DataFrame({"id": [1, 2], "we;ird": ["a", "b"]})})
    fed = fl.Federation().attach("lite", url)
    with pytest.raises(fl.CatalogError, match="we;ird"):
        fed.sql('SELECT "we;ird" FROM t WHERE id = :i', {"i": 2})
    assert fed.history()["fragments"].to_list() == [0]
    assert fed.sql("SELECT id FROM t WHERE id = :i", {"i": 2}).df.item() == 2
