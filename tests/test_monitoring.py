"""Monitoring: the query history, its plots, source health and the audit log.

The demo's SQLite files for most tests; PostgreSQL and MariaDB for the server versions.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import matplotlib
import polars as pl
import pytest

import fedlab as fl
from fedlab.audit import fingerprint, mask_literals, normalize_sql, tables_in_sql
from fedlab.load import write_tables
from fedlab.monitor import (
    HISTORY_SCHEMA,
    Monitor,
    health,
    plot_cross_source,
    plot_error_rate,
    plot_history,
    plot_latency,
)
from fedlab.source import Source

matplotlib.use("Agg")

OLD_COLUMNS = ["at", "sql", "strategy", "ok", "seconds", "fragments", "sources", "rows", "bytes"]


@pytest.fixture
def fed() -> fl.Federation:
    return fl.demo.federation()


# ------------------------------------------------------------------ fingerprints
def test_same_shape_same_fingerprint() -> None:
    a = fingerprint("SELECT name FROM users WHERE id = 7 AND country IN ('US', 'FR', 'DE')")
    b = fingerprint("select  name\nfrom users where id = :id and country in (:c)")
    c = fingerprint("SELECT name FROM users WHERE id = -1 AND country IN ('x')")
    assert a == b == c
    assert fingerprint("SELECT email FROM users WHERE id = 7") != a
    assert fingerprint("SELECT name FROM users WHERE id > 7 AND country IN ('US')") != a
    assert normalize_sql("select a from t where b = 'x' limit 5") == (
        "SELECT a FROM t WHERE b = ? LIMIT ?"
    )
    # text sqlglot cannot parse is still fingerprinted, literals masked by pattern
    assert fingerprint("SELEC 1 FROM") == fingerprint("SELEC 2 FROM")
    assert mask_literals("SELECT x FROM t WHERE s = 'it''s' AND n = 3.5") == (
        "SELECT x FROM t WHERE s = ? AND n = ?"
    )
    assert set(tables_in_sql("WITH c AS (SELECT * FROM crm.users) SELECT * FROM c, orders")) == {
        "orders",
        "crm.users",
    }


# ------------------------------------------------------------------ history
def test_history_records_successes_failures_and_refusals(fed: fl.Federation) -> None:
    fed.sql("SELECT count(*) FROM users WHERE country = :c", params={"c": "US"})
    fed.sql("SELECT count(*) FROM users WHERE country = :c", params={"c": "FR"})
    fed.sql("SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id WHERE o.id < 5")
    with pytest.raises(fl.UnknownTableError):
        fed.sql("SELECT * FROM no_such_table")
    fed.policy(deny=["crm.users.email"])
    with pytest.raises(fl.FedlabError, match=r"crm\.users\.email"):
        fed.sql("SELECT name FROM users WHERE email LIKE '%@example.com'")
    h = fed.history()
    assert h.columns[: len(OLD_COLUMNS)] == OLD_COLUMNS and "error" in h.columns
    assert set(HISTORY_SCHEMA) == set(h.columns)
    assert h.height == 5
    assert h["status"].to_list() == ["ok", "ok", "ok", "error", "error"]
    assert h["ok"].to_list() == [True, True, True, False, False]
    assert h["decision"].to_list() == ["allowed"] * 4 + ["denied"]
    assert h["error_class"].to_list()[3:] == ["UnknownTableError", "AccessDeniedError"]
    assert h["id"].to_list() == [1, 2, 3, 4, 5]
    fp = h["fingerprint"].to_list()
    assert fp[0] == fp[1] and len(set(fp)) == 4
    assert h["n_sources"].to_list()[:3] == [1, 1, 2]
    assert h["sources"][2] == "crm, sales" and h["tables"][2] == "crm.users, sales.orders"
    assert h["tables"][3] == "no_such_table" and h["tables"][4] == "crm.users"
    assert h["result_rows"][0] == 1 and h["rows"][0] >= 1 and h["bytes"][0] > 0
    assert all(s >= 0 for s in h["seconds"].to_list())
    assert h["user"].n_unique() == 1 and h["user"][0]
    assert h.schema["time"] == pl.Datetime("ms")
    per = h["per_source"][2].to_list()
    assert {p["source"] for p in per} == {"crm", "sales"}
    assert all(p["seconds"] >= 0 and p["error"] is None for p in per)


def test_history_is_bounded() -> None:
    m = Monitor(max_records=3)
    for i in range(5):
        m.fail(m.begin(f"SELECT {i}", "auto"), ValueError("x"))
    assert m.history()["sql"].to_list() == ["SELECT 2", "SELECT 3", "SELECT 4"]
    m.max_records = 2
    assert m.history()["id"].to_list() == [4, 5]
    with pytest.raises(ValueError):
        Monitor(max_records=0)
    m.clear()
    assert m.history().is_empty() and m.history().columns == list(HISTORY_SCHEMA)


def test_a_running_query_shows_as_running() -> None:
    m = Monitor()
    m.begin("SELECT 1", "auto")
    assert m.history()["status"].to_list() == ["running"]


def test_fragment_failure_is_the_sources_last_error(tmp_path: Path) -> None:
    db = tmp_path / "gone.db"
    write_tables(f"sqlite:///{db}", {"t": pl.DataFrame({"id": [1, 2]})})
    fed = fl.Federation()
    fed.attach("gone", f"sqlite:///{db}")
    fed.sql("SELECT id FROM t")
    db.unlink()  # the file disappears under the federation
    with pytest.raises(fl.FedlabError):
        fed.sql("SELECT id FROM t")
    h = fed.history()
    assert h["status"].to_list() == ["ok", "error"]
    assert h["per_source"][1].to_list()[0]["source"] == "gone"
    row = fed.health().row(0, named=True)
    assert row["reachable"] is False and row["up"] is False and row["error"]
    assert row["last_error"] and "gone" in row["last_error"] and row["last_error_at"] is not None


# ------------------------------------------------------------------ health
def test_health_of_sqlite_sources(fed: fl.Federation) -> None:
    h = fed.health()
    assert h["source"].to_list() == ["crm", "sales", "catalog", "stock"]
    assert h["reachable"].all() and h["up"].all()
    assert (h["latency_ms"] > 0).all()
    assert all(v and v.startswith("3.") for v in h["version"].to_list())
    assert h["breaker"].to_list() == ["off"] * 4  # breakers are opt-in (Federation(breaker=True))
    assert h["last_error"].null_count() == 4


def test_health_of_servers(pg_database, mariadb_database) -> None:
    fed = fl.Federation()
    fed.attach("pg", pg_database())
    fed.attach("my", mariadb_database())
    h = {r["source"]: r for r in fed.health().iter_rows(named=True)}
    assert h["pg"]["reachable"] and h["my"]["reachable"]
    assert h["pg"]["version"][:2].isdigit() and "MariaDB" in h["my"]["version"]


def test_health_pings_are_bounded_by_a_timeout(fed: fl.Federation) -> None:
    """A server that accepts the TCP connection but never speaks: the ping gives up."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        pg = fl.Federation()
        src = Source.from_url(
            "mute", f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/x"
        )
        pg.catalog.sources["mute"] = src  # attached without reading a catalog
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        pg.catalog.sources["closed"] = Source.from_url("closed", f"mysql://root@127.0.0.1:{port}/x")
        t0 = time.monotonic()
        h = health(pg, timeout=1.0)
        assert time.monotonic() - t0 < 3.0
        rows = {r["source"]: r for r in h.iter_rows(named=True)}
        assert rows["mute"]["reachable"] is False and rows["closed"]["reachable"] is False
        assert rows["mute"]["error"] and rows["closed"]["error"]
        assert rows["mute"]["latency_ms"] is None
    finally:
        silent.close()


