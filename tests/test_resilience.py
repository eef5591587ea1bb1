"""Retries and circuit breakers (fedlab.resilience), against real PostgreSQL and MariaDB
servers reached through the fault proxy (tests/faultproxy.py).

Faults are real (a closed port, a TCP RST mid-result, a real deadlock); only the breaker's
clock is injected, so that "30 s later" takes no time.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import pytest
from sqlglot import exp

import fedlab as fl
from fedlab.errors import CircuitOpenError, FragmentError, SourceUnavailableError
from fedlab.execute.fetch import default_fetch
from fedlab.load import write_tables
from fedlab.resilience import (
    BreakerPolicy,
    CircuitBreaker,
    Resilience,
    RetryPolicy,
    counts_as_failure,
    is_transient,
)
from fedlab.source import Source
from fedlab.sql.plan import Fragment
from tests.faultproxy import FaultProxy

USERS = pl.DataFrame(
    {
        "id": list(range(1, 20_001)),
        "name": [f"user number {i:05d}" for i in range(1, 20_001)],
        "country": [("US", "FR", "DE", "JP")[i % 4] for i in range(1, 20_001)],
    }
)
ORDERS = pl.DataFrame(
    {
        "id": list(range(1, 301)),
        "user_id": [(i * 37) % 400 + 1 for i in range(1, 301)],
        "total": [i * 10 for i in range(1, 301)],
    }
)
JOIN_SQL = (
    "SELECT u.country, count(*) AS n, sum(o.total) AS spend "
    "FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.country ORDER BY u.country"
)
EXPECTED = (
    USERS.join(ORDERS, left_on="id", right_on="user_id")
    .group_by("country")
    .agg(pl.len().alias("n"), pl.col("total").sum().alias("spend"))
    .sort("country")
)

FAST = RetryPolicy(attempts=3, initial=0.05, max=0.2, jitter=0.0)


def _via(url: str, proxy: FaultProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 0


@pytest.fixture(scope="module")
def dbs(pg_database, mariadb_database) -> tuple[str, str]:
    pg, my = pg_database("fedlab_res"), mariadb_database("fedlab_res")
    write_tables(pg, {"users": USERS})
    write_tables(my, {"orders": ORDERS})
    return pg, my


@pytest.fixture
def pg_proxy(dbs) -> Iterator[FaultProxy]:
    with FaultProxy(*_target(dbs[0])) as proxy:
        yield proxy


@pytest.fixture
def my_proxy(dbs) -> Iterator[FaultProxy]:
    with FaultProxy(*_target(dbs[1])) as proxy:
        yield proxy


class Counting:
    """The real fetch seam, counting the attempts that reach it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, fragment, source, deadline=None):
        self.calls.append(source.name)
        return default_fetch(fragment, source, deadline)

    def count(self, source: str) -> int:
        return self.calls.count(source)


def _fed(dbs, pg_proxy, my_proxy=None, **kwargs) -> tuple[fl.Federation, Counting]:
    seam = Counting()
    fed = fl.Federation(fetch=seam, **kwargs)
    fed.attach("crm", _via(dbs[0], pg_proxy))
    fed.attach("sales", _via(dbs[1], my_proxy) if my_proxy is not None else dbs[1])
    return fed, seam


def _entry(res, source: str):
    return next(e for e in res.trace.entries if e.source == source)


