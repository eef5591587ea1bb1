"""Opt-in fragment cache: a repeated sub-query is answered from memory, not from its source.

The cache wraps the fetch seam (:data:`fedlab.execute.fetch.Fetcher`); the planner and the
executor do not know it exists. It is **off by default**: ``wrap(fetch)`` returns ``fetch``
itself until :meth:`FragmentCache.enable` is called.

>>> import fedlab as fl
>>> fed = fl.Federation()
>>> fed.cache.enable(ttl=60, max_bytes=64 * 1024**2)        # doctest: +ELLIPSIS
<FragmentCache on: 0 entries, 0 B of 64.0 MB, ttl 60 s, 0 hits / 0 misses>
>>> fed.cache.stats()["entries"]
0

What an entry is keyed by (see :func:`cache_key`): the source's name, kind and redacted
URL (so a name detached and attached again to another database does not reuse old rows),
the fragment's SQL exactly as the planner generated it (parameters are already inlined as
literals there, so two parameter values are two keys) and the column names and types the
fragment declares (they decide how the rows are typed).

Rules:

* **TTL**: an entry older than ``ttl`` seconds is a miss (and is dropped).
* **Size**: entries are weighed by their Arrow size; when the total passes ``max_bytes``
  the least recently used entries are evicted. A frame larger than ``max_bytes`` is not kept.
* **Invalidation**: ``clear()`` drops everything, ``clear(source="crm")`` one source's
  entries. fedlab never sees writes made to a source, so a cached answer is as old as its
  entry (``age``): use a TTL that fits the data, or clear after writing.
* **Threads**: fragments are fetched in parallel threads; every operation takes a lock,
  fetches run outside it. Two threads missing the same key at once both fetch.

A hit returns a :class:`~fedlab.execute.fetch.FetchResult` with ``cache_hit=True``,
reader ``"cache"`` and ``nbytes`` the Arrow size of the cached rows: bytes that did *not*
move. :class:`fedlab.result.Trace` counts them apart (``trace.bytes`` is what moved from
sources, ``trace.cache_bytes`` what the cache served).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from fedlab.errors import ConfigError
from fedlab.execute.fetch import Fetcher, FetchResult
from fedlab.source import Source
from fedlab.sql.plan import Fragment

__all__ = ["CacheEntry", "CacheKey", "FragmentCache", "cache_key"]

#: (source name, source kind, redacted URL, fragment SQL, declared columns)
CacheKey = tuple[str, str, str, str, tuple[tuple[str, str], ...]]

#: defaults of :meth:`FragmentCache.enable`
DEFAULT_TTL_S = 300.0
DEFAULT_MAX_BYTES = 256 * 1024**2


def cache_key(fragment: Fragment, source: Source) -> CacheKey:
    """The identity of a fragment's answer.

    The SQL is taken as the planner generated it (sqlglot's canonical rendering), only
    stripped: collapsing whitespace could merge two different string literals.
    """
    return (
        source.name,
        source.kind,
        source.redacted_url,
        fragment.sql.strip(),
        tuple((name, t.sql() if t is not None else "") for name, t in fragment.columns),
    )


@dataclass
class CacheEntry:
    """One cached fragment answer.

    Attributes:
        df: the rows, typed as the fragment declared.
        nbytes: their Arrow size (what counts against ``max_bytes``).
        reader: the reader that fetched them from the source.
        fetched_at: wall-clock time (``time.time()``) of the fetch, for display.
        stored: the cache clock's reading at the fetch (for TTL and age).
        hits: times this entry answered a fetch.
    """

    key: CacheKey
    df: pl.DataFrame
    nbytes: int
    reader: str
    fetched_at: float
    stored: float
    hits: int = 0

    @property
    def source(self) -> str:
        return self.key[0]

    @property
    def sql(self) -> str:
        return self.key[3]


class FragmentCache:
    """An LRU, TTL-bounded, size-bounded cache of fragment answers (off until enabled).

    Args:
        ttl: seconds an entry stays valid (None: until evicted or cleared).
        max_bytes: total Arrow size kept; least recently used entries go first.
        enabled: start switched on.
        clock: a monotonic clock in seconds (tests inject a fake one).
    """

    def __init__(
        self,
        *,
        ttl: float | None = DEFAULT_TTL_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        enabled: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.RLock()
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._clock = clock
        self.ttl: float | None = None
        self.max_bytes: int = 0
        self._configure(ttl, max_bytes)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    # ------------------------------------------------------------------ switches
    def _configure(self, ttl: float | None, max_bytes: int) -> None:
        if ttl is not None and ttl <= 0:
            raise ConfigError(f"cache ttl must be positive seconds (or None), not {ttl!r}")
        if max_bytes <= 0:
            raise ConfigError(f"cache max_bytes must be a positive number, not {max_bytes!r}")
        self.ttl = None if ttl is None else float(ttl)
        self.max_bytes = int(max_bytes)

    def enable(
        self, ttl: float | None = DEFAULT_TTL_S, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> FragmentCache:
        """Switch the cache on (or change its limits; entries over the new limits go)."""
        with self._lock:
            self._configure(ttl, max_bytes)
            self.enabled = True
            now = self._clock()
            for key in [k for k, e in self._entries.items() if self._expired(e, now)]:
                self._drop(key)
                self.expirations += 1
            self._evict()
        return self

    def disable(self) -> None:
        """Switch the cache off and free its memory (statistics are kept)."""
        with self._lock:
            self.enabled = False
            self._entries.clear()
            self._bytes = 0

    def clear(self, source: str | None = None) -> int:
        """Drop every entry (``source=None``) or one source's; returns how many were dropped."""
        with self._lock:
            keys = [k for k in self._entries if source is None or k[0] == source]
            for k in keys:
                self._drop(k)
            return len(keys)

    # ------------------------------------------------------------------ the seam
    def wrap(self, fetch: Fetcher) -> Fetcher:
        """``fetch`` itself when the cache is off, else a fetch that consults the cache first."""
        if not self.enabled:
            return fetch

        def cached_fetch(
            fragment: Fragment, source: Source, deadline: float | None = None
        ) -> FetchResult:
            hit = self.get(fragment, source)
            if hit is not None:
                return hit
            result = fetch(fragment, source, deadline)
            if not result.cache_hit:
                self.put(fragment, source, result)
            return result

        cached_fetch.__wrapped__ = fetch  # type: ignore[attr-defined]
        return cached_fetch

    def get(self, fragment: Fragment, source: Source) -> FetchResult | None:
        """The cached answer as a hit (``cache_hit=True``, reader ``cache``), or None (a miss)."""
        key = cache_key(fragment, source)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._expired(entry, self._clock()):
                self._drop(key)
                self.expirations += 1
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            entry.hits += 1
            self.hits += 1
            return FetchResult(entry.df.clone(), entry.nbytes, "cache", cache_hit=True)

    def put(self, fragment: Fragment, source: Source, result: FetchResult) -> bool:
        """Keep ``result`` for ``fragment``; False when it is larger than ``max_bytes``."""
        if not self.enabled:
            return False
        nbytes = int(result.nbytes) if result.nbytes else _arrow_size(result.df)
        if nbytes > self.max_bytes:
            return False
        key = cache_key(fragment, source)
        now = self._clock()
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = CacheEntry(
                key, result.df.clone(), nbytes, result.reader, time.time(), now
            )
            self._bytes += nbytes
            self._evict()
        return True

    # ------------------------------------------------------------------ looking inside
    def lookup(
        self, fragment: Fragment, source: Source, *, allow_expired: bool = False
    ) -> CacheEntry | None:
        """The entry for ``fragment`` without counting a hit or a miss.

        ``allow_expired=True`` also returns an entry past its TTL (not yet evicted): a
        "serve stale when the source is down" fallback reads it, with :meth:`age`.
        """
        key = cache_key(fragment, source)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or (not allow_expired and self._expired(entry, self._clock())):
                return None
            return entry

    def age(self, fragment: Fragment, source: Source) -> float | None:
        """Seconds since ``fragment``'s cached answer was fetched (None: not cached)."""
        entry = self.lookup(fragment, source, allow_expired=True)
        return None if entry is None else self._clock() - entry.stored

    def stats(self) -> dict[str, Any]:
        """Counters and sizes: enabled, hits, misses, hit_rate, entries, bytes, max_bytes,
        ttl, evictions (for size), expirations (for TTL)."""
        with self._lock:
            looks = self.hits + self.misses
            return {
                "enabled": self.enabled,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / looks if looks else 0.0,
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "ttl": self.ttl,
                "evictions": self.evictions,
                "expirations": self.expirations,
            }

    def entries(self) -> pl.DataFrame:
        """One row per entry, least recently used first: source, rows, bytes, age_s, hits, sql."""
        with self._lock:
            now = self._clock()
            rows = [
                {
                    "source": e.source,
                    "rows": e.df.height,
                    "bytes": e.nbytes,
                    "age_s": now - e.stored,
                    "expired": self._expired(e, now),
                    "hits": e.hits,
                    "reader": e.reader,
                    "sql": e.sql,
                }
                for e in self._entries.values()
            ]
        schema = {
            "source": pl.String,
            "rows": pl.Int64,
            "bytes": pl.Int64,
            "age_s": pl.Float64,
            "expired": pl.Boolean,
            "hits": pl.Int64,
            "reader": pl.String,
            "sql": pl.String,
        }
        return pl.DataFrame(rows, schema=schema)

    def reset_stats(self) -> None:
        """Zero the hit / miss / eviction counters (entries stay)."""
        with self._lock:
            self.hits = self.misses = self.evictions = self.expirations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        s = self.stats()
        ttl = "none" if s["ttl"] is None else f"{s['ttl']:g} s"
        return (
            f"<FragmentCache {'on' if s['enabled'] else 'off'}: {s['entries']} entries, "
            f"{_human(s['bytes'])} of {_human(s['max_bytes'])}, ttl {ttl}, "
            f"{s['hits']} hits / {s['misses']} misses>"
        )

    # ------------------------------------------------------------------ internals
    def _expired(self, entry: CacheEntry, now: float) -> bool:
        return self.ttl is not None and now - entry.stored >= self.ttl

    def _drop(self, key: CacheKey) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.nbytes

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))
            self.evictions += 1


def _arrow_size(df: pl.DataFrame) -> int:
    return df.to_arrow().nbytes if df.width else 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover
