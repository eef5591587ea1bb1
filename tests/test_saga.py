"""Sagas (fedlab.saga) over real PostgreSQL + MariaDB + SQLite.

Every check reads the rows directly with psycopg / pymysql / sqlite3, never through
fedlab. The money: ``bank.accounts`` (PostgreSQL), ``shop.wallets`` (MariaDB),
``ledger.entries`` (SQLite). A transfer is three steps: debit (bank), credit (shop),
record (ledger), each with its compensation.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

import fedlab as fl
from fedlab.errors import SagaError, SagaFailedError, SagaStuckError
from fedlab.saga import CRASH_EXIT_STATUS, KEYS_TABLE, Saga, _convert
from fedlab.source import Source

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Bank:
    """The three participant databases and a saga log path."""

    pg_url: str
    my_url: str
    sqlite_path: Path
    log: Path

    # ------------------------------------------------------------------ raw access
    def pg(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        s = Source.from_url("x", self.pg_url)
        with psycopg.connect(
            host=s.host, port=s.port, user=s.user, password=s._password, dbname=s.database
        ) as con:
            cur = con.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
            con.commit()
            return rows

    def my(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        s = Source.from_url("x", self.my_url)
        con = pymysql.connect(
            host=s.host, port=s.port, user=s.user or "root", database=s.database, autocommit=True
        )
        try:
            with con.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            con.close()

    def lite(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(self.sqlite_path)
        try:
            with con:
                return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def state(self) -> dict[str, Any]:
        """The user data, read directly."""
        return {
            "bank": self.pg("SELECT id, balance FROM accounts ORDER BY id"),
            "shop": self.my("SELECT id, balance FROM wallets ORDER BY id"),
            "ledger": self.lite("SELECT id, note FROM entries ORDER BY id"),
        }

    def keys(self) -> dict[str, list[tuple[Any, ...]]]:
        """``(step_key, kind)`` rows of the idempotency-key table in each database."""
        q = f"SELECT step_key, kind FROM {KEYS_TABLE} ORDER BY step_key, kind"
        out: dict[str, list[tuple[Any, ...]]] = {}
        for name, run in (("bank", self.pg), ("shop", self.my), ("ledger", self.lite)):
            try:
                out[name] = [tuple(r) for r in run(q)]
            except Exception:  # the table is created on first use
                out[name] = []
        return out

    def federation(self) -> fl.Federation:
        fed = fl.Federation()
        fed.attach("bank", self.pg_url)
        fed.attach("shop", self.my_url)
        fed.attach("ledger", f"sqlite:///{self.sqlite_path}")
        return fed


@pytest.fixture(scope="module")
def databases(
    pg_database: Callable[[str], str], mariadb_database: Callable[[str], str]
) -> tuple[str, str]:
    return pg_database("fedlab_saga"), mariadb_database("fedlab_saga")


@pytest.fixture
def bank(databases: tuple[str, str], tmp_path: Path) -> Bank:
    pg_url, my_url = databases
    b = Bank(pg_url, my_url, tmp_path / "ledger.db", tmp_path / "sagas.sqlite")
    b.pg(f"DROP TABLE IF EXISTS accounts, {KEYS_TABLE}")
    b.pg("CREATE TABLE accounts (id INT PRIMARY KEY, balance NUMERIC(12, 2) NOT NULL)")
    b.pg("INSERT INTO accounts VALUES (1, 500.00), (2, 50.00)")
    b.my(f"DROP TABLE IF EXISTS wallets, {KEYS_TABLE}")
    b.my("CREATE TABLE wallets (id INT PRIMARY KEY, balance DECIMAL(12, 2) NOT NULL) ENGINE=InnoDB")
    b.my("INSERT INTO wallets VALUES (7, 100.00)")
    b.lite("CREATE TABLE entries (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
    b.lite("INSERT INTO entries VALUES (1, 'opening')")
    return b


AMOUNT = {"amt": 100, "src": 1, "dst": 7}


def transfer(s: Saga, *, entry_id: int = 2, keys: bool = False) -> Saga:
    """Declare the three-step transfer on ``s``; ``entry_id=1`` makes step 3 fail (the
    ledger already has row 1: a real primary-key violation in SQLite)."""
    k = (lambda n: f"transfer-42:{n}") if keys else (lambda n: None)
    s.step(
        "debit",
        "bank",
        "UPDATE accounts SET balance = balance - :amt WHERE id = :src",
        "UPDATE accounts SET balance = balance + :amt WHERE id = :src",
        params=AMOUNT,
        key=k("debit"),
    )
    s.step(
        "credit",
        "shop",
        "UPDATE wallets SET balance = balance + :amt WHERE id = :dst",
        "UPDATE wallets SET balance = balance - :amt WHERE id = :dst",
        params=AMOUNT,
        key=k("credit"),
    )
    s.step(
        "record",
        "ledger",
        "INSERT INTO entries (id, note) VALUES (:id, 'transfer 1 -> 7: 100')",
        "DELETE FROM entries WHERE id = :id",
        params={"id": entry_id},
        key=k("record"),
    )
    return s


AFTER = {
    "bank": [(1, 400), (2, 50)],
    "shop": [(7, 200)],
    "ledger": [(1, "opening"), (2, "transfer 1 -> 7: 100")],
}


def same(state: dict[str, Any], want: dict[str, Any]) -> bool:
    norm = {
        k: [tuple(float(x) if k != "ledger" else x for x in r) for r in v] for k, v in state.items()
    }
    return norm == {
        k: [tuple(float(x) if k != "ledger" else x for x in r) for r in v] for k, v in want.items()
    }


def log_rows(log: Path, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(log)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


# ---------------------------------------------------------------------------- tests
def test_successful_saga(bank: Bank) -> None:
    fed = bank.federation()
    res = transfer(fed.saga(log=bank.log, name="transfer")).run()
    assert res.ok and res.status == "done", str(res)
    assert res.ran == ["debit", "credit", "record"]
    assert res.failed is None and res.compensated == []
    assert same(bank.state(), AFTER)
    # the key of each step sits in its own database, kind 'action'
    keys = bank.keys()
    assert keys["bank"] == [(f"{res.saga_id}:debit", "action")]
    assert keys["shop"] == [(f"{res.saga_id}:credit", "action")]
    assert keys["ledger"] == [(f"{res.saga_id}:record", "action")]
    # the log says done; nothing pending
    assert log_rows(bank.log, "SELECT status FROM sagas WHERE saga_id = ?", (res.saga_id,)) == [
        ("done",)
    ]
    assert fed.saga(log=bank.log).pending().height == 0
    # the trace: three actions, in order, all ok, each with start <= end
    tr = res.trace
    assert tr["step"].to_list() == ["debit", "credit", "record"]
    assert tr["source"].to_list() == ["bank", "shop", "ledger"]
    assert tr["phase"].to_list() == ["action"] * 3 and tr["ok"].all()
    assert (tr["end_s"] >= tr["start_s"]).all()
    assert tr["end_s"][0] <= tr["start_s"][1]


def test_step3_failure_compensates_2_then_1_and_leaves_data_as_before(bank: Bank) -> None:
    before = bank.state()
    res = transfer(bank.federation().saga(log=bank.log), entry_id=1).run()
    assert res.status == "compensated" and not res.ok
    assert res.ran == ["debit", "credit"]
    assert res.failed == "record"
    assert "'record'" in res.error and "'ledger'" in res.error and "IntegrityError" in res.error
    assert res.compensated == ["credit", "debit"]  # reverse order
    assert bank.state() == before
    # the compensations are keyed too (kind 'compensation'), in the same databases
    assert bank.keys()["bank"] == [
        (f"{res.saga_id}:debit", "action"),
        (f"{res.saga_id}:debit", "compensation"),
    ]
    assert bank.keys()["ledger"] == []  # step 3 rolled back: no key either
    tr = res.trace
    comp = tr.filter(tr["phase"] == "compensation")
    assert comp["step"].to_list() == ["credit", "debit"]
    assert comp["outcome"].to_list() == ["compensated", "compensated"]
    failed = tr.filter(~tr["ok"])
    assert failed["step"].to_list() == ["record"] and failed["outcome"].to_list() == ["failed"]
    # compensation of credit started after record failed, debit after credit's ended
    rec_end = tr.filter(tr["step"] == "record")["end_s"][0]
    assert comp["start_s"][0] >= rec_end and comp["start_s"][1] >= comp["end_s"][0]
    events = log_rows(
        bank.log,
        "SELECT step, phase, event FROM saga_events WHERE saga_id = ? AND idx >= 0 ORDER BY id",
        (res.saga_id,),
    )
    assert events == [
        ("debit", "action", "started"),
        ("debit", "action", "done"),
        ("credit", "action", "started"),
        ("credit", "action", "done"),
        ("record", "action", "started"),
        ("record", "action", "failed"),
        ("credit", "compensation", "started"),
        ("credit", "compensation", "compensated"),
        ("debit", "compensation", "started"),
        ("debit", "compensation", "compensated"),
    ]


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    import fedlab as fl
    sys.path.insert(0, {tests!r})
    from test_saga import transfer
    fed = fl.Federation()
    fed.attach("bank", {pg!r})
    fed.attach("shop", {my!r})
    fed.attach("ledger", {lite!r})
    s = transfer(fed.saga(log={log!r}, name="crashing", fail_at="crash_after:credit"))
    s.run()
    print("not reached")
    """
)


