"""The local engine's residual on Polars' streaming engine (docs/streaming.md).

The oracle's queries run with the streaming engine forced (``streaming="auto"`` with a
threshold of 0) and with the in-memory engine, on a mixed placement and a sharded one, and
both answers must equal the monolith's (the equality rule: ORDER BY and LIMIT included).
The other tests need no server: the ``auto`` threshold, the per-query override, the
validation errors, and what the trace, its HTML and ``res.explain()`` say.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import fedlab as fl
from fedlab.errors import ConfigError
from fedlab.execute.executor import STREAMING_THRESHOLD_BYTES, residual_engine
from fedlab.load import write_tables
from tests import test_oracle as oracle
from tests.test_oracle import PARAMS, QUERIES, is_ordered

# the oracle's fixtures (trap tables, the PostgreSQL monolith and its answers, placements)
data = oracle.data
monolith = oracle.monolith
reference = oracle.reference
federations = oracle.federations

ENGINES = {"streaming": 0, "in-memory": None}  # engine -> streaming_threshold_bytes


@pytest.mark.servers
@pytest.mark.parametrize("engine", list(ENGINES))
@pytest.mark.parametrize("placement", ["rot0", "shard_hash_range"])
@pytest.mark.parametrize("name", list(QUERIES))
def test_oracle_on_both_engines(name: str, placement: str, engine: str, federations, reference):
    fed = federations(placement)
    sql = QUERIES[name]
    params = {k: v for k, v in PARAMS.items() if f":{k}" in sql} or None
    saved = fed.streaming_threshold_bytes
    try:
        if engine == "streaming":  # auto with a threshold of 0: every residual streams
            fed.streaming_threshold_bytes = ENGINES[engine]
            got = fed.sql(sql, params=params)
        else:
            got = fed.sql(sql, params=params, streaming=False)
    finally:
        fed.streaming_threshold_bytes = saved
    if got.plan.residual_sql is not None:
        assert got.trace.residual_engine == engine
    else:
        assert got.trace.residual_engine == ""
    ok, why = fl.testing.same_result(got.df, reference(name), ordered=is_ordered(sql))
    assert ok, f"{name} on {placement} ({engine} engine):\n{why}\n\nplan:\n{got.plan}"


# ------------------------------------------------------------------ no server needed
@pytest.fixture
def two_sqlite(tmp_path: Path) -> fl.Federation:
    n = 2_000
    users = pl.DataFrame(
        {
            "id": list(range(n)),
            "name": [f"user {i}" for i in range(n)],
            "country": [["US", "UK", "DE", None][i % 4] for i in range(n)],
        }
    )
    orders = pl.DataFrame(
        {
            "id": list(range(3 * n)),
            "user_id": [i % (n + 7) for i in range(3 * n)],  # some orphans
            "total": [float(i % 97) for i in range(3 * n)],
        }
    )
    write_tables(
        f"sqlite:///{tmp_path / 'crm.db'}", {"users": users}, primary_keys={"users": ["id"]}
    )
    write_tables(
        f"sqlite:///{tmp_path / 'sales.db'}", {"orders": orders}, primary_keys={"orders": ["id"]}
    )
    fed = fl.Federation()
    fed.attach("crm", f"sqlite:///{tmp_path / 'crm.db'}")
    fed.attach("sales", f"sqlite:///{tmp_path / 'sales.db'}")
    return fed


JOIN = (
    "SELECT u.country, count(*) AS n, sum(o.total) AS spend FROM crm.users u "
    "JOIN sales.orders o ON u.id = o.user_id GROUP BY u.country ORDER BY spend DESC, u.country"
)
TOP = (
    "SELECT u.name, o.id, o.total FROM crm.users u JOIN sales.orders o ON u.id = o.user_id "
    "ORDER BY o.total DESC, o.id LIMIT 25"
)


def test_default_is_auto_with_a_threshold() -> None:
    fed = fl.Federation()
    assert fed.streaming == "auto"
    assert fed.streaming_threshold_bytes == STREAMING_THRESHOLD_BYTES == 64 * 2**20


def test_auto_streams_only_from_the_threshold_up(two_sqlite) -> None:
    fed = two_sqlite
    small = fed.sql(JOIN)  # a few hundred KB: far below the default threshold
    assert small.trace.residual_engine == "in-memory"
    inputs = sum(e.bytes for e in small.trace.entries)
    assert inputs > 0
    fed.streaming_threshold_bytes = inputs  # reached: streaming
    at = fed.sql(JOIN)
    assert sum(e.bytes for e in at.trace.entries) == inputs
    assert at.trace.residual_engine == "streaming"
    fed.streaming_threshold_bytes = inputs + 1  # one byte short: in-memory
    assert fed.sql(JOIN).trace.residual_engine == "in-memory"
    fed.streaming_threshold_bytes = 0
    assert fed.sql(JOIN).trace.residual_engine == "streaming"
    fl.testing.assert_same_result(at.df, small.df, ordered=True)


def test_residual_engine_rule() -> None:
    assert residual_engine("auto", 99, 100) == "in-memory"
    assert residual_engine("auto", 100, 100) == "streaming"
    assert residual_engine(True, 0, 100) == "streaming"
    assert residual_engine(False, 10**12, 0) == "in-memory"


@pytest.mark.parametrize("sql", [JOIN, TOP])
def test_per_query_override_and_same_answer(two_sqlite, sql: str) -> None:
    fed = two_sqlite
    fed.streaming = False
    mem = fed.sql(sql)
    assert mem.trace.residual_engine == "in-memory"
    stream = fed.sql(sql, streaming=True)  # the override wins over the federation's
    assert stream.trace.residual_engine == "streaming"
    fed.streaming = True
    assert fed.sql(sql).trace.residual_engine == "streaming"
    assert fed.sql(sql, streaming=False).trace.residual_engine == "in-memory"
    assert fed.sql(sql, streaming="auto").trace.residual_engine == "in-memory"  # small
    # ORDER BY (and LIMIT) hold on both engines, row for row
    assert stream.df.equals(mem.df)
    fl.testing.assert_same_result(stream.df, mem.df, ordered=True)
    assert stream.df.height == (25 if sql == TOP else 4)


def test_no_residual_no_engine(two_sqlite) -> None:
    res = two_sqlite.sql("SELECT id, name FROM crm.users WHERE id < 3", streaming=True)
    assert res.plan.residual_sql is None
    assert res.trace.residual_engine == ""
    assert "engine" not in res.trace.summary()
    assert "residual ran on" not in res.explain()


def test_trace_text_html_and_explain_name_the_engine(two_sqlite) -> None:
    res = two_sqlite.sql(JOIN, streaming=True)
    assert "(streaming engine)" in res.trace.summary()
    assert "(streaming engine)" in repr(res)
    html = res._repr_html_()
    assert "fedlab-residual-engine" in html and "(streaming)" in html
    assert "streaming engine" in html  # the headline
    assert "fedlab-residual-engine" in res.trace._repr_html_()
    text = res.explain()
    assert text.startswith(str(res.plan).splitlines()[0])
    assert "residual ran on: Polars streaming engine (inputs " in text
    mem = two_sqlite.sql(JOIN, streaming=False)
    assert "(in-memory engine)" in mem.trace.summary()
    assert "residual ran on: Polars in-memory engine" in mem.explain()
    assert mem.trace.to_polars().height == len(mem.trace.entries)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"streaming": "yes"}, r"streaming must be 'auto', True or False, not 'yes'"),
        ({"streaming": 1}, r"streaming must be 'auto', True or False, not 1"),
        ({"streaming": None}, r"streaming must be 'auto', True or False, not None"),
        ({"streaming_threshold_bytes": -1}, r"streaming_threshold_bytes must be a non-negative"),
        ({"streaming_threshold_bytes": "64MB"}, r"not '64MB'"),
        ({"streaming_threshold_bytes": True}, r"streaming_threshold_bytes .* not True"),
        ({"streaming_threshold_bytes": 1.5}, r"streaming_threshold_bytes .* not 1.5"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        fl.Federation(**kwargs)


def test_bad_override_is_a_config_error(two_sqlite) -> None:
    with pytest.raises(ConfigError, match=r"streaming must be 'auto', True or False, not 'on'"):
        two_sqlite.sql(JOIN, streaming="on")
    # Spark plans its own execution: refused before any Spark session is made
    with pytest.raises(ConfigError, match=r"streaming= applies to the local engine"):
        two_sqlite.sql(JOIN, engine="spark", streaming=True)
    two_sqlite.streaming = "sometimes"  # set after construction: caught when a query runs
    with pytest.raises(ConfigError, match=r"not 'sometimes'"):
        two_sqlite.sql(JOIN)
    assert two_sqlite.history()["ok"].to_list()[-1] is False


def test_config_file_settings(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    write_tables(f"sqlite:///{db}", {"t": pl.DataFrame({"x": [1, 2]})})
    cfg = tmp_path / "fedlab.toml"
    cfg.write_text(
        "[fedlab]\nstreaming = false\nstreaming_threshold_bytes = 1024\n\n"
        f'[sources.a]\nurl = "sqlite:///{db}"\n'
    )
    fed = fl.Federation.from_config(cfg)
    assert fed.streaming is False and fed.streaming_threshold_bytes == 1024
