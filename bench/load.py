"""Concurrent load: N threads run federated queries for T seconds against real servers.

``python bench/load.py --threads 8 --seconds 20 [--markdown docs/benchmarks.md]``

The script builds its own small federation, with unique database names, and drops it
afterwards (``--keep`` keeps it):

==========  =============================================  ==========================
source      where                                          table (rows)
==========  =============================================  ==========================
``pg``      PostgreSQL database ``fedlab_load_<pid>_<id>``  customers (``--customers``)
``my``      MariaDB database ``fedlab_load_<pid>_<id>``     orders (``--orders``)
``lite``    SQLite file in a temporary directory           products (200)
==========  =============================================  ==========================

All threads share one :class:`fedlab.Federation` (as a notebook server or a web app
would) and loop over a fixed mix of queries: point lookups on each source, a cross-source
join on one customer, a three-source join with aggregation, an aggregate on one source.
Each answer is checked: point lookups return the expected number of rows, the parameter-free
queries equal the answer of a first, single-threaded run (the equality rule,
:func:`fedlab.testing.same_result`). Latency is measured around ``fed.sql``.

A sampler thread counts the server sessions open on the benchmark's databases
(PostgreSQL ``pg_stat_activity``, MariaDB ``information_schema.processlist``) every 50 ms
through its own connection to the servers' system database (not counted): the baseline
before the run, the peak during it, and the count after it (allowed ``--settle`` seconds
to drop back). The process's thread count is recorded the same way. The exit status is 0
when no query failed or answered wrongly and both servers are back to their baseline, 1
otherwise.

The pure parts (:func:`summarize`, :func:`render_markdown`, :func:`replace_block`) need
no database.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

import fedlab as fl
from fedlab.load import create_database, drop_database, write_tables
from fedlab.source import Source
from fedlab.testing import same_result

PG_SERVER = os.environ.get("FEDLAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MY_SERVER = os.environ.get("FEDLAB_TEST_MYSQL", "mysql://root@127.0.0.1:3306/")

REGIONS = ("EU", "US", "APAC", "LATAM")
STATUSES = ("paid", "shipped", "pending", "cancelled")
N_PRODUCTS = 200


@dataclass(frozen=True)
class LoadQuery:
    """One kind of query in the mix: its SQL, a weight, how to draw its parameters and
    how many rows a correct answer has (None: compare with the reference answer)."""

    name: str
    sql: str
    weight: int
    params: Callable[[random.Random, int, int], dict[str, Any]] | None = None
    rows: int | None = None


def query_mix() -> list[LoadQuery]:
    """The queries each thread draws from (weights: point lookups dominate, as in an app)."""
    return [
        LoadQuery(
            "point_pg",
            "SELECT id, name, region FROM customers WHERE id = :id",
            4,
            lambda r, nc, no: {"id": r.randint(1, nc)},
            1,
        ),
        LoadQuery(
            "point_my",
            "SELECT id, customer_id, amount, status FROM orders WHERE id = :id",
            4,
            lambda r, nc, no: {"id": r.randint(1, no)},
            1,
        ),
        LoadQuery(
            "point_sqlite",
            "SELECT id, title, price FROM products WHERE id = :id",
            2,
            lambda r, nc, no: {"id": r.randint(1, N_PRODUCTS)},
            1,
        ),
        LoadQuery(
            "join_pg_my",
            "SELECT c.name, o.id, o.amount FROM customers c JOIN orders o "
            "ON c.id = o.customer_id WHERE c.id = :id ORDER BY o.id",
            3,
            lambda r, nc, no: {"id": r.randint(1, nc)},
            None,
        ),
        LoadQuery(
            "join3_agg",
            "SELECT c.region, count(*) AS n, sum(o.amount) AS total FROM customers c "
            "JOIN orders o ON c.id = o.customer_id JOIN products p ON p.id = o.product_id "
            "WHERE p.price > 90 GROUP BY c.region ORDER BY c.region",
            1,
            None,
            None,
        ),
        LoadQuery(
            "agg_my",
            "SELECT status, count(*) AS n, sum(amount) AS total FROM orders "
            "GROUP BY status ORDER BY status",
            1,
            None,
            None,
        ),
    ]


# ---------------------------------------------------------------------- data
def frames(n_customers: int, n_orders: int, seed: int = 5) -> dict[str, pl.DataFrame]:
    """The three tables, generated deterministically."""
    rng = random.Random(seed)
    customers = pl.DataFrame(
        {
            "id": range(1, n_customers + 1),
            "name": [f"customer {i}" for i in range(1, n_customers + 1)],
            "region": [rng.choice(REGIONS) for _ in range(n_customers)],
        },
        schema={"id": pl.Int64, "name": pl.String, "region": pl.String},
    )
    orders = pl.DataFrame(
        {
            "id": range(1, n_orders + 1),
            "customer_id": [rng.randint(1, n_customers) for _ in range(n_orders)],
            "product_id": [rng.randint(1, N_PRODUCTS) for _ in range(n_orders)],
            "amount": [rng.randint(100, 100_000) / 100 for _ in range(n_orders)],
            "status": [rng.choice(STATUSES) for _ in range(n_orders)],
        },
        schema={
            "id": pl.Int64,
            "customer_id": pl.Int64,
            "product_id": pl.Int64,
            "amount": pl.Float64,
            "status": pl.String,
        },
    )
    products = pl.DataFrame(
        {
            "id": range(1, N_PRODUCTS + 1),
            "title": [f"product {i}" for i in range(1, N_PRODUCTS + 1)],
            "price": [rng.randint(100, 10_000) / 100 for _ in range(N_PRODUCTS)],
        },
        schema={"id": pl.Int64, "title": pl.String, "price": pl.Float64},
    )
    return {"customers": customers, "orders": orders, "products": products}


@dataclass
class Setup:
    """Where the benchmark's data lives (made by :func:`setup`, removed by :func:`teardown`)."""

    pg_server: str
    my_server: str
    db_name: str
    pg_url: str
    my_url: str
    sqlite_url: str
    tmpdir: str
    n_customers: int
    n_orders: int


