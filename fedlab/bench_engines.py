"""``fedlab bench --engines``: TPC-H on the benchmark's placement, run by fedlab's engines.

The same databases as ``fedlab bench`` (:data:`fedlab.bench.PLACEMENT`: customer and
orders on PostgreSQL, lineitem on MariaDB, the rest in a SQLite file; the monolith
PostgreSQL holds the reference answers), the same query texts, the same equality rule,
one strategy (``auto``), and these engines (:data:`ENGINES`):

==================  ===========================================================
``polars``          the local engine: fragments read with connectorx, residual in Polars
``spark-local``     ``fed.sql(..., engine="spark")`` on a ``local[2]`` session
``spark-standalone`` the same on a standalone cluster of two workers on loopback
                    (:func:`fedlab.spark.local_cluster`, 1 core and 1 GB each)
==================  ===========================================================

Each engine runs in a fresh Python process of its own (``python -m fedlab.bench_engines
--child``, its instructions on stdin, credentials included, so nothing is written to
disk), so that the peak memory is the engine's: a background thread samples the RSS of
that process, of the Spark driver JVM (its child) and, for the standalone cluster, of the
executors (the workers' children) and of the master and worker daemons. The answers come
back as Arrow IPC files and are checked against the monolith's in the parent, so the
reference answers are not in the measured process. Spark's start-up (the cluster, the
session, a first small federated query) is timed apart from the queries.

The pure parts (:func:`parse_engines`, :func:`summarize_engines`, the renderers) take and
return plain values or Polars frames and need no database.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from fedlab import bench

__all__ = [
    "ENGINES",
    "ENGINE_RESULT_SCHEMA",
    "MARK_BEGIN_ENGINES",
    "MARK_END_ENGINES",
    "STANDALONE",
    "WARMUP_SQL",
    "RssSampler",
    "main_engines",
    "parse_engines",
    "render_engines_markdown",
    "render_engines_table",
    "run_engines",
    "summarize_engines",
]

#: The engines, in display order; ``polars`` (else the first one run) is the baseline of
#: the ratios.
ENGINES: tuple[str, ...] = ("polars", "spark-local", "spark-standalone")

#: The standalone cluster of ``spark-standalone``: workers, cores and memory per worker
#: (each worker runs one executor of that memory).
STANDALONE: dict[str, Any] = {"workers": 2, "cores": 1, "memory": "1g"}

#: Run once per engine before the clock starts on the TPC-H queries (reported as the
#: warm-up): it touches the three sources, so every JDBC driver and reader is loaded.
WARMUP_SQL = (
    "SELECT r_name, count(*) AS n FROM region JOIN nation ON r_regionkey = n_regionkey "
    "JOIN customer ON c_nationkey = n_nationkey JOIN orders ON o_custkey = c_custkey "
    "JOIN lineitem ON l_orderkey = o_orderkey WHERE o_orderkey < 100 GROUP BY r_name"
)

#: Columns of the results frame: one row per (query, engine); the monolith's rows carry
#: the reference time and answer size.
ENGINE_RESULT_SCHEMA: dict[str, pl.DataType] = {
    "query": pl.Int64(),
    "engine": pl.String(),
    "correct": pl.Boolean(),  # null for the monolith, or when the run raised
    "seconds": pl.Float64(),  # median wall time of fed.sql over --repeat runs
    "rows": pl.Int64(),  # rows moved from the sources (monolith: rows of the answer)
    "bytes": pl.Int64(),  # bytes moved from the sources (Spark: computed in Spark)
    "fragments": pl.Int64(),
    "python_rss": pl.Int64(),  # peak RSS of the fedlab process during the query (bytes)
    "jvm_rss": pl.Int64(),  # peak RSS of the Spark JVMs (driver + executors) during it
    "error": pl.String(),
    "detail": pl.String(),
}

#: ``--markdown`` replaces the block between these two lines (``{sf}``: the scale factor,
#: so that each scale factor keeps its own block), appending it when absent.
MARK_BEGIN_ENGINES = "<!-- fedlab bench --engines --sf {sf:g}: begin generated results -->"
MARK_END_ENGINES = "<!-- fedlab bench --engines --sf {sf:g}: end generated results -->"

#: seconds an engine's process may take in all before it is stopped
CHILD_TIMEOUT = 3600.0


# ---------------------------------------------------------------------- arguments
def parse_engines(spec: str | None) -> list[str]:
    """Parse ``--engines`` (comma-separated, order kept, duplicates dropped; ``all``: every
    engine of :data:`ENGINES`).

    >>> parse_engines("spark-local, polars,spark-local")
    ['spark-local', 'polars']
    >>> parse_engines("all")
    ['polars', 'spark-local', 'spark-standalone']
    """
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(ENGINES)
    out: list[str] = []
    for raw in spec.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name not in ENGINES:
            raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no engine selected by {spec!r}")
    return out


# ---------------------------------------------------------------------- memory sampling
class RssSampler:
    """Samples, every ``interval`` seconds in a background thread, the resident memory of
    this process (``python``), of the Spark driver JVM(s) among its descendants
    (``driver``), of the executors under the standalone workers (``executors``) and of
    the cluster daemons themselves (``daemons``: master and workers). Peaks are kept over
    the whole run and per window (:meth:`window_start` / :meth:`window_end`)."""

    GROUPS = ("python", "driver", "executors", "daemons")

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.me = psutil.Process()
        self.daemon_pids: set[int] = set()
        self.worker_pids: set[int] = set()
        self.peak: dict[str, int] = dict.fromkeys(self.GROUPS, 0)
        self._window: dict[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._procs: dict[str, list[Any]] = {g: [] for g in self.GROUPS[1:]}
        self._found_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="fedlab-rss", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def set_cluster(self, pids: dict[str, int]) -> None:
        """The standalone cluster's daemons (``LocalCluster.pids``)."""
        with self._lock:
            self.daemon_pids = set(pids.values())
            self.worker_pids = {p for role, p in pids.items() if role != "master"}
            self._found_at = 0.0

    def _find(self) -> None:
        """Sort the descendants into driver / executors / daemons (every half second)."""
        psutil = self._psutil
        groups: dict[str, list[Any]] = {g: [] for g in self.GROUPS[1:]}
        under_workers: set[int] = set()
        for pid in self.worker_pids:
            with contextlib.suppress(psutil.Error):
                under_workers |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        with contextlib.suppress(psutil.Error):
            for c in self.me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if c.pid in self.daemon_pids:
                        groups["daemons"].append(c)
                    elif c.pid in under_workers:
                        groups["executors"].append(c)
                    elif c.name() == "java":
                        groups["driver"].append(c)
        self._procs = groups
        self._found_at = time.monotonic()

    def sample(self) -> dict[str, int]:
        """One sample (also taken at each window's edges); returns it."""
        psutil = self._psutil
        with self._lock:
            if time.monotonic() - self._found_at > 0.5:
                self._find()
            now = dict.fromkeys(self.GROUPS, 0)
            with contextlib.suppress(psutil.Error):
                now["python"] = self.me.memory_info().rss
            for group, procs in self._procs.items():
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        now[group] += p.memory_info().rss
            for g, v in now.items():
                self.peak[g] = max(self.peak[g], v)
                if self._window is not None:
                    self._window[g] = max(self._window[g], v)
            return now

    def high_water(self) -> dict[str, int]:
        """Per group, the sum of the kernel's high-water marks (:func:`high_water_rss`) of
        the processes alive now: call it before Spark stops. For a group of several
        processes it may exceed the sampled peak (their peaks need not coincide)."""
        with self._lock:
            self._find()
            out = dict.fromkeys(self.GROUPS, 0)
            out["python"] = high_water_rss() or 0
            for group, procs in self._procs.items():
                out[group] = sum(high_water_rss(p.pid) or 0 for p in procs)
            return out

    def window_start(self) -> None:
        with self._lock:
            self._window = dict.fromkeys(self.GROUPS, 0)
        self.sample()

    def window_end(self) -> dict[str, int]:
        self.sample()
        with self._lock:
            out, self._window = self._window or dict.fromkeys(self.GROUPS, 0), None
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def high_water_rss(pid: int | None = None) -> int | None:
    """The kernel's high-water mark of a process's RSS (``VmHWM`` in ``/proc/PID/status``,
    bytes): its exact peak, which no sampling can miss. None where there is no ``/proc``.

    ``getrusage``'s ``ru_maxrss`` is not used: on Linux it carries over the parent's
    peak across ``fork`` + ``exec``, so a fresh child would report its parent's memory.
    """
    try:
        text = Path(f"/proc/{pid or 'self'}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


# ---------------------------------------------------------------------- one engine (child)
def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the queries on one engine in this (fresh) process; the result as a dict. Answers
    are written to ``spec["out"]/q<NN>.arrow``."""
    sampler = RssSampler().start()
    engine = spec["engine"]
    out_dir = Path(spec["out"])
    info: dict[str, Any] = {"engine": engine, "queries": [], "startup": {}}
    cluster = None
    spark = None
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        if not spec.get("quiet"):
            print(f"[{engine}] {msg}", file=sys.stderr, flush=True)

    try:
        import fedlab as fl

        fed = fl.Federation()
        for name, url in spec["targets"]:
            fed.attach(name, url)
        fed.tables()  # the catalog, before any clock starts
        info["startup"]["python_rss_ready"] = sampler.sample()["python"]
        run_engine = "polars"
        if engine.startswith("spark"):
            from fedlab import spark as fs

            run_engine = "spark"
            conf: dict[str, str] = {}
            master = "local[2]"
            if engine == "spark-standalone":
                t0 = time.perf_counter()
                cluster = fs.local_cluster(**STANDALONE)
                info["startup"]["cluster_s"] = time.perf_counter() - t0
                sampler.set_cluster(cluster.pids)
                log(f"cluster {cluster.url} up in {info['startup']['cluster_s']:.1f} s")
                master = cluster.url
                conf = {
                    "spark.executor.memory": STANDALONE["memory"],
                    "spark.executor.cores": str(STANDALONE["cores"]),
                    "spark.cores.max": str(STANDALONE["workers"] * STANDALONE["cores"]),
                }
            t0 = time.perf_counter()
            spark = fs.session(master, app_name=f"fedlab-bench-{engine}", conf=conf)
            if cluster is not None:  # the executors, registered before the clock starts
                jsc = spark.sparkContext._jsc.sc()
                end = time.monotonic() + 120
                while jsc.getExecutorIds().size() < STANDALONE["workers"]:
                    if time.monotonic() > end:
                        raise RuntimeError("the standalone executors did not register in 120 s")
                    time.sleep(0.2)
            info["startup"]["session_s"] = time.perf_counter() - t0
            info["spark"] = {
                "master": spark.sparkContext.master,
                "version": spark.version,
                "driver_memory": spark.conf.get("spark.driver.memory", "1g"),
                "executor_memory": conf.get("spark.executor.memory"),
                "default_parallelism": spark.sparkContext.defaultParallelism,
            }
            log(f"session up in {info['startup']['session_s']:.1f} s")
        kwargs: dict[str, Any] = {"strategy": spec["strategy"]}
        if run_engine == "spark":
            kwargs.update(engine="spark", spark=spark)
        t0 = time.perf_counter()
        fed.sql(WARMUP_SQL, **kwargs)
        info["startup"]["warmup_s"] = time.perf_counter() - t0
        log(f"warm-up query {info['startup']['warmup_s']:.2f} s")
        t_queries = time.perf_counter()
        for q, sql in spec["queries"]:
            rec: dict[str, Any] = {"query": q, "seconds": [], "error": None}
            sampler.window_start()
            res = None
            for _ in range(spec["repeat"]):
                t0 = time.perf_counter()
                try:
                    res = fed.sql(sql, **kwargs)
                except Exception as e:  # recorded, the run goes on
                    rec["error"] = bench._error_text(e)
                    res = None
                    break
                rec["seconds"].append(time.perf_counter() - t0)
            peaks = sampler.window_end()
            rec["python_rss"] = peaks["python"]
            rec["jvm_rss"] = peaks["driver"] + peaks["executors"] if spark is not None else None
            if res is not None:
                rec.update(
                    rows=int(res.trace.rows),
                    bytes=int(res.trace.bytes),
                    fragments=len(res.plan.fragments),
                )
                res.df.write_ipc(out_dir / f"q{q:02d}.arrow")
            info["queries"].append(rec)
            shown = "ERROR " + bench._shorten(rec["error"], 100) if rec["error"] else "done"
            median = statistics.median(rec["seconds"]) if rec["seconds"] else None
            log(f"Q{q:02d} {bench._fmt_seconds(median):>8}  {shown}")
            del res
        info["queries_s"] = time.perf_counter() - t_queries
        info["high_water"] = sampler.high_water()  # before the JVMs go
    except BaseException as e:
        info["fatal"] = bench._error_text(e)
        log("FAILED: " + info["fatal"])
    finally:
        if spark is not None:
            with contextlib.suppress(Exception):
                spark.stop()
        if cluster is not None:
            cluster.close()
        sampler.stop()
        info["total_s"] = time.perf_counter() - t_start
        info["peak"] = dict(sampler.peak)  # sampled: the sum of a group at one moment
    return info


def _child_main() -> int:
    """``python -m fedlab.bench_engines --child``: the spec on stdin, the result to
    ``<out>/result.json``."""

    def stop(signum: int, frame: Any) -> None:  # the parent's timeout: clean up, then go
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    spec = json.loads(sys.stdin.read())
    info = _child(spec)
    (Path(spec["out"]) / "result.json").write_text(json.dumps(bench._jsonable(info)))
    return 1 if "fatal" in info else 0


# ---------------------------------------------------------------------- the parent
def _run_child(
    engine: str,
    spec: dict[str, Any],
    out_dir: Path,
    *,
    quiet: bool,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Run one engine in a fresh process; its result dict (``fatal`` on failure)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({**spec, "engine": engine, "out": str(out_dir), "quiet": quiet})
    log_file = out_dir / "child.log"
    with open(log_file, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedlab.bench_engines", "--child"],
            stdin=subprocess.PIPE,
            stdout=sink,  # the JVM's chatter stays out of the report
            stderr=None if not quiet else sink,
            start_new_session=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(payload.encode())
        proc.stdin.close()
        try:
            proc.wait(CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the child stops its Spark and its cluster
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    result_file = out_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    tail = bench._shorten(log_file.read_text(errors="replace")[-600:], 400)
    return {
        "engine": engine,
        "queries": [],
        "startup": {},
        "fatal": f"the {engine} process exited with status {proc.returncode}: {tail}",
    }


def run_engines(
    cfg: bench.BenchConfig,
    engines: Sequence[str],
    targets: Sequence[bench.Target],
    monolith: bench.Target,
    queries: dict[int, str],
    *,
    log: Callable[[str], None] = print,
) -> tuple[pl.DataFrame, dict[str, dict[str, Any]]]:
    """The monolith's answers (here), then each engine in a process of its own; the
    results frame (:data:`ENGINE_RESULT_SCHEMA`) and, per engine, its start-up and peaks."""
    import connectorx as cx

    texts = {q: bench._clean_sql(queries[q]) for q in cfg.queries}
    records: list[dict[str, Any]] = []
    reference: dict[int, pl.DataFrame | None] = {}
    for q, sql in texts.items():

        def monolith_once(sql: str = sql) -> tuple[pl.DataFrame, int, int, int]:
            df = cx.read_sql(monolith.url, sql, return_type="polars")
            return df, df.height, int(df.estimated_size()), 1

        out = bench._measure(monolith_once, cfg.repeat)
        reference[q] = out.df
        records.append(_engine_record(q, bench.MONOLITH, out.seconds, out, None, None))
        log(f"Q{q:02d} monolith {bench._fmt_seconds(records[-1]['seconds']):>8}")
    spec = {
        "targets": [(t.name, t.url) for t in targets],
        "queries": list(texts.items()),
        "repeat": cfg.repeat,
        "strategy": cfg.strategies[0],
    }
    info: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fedlab-bench-engines-") as tmp:
        for engine in engines:
            log(f"--- {engine}: a fresh process")
            got = _run_child(engine, spec, Path(tmp) / engine, quiet=cfg.quiet, log=log)
            info[engine] = {k: v for k, v in got.items() if k != "queries"}
            by_q = {r["query"]: r for r in got["queries"]}
            for q, sql in texts.items():
                r = by_q.get(q)
                if r is None:
                    error = got.get("fatal") or "not run"
                    records.append(_engine_record(q, engine, [], None, None, None, error=error))
                    continue
                answer = Path(tmp) / engine / f"q{q:02d}.arrow"
                correct, detail = None, None
                if r["error"] is None and reference[q] is not None and answer.is_file():
                    try:
                        correct, why = bench.compare(pl.read_ipc(answer), reference[q], sql)
                        detail = why or None
                    except Exception as e:
                        correct, detail = False, f"comparison raised {bench._error_text(e)}"
                records.append(_engine_record(q, engine, r["seconds"], r, correct, detail))
    return pl.DataFrame(records, schema=ENGINE_RESULT_SCHEMA, orient="row"), info


def _engine_record(
    q: int,
    engine: str,
    seconds: Sequence[float],
    r: Any,
    correct: bool | None,
    detail: str | None,
    *,
    error: str | None = None,
) -> dict[str, Any]:
    def get(name: str) -> Any:
        if r is None:
            return None
        return r.get(name) if isinstance(r, dict) else getattr(r, name, None)

    error = error or get("error")
    ok = error is None and bool(seconds)
    rows = get("rows")
    nbytes = get("bytes") if isinstance(r, dict) else get("nbytes")  # a bench._Outcome
    return {
        "query": q,
        "engine": engine,
        "correct": correct if ok else None,
        "seconds": statistics.median(seconds) if ok else None,
        "rows": rows if ok else None,
        "bytes": nbytes if ok else None,
        "fragments": get("fragments") if ok else None,
        "python_rss": get("python_rss") if isinstance(r, dict) else None,
        "jvm_rss": get("jvm_rss") if isinstance(r, dict) else None,
        "error": error,
        "detail": detail,
    }


# ---------------------------------------------------------------------- summary math
def summarize_engines(
    results: pl.DataFrame, info: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Per engine: answers (correct / wrong / errors), time over the queries every engine
    answered correctly (total, median, geometric mean of the per-query ratio to the
    baseline: ``polars`` when it ran, else the first engine), peak memory, start-up.

    >>> rows = [
    ...     {"query": 1, "engine": "polars", "correct": True, "seconds": 1.0},
    ...     {"query": 1, "engine": "spark-local", "correct": True, "seconds": 4.0},
    ...     {"query": 2, "engine": "polars", "correct": True, "seconds": 2.0},
    ...     {"query": 2, "engine": "spark-local", "correct": False, "seconds": 1.0},
    ... ]
    >>> s = summarize_engines(pl.DataFrame(rows))
    >>> s["common"], s["engines"]["spark-local"]["vs_baseline_geomean"]
    ([1], 4.0)
    """
    info = info or {}
    frame = results.filter(pl.col("engine") != bench.MONOLITH)
    engines = list(dict.fromkeys(frame["engine"].to_list()))
    rows = frame.to_dicts()
    by = {(r["query"], r["engine"]): r for r in rows}
    queries = sorted({r["query"] for r in rows})
    common = [
        q
        for q in queries
        if all(
            (q, e) in by and by[(q, e)]["correct"] is True and by[(q, e)]["seconds"] is not None
            for e in engines
        )
    ]
    baseline = "polars" if "polars" in engines else (engines[0] if engines else None)
    out: dict[str, Any] = {"baseline": baseline, "common": common, "engines": {}}
    for e in engines:
        mine = [r for r in rows if r["engine"] == e]
        times = [by[(q, e)]["seconds"] for q in common]
        ratios = [
            by[(q, e)]["seconds"] / max(by[(q, baseline)]["seconds"], bench._TINY) for q in common
        ]
        base_total = sum(by[(q, baseline)]["seconds"] for q in common) if baseline else 0.0
        extra = info.get(e, {})
        startup = extra.get("startup", {})
        sampled, hw = extra.get("peak", {}), extra.get("high_water", {})
        # the larger of the sampled peak and the kernel's high-water marks (summed over
        # a group's processes)
        peak = {g: _max_known(sampled.get(g) or None, hw.get(g) or None) for g in RssSampler.GROUPS}
        out["engines"][e] = {
            "queries": len(mine),
            "correct": sum(1 for r in mine if r["correct"] is True),
            "wrong": sum(1 for r in mine if r["correct"] is False),
            "errors": sum(1 for r in mine if r.get("error")),
            "total_s": sum(times) if times else None,
            "median_s": statistics.median(times) if times else None,
            "vs_baseline_total": (sum(times) / max(base_total, bench._TINY)) if times else None,
            "vs_baseline_geomean": bench.geometric_mean(ratios),
            "cluster_s": startup.get("cluster_s"),
            "session_s": startup.get("session_s"),
            "warmup_s": startup.get("warmup_s"),
            "python_rss_ready": startup.get("python_rss_ready"),
            "python_rss_peak": _max_known(peak.get("python"), *(r.get("python_rss") for r in mine)),
            "driver_rss_peak": peak.get("driver") or None,
            "executors_rss_peak": peak.get("executors") or None,
            "daemons_rss_peak": peak.get("daemons") or None,
            "query_jvm_rss_peak": _max_known(*(r.get("jvm_rss") for r in mine)),
            "fatal": extra.get("fatal"),
            "wall_s": extra.get("total_s"),
        }
    return out


def _max_known(*values: Any) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


# ---------------------------------------------------------------------- rendering
def _mib(n: int | None) -> str:
    """Bytes as MiB, rounded.

    >>> _mib(512 * 2**20), _mib(None)
    ('512', '—')
    """
    return "—" if not n else f"{n / 2**20:,.0f}"


def _secs(s: float | None, digits: int = 2) -> str:
    return "—" if s is None or not math.isfinite(s) else f"{s:.{digits}f}"


def _time_cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r["error"] is not None:
        return "error"
    text = bench._fmt_seconds(r["seconds"])
    return text + " ✗" if r["correct"] is False else text


def _engine_names(results: pl.DataFrame) -> list[str]:
    names = list(dict.fromkeys(results["engine"].to_list()))
    return [n for n in names if n == bench.MONOLITH] + [n for n in names if n != bench.MONOLITH]


def _query_cells(results: pl.DataFrame) -> tuple[list[str], list[list[str]], set[int]]:
    """Per query: seconds per engine (monolith first), then peak RSS of the fedlab process
    and of the Spark JVMs per engine, in MiB."""
    names = _engine_names(results)
    engines = [n for n in names if n != bench.MONOLITH]
    by = {(r["query"], r["engine"]): r for r in results.to_dicts()}
    headers = [
        "query",
        *(f"{n} s" for n in names),
        *(f"{e} MiB py / JVM" if e.startswith("spark") else f"{e} MiB py" for e in engines),
    ]
    cells = []
    for q in sorted({q for q, _ in by}):
        row = [f"Q{q:02d}", *(_time_cell(by.get((q, n))) for n in names)]
        for e in engines:
            r = by.get((q, e))
            if r is None:
                row.append("")
            elif e.startswith("spark"):
                row.append(f"{_mib(r['python_rss'])} / {_mib(r['jvm_rss'])}")
            else:
                row.append(_mib(r["python_rss"]))
        cells.append(row)
    return headers, cells, set(range(1, len(headers)))


def _engine_cells(summary: dict[str, Any]) -> tuple[list[str], list[list[str]], set[int]]:
    """One row per engine: answers, start-up, query time, peak memory."""
    base = summary["baseline"]
    headers = [
        "engine",
        "correct",
        "start-up s (cluster + session)",
        "warm-up query s",
        f"queries s ({len(summary['common'])} common)",
        "median s",
        f"× {base} (total / geo-mean)",
        "fedlab process peak MiB",
        "driver JVM peak MiB",
        "executors peak MiB",
        "cluster daemons peak MiB",
    ]
    cells = []
    for e, s in summary["engines"].items():
        if s["session_s"] is None and s["cluster_s"] is None:
            startup = "—"
        elif s["cluster_s"] is not None:
            startup = f"{_secs((s['cluster_s'] or 0) + (s['session_s'] or 0), 1)} ({_secs(s['cluster_s'], 1)} + {_secs(s['session_s'], 1)})"
        else:
            startup = _secs(s["session_s"], 1)
        ratio = (
            "1"
            if e == base
            else f"{_secs(s['vs_baseline_total'])} / {_secs(s['vs_baseline_geomean'])}"
        )
        answers = f"{s['correct']}/{s['queries']}"
        if s["fatal"]:
            answers += " (failed)"
        cells.append(
            [
                e,
                answers,
                startup,
                _secs(s["warmup_s"]),
                _secs(s["total_s"]),
                _secs(s["median_s"], 3),
                ratio,
                _mib(s["python_rss_peak"]),
                _mib(s["driver_rss_peak"]),
                _mib(s["executors_rss_peak"]),
                _mib(s["daemons_rss_peak"]),
            ]
        )
    return headers, cells, set(range(1, len(headers)))


def _problems(results: pl.DataFrame) -> list[str]:
    out = []
    for r in results.to_dicts():
        if r["error"] is not None:
            out.append(f"Q{r['query']:02d} {r['engine']}: {bench._shorten(r['error'], 300)}")
        elif r["correct"] is False:
            out.append(
                f"Q{r['query']:02d} {r['engine']}: wrong answer: "
                + bench._shorten(r["detail"] or "", 300)
            )
    return out


def render_engines_table(results: pl.DataFrame, summary: dict[str, Any]) -> str:
    """The per-engine summary and the per-query table as aligned plain text."""
    parts = [bench._aligned(*_engine_cells(summary)), "", bench._aligned(*_query_cells(results))]
    problems = _problems(results)
    if problems:
        parts += ["", "failures:", *("  " + p for p in problems)]
    return "\n".join(parts)


def render_engines_markdown(
    results: pl.DataFrame, summary: dict[str, Any], meta: dict[str, Any]
) -> str:
    """A Markdown section for ``docs/benchmarks.md``: the run's setup, one row per engine,
    one row per query, failures."""
    out = [f"### Run: engines, TPC-H SF {meta.get('sf', '?'):g}, {meta.get('date', '?')}", ""]
    out += bench._md_meta(meta)
    spark = meta.get("spark") or {}
    if spark:
        out.append(
            "- Spark: " + "; ".join(f"{e}: {bench._md_escape(str(v))}" for e, v in spark.items())
        )
    out += [
        f"- strategy: `{meta.get('strategy', 'auto')}`; runs per query and engine: "
        f"{meta.get('repeat', 1)} (median reported); each engine in a fresh process",
        "",
        "#### Per engine",
        "",
        f"Times over the {len(summary['common'])} queries every engine answered correctly. "
        "Start-up and the warm-up query are not in the query times. Memory: peak RSS, "
        "the larger of a sample every 0.1 s and the kernel's high-water mark (`VmHWM`, "
        "summed over a group's processes).",
        "",
        *bench._md_table(*_engine_cells(summary)),
        "",
        "#### Per query",
        "",
        "Seconds (median; `✗`: wrong answer), then the peak RSS during the query of the "
        "fedlab process and, for Spark, of its JVMs (driver + executors), in MiB.",
        "",
        *bench._md_table(*_query_cells(results)),
    ]
    problems = _problems(results)
    if problems:
        out += ["", "#### Failures", "", *(f"- {bench._md_escape(p)}" for p in problems)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- entry point
def main_engines(
    cfg: bench.BenchConfig,
    engines: Sequence[str],
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    log: Callable[[str], None],
) -> int:
    """``fedlab bench --engines …``: 0 when every engine answered every query correctly."""
    started = dt.datetime.now(dt.UTC)
    load_start = bench._load()
    data, queries = bench.load_tpch(cfg.sf, cfg.data_dir, log=log)
    targets, monolith = bench.prepare_databases(cfg, data, log=log)
    del data
    results, info = run_engines(cfg, engines, targets, monolith, queries, log=log)
    summary = summarize_engines(results, info)
    meta = {
        **bench._meta(cfg, argv, started, load_start),
        "sf": cfg.sf,
        "queries": cfg.queries,
        "engines": list(engines),
        "strategy": cfg.strategies[0],
        "servers": bench._server_versions(targets),
        "placement": {k: list(v) for k, v in bench.PLACEMENT.items()},
        "spark": _spark_meta(info),
    }
    with contextlib.suppress(Exception):
        import pyspark

        meta["versions"]["pyspark"] = pyspark.__version__
    print(render_engines_table(results, summary))
    if args.markdown:
        bench.write_markdown(
            args.markdown,
            render_engines_markdown(results, summary, meta),
            begin=MARK_BEGIN_ENGINES.format(sf=cfg.sf),
            end=MARK_END_ENGINES.format(sf=cfg.sf),
        )
        log(f"wrote {args.markdown}")
    if args.json:
        payload = {
            "meta": meta,
            "summary": summary,
            "engines": info,
            "results": results.to_dicts(),
        }
        bench._write_json(args.json, payload)
        log(f"wrote {args.json}")
    good = all(
        r["error"] is None and r["correct"] is True
        for r in results.to_dicts()
        if r["engine"] != bench.MONOLITH
    )
    return 0 if good else 1


def _spark_meta(info: dict[str, dict[str, Any]]) -> dict[str, str]:
    out = {}
    for engine, got in info.items():
        s = got.get("spark")
        if not s:
            continue
        text = f"master `{s['master']}`, driver memory {s['driver_memory']}"
        if s.get("executor_memory"):
            text += (
                f", {STANDALONE['workers']} workers × {STANDALONE['cores']} core, executor "
                f"memory {s['executor_memory']}"
            )
        out[engine] = text
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        raise SystemExit(_child_main())
    raise SystemExit(bench.main(["--engines", ",".join(ENGINES), *sys.argv[1:]]))