# ---------------------------------------------------------------------- the proxy itself
def test_fault_proxy_modes_against_real_postgresql(dbs) -> None:
    import psycopg

    before = set(threading.enumerate())
    host, port = _target(dbs[0])
    dbname = urlsplit(dbs[0]).path.lstrip("/")
    with FaultProxy(host, port) as proxy:

        def connect(timeout: int = 2) -> psycopg.Connection:
            return psycopg.connect(
                host="127.0.0.1", port=proxy.port, user="postgres", dbname=dbname,
                connect_timeout=timeout, autocommit=True,
            )  # fmt: skip

        con = connect()
        assert con.execute("SELECT count(*) FROM users").fetchone() == (20_000,)
        assert proxy.open == 1 and proxy.mode == "passthrough"

        # reset: an RST on the open connection, mid-query
        threading.Timer(0.2, proxy.reset).start()
        with pytest.raises(psycopg.OperationalError):
            con.execute("SELECT pg_sleep(2)")
        assert proxy.resets == 1

        # refuse: the port is closed; passthrough opens it again on the same port
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
        proxy.passthrough()
        con = connect()
        assert con.execute("SELECT 1").fetchone() == (1,)

        # drop_after: the connection is cut once that many bytes came back
        proxy.drop_after(20_000)
        with pytest.raises(psycopg.OperationalError):
            con.execute("SELECT name FROM users").fetchall()
        proxy.passthrough()

        # delay at connect: the server's greeting is late
        proxy.delay(0.3, at="connect")
        t0 = time.monotonic()
        connect().close()
        assert time.monotonic() - t0 >= 0.3

        # blackhole: accepted, never answered
        proxy.blackhole()
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            connect(timeout=1)
        assert time.monotonic() - t0 >= 0.9
        assert proxy.mode == "blackhole"
    time.sleep(0.05)
    assert not {t for t in threading.enumerate() if "faultproxy" in t.name} - before


# ---------------------------------------------------------------------- retries
def test_retry_after_refused_connection_postgresql(dbs, pg_proxy) -> None:
    fed, seam = _fed(dbs, pg_proxy, retry=FAST, breaker=True)
    backoffs: list[float] = []

    def backoff(seconds: float) -> None:  # the server comes back during the backoff
        backoffs.append(seconds)
        pg_proxy.passthrough()
        time.sleep(seconds)

    fed.resilience.sleep = backoff
    pg_proxy.refuse()
    res = fed.sql(JOIN_SQL)
    fl.testing.assert_same_result(res.df, EXPECTED, ordered=True)
    assert seam.count("crm") == 2 and seam.count("sales") == 1
    assert _entry(res, "crm").retries == 1 and _entry(res, "sales").retries == 0
    assert _entry(res, "crm").breaker == "closed"
    assert backoffs == [pytest.approx(0.05)]
    events = fed.resilience.events()
    assert events.filter(pl.col("event") == "retry").height == 1
    assert "Connection refused" in events["detail"][0]


def test_retry_after_reset_mid_result_postgresql(dbs, pg_proxy) -> None:
    fed, seam = _fed(dbs, pg_proxy, retry=FAST)
    fed.resilience.sleep = lambda s: (pg_proxy.passthrough(), time.sleep(s))
    pg_proxy.drop_after(50_000)  # the handshake passes, the 20,000 rows do not
    res = fed.sql("SELECT id, name, country FROM crm.users")
    fl.testing.assert_same_result(res.df, USERS)
    assert pg_proxy.resets >= 1
    assert seam.count("crm") == 2 and res.trace.entries[0].retries == 1


def test_retry_after_refused_connection_mariadb(dbs, pg_proxy, my_proxy) -> None:
    fed, seam = _fed(dbs, pg_proxy, my_proxy, retry=FAST)
    fed.resilience.sleep = lambda s: (my_proxy.passthrough(), time.sleep(s))
    my_proxy.refuse()
    res = fed.sql(JOIN_SQL)
    fl.testing.assert_same_result(res.df, EXPECTED, ordered=True)
    assert seam.count("sales") == 2 and _entry(res, "sales").retries == 1


def test_retry_after_reset_mid_result_mariadb(dbs, pg_proxy, my_proxy) -> None:
    # connectorx stays on TCP (prefer_socket=false), so a cut mid-result reaches it
    fed, seam = _fed(dbs, pg_proxy, my_proxy, retry=FAST)
    fed.resilience.sleep = lambda s: (my_proxy.passthrough(), time.sleep(s))
    my_proxy.drop_after(3_000)  # the handshake passes, the 300 rows do not
    res = fed.sql("SELECT * FROM sales.orders")
    fl.testing.assert_same_result(res.df, ORDERS)
    assert my_proxy.resets >= 1
    assert seam.count("sales") == 2 and res.trace.entries[0].retries == 1


