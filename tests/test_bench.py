"""``fedlab bench``: argument parsing, summary arithmetic, the DuckDB baseline on tiny
tables, and the sharded benchmark end to end on a few thousand rows (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from fedlab import bench
from fedlab.load import write_tables
from fedlab.sql.planner import STRATEGIES

from .conftest import unique_name


# ---------------------------------------------------------------------- arguments
def test_strategies_default_to_every_planner_strategy() -> None:
    assert bench.parse_strategies(None) == list(STRATEGIES)
    assert bench.parse_strategies("all") == list(STRATEGIES)
    assert bench.parse_strategies("auto, naive,auto") == ["auto", "naive"]
    with pytest.raises(ValueError, match="unknown strategy 'fastest'"):
        bench.parse_strategies("fastest")
    args = bench.build_parser().parse_args([])
    assert args.strategies is None  # resolved by main: STRATEGIES, or auto with --sharded
    assert not args.no_duckdb and not args.sharded


def test_sharded_options_parse() -> None:
    args = bench.build_parser().parse_args(
        ["--sharded", "--rows", "5000", "--shard-method", "range", "--plot", "x.png"]
    )
    assert (args.sharded, args.rows, args.shard_method, args.plot) == (
        True,
        5000,
        "range",
        Path("x.png"),
    )
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--rows", "0"])


def test_duckdb_attach_statements(tmp_path: Path) -> None:
    attach, schema = bench.duckdb_attach("m", "mysql://bob:s%40cret@db.example:3307/shop")
    assert attach == (
        "ATTACH 'host=db.example port=3307 user=bob password=s@cret database=shop' "
        'AS "m" (TYPE mysql, READ_ONLY)'
    )
    assert schema == "shop"
    path = tmp_path / "x.db"
    attach, schema = bench.duckdb_attach("s", f"sqlite:///{path}")
    assert attach == f"ATTACH '{path}' AS \"s\" (TYPE sqlite, READ_ONLY)" and schema == "main"


# ---------------------------------------------------------------------- summary
def _row(q: int, system: str, seconds: float, nbytes: int | None, **kw) -> dict:
    return {
        "query": q,
        "strategy": system,
        "correct": kw.get("correct", None if system == "monolith" else True),
        "seconds": seconds,
        "rows": 1,
        "bytes": nbytes,
        "fragments": 1,
        "error": None,
        "detail": kw.get("detail"),
    }


def test_summary_ratios_against_duckdb_and_targets() -> None:
    rows = []
    for q, (mono, duck, naive, auto) in {1: (1.0, 4.0, 8.0, 1.0), 2: (1.0, 4.0, 2.0, 2.0)}.items():
        rows += [
            _row(q, "monolith", mono, 10),
            _row(q, "duckdb", duck, None, detail="names differ" if q == 2 else None),
            _row(q, "naive", naive, 1000),
            _row(q, "auto", auto, 10),
        ]
    rows.append(_row(3, "monolith", 1.0, 10))
    rows.append(_row(3, "duckdb", 0.5, None, correct=False, detail="wrong"))
    rows.append(_row(3, "naive", 1.0, 10))
    rows.append(_row(3, "auto", 1.0, 10))
    s = bench.summarize(pl.DataFrame(rows, schema=bench.RESULT_SCHEMA, orient="row"))
    assert s["candidate"] == "auto" and s["strategies"] == ["duckdb", "naive", "auto"]
    assert s["correct"]["duckdb"] == 2 and s["wrong"]["duckdb"] == 1
    assert s["notes"]["duckdb"] == 1
    # Q3 is left out of the DuckDB ratio: DuckDB answered it wrongly
    assert s["vs_duckdb"]["auto"]["queries"] == 2
    assert s["vs_duckdb"]["auto"]["total_ratio"] == pytest.approx(3.0 / 8.0)
    assert s["vs_duckdb"]["auto"]["geomean_ratio"] == pytest.approx((0.25 * 0.5) ** 0.5)
    assert s["bytes_ratio"] == pytest.approx(2010 / 30)
    assert s["vs_monolith"]["auto"]["total_ratio"] == pytest.approx(4.0 / 3.0)
    targets = {t["target"]: t["met"] for t in s["targets"]}
    assert targets == {"≤ 0.5": True, "≥ 10": True, "≤ 2": True}
    text = bench.render_summary(s)
    assert "time auto / DuckDB" in text and "1 with a note" in text
    table = bench.render_table(pl.DataFrame(rows, schema=bench.RESULT_SCHEMA, orient="row"))
    assert "0.500 ✗" in table and "duckdb ok*" in table and "Q03 duckdb: wrong answer" in table


def test_duckdb_comparison_forgives_column_names_only() -> None:
    expected = pl.DataFrame({"k": [1, 2], "sum": [3.0, 4.0]})
    renamed = pl.DataFrame({"k": [1, 2], "sum(v)": [3.0, 4.0]})
    ok, note = bench.compare_duckdb(renamed, expected, "SELECT k, sum(v) FROM t GROUP BY k")
    assert ok and "'sum(v)' for 'sum'" in note
    wrong = pl.DataFrame({"k": [1, 2], "sum(v)": [3.0, 5.0]})
    assert not bench.compare_duckdb(wrong, expected, "SELECT k, sum(v) FROM t GROUP BY k")[0]
    assert not bench.compare(renamed, expected, "SELECT k, sum(v) FROM t GROUP BY k")[0]


# ---------------------------------------------------------------------- DuckDB baseline
def test_duckdb_attaches_sqlite_through_the_wheel_extension(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    write_tables(url, {"t": pl.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]})})
    duck = bench.DuckDBFederation([bench.Target("lite", url, ("t",))])
    try:
        got = duck.query("SELECT name FROM t WHERE id >= 2 ORDER BY id")
    finally:
        duck.close()
    assert got["name"].to_list() == ["b", "c"]


@pytest.mark.servers
def test_duckdb_attaches_postgres_and_mariadb(
    pg_database, mariadb_database, tmp_path: Path
) -> None:
    pg, my = pg_database("fedlab_bench_t"), mariadb_database("fedlab_bench_t")
    lite = f"sqlite:///{tmp_path / 'tiny.db'}"
    write_tables(pg, {"users": pl.DataFrame({"id": [1, 2], "country": ["US", "FR"]})})
    write_tables(
        my, {"orders": pl.DataFrame({"user_id": [1, 1, 2], "mode": ["MAIL", "AIR", "MAIL"]})}
    )
    write_tables(lite, {"rates": pl.DataFrame({"country": ["US", "FR"], "rate": [1.0, 2.0]})})
    targets = [
        bench.Target("pg", pg, ("users",)),
        bench.Target("my", my, ("orders",)),
        bench.Target("lite", lite, ("rates",)),
    ]
    duck = bench.DuckDBFederation(targets)
    try:
        got = duck.query(
            "SELECT u.id, sum(r.rate) AS s FROM users u JOIN orders o ON o.user_id = u.id "
            "JOIN rates r ON r.country = u.country GROUP BY u.id ORDER BY u.id"
        )
        # MariaDB's case-insensitive collation leaks through DuckDB's pushed filter: the
        # benchmark's probes report this; here it is only recorded, not required
        lower = duck.query("SELECT user_id FROM orders WHERE mode = 'mail'").height
    finally:
        duck.close()
    assert got.rows() == [(1, 2.0), (2, 2.0)]
    assert lower in (0, 2)


# ---------------------------------------------------------------------- sharded
def test_events_and_range_placement() -> None:
    df = bench.make_events(1001)
    assert df["id"].to_list() == list(range(1, 1002))
    assert df.equals(bench.make_events(1001))  # deterministic
    assert set(df["kind"].unique()) <= set(bench.EVENT_KINDS)
    parts = bench.place_shards(df, "range", list(bench.SHARD_LAYOUT))
    assert sum(p.height for p in parts.values()) == df.height
    bounds = bench.range_bounds(df.height, list(bench.SHARD_LAYOUT))
    for shard, part in parts.items():
        lo, hi = bounds[shard]
        assert part["id"].min() == lo and part["id"].max() == hi - 1
    queries = bench.sharded_queries(df.height, "range")
    point_sql = queries["point"][0].format(events="events")
    key = int(point_sql.rsplit("=", 1)[1])
    assert sum(1 for lo, hi in bounds.values() if lo <= key < hi) == 1
    assert queries["aggregate"][1] == len(bench.SHARD_LAYOUT)
    assert bench.max_in_flight([(0, 1), (0.5, 2), (0.6, 0.7), (3, 4)]) == 3


def test_sharded_section_is_added_after_the_tpch_one(tmp_path: Path) -> None:
    page = tmp_path / "b.md"
    page.write_text(f"# B\n\n{bench.MARK_BEGIN}\nold\n{bench.MARK_END}\n")
    kw = {"begin": bench.MARK_BEGIN_SHARDED, "end": bench.MARK_END_SHARDED}
    bench.write_markdown(page, "sharded 1\n", **kw)
    bench.write_markdown(page, "sharded 2\n", **kw)
    text = page.read_text()
    assert text.count("sharded") == 3  # twice in the markers, once the section
    assert "sharded 2" in text and text.index(bench.MARK_END) < text.index("sharded 2")


@pytest.mark.servers
def test_sharded_benchmark_end_to_end(
    pg_server_url, mariadb_server_url, tmp_path: Path, capsys
) -> None:
    prefix = unique_name("fedlab_bench_t")
    common = ["--db-prefix", prefix, "--cache-dir", str(tmp_path), "--quiet"]
    common += ["--server-pg", pg_server_url, "--server-mysql", mariadb_server_url]
    try:
        bench.main(
            [
                "--sharded",
                "--rows",
                "4000",
                "--json",
                str(tmp_path / "r.json"),
                "--plot",
                str(tmp_path / "w.png"),
                *common,
            ]
        )
    finally:
        assert bench.main(["--drop", *common]) == 0
    out = capsys.readouterr().out
    assert "correct (union)" in out
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    union = [r for r in results if r["system"] == "union"]
    assert union and all(r["correct"] for r in union)
    assert all(r["shards_read"] == 4 for r in union)
    shard = {r["query"]: r for r in results if r["system"] == "shard"}
    if all(r["error"] is None for r in shard.values()):  # fed.shard is implemented
        assert all(r["correct"] for r in shard.values())
        assert shard["point"]["shards_read"] == 1
        assert shard["aggregate"]["shards_read"] == 4
    assert (tmp_path / "w.png").stat().st_size > 0