def crash_child(bank: Bank) -> str:
    """Run the transfer in a child process that dies (os._exit) right after step 2;
    return the saga id from the log."""
    script = CHILD.format(
        root=str(ROOT),
        tests=str(ROOT / "tests"),
        pg=bank.pg_url,
        my=bank.my_url,
        lite=f"sqlite:///{bank.sqlite_path}",
        log=str(bank.log),
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == CRASH_EXIT_STATUS, proc.stderr
    assert "not reached" not in proc.stdout
    (sid,) = log_rows(bank.log, "SELECT saga_id FROM sagas WHERE name = 'crashing'")[0]
    return str(sid)


def test_crashed_saga_is_pending_and_resume_finishes_without_reapplying(bank: Bank) -> None:
    sid = crash_child(bank)
    # steps 1-2 applied and committed, step 3 not
    assert same(
        bank.state(), {"bank": [(1, 400), (2, 50)], "shop": [(7, 200)], "ledger": [(1, "opening")]}
    )
    fed = bank.federation()
    pend = fed.saga(log=bank.log).pending()
    row = pend.filter(pend["saga_id"] == sid).to_dicts()[0]
    assert row["status"] == "running" and row["steps_done"] == 2 and row["steps_total"] == 3
    assert row["alive"] is False  # the process is gone
    # make the log lag behind the databases, as a crash between a step's commit and its
    # "done" record would: the log says step 2 only started
    con = sqlite3.connect(bank.log)
    with con:
        con.execute(
            "UPDATE saga_steps SET status = 'started' WHERE saga_id = ? AND idx = 1", (sid,)
        )
    con.close()
    res = fed.saga(log=bank.log).resume(sid)  # steps rebuilt from the log
    assert res.status == "done", str(res)
    assert res.skipped == ["credit"]  # its key was there: not applied twice
    assert same(bank.state(), AFTER)  # debit once, credit once, record once
    assert fed.saga(log=bank.log).pending().height == 0
    tr = res.trace
    assert tr.filter(tr["phase"] == "action")["step"].to_list() == [
        "debit",
        "credit",
        "credit",
        "record",
    ]
    assert tr.filter(tr["step"] == "credit")["outcome"].to_list() == ["done", "skipped"]
    assert tr["pid"].n_unique() == 2  # the child's steps and the parent's


def test_compensate_crashed_saga_undoes_exactly_the_done_steps(bank: Bank) -> None:
    before = bank.state()
    sid = crash_child(bank)
    fed = bank.federation()
    # declared steps instead of the log's definitions also work (same names and sources)
    res = transfer(fed.saga(log=bank.log)).compensate(sid)
    assert res.status == "compensated"
    assert res.compensated == ["credit", "debit"]
    assert bank.state() == before
    tr = res.trace
    comp = tr.filter(tr["phase"] == "compensation")
    # record never started: not touched at all; credit and debit compensated in reverse
    assert comp["step"].to_list() == ["credit", "debit"]
    assert log_rows(bank.log, "SELECT status FROM sagas WHERE saga_id = ?", (sid,)) == [
        ("compensated",)
    ]
    # compensating again changes nothing (keys): no double refund
    again = fed.saga(log=bank.log).compensate(sid)
    assert again.status == "compensated" and bank.state() == before
    with pytest.raises(SagaError, match="not running"):
        fed.saga(log=bank.log).resume(sid)


def test_same_key_never_applies_twice(bank: Bank) -> None:
    fed = bank.federation()
    first = transfer(fed.saga(log=bank.log), keys=True).run()
    assert first.ok and first.skipped == []
    second = transfer(fed.saga(log=bank.log), keys=True).run()  # a retry of "transfer-42"
    assert second.ok
    assert second.skipped == ["debit", "credit", "record"]
    assert same(bank.state(), AFTER)  # applied once
    assert bank.keys()["shop"] == [("transfer-42:credit", "action")]


@pytest.mark.parametrize("step,source", [("debit", "bank"), ("credit", "shop")])
def test_change_and_key_commit_together(bank: Bank, step: str, source: str) -> None:
    """The step's transaction fails after its UPDATE and its key insert ran: neither is
    there afterwards, so 'changed but no key' (a crash between the two) cannot happen."""
    before = bank.state()
    s = transfer(bank.federation().saga(log=bank.log, fail_at=f"action:{step}"))
    res = s.run()
    assert res.status == "compensated" and res.failed == step
    assert "injected failure" in (res.error or "") and repr(source) in (res.error or "")
    assert bank.state() == before
    keys = bank.keys()
    db_keys = keys[source]
    assert all(k[0] != f"{res.saga_id}:{step}" for k in db_keys), db_keys
    # the same saga resumed without the fault would apply it exactly once: the key is free
    # (shown by a fresh run with the same key)
    again = transfer(bank.federation().saga(log=bank.log)).run()
    assert again.ok and same(bank.state(), AFTER)


def test_failing_compensation_marks_the_saga_stuck(bank: Bank) -> None:
    fed = bank.federation()
    s = fed.saga(log=bank.log, name="stuck", compensation_retries=1, retry_delay=0.01)
    s.step(
        "debit",
        "bank",
        "UPDATE accounts SET balance = balance - 10 WHERE id = 1",
        "UPDATE accounts SET balance = balance + 10 WHERE id = 1",
    )
    s.step(
        "credit",
        "shop",
        "UPDATE wallets SET balance = balance + 10 WHERE id = 7",
        "UPDATE wallets_gone SET balance = balance - 10 WHERE id = 7",  # a broken compensation
    )
    s.step("record", "ledger", "INSERT INTO entries VALUES (1, 'dup')", "SELECT 1")
    with pytest.raises(SagaStuckError) as info:
        s.run()
    err = info.value
    assert err.step == "credit" and err.source == "shop"
    msg = str(err)
    assert "'credit'" in msg and "'shop'" in msg and "wallets_gone" in msg and "stuck" in msg
    assert "compensate(" in msg and err.saga_id in msg
    res = err.result
    assert res is not None and res.status == "stuck" and res.compensated == []
    # debit was not compensated: compensations stop at the stuck one (reverse order)
    assert same(
        bank.state(), {"bank": [(1, 490), (2, 50)], "shop": [(7, 110)], "ledger": [(1, "opening")]}
    )
    assert log_rows(bank.log, "SELECT status FROM sagas WHERE saga_id = ?", (err.saga_id,)) == [
        ("stuck",)
    ]
    assert log_rows(
        bank.log, "SELECT status FROM saga_steps WHERE saga_id = ? ORDER BY idx", (err.saga_id,)
    ) == [("done",), ("stuck",), ("failed",)]
    pend = fed.saga(log=bank.log).pending()
    assert pend.filter(pend["saga_id"] == err.saga_id)["status"].to_list() == ["stuck"]
    attempts = res.trace.filter(res.trace["phase"] == "compensation")
    assert attempts["outcome"].to_list() == ["failed", "failed"]  # 1 + 1 retry
    # fix the cause, compensate again: done
    bank.my("CREATE TABLE wallets_gone (id INT PRIMARY KEY, balance DECIMAL(12, 2)) ENGINE=InnoDB")
    try:
        fixed = fed.saga(log=bank.log).compensate(err.saga_id)
    finally:
        bank.my("DROP TABLE wallets_gone")
    assert fixed.status == "compensated" and fixed.compensated == ["credit", "debit"]
    assert same(
        bank.state(), {"bank": [(1, 500), (2, 50)], "shop": [(7, 110)], "ledger": [(1, "opening")]}
    )  # (the broken compensation updated the wrong table: the wallet keeps its +10)


def test_context_manager_runs_steps_eagerly_and_compensates_on_error(bank: Bank) -> None:
    fed = bank.federation()
    before = bank.state()
    with (
        pytest.raises(RuntimeError, match="fraud check"),
        fed.saga(log=bank.log, name="block") as s,
    ):
        s.step(
            "debit",
            "bank",
            "UPDATE accounts SET balance = balance - 100 WHERE id = 1",
            "UPDATE accounts SET balance = balance + 100 WHERE id = 1",
        )
        # the step is already committed: visible from another session
        assert bank.pg("SELECT balance FROM accounts WHERE id = 1")[0][0] == 400
        raise RuntimeError("fraud check")
    assert s.result is not None and s.result.status == "compensated"
    assert s.result.compensated == ["debit"]
    assert bank.state() == before
    # a failing step inside the block raises SagaFailedError after compensating
    with pytest.raises(SagaFailedError) as info, fed.saga(log=bank.log) as s2:
        s2.step(
            "debit",
            "bank",
            "UPDATE accounts SET balance = balance - 1 WHERE id = 1",
            "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
        )
        s2.step("boom", "shop", "UPDATE no_such_table SET x = 1")
    assert info.value.step == "boom" and info.value.source == "shop"
    assert bank.state() == before
    # callables get the connection inside the step's transaction
    with fed.saga(log=bank.log) as s3:
        s3.step(
            "py",
            "ledger",
            lambda con: con.execute("INSERT INTO entries VALUES (5, 'from python')"),
            lambda con: con.execute("DELETE FROM entries WHERE id = 5"),
        )
    assert s3.result is not None and s3.result.ok
    assert bank.lite("SELECT note FROM entries WHERE id = 5") == [("from python",)]


def test_errors_are_clear_and_carry_no_password(bank: Bank, tmp_path: Path) -> None:
    fed = bank.federation()
    s = fed.saga(log=bank.log)
    with pytest.raises(SagaError, match=r"no source named 'nope'.*bank"):
        s.step("x", "nope", "SELECT 1")
    s.step("x", "bank", "SELECT 1")
    with pytest.raises(SagaError, match="already has a step named 'x'"):
        s.step("x", "bank", "SELECT 1")
    with pytest.raises(SagaError, match="no saga 'missing'"):
        fed.saga(log=bank.log).resume("missing")
    with pytest.raises(SagaError, match="fail_at"):
        fed.saga(log=bank.log, fail_at="sometime")
    # a URL with a password (trust auth ignores it): never in a message or in the log
    url = bank.pg_url.replace("postgres@", "postgres:Sup3rSecretPw@")
    fed2 = fl.Federation()
    fed2.attach("bank", url)
    res = fed2.saga(log=bank.log).step("bad", "bank", "UPDATE nowhere SET a = 1").run()
    assert res.failed == "bad" and "nowhere" in (res.error or "")
    assert "Sup3rSecretPw" not in str(res)
    assert b"Sup3rSecretPw" not in bank.log.read_bytes()


def test_parameters_are_converted_outside_quotes() -> None:
    sql = "SELECT ':no', x::text, '50%', :a -- :b\n FROM t WHERE y = :b /* :c */"
    pg, args = _convert(sql, {"a": 1, "b": 2}, "postgresql")
    assert pg == "SELECT ':no', x::text, '50%%', %(a)s -- :b\n FROM t WHERE y = %(b)s /* :c */"
    assert args == {"a": 1, "b": 2}
    lite, _ = _convert(sql, {"a": 1, "b": 2}, "sqlite")
    assert lite == sql
    duck, _ = _convert("SELECT :a", {"a": 1}, "duckdb")
    assert duck == "SELECT $a"
    with pytest.raises(SagaError, match=":zz has no value"):
        _convert("SELECT :zz", {"a": 1}, "mysql")


def test_concurrent_retries_with_one_key_apply_once(bank: Bank) -> None:
    """Two sagas with the same key at the same time: the key's primary key makes the
    second wait for the first's commit, then skip."""
    import threading

    results: list[Any] = []

    def one() -> None:
        s = bank.federation().saga(log=bank.log)
        s.step(
            "debit",
            "bank",
            ["UPDATE accounts SET balance = balance - 1 WHERE id = 1", "SELECT pg_sleep(0.3)"],
            "UPDATE accounts SET balance = balance + 1 WHERE id = 1",
            key="concurrent-debit",
        )
        results.append(s.run())

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
    assert sorted(len(r.skipped) for r in results) == [0, 1]
    assert bank.pg("SELECT balance FROM accounts WHERE id = 1")[0][0] == 499


def test_duckdb_step_and_key_share_the_transaction(tmp_path: Path) -> None:
    """DuckDB's ``cursor()`` is a second connection: fedlab runs a step's statements on the
    connection that holds the transaction, so a failed step leaves neither change nor key."""
    import duckdb

    path = tmp_path / "d.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (id INT PRIMARY KEY, v INT)")
    con.execute("INSERT INTO t VALUES (1, 10)")
    con.close()
    fed = fl.Federation()
    fed.attach("d", f"duckdb:///{path}")
    s = fed.saga(log=tmp_path / "log.sqlite")
    s.step(
        "a",
        "d",
        "UPDATE t SET v = v - :x WHERE id = 1",
        "UPDATE t SET v = v + :x WHERE id = 1",
        params={"x": 3},
    )
    s.step("b", "d", ["UPDATE t SET v = 0 WHERE id = 1", "INSERT INTO t VALUES (1, 0)"])
    res = s.run()
    assert res.status == "compensated" and res.failed == "b" and res.compensated == ["a"]
    for key in ("k", "k"):  # the second run skips
        r = (
            fed.saga(log=tmp_path / "log.sqlite")
            .step("a", "d", "UPDATE t SET v = v + 1 WHERE id = 1", key=key)
            .run()
        )
        assert r.ok
    con = duckdb.connect(str(path))
    try:
        assert con.execute("SELECT v FROM t").fetchall() == [(11,)]
        keys = con.execute(f"SELECT step_key, kind FROM {KEYS_TABLE} ORDER BY 1, 2").fetchall()
    finally:
        con.close()
    assert sorted(keys) == sorted(
        [("k", "action"), (f"{res.saga_id}:a", "action"), (f"{res.saga_id}:a", "compensation")]
    )