def test_errors_the_source_answered_are_not_retried(dbs, pg_proxy) -> None:
    fed, seam = _fed(dbs, pg_proxy, retry=RetryPolicy(attempts=5, initial=0.01, jitter=0))
    src = fed.catalog.sources["crm"]
    wrapped = fed.resilience.wrap(seam)
    # a syntax error, straight through the seam
    bad = Fragment("f1", "crm", "postgresql", "SELEC id FROM users", [("id", exp.DataType.build("INT"))])  # fmt: skip
    with pytest.raises(FragmentError, match="syntax error"):
        wrapped(bad, src, None)
    assert seam.count("crm") == 1
    # an unknown table: dropped on the server after attach
    import psycopg

    with psycopg.connect(dbs[0], autocommit=True) as con:
        con.execute("CREATE TABLE gone (id int)")
    fed2, seam2 = _fed(
        dbs, pg_proxy, retry=RetryPolicy(attempts=5, initial=0.01, jitter=0), breaker=True
    )
    with psycopg.connect(dbs[0], autocommit=True) as con:
        con.execute("DROP TABLE gone")
    with pytest.raises(FragmentError, match="does not exist"):
        fed2.sql("SELECT id FROM crm.gone")
    assert seam2.count("crm") == 1
    assert fed2.resilience.breaker_state("crm") == "closed"
    assert fed2.resilience.breakers()["failures"].to_list() == [0]


def test_no_retry_past_the_deadline(dbs, pg_proxy) -> None:
    fed, seam = _fed(dbs, pg_proxy, retry=RetryPolicy(attempts=10, initial=0.3, jitter=0))
    pg_proxy.refuse()
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError) as info:
        fed.sql("SELECT count(*) FROM crm.users", timeout=0.5)
    elapsed = time.monotonic() - t0
    # attempt at 0 s, backoff 0.3 s, attempt at 0.3 s; a 0.6 s backoff would pass 0.5 s
    assert seam.count("crm") == 2
    assert elapsed < 0.5
    assert info.value.retries == 1
    assert any("2 attempts" in n for n in info.value.__notes__)


def test_no_retry_that_would_outlast_the_deadline(dbs, pg_proxy) -> None:
    """A blackholed source fails each attempt after its connect_timeout: a retry starts
    only if the backoff plus one more such attempt fit before the deadline."""
    seam = Counting()
    fed = fl.Federation(fetch=seam, retry=RetryPolicy(attempts=5, initial=0.05, jitter=0))
    fed.attach("crm", _via(dbs[0], pg_proxy), connect_timeout=0.3)
    pg_proxy.blackhole()
    from fedlab.execute.fetch import _probe

    try:
        _probe(fed.catalog.sources["crm"])
        pytest.skip("fetch._probe does not detect a silent server yet (TCP connect only)")
    except SourceUnavailableError:
        pass
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="did not answer"):
        fed.sql("SELECT count(*) FROM crm.users", timeout=1.0)
    elapsed = time.monotonic() - t0
    # 0.3 s attempt, 0.05 s backoff, 0.3 s attempt; then 0.1 + 0.3 s would end past 1.0 s
    assert seam.count("crm") == 2
    assert 0.6 <= elapsed < 1.0, elapsed


def test_per_source_policy(dbs, pg_proxy, my_proxy) -> None:
    fed, seam = _fed(dbs, pg_proxy, my_proxy, retry=FAST)
    fed.resilience.configure("sales", retry=False)
    assert fed.resilience.policies("sales") == (None, None)
    my_proxy.refuse()
    with pytest.raises(SourceUnavailableError):
        fed.sql("SELECT count(*) FROM sales.orders")
    assert seam.count("sales") == 1  # not retried
    fed.resilience.configure("sales", retry=None)  # back to the federation's policy
    with pytest.raises(SourceUnavailableError):
        fed.sql("SELECT count(*) FROM sales.orders")
    assert seam.count("sales") == 1 + 3


