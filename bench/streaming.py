"""Peak memory of the local engine's residual: in-memory vs streaming vs spilled fragments.

``python bench/streaming.py [--rows 4000000] [--repeat 1] [--drop]``

The data (made once, kept between runs; ``--drop`` removes it):

==========  ==============================================  ==============================
source      where                                           table (rows)
==========  ==============================================  ==============================
``pg``      PostgreSQL database ``fedlab_bench_streaming``  orders (``--rows``): id,
                                                            user_id, amount NUMERIC(12,2),
                                                            status, note (~30 chars), created
``my``      MariaDB database ``fedlab_bench_streaming``     users (``--rows`` / 4): id,
                                                            country, segment
==========  ==============================================  ==============================

Each query joins orders and users across the two servers, so both fragments come back
whole (projected, filtered) and the join and whatever follows run locally:

* ``agg``: a join, GROUP BY country and status, ORDER BY (20 rows back);
* ``topk``: a join with the order's note, ORDER BY amount DESC LIMIT 20;
* ``wide``: a join returning about half of the orders (a large result).

Every (query, mode) runs in a fresh Python process (``--child``), which reports the
wall time of ``fed.sql``, the kernel's peak resident set (``VmHWM``), the peak of
anonymous memory sampled every 10 ms (``RssAnon``: the heap, without mapped files), the
resident set before the query (imports, attached sources) and what the trace says (engine,
spilled bytes). Modes:

* ``in-memory``: ``Federation(streaming=False)``: fragments in memory, in-memory engine;
* ``streaming``: ``Federation(streaming=True)``: fragments in memory, streaming engine;
* ``spill-after-read`` (a prototype, not in fedlab): the plan's fragments read by
  fedlab's fetch seam in parallel, each written to an Arrow IPC file once read and
  dropped, the residual run by the streaming engine over ``pl.scan_ipc`` of the files;
* ``spill-per-batch`` (a prototype, not in fedlab): each fragment read as a stream of
  Arrow batches (connectorx ``arrow_stream``), every batch typed and appended to an IPC
  file as it arrives (never the whole fragment in memory), then scanned the same way.

fedlab keeps only the first two: the prototypes did not lower the peak (see
docs/streaming.md for the numbers and the reason the per-batch reader is unsafe).

Answers are checked against the in-memory run's with :func:`fedlab.testing.same_result`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl

PG_SERVER = os.environ.get("FEDLAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MY_SERVER = os.environ.get("FEDLAB_TEST_MYSQL", "mysql://root@127.0.0.1:3306/")
DATABASE = "fedlab_bench_streaming"

QUERIES = {
    "agg": (
        "SELECT u.country, o.status, count(*) AS n, sum(o.amount) AS total "
        "FROM orders o JOIN users u ON u.id = o.user_id "
        "GROUP BY u.country, o.status ORDER BY u.country, o.status"
    ),
    "topk": (
        "SELECT o.id, o.note, u.country, o.amount FROM orders o "
        "JOIN users u ON u.id = o.user_id WHERE u.segment <> 'public' "
        "ORDER BY o.amount DESC, o.id LIMIT 20"
    ),
    "wide": (
        "SELECT o.id, o.status, u.country FROM orders o JOIN users u ON u.id = o.user_id "
        "WHERE o.amount >= 500"
    ),
}

MODES = {
    "in-memory": {"streaming": False},
    "streaming": {"streaming": True},
    "spill-after-read": {"streaming": True},
    "spill-per-batch": {"streaming": True},
}


def urls() -> tuple[str, str]:
    from fedlab.load import _server, _with_database

    return (
        _with_database(_server(PG_SERVER), DATABASE),
        _with_database(_server(MY_SERVER), DATABASE),
    )


def setup(rows: int) -> None:
    """Make the two tables unless they exist with ``rows`` orders."""
    from fedlab.load import create_database
    from fedlab.source import Source

    pg = create_database(PG_SERVER, DATABASE)
    my = create_database(MY_SERVER, DATABASE)
    con = Source.from_url("pg", pg).connect(read_only=False)
    cur = con.cursor()
    cur.execute("SELECT to_regclass('orders') IS NOT NULL")
    have = cur.fetchone()[0]
    if have:
        cur.execute("SELECT count(*) FROM orders")
        have = cur.fetchone()[0] == rows
    if not have:
        print(f"making {rows:,} orders in PostgreSQL and {rows // 4:,} users in MariaDB …")
        cur.execute("DROP TABLE IF EXISTS orders")
        cur.execute(
            f"""CREATE TABLE orders AS SELECT g AS id,
                (1 + (g * 7919) % {rows // 4})::int AS user_id,
                round(((g * 31) % 100000) / 100.0, 2)::numeric(12,2) AS amount,
                (ARRAY['paid','open','refunded','void'])[1 + g % 4] AS status,
                'order ' || g || ' for customer ' || (g % 9973) AS note,
                DATE '2020-01-01' + (g % 1500)::int AS created
            FROM generate_series(1::bigint, {rows}::bigint) g"""
        )
        cur.execute("ALTER TABLE orders ADD PRIMARY KEY (id)")
        cur.execute("ANALYZE orders")
    con.commit()
    con.close()
    con = Source.from_url("my", my).connect(read_only=False)
    cur = con.cursor()
    cur.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s "
        "AND table_name = 'users'",
        (DATABASE,),
    )
    exists = cur.fetchone()[0]
    if not have or not exists:
        cur.execute("DROP TABLE IF EXISTS users")
        cur.execute(
            "CREATE TABLE users (id INT PRIMARY KEY, country VARCHAR(2), segment VARCHAR(16))"
        )
        cur.execute(
            "INSERT INTO users SELECT seq, ELT(1 + seq % 5, 'US','UK','DE','FR','JP'), "
            f"ELT(1 + seq % 3, 'retail','business','public') FROM seq_1_to_{rows // 4}"
        )
    con.commit()
    con.close()


def drop() -> None:
    from fedlab.load import drop_database

    drop_database(PG_SERVER, DATABASE)
    drop_database(MY_SERVER, DATABASE)


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def spill_prototype(fed, sql: str, tmp: str, *, per_batch: bool) -> tuple[pl.DataFrame, int]:
    """The two spill prototypes measured against fedlab's engines: the answer and the
    bytes written to disk. Fragments are read in parallel threads, as fedlab does."""
    from concurrent.futures import ThreadPoolExecutor

    import connectorx as cx
    import pyarrow as pa

    from fedlab.execute.fetch import coerce, default_fetch, partition_queries

    plan = fed.explain(sql)

    def one(frag) -> tuple[str, str, int]:
        path = f"{tmp}/{frag.id}.arrow"
        source = fed.catalog.sources[frag.source]
        if not per_batch:
            res = default_fetch(frag, source)
            res.df.write_ipc(path)
            return frag.id, path, res.nbytes
        queries = partition_queries(frag)
        reader = cx.read_sql(
            source.connectorx_url,
            queries if len(queries) > 1 else queries[0],
            return_type="arrow_stream",
            batch_size=16_384,
        )
        nbytes = 0
        writer = None
        for batch in reader:
            typed = coerce(pl.from_arrow(batch), frag.columns).to_arrow()
            if writer is None:
                writer = pa.ipc.new_file(path, typed.schema)
            writer.write_table(typed)
            nbytes += batch.nbytes
        if writer is not None:
            writer.close()
        return frag.id, path, nbytes

    with ThreadPoolExecutor(len(plan.fragments)) as pool:
        done = list(pool.map(one, plan.fragments))
    frames = {fid: pl.scan_ipc(path) for fid, path, _ in done}
    df = pl.SQLContext(frames).execute(plan.residual_sql, eager=False).collect(engine="streaming")
    df = df[:, : len(plan.output_columns)]
    df = df.rename(dict(zip(df.columns, plan.output_columns, strict=True)))
    return df, sum(n for _, _, n in done)


def child(mode: str, query: str, out: str | None) -> None:
    """One measured run in this (fresh) process; the answer goes to ``out`` (Parquet)."""
    import fedlab as fl

    pg, my = urls()
    fed = fl.Federation(**MODES[mode])
    fed.attach("pg", pg)
    fed.attach("my", my)
    before = _status()
    peak_anon = [before["RssAnon"]]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak_anon[0] = max(peak_anon[0], _status()["RssAnon"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    if mode.startswith("spill"):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="fedlab-bench-spill-") as tmp:
            df, spilled = spill_prototype(
                fed, QUERIES[query], tmp, per_batch=mode == "spill-per-batch"
            )
        engine, moved = "streaming", spilled
    else:
        res = fed.sql(QUERIES[query])
        df, spilled = res.df, 0
        engine, moved = res.trace.residual_engine, res.trace.bytes
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    after = _status()
    if out:
        df.write_parquet(out)
    print(
        json.dumps(
            {
                "mode": mode,
                "query": query,
                "seconds": seconds,
                "rss_before": before["VmRSS"],
                "peak_rss": after["VmHWM"],
                "peak_anon": max(peak_anon[0], after["RssAnon"]),
                "moved_bytes": moved,
                "spilled_bytes": spilled,
                "engine": engine,
                "result_rows": df.height,
            }
        )
    )


def run(mode: str, query: str, out: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, query]
    if out:
        cmd += ["--out", out]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode}/{query} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4_000_000, help="orders (users: a quarter)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per (query, mode); best kept")
    ap.add_argument("--queries", default=",".join(QUERIES))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--drop", action="store_true", help="drop the benchmark databases")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "QUERY"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(*args.child, args.out)
        return 0
    if args.drop:
        drop()
        return 0
    import tempfile

    import fedlab as fl

    setup(args.rows)
    rows = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for query in args.queries.split(","):
            first: Path | None = None
            for mode in args.modes.split(","):
                out = Path(tmp) / f"{query}-{mode}.parquet"
                runs = [run(mode, query, str(out)) for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r["peak_rss"])
                best["seconds"] = min(r["seconds"] for r in runs)
                if first is None:
                    first, best["same"] = out, "reference"
                else:
                    same, why = fl.testing.same_result(
                        pl.read_parquet(out), pl.read_parquet(first), ordered=query != "wide"
                    )
                    best["same"] = "yes" if same else f"NO: {why}"
                    ok = ok and same
                rows.append(best)
                print(
                    f"{query:5} {mode:10} {best['seconds']:6.2f} s  peak RSS "
                    f"{mib(best['peak_rss'])} MiB  peak anon {mib(best['peak_anon'])} MiB  "
                    f"before {mib(best['rss_before'])} MiB  engine {best['engine']}  "
                    f"spilled {mib(best['spilled_bytes'])} MiB  same: {best['same']}",
                    flush=True,
                )
    print()
    print(
        "| query | mode | time s | peak RSS MiB | peak anon MiB | RSS before MiB "
        "| moved MiB | spilled MiB | engine | result rows | same answer |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|")
    for r in rows:
        print(
            f"| {r['query']} | {r['mode']} | {r['seconds']:.2f} | {mib(r['peak_rss'])} "
            f"| {mib(r['peak_anon'])} | {mib(r['rss_before'])} | {mib(r['moved_bytes'])} "
            f"| {mib(r['spilled_bytes'])} | {r['engine']} | {r['result_rows']:,} | {r['same']} |"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