def setup(
    pg_server: str = PG_SERVER,
    my_server: str = MY_SERVER,
    *,
    n_customers: int = 2000,
    n_orders: int = 20_000,
    prefix: str = "fedlab_load",
) -> Setup:
    """Create the two server databases (unique names) and the SQLite file; load the data."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    tmpdir = tempfile.mkdtemp(prefix="fedlab-load-")
    data = frames(n_customers, n_orders)
    s = Setup(
        pg_server,
        my_server,
        name,
        "",
        "",
        f"sqlite:///{tmpdir}/products.db",
        tmpdir,
        n_customers,
        n_orders,
    )
    try:
        s.pg_url = create_database(pg_server, name)
        s.my_url = create_database(my_server, name)
        write_tables(s.pg_url, {"customers": data["customers"]}, primary_keys={"customers": ["id"]})
        write_tables(s.my_url, {"orders": data["orders"]}, primary_keys={"orders": ["id"]})
        write_tables(
            s.sqlite_url, {"products": data["products"]}, primary_keys={"products": ["id"]}
        )
        con = Source.from_url("my", s.my_url).connect(read_only=False)
        try:
            cur = con.cursor()
            cur.execute("CREATE INDEX orders_customer ON orders (customer_id)")
            cur.execute("ANALYZE TABLE orders")
            cur.fetchall()
            con.commit()
        finally:
            con.close()
        con = Source.from_url("pg", s.pg_url).connect(read_only=False)
        try:
            con.autocommit = True
            con.execute("ANALYZE customers")
        finally:
            con.close()
    except BaseException:
        teardown(s)
        raise
    return s


def teardown(s: Setup) -> None:
    """Drop the databases and remove the SQLite file (errors are reported, not raised)."""
    for server, url in ((s.pg_server, s.pg_url), (s.my_server, s.my_url)):
        if url:
            try:
                drop_database(server, s.db_name)
            except Exception as e:  # leave the other one a chance
                print(f"warning: could not drop {s.db_name}: {e}", file=sys.stderr)
    with contextlib.suppress(OSError):
        Path(s.tmpdir, "products.db").unlink(missing_ok=True)
        Path(s.tmpdir).rmdir()


def federation(s: Setup, **kwargs: Any) -> fl.Federation:
    fed = fl.Federation(**kwargs)
    fed.attach("pg", s.pg_url)
    fed.attach("my", s.my_url)
    fed.attach("lite", s.sqlite_url)
    return fed


# ---------------------------------------------------------------------- sessions
class SessionCounter:
    """Counts the sessions open on one database of each server, through its own
    connections to the servers' system databases (which are therefore not counted)."""

    def __init__(self, s: Setup) -> None:
        import psycopg
        import pymysql

        pg = Source.from_url("pgadmin", s.pg_server)
        my = Source.from_url("myadmin", s.my_server)
        self.db = s.db_name
        self._pg = psycopg.connect(
            host=pg.host,
            port=pg.port,
            user=pg.user or "postgres",
            password=pg._password or None,
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
            application_name="fedlab-load-sampler",
        )
        self._my = pymysql.connect(
            host=my.host,
            port=my.port,
            user=my.user or "root",
            password=my._password or "",
            autocommit=True,
            connect_timeout=5,
        )
        self._lock = threading.Lock()

    def count(self) -> tuple[int, int]:
        """(PostgreSQL sessions, MariaDB sessions) on the benchmark's databases now."""
        with self._lock:
            pg = self._pg.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.db,)
            ).fetchone()[0]
            cur = self._my.cursor()
            cur.execute(
                "SELECT count(*) FROM information_schema.processlist WHERE db = %s", (self.db,)
            )
            my = cur.fetchone()[0]
            cur.close()
        return int(pg), int(my)

    def settle(self, baseline: tuple[int, int], seconds: float) -> tuple[tuple[int, int], float]:
        """Wait up to ``seconds`` for the counts to fall back to ``baseline``; return the
        last counts and how long that took."""
        t0 = time.monotonic()
        now = self.count()
        while (now[0] > baseline[0] or now[1] > baseline[1]) and time.monotonic() - t0 < seconds:
            time.sleep(0.05)
            now = self.count()
        return now, time.monotonic() - t0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pg.close()
        with contextlib.suppress(Exception):
            self._my.close()