# ---------------------------------------------------------------------- the breaker
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_fails_fast_half_opens_and_closes(dbs, pg_proxy) -> None:
    fed, seam = _fed(dbs, pg_proxy, retry=False, breaker=BreakerPolicy(3, reset_timeout=30))
    clock = Clock()
    fed.resilience.clock = clock
    assert fed.sql(JOIN_SQL).trace.entries[0].breaker == "closed"
    seam.calls.clear()

    pg_proxy.refuse()
    for _ in range(3):
        with pytest.raises(SourceUnavailableError) as info:
            fed.sql(JOIN_SQL)
        assert not isinstance(info.value, CircuitOpenError)
    assert seam.count("crm") == 3
    assert fed.resilience.breaker_state("crm") == "open"

    # open: fails fast, the source is not touched
    t0 = time.perf_counter()
    with pytest.raises(CircuitOpenError) as info:
        fed.sql(JOIN_SQL)
    fast = time.perf_counter() - t0
    assert fast < 0.25, fast  # planning only; no connection attempt
    assert seam.count("crm") == 3
    err = info.value
    assert err.source == "crm" and err.failures == 3 and err.retry_in == pytest.approx(30)
    msg = str(err)
    assert "'crm'" in msg and "3 consecutive failure" in msg and "in 30.0 s" in msg
    assert "Connection refused" in msg

    health = fed.health()
    row = health.filter(pl.col("source") == "crm").row(0, named=True)
    assert row["breaker"] == "open" and row["up"] is False
    assert health.filter(pl.col("source") == "sales")["breaker"].to_list() == ["closed"]
    frame = fed.resilience.breakers().filter(pl.col("source") == "crm").row(0, named=True)
    assert frame["state"] == "open" and frame["failures"] == 3
    assert frame["opened_at"] is not None and frame["retry_in_s"] == pytest.approx(30)

    # half-open after the reset timeout: one probe; it fails, the breaker opens again
    clock.now += 30
    assert fed.resilience.breaker_state("crm") == "half-open"
    assert fed.health().filter(pl.col("source") == "crm")["breaker"].to_list() == ["half-open"]
    with pytest.raises(SourceUnavailableError) as info:
        fed.sql(JOIN_SQL)
    assert not isinstance(info.value, CircuitOpenError)
    assert seam.count("crm") == 4
    assert fed.resilience.breaker_state("crm") == "open"
    with pytest.raises(CircuitOpenError):
        fed.sql(JOIN_SQL)
    assert seam.count("crm") == 4

    # the source is back: the next probe succeeds and closes it
    pg_proxy.passthrough()
    clock.now += 30
    res = fed.sql(JOIN_SQL)
    fl.testing.assert_same_result(res.df, EXPECTED, ordered=True)
    assert _entry(res, "crm").breaker == "half-open"  # this fragment was the probe
    assert fed.resilience.breaker_state("crm") == "closed"
    res = fed.sql(JOIN_SQL)
    assert _entry(res, "crm").breaker == "closed"
    assert fed.health().filter(pl.col("source") == "crm")["breaker"].to_list() == ["closed"]
    events = fed.resilience.events().filter(pl.col("source") == "crm")["event"].to_list()
    assert events == ["open", "reject", "half-open", "open", "reject", "half-open", "close"]