# ------------------------------------------------------------------ plots
def _made_up_history() -> pl.DataFrame:
    m = Monitor()
    t = 1_700_000_000.0
    rows = []
    for i in range(30):
        rec = {k: None for k in HISTORY_SCHEMA}
        multi = i % 3 == 0
        ok = i % 7 != 0
        rec.update(
            at=t + i * 10,
            sql=f"q{i}",
            strategy="auto",
            ok=ok,
            status="ok" if ok else "error",
            seconds=0.01 * (i + 1),
            n_sources=2 if multi else 1,
            per_source=[
                {"source": "crm", "seconds": 0.005 * i, "rows": 1, "bytes": 8, "error": None}
            ]
            + (
                [{"source": "sales", "seconds": 0.002 * i, "rows": 1, "bytes": 8, "error": None}]
                if multi
                else []
            ),
        )
        rows.append(rec)
    m.records.extend(rows)
    return m.history()


def test_plots_are_pure_functions_of_the_history_frame() -> None:
    from matplotlib.figure import Figure

    h = _made_up_history()
    fig = plot_latency(h)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_title() == "latency by source"
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["crm", "sales"]
    assert len(ax.get_lines()[0].get_xdata()) == 30 and len(ax.get_lines()[1].get_xdata()) == 10
    fig = plot_cross_source(h, bins=10)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == 30 and "33% cross-database" in ax.get_title()
    fig = plot_error_rate(h, bins=5)
    assert "5 of 30 failed" in fig.axes[0].get_title()
    fig = plot_history(h)
    assert len(fig.axes) >= 3
    empty = Monitor().history()
    for f in (plot_latency, plot_cross_source, plot_error_rate, plot_history):
        assert isinstance(f(empty), Figure)


