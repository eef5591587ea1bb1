"""The fragment cache: hits and misses, TTL, size limit, invalidation, threads, real sources."""

from __future__ import annotations

import threading

import matplotlib
import polars as pl
import pytest
from sqlglot import exp

import fedlab as fl
from fedlab.cache import FragmentCache, cache_key
from fedlab.errors import ConfigError
from fedlab.execute.fetch import FetchResult, default_fetch
from fedlab.load import write_tables
from fedlab.source import Source
from fedlab.sql.plan import Fragment

matplotlib.use("Agg")

INT = exp.DataType.build("BIGINT")
CRM = Source.from_url("crm", "postgresql://u@127.0.0.1:5432/crm")
SALES = Source.from_url("sales", "mysql://u@127.0.0.1:3306/sales")


def frag(sql: str = "SELECT 1", source: str = "crm", fid: str = "f1") -> Fragment:
    return Fragment(fid, source, "postgresql", sql, [("x", INT)])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingFetch:
    """A fetch seam that makes ``rows`` rows and counts its calls (no database involved)."""

    def __init__(self, rows: int = 10) -> None:
        self.rows = rows
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, fragment: Fragment, source: Source, deadline: float | None = None):
        with self.lock:
            self.calls.append(fragment.sql)
        df = pl.DataFrame({"x": list(range(self.rows))}, schema={"x": pl.Int64})
        return FetchResult(df, df.to_arrow().nbytes, "fake")


# ---------------------------------------------------------------------- the seam
def test_off_by_default_wrap_is_the_fetch_itself() -> None:
    cache = FragmentCache()
    fetch = CountingFetch()
    assert cache.wrap(fetch) is fetch
    assert fl.Federation().cache.stats()["enabled"] is False


def test_hit_after_miss_and_the_source_is_not_asked_again() -> None:
    cache = FragmentCache().enable(ttl=60, max_bytes=10_000)
    fetch = CountingFetch(rows=10)
    cached = cache.wrap(fetch)
    first = cached(frag(), CRM, None)
    second = cached(frag(), CRM, None)
    assert fetch.calls == ["SELECT 1"]  # the second answer did not touch the source
    assert (first.cache_hit, first.reader) == (False, "fake")
    assert (second.cache_hit, second.reader) == (True, "cache")
    assert second.nbytes == first.nbytes == 80  # the bytes that did not move
    assert second.df.equals(first.df)
    s = cache.stats()
    assert (s["hits"], s["misses"], s["entries"], s["bytes"]) == (1, 1, 1, 80)
    assert s["hit_rate"] == 0.5
    # a hit hands out its own frame: changing it does not change the cache
    second.df.insert_column(1, pl.Series("y", list(range(10))))
    assert cached(frag(), CRM, None).df.columns == ["x"]


def test_key_is_source_identity_sql_and_declared_types() -> None:
    other_db = Source.from_url("crm", "postgresql://u@127.0.0.1:5432/crm_v2")  # same name
    retyped = Fragment("f1", "crm", "postgresql", "SELECT 1", [("x", exp.DataType.build("TEXT"))])
    keys = {
        cache_key(frag(), CRM),
        cache_key(frag(), other_db),
        cache_key(frag("SELECT 2"), CRM),
        cache_key(frag("SELECT  1"), CRM),  # whitespace can be inside a literal: no folding
        cache_key(retyped, CRM),
    }
    assert len(keys) == 5
    assert cache_key(frag("SELECT 1\n", fid="f9"), CRM) == cache_key(frag(), CRM)
    # the key holds the redacted URL, never a password
    secret = Source.from_url("crm", "postgresql://u:s3cret@127.0.0.1:5432/crm")
    assert "s3cret" not in repr(cache_key(frag(), secret))


def test_ttl_expiry_with_an_injected_clock() -> None:
    clock = FakeClock()
    cache = FragmentCache(clock=clock).enable(ttl=10, max_bytes=10_000)
    fetch = CountingFetch()
    cached = cache.wrap(fetch)
    cached(frag(), CRM, None)
    clock.now += 9.9
    assert cached(frag(), CRM, None).cache_hit
    assert cache.age(frag(), CRM) == pytest.approx(9.9)
    clock.now += 0.2  # 10.1 s old: expired
    assert cache.lookup(frag(), CRM) is None
    stale = cache.lookup(frag(), CRM, allow_expired=True)  # still there for a stale fallback
    assert stale is not None and stale.df.height == 10 and stale.fetched_at > 0
    assert not cached(frag(), CRM, None).cache_hit  # a miss, fetched again
    assert len(fetch.calls) == 2
    assert cache.stats()["expirations"] == 1
    assert cache.age(frag(), CRM) == pytest.approx(0.0)