def test_breaker_with_retries_and_a_real_timeout(dbs, pg_proxy) -> None:
    """Each attempt counts; the open breaker stops the retries; a short real reset timeout."""
    fed, seam = _fed(dbs, pg_proxy, retry=FAST, breaker=BreakerPolicy(2, reset_timeout=0.3))
    pg_proxy.refuse()
    with pytest.raises(CircuitOpenError):  # attempt 1, 2 fail: open; attempt 3 fails fast
        fed.sql("SELECT count(*) FROM crm.users")
    assert seam.count("crm") == 2
    pg_proxy.passthrough()
    time.sleep(0.35)
    res = fed.sql("SELECT count(*) AS n FROM crm.users")
    assert res.df["n"].to_list() == [20_000]
    assert res.trace.entries[0].breaker == "half-open"
    assert fed.resilience.breaker_state("crm") == "closed"


def test_breaker_off_and_reset_by_hand(dbs, pg_proxy) -> None:
    fed, _ = _fed(dbs, pg_proxy)  # the default: no retries, no breakers
    assert fed.resilience.policies("crm") == (None, None)
    assert fed.resilience.breaker_state("crm") == "off"
    assert fed.health()["breaker"].to_list() == ["off", "off"]
    fed.resilience.configure("crm", breaker=BreakerPolicy(threshold=1))
    pg_proxy.refuse()
    with pytest.raises(SourceUnavailableError):
        fed.sql("SELECT count(*) FROM crm.users")
    assert fed.resilience.breaker_state("crm") == "open"
    pg_proxy.passthrough()
    fed.resilience.reset("crm")
    assert fed.sql("SELECT count(*) AS n FROM crm.users").df["n"].to_list() == [20_000]


