"""Timeouts, cancellation, limits and fallbacks, against real servers and real faults.

Slow fragments are real slow statements: a table is attached (so that its schema is in
the catalog) and then replaced by a view of the same shape that sleeps on the server
(``pg_sleep`` / ``SLEEP``), or computes for a long time (SQLite, DuckDB). Faults between
fedlab and a server come from ``tests.faultproxy.FaultProxy``. Nothing is mocked.
"""

from __future__ import annotations

import _thread
import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import psycopg
import pymysql
import pytest

import fedlab as fl
from fedlab.errors import (
    ConfigError,
    FragmentError,
    LimitExceededError,
    QueryTimeoutError,
    SourceUnavailableError,
)
from fedlab.execute.executor import union_branches
from fedlab.execute.fetch import STREAM_BATCH_ROWS
from fedlab.load import write_tables
from fedlab.source import Source
from tests.faultproxy import FaultProxy

SLEEP_S = 30


# --------------------------------------------------------------------------- helpers
def pg_admin(url: str) -> psycopg.Connection:
    s = Source.from_url("admin", url)
    return psycopg.connect(
        host=s.host, port=s.port, user=s.user or "postgres", dbname=s.database, autocommit=True
    )


def my_admin(url: str) -> pymysql.Connection:
    s = Source.from_url("admin", url)
    return pymysql.connect(
        host=s.host, port=s.port, user=s.user or "root", database=s.database, autocommit=True
    )


def pg_sessions(url: str) -> list[tuple]:
    """fedlab fragment sessions (tagged ``fedlab-…``) on this database."""
    db = Source.from_url("x", url).database
    with pg_admin(url) as c:
        return c.execute(
            "SELECT pid, application_name, state FROM pg_stat_activity "
            "WHERE application_name LIKE 'fedlab-%%' AND datname = %s",
            (db,),
        ).fetchall()


def my_sessions(url: str) -> list[tuple]:
    db = Source.from_url("x", url).database
    con = my_admin(url)
    try:
        with con.cursor() as cur:
            cur.execute(
                "SELECT id, info FROM information_schema.processlist "
                "WHERE info LIKE '%%/* fedlab-%%' AND db = %s AND id <> CONNECTION_ID()",
                (db,),
            )
            return list(cur.fetchall())
    finally:
        con.close()