def test_ttl_with_the_real_clock() -> None:
    cache = FragmentCache().enable(ttl=0.05, max_bytes=10_000)
    fetch = CountingFetch()
    cached = cache.wrap(fetch)
    cached(frag(), CRM, None)
    assert cached(frag(), CRM, None).cache_hit
    threading.Event().wait(0.08)
    assert not cached(frag(), CRM, None).cache_hit


def test_size_limit_evicts_least_recently_used() -> None:
    cache = FragmentCache().enable(ttl=None, max_bytes=250)  # room for three 80-byte frames
    fetch = CountingFetch(rows=10)
    cached = cache.wrap(fetch)
    for q in ("SELECT 1", "SELECT 2", "SELECT 3"):
        cached(frag(q), CRM, None)
    assert cached(frag("SELECT 1"), CRM, None).cache_hit  # 1 is now the most recent
    cached(frag("SELECT 4"), CRM, None)  # evicts 2, the least recently used
    assert cache.lookup(frag("SELECT 2"), CRM) is None
    assert all(cache.lookup(frag(q), CRM) for q in ("SELECT 1", "SELECT 3", "SELECT 4"))
    s = cache.stats()
    assert (s["entries"], s["bytes"], s["evictions"]) == (3, 240, 1)
    # a frame larger than the whole cache is not kept (and evicts nothing)
    big = CountingFetch(rows=100)
    cache.wrap(big)(frag("SELECT big"), CRM, None)
    assert cache.lookup(frag("SELECT big"), CRM) is None and cache.stats()["entries"] == 3
    # shrinking the limit evicts at once
    cache.enable(ttl=None, max_bytes=100)
    assert cache.stats()["entries"] == 1 and cache.stats()["bytes"] == 80


def test_clear_one_source_or_all_and_disable() -> None:
    cache = FragmentCache().enable()
    cached = cache.wrap(CountingFetch())
    cached(frag("SELECT 1"), CRM, None)
    cached(frag("SELECT 2"), CRM, None)
    cached(frag("SELECT 1", source="sales"), SALES, None)
    assert cache.clear(source="crm") == 2
    assert cache.entries()["source"].to_list() == ["sales"]
    assert cache.clear(source="nobody") == 0
    assert cache.clear() == 1 and len(cache) == 0
    cached(frag(), CRM, None)
    cache.disable()
    assert cache.stats()["entries"] == 0 and cache.stats()["bytes"] == 0
    fetch = CountingFetch()
    assert cache.wrap(fetch) is fetch


def test_bad_limits_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="ttl"):
        FragmentCache().enable(ttl=0)
    with pytest.raises(ConfigError, match="max_bytes"):
        FragmentCache().enable(max_bytes=0)
    assert "on: 0 entries" in repr(FragmentCache().enable(ttl=None))


def test_threads_share_one_cache() -> None:
    cache = FragmentCache().enable(ttl=None, max_bytes=800)  # room for 10 of 16 keys
    fetch = CountingFetch(rows=10)
    cached = cache.wrap(fetch)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(300):
                q = f"SELECT {(i * 7 + seed) % 16}"
                res = cached(frag(q), CRM, None)
                assert res.df.height == 10
                if i % 50 == 0:
                    cache.clear(source="crm" if seed % 2 else None)
                    cache.stats()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = cache.stats()
    assert s["hits"] + s["misses"] == 8 * 300
    assert s["hits"] > 0 and s["entries"] <= 10
    assert s["bytes"] == cache.entries()["bytes"].sum() <= 800


# ---------------------------------------------------------------------- real sources
def counting(fed: fl.Federation) -> list[str]:
    """Count the fetches that reach a source: wrap the federation's own fetch seam."""
    calls: list[str] = []

    def fetch(fragment: Fragment, source: Source, deadline: float | None = None) -> FetchResult:
        calls.append(source.name)
        return default_fetch(fragment, source, deadline)

    fed.fetch = fetch
    return calls


QUERIES = [
    fl.demo.SEED_QUERY,
    "SELECT u.country, count(*) AS n, sum(o.total) AS spend FROM users u "
    "JOIN orders o ON u.id = o.user_id GROUP BY u.country ORDER BY u.country",
]