def test_prune_keys_keeps_unfinished_sagas_keys(bank: Bank) -> None:
    """``prune_keys`` deletes old keys on every participant, but not those of a saga the
    log still lists as unfinished (needed to resume it without re-applying a step)."""
    fed = bank.federation()
    done = transfer(fed.saga(log=bank.log), keys=True, entry_id=3).run()
    assert done.ok
    sid = crash_child(bank)  # a second transfer, interrupted after "credit"
    keys = bank.keys()
    assert len(keys["bank"]) == 2 and len(keys["shop"]) == 2 and len(keys["ledger"]) == 1
    saga = fed.saga(log=bank.log)
    # nothing is old enough yet
    assert saga.prune_keys(3600)["deleted"].to_list() == [0, 0, 0]
    pruned = saga.prune_keys(0)
    assert pruned.to_dicts() == [
        {"source": "bank", "deleted": 1},
        {"source": "shop", "deleted": 1},
        {"source": "ledger", "deleted": 1},
    ]
    left = bank.pg(f"SELECT saga_id FROM {KEYS_TABLE}") + bank.my(
        f"SELECT saga_id FROM {KEYS_TABLE}"
    )
    assert {r[0] for r in left} == {sid}  # only the unfinished saga's keys stay
    res = fed.saga(log=bank.log).resume(sid)  # and resuming it still skips its done steps
    assert res.status == "done" and res.skipped == []
    # each step ran once over the two processes: the child's debit and credit, then record
    assert res.trace.filter(phase="action")["step"].to_list() == ["debit", "credit", "record"]
    with pytest.raises(SagaError, match="older_than"):
        saga.prune_keys(-1)
