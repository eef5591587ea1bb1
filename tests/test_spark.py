"""The Spark engine (issue #8): fedlab's plans run by Apache Spark give the monolith's answer.

Default part (one module-wide ``local[2]`` session, start-up ~5-10 s):

* every correctness query of the oracle suite (tests/fixtures/oracle_queries.sql) on ONE
  mixed placement (users and inventory on SQLite, orders on PostgreSQL, products on
  MariaDB) under ``auto``, run by :func:`fedlab.spark.execute` and compared by the
  equality rule with the same SQL on one PostgreSQL database (the monolith);
* semi-join plans (fragments waiting for keys), partitioned JDBC reads, the trace (one
  entry per fragment, plottable), result limits, ``collect=False`` / Parquet, the deadline,
  credentials kept out of URLs, plans and errors;
* ONE join query on a real standalone cluster started here on loopback: a master and two
  workers from the classes shipped in pyspark (``spark-class``), stopped afterwards.

``-m slow``: the full matrix, every strategy × every placement of the oracle suite.

Needs Java, pyspark and the JDBC jars (scripts/setup-spark.sh) besides the two servers;
without them the tests skip with the reason, except under ``CI=true`` or
``FEDLAB_REQUIRE_SERVERS=1``, where that is a failure.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

import fedlab as fl
from fedlab.errors import LimitExceededError, QueryTimeoutError
from tests.conftest import _require_servers
from tests.test_oracle import (  # noqa: F401  (fixtures: data, monolith, reference, federations)
    PARAMS,
    PLACEMENTS,
    QUERIES,
    SHARDED,
    STRATEGIES,
    data,
    federations,
    is_ordered,
    monolith,
    reference,
)

pytestmark = pytest.mark.servers

#: the one mixed placement of the default part: every engine holds a table
MIXED = "rot0"


def _unavailable(why: str) -> None:
    if _require_servers():
        pytest.fail(why + " (CI=true / FEDLAB_REQUIRE_SERVERS=1: Spark is required)")
    pytest.skip(why)


def _check_spark_installed() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        _unavailable("pyspark is not installed (pip install 'fedlab[spark]')")
    from fedlab.spark import SparkUnavailableError, _check_java, find_jars

    try:
        _check_java()
        find_jars()
    except SparkUnavailableError as e:
        _unavailable(str(e))


def _stop_active() -> None:
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


@pytest.fixture(scope="module")
def spark_local() -> Iterator[Callable[[], object]]:
    """``get()`` -> the module's ``local[2]`` session (started on first use; restarted if
    the cluster test stopped it)."""
    _check_spark_installed()
    from fedlab import spark as fs

    def get():
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None and active.sparkContext.master != "local[2]":
            active.stop()
        return fs.session("local[2]")

    yield get
    _stop_active()


def _run(fed: fl.Federation, name: str, strategy: str, spark) -> tuple[pl.DataFrame, object]:
    from fedlab import spark as fs

    sql = QUERIES[name]
    params = {k: v for k, v in PARAMS.items() if f":{k}" in sql} or None
    plan = fed.explain(sql, strategy=strategy, params=params)
    df, trace = fs.execute(plan, fed.catalog, spark=spark)
    return df, (plan, trace)


def _check(name: str, placement: str, strategy: str, federations, reference, spark) -> None:  # noqa: F811
    fed = federations(placement)
    df, (plan, _) = _run(fed, name, strategy, spark)
    ok, why = fl.testing.same_result(df, reference(name), ordered=is_ordered(QUERIES[name]))
    assert ok, f"{name} on {placement} under {strategy} (Spark):\n{why}\n\nplan:\n{plan}"


# ------------------------------------------------------------------ the default part
@pytest.mark.parametrize("name", list(QUERIES))
def test_oracle_spark_local(name: str, federations, reference, spark_local) -> None:  # noqa: F811
    _check(name, MIXED, "auto", federations, reference, spark_local())


def test_semijoin_keys_in_spark(federations, reference, spark_local) -> None:  # noqa: F811
    """A fragment that waits for keys is sent the keys its provider read in Spark."""
    fed = federations(MIXED)
    name = next(
        n
        for n in QUERIES
        if any(f.dynamic for f in fed.explain(QUERIES[n], strategy="semijoin").fragments)
        and ":" not in QUERIES[n]
    )
    df, (plan, trace) = _run(fed, name, "semijoin", spark_local())
    assert any(f.dynamic for f in plan.fragments)
    ok, why = fl.testing.same_result(df, reference(name), ordered=is_ordered(QUERIES[name]))
    assert ok, why
    waiting = [e for e in trace.entries if "keys" in e.reader]
    assert waiting, trace.to_polars()
    provider = {d.provider for f in plan.fragments for d in f.dynamic}
    ends = {e.fragment: e.end for e in trace.entries}
    starts = {e.fragment: e.start for e in trace.entries}
    for f in plan.fragments:
        for p in f.depends_on:
            assert starts[f.id] >= ends[p] - 1e-6, (f.id, p)
    assert provider


def test_trace_and_plot(federations, spark_local) -> None:  # noqa: F811
    fed = federations(MIXED)
    sql = (
        "SELECT u.country, COUNT(*) AS n, SUM(o.total) AS spend FROM users u "
        "JOIN orders o ON u.id = o.user_id GROUP BY u.country"
    )
    plan = fed.explain(sql, strategy="pushdown")
    from fedlab import spark as fs

    df, trace = fs.execute(plan, fed.catalog, spark=spark_local())
    local = fed.sql(sql, strategy="pushdown")
    fl.testing.assert_same_result(df, local.df)
    assert [e.fragment for e in trace.entries] == [f.id for f in plan.fragments]
    by_id = {e.fragment: e for e in local.trace.entries}
    for e in trace.entries:
        assert e.end > e.start >= 0
        assert e.rows == by_id[e.fragment].rows
        assert e.bytes > 0 and e.reader.startswith("spark jdbc")
        # Spark's own task metrics agree on the rows; its JDBC reader reports no bytes
        m = re.search(r"Spark tasks: (\d+) tasks?, ([\d,]+) rows read", e.reader)
        assert m and int(m[2].replace(",", "")) == e.rows, e.reader
        assert "bytes: Arrow size computed in Spark" in e.reader
        # the Arrow size computed in Spark is close to what the local engine measured
        assert 0.5 < e.bytes / by_id[e.fragment].bytes < 2, (e, by_id[e.fragment])
    assert trace.rows == local.trace.rows
    assert trace.result_rows == df.height and trace.residual_s > 0
    fig = fl.FederatedResult(df, plan, trace).plot()
    assert fig.axes


def test_partitioned_read(federations, spark_local, monkeypatch) -> None:  # noqa: F811
    """A large single-table fragment is read in key ranges (here: thresholds lowered so
    that the 400-row orders table on PostgreSQL counts as large)."""
    from fedlab import spark as fs

    fed = federations(MIXED)
    monkeypatch.setattr(fs, "SPARK_PARTITION_MIN_ROWS", {"postgresql": 10, "mysql": 10})
    monkeypatch.setattr(fs, "ROWS_PER_PARTITION", 100)
    plan = fed.explain("SELECT id, user_id, total FROM orders", strategy="pushdown")
    part = fs.spark_partition(plan.fragments[0], fed.catalog, parallelism=2)
    assert part is not None and part[0] == "id" and part[3] == 4, part
    df, trace = fs.execute(plan, fed.catalog, spark=spark_local())
    assert "4 ranges on id" in trace.entries[0].reader
    assert "Spark tasks: 4 tasks, 400 rows read" in trace.entries[0].reader
    assert df.height == 400 and df["id"].n_unique() == 400
    local = fed.sql("SELECT id, user_id, total FROM orders", strategy="pushdown")
    fl.testing.assert_same_result(df, local.df)


def test_result_limits(federations, spark_local) -> None:  # noqa: F811
    from fedlab import spark as fs

    fed = federations(MIXED)
    spark = spark_local()
    plan = fed.explain("SELECT o.id, o.status FROM orders o", strategy="pushdown")
    with pytest.raises(LimitExceededError, match="max_rows=10") as e:
        fs.execute(plan, fed.catalog, spark=spark, max_rows=10)
    assert e.value.limit == "max_rows" and e.value.fragment == "result"
    with pytest.raises(LimitExceededError, match="max_bytes=100") as e:
        fs.execute(plan, fed.catalog, spark=spark, max_bytes=100)
    assert e.value.limit == "max_bytes"
    df, _ = fs.execute(plan, fed.catalog, spark=spark, max_rows=400, max_bytes=1_000_000)
    assert df.height == 400


def test_collect_false_and_parquet(federations, spark_local, tmp_path: Path) -> None:  # noqa: F811
    from fedlab import spark as fs

    fed = federations(MIXED)
    spark = spark_local()
    sql = "SELECT p.category, COUNT(*) AS n FROM products p JOIN orders o ON p.id = o.product_id GROUP BY p.category"
    plan = fed.explain(sql)
    sdf, trace = fs.execute(plan, fed.catalog, spark=spark, collect=False)
    try:
        assert sdf.columns == ["category", "n"]
        got = pl.from_arrow(sdf.toArrow())
    finally:
        fs.release(trace)
    expected = fed.sql(sql).df
    fl.testing.assert_same_result(got, expected)
    out = tmp_path / "result.parquet"
    trace2 = fs.write_parquet(plan, fed.catalog, out, spark=spark)
    assert len(trace2.entries) == len(plan.fragments)
    fl.testing.assert_same_result(pl.read_parquet(out / "*.parquet"), expected)


def test_federation_engine_spark(federations, spark_local, tmp_path: Path) -> None:  # noqa: F811
    """The user-facing switch: fed.sql(engine="spark"), Federation(engine=, spark=),
    compare(engines=), collect=False + write_parquet, the history; errors for what Spark
    cannot do."""
    fed = federations(MIXED)
    spark = spark_local()
    sql = (
        "SELECT p.category, COUNT(*) AS n FROM products p JOIN orders o "
        "ON p.id = o.product_id GROUP BY p.category ORDER BY p.category"
    )
    local = fed.sql(sql)
    res = fed.sql(sql, engine="spark", spark=spark)
    assert res.engine == "spark" and local.engine == "polars"
    fl.testing.assert_same_result(res.df, local.df, ordered=True)
    assert len(res.trace.entries) == len(res.plan.fragments) and res.trace.total_s > 0
    assert fed.history()["sql"].to_list()[-1] == sql  # recorded like any query

    cmp = fed.compare(sql, strategies=("pushdown",), engines=("polars", "spark"))
    assert cmp.table["strategy"].to_list() == ["pushdown @ polars", "pushdown @ spark"]
    assert cmp.table["engine"].to_list() == ["polars", "spark"]
    assert cmp.table["same_result"].all()

    fed.spark = spark
    kept = fed.sql(sql, engine="spark", collect=False)
    try:
        assert kept.df.columns == ["category", "n"] and kept.df.height == 0
        kept.write_parquet(tmp_path / "out", mode="overwrite")
    finally:
        kept.release()
    fl.testing.assert_same_result(pl.read_parquet(tmp_path / "out" / "*.parquet"), local.df)
    local.write_parquet(tmp_path / "local.parquet")
    fl.testing.assert_same_result(pl.read_parquet(tmp_path / "local.parquet"), local.df)

    with pytest.raises(fl.ConfigError, match="local engine"):
        fed.sql(sql, engine="spark", on_error="partial")
    with pytest.raises(fl.ConfigError, match="unknown engine"):
        fed.sql(sql, engine="flink")
    with pytest.raises(fl.ConfigError, match="engine='spark' only"):
        fed.sql(sql, collect=False)


def test_deadline(federations, spark_local) -> None:  # noqa: F811
    from fedlab import spark as fs

    fed = federations(MIXED)
    plan = fed.explain("SELECT * FROM orders")
    with pytest.raises(QueryTimeoutError, match="deadline"):
        fs.execute(plan, fed.catalog, spark=spark_local(), timeout=0.001)


def test_credentials_stay_hidden(pg_database, data, spark_local) -> None:  # noqa: F811
    """The password goes to Spark as a JDBC property: not in the URL, the plan Spark shows,
    the trace or an error (the server trusts loopback, so any password logs in)."""
    from fedlab import spark as fs
    from fedlab.load import write_tables

    url = pg_database("fedlab_spk")
    write_tables(url, {"users": data["users"]}, primary_keys={"users": ["id"]})
    secret = "Sp4rkS3cretPw"
    fed = fl.Federation()
    fed.attach("pg", url.replace("postgres@", f"postgres:{secret}@", 1))
    spark = spark_local()
    plan = fed.explain("SELECT id, name FROM users WHERE id < 5")
    opts = fs.jdbc_options(plan.fragments[0], fed.catalog.sources["pg"])
    assert secret not in opts["url"] and opts["password"] == secret
    sdf, trace = fs.execute(plan, fed.catalog, spark=spark, collect=False)
    try:
        shown = sdf._jdf.queryExecution().toString()
        assert secret not in shown
        assert secret not in str(trace.to_polars().to_dicts())
        assert sdf.count() == 4
    finally:
        fs.release(trace)
    bad = fed.explain("SELECT id, name FROM users")
    bad.fragments[0].sql = bad.fragments[0].sql.replace("users", "no_such_table")
    with pytest.raises(fl.FedlabError) as e:
        fs.execute(bad, fed.catalog, spark=spark)
    assert "no_such_table" in str(e.value) and secret not in str(e.value)


def test_missing_jars_named(tmp_path: Path, monkeypatch) -> None:
    from fedlab import spark as fs

    monkeypatch.setattr(fs, "JAR_DIR", tmp_path)
    with pytest.raises(fs.SparkUnavailableError, match="libmariadb-java") as e:
        fs.find_jars()
    assert isinstance(e.value, fl.FedlabError) and "setup-spark.sh" in str(e.value)


# ------------------------------------------------------------------ a real cluster
@pytest.fixture
def standalone_cluster(tmp_path: Path) -> Iterator[object]:
    """A standalone master and two workers (1 core, 512 MB each) on 127.0.0.1, from
    pyspark's own ``spark-class`` (:func:`fedlab.spark.local_cluster`); yields the running
    :class:`~fedlab.spark.LocalCluster`, stops it afterwards and checks nothing is left."""
    _check_spark_installed()
    from fedlab import spark as fs

    try:
        fs._spark_class()
    except fs.SparkUnavailableError as e:
        _unavailable(str(e))
    cluster = fs.local_cluster(workers=2, cores=1, memory="512m", log_dir=tmp_path / "logs")
    try:
        yield cluster
    finally:
        cluster.close()
    assert all(p.poll() is not None for p in cluster._procs.values())
    assert not cluster.running and "stopped" in repr(cluster)
    cluster.close()  # idempotent
    assert (tmp_path / "logs" / "master.log").is_file()  # a log_dir the caller gave stays


def test_local_cluster_errors(monkeypatch, tmp_path: Path) -> None:
    _check_spark_installed()
    from fedlab import spark as fs

    with pytest.raises(fl.ConfigError, match="workers"):
        fs.local_cluster(workers=0)
    with pytest.raises(fl.ConfigError, match="memory"):
        fs.local_cluster(memory="lots")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no java anywhere
    with pytest.raises(fs.SparkUnavailableError, match="Java 17") as e:
        fs.local_cluster()
    assert isinstance(e.value, fl.FedlabError)


def test_standalone_cluster_join(
    standalone_cluster,
    federations,  # noqa: F811
    reference,  # noqa: F811
    spark_local,
) -> None:
    """The same plan on a real cluster: two workers on loopback read and join the fragments."""
    from fedlab import spark as fs

    cluster = standalone_cluster
    assert re.fullmatch(r"spark://127\.0\.0\.1:\d+", cluster.url), cluster.url
    assert cluster.running and cluster.alive_workers() == 2 and cluster.startup_s > 0
    assert set(cluster.pids) == {"master", "worker0", "worker1"}
    _stop_active()  # one SparkContext per process: the local one is restarted later
    spark = fs.session(
        cluster.url,
        app_name="fedlab-test-cluster",
        conf={"spark.executor.memory": "512m", "spark.cores.max": "2"},
    )
    try:
        sc = spark.sparkContext
        end = time.monotonic() + 90
        while sc._jsc.sc().getExecutorIds().size() < 2 and time.monotonic() < end:
            time.sleep(0.5)
        assert sc._jsc.sc().getExecutorIds().size() == 2, "the two workers did not register"
        fed = federations(MIXED)
        name = next(
            n
            for n in QUERIES
            if " join " in QUERIES[n].lower()
            and ":" not in QUERIES[n]
            and len(fed.explain(QUERIES[n]).sources) >= 2
        )
        df, (plan, trace) = _run(fed, name, "auto", spark)
        ok, why = fl.testing.same_result(df, reference(name), ordered=is_ordered(QUERIES[name]))
        assert ok, f"{name} on the standalone cluster:\n{why}\n\nplan:\n{plan}"
        assert len(trace.entries) == len(plan.fragments) >= 2
        assert sc.master == cluster.url
    finally:
        spark.stop()


# ------------------------------------------------------------------ the full matrix
@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("placement", [*PLACEMENTS, *SHARDED])
@pytest.mark.parametrize("name", list(QUERIES))
def test_oracle_spark_matrix(
    name: str,
    placement: str,
    strategy: str,
    federations,  # noqa: F811
    reference,  # noqa: F811
    spark_local,
) -> None:
    _check(name, placement, strategy, federations, reference, spark_local())


def test_spark_class_shipped() -> None:
    """pyspark ships the standalone daemons' launcher (the cluster test needs it)."""
    try:
        import pyspark
    except ImportError:
        _unavailable("pyspark is not installed")
    assert (Path(pyspark.__file__).parent / "bin" / "spark-class").is_file()
    assert shutil.which("bash")