class Sampler(threading.Thread):
    """Samples the session counts and the process's thread count every ``interval``."""

    def __init__(self, counter: SessionCounter, interval: float = 0.05) -> None:
        super().__init__(name="fedlab-load-sampler", daemon=True)
        self.counter = counter
        self.interval = interval
        self.stop = threading.Event()
        self.peak_pg = self.peak_my = self.peak_threads = 0
        self.samples = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                pg, my = self.counter.count()
            except Exception as e:  # a sampler failure must not end the benchmark
                self.errors.append(f"{type(e).__name__}: {e}")
                break
            self.peak_pg = max(self.peak_pg, pg)
            self.peak_my = max(self.peak_my, my)
            self.peak_threads = max(self.peak_threads, threading.active_count())
            self.samples += 1
            self.stop.wait(self.interval)


# ---------------------------------------------------------------------- the run
@dataclass
class Sample:
    query: str
    start: float  # seconds since the run started
    latency: float
    ok: bool
    error: str = ""


@dataclass
class LoadResult:
    """Everything one run measured (``asdict`` gives the JSON)."""

    threads: int
    seconds: float
    elapsed: float
    command: str
    started: str
    host: str
    cpus: int | None
    loadavg_before: tuple[float, float, float] | None
    loadavg_after: tuple[float, float, float] | None
    sessions_before: dict[str, int]
    sessions_peak: dict[str, int]
    sessions_after: dict[str, int]
    settle_s: float
    threads_before: int
    threads_peak: int
    threads_after: int
    samples: list[Sample] = field(default_factory=list, repr=False)
    sampler_errors: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Sample]:
        return [s for s in self.samples if not s.ok]

    @property
    def leaked(self) -> bool:
        return any(self.sessions_after[k] > self.sessions_before[k] for k in self.sessions_before)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.leaked and not self.sampler_errors


