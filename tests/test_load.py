"""bench/load.py, tiny: 2 threads for 2 s against the real servers, no error, every answer
checked, and the server sessions on the benchmark's databases back to the baseline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.servers

LOAD_PY = Path(__file__).resolve().parent.parent / "bench" / "load.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("fedlab_bench_load", LOAD_PY)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


load = _load_module()


@pytest.mark.timeout(120)
def test_tiny_load_run_no_errors_no_leak(pg_server_url: str, mariadb_server_url: str) -> None:
    s = load.setup(pg_server_url, mariadb_server_url, n_customers=200, n_orders=1000)
    try:
        r = load.run(s, threads=2, seconds=2.0, timeout=20.0, settle=5.0)
    finally:
        load.teardown(s)
    report = load.render_text(r)
    assert r.samples, report
    assert not r.errors, report
    assert not r.sampler_errors, report
    assert {x.query for x in r.samples} >= {"point_pg", "point_my", "join_pg_my"}, report
    assert r.sessions_after == r.sessions_before, report
    assert r.threads_after <= r.threads_before, report
    # the markdown block carries its markers and replaces itself in place
    block = load.render_markdown(r)
    doc = load.replace_block("intro\n", load.mark_begin(2), load.mark_end(2), block)
    assert load.replace_block(doc, load.mark_begin(2), load.mark_end(2), block) == doc


def test_databases_dropped(pg_server_url: str, mariadb_server_url: str) -> None:
    from fedlab.source import Source

    s = load.setup(pg_server_url, mariadb_server_url, n_customers=10, n_orders=10)
    load.teardown(s)
    con = Source.from_url("pg", pg_server_url).connect()
    try:
        row = con.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (s.db_name,)
        ).fetchone()
    finally:
        con.close()
    assert row[0] == 0
    con = Source.from_url("my", mariadb_server_url).connect()
    try:
        cur = con.cursor()
        cur.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", (s.db_name,)
        )
        assert cur.fetchone()[0] == 0
    finally:
        con.close()
    assert not Path(s.tmpdir).exists()