def test_monitor_plot_methods(fed: fl.Federation) -> None:
    from matplotlib.figure import Figure

    fed.sql("SELECT count(*) FROM users")
    assert isinstance(fed.monitor.plot(), Figure)
    assert isinstance(fed.monitor.plot_latency(), Figure)
    assert isinstance(fed.monitor.plot_cross_source(), Figure)
    assert isinstance(fed.monitor.plot_error_rate(), Figure)
    assert "1 quer" in repr(fed.monitor)


# ------------------------------------------------------------------ audit
def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_log_json_lines(fed: fl.Federation, tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    fed.audit(path)
    fed.sql("SELECT name FROM users WHERE country = :c AND id < 10", params={"c": "Narnia"})
    fed.policy(deny=["crm.users.email"])
    with pytest.raises(fl.PolicyError):
        fed.sql("SELECT email FROM users WHERE name = 'Zed'")
    with pytest.raises(fl.UnknownTableError):
        fed.sql("SELECT * FROM nope WHERE x = 'secret-literal'")
    lines = _lines(path)
    assert len(lines) == 3
    first, denied, failed = lines
    assert set(first) >= {
        "timestamp",
        "user",
        "fingerprint",
        "sql",
        "tables",
        "rows",
        "decision",
        "error_class",
        "status",
    }
    assert first["decision"] == "allowed" and first["status"] == "ok"
    assert first["tables"] == ["crm.users"] and isinstance(first["rows"], int)
    assert first["sql"] == "SELECT name FROM users WHERE country = ? AND id < ?"
    assert "Narnia" not in path.read_text() and "params" not in first
    assert first["fingerprint"] == fed.history()["fingerprint"][0]
    assert denied["decision"] == "denied" and denied["error_class"] == "AccessDeniedError"
    assert "Zed" not in denied["sql"] and denied["tables"] == ["crm.users"]
    assert failed["error_class"] == "UnknownTableError" and "secret-literal" not in failed["sql"]
    # unmasked: literals and parameters kept; appended to the same file
    fed.audit(path, mask_literals=False)
    fed.sql("SELECT name FROM users WHERE country = :c AND id < 3", params={"c": "Narnia"})
    last = _lines(path)[-1]
    assert len(_lines(path)) == 4
    assert "id < 3" in last["sql"] and last["params"] == {"c": "Narnia"}
    fed.audit(None)
    fed.sql("SELECT 1 AS one FROM users LIMIT 1")
    assert len(_lines(path)) == 4


def test_audit_user_and_threads(tmp_path: Path) -> None:
    fed = fl.demo.federation(user="alice")
    fed.audit(tmp_path / "a.jsonl")
    fed.monitor.user = "alice"  # until Federation passes user= to its Monitor

    def work() -> None:
        for i in range(5):
            fed.sql("SELECT count(*) FROM orders WHERE id > :i", params={"i": i})

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = _lines(tmp_path / "a.jsonl")  # every line is whole JSON
    assert len(lines) == 30 and {entry["user"] for entry in lines} == {"alice"}
    assert len({entry["query_id"] for entry in lines}) == 30
    assert fed.history().height == 30


def test_audit_to_a_bad_path_fails_at_once(fed: fl.Federation, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        fed.audit(blocker / "sub" / "audit.jsonl")


def test_one_shape_one_fingerprint_in_a_session(tmp_path: Path) -> None:
    src = Path(fl.demo.federation().catalog.sources["crm"].path)
    shutil.copy(src, tmp_path / "crm.db")
    fed = fl.Federation()
    fed.attach("crm", f"sqlite:///{tmp_path / 'crm.db'}")
    for c in ("US", "FR", "DE"):
        fed.sql("SELECT count(*) FROM users WHERE country = :c", params={"c": c})
    assert fed.history()["fingerprint"].n_unique() == 1
    assert plot_history(fed.history()) is not None


def test_a_partial_result_is_recorded_with_the_missing_source() -> None:
    """Monitor.succeed reads ``trace.partial`` / ``missing_sources`` / ``missing``."""
    from types import SimpleNamespace as NS

    class Missing:
        source = "b"

        def __str__(self) -> str:
            return "f2 on b: SourceUnavailableError: down"

    m = Monitor()
    trace = NS(
        entries=[], total_s=0.1, rows=0, bytes=0, cache_hits=0,
        partial=True, missing_sources=["b"], missing=[Missing()],
    )  # fmt: skip
    plan = NS(fragments=[NS(tables=["a.t"]), NS(tables=["b.t"])], sources=["a", "b"])
    m.succeed(m.begin("SELECT 1", "auto"), plan, trace, pl.DataFrame({"x": [1]}))
    row = m.history().row(0, named=True)
    assert row["status"] == "partial" and row["ok"] is True and row["n_sources"] == 2
    assert m.last_errors()["b"][1] == "f2 on b: SourceUnavailableError: down"