def _worker(
    fed: fl.Federation,
    mix: Sequence[LoadQuery],
    reference: dict[str, pl.DataFrame],
    s: Setup,
    seed: int,
    seconds: float,
    start: threading.Barrier,
    out: list[Sample],
    timeout: float,
) -> None:
    rng = random.Random(seed)
    weights = [q.weight for q in mix]
    start.wait()
    t0 = time.monotonic()
    deadline = t0 + seconds
    while time.monotonic() < deadline:
        q = rng.choices(mix, weights)[0]
        params = q.params(rng, s.n_customers, s.n_orders) if q.params else None
        t = time.monotonic()
        try:
            res = fed.sql(q.sql, params, timeout=timeout)
            latency = time.monotonic() - t
            error = ""
            if q.rows is not None and res.df.height != q.rows:
                error = f"wrong answer: {res.df.height} rows, expected {q.rows}"
            elif q.name in reference:
                same, why = same_result(res.df, reference[q.name], ordered=True)
                error = "" if same else f"wrong answer: {why}"
            elif q.name == "join_pg_my" and res.df.height and res.df["name"].n_unique() != 1:
                error = "wrong answer: rows of several customers"
        except Exception as e:  # recorded: the run goes on
            latency = time.monotonic() - t
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        out.append(Sample(q.name, t - t0, latency, not error, error))


def run(
    s: Setup,
    *,
    threads: int = 8,
    seconds: float = 20.0,
    timeout: float = 30.0,
    settle: float = 5.0,
    seed: int = 1,
    command: str = "",
    max_workers: int = 8,
) -> LoadResult:
    """Run the load against an existing :class:`Setup`; return what was measured."""
    mix = query_mix()
    fed = federation(s, max_workers=max_workers)
    # reference answers for the parameter-free queries, single-threaded (also a warm-up)
    reference = {q.name: fed.sql(q.sql).df for q in mix if q.params is None}
    for q in mix:
        if q.params is not None:
            fed.sql(q.sql, q.params(random.Random(0), s.n_customers, s.n_orders))
    counter = SessionCounter(s)
    try:
        before, _ = counter.settle((0, 0), settle)  # let warm-up sessions close
        threads_before = threading.active_count()
        load_before = _loadavg()
        sampler = Sampler(counter)
        sampler.start()
        barrier = threading.Barrier(threads + 1)
        per_thread: list[list[Sample]] = [[] for _ in range(threads)]
        workers = [
            threading.Thread(
                target=_worker,
                args=(
                    fed,
                    mix,
                    reference,
                    s,
                    seed * 1000 + i,
                    seconds,
                    barrier,
                    per_thread[i],
                    timeout,
                ),
                name=f"fedlab-load-{i}",
                daemon=True,
            )
            for i in range(threads)
        ]
        for w in workers:
            w.start()
        barrier.wait()
        t0 = time.monotonic()
        for w in workers:
            w.join(seconds + timeout + 30)
        elapsed = time.monotonic() - t0
        stuck = [w.name for w in workers if w.is_alive()]
        after, settle_s = counter.settle(before, settle)
        sampler.stop.set()
        sampler.join(5)
        threads_after = threading.active_count() - (1 if sampler.is_alive() else 0)
        load_after = _loadavg()
    finally:
        counter.close()
    samples = sorted((x for chunk in per_thread for x in chunk), key=lambda x: x.start)
    errors = list(sampler.errors) + [f"worker thread still running: {n}" for n in stuck]
    return LoadResult(
        threads=threads,
        seconds=seconds,
        elapsed=elapsed,
        command=command,
        started=dt.datetime.now().isoformat(timespec="seconds"),
        host=platform.node(),
        cpus=os.cpu_count(),
        loadavg_before=load_before,
        loadavg_after=load_after,
        sessions_before={"postgresql": before[0], "mariadb": before[1]},
        sessions_peak={"postgresql": sampler.peak_pg, "mariadb": sampler.peak_my},
        sessions_after={"postgresql": after[0], "mariadb": after[1]},
        settle_s=settle_s,
        threads_before=threads_before,
        threads_peak=sampler.peak_threads,
        threads_after=threads_after,
        samples=samples,
        sampler_errors=errors,
        rows={"customers": s.n_customers, "orders": s.n_orders, "products": N_PRODUCTS},
    )


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


