"""The Spark engine (issue #8): the same plans, run by Apache Spark instead of Polars.

fedlab plans a query exactly as for the local engine (:meth:`Federation.explain`); this
module runs the plan on a Spark session:

* every fragment becomes one Spark JDBC read of exactly its pushed-down SQL (the
  ``query`` is wrapped as ``(<sql>) AS fedlab_f`` in ``dbtable``), typed by fedlab's type
  policy through ``customSchema`` (integers as BIGINT, decimals and floats as DOUBLE,
  dates, timestamps without time zone, text, booleans) and made read-only and bounded on
  the server by ``sessionInitStatement`` (the same session set-up as the local engine);
* a large single-table fragment is read in key ranges (``partitionColumn`` /
  ``lowerBound`` / ``upperBound`` / ``numPartitions``: bounds from the catalog's min/max
  of the integer primary key, partitions from the estimated rows, see
  :func:`spark_partition`);
* independent fragments (the shards of a sharded table among them) are read at the same
  time, one Spark job each; a fragment that receives semi-join keys waits for its
  providers and is sent the keys they returned (:func:`fedlab.execute.executor.fill_keys`:
  the same statements as the local engine);
* each fragment is cached in Spark and registered as a temporary view; the plan's
  engine-neutral residual runs in Spark SQL (sqlglot's ``spark`` dialect), with the
  fragment names (``f1``, ``f2``…) pointed at this query's views;
* the result comes back as a Polars frame through Arrow (``toArrow``), after a check
  against ``max_rows`` / ``max_bytes``, or stays in Spark (``collect=False``) or is
  written to Parquet (:func:`write_parquet`).

The trace is the local engine's :class:`~fedlab.result.Trace`: one entry per fragment
with the time its Spark job took to read and cache it, and its rows and bytes, computed
by Spark over the cached rows (bytes = the Arrow size of those rows; see
:func:`_measure`), so ``res.plot()`` draws Spark runs like local ones.

Credentials go to Spark as JDBC properties (``user`` / ``password`` options), never in a
JDBC URL, a plan, a trace or an error message. See docs/spark.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from sqlglot import exp

from fedlab.catalog import Catalog
from fedlab.errors import (
    ConfigError,
    ExecutionError,
    FedlabError,
    FragmentError,
    LimitExceededError,
    QueryTimeoutError,
    SourceUnavailableError,
    UnsupportedSQLError,
)
from fedlab.execute.executor import fill_keys
from fedlab.execute.fetch import default_fetch
from fedlab.result import Trace, TraceEntry
from fedlab.security import redact
from fedlab.source import Source
from fedlab.sql.partition import MAX_PARTITIONS, partition_for
from fedlab.sql.plan import Fragment, Plan
from fedlab.sql.residual import prepare

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

__all__ = [
    "DRIVERS",
    "JAR_DIR",
    "SPARK_PARTITION_MIN_ROWS",
    "LocalCluster",
    "SparkUnavailableError",
    "execute",
    "find_jars",
    "jdbc_options",
    "local_cluster",
    "release",
    "session",
    "spark_partition",
    "task_metrics",
    "write_parquet",
]


class SparkUnavailableError(ConfigError):
    """Spark cannot run here: Java, pyspark or a JDBC driver jar is missing (the message
    names what to install), or the JVM did not start."""


#: where Debian's JDBC packages put their jars
JAR_DIR = Path("/usr/share/java")

#: source kind -> (JDBC driver class, jar file names tried in JAR_DIR, Debian package)
DRIVERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "postgresql": ("org.postgresql.Driver", ("postgresql.jar",), "libpostgresql-jdbc-java"),
    "mysql": (
        "org.mariadb.jdbc.Driver",
        ("mariadb-java-client.jar",),
        "libmariadb-java",
    ),
    "sqlite": (
        "org.sqlite.JDBC",
        ("sqlite-jdbc.jar", "xerial-sqlite-jdbc.jar"),
        "libxerial-sqlite-jdbc-java",
    ),
}

#: Smallest fragment (estimated rows, exclusive) read by Spark in key ranges, per source
#: kind (None: never). Lower than the local engine's thresholds
#: (:data:`fedlab.sql.partition.PARTITION_MIN_ROWS`): on a cluster the ranges are read by
#: different executors, so they pay sooner. SQLite: one file, read by one connection.
SPARK_PARTITION_MIN_ROWS: dict[str, int | None] = {
    "postgresql": 100_000,
    "mysql": 100_000,
    "sqlite": None,
}
#: rows per JDBC partition aimed at when a fragment is split (numPartitions = rows / this,
#: at least 2, at most the session's parallelism × 2 and :data:`MAX_SPARK_PARTITIONS`)
ROWS_PER_PARTITION = 250_000
MAX_SPARK_PARTITIONS = 64

#: JDBC rows per round trip (PostgreSQL reads everything at once with the default 0)
FETCH_SIZE = 10_000

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SESSION_LOCK = threading.Lock()


# ---------------------------------------------------------------------------- session
def find_jars(kinds: Sequence[str] = ("postgresql", "mysql", "sqlite")) -> list[str]:
    """The JDBC driver jars for ``kinds`` from :data:`JAR_DIR`.

    Raises:
        SparkUnavailableError: a jar is missing (names the Debian packages to install and
            ``scripts/setup-spark.sh``).
    """
    found, missing = [], []
    for kind in kinds:
        _, names, package = DRIVERS[kind]
        path = next((JAR_DIR / n for n in names if (JAR_DIR / n).is_file()), None)
        if path is None:
            missing.append(package)
        else:
            found.append(str(path))
    if missing:
        raise SparkUnavailableError(
            f"JDBC driver jar(s) missing from {JAR_DIR}: install the Debian package(s) "
            f"{', '.join(missing)} (sudo apt-get install {' '.join(missing)}, or run "
            "bash scripts/setup-spark.sh), or pass jars=[...] to fedlab.spark.session()"
        )
    return found


def _check_java() -> None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return
    if shutil.which("java") is None:
        raise SparkUnavailableError(
            "Spark needs Java 17 or later and none was found (no java on PATH, no JAVA_HOME): "
            "install it (Debian: sudo apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
        )


def _is_loopback(master: str) -> bool:
    if master.startswith("local"):
        return True
    host = master.split("://", 1)[-1].split(",")[0].rsplit(":", 1)[0].strip("[]")
    return host in _LOOPBACK


def session(
    master: str = "local[2]",
    *,
    app_name: str = "fedlab",
    jars: Sequence[str] | None = None,
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """A Spark session fedlab can run plans on (created, or the running one reused).

    Args:
        master: ``local[N]``, ``local[*]`` or a cluster URL (``spark://host:7077``…).
            With a local master, or a cluster master on this machine, the driver binds to
            127.0.0.1 (``spark.driver.bindAddress`` / ``spark.driver.host``, and
            ``SPARK_LOCAL_IP`` for the JVM) so nothing listens on another interface.
        app_name: the application's name in the cluster UI.
        jars: JDBC driver jars (default: PostgreSQL, MariaDB and SQLite from
            ``/usr/share/java``, see :func:`find_jars`).
        conf: more Spark settings (they win over fedlab's defaults).

    Raises:
        SparkUnavailableError: pyspark, Java or a jar is missing, or the JVM did not start.
        ConfigError: a session with another master already runs in this process.
    """
    try:
        import pyspark  # noqa: F401
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkUnavailableError(
            "the Spark engine needs pyspark: pip install 'pyspark>=4' (Java 17 too)"
        ) from None
    _check_java()
    jar_list = list(jars) if jars is not None else find_jars()
    for j in jar_list:
        if not Path(j).is_file() and "://" not in j:
            raise SparkUnavailableError(f"JDBC jar {j!r} does not exist")
    with _SESSION_LOCK:
        active = SparkSession.getActiveSession()
        if active is not None:
            running = active.sparkContext.master
            if running != master:
                raise ConfigError(
                    f"a Spark session with master {running!r} already runs in this process; "
                    f"stop it (spark.stop()) before asking for {master!r}, or pass it to "
                    "fedlab as spark=…"
                )
            return active
        settings: dict[str, str] = {
            "spark.jars": ",".join(jar_list),
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            "spark.sql.adaptive.enabled": "true",
            "spark.sql.session.timeZone": "UTC",
            # PostgreSQL semantics: TIMESTAMP has no time zone, identifiers keep their case
            "spark.sql.timestampType": "TIMESTAMP_NTZ",
            "spark.sql.caseSensitive": "true",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.driver.extraJavaOptions": "-Dio.netty.tryReflectionSetAccessible=true",
        }
        if _is_loopback(master):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            settings["spark.driver.bindAddress"] = "127.0.0.1"
            settings["spark.driver.host"] = "127.0.0.1"
        settings.update({str(k): str(v) for k, v in (conf or {}).items()})
        builder = SparkSession.builder.master(master).appName(app_name)
        for k, v in settings.items():
            builder = builder.config(k, v)
        try:
            spark = builder.getOrCreate()
        except Exception as e:
            raise SparkUnavailableError(
                f"Spark did not start (master {master!r}): {type(e).__name__}: {_first_line(e)} "
                "(needs Java 17+; see docs/spark.md)"
            ) from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


# ---------------------------------------------------------------------------- local cluster
#: the standalone daemons' main classes (shipped in the pyspark package's jars)
_MASTER_CLASS = "org.apache.spark.deploy.master.Master"
_WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def _spark_class() -> Path:
    """pyspark's own ``bin/spark-class`` (the launcher of Spark's JVM daemons)."""
    try:
        import pyspark
    except ImportError:
        raise SparkUnavailableError(
            "a local Spark cluster needs pyspark: pip install 'pyspark>=4' (Java 17 too)"
        ) from None
    path = Path(pyspark.__file__).parent / "bin" / "spark-class"
    if not path.is_file():
        raise SparkUnavailableError(f"{path} is missing from the pyspark package (reinstall it)")
    if shutil.which("bash") is None:
        raise SparkUnavailableError("a local Spark cluster needs bash (spark-class is a script)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return redact("\n    ".join(keep))


class LocalCluster:
    """A Spark standalone cluster on 127.0.0.1: one master and ``workers`` workers, each a
    JVM started from pyspark's own ``bin/spark-class`` in a session of its own (so that
    stopping it also stops the executors it launched). Made and started by
    :func:`local_cluster`; see there.

    Attributes:
        url: the master URL, ``spark://127.0.0.1:PORT``.
        ui_url: the master's web UI (``http://127.0.0.1:PORT``; its ``/json/`` lists the
            workers).
        log_dir: where the daemons' logs (``master.log``, ``worker<i>.log``) and the
            workers' work directories (executors' stdout/stderr) are.
        startup_s: seconds from the first launch to every worker registered.
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        cores: int = 1,
        memory: str = "512m",
        log_dir: str | os.PathLike[str] | None = None,
        timeout: float = 90.0,
    ) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"workers must be a positive integer, not {workers!r}")
        if not isinstance(cores, int) or cores < 1:
            raise ConfigError(f"cores must be a positive integer, not {cores!r}")
        if not str(memory).strip() or not str(memory).strip()[0].isdigit():
            raise ConfigError(f"memory must look like '512m' or '2g', not {memory!r}")
        if not timeout or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.workers, self.cores, self.memory, self.timeout = workers, cores, str(memory), timeout
        self._own_dir = log_dir is None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.url = ""
        self.ui_url = ""
        self.startup_s: float | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []
        self._finalizer: weakref.finalize | None = None

    # -- life cycle
    def start(self) -> LocalCluster:
        """Launch the master, wait for its port, launch the workers, wait until they are
        all registered with the master (``timeout`` seconds in all).

        Raises:
            SparkUnavailableError: Java or pyspark is missing, a daemon exited, or the
                cluster was not up within ``timeout`` (the message has the log's tail);
                whatever started is stopped first.
        """
        if self._procs:
            return self
        _check_java()
        spark_class = _spark_class()
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="fedlab-spark-cluster-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_HOME": str(spark_class.parent.parent),
            "SPARK_LOG_DIR": str(self.log_dir),
            "SPARK_NO_DAEMONIZE": "1",
        }
        env.pop("SPARK_CONF_DIR", None)  # the user's cluster settings are not this cluster's
        # no REST submission server: it would take the fixed port 6066
        env["SPARK_MASTER_OPTS"] = (
            env.get("SPARK_MASTER_OPTS", "") + " -Dspark.master.rest.enabled=false"
        ).strip()
        self._finalizer = weakref.finalize(self, _stop_processes, self._procs, self._logs)
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        try:
            port, ui_port = _free_port(), _free_port()
            self.url = f"spark://127.0.0.1:{port}"
            self.ui_url = f"http://127.0.0.1:{ui_port}"
            self._launch(
                "master",
                spark_class,
                env,
                _MASTER_CLASS,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui_port),
            )
            self._wait(lambda: _listening(port), deadline, "the master to listen on " + self.url)
            for i in range(self.workers):
                self._launch(
                    f"worker{i}",
                    spark_class,
                    env,
                    _WORKER_CLASS,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(self.cores),
                    "--memory",
                    self.memory,
                    "--webui-port",
                    "0",  # any free port: nothing here reads the workers' pages
                    "--work-dir",
                    str(self.log_dir / f"work{i}"),
                    self.url,
                )
            self._wait(
                lambda: self.alive_workers() >= self.workers,
                deadline,
                f"{self.workers} worker(s) to register with the master",
            )
        except BaseException:
            self.close()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def close(self) -> None:
        """Stop every daemon (and so the executors they launched): SIGTERM to each one's
        process group, workers first, then SIGKILL to what is left after 15 s. Idempotent;
        also run when the object is collected or the interpreter exits."""
        if self._finalizer is not None:
            self._finalizer()  # calls _stop_processes once
        if self._own_dir and self.log_dir is not None and self.log_dir.exists():
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> str:
        return self.start().url

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"LocalCluster({self.url or 'not started'}, {self.workers} workers × "
            f"{self.cores} core(s) / {self.memory}, {state})"
        )

    # -- state
    @property
    def running(self) -> bool:
        """True while every daemon started is alive."""
        return bool(self._procs) and all(p.poll() is None for p in self._procs.values())

    @property
    def pids(self) -> dict[str, int]:
        """The daemons' process ids by role: ``master``, ``worker0``, ``worker1``… (the
        executors are children of the workers)."""
        return {role: p.pid for role, p in self._procs.items()}

    def alive_workers(self) -> int:
        """Workers the master lists as ALIVE (from its web UI's ``/json/``); 0 when the
        master does not answer."""
        try:
            # no proxy: the page is on loopback, whatever http_proxy says
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(self.ui_url + "/json/", timeout=2) as r:
                state = json.loads(r.read().decode())
        except (OSError, ValueError):
            return 0
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    # -- helpers
    def _launch(self, role: str, spark_class: Path, env: dict[str, str], *args: str) -> None:
        assert self.log_dir is not None
        log = open(self.log_dir / f"{role}.log", "wb")  # noqa: SIM115 (closed by close())
        self._logs.append(log)
        self._procs[role] = subprocess.Popen(
            [str(spark_class), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its executors
        )

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while True:
            for role, p in self._procs.items():
                if p.poll() is not None:
                    raise SparkUnavailableError(
                        f"the local Spark cluster's {role} exited with status {p.returncode} "
                        f"while waiting for {what}; its log:\n    "
                        + _log_tail(self._log_path(role))
                    )
            if ready():
                return
            if time.monotonic() >= deadline:
                tails = "\n  ".join(
                    f"{role}: " + _log_tail(self._log_path(role), 3) for role in self._procs
                )
                raise SparkUnavailableError(
                    f"the local Spark cluster did not start within {self.timeout:g} s (waiting "
                    f"for {what}); logs in {self.log_dir}:\n  {tails}"
                )
            time.sleep(0.2)

    def _log_path(self, role: str) -> Path:
        assert self.log_dir is not None
        return self.log_dir / f"{role}.log"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_processes(procs: dict[str, subprocess.Popen[bytes]], logs: list[Any]) -> None:
    """SIGTERM to each daemon's process group (workers before the master), wait, then
    SIGKILL; close the logs. The groups are the ones :meth:`LocalCluster._launch` made."""
    order = sorted(procs.items(), key=lambda kv: kv[0] == "master")
    for _, p in order:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
    end = time.monotonic() + 15
    for _, p in order:
        try:
            p.wait(max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
    for log in logs:
        with contextlib.suppress(OSError):
            log.close()
    logs.clear()


def local_cluster(
    workers: int = 2,
    cores: int = 1,
    memory: str = "512m",
    log_dir: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 90.0,
) -> LocalCluster:
    """Start a Spark standalone cluster on this machine's loopback and return it, running.

    One master and ``workers`` workers (``cores`` cores and ``memory`` each), launched
    from pyspark's ``bin/spark-class`` with ``SPARK_LOCAL_IP=127.0.0.1``: nothing listens
    on another interface. Returns once every worker is registered with the master. Use it
    as a context manager (it yields the master URL and stops the cluster at the end) or
    keep the object (``.url``, ``.close()``)::

        with fl.spark.local_cluster(workers=2) as url:
            spark = fl.spark.session(url, conf={"spark.executor.memory": "512m"})
            ...
            spark.stop()

        cluster = fl.spark.local_cluster()
        cluster.url        # 'spark://127.0.0.1:PORT'
        cluster.close()

    Args:
        workers: worker daemons (each one runs one executor per application).
        cores, memory: what each worker offers (an application's ``spark.executor.memory``
            must fit in ``memory``).
        log_dir: where the daemons' logs and the workers' work directories go (default: a
            temporary directory, removed by ``close()``).
        timeout: seconds for the whole start-up (master up and every worker registered).

    Raises:
        SparkUnavailableError: pyspark or Java is missing, a daemon exited during start-up,
            or the cluster was not up within ``timeout``; what had started is stopped.
        ConfigError: a bad argument.
    """
    return LocalCluster(
        workers=workers, cores=cores, memory=memory, log_dir=log_dir, timeout=timeout
    ).start()


# ---------------------------------------------------------------------------- JDBC
def _jdbc_url(source: Source) -> str:
    """The JDBC URL of a source: no user, no password (they go as properties)."""
    if source.kind == "sqlite":
        return f"jdbc:sqlite:{source.path}"
    if source.kind == "postgresql":
        params = dict(source.tls_options)
        params.pop("sslpassword", None)  # a property, never in the URL
        params["connectTimeout"] = str(max(1, round(source.options.connect_timeout)))
        params["ApplicationName"] = f"fedlab-spark:{source.name}"
        tail = "&".join(f"{k}={v}" for k, v in params.items())
        return (
            f"jdbc:postgresql://{source.host}:{source.port}/{source.database or 'postgres'}?{tail}"
        )
    if source.kind == "mysql":
        params = {
            "permitMysqlScheme": "true",
            "allowMultiQueries": "true",
            "connectTimeout": str(max(1, int(source.options.connect_timeout * 1000))),
        }
        params.update(_mariadb_tls(source))
        tail = "&".join(f"{k}={v}" for k, v in params.items())
        return f"jdbc:mysql://{source.host}:{source.port}/{source.database or ''}?{tail}"
    raise ConfigError(
        f"source {source.name!r}: the Spark engine reads sqlite, postgresql and mysql "
        f"(MariaDB) sources, not {source.kind}"
    )


def _mariadb_tls(source: Source) -> dict[str, str]:
    t = source.tls_options
    if not t or not source.wants_tls:
        return {}
    if t.get("ssl_cert") or t.get("ssl_key"):
        raise ConfigError(
            f"source {source.name!r}: client certificates (ssl_cert/ssl_key) are not passed to "
            "Spark's MariaDB JDBC driver by fedlab yet; use a password login over TLS"
        )
    out = {"useSsl": "true"}
    if t.get("ssl_ca"):
        out["serverSslCert"] = t["ssl_ca"]
    verify = str(t.get("ssl_verify_cert", "")).lower() in ("1", "true", "yes", "on")
    if not verify and not t.get("ssl_ca"):
        out["trustServerCertificate"] = "true"
    if str(t.get("ssl_verify_identity", "")).lower() not in ("1", "true", "yes", "on"):
        out["disableSslHostnameVerification"] = "true"
    return out


def _spark_type(t: exp.DataType | None, kind: str) -> str | None:
    """fedlab's type policy as the Spark type a column is read as (None: as the driver
    maps it); SQLite dates and timestamps are ISO text, read as STRING and parsed."""
    if t is None:
        return None
    T = exp.DataType.Type
    if t.this in exp.DataType.INTEGER_TYPES:
        return "BIGINT"
    if t.this in exp.DataType.REAL_TYPES:
        return "DOUBLE"
    if t.this in exp.DataType.TEXT_TYPES:
        return "STRING"
    if t.this == T.DATE:
        return "STRING" if kind == "sqlite" else "DATE"
    if t.this in (T.TIMESTAMP, T.DATETIME, T.TIMESTAMPNTZ, T.DATETIME64):
        return "STRING" if kind == "sqlite" else "TIMESTAMP_NTZ"
    if t.this == T.BOOLEAN:
        return "BOOLEAN"
    return "STRING" if kind == "sqlite" else None


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


#: MariaDB ignores ORDER BY in a derived table without LIMIT; Spark's JDBC reader always
#: wraps the fragment as one, so an ordered fragment gets this (no-op) LIMIT
_MARIADB_NO_LIMIT = "18446744073709551615"


def _keep_order(text: str) -> str:
    """A MariaDB fragment with a top-level ORDER BY and no LIMIT, given the largest LIMIT,
    so that its order survives Spark's ``SELECT … FROM (<fragment>) fedlab_f``."""
    import sqlglot

    try:
        tree = sqlglot.parse_one(text, read="mysql")
    except sqlglot.errors.ParseError:
        return text
    if isinstance(tree, exp.Query) and tree.args.get("order") and not tree.args.get("limit"):
        return f"{text} LIMIT {_MARIADB_NO_LIMIT}"
    return text


def jdbc_options(
    frag: Fragment,
    source: Source,
    *,
    sql: str | None = None,
    timeout: float | None = None,
    partition: tuple[str, int, int, int] | None = None,
) -> dict[str, str]:
    """The Spark JDBC options that read one fragment (``sql``: the text to send, default
    the fragment's). Holds the password when the source has one: never print it."""
    driver = DRIVERS[source.kind][0] if source.kind in DRIVERS else None
    url = _jdbc_url(source)
    text = (sql if sql is not None else frag.sql).strip().rstrip(";")
    if source.kind == "mysql":
        text = _keep_order(text)
    opts = {
        "url": url,
        "driver": driver or "",
        "dbtable": f"({text}) fedlab_f" if source.kind == "mysql" else f"({text}) AS fedlab_f",
    }
    schema = []
    for name, t in frag.columns:
        st = _spark_type(t, source.kind)
        if st is not None:
            schema.append(f"{_quote(name)} {st}")
    if schema:
        opts["customSchema"] = ", ".join(schema)
    if source.kind in ("postgresql", "mysql"):
        opts["fetchsize"] = str(FETCH_SIZE)
        opts["user"] = source.user or ("postgres" if source.kind == "postgresql" else "root")
        if source._password:
            opts["password"] = source._password
        if source.kind == "postgresql" and source.tls_options.get("sslpassword"):
            opts["sslpassword"] = source.tls_options["sslpassword"]
        limit = source.options.statement_timeout
        if timeout is not None:
            limit = min(limit, timeout) if limit else timeout
        setup = source.session_setup(statement_timeout=limit)
        if setup:
            opts["sessionInitStatement"] = "; ".join(setup)
        if limit:
            opts["queryTimeout"] = str(max(1, math.ceil(limit)))
    if source.kind == "sqlite":
        opts["open_mode"] = "1"  # SQLITE_OPEN_READONLY: a fragment never writes
    if partition is not None:
        col, lo, hi, n = partition
        opts.update(
            partitionColumn=_quote(col) if source.kind == "sqlite" else col,
            lowerBound=str(lo),
            upperBound=str(hi + 1),
            numPartitions=str(n),
        )
    return opts


def spark_partition(
    frag: Fragment,
    catalog: Catalog,
    *,
    parallelism: int,
    min_rows: Mapping[str, int | None] | None = None,
) -> tuple[str, int, int, int] | None:
    """``(column, low, high, partitions)`` for a fragment Spark reads in key ranges, or None.

    The planner's mark (``Fragment.partition``, made for the local engine) is kept when
    set; otherwise :func:`fedlab.sql.partition.partition_for` decides with Spark's
    thresholds (:data:`SPARK_PARTITION_MIN_ROWS`): one table, no pushed filter, an
    integer one-column primary key among the outputs, min/max known. The number of
    partitions follows the estimated rows (:data:`ROWS_PER_PARTITION` each), at least 2,
    at most twice the session's parallelism.
    """
    if frag.dynamic:
        return None
    part = frag.partition or partition_for(
        frag,
        catalog,
        max_workers=MAX_PARTITIONS,
        min_rows=SPARK_PARTITION_MIN_ROWS if min_rows is None else min_rows,
        cpus=max(parallelism, 2),
    )
    if part is None:
        return None
    key, lo, hi, _ = part
    rows = frag.estimated_rows or 0
    n = max(2, min(math.ceil(rows / ROWS_PER_PARTITION), 2 * parallelism, MAX_SPARK_PARTITIONS))
    n = min(n, hi - lo + 1)
    return (key, lo, hi, n) if n >= 2 else None


# ---------------------------------------------------------------------------- helpers
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # a JVM error: the database driver's own message is the useful part
    for ln in lines:
        for marker in ("PSQLException:", "SQLException:", "SQLiteException:", "Exception: ERROR"):
            if marker in ln:
                return redact(ln[ln.index(marker) :][:500])
    if lines[0].startswith("An error occurred while calling"):  # py4j: the JVM's story
        causes = [ln for ln in lines if ln.startswith("Caused by:")]
        if causes:
            return redact(causes[-1][len("Caused by:") :].strip()[:500])
        thrown = [ln.lstrip(": ") for ln in lines[1:] if not ln.startswith("at ")]
        if thrown:
            return redact(thrown[0][:500])
    return redact(lines[0][:500])


_UNREACHABLE = (
    "Connection refused",
    "Communications link failure",
    "Could not connect",
    "Socket fail to connect",
    "Access denied for user",
    "password authentication failed",
    "No route to host",
    "connection attempt failed",
)


def _fragment_error(frag: Fragment, source: Source, e: BaseException) -> FedlabError:
    if isinstance(e, FedlabError):
        return e
    text = _first_line(e)
    if any(m in str(e) for m in _UNREACHABLE):
        return SourceUnavailableError(
            f"source {source.describe()} is not reachable from Spark (fragment {frag.id}): {text}"
        )
    return FragmentError(
        f"fragment {frag.id} on {source.name} failed in Spark: {text}",
        source=source.name,
        sql=frag.sql,
    )


def _cast_columns(df: SparkDataFrame, frag: Fragment, kind: str) -> SparkDataFrame:
    """Name the columns as the fragment declares and finish the type policy (SQLite ISO
    text to dates and timestamps; decimals the driver kept to DOUBLE)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import DecimalType

    names = frag.column_names
    if len(df.columns) == len(names) and df.columns != names:
        df = df.toDF(*names)
    T = exp.DataType.Type
    exprs = []
    for i, (field, (_, t)) in enumerate(zip(df.schema.fields, frag.columns, strict=False)):
        col = df[i]
        if kind == "sqlite" and t is not None and t.this == T.DATE:
            col = F.to_date(F.substring(col, 1, 10))
        elif (
            kind == "sqlite"
            and t is not None
            and t.this in (T.TIMESTAMP, T.DATETIME, T.TIMESTAMPNTZ, T.DATETIME64)
        ):
            col = F.expr(f"try_cast(replace({_quote(field.name)}, 'T', ' ') AS TIMESTAMP_NTZ)")
        elif isinstance(field.dataType, DecimalType):
            col = col.cast("double")
        exprs.append(col.alias(field.name))
    return df.select(*exprs) if exprs else df


def _measure(df: SparkDataFrame) -> tuple[int, int]:
    """Rows and the Arrow size of the rows (fixed-width columns × rows, text bytes plus
    offsets, validity bitmaps), computed by one Spark job, which also fills the cache."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import (
        BinaryType,
        BooleanType,
        ByteType,
        DateType,
        FloatType,
        IntegerType,
        ShortType,
        StringType,
    )

    aggs = [F.count(F.lit(1)).alias("n")]
    text_cols = []
    for i, f in enumerate(df.schema.fields):
        if isinstance(f.dataType, StringType | BinaryType):
            aggs.append(F.sum(F.octet_length(df[i])).alias(f"s{i}"))
            text_cols.append(f)
    row = df.agg(*aggs).collect()[0]
    rows = int(row["n"])
    nbytes = 0
    for f in df.schema.fields:
        if isinstance(f.dataType, StringType | BinaryType):
            continue
        if isinstance(f.dataType, BooleanType):
            nbytes += (rows + 7) // 8
        elif isinstance(f.dataType, ByteType):
            nbytes += rows
        elif isinstance(f.dataType, ShortType):
            nbytes += 2 * rows
        elif isinstance(f.dataType, IntegerType | FloatType | DateType):
            nbytes += 4 * rows
        else:
            nbytes += 8 * rows
    nbytes += sum(int(v or 0) for k, v in row.asDict().items() if k != "n")
    nbytes += sum(4 * (rows + 1) for _ in text_cols)
    nbytes += len(df.schema.fields) * ((rows + 7) // 8)  # validity bitmaps
    return rows, nbytes


def task_metrics(spark: SparkSession, group: str, *, wait: float = 1.0) -> dict[str, float] | None:
    """Spark's task metrics of a job group's reading stages (no shuffle input, no cached
    bytes re-read), summed: ``records`` read (the JDBC rows), ``run_s`` (executor run
    time of those tasks, seconds), ``tasks``; ``bytes`` (0: Spark's JDBC reader reports
    none).
    None when Spark does not say (the status store is updated asynchronously: waits up to
    ``wait`` seconds for the group's stages to complete)."""
    sc = spark.sparkContext
    try:
        store = sc._jsc.sc().statusStore()
        end = time.monotonic() + wait
        while True:
            stages = []
            for job in sc.statusTracker().getJobIdsForGroup(group):
                info = sc.statusTracker().getJobInfo(job)
                if info is not None:
                    stages.extend(int(i) for i in info.stageIds)
            data = [store.lastStageAttempt(sid) for sid in sorted(set(stages))]
            done = all(str(d.status()) in ("COMPLETE", "SKIPPED") for d in data)
            if (data and done) or time.monotonic() >= end:
                break
            time.sleep(0.05)
        # the reading stages: no shuffle input, and no bytes (Spark's JDBC reader reports
        # none; a stage re-reading the cached fragment reports the cache's bytes)
        data = [d for d in data if d.shuffleReadRecords() == 0 and d.inputBytes() == 0]
        data = [d for d in data if d.inputRecords() > 0] or data[:1]
        if not data:
            return None
        return {
            "records": float(sum(d.inputRecords() for d in data)),
            "bytes": float(sum(d.inputBytes() for d in data)),
            "run_s": sum(d.executorRunTime() for d in data) / 1000.0,
            "tasks": float(sum(d.numTasks() for d in data)),
        }
    except Exception:  # a private API: never fail a query over a trace detail
        return None


def _from_polars(spark: SparkSession, df: pl.DataFrame) -> SparkDataFrame:
    """A frame read on the driver, handed to Spark through Arrow."""
    if df.width == 0:
        return spark.createDataFrame([], "dummy INT").select()
    return spark.createDataFrame(df.to_arrow())


def _empty(spark: SparkSession, frag: Fragment) -> SparkDataFrame:
    ddl = []
    for name, t in frag.columns:
        st = _spark_type(t, "postgresql") or "STRING"
        ddl.append(f"{_quote(name)} {st}")
    return spark.createDataFrame([], ", ".join(ddl))


#: query id -> the fragment frames it cached (released by :func:`release`)
_CACHED: dict[str, list[Any]] = {}
_CACHED_LOCK = threading.Lock()


def release(query: str | Trace) -> None:
    """Drop the Spark caches of a query run with ``collect=False`` (its ``trace`` or
    ``trace.query_id``). ``collect=True`` releases them itself."""
    qid = query.query_id if isinstance(query, Trace) else str(query)
    with _CACHED_LOCK:
        frames = _CACHED.pop(qid, [])
    for df in frames:
        with contextlib.suppress(Exception):
            df.unpersist()


def _view_name(qid: str, frag_id: str) -> str:
    return f"fedlab_{qid}_{frag_id}"


#: Spark 4's PushProjectionThroughUnion fails ("key not found: <column>") on a scalar
#: subquery correlated with a UNION ALL derived table (a sharded table's shards). Excluding
#: the rule (an optimization only) makes those residuals run; done for such residuals.
_UNION_SUBQUERY_RULE = "org.apache.spark.sql.catalyst.optimizer.PushProjectionThroughUnion"


def _needs_union_workaround(tree: exp.Expression | None) -> bool:
    if tree is None or tree.find(exp.Union) is None:
        return False
    return any(
        sub.find(exp.Select) is not None and sub.find_ancestor(exp.Select) is not None
        for sub in tree.find_all(exp.Subquery)
        if not isinstance(sub.parent, exp.From | exp.Join)
    )


def _exclude_rule(spark: SparkSession, rule: str) -> None:
    key = "spark.sql.optimizer.excludedRules"
    current = spark.conf.get(key, "") or ""
    rules = [r for r in current.split(",") if r.strip()]
    if rule not in rules:
        spark.conf.set(key, ",".join([*rules, rule]))


def residual_spark_sql(plan: Plan, views: Mapping[str, str]) -> str:
    """The plan's residual as Spark SQL, its fragment tables pointed at ``views``
    (fragment id -> temporary view name), each keeping its name as alias."""
    if plan.residual is None:
        raise ExecutionError("the plan has no residual")
    tree = prepare(plan.residual)
    for t in list(tree.find_all(exp.Table)):
        if t.name in views and not t.args.get("db") and not t.args.get("catalog"):
            alias = t.alias
            t.set("this", exp.to_identifier(views[t.name], quoted=True))
            if not alias:
                t.set("alias", exp.TableAlias(this=exp.to_identifier(t.name, quoted=True)))
    return tree.sql(dialect="spark", identify=True)


# ---------------------------------------------------------------------------- execute
def execute(
    plan: Plan,
    catalog: Catalog,
    *,
    spark: SparkSession,
    timeout: float | None = None,
    max_rows: int | None = None,
    max_bytes: int | None = None,
    t0: float | None = None,
    collect: bool = True,
    max_workers: int = 8,
) -> tuple[Any, Trace]:
    """Run ``plan`` on ``spark``: the Spark counterpart of
    :func:`fedlab.execute.executor.execute`.

    Args:
        plan: what to run (from :meth:`Federation.explain`; any strategy).
        catalog: where the sources are.
        spark: the session (:func:`session`, or the user's own with the JDBC jars).
        timeout: whole-query deadline in seconds: the running Spark jobs are cancelled and
            :class:`QueryTimeoutError` raised when it passes; the servers' statements are
            bounded too (``statement_timeout`` / ``max_statement_time``, JDBC
            ``queryTimeout``).
        max_rows, max_bytes: limits on the result brought back to Python (checked in
            Spark before anything is collected). Fragments are not limited: they stay in
            Spark, which is the point of this engine.
        t0: ``time.monotonic()`` when the query started (for the trace's clock).
        collect: True: return a Polars frame; False: return the Spark DataFrame (the
            fragments stay cached until :func:`release`).
        max_workers: fragments read at once (each one a Spark job).

    Returns:
        ``(polars.DataFrame | pyspark DataFrame, Trace)``.

    Raises:
        QueryTimeoutError, LimitExceededError, SourceUnavailableError, FragmentError,
        UnsupportedSQLError (the residual did not run in Spark SQL).
    """
    for name, value in (("max_rows", max_rows), ("max_bytes", max_bytes)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"{name} must be a non-negative integer or None, not {value!r}")
    t0 = time.monotonic() if t0 is None else t0
    deadline = t0 + timeout if timeout else None
    qid = uuid.uuid4().hex[:10]
    trace = Trace(query_id=qid)
    sc = spark.sparkContext
    if spark.conf.get("spark.sql.caseSensitive") != "true":
        spark.conf.set("spark.sql.caseSensitive", "true")  # "Name" and "name" are two columns
    parallelism = max(int(sc.defaultParallelism), 1)
    frames: dict[str, Any] = {}
    entries: dict[str, TraceEntry] = {}
    errors: list[tuple[Fragment, BaseException]] = []
    groups: list[str] = []
    lock = threading.Lock()
    finished = threading.Event()
    cached: list[Any] = []

    def time_left() -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.001)

    def read(frag: Fragment, sql: str | None, part: tuple[str, int, int, int] | None) -> Any:
        source = catalog.sources[frag.source]
        opts = jdbc_options(frag, source, sql=sql, timeout=time_left(), partition=part)
        return spark.read.format("jdbc").options(**opts).load()

    def run_one(frag: Fragment, start: float) -> None:
        group = f"fedlab-{qid}-{frag.id}"
        sc.setJobGroup(group, f"fedlab {qid} {frag.id} @ {frag.source}", interruptOnCancel=True)
        source = catalog.sources[frag.source]
        shown, note, part = frag.sql, "", None
        try:
            if frag.dynamic:
                # the keys' jobs get their own group: the fragment's task metrics are its read
                sc.setJobGroup(f"{group}-keys", f"fedlab {qid} keys for {frag.id}", True)
                keys = {
                    d.provider: _keys(frames[d.provider], frag, d.provider) for d in frag.dynamic
                }
                sc.setJobGroup(group, f"fedlab {qid} {frag.id} @ {frag.source}", True)
                texts, shown, note = fill_keys(frag, keys)
                if not texts:
                    df = _empty(spark, frag)
                    entry = TraceEntry(
                        fragment=frag.id,
                        source=frag.source,
                        kind=frag.kind,
                        sql=shown,
                        start=start,
                        end=time.monotonic() - t0,
                        rows=0,
                        bytes=0,
                        reader="skipped" + note,
                    )
                    with lock:
                        frames[frag.id] = df
                        entries[frag.id] = entry
                    frag.actual_rows = 0
                    return
                if source.kind not in DRIVERS:
                    got = [
                        default_fetch(dataclasses.replace(frag, sql=t), source, deadline)
                        for t in texts
                    ]
                    parts = [_from_polars(spark, g.df) for g in got]
                else:
                    parts = [read(frag, t, None) for t in texts]
                raw = parts[0]
                for p in parts[1:]:
                    raw = raw.unionByName(p)
            elif source.kind not in DRIVERS:  # DuckDB files, REST: read here, then Spark
                got = default_fetch(frag, source, deadline)
                raw = _from_polars(spark, got.df)
                note = f" (read by fedlab's {got.reader} on the driver)"
            else:
                part = spark_partition(frag, catalog, parallelism=parallelism)
                raw = read(frag, None, part)
            df = _cast_columns(raw, frag, source.kind).persist()
            with lock:
                cached.append(df)
            rows, nbytes = _measure(df)
            with lock:
                if finished.is_set():  # the query ended (failed, timed out) meanwhile
                    df.unpersist()
                    return
        except BaseException as e:  # handed to the calling thread
            with lock:
                errors.append((frag, e))
            return
        reader = "spark jdbc"
        if part is not None:
            reader += f" ({part[3]} ranges on {part[0]})"
        entry = TraceEntry(
            fragment=frag.id,
            source=frag.source,
            kind=frag.kind,
            sql=shown,
            start=start,
            end=time.monotonic() - t0,
            rows=rows,
            bytes=nbytes,
            reader=reader + note,
        )
        with lock:
            frames[frag.id] = df
            entries[frag.id] = entry
        frag.actual_rows = rows

    def cancel_all() -> None:
        for g in groups:
            with contextlib.suppress(Exception):
                sc.cancelJobGroup(g)

    def on_timeout(what: str) -> QueryTimeoutError:
        cancel_all()
        return QueryTimeoutError(
            f"query passed its {timeout:g} s deadline in Spark while {what} "
            "(its Spark jobs were cancelled)"
        )

    fetch_start = time.monotonic()
    try:
        waiting = list(plan.fragments)
        running: dict[str, threading.Thread] = {}
        workers = max(1, min(max_workers, len(plan.fragments) or 1))
        while waiting or running:
            for f in list(waiting):
                if len(running) >= workers:
                    break
                if all(d in frames for d in f.depends_on):
                    waiting.remove(f)
                    groups.extend([f"fedlab-{qid}-{f.id}", f"fedlab-{qid}-{f.id}-keys"])
                    th = threading.Thread(
                        target=run_one,
                        args=(f, time.monotonic() - t0),
                        name=f"fedlab-{qid}-{f.id}",
                        daemon=True,
                    )
                    running[f.id] = th
                    th.start()
            if not running and waiting:  # pragma: no cover - the planner makes no cycle
                raise ExecutionError(
                    "fragments wait for each other: " + ", ".join(f.id for f in waiting)
                )
            if deadline is not None and time.monotonic() >= deadline:
                late = list(running) + [f.id for f in waiting]
                raise on_timeout(f"reading fragment(s) {', '.join(late)}")
            for fid, th in list(running.items()):
                th.join(0.05)
                if not th.is_alive():
                    running.pop(fid)
            if errors:
                frag, err = errors[0]
                cancel_all()
                raise _fragment_error(frag, catalog.sources[frag.source], err) from None
        trace.entries.extend(entries[f.id] for f in plan.fragments if f.id in entries)
        trace.fetch_s = time.monotonic() - fetch_start

        res_start = time.monotonic()
        trace.residual_start = res_start - t0
        if plan.residual is None:
            result = frames[plan.fragments[0].id]
        else:
            views = {}
            for fid, df in frames.items():
                views[fid] = _view_name(qid, fid)
                df.createOrReplaceTempView(views[fid])
            text = residual_spark_sql(plan, views)
            if _needs_union_workaround(plan.residual):
                _exclude_rule(spark, _UNION_SUBQUERY_RULE)
            try:
                result = spark.sql(text)
            except Exception as e:
                raise UnsupportedSQLError(
                    f"Spark SQL could not run the residual: {type(e).__name__}: {_first_line(e)}\n"
                    f"  residual: {text[:800]}"
                ) from None
        if plan.output_columns and len(result.columns) > len(plan.output_columns):
            result = result.select(*[result[i] for i in range(len(plan.output_columns))])
        if (
            plan.output_columns
            and len(plan.output_columns) == len(result.columns)
            and len(set(plan.output_columns)) == len(result.columns)
        ):
            result = result.toDF(*plan.output_columns)
        if not collect:
            trace.residual_s = time.monotonic() - res_start
            _add_task_metrics(spark, qid, trace)
            with _CACHED_LOCK:
                _CACHED[qid] = list(cached)
            cached.clear()
            return result, trace

        group = f"fedlab-{qid}-result"
        groups.append(group)
        out: dict[str, Any] = {}

        def collect_result() -> None:
            sc.setJobGroup(group, f"fedlab {qid} result", interruptOnCancel=True)
            try:
                out["df"] = _collect(result, max_rows, max_bytes)
            except BaseException as e:
                out["error"] = e

        th = threading.Thread(target=collect_result, name=group, daemon=True)
        th.start()
        while th.is_alive():
            th.join(0.05)
            if deadline is not None and time.monotonic() >= deadline and th.is_alive():
                raise on_timeout("running the residual")
        if "error" in out:
            err = out["error"]
            if isinstance(err, FedlabError):
                raise err
            raise ExecutionError(
                f"Spark failed while running the residual: {type(err).__name__}: {_first_line(err)}"
            ) from None
        df = out["df"]
        trace.residual_s = time.monotonic() - res_start
        trace.result_rows = df.height
        _add_task_metrics(spark, qid, trace)
        return df, trace
    except BaseException:
        cancel_all()
        raise
    finally:
        with lock:
            finished.set()
            leftovers = list(cached)
        for fid in frames:
            with contextlib.suppress(Exception):
                spark.catalog.dropTempView(_view_name(qid, fid))
        for df in leftovers:
            with contextlib.suppress(Exception):
                df.unpersist()


def _add_task_metrics(spark: SparkSession, qid: str, trace: Trace) -> None:
    """Append Spark's task metrics of each fragment's job to its trace entry's reader
    (rows read and executor seconds), and say that its bytes were computed, not reported."""
    for e in trace.entries:
        if e.reader.startswith("skipped"):
            continue
        m = task_metrics(spark, f"fedlab-{qid}-{e.fragment}", wait=0.5)
        if m is None:
            continue
        tasks = int(m["tasks"])
        e.reader += (
            f" · Spark tasks: {tasks} task{'s' if tasks != 1 else ''}, "
            f"{int(m['records']):,} rows read, {m['run_s']:.2f} s"
        )
        if not m["bytes"]:
            e.reader += " · bytes: Arrow size computed in Spark"


def _keys(frame: Any, frag: Fragment, provider: str) -> pl.DataFrame:
    """The provider's key columns this fragment needs, brought to Python as Polars
    (distinct values only: what :func:`fill_keys` ships)."""
    cols = [d.provider_column for d in frag.dynamic if d.provider == provider]
    cols = list(dict.fromkeys(cols))
    parts = {}
    for c in cols:
        t = frame.select(c).where(frame[c].isNotNull()).distinct().toArrow()
        parts[c] = pl.from_arrow(t).get_column(c)
    n = max((s.len() for s in parts.values()), default=0)
    # columns of different lengths: pad with nulls (fill_keys drops them)
    return pl.DataFrame(
        {c: s.extend_constant(None, n - s.len()) for c, s in parts.items()},
    )


def _collect(result: Any, max_rows: int | None, max_bytes: int | None) -> pl.DataFrame:
    """The Spark result as Polars through Arrow, after the limits were checked in Spark."""
    over = None
    if max_bytes is not None:
        result = result.persist()
        try:
            rows, nbytes = _measure(result)
            if max_rows is not None and rows > max_rows:
                over = ("max_rows", f"{rows:,} rows, more than max_rows={max_rows:,}")
            elif nbytes > max_bytes:
                over = ("max_bytes", f"~{nbytes:,} bytes, more than max_bytes={max_bytes:,}")
            if over is None:
                return _to_polars(result)
        finally:
            with contextlib.suppress(Exception):
                result.unpersist()
    elif max_rows is not None:
        table = result.limit(max_rows + 1).toArrow()
        if table.num_rows > max_rows:
            over = ("max_rows", f"more than max_rows={max_rows:,} rows")
        else:
            return _from_arrow(table)
    else:
        return _to_polars(result)
    raise LimitExceededError(
        f"the query's result has {over[1]} (counted in Spark: nothing was collected); add a "
        "filter, an aggregate or a LIMIT, raise the limit, or keep the result in Spark "
        "(collect=False) or write it to Parquet",
        fragment="result",
        limit=over[0],
    )


def _to_polars(result: Any) -> pl.DataFrame:
    return _from_arrow(result.toArrow())


def _from_arrow(table: Any) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df


def write_parquet(
    plan: Plan,
    catalog: Catalog,
    path: str | os.PathLike[str],
    *,
    spark: SparkSession,
    mode: str = "errorifexists",
    timeout: float | None = None,
    t0: float | None = None,
) -> Trace:
    """Run ``plan`` on ``spark`` and write the result as Parquet under ``path`` (a directory
    of part files, written by the executors: nothing passes through Python).

    ``mode``: Spark's save mode (``errorifexists``, ``overwrite``, ``append``, ``ignore``).
    """
    t0 = time.monotonic() if t0 is None else t0
    df, trace = execute(plan, catalog, spark=spark, timeout=timeout, t0=t0, collect=False)
    try:
        start = time.monotonic()
        df.write.mode(mode).parquet(str(path))
        trace.residual_s += time.monotonic() - start
    except Exception as e:
        raise ExecutionError(
            f"Spark could not write the result to {str(path)!r}: {type(e).__name__}: "
            f"{_first_line(e)}"
        ) from None
    finally:
        release(trace)
    return trace
