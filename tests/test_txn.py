"""Two-phase commit over real PostgreSQL and MariaDB (fedlab.txn, issue #6).

Every test checks the rows directly with psycopg / pymysql, and leaves no prepared
transaction behind (they would block DROP DATABASE at the end of the session).
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

import fedlab as fl
from fedlab import txn
from fedlab.errors import (
    ConfigError,
    InDoubtError,
    InjectedCrash,
    PrepareError,
    StatementError,
    TwoPhaseUnsupportedError,
)
from fedlab.source import Source

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def urls(pg_database: Any, mariadb_database: Any) -> tuple[str, str]:
    return pg_database("fedlab_txn"), mariadb_database("fedlab_txn")


def _pg(url: str) -> psycopg.Connection:
    s = Source.from_url("x", url)
    return psycopg.connect(
        host=s.host, port=s.port, user=s.user or "postgres", dbname=s.database, autocommit=True
    )


def _my(url: str) -> pymysql.Connection:
    s = Source.from_url("x", url)
    return pymysql.connect(
        host=s.host, port=s.port, user=s.user or "root", password="", database=s.database,
        autocommit=True,
    )  # fmt: skip


def _pg_bal(url: str, id_: int = 1) -> int:
    with _pg(url) as c:
        return int(c.execute("SELECT bal FROM acc WHERE id = %s", (id_,)).fetchone()[0])


def _my_bal(url: str, id_: int = 1) -> int:
    c = _my(url)
    try:
        with c.cursor() as cur:
            cur.execute("SELECT bal FROM acc WHERE id = %s", (id_,))
            return int(cur.fetchone()[0])
    finally:
        c.close()


def _pg_prepared(url: str, coord: str) -> list[str]:
    with _pg(url) as c:
        rows = c.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s", (f"fedlab:{coord}:%",)
        ).fetchall()
    return [r[0] for r in rows]


def _my_prepared(url: str, coord: str) -> list[tuple[str, str]]:
    c = _my(url)
    try:
        with c.cursor() as cur:
            cur.execute("XA RECOVER")
            out = []
            for _f, gl, bl, data in cur.fetchall():
                g, b = data[:gl].decode(), data[gl : gl + bl].decode()
                if g.startswith(f"fedlab:{coord}:"):
                    out.append((g, b))
            return out
    finally:
        c.close()


@pytest.fixture
def coord(urls: tuple[str, str]) -> Iterator[str]:
    """A coordinator id of this test only; whatever it left prepared is rolled back
    afterwards with the drivers themselves (not with fedlab)."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    pg_url, my_url = urls
    with _pg(pg_url) as c:
        for gid in _pg_prepared(pg_url, name):
            c.execute(f"ROLLBACK PREPARED '{gid}'")
    c2 = _my(my_url)
    try:
        with c2.cursor() as cur:
            for g, b in _my_prepared(my_url, name):
                cur.execute("XA ROLLBACK %s, %s", (g, b))
    finally:
        c2.close()