# ---------------------------------------------------------------------- report
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; NaN when empty.

    >>> percentile([1, 2, 3, 4], 50), percentile([1, 2, 3, 4], 99), percentile([5], 1)
    (2, 4, 5)
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(k) - 1]


def summarize(samples: Sequence[Sample], elapsed: float) -> pl.DataFrame:
    """One row per query kind, then ``all``: count, queries/s, p50/p99/max latency (ms), errors.

    >>> summarize([Sample("a", 0, 0.010, True), Sample("a", 0, 0.030, False, "x")], 2.0).row(1)
    ('all', 2, 1.0, 10.0, 30.0, 30.0, 1)
    """
    groups: dict[str, list[Sample]] = {}
    for x in samples:
        groups.setdefault(x.query, []).append(x)
    groups = dict(sorted(groups.items()))
    groups["all"] = list(samples)
    rows = []
    for name, xs in groups.items():
        lat = [x.latency * 1000 for x in xs]
        rows.append(
            {
                "query": name,
                "count": len(xs),
                "qps": round(len(xs) / elapsed, 1) if elapsed > 0 else float("nan"),
                "p50_ms": round(percentile(lat, 50), 1),
                "p99_ms": round(percentile(lat, 99), 1),
                "max_ms": round(max(lat), 1) if lat else float("nan"),
                "errors": sum(not x.ok for x in xs),
            }
        )
    return pl.DataFrame(rows)


def _fmt_load(load: tuple[float, float, float] | None) -> str:
    return " / ".join(f"{x:.2f}" for x in load) if load else "n/a"


def render_text(r: LoadResult) -> str:
    table = summarize(r.samples, r.elapsed)
    lines = [
        f"{r.threads} threads for {r.seconds:g} s ({r.elapsed:.1f} s measured), "
        f"{len(r.samples)} queries, {len(r.errors)} errors",
        f"load average (1/5/15 min) before {_fmt_load(r.loadavg_before)}, "
        f"after {_fmt_load(r.loadavg_after)}; {r.cpus} CPUs",
        str(table),
    ]
    for kind in ("postgresql", "mariadb"):
        lines.append(
            f"{kind} sessions on the benchmark database: before {r.sessions_before[kind]}, "
            f"peak {r.sessions_peak[kind]}, after {r.sessions_after[kind]}"
        )
    lines.append(
        f"process threads: before {r.threads_before}, peak {r.threads_peak}, "
        f"after {r.threads_after}; back to baseline in {r.settle_s:.2f} s"
    )
    for msg, n in Counter(x.error for x in r.errors).most_common(10):
        lines.append(f"error x{n}: {msg}")
    lines.extend(f"problem: {e}" for e in r.sampler_errors)
    lines.append("OK" if r.ok else "FAILED")
    return "\n".join(lines)


def mark_begin(threads: int) -> str:
    return f"<!-- bench/load.py --threads {threads}: begin generated results -->"


def mark_end(threads: int) -> str:
    return f"<!-- bench/load.py --threads {threads}: end generated results -->"


