"""Sources, catalog, errors, parameters, read-only enforcement, types and traces.

SQLite tests run everywhere; the ones marked ``servers`` use the real PostgreSQL and
MariaDB (skipped without them, failing under CI=true).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

import polars as pl
import pytest

import fedlab as fl
from fedlab.load import write_tables
from fedlab.source import Source

PASSWORD = "Sup3rS3cretPw"


@pytest.fixture
def two_sqlite(tmp_path: Path) -> tuple[fl.Federation, Path]:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    con = sqlite3.connect(a)
    con.executescript(
        """
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, joined DATE, vip BOOLEAN,
                            balance DECIMAL(10, 2), seen TIMESTAMP);
        INSERT INTO users VALUES (1, 'Ann', '2021-01-02', 1, 10.5, '2021-01-02 03:04:05'),
                                 (2, 'bob', NULL, 0, NULL, NULL),
                                 (3, 'Zoë', '2022-12-31', 1, -3.25, '2022-12-31 23:59:59');
        """
    )
    con.commit()
    con.close()
    con = sqlite3.connect(b)
    con.executescript(
        """
        CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER, total REAL);
        INSERT INTO orders VALUES (10, 1, 5.0), (11, 1, 7.5), (12, 3, 1.0), (13, NULL, 2.0);
        CREATE TABLE users (id INTEGER);
        """
    )
    con.commit()
    con.close()
    fed = fl.Federation().attach("crm", f"sqlite:///{a}").attach("sales", f"sqlite:///{b}")
    return fed, tmp_path


# ------------------------------------------------------------------ sources and catalog
def test_attach_introspects_tables_keys_and_statistics(two_sqlite) -> None:
    fed, _ = two_sqlite
    tables = fed.tables()
    assert set(zip(tables["source"], tables["table"], strict=True)) == {
        ("crm", "users"),
        ("sales", "orders"),
        ("sales", "users"),
    }
    users = fed.catalog.resolve("users", "crm")
    assert users.primary_key == ["id"]
    assert users.row_estimate == 3
    assert users.key_ranges["id"] == (1, 3)
    assert [c.name for c in users.columns] == ["id", "name", "joined", "vip", "balance", "seen"]


def test_relative_sqlite_path_resolves_from_working_directory(two_sqlite, monkeypatch) -> None:
    _, root = two_sqlite
    monkeypatch.chdir(root)
    fed = fl.Federation().attach("crm", "sqlite:///a.db")
    assert fed.sql("SELECT count(*) AS n FROM users").df["n"].to_list() == [3]


def test_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    target = tmp_path / "nope.db"
    with pytest.raises(fl.MissingDatabaseFileError, match=r"nope\.db.*does not exist"):
        fl.Federation().attach("x", f"sqlite:///{target}")
    assert not target.exists()


def test_refresh_rereads_the_catalog(two_sqlite) -> None:
    fed, root = two_sqlite
    con = sqlite3.connect(root / "b.db")
    con.execute("CREATE TABLE refunds (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(fl.UnknownTableError):
        fed.explain("SELECT * FROM refunds")
    fed.refresh()
    assert fed.explain("SELECT * FROM refunds").sources == ["sales"]


def test_config_file_with_env_interpolation(two_sqlite, monkeypatch) -> None:
    _, root = two_sqlite
    (root / "fedlab.toml").write_text(
        '[sources.crm]\nurl = "sqlite:///${CRM_FILE}"\ntags = { region = "EU" }\n'
        '[sources.sales]\nurl = "sqlite:///b.db"\n'
    )
    monkeypatch.setenv("CRM_FILE", str(root / "a.db"))
    fed = fl.Federation.from_config(root / "fedlab.toml")
    srcs = fed.sources()
    assert srcs["name"].to_list() == ["crm", "sales"]
    assert fed.sql("SELECT count(*) AS n FROM sales.orders").df["n"].to_list() == [4]


def test_config_missing_env_var_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "fedlab.toml").write_text('[sources.x]\nurl = "postgresql://u:${NOPE_PW_X}@h/db"\n')
    with pytest.raises(fl.ConfigError, match="NOPE_PW_X"):
        fl.Federation.from_config(tmp_path / "fedlab.toml")


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("sql", "error", "pattern"),
    [
        ("SELECT * FROM nope", fl.UnknownTableError, r"unknown table 'nope'.*crm\.users"),
        ("SELECT * FROM users", fl.AmbiguousTableError, r"ambiguous.*crm\.users, sales\.users"),
        ("SELECT * FROM crm.nope", fl.UnknownTableError, r"not found in source 'crm'"),
        ("SELECT * FROM hr.users", fl.UnknownTableError, r"unknown source 'hr'"),
        ("SELECT zzz FROM crm.users", fl.UnknownColumnError, r"'zzz' \(line 1, column 10\)"),
        (
            "SELECT id FROM crm.users u JOIN orders o ON u.id = o.user_id",
            fl.AmbiguousColumnError,
            r"'id' is ambiguous.*crm\.users AS u, sales\.orders AS o",
        ),
        ("SELECT id FROM orders WHERE", fl.SQLSyntaxError, r"line 1, column 27.*WHERE"),
        ("SELECT id FROM orders\nWHERE id = (", fl.SQLSyntaxError, r"line 2, column"),
        ("DELETE FROM orders", fl.NotAQueryError, r"read-only.*DELETE"),
        ("UPDATE orders SET total = 0", fl.NotAQueryError, r"UPDATE"),
        ("DROP TABLE orders", fl.NotAQueryError, r"DROP"),
        ("SELECT 1; SELECT 2", fl.SQLSyntaxError, r"exactly one statement"),
        ("SELECT id FROM orders WHERE id = :x", fl.ParameterError, r":x"),
    ],
)
def test_errors_say_what_and_where(two_sqlite, sql, error, pattern) -> None:
    fed, _ = two_sqlite
    with pytest.raises(error, match=pattern) as info:
        fed.sql(sql)
    assert isinstance(info.value, fl.FedlabError)


def test_unreachable_source_fails_fast_without_the_password() -> None:
    start = time.monotonic()
    with pytest.raises(fl.SourceUnavailableError) as info:
        fl.Federation().attach("crm", f"postgresql://app:{PASSWORD}@127.0.0.1:1/crm")
    assert time.monotonic() - start < 5
    assert PASSWORD not in str(info.value)
    assert "127.0.0.1:1" in str(info.value) and "crm" in str(info.value)


def test_bad_url_and_bad_option_are_config_errors() -> None:
    with pytest.raises(fl.ConfigError, match="unsupported URL scheme 'oracle'"):
        fl.Federation().attach("x", "oracle://u@h/db")
    with pytest.raises(fl.ConfigError, match="unknown option"):
        fl.Federation().attach("x", "postgresql://u@h/db", colour="blue")
    with pytest.raises(fl.ConfigError, match="not a valid identifier"):
        fl.Federation().attach("1bad", "postgresql://u@h/db")


def test_redaction_everywhere() -> None:
    src = Source.from_url("crm", f"postgresql://app:{PASSWORD}@db.example:5432/crm")
    assert PASSWORD not in src.redacted_url and PASSWORD not in repr(src)
    assert PASSWORD not in str(fl.FedlabError(f"failed: postgresql://app:{PASSWORD}@h/db"))


# ------------------------------------------------------------------ queries
def test_types_are_consistent(two_sqlite) -> None:
    fed, _ = two_sqlite
    df = fed.sql("SELECT * FROM crm.users ORDER BY id").df
    assert df.schema["joined"] == pl.Date
    assert isinstance(df.schema["seen"], pl.Datetime)
    assert df.schema["vip"] == pl.Boolean
    assert df.schema["balance"] == pl.Float64  # the decimal policy
    assert df["joined"].to_list() == [dt.date(2021, 1, 2), None, dt.date(2022, 12, 31)]
    assert df["seen"][0] == dt.datetime(2021, 1, 2, 3, 4, 5)


def test_parameters_are_bound_as_typed_literals(two_sqlite) -> None:
    fed, _ = two_sqlite
    sql = "SELECT id FROM crm.users WHERE name = :n OR joined > :d OR id IN :ids ORDER BY id"
    res = fed.sql(sql, params={"n": "Ann' OR '1'='1", "d": dt.date(2022, 1, 1), "ids": [2]})
    assert res.df["id"].to_list() == [2, 3]  # the quote is data, not SQL
    assert "OR '1'='1'" not in res.plan.fragments[0].sql.replace("''", "")


def test_naive_and_pushdown_agree_and_pushdown_moves_less(two_sqlite) -> None:
    fed, _ = two_sqlite
    sql = (
        "SELECT u.name, sum(o.total) AS spend FROM crm.users u JOIN sales.orders o "
        "ON u.id = o.user_id WHERE u.vip GROUP BY u.name ORDER BY spend DESC"
    )
    naive, push = fed.sql(sql, strategy="naive"), fed.sql(sql, strategy="pushdown")
    fl.testing.assert_same_result(push.df, naive.df, ordered=True)
    assert push.df["name"].to_list() == ["Ann", "Zoë"]
    assert push.df["spend"].to_list() == [12.5, 1.0]
    assert push.trace.bytes < naive.trace.bytes
    assert fed.sql(sql).plan.strategy == "auto"


def test_whole_query_pushed_when_one_source_has_every_table(two_sqlite) -> None:
    fed, _ = two_sqlite
    plan = fed.explain("SELECT count(*) FROM sales.orders o JOIN sales.users u ON u.id = o.user_id")
    assert len(plan.fragments) == 1 and plan.residual_sql is None
    assert "JOIN" in plan.fragments[0].sql
    assert "whole query" in str(plan)


def test_trace_records_every_fragment(two_sqlite) -> None:
    fed, _ = two_sqlite
    res = fed.sql("SELECT u.name, o.total FROM crm.users u JOIN sales.orders o ON u.id = o.user_id")
    t = res.trace
    assert {e.source for e in t.fragments} == {"crm", "sales"}
    for e in t.fragments:
        assert 0 <= e.start <= e.end and e.rows > 0 and e.bytes > 0 and e.sql
    frame = t.to_polars()
    assert {"fragment", "source", "sql", "start_s", "end_s", "rows", "bytes"} <= set(frame.columns)
    assert t.rows == sum(e.rows for e in t.fragments)
    assert t.total_s >= max(e.end for e in t.fragments)
    assert fed.history()["ok"].to_list()[-1] is True


def test_explain_executes_nothing(two_sqlite) -> None:
    fed, _ = two_sqlite
    calls = []
    fed.fetch = lambda *a, **k: calls.append(a)  # the seam: would record any fetch
    plan = fed.explain(
        "SELECT u.name FROM crm.users u JOIN sales.orders o ON u.id = o.user_id", strategy="naive"
    )
    assert calls == []
    text = str(plan)
    assert "crm" in text and "sales" in text and "local residual" in text


def test_compare_checks_strategies_against_each_other(two_sqlite) -> None:
    fed, _ = two_sqlite
    cmp = fed.compare(
        "SELECT u.name, o.total FROM crm.users u JOIN sales.orders o ON u.id = o.user_id",
        strategies=("naive", "pushdown"),
    )
    assert cmp.table["strategy"].to_list() == ["naive", "pushdown"]
    assert cmp.table["same_result"].to_list() == [True, True]


def test_sqlite_fragments_are_read_only(two_sqlite) -> None:
    fed, root = two_sqlite
    src = fed.catalog.sources["crm"]
    con = src.connect()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        con.execute("DELETE FROM users")
    con.close()
    assert sqlite3.connect(root / "a.db").execute("SELECT count(*) FROM users").fetchone() == (3,)


# ------------------------------------------------------------------ real servers
@pytest.mark.servers
def test_server_sessions_are_read_only(pg_database, mariadb_database) -> None:
    frame = pl.DataFrame({"id": [1, 2]})
    for url in (pg_database("fedlab_ro"), mariadb_database("fedlab_ro")):
        write_tables(url, {"t": frame})
        src = Source.from_url("s", url)
        con = src.connect()  # read-only session, as fragments use
        cur = con.cursor()
        with pytest.raises(Exception, match=r"(?i)read.only"):
            cur.execute("DELETE FROM t")
        con.close()
        fed = fl.Federation().attach("s", url)
        assert fed.sql("SELECT count(*) AS n FROM t").df["n"].to_list() == [2]


@pytest.mark.servers
def test_three_engines_one_query(pg_database, mariadb_database, two_sqlite) -> None:
    fed, _ = two_sqlite
    pg, my = pg_database("fedlab_eng"), mariadb_database("fedlab_eng")
    write_tables(pg, {"region": pl.DataFrame({"user_id": [1, 3], "region": ["EU", "APAC"]})})
    write_tables(my, {"score": pl.DataFrame({"user_id": [1, 2, 3], "score": [7, 8, 9]})})
    fed.attach("geo", pg).attach("ml", my)
    res = fed.sql(
        "SELECT u.name, r.region, s.score FROM crm.users u JOIN region r ON r.user_id = u.id "
        "JOIN score s ON s.user_id = u.id ORDER BY s.score"
    )
    assert res.df.rows() == [("Ann", "EU", 7), ("Zoë", "APAC", 9)]
    assert set(res.plan.sources) == {"crm", "geo", "ml"}
    assert {e.reader for e in res.trace.fragments} >= {"connectorx"}


@pytest.mark.servers
def test_statement_timeout_cancels_a_runaway_fragment(pg_database) -> None:
    url = pg_database("fedlab_slow")
    write_tables(url, {"t": pl.DataFrame({"id": list(range(100))})})
    fed = fl.Federation().attach("pg", url, statement_timeout=1)
    start = time.monotonic()
    with pytest.raises(fl.FedlabError, match=r"(?i)timeout|cancel"):
        fed.sql(
            "SELECT count(*) FROM t a, t b, t c, t d, t e "
            "WHERE (a.id * 7 + b.id * 3 + c.id + d.id * 5 + e.id) % 1000003 = 999999"
        )
    assert time.monotonic() - start < 15


@pytest.mark.servers
def test_sqlalchemy_fallback_reader_matches_connectorx(pg_database, mariadb_database) -> None:
    from fedlab.execute.fetch import _read_connectorx, _read_sqlalchemy, coerce

    frame = pl.DataFrame(
        {"id": [1, 2], "s": ["50%: a", None], "d": [dt.date(2021, 1, 2), None]},
        schema={"id": pl.Int64, "s": pl.String, "d": pl.Date},
    )
    for url in (pg_database("fedlab_sa"), mariadb_database("fedlab_sa")):
        write_tables(url, {"t": frame})
        fed = fl.Federation().attach("s", url)
        plan = fed.explain("SELECT id, s, d FROM t WHERE s LIKE '%:%' OR s IS NULL ORDER BY id")
        frag, src = plan.fragments[0], fed.catalog.sources["s"]
        a = _read_sqlalchemy(frag, src, time.monotonic() + 10)
        b = _read_connectorx(frag, src, None)
        assert a.reader == "sqlalchemy"
        fl.testing.assert_same_result(
            coerce(a.df, frag.columns), coerce(b.df, frag.columns), ordered=True
        )
        assert coerce(a.df, frag.columns)["s"].to_list() == ["50%: a", None]


def test_alias_star_expands_to_that_tables_columns(two_sqlite) -> None:
    fed, _ = two_sqlite
    res = fed.sql("SELECT u.*, o.total FROM crm.users u JOIN orders o ON o.user_id = u.id")
    assert res.df.columns == ["id", "name", "joined", "vip", "balance", "seen", "total"]
    plain = fed.sql(
        "SELECT u.id, u.name, u.joined, u.vip, u.balance, u.seen, o.total "
        "FROM crm.users u JOIN orders o ON o.user_id = u.id"
    )
    fl.testing.assert_same_result(res.df, plain.df)