def test_breaker_is_thread_safe() -> None:
    clock = Clock()
    events: list[str] = []
    b = CircuitBreaker(
        "s", BreakerPolicy(threshold=5, reset_timeout=10), clock=clock,
        on_event=lambda s, e, d: events.append(e),
    )  # fmt: skip
    refused = ConnectionRefusedError(111, "Connection refused")
    start = threading.Barrier(40)

    def fail() -> None:
        start.wait()
        try:
            state = b.allow()
        except CircuitOpenError:
            return
        b.record_failure(refused, state)

    threads = [threading.Thread(target=fail) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.state == "open" and events.count("open") == 1
    clock.now += 10
    admitted: list[str] = []
    start = threading.Barrier(40)

    def probe() -> None:
        start.wait()
        with contextlib.suppress(CircuitOpenError):
            admitted.append(b.allow())

    threads = [threading.Thread(target=probe) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted == ["half-open"]  # exactly one probe
    b.record_success("half-open")
    assert b.state == "closed" and b.snapshot()["failures"] == 0


# ---------------------------------------------------------------------- classification
def test_real_driver_errors_are_classified(dbs, pg_proxy) -> None:
    """Deadlock, serialization failure and a lost connection, provoked on the real servers."""
    import psycopg
    import pymysql

    # PostgreSQL serialization failure (40001)
    with psycopg.connect(dbs[0], autocommit=True) as admin:
        admin.execute("CREATE TABLE acct (id int PRIMARY KEY, v int)")
        admin.execute("INSERT INTO acct VALUES (1, 0), (2, 0)")
    a, b = psycopg.connect(dbs[0]), psycopg.connect(dbs[0], autocommit=True)
    a.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    a.execute("SELECT v FROM acct WHERE id = 1").fetchall()
    b.execute("UPDATE acct SET v = 1 WHERE id = 1")
    with pytest.raises(psycopg.errors.SerializationFailure) as ser:
        a.execute("UPDATE acct SET v = 2 WHERE id = 1")
    assert ser.value.sqlstate == "40001" and is_transient(ser.value)
    a.close()

    # PostgreSQL deadlock (40P01)
    a = psycopg.connect(dbs[0])
    a.execute("SET deadlock_timeout = '50ms'")
    b.execute("SET deadlock_timeout = '50ms'")
    b.autocommit = False
    a.execute("UPDATE acct SET v = 3 WHERE id = 1")
    b.execute("UPDATE acct SET v = 3 WHERE id = 2")
    caught: list[BaseException] = []

    def cross(con, row):
        try:
            con.execute(f"UPDATE acct SET v = 4 WHERE id = {row}")
        except psycopg.Error as e:
            caught.append(e)
            con.rollback()

    t = threading.Thread(target=cross, args=(a, 2))
    t.start()
    time.sleep(0.1)
    cross(b, 1)
    t.join()
    a.rollback()
    b.rollback()
    a.close()
    b.close()
    assert [e.sqlstate for e in caught] == ["40P01"] and is_transient(caught[0])

    # MariaDB deadlock (1213) and a lost connection (2013) through the proxy
    my = Source.from_url("m", dbs[1])
    with my.connect(read_only=False) as admin, admin.cursor() as cur:
        cur.execute("CREATE TABLE acct (id int PRIMARY KEY, v int) ENGINE=InnoDB")
        cur.execute("INSERT INTO acct VALUES (1, 0), (2, 0)")
    c1, c2 = my.connect(read_only=False), my.connect(read_only=False)
    for c in (c1, c2):
        c.autocommit(False)
    c1.cursor().execute("UPDATE acct SET v = 1 WHERE id = 1")
    c2.cursor().execute("UPDATE acct SET v = 1 WHERE id = 2")
    caught = []

    def cross_my(con, row):
        try:
            con.cursor().execute(f"UPDATE acct SET v = 2 WHERE id = {row}")
        except pymysql.MySQLError as e:
            caught.append(e)
        con.rollback()

    t = threading.Thread(target=cross_my, args=(c1, 2))
    t.start()
    time.sleep(0.1)
    cross_my(c2, 1)
    t.join()
    c1.close()
    c2.close()
    assert [e.args[0] for e in caught] == [1213] and is_transient(caught[0])

    with FaultProxy(*_target(dbs[1])) as proxy:
        con = pymysql.connect(host="127.0.0.1", port=proxy.port, user="root", connect_timeout=2)
        threading.Timer(0.2, proxy.reset).start()
        with pytest.raises(pymysql.OperationalError) as lost:
            con.cursor().execute("SELECT SLEEP(2)")
        assert lost.value.args[0] in (2006, 2013) and is_transient(lost.value)

    # and what the fetch seam raises on a real reset (connectorx's own words)
    src = Source.from_url("crm", _via(dbs[0], pg_proxy))
    frag = Fragment("f1", "crm", "postgresql", "SELECT 1 AS x FROM pg_sleep(1)", [("x", exp.DataType.build("INT"))])  # fmt: skip
    threading.Timer(0.3, pg_proxy.reset).start()
    with pytest.raises(FragmentError) as reset:
        default_fetch(frag, src, None)
    assert is_transient(reset.value) and counts_as_failure(reset.value)


def test_classification_of_fedlab_errors() -> None:
    from fedlab.errors import (
        AccessDeniedError,
        QueryTimeoutError,
        SQLSyntaxError,
        UnknownTableError,
    )

    assert is_transient(SourceUnavailableError("source s is not reachable: refused"))
    assert not is_transient(
        SourceUnavailableError("source s is not reachable: password authentication failed")
    )
    for e in (
        SQLSyntaxError("x"),
        UnknownTableError("x"),
        AccessDeniedError("x"),
        QueryTimeoutError("connection reset"),
        CircuitOpenError("open"),
        FragmentError('failed: relation "t" does not exist'),
        FragmentError("failed: permission denied for table t"),
    ):
        assert not is_transient(e), e
        assert not counts_as_failure(e), e
    pool = FragmentError("failed: timed out waiting for connection: Connection reset by peer")
    assert not is_transient(pool) and counts_as_failure(pool)


def test_policies_validate() -> None:
    with pytest.raises(fl.FedlabError):
        RetryPolicy(attempts=0)
    with pytest.raises(fl.FedlabError):
        BreakerPolicy(threshold=0)
    with pytest.raises(fl.FedlabError):
        Resilience(retry="three")  # type: ignore[arg-type]