def render_markdown(r: LoadResult) -> str:
    """The generated block for ``docs/benchmarks.md`` (between its begin/end markers)."""
    table = summarize(r.samples, r.elapsed)
    out = [
        mark_begin(r.threads),
        "",
        f"#### {r.threads} threads, {r.seconds:g} s",
        "",
        f"- command: `{r.command}`",
        f"- run: {r.started} on `{r.host}`, {r.cpus} CPUs; load average (1/5/15 min) "
        f"{_fmt_load(r.loadavg_before)} before, {_fmt_load(r.loadavg_after)} after",
        f"- data: customers {r.rows.get('customers', 0):,} rows (PostgreSQL), orders "
        f"{r.rows.get('orders', 0):,} (MariaDB), products {r.rows.get('products', 0):,} (SQLite)",
        f"- {len(r.samples):,} queries in {r.elapsed:.1f} s: "
        f"**{len(r.samples) / r.elapsed:.1f} queries/s**, {len(r.errors)} errors"
        + (" (every answer checked)" if not r.errors else ""),
        "",
        "| query | count | queries/s | p50 ms | p99 ms | max ms | errors |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in table.iter_rows(named=True):
        name = f"**{row['query']}**" if row["query"] == "all" else row["query"]
        out.append(
            f"| {name} | {row['count']:,} | {row['qps']} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {row['max_ms']} | {row['errors']} |"
        )
    out += [
        "",
        "| server sessions on the benchmark database | before | peak during | after |",
        "|---|--:|--:|--:|",
    ]
    for kind, label in (
        ("postgresql", "PostgreSQL `pg_stat_activity`"),
        ("mariadb", "MariaDB `information_schema.processlist`"),
    ):
        out.append(
            f"| {label} | {r.sessions_before[kind]} | {r.sessions_peak[kind]} | "
            f"{r.sessions_after[kind]} |"
        )
    out.append(f"| process threads | {r.threads_before} | {r.threads_peak} | {r.threads_after} |")
    out.append("")
    verdict = "back to the baseline" if not r.leaked else "**not** back to the baseline"
    out.append(f"Sessions {verdict} {r.settle_s:.2f} s after the last query.")
    for msg, n in Counter(x.error for x in r.errors).most_common(5):
        out.append(f"- error ×{n}: `{msg}`")
    out += ["", mark_end(r.threads)]
    return "\n".join(out)


def replace_block(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with the part from ``begin`` to ``end`` replaced by ``block`` (which
    carries both markers), or ``block`` appended when the markers are absent.

    >>> replace_block("a\\n<b>\\nold\\n<e>\\nz\\n", "<b>", "<e>", "<b>\\nnew\\n<e>")
    'a\\n<b>\\nnew\\n<e>\\nz\\n'
    >>> replace_block("a\\n", "<b>", "<e>", "<b>\\nnew\\n<e>")
    'a\\n\\n<b>\\nnew\\n<e>\\n'
    """
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j > i:
        return text[:i] + block + text[j + len(end) :]
    return text.rstrip("\n") + "\n\n" + block + "\n"


# ---------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/load.py",
        description="N threads run federated queries (PostgreSQL + MariaDB + SQLite) for "
        "T seconds; report throughput, latency, errors and server sessions before/after.",
    )
    p.add_argument("--threads", type=int, default=8, help="concurrent threads (default 8)")
    p.add_argument("--seconds", type=float, default=20.0, help="duration (default 20)")
    p.add_argument("--customers", type=int, default=2000, help="rows in customers")
    p.add_argument("--orders", type=int, default=20_000, help="rows in orders")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline per query, s")
    p.add_argument(
        "--max-workers", type=int, default=8, help="Federation(max_workers=): fragment threads"
    )
    p.add_argument("--settle", type=float, default=5.0, help="seconds allowed to close sessions")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server-pg", default=PG_SERVER, help="PostgreSQL server URL")
    p.add_argument("--server-mysql", default=MY_SERVER, help="MariaDB server URL")
    p.add_argument("--markdown", type=Path, help="write the results block into this file")
    p.add_argument("--json", type=Path, help="write every measurement as JSON")
    p.add_argument("--keep", action="store_true", help="keep the databases (prints their URLs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads < 1 or args.seconds <= 0:
        print("--threads must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2
    command = "python bench/load.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    s = setup(args.server_pg, args.server_mysql, n_customers=args.customers, n_orders=args.orders)
    try:
        r = run(
            s,
            threads=args.threads,
            seconds=args.seconds,
            timeout=args.timeout,
            settle=args.settle,
            seed=args.seed,
            command=command,
            max_workers=args.max_workers,
        )
    finally:
        if args.keep:
            print(f"kept: {s.pg_url} {s.my_url} {s.sqlite_url}", file=sys.stderr)
        else:
            teardown(s)
    print(render_text(r))
    if args.json:
        data = asdict(r)
        data["summary"] = summarize(r.samples, r.elapsed).to_dicts()
        args.json.write_text(json.dumps(data, indent=1, default=str))
    if args.markdown:
        text = args.markdown.read_text() if args.markdown.exists() else ""
        block = render_markdown(r)
        new = replace_block(text, mark_begin(r.threads), mark_end(r.threads), block)
        args.markdown.write_text(new)
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