def test_sqlite_results_equal_with_and_without_cache(tmp_path) -> None:
    fed = fl.demo.federation(path=tmp_path)
    calls = counting(fed)
    cold = {q: fed.sql(q) for q in QUERIES}
    assert fed.cache.stats()["enabled"] is False and len(calls) == 4
    fed.cache.enable(ttl=60)
    warm_up = {q: fed.sql(q) for q in QUERIES}
    assert len(calls) - 4 == fed.cache.stats()["misses"] == fed.cache.stats()["entries"]
    calls.clear()
    warm = {q: fed.sql(q) for q in QUERIES}
    assert calls == []  # every fragment came from the cache: no source was asked
    for q in QUERIES:
        fl.testing.assert_same_result(warm[q].df, cold[q].df, ordered=cold[q].plan.ordered)
        fl.testing.assert_same_result(warm_up[q].df, cold[q].df, ordered=cold[q].plan.ordered)
        t = warm[q].trace
        assert t.cache_hits == len(t.entries) > 0
        assert t.bytes == 0 and t.rows == 0  # nothing moved
        assert t.cache_bytes == cold[q].trace.bytes and t.cache_rows == cold[q].trace.rows
        frame = t.to_polars()
        assert frame["cache_hit"].all() and set(frame["reader"]) == {"cache"}
        assert "cache hit" in t._repr_html_() and "from cache" in warm[q]._repr_html_()
        assert "not moved" in t.summary()
    assert fed.history()["bytes"].to_list()[-2:] == [0, 0]


def test_warm_plot_marks_cache_hits(tmp_path) -> None:
    from fedlab import viz

    fed = fl.demo.federation(path=tmp_path)
    fed.cache.enable()
    fed.sql(fl.demo.SEED_QUERY)
    res = fed.sql(fl.demo.SEED_QUERY)
    wf = viz.plot_waterfall(res)
    n = len(res.trace.entries)
    assert all(p.get_hatch() == "//" for p in wf.patches[:n])
    assert "cache" in [t.get_text() for t in wf.get_legend().get_texts()]
    vol = viz.plot_volume(res)
    assert all(p.get_hatch() == "//" for p in vol.patches if p.get_width() > 0)
    assert "from cache" in vol.get_xlabel()
    per = res.trace.by_source(cache=True)
    assert per["bytes"].sum() == 0 and per["cache_hits"].sum() == n


def test_postgres_results_equal_and_clear_invalidates(pg_database, tmp_path) -> None:
    url = pg_database("fedlab_cache")
    data = fl.demo.frames()
    write_tables(url, {"users": data["users"]}, primary_keys=fl.demo.PRIMARY_KEYS)
    fed = fl.demo.federation(path=tmp_path)
    fed.detach("crm")
    fed.attach("crm", url)
    calls = counting(fed)
    q = fl.demo.SEED_QUERY
    cold = fed.sql(q)
    fed.cache.enable(ttl=60)
    fed.sql(q)
    calls.clear()
    warm = fed.sql(q)
    assert calls == []
    fl.testing.assert_same_result(warm.df, cold.df)
    assert {e.source: e.reader for e in warm.trace.entries} == {"crm": "cache", "sales": "cache"}
    # invalidating one source: only it is read again
    assert fed.cache.clear(source="crm") == 1
    again = fed.sql(q)
    assert calls == ["crm"]
    assert {e.source: e.cache_hit for e in again.trace.entries} == {"crm": False, "sales": True}
    assert again.trace.bytes == cold.trace.by_source().filter(source="crm")["bytes"].item()
    fl.testing.assert_same_result(again.df, cold.df)


def test_same_name_other_database_is_not_served_from_cache(pg_database, tmp_path) -> None:
    data = fl.demo.frames()
    urls = []
    for n in (1, 2):
        url = pg_database("fedlab_cache_v")
        users = data["users"] if n == 1 else data["users"].head(3)
        write_tables(url, {"users": users}, primary_keys=fl.demo.PRIMARY_KEYS)
        urls.append(url)
    fed = fl.Federation()
    fed.cache.enable()
    fed.attach("crm", urls[0])
    first = fed.sql("SELECT count(*) AS n FROM users")
    fed.detach("crm")
    fed.attach("crm", urls[1])  # same name, another database: another key
    second = fed.sql("SELECT count(*) AS n FROM users")
    assert not second.trace.entries[0].cache_hit
    assert (first.df["n"].item(), second.df["n"].item()) == (data["users"].height, 3)
