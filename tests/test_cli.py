"""The ``fedlab`` command line, driven through ``main([...])``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import polars as pl
import pytest

import fedlab
from fedlab import demo
from fedlab.cli import main
from fedlab.testing import assert_same_result


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.build(tmp_path_factory.mktemp("cli_demo"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_dir: Path) -> None:
    # no ./fedlab.toml in the working directory; the default demo is the built one
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDLAB_DEMO_DIR", str(demo_dir))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ demo
def test_demo_prints_result_explain_and_trace(capsys, demo_dir: Path) -> None:
    code, out, err = _run(capsys, "demo", "--path", str(demo_dir))
    assert code == 0, err
    f = demo.frames()
    n = (
        f["users"]
        .filter(pl.col("country") == "US")
        .join(f["orders"], left_on="id", right_on="user_id")
    )
    assert demo.SEED_QUERY in out
    assert f"Result: {n.height:,} row(s), first 10:" in out
    assert "| name" in out and "| total" in out
    assert "EXPLAIN:" in out and "Plan [auto]" in out
    assert "f1 @ crm (sqlite)" in out and "@ sales (sqlite)" in out
    trace = out.split("Trace:", 1)[1]
    for column in ("source", "rows", "bytes", "ms"):
        assert f"| {column}" in trace
    assert "| crm " in trace and "| sales " in trace
    assert "fragment(s)" in trace and "total" in trace
    assert "building" not in err  # already built


def test_demo_builds_when_missing_with_scale_and_strategy(capsys, tmp_path: Path) -> None:
    code, out, err = _run(
        capsys,
        "demo",
        "--path",
        str(tmp_path / "fresh"),
        "--scale",
        "2",
        "--strategy",
        "naive",
        "--rows",
        "3",
    )
    assert code == 0, err
    assert "building the demo data" in err
    assert demo.built_scale(tmp_path / "fresh") == 2
    assert "scale 2" in out and "Plan [naive]" in out and "first 3:" in out


def test_demo_rejects_other_urls(capsys) -> None:
    code, _, err = _run(capsys, "demo", "--load-into", "http://bob:hunter22@example.com/x")
    assert code == 2
    assert err.startswith("error: --load-into takes postgresql://")
    assert "hunter22" not in err and "Traceback" not in err


# ------------------------------------------------------------------ query
SQL = "SELECT id, name, country FROM users WHERE country = 'US'"


def _us(country: str = "US") -> pl.DataFrame:
    users = demo.frames()["users"]
    return users.filter(pl.col("country") == country).select("id", "name", "country")


def test_query_table(capsys) -> None:
    code, out, err = _run(capsys, "query", SQL)
    assert code == 0, err
    assert out.splitlines()[0].replace(" ", "") == "|id|name|country|"
    rows = out.splitlines()[2:]
    assert len(rows) == _us().height
    assert {r.split("|")[2].strip() for r in rows} == {n.strip() for n in _us()["name"]}
    assert "Zoë" not in out  # her country is 'US ' (trailing space): not 'US'
    assert f"({_us().height} row(s))" in err
    assert "using the demo" in err


def test_query_csv_and_json(capsys) -> None:
    code, out, _ = _run(capsys, "query", "--format", "csv", SQL)
    assert code == 0
    assert_same_result(pl.read_csv(io.StringIO(out)), _us())

    code, out, _ = _run(
        capsys, "query", "-f", "json", "-p", "c=us", *SQL.replace("'US'", ":c").split()
    )
    assert code == 0
    assert_same_result(pl.DataFrame(json.loads(out)), _us("us"))


def test_query_trace_and_stdin(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT count(*) AS n FROM orders"))
    code, out, err = _run(capsys, "query", "--trace", "-")
    assert code == 0, err
    assert "| n " in out and f"| {demo.frames()['orders'].height}" in out
    assert "| sales " in out and "| bytes" in out


def test_query_uses_local_fedlab_toml(capsys, tmp_path: Path, demo_dir: Path) -> None:
    (tmp_path / "fedlab.toml").write_text(
        f'[sources.only]\nurl = "sqlite:///{demo_dir / "products.db"}"\n'
    )
    code, out, err = _run(capsys, "sources")
    assert code == 0, err
    assert "| only " in out and "sales" not in out
    code, out, err = _run(capsys, "query", "SELECT count(*) AS n FROM products")
    assert code == 0, err
    assert f"| {demo.frames()['products'].height}" in out and "using the demo" not in err


def test_config_before_or_after_the_command(capsys, demo_dir: Path) -> None:
    config = str(demo_dir / "fedlab.toml")
    for argv in (["--config", config, "tables"], ["tables", "-c", config]):
        code, out, err = _run(capsys, *argv)
        assert code == 0, err
        assert "| inventory " in out and "product_id, warehouse" in out
        assert "using the demo" not in err


# ------------------------------------------------------------------ explain, tables, sources
def test_explain_prints_the_plan(capsys) -> None:
    code, out, err = _run(
        capsys,
        "explain",
        "--strategy",
        "pushdown",
        "SELECT count(*) FROM orders WHERE status = :s",
        "-p",
        "s=paid",
    )
    assert code == 0, err
    assert out.startswith("Plan [pushdown]")
    assert "@ sales (sqlite)" in out and "'paid'" in out


def test_tables_and_sources(capsys, demo_dir: Path) -> None:
    code, out, _ = _run(capsys, "tables")
    assert code == 0
    for source, table in (("crm", "users"), ("sales", "orders"), ("catalog", "products")):
        assert f"| {source} " in out and f"| {table} " in out
    assert "balance DECIMAL(10, 2)" in out
    code, out, _ = _run(capsys, "sources")
    assert code == 0
    assert "function=customers" in out and str(demo_dir / "users.db") in out


# ------------------------------------------------------------------ errors
def test_fedlab_errors_exit_2_without_traceback(capsys, tmp_path: Path) -> None:
    code, out, err = _run(capsys, "query", "SELECT * FROM nope")
    assert (code, out) == (2, "")
    assert "error: unknown table 'nope'" in err and "Traceback" not in err

    code, _, err = _run(capsys, "query", "--strategy", "bogus", "SELECT 1")
    assert code == 2 and "error: unknown strategy 'bogus'" in err

    code, _, err = _run(capsys, "tables", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "error: config file" in err and "does not exist" in err


def test_password_is_never_printed(capsys, tmp_path: Path) -> None:
    cfg = tmp_path / "secret.toml"
    cfg.write_text(
        '[sources.crm]\nurl = "postgresql://bob:Hunter2Secret@127.0.0.1:1/crm"\n'
        "connect_timeout = 1\n"
    )
    code, out, err = _run(capsys, "sources", "--config", str(cfg))
    assert code == 2
    assert err.startswith("error: ") and "not reachable" in err
    assert "Hunter2Secret" not in out + err


def test_usage_errors_and_help(capsys) -> None:
    code, _, err = _run(capsys, "query")
    assert code == 2 and "usage: fedlab query" in err
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for command in ("demo", "query", "explain", "tables", "sources", "bench"):
        assert command in out
    code, out, _ = _run(capsys, "--version")
    assert (code, out.strip()) == (0, f"fedlab {fedlab.__version__}")


def test_bench_forwards_its_arguments(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 1

    fake = types.ModuleType("fedlab.bench")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fedlab.bench", fake)
    monkeypatch.setattr(fedlab, "bench", fake, raising=False)
    assert main(["bench", "--sf", "0.01", "--queries", "1,3"]) == 1
    assert seen == [["--sf", "0.01", "--queries", "1,3"]]


def test_python_m_fedlab(demo_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedlab", "query", "-f", "csv", "SELECT count(*) AS n FROM users"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"FEDLAB_DEMO_DIR": str(demo_dir), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["n", str(demo.frames()["users"].height)]


# ------------------------------------------------------------------ real servers
@pytest.mark.servers
def test_demo_load_into_servers(capsys, tmp_path: Path, pg_database, mariadb_database) -> None:
    pg, my = pg_database("fedlab_cli_t"), mariadb_database("fedlab_cli_t")
    code, out, err = _run(capsys, "demo", "--path", str(tmp_path), "--load-into", pg, my)
    assert code == 0, err
    assert "users -> PostgreSQL" in err and "orders -> MariaDB" in err
    assert "f1 @ crm (postgresql)" in out and "@ sales (mysql)" in out
    assert "| stock   | duckdb" in out