def fragment_threads() -> list[str]:
    """Fragment threads alive (named ``fedlab-<query id>-<fragment id>``)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("fedlab-") and not t.name.startswith("fedlab-cancel-")
    ]


def eventually(check, within: float) -> float:
    """Seconds until ``check()`` is true; fails after ``within`` seconds."""
    t = time.monotonic()
    while not check():
        if time.monotonic() - t > within:
            raise AssertionError(f"still not true after {within} s: {check.__doc__ or check}")
        time.sleep(0.05)
    return time.monotonic() - t


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pg_slow(pg_database) -> Iterator[str]:
    """A PostgreSQL database with ``fast(x)`` and ``slow(x)``; attach, then call
    :func:`make_pg_slow` to turn ``slow`` into a sleeping view."""
    url = pg_database("fedlab_faults")
    with pg_admin(url) as c:
        c.execute("CREATE TABLE fast (x int)")
        c.execute("INSERT INTO fast SELECT g FROM generate_series(1, 50) g")
        c.execute("CREATE TABLE slow (x int)")
    yield url


@pytest.fixture(scope="module")
def pg_fast(pg_database) -> str:
    """A PostgreSQL database without slow views (attaching reads every table)."""
    url = pg_database("fedlab_faults")
    with pg_admin(url) as c:
        c.execute("CREATE TABLE fast (x int)")
        c.execute("INSERT INTO fast SELECT g FROM generate_series(1, 50) g")
    return url


@pytest.fixture(scope="module")
def my_fast(mariadb_database) -> str:
    url = mariadb_database("fedlab_faults")
    con = my_admin(url)
    with con.cursor() as cur:
        cur.execute("CREATE TABLE rows10 (y int)")
        cur.execute("INSERT INTO rows10 VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10)")
    con.close()
    return url


def make_pg_slow(url: str) -> None:
    with pg_admin(url) as c:
        c.execute("DROP TABLE IF EXISTS slow")
        c.execute(f"CREATE OR REPLACE VIEW slow AS SELECT 1 AS x FROM pg_sleep({SLEEP_S})")


@pytest.fixture(scope="module")
def my_slow(mariadb_database) -> Iterator[str]:
    url = mariadb_database("fedlab_faults")
    con = my_admin(url)
    with con.cursor() as cur:
        cur.execute("CREATE TABLE slow2 (y int)")
        cur.execute("CREATE TABLE broken (y int)")
    con.close()
    yield url


def make_my_slow(url: str) -> None:
    con = my_admin(url)
    with con.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS slow2")
        cur.execute(f"CREATE OR REPLACE VIEW slow2 AS SELECT SLEEP({SLEEP_S}) AS y")
        cur.execute("DROP TABLE IF EXISTS broken")  # its fragment now fails at once
    con.close()


@pytest.fixture(scope="module")
def servers(pg_slow, my_slow) -> fl.Federation:
    fed = fl.Federation()
    fed.attach("pg", pg_slow)
    fed.attach("my", my_slow)
    make_pg_slow(pg_slow)
    make_my_slow(my_slow)
    return fed


# --------------------------------------------------------------------------- deadline
def test_deadline_cancels_the_server_statements(servers, pg_slow, my_slow) -> None:
    timeout = 1.0
    t = time.monotonic()
    with pytest.raises(QueryTimeoutError, match="deadline"):
        servers.sql("SELECT a.x, b.y FROM pg.slow a CROSS JOIN my.slow2 b", timeout=timeout)
    raised = time.monotonic() - t
    assert raised < timeout + 1.0, raised

    def clean() -> bool:
        """no fedlab session or fragment thread of the query left"""
        return not pg_sessions(pg_slow) and not my_sessions(my_slow) and not fragment_threads()

    after = eventually(clean, within=2.0 - (raised - timeout))
    print(f"raised {raised:.2f} s after start; clean {after:.2f} s later")


def test_a_failing_fragment_cancels_the_others(servers, pg_slow, my_slow) -> None:
    t = time.monotonic()
    with pytest.raises(FragmentError, match="broken"):
        servers.sql("SELECT a.x, b.y FROM pg.slow a CROSS JOIN my.broken b", timeout=20)
    raised = time.monotonic() - t
    assert raised < 2.0, raised  # not 20 s, not 30 s
    eventually(lambda: not pg_sessions(pg_slow) and not fragment_threads(), within=2.0)


def test_keyboard_interrupt_cancels_the_server_statements(servers, pg_slow, my_slow) -> None:
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        pytest.skip("interrupt_main needs the test to run in the main thread")
    timer = threading.Timer(0.5, _thread.interrupt_main)
    t = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            servers.sql("SELECT a.x, b.y FROM pg.slow a CROSS JOIN my.slow2 b")
    finally:
        timer.cancel()
    assert time.monotonic() - t < 2.5
    eventually(
        lambda: not pg_sessions(pg_slow) and not my_sessions(my_slow) and not fragment_threads(),
        within=2.0,
    )


@pytest.mark.parametrize("table", ["pg.slow", "my.slow2"])
def test_statement_timeout_per_source(servers, table) -> None:
    saved = {n: s.options for n, s in servers.catalog.sources.items()}
    for s in servers.catalog.sources.values():  # as attach(..., statement_timeout=0.5) does
        s.options = dataclasses.replace(s.options, statement_timeout=0.5)
    try:
        t = time.monotonic()
        with pytest.raises(QueryTimeoutError):
            servers.sql(f"SELECT * FROM {table}")  # no query deadline: the source's limit
        assert time.monotonic() - t < 2.0
    finally:
        for n, s in servers.catalog.sources.items():
            s.options = saved[n]


def test_sqlite_and_duckdb_stop_at_the_deadline(tmp_path: Path) -> None:
    import duckdb

    db = tmp_path / "slow.db"
    write_tables(f"sqlite:///{db}", {"slow": pl.DataFrame({"n": [1]})})
    dd = tmp_path / "slow.duckdb"
    con = duckdb.connect(str(dd))
    con.execute("CREATE TABLE dslow (n BIGINT)")
    con.close()
    fed = fl.Federation()
    fed.attach("lite", f"sqlite:///{db}")
    fed.attach("duck", f"duckdb:///{dd}")
    lite = __import__("sqlite3").connect(db)
    lite.execute("DROP TABLE slow")
    lite.execute(
        "CREATE VIEW slow AS WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
        "WHERE i < 1000000000) SELECT count(*) AS n FROM c"
    )
    lite.commit()
    lite.close()
    con = duckdb.connect(str(dd))
    con.execute("DROP TABLE dslow")
    con.execute(
        "CREATE VIEW dslow AS SELECT count(*) AS n FROM range(100000000000) a "
        "WHERE a.range % 7 = hash(a.range) % 7"
    )
    con.close()
    for table in ("lite.slow", "duck.dslow"):
        t = time.monotonic()
        with pytest.raises(QueryTimeoutError):
            fed.sql(f"SELECT n FROM {table}", timeout=0.5)
        assert time.monotonic() - t < 1.5, table
    eventually(lambda: not fragment_threads(), within=2.0)


# --------------------------------------------------------------------------- dead sources
def test_blackholed_source_fails_within_connect_timeout(pg_fast) -> None:
    with FaultProxy("127.0.0.1", Source.from_url("x", pg_fast).port) as proxy:
        db = Source.from_url("x", pg_fast).database
        fed = fl.Federation()
        fed.attach("pg", f"postgresql://postgres@127.0.0.1:{proxy.port}/{db}", connect_timeout=1)
        assert fed.sql("SELECT count(*) AS n FROM fast").df["n"].to_list() == [50]
        proxy.blackhole()
        t = time.monotonic()
        with pytest.raises(SourceUnavailableError, match="did not answer"):
            fed.sql("SELECT count(*) AS n FROM fast", timeout=10)
        assert time.monotonic() - t < 2.0
        proxy.refuse()
        t = time.monotonic()
        with pytest.raises(SourceUnavailableError):
            fed.sql("SELECT count(*) AS n FROM fast", timeout=10)
        assert time.monotonic() - t < 2.0


def test_source_blackholed_mid_query_ends_within_the_deadline(pg_fast) -> None:
    with FaultProxy("127.0.0.1", Source.from_url("x", pg_fast).port) as proxy:
        db = Source.from_url("x", pg_fast).database
        fed = fl.Federation()
        fed.attach("pg", f"postgresql://postgres@127.0.0.1:{proxy.port}/{db}", connect_timeout=1)
        threading.Timer(0.3, proxy.blackhole).start()
        t = time.monotonic()
        with pytest.raises(QueryTimeoutError):
            fed.sql("SELECT count(*) AS n FROM fast a, fast b, fast c, fast d, fast e", timeout=1.0)
        assert time.monotonic() - t < 2.0
        # still partitioned: the server cannot be asked to cancel and connectorx has no
        # read timeout; fedlab shuts the fragment's socket down, so its thread returns
        # within 2 s of the deadline
        eventually(lambda: not fragment_threads(), within=2.0 - (time.monotonic() - t - 1.0))
        assert proxy.mode == "blackhole"
    eventually(lambda: not pg_sessions(pg_fast), within=3.0)  # statement_timeout held


# --------------------------------------------------------------------------- limits
@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> fl.Federation:
    root = tmp_path_factory.mktemp("faults")
    urls = {}
    for i in range(3):
        urls[f"s{i}"] = f"sqlite:///{root / f's{i}.db'}"
        ids = list(range(i * 100, i * 100 + 100))
        write_tables(
            urls[f"s{i}"], {"events": pl.DataFrame({"id": ids, "v": [j % 7 for j in ids]})}
        )
    write_tables(
        f"sqlite:///{root / 'dim.db'}", {"dim": pl.DataFrame({"v": list(range(7)), "k": ["x"] * 7})}
    )
    fed = fl.Federation()
    fed.attach("dim", f"sqlite:///{root / 'dim.db'}")
    fed.shard(
        "events",
        key="id",
        method="range",
        shards=urls,
        bounds={"s0": (None, 100), "s1": (100, 200), "s2": (200, None)},
    )
    fed._root = root  # type: ignore[attr-defined]
    fed._urls = urls  # type: ignore[attr-defined]
    return fed


def test_fragment_row_limit_stops_the_fetch(lite, my_fast) -> None:
    with pytest.raises(LimitExceededError) as ei:
        lite.sql("SELECT id FROM events WHERE id < 100", max_rows=10)
    e = ei.value
    assert e.limit == "max_rows" and e.source == "events_s0" and e.fragment
    assert "max_rows=10" in str(e) and "filter or an aggregate" in str(e)
    assert "read stopped at 11" in str(e)  # LIMIT n+1 was sent: 11 rows came, not 100
    fed = fl.Federation(max_rows=5)  # the federation's default
    fed.attach("my", my_fast)
    with pytest.raises(LimitExceededError, match="source my "):
        fed.sql("SELECT y FROM rows10")
    assert fed.sql("SELECT y FROM rows10", max_rows=10).df.height == 10  # per query


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_byte_limit_stops_a_server_read_midway(kind, pg_fast, my_fast) -> None:
    """A fragment over ``max_bytes`` is stopped while it streams (checked per Arrow
    batch), not after the whole read: of a 3-million-row result (~120 MB in Arrow) the
    read holds at most a batch past the limit when it stops, and the server statement is
    cancelled."""
    url = pg_fast if kind == "postgresql" else my_fast
    # attach while `trickle` is an empty table (attaching counts the rows of every table),
    # then make it a slow view with the same columns
    if kind == "postgresql":
        with pg_admin(url) as c:
            c.execute("DROP VIEW IF EXISTS trickle")
            c.execute("CREATE TABLE trickle (id bigint, h text)")
    else:
        con = my_admin(url)
        with con.cursor() as cur:
            cur.execute("DROP VIEW IF EXISTS trickle")
            cur.execute("CREATE TABLE trickle (id bigint, h text)")
        con.close()
    fed = fl.Federation()
    fed.attach("src", url)
    if kind == "postgresql":
        with pg_admin(url) as c:
            c.execute("DROP TABLE trickle")
            c.execute(
                "CREATE VIEW trickle AS SELECT g::bigint AS id, md5(g::text) AS h "
                "FROM generate_series(1, 3000000) g"
            )
    else:
        con = my_admin(url)
        with con.cursor() as cur:
            cur.execute("DROP TABLE trickle")
            cur.execute(
                "CREATE VIEW trickle AS SELECT CAST(seq AS SIGNED) AS id, md5(seq) AS h "
                "FROM seq_1_to_3000000"
            )
        con.close()
    try:
        with pytest.raises(LimitExceededError, match="the read stopped at") as ei:
            fed.sql("SELECT id, h FROM trickle", max_bytes=1_000_000, timeout=60)
        assert ei.value.limit == "max_bytes" and ei.value.source == "src"
        read = int(re.search(r"stopped at ([\d,]+) bytes", str(ei.value))[1].replace(",", ""))
        batch = STREAM_BATCH_ROWS * 48  # an id (8 bytes), a 32-char hash and its offset
        assert 1_000_000 < read <= 1_000_000 + 2 * batch, read  # not the 120 MB
        eventually(lambda: not fragment_threads(), within=2.0)
        if kind == "postgresql":
            eventually(lambda: not pg_sessions(url), within=2.0)
    finally:
        if kind == "postgresql":
            with pg_admin(url) as c:
                c.execute("DROP VIEW trickle")
        else:
            con = my_admin(url)
            with con.cursor() as cur:
                cur.execute("DROP VIEW trickle")
            con.close()


def test_fragment_byte_limit_and_result_limits(lite) -> None:
    with pytest.raises(LimitExceededError, match="max_bytes=100") as ei:
        lite.sql("SELECT id, v FROM events WHERE id < 100", max_bytes=100)
    assert ei.value.limit == "max_bytes"
    # each fragment is small, the join's result is not
    with pytest.raises(LimitExceededError, match="result") as ei:
        lite.sql("SELECT e.id, d.k FROM events e JOIN dim d ON e.v = d.v", max_rows=299)
    assert ei.value.fragment == "result"
    assert (
        lite.sql("SELECT e.id FROM events e JOIN dim d ON e.v = d.v", max_rows=300).df.height == 300
    )


def test_a_truncated_read_is_never_cached(lite) -> None:
    fed = fl.Federation()
    fed.attach("s0", lite._urls["s0"])
    fed.cache.enable(ttl=60)
    with pytest.raises(LimitExceededError):
        fed.sql("SELECT id FROM events", max_rows=3)
    assert len(fed.cache) == 0
    assert fed.sql("SELECT id FROM events").df.height == 100
    again = fed.sql("SELECT id FROM events")  # another query id, same cache key
    assert again.trace.cache_hits == 1


def test_bad_options_are_config_errors(lite) -> None:
    with pytest.raises(ConfigError, match="on_error"):
        lite.sql("SELECT 1 AS one FROM dim", on_error="ignore")
    with pytest.raises(ConfigError, match="max_rows"):
        lite.sql("SELECT v FROM dim", max_rows=-1)


# --------------------------------------------------------------------------- partial
def _shard_fed(pg_fast: str, proxy: FaultProxy, lite: fl.Federation) -> fl.Federation:
    """events sharded over two SQLite files and one PostgreSQL database behind ``proxy``."""
    db = Source.from_url("x", pg_fast).database
    with pg_admin(pg_fast) as c:
        c.execute("DROP TABLE IF EXISTS events")
        c.execute("CREATE TABLE events (id bigint, v bigint)")
        c.execute("INSERT INTO events SELECT g, g % 7 FROM generate_series(200, 299) g")
    fed = fl.Federation()
    fed.attach("dim", f"sqlite:///{lite._root / 'dim.db'}")
    shards = {
        "s0": lite._urls["s0"],
        "s1": lite._urls["s1"],
        "s2": f"postgresql://postgres@127.0.0.1:{proxy.port}/{db}",
    }
    fed.shard(
        "events",
        key="id",
        method="range",
        shards=shards,
        bounds={"s0": (None, 100), "s1": (100, 200), "s2": (200, None)},
    )
    src = fed.catalog.sources["events_s2"]
    src.options = dataclasses.replace(src.options, connect_timeout=1)
    return fed


def test_partial_result_drops_a_dead_shard(pg_fast, lite) -> None:
    with FaultProxy("127.0.0.1", Source.from_url("x", pg_fast).port) as proxy:
        fed = _shard_fed(pg_fast, proxy, lite)
        assert fed.sql("SELECT count(*) AS n FROM events").df["n"].to_list() == [300]
        proxy.refuse()
        with pytest.raises(SourceUnavailableError):
            fed.sql("SELECT id FROM events")  # on_error="raise" is the default
        res = fed.sql("SELECT id, v FROM events", on_error="partial")
        assert res.partial is True and res.missing_sources == ["events_s2"]
        assert res.df.height == 200 and res.df["id"].max() == 199
        (m,) = res.missing
        assert m.source == "events_s2" and m.error_class == "SourceUnavailableError"
        assert "PARTIAL" in repr(res) and "partial result" in res._repr_html_()
        assert "s2" in res._repr_html_()
        row = res.trace.to_polars().filter(pl.col("source") == "events_s2")
        assert row["rows"].to_list() == [0] and "SourceUnavailableError" in row["error"][0]
        # an aggregate over the shards: computed over the rows that arrived, flagged
        agg = fed.sql("SELECT count(*) AS n FROM events", on_error="partial")
        assert agg.partial and agg.df["n"].to_list() == [200]
        # a user's UNION ALL: the dead arm goes, the others stay
        u = fed.sql(
            "SELECT v FROM dim UNION ALL SELECT v FROM events WHERE id >= 200",
            on_error="partial",
        )
        assert u.partial and u.df.height == 7
        # a join needs both sides: partial is not meaningful, so it raises
        with pytest.raises(SourceUnavailableError):
            fed.sql(
                "SELECT e.id, d.k FROM events e JOIN dim d ON e.v = d.v WHERE e.id >= 200",
                on_error="partial",
            )
        proxy.passthrough()
        whole = fed.sql("SELECT id FROM events", on_error="partial")
        assert whole.partial is False and whole.df.height == 300 and whole.missing == []


def test_union_branches_are_the_droppable_fragments(lite) -> None:
    plan = lite.explain("SELECT e.id, d.k FROM events e JOIN dim d ON e.v = d.v")
    shard_frags = {f.id for f in plan.fragments if f.source.startswith("events_")}
    assert union_branches(plan) == shard_frags  # the shards; not the joined dim
    single = lite.explain("SELECT k FROM dim")
    assert union_branches(single) == set()


# --------------------------------------------------------------------------- stale
def test_stale_serves_the_cached_copy_with_its_age(pg_fast) -> None:
    with FaultProxy("127.0.0.1", Source.from_url("x", pg_fast).port) as proxy:
        db = Source.from_url("x", pg_fast).database
        fed = fl.Federation()
        fed.attach("pg", f"postgresql://postgres@127.0.0.1:{proxy.port}/{db}", connect_timeout=1)
        sql = "SELECT x FROM fast WHERE x <= 10"
        with pytest.raises(SourceUnavailableError) as ei:
            proxy.refuse()
            fed.sql(sql, on_error="stale")
        assert any("cache is off" in n for n in getattr(ei.value, "__notes__", []))
        proxy.passthrough()
        fed.cache.enable(ttl=0.2)
        fresh = fed.sql(sql)
        time.sleep(0.3)  # the entry is now past its TTL
        proxy.refuse()
        res = fed.sql(sql, on_error="stale")
        fl.testing.assert_same_result(res.df, fresh.df)
        (frag,) = res.stale
        assert res.stale[frag] >= 0.3 and res.partial is False
        assert "stale data" in res._repr_html_() and "STALE" in repr(res)
        with pytest.raises(SourceUnavailableError):
            fed.sql("SELECT x FROM fast WHERE x <= 11", on_error="stale")  # never cached


# --------------------------------------------------------------------------- severing
def test_sever_shuts_down_only_new_connections_to_the_target() -> None:
    """``sever`` wakes a read blocked on a silent server, and leaves alone the connections
    listed in ``keep`` and those to other endpoints."""
    import socket

    from fedlab.execute.cancel import own_sockets, sever

    server = socket.create_server(("127.0.0.1", 0))
    other = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    old = socket.create_connection(("127.0.0.1", port))
    keep = set(own_sockets())
    new = socket.create_connection(("127.0.0.1", port))
    elsewhere = socket.create_connection(("127.0.0.1", other.getsockname()[1]))
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(new.recv(10)))
    reader.start()
    try:
        time.sleep(0.1)
        assert reader.is_alive()  # the server never answers
        assert sever({("127.0.0.1", port)}, keep) == 1
        reader.join(2)
        assert not reader.is_alive() and got == [b""]  # the blocked read returned
        for s in (old, elsewhere):  # untouched: still writable
            s.sendall(b"x")
    finally:
        for s in (old, new, elsewhere, server, other):
            s.close()


# --------------------------------------------------------------------------- refused logins
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_refused_login_fails_at_once(kind, pg_fast, my_fast, monkeypatch, capfd) -> None:
    """A login the server refuses (here: the user's password changed after attaching)
    fails in well under a second with the server's reason and no password; connectorx
    alone would retry it in its pool for ~30 s."""
    import fedlab.execute.fetch as fetch

    user, pw = f"fl_login_{uuid.uuid4().hex[:8]}", "first-S3cret"
    url = pg_fast if kind == "postgresql" else my_fast
    s = Source.from_url("x", url)
    if kind == "postgresql":
        admin = pg_admin(url)
        admin.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{pw}'")
        admin.execute(f"GRANT SELECT ON fast TO {user}")
        run = admin.execute
    else:
        admin = my_admin(url)
        run = admin.cursor().execute
        run(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{pw}'")
        run(f"GRANT SELECT ON `{s.database}`.* TO '{user}'@'127.0.0.1'")
    try:
        fed = fl.Federation()
        fed.attach("src", f"{kind}://{user}:{pw}@127.0.0.1:{s.port}/{s.database}")
        table = "fast" if kind == "postgresql" else "rows10"
        assert fed.sql(f"SELECT count(*) AS n FROM {table}").df.height == 1
        if kind == "postgresql":
            run(f"ALTER ROLE {user} PASSWORD 'second-S3cret'")
            # PostgreSQL trusts loopback here (trust auth): refuse the login another way
            run(f"ALTER ROLE {user} NOLOGIN")
        else:
            run(f"ALTER USER '{user}'@'127.0.0.1' IDENTIFIED BY 'second-S3cret'")
        monkeypatch.setattr(fetch, "LOGIN_TTL_S", 0.0)  # as if the last check were old
        t = time.monotonic()
        with pytest.raises(fl.SourceUnavailableError) as ei:
            fed.sql(f"SELECT count(*) AS n FROM {table}")
        took = time.monotonic() - t
        assert took < 1.0, took
        text = str(ei.value)
        assert "src" in text and ("denied" in text.lower() or "not permitted" in text.lower())
        assert pw not in text and pw not in capfd.readouterr().err
    finally:
        if kind == "postgresql":
            run(f"DROP OWNED BY {user}")
            run(f"DROP ROLE {user}")
        else:
            run(f"DROP USER '{user}'@'127.0.0.1'")
        admin.close()