@pytest.fixture
def tables(urls: tuple[str, str]) -> tuple[str, str]:
    """``acc(id, bal)`` with (1, 100), (2, 100) on both servers; PostgreSQL also has
    ``child(parent_id)`` whose foreign key is checked at commit (deferred)."""
    pg_url, my_url = urls
    with _pg(pg_url) as c:
        c.execute("DROP TABLE IF EXISTS child")
        c.execute("DROP TABLE IF EXISTS acc")
        c.execute("CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL)")
        c.execute("INSERT INTO acc VALUES (1, 100), (2, 100)")
        c.execute(
            "CREATE TABLE child (parent_id int REFERENCES acc (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    c2 = _my(my_url)
    try:
        with c2.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS acc")
            cur.execute("CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL) ENGINE=InnoDB")
            cur.execute("INSERT INTO acc VALUES (1, 100), (2, 100)")
    finally:
        c2.close()
    return urls


@pytest.fixture
def fed(tables: tuple[str, str]) -> fl.Federation:
    f = fl.Federation()
    f.attach("crm", tables[0])
    f.attach("sales", tables[1])
    return f


@pytest.fixture
def log(tmp_path: Path) -> str:
    return str(tmp_path / "coordinator.sqlite")


def _move(tx: txn.Transaction, n: int = 10, first: str = "crm") -> None:
    """Move ``n`` from crm.acc 1 to sales.acc 1 (``first`` source first)."""
    steps = {
        "crm": ("crm", "UPDATE acc SET bal = bal - :n WHERE id = 1"),
        "sales": ("sales", "UPDATE acc SET bal = bal + :n WHERE id = 1"),
    }
    order = ["crm", "sales"] if first == "crm" else ["sales", "crm"]
    for name in order:
        src, sql = steps[name]
        assert tx.execute(src, sql, {"n": n}) == 1


def _nothing_prepared(urls: tuple[str, str], coord: str) -> None:
    assert _pg_prepared(urls[0], coord) == []
    assert _my_prepared(urls[1], coord) == []


# ---------------------------------------------------------------------- commit / rollback
def test_commit_on_both(fed: fl.Federation, tables: tuple[str, str], coord: str, log: str) -> None:
    with fed.transaction(log=log, coordinator=coord) as tx:
        bal = tx.query("crm", "SELECT bal FROM acc WHERE id = :id FOR UPDATE", {"id": 1})
        assert bal["bal"].to_list() == [100]
        _move(tx)
    assert tx.outcome == "committed"
    assert tx.gid.startswith(f"fedlab:{coord}:")
    assert _pg_bal(tables[0]) == 90 and _my_bal(tables[1]) == 110
    _nothing_prepared(tables, coord)
    trace = tx.trace
    assert trace.columns == ["source", "phase", "start", "end", "ok", "detail"]
    assert trace["ok"].all()
    phases = list(zip(trace["source"], trace["phase"], strict=True))
    # phase one on both, then the decision, then phase two on both
    i_prep = max(i for i, p in enumerate(phases) if p[1] == "prepare")
    i_dec = next(i for i, d in enumerate(trace["detail"]) if d.startswith("decision: commit"))
    i_com = min(i for i, p in enumerate(phases) if p[1] == "commit")
    assert {s for s, p in phases if p == "prepare"} == {"crm", "sales"}
    assert i_prep < i_dec < i_com
    entry = txn.CoordinatorLog(log).entry(tx.gid)
    assert entry is not None and entry["decision"] == "commit" and entry["state"] == "committed"
    assert fed.in_doubt(log=log, coordinator=coord).height == 0


def test_exception_in_block_rolls_back_both(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str
) -> None:
    with pytest.raises(ZeroDivisionError), fed.transaction(log=log, coordinator=coord) as tx:
        _move(tx)
        _ = 1 / 0
    assert tx.outcome == "rolled back"
    assert _pg_bal(tables[0]) == 100 and _my_bal(tables[1]) == 100
    _nothing_prepared(tables, coord)
    assert set(tx.trace.filter(phase="rollback")["source"]) == {"crm", "sales"}


def test_failed_statement_rolls_back_both(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str
) -> None:
    with pytest.raises(StatementError) as ei, fed.transaction(log=log, coordinator=coord) as tx:
        _move(tx)
        tx.execute("sales", "UPDATE no_such_table SET x = 1")
    assert ei.value.source == "sales"
    assert _pg_bal(tables[0]) == 100 and _my_bal(tables[1]) == 100
    _nothing_prepared(tables, coord)


def test_failed_prepare_deferred_constraint_rolls_back_both(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str
) -> None:
    # MariaDB prepares first and succeeds; PostgreSQL's deferred foreign key fails at PREPARE
    with pytest.raises(PrepareError) as ei, fed.transaction(log=log, coordinator=coord) as tx:
        _move(tx, first="sales")
        tx.execute("crm", "INSERT INTO child VALUES (:p)", {"p": 999})  # no parent 999
    assert ei.value.source == "crm" and "foreign key" in str(ei.value)
    assert tx.outcome == "rolled back"
    assert _pg_bal(tables[0]) == 100 and _my_bal(tables[1]) == 100
    _nothing_prepared(tables, coord)
    trace = tx.trace
    assert trace.filter(source="sales", phase="prepare")["ok"].to_list() == [True]
    assert trace.filter(source="crm", phase="prepare")["ok"].to_list() == [False]
    assert trace.filter(source="sales", phase="rollback")["ok"].to_list() == [True]
    assert txn.CoordinatorLog(log).entry(tx.gid)["decision"] == "abort"  # type: ignore[index]


def test_killed_mariadb_connection_fails_prepare_and_rolls_back_both(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str
) -> None:
    with pytest.raises(PrepareError) as ei, fed.transaction(log=log, coordinator=coord) as tx:
        _move(tx)
        cid = int(tx.query("sales", "SELECT CONNECTION_ID() AS id")["id"][0])
        killer = _my(tables[1])
        with killer.cursor() as cur:
            cur.execute("KILL %s", (cid,))
        killer.close()
    assert ei.value.source == "sales"
    assert _pg_bal(tables[0]) == 100 and _my_bal(tables[1]) == 100
    _nothing_prepared(tables, coord)


def test_single_source_commits_in_one_phase(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str
) -> None:
    with fed.transaction(log=log, coordinator=coord) as tx:
        tx.execute("sales", "UPDATE acc SET bal = 7 WHERE id = 2")
    assert _my_bal(tables[1], 2) == 7
    commit = tx.trace.filter(phase="commit")
    assert commit["detail"].to_list() == ["one-phase commit (single source: 2PC skipped)"]
    assert tx.trace.filter(phase="prepare").height == 0
    assert not Path(log).exists() or txn.CoordinatorLog(log).entry(tx.gid) is None


# ---------------------------------------------------------------------- failure injection
@pytest.mark.parametrize(
    ("point", "left", "decision", "after_recover"),
    [
        ("before_prepare", set(), None, (100, 100)),
        ("after_prepare:crm", {"crm"}, None, (100, 100)),
        ("after_prepare:sales", {"crm", "sales"}, None, (100, 100)),
        ("after_decision", {"crm", "sales"}, "commit", (90, 110)),
        ("during_commit:sales", {"sales"}, "commit", (90, 110)),
    ],
)
def test_fail_at(
    fed: fl.Federation,
    tables: tuple[str, str],
    coord: str,
    log: str,
    point: str,
    left: set[str],
    decision: str | None,
    after_recover: tuple[int, int],
) -> None:
    with (
        pytest.raises(InjectedCrash),
        fed.transaction(log=log, coordinator=coord, fail_at=point) as tx,
    ):
        _move(tx)
    assert tx.outcome == "crashed"
    doubt = fed.in_doubt(log=log, coordinator=coord)
    assert set(doubt["source"]) == left
    assert set(doubt["gid"]) <= {tx.gid}
    assert doubt["decision"].to_list() == [decision] * len(left)
    assert doubt["prepared_at"].null_count() == 0
    if point == "during_commit:sales":  # crm committed before the crash
        assert _pg_bal(tables[0]) == 90 and _my_bal(tables[1]) == 100
    else:
        assert _pg_bal(tables[0]) == 100 and _my_bal(tables[1]) == 100
    done = fed.recover(log=log, coordinator=coord)
    assert set(done["source"]) == left and done["ok"].all()
    assert set(done["action"]) <= {"commit" if decision == "commit" else "rollback"}
    assert (_pg_bal(tables[0]), _my_bal(tables[1])) == after_recover
    _nothing_prepared(tables, coord)
    assert fed.in_doubt(log=log, coordinator=coord).height == 0


def test_fail_at_is_checked(fed: fl.Federation, coord: str) -> None:
    with pytest.raises(ConfigError, match="fail_at"):
        fed.transaction(coordinator=coord, fail_at="after_prepare")
    with pytest.raises(ConfigError, match="no source named"):
        fed.transaction(coordinator=coord, fail_at="during_commit:nope")
    with pytest.raises(ConfigError, match="unknown option"):
        fed.transaction(coordinatr=coord)


_CHILD = """
import sys
import fedlab as fl
pg, my, log, coord, point = sys.argv[1:]
fed = fl.Federation()
fed.attach("crm", pg)
fed.attach("sales", my)
with fed.transaction(log=log, coordinator=coord, fail_at=point, fail_mode="exit") as tx:
    tx.execute("crm", "UPDATE acc SET bal = bal - 10 WHERE id = 1")
    tx.execute("sales", "UPDATE acc SET bal = bal + 10 WHERE id = 1")
print("not reached")
"""


@pytest.mark.parametrize(
    ("point", "expected"),
    [("after_decision", (90, 110)), ("after_prepare:sales", (100, 100))],
)
def test_killed_coordinator_process_then_recover(
    fed: fl.Federation,
    tables: tuple[str, str],
    coord: str,
    log: str,
    point: str,
    expected: tuple[int, int],
) -> None:
    """A child process prepares on both sources and dies (``os._exit(1)``); the parent,
    another coordinator process with the same id and log, resolves what it left."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *tables, log, coord, point],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "not reached" not in proc.stdout
    assert len(_pg_prepared(tables[0], coord)) == 1 and len(_my_prepared(tables[1], coord)) == 1
    assert _pg_bal(tables[0]) == 100 and _my_bal(tables[1]) == 100
    done = fed.recover(log=log, coordinator=coord)
    action = "commit" if point == "after_decision" else "rollback"
    assert done["action"].to_list() == [action, action] and done["ok"].all()
    assert (_pg_bal(tables[0]), _my_bal(tables[1])) == expected
    _nothing_prepared(tables, coord)
    state = txn.CoordinatorLog(log).transactions(coord)["state"].to_list()
    assert state == [f"recovered_{'commit' if action == 'commit' else 'rollback'}"]


def test_recover_skips_transactions_missing_from_the_log(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str, tmp_path: Path
) -> None:
    with (
        pytest.raises(InjectedCrash),
        fed.transaction(log=log, coordinator=coord, fail_at="after_decision") as tx,
    ):
        _move(tx)
    wrong = fed.recover(log=str(tmp_path / "other.sqlite"), coordinator=coord)
    assert set(wrong["action"]) == {"skipped"} and not wrong["ok"].any()
    assert _pg_bal(tables[0]) == 100  # nothing presumed from the wrong log
    assert fed.recover(log=log, coordinator=coord)["ok"].all()
    assert _pg_bal(tables[0]) == 90 and _my_bal(tables[1]) == 110


def test_other_coordinators_are_not_seen(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str
) -> None:
    other = f"{coord}x"
    try:
        with (
            pytest.raises(InjectedCrash),
            fed.transaction(log=log, coordinator=other, fail_at="after_decision") as tx,
        ):
            _move(tx)
        assert fed.in_doubt(log=log, coordinator=coord).height == 0
        assert fed.recover(log=log, coordinator=coord).height == 0
        assert fed.in_doubt(log=log, coordinator=other).height == 2
    finally:
        fed.recover(log=log, coordinator=other)
    assert _pg_bal(tables[0]) == 90
    _nothing_prepared(tables, other)


# ---------------------------------------------------------------------- max_prepared_transactions
def test_detects_max_prepared_transactions_zero_monkeypatched(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str, monkeypatch: Any
) -> None:
    """The detection on a real connection to the shared server (its value, 20, replaced by 0)."""
    src = fed.catalog.sources["crm"]
    con = src.connect(read_only=False)
    try:
        assert txn.pg_max_prepared_transactions(con) > 0  # scripts/setup.sh sets it
        txn.check_can_prepare(src, con)
        monkeypatch.setattr(txn, "pg_max_prepared_transactions", lambda con: 0)
        with pytest.raises(TwoPhaseUnsupportedError, match="ALTER SYSTEM SET max_prepared"):
            txn.check_can_prepare(src, con)
    finally:
        con.close()
    with pytest.raises(TwoPhaseUnsupportedError), fed.transaction(log=log, coordinator=coord) as tx:
        _move(tx)
    assert _pg_bal(tables[0]) == 100 and _my_bal(tables[1]) == 100


def _pg_bin() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


@pytest.fixture(scope="module")
def pg_zero() -> Iterator[str]:
    """A private, throw-away PostgreSQL cluster started with max_prepared_transactions = 0
    (the shared server cannot be restarted for a test)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) to start a private cluster")
    as_pg: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot run initdb")
        as_pg = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="fedlab_pg0_"))
    if as_pg:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    run = {"check": True, "capture_output": True, "timeout": 60}
    try:
        subprocess.run(
            [*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8"], **run,
        )  # fmt: skip
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -c max_prepared_transactions=0 -k {root}"
        subprocess.run(
            [*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
             "-l", str(root / "log"), "start"], **run,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a private PostgreSQL cluster: {e}")
    try:
        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        ) as c:
            c.execute("CREATE TABLE acc (id int PRIMARY KEY, bal int NOT NULL)")
            c.execute("INSERT INTO acc VALUES (1, 100)")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_detects_max_prepared_transactions_zero_for_real(
    pg_zero: str, tables: tuple[str, str], coord: str, log: str
) -> None:
    fed = fl.Federation()
    fed.attach("zero", pg_zero)
    fed.attach("sales", tables[1])
    with (
        pytest.raises(TwoPhaseUnsupportedError) as ei,
        fed.transaction(log=log, coordinator=coord) as tx,
    ):
        tx.execute("zero", "UPDATE acc SET bal = bal - 10 WHERE id = 1")
        tx.execute("sales", "UPDATE acc SET bal = bal + 10 WHERE id = 1")
    msg = str(ei.value)
    assert "max_prepared_transactions = 0" in msg and "ALTER SYSTEM SET" in msg
    assert "scripts/setup.sh" in msg and ei.value.source == "zero"
    assert _pg_bal(pg_zero) == 100 and _my_bal(tables[1]) == 100
    # one source alone needs no PREPARE: still allowed
    with fed.transaction(log=log, coordinator=coord) as tx:
        tx.execute("zero", "UPDATE acc SET bal = 1 WHERE id = 1")
    assert _pg_bal(pg_zero) == 1


# ---------------------------------------------------------------------- SQLite
@pytest.fixture
def book(tmp_path: Path) -> str:
    path = tmp_path / "book.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
    return str(path)


def _ledger(path: str) -> list[str]:
    with sqlite3.connect(path) as c:
        return [r[0] for r in c.execute("SELECT note FROM ledger ORDER BY id")]


def test_sqlite_cannot_join_two_phase_commit(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str, book: str
) -> None:
    fed.attach("book", f"sqlite:///{book}")
    with (
        pytest.raises(TwoPhaseUnsupportedError, match="last resource") as ei,
        fed.transaction(log=log, coordinator=coord) as tx,
    ):
        _move(tx)
        tx.execute("book", "INSERT INTO ledger (note) VALUES (:n)", {"n": "moved 10"})
    assert ei.value.source == "book"
    assert _pg_bal(tables[0]) == 100 and _my_bal(tables[1]) == 100 and _ledger(book) == []


def test_sqlite_as_last_resource(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str, book: str
) -> None:
    fed.attach("book", f"sqlite:///{book}")
    with fed.transaction(log=log, coordinator=coord) as tx:
        tx.execute("book", "INSERT INTO ledger (note) VALUES (:n)", {"n": "moved 10"},
                   last_resource=True)  # fmt: skip
        _move(tx)
    assert _ledger(book) == ["moved 10"]
    assert _pg_bal(tables[0]) == 90 and _my_bal(tables[1]) == 110
    t = tx.trace
    rows = list(zip(t["source"], t["phase"], t["detail"], strict=True))
    lr = next(i for i, r in enumerate(rows) if r[0] == "book" and r[1] == "commit")
    prep = [i for i, r in enumerate(rows) if r[1] == "prepare"]
    decision = next(i for i, r in enumerate(rows) if r[2].startswith("decision: commit"))
    assert max(prep) < lr < decision  # committed after every prepare, before the decision
    assert txn.CoordinatorLog(log).entry(tx.gid)["last_resource"] == "book"  # type: ignore[index]
    # the option form; a last resource whose commit fails rolls every source back (here
    # PostgreSQL as the last resource, its deferred foreign key failing at COMMIT)
    with (
        pytest.raises(PrepareError) as ei,
        fed.transaction(log=log, coordinator=coord, last_resource="crm") as tx2,
    ):
        _move(tx2, first="sales")
        tx2.execute("crm", "INSERT INTO child VALUES (999)")
    assert ei.value.source == "crm" and "last resource" in str(ei.value)
    assert tx2.trace.filter(source="sales", phase="rollback")["ok"].to_list() == [True]
    assert _pg_bal(tables[0]) == 90 and _my_bal(tables[1]) == 110
    assert _ledger(book) == ["moved 10"]
    _nothing_prepared(tables, coord)


def test_sqlite_alone_commits(fed: fl.Federation, coord: str, log: str, book: str) -> None:
    fed.attach("book", f"sqlite:///{book}")
    with fed.transaction(log=log, coordinator=coord) as tx:
        tx.execute("book", "INSERT INTO ledger (note) VALUES (?)", ["alone"])
    assert _ledger(book) == ["alone"] and tx.outcome == "committed"


# ---------------------------------------------------------------------- concurrency
def test_concurrent_read_then_write_loses_no_update(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str
) -> None:
    threads, rounds = 4, 5
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(rounds):
                with fed.transaction(log=log, coordinator=coord) as tx:
                    a = tx.query("crm", "SELECT bal FROM acc WHERE id = 1 FOR UPDATE")["bal"][0]
                    b = tx.query("sales", "SELECT bal FROM acc WHERE id = 1 FOR UPDATE")["bal"][0]
                    time.sleep(0.002)  # widen the race window
                    tx.execute("crm", "UPDATE acc SET bal = :v WHERE id = 1", {"v": a - 1})
                    tx.execute("sales", "UPDATE acc SET bal = :v WHERE id = 1", {"v": b + 1})
        except BaseException as e:  # reported below
            errors.append(e)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert errors == []
    n = threads * rounds
    assert _pg_bal(tables[0]) == 100 - n and _my_bal(tables[1]) == 100 + n
    states = txn.CoordinatorLog(log).transactions(coord)["state"].to_list()
    assert states == ["committed"] * n
    _nothing_prepared(tables, coord)


# ---------------------------------------------------------------------- parameters, secrets
def test_named_parameters_are_bound_by_the_driver() -> None:
    sql = "SELECT ':x', a::int, 5 % 2, \"c:d\" FROM t -- :y\nWHERE b = :b AND c = :b"
    text, args = txn._bind("postgresql", sql, {"b": 1, "unused": 2})
    assert (
        text == "SELECT ':x', a::int, 5 %% 2, \"c:d\" FROM t -- :y\nWHERE b = %(b)s AND c = %(b)s"
    )
    assert args == {"b": 1}
    assert txn._bind("duckdb", "SELECT :b", {"b": 1}) == ("SELECT $b", {"b": 1})
    assert txn._bind("sqlite", "SELECT :b", {"b": 1}) == ("SELECT :b", {"b": 1})
    assert txn._bind("mysql", r"SELECT 'it\'s :x', :y", {"y": 1})[0] == r"SELECT 'it\'s :x', %(y)s"
    with pytest.raises(fl.ParameterError, match="missing"):
        txn._bind("postgresql", "SELECT :b", {})


def test_injection_through_a_parameter_is_data(
    fed: fl.Federation, tables: tuple[str, str], coord: str, log: str
) -> None:
    evil = "1; DROP TABLE acc; --"
    with fed.transaction(log=log, coordinator=coord) as tx:
        got = tx.query(
            "crm", "SELECT count(*) AS n FROM acc WHERE CAST(id AS text) = :v", {"v": evil}
        )
        assert got["n"].to_list() == [0]
        got = tx.query("sales", "SELECT count(*) AS n FROM acc WHERE id = :v", {"v": evil})
    assert _pg_bal(tables[0]) == 100 and _my_bal(tables[1]) == 100


def test_no_password_in_errors_or_trace(tables: tuple[str, str], coord: str, log: str) -> None:
    secret = "Zq7-s3cret-pw"
    pg = Source.from_url("x", tables[0])
    fed = fl.Federation()  # trust auth: the password is sent and ignored, and never shown
    fed.attach("crm", f"postgresql://postgres:{secret}@{pg.host}:{pg.port}/{pg.database}")
    fed.attach("sales", tables[1])
    with pytest.raises(StatementError) as ei, fed.transaction(log=log, coordinator=coord) as tx:
        tx.execute("sales", "UPDATE acc SET bal = bal WHERE id = 1")
        tx.execute("crm", f"SELECT '{secret}' FROM no_such_table")
    assert secret not in str(ei.value) and "***" in str(ei.value)
    assert secret not in str(tx.trace.to_dicts())


# ---------------------------------------------------------------------- phase two fails
def _through_proxy(tables: tuple[str, str], proxy: Any) -> fl.Federation:
    """crm directly; sales (MariaDB) through the fault proxy."""
    s = Source.from_url("x", tables[1])
    fed = fl.Federation()
    fed.attach("crm", tables[0])
    fed.attach("sales", f"mysql://root@127.0.0.1:{proxy.port}/{s.database}")
    return fed


def test_phase_two_failure_is_in_doubt_then_recovered(
    tables: tuple[str, str], coord: str, log: str
) -> None:
    """MariaDB becomes unreachable between the logged decision and its ``XA COMMIT`` (a
    fault proxy, cut for real at the ``during_commit:sales`` point): PostgreSQL commits,
    MariaDB stays prepared; phase two retries on new sessions, then raises InDoubtError;
    ``recover()`` commits MariaDB once it is reachable again."""
    from fedlab.faults import FaultProxy

    pg_url, my_url = tables
    with FaultProxy("127.0.0.1", 3306) as proxy:
        fed = _through_proxy(tables, proxy)

        def cut(point: str) -> None:
            proxy.refuse()
            proxy.reset()

        with (
            pytest.raises(InDoubtError) as ei,
            fed.transaction(
                log=log, coordinator=coord, fail_at="during_commit:sales", fail_mode=cut
            ) as tx,
        ):
            _move(tx)
        assert ei.value.gid == tx.gid and "fed.recover()" in str(ei.value)
        assert tx.outcome == "in doubt"
        commits = tx.trace.filter(phase="commit")
        assert commits.filter(source="crm")["ok"].to_list() == [True]
        assert commits.filter(source="sales")["ok"].to_list() == [False, False]
        # crm committed; sales prepared, not committed: read directly, not through the proxy
        assert _pg_bal(pg_url) == 90 and _my_bal(my_url) == 100
        assert len(_my_prepared(my_url, coord)) == 1 and _pg_prepared(pg_url, coord) == []
        proxy.passthrough()
        doubt = fed.in_doubt(log=log, coordinator=coord)
        assert doubt["source"].to_list() == ["sales"] and doubt["decision"].to_list() == ["commit"]
        done = fed.recover(log=log, coordinator=coord)
        assert done["action"].to_list() == ["commit"] and done["ok"].all()
    assert _my_bal(my_url) == 110
    _nothing_prepared(tables, coord)
    assert txn.CoordinatorLog(log).entry(tx.gid)["state"] == "recovered_commit"  # type: ignore[index]


def test_phase_two_finishes_on_a_new_session(tables: tuple[str, str], coord: str, log: str) -> None:
    """The prepared transaction outlives its session: when the session that prepared it
    is cut (TCP reset) just before its ``XA COMMIT``, phase two commits it from a new
    session and the transaction commits."""
    from fedlab.faults import FaultProxy

    pg_url, my_url = tables
    with FaultProxy("127.0.0.1", 3306) as proxy:
        fed = _through_proxy(tables, proxy)
        cut: list[int] = []
        with fed.transaction(
            log=log,
            coordinator=coord,
            fail_at="during_commit:sales",
            fail_mode=lambda point: cut.append(proxy.reset()),
        ) as tx:
            _move(tx)
    assert cut == [1]
    assert tx.outcome == "committed"
    sales = tx.trace.filter(source="sales", phase="commit")
    assert sales["ok"].to_list() == [False, True]
    assert sales["detail"][1] == "XA COMMIT on a new session"
    assert _pg_bal(pg_url) == 90 and _my_bal(my_url) == 110
    _nothing_prepared(tables, coord)
