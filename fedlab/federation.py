"""The user's entry point: attach databases, query them as one.

>>> import fedlab as fl
>>> fed = fl.Federation()
>>> fed.attach("catalog", "sqlite:///data/demo/products.db")   # doctest: +SKIP
>>> fed.sql("SELECT count(*) FROM products").df                 # doctest: +SKIP
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from fedlab.cache import FragmentCache
from fedlab.catalog import Catalog
from fedlab.config import load_config
from fedlab.errors import ConfigError, FedlabError, PlanError, UnsupportedSQLError
from fedlab.execute.executor import (
    STREAMING_THRESHOLD_BYTES,
    Progress,
    check_streaming,
    execute,
)
from fedlab.execute.fetch import Fetcher, default_fetch
from fedlab.monitor import Monitor
from fedlab.monitor import health as monitor_health
from fedlab.policy import Policy, check_access, check_plan, make_policy, run_guards
from fedlab.resilience import Resilience
from fedlab.result import Comparison, FederatedResult
from fedlab.source import Source
from fedlab.sql.bind import BoundQuery, bind
from fedlab.sql.parse import parse_query
from fedlab.sql.plan import Plan
from fedlab.sql.planner import STRATEGIES, plan_query
from fedlab.sql.shards import declare_shard

__all__ = ["Federation"]


#: where plans run: this process (Polars) or Apache Spark (fedlab.spark)
ENGINES = ("polars", "spark")


def _check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    return engine


class Federation:
    """Several databases queried as one.

    Args:
        dialect: SQL dialect of the queries you write (default: PostgreSQL-style).
        strategy: default planning strategy (``auto``, ``pushdown`` or ``naive``).
        max_workers: fragments fetched in parallel.
        timeout: default whole-query deadline in seconds (None: none).
        fetch: the fetch seam (tests and services wrap it).
        progress: callback ``progress(event, fragment, entry)`` per fragment start/end/error.
        retry: retries of transient source errors: a :class:`~fedlab.RetryPolicy`, ``True``
            (the default policy) or ``None``/``False`` (off); per source:
            ``fed.resilience.configure(name, retry=…)``.
        breaker: one circuit breaker per source: a :class:`~fedlab.BreakerPolicy`, ``True`` or
            ``None``/``False`` (off).
        max_rows, max_bytes: default limits per fragment and per result.
        user: who runs the queries, for the history and the audit log (default: the OS user).
        engine: where plans run: ``"polars"`` (this process) or ``"spark"``.
        streaming: the local engine's residual on Polars' streaming engine: ``"auto"``
            (when the fragments it reads reach ``streaming_threshold_bytes`` of Arrow
            data), ``True`` (always) or ``False`` (always the in-memory engine); per query:
            ``fed.sql(..., streaming=…)``. See docs/streaming.md.
        streaming_threshold_bytes: see ``streaming`` (default 64 MiB).
    """

    #: the PostgreSQL FDW hub made by ``fl.fdw.setup(fed, hub=...)`` (``compare(..., "fdw")``)
    fdw_hub: Any = None

    def __init__(
        self,
        *,
        dialect: str = "postgres",
        strategy: str = "auto",
        max_workers: int = 8,
        timeout: float | None = None,
        fetch: Fetcher | None = None,
        progress: Progress | None = None,
        retry: Any = None,
        breaker: Any = None,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        user: str | None = None,
        engine: str = "polars",
        spark: Any = None,
        streaming: bool | str = "auto",
        streaming_threshold_bytes: int = STREAMING_THRESHOLD_BYTES,
    ) -> None:
        check_streaming(streaming, streaming_threshold_bytes)
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        self.dialect = dialect
        self.strategy = strategy
        self.max_workers = max_workers
        self.timeout = timeout
        self.fetch: Fetcher = fetch or default_fetch
        #: called as ``progress(event, fragment, entry)`` with event "start" / "end" / "error"
        #: for every fragment (notebook progress bars hook in here)
        self.progress: Progress | None = progress
        self.catalog = Catalog()
        #: the query history and audit (``fed.history()``)
        self.monitor = Monitor(user=user, dialect=dialect)
        #: retries and circuit breakers per source, around the fetch seam
        self.resilience = Resilience(retry, breaker)
        #: default limits per fragment and per result (``fed.sql(..., max_rows=…)``)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        #: who runs the queries (the audit log's ``user``; default: the OS user)
        self.user = user
        #: opt-in fragment cache (``fed.cache.enable(...)``, ``fed.cache.clear(source=...)``)
        self.cache = FragmentCache()
        self._policy: Policy | None = None
        #: where the plans run: ``"polars"`` (this process) or ``"spark"`` (fedlab.spark)
        self.engine = _check_engine(engine)
        #: the Spark session for ``engine="spark"`` (None: ``fl.spark.session()`` on first use)
        self.spark = spark
        #: the local engine's residual: ``"auto"``, ``True`` (streaming) or ``False``
        #: (in-memory); see docs/streaming.md
        self.streaming: bool | str = streaming
        #: ``streaming="auto"`` streams when the residual's inputs reach this many bytes
        self.streaming_threshold_bytes = streaming_threshold_bytes

    # ------------------------------------------------------------------ sources
    @classmethod
    def from_config(cls, path: str | Path, **kwargs: Any) -> Federation:
        """Attach every source of a ``fedlab.toml`` file (``${ENV}`` interpolated)."""
        cfg = load_config(path)
        settings = {
            k: v
            for k, v in cfg.settings.items()
            if k
            in (
                "strategy",
                "timeout",
                "max_workers",
                "max_rows",
                "max_bytes",
                "user",
                "streaming",
                "streaming_threshold_bytes",
            )
        }
        fed = cls(**{**settings, **kwargs})
        for s in cfg.sources:
            fed.attach(s.name, s.url, tags=s.tags, base_dir=cfg.path.parent, **s.options)
        return fed

    def attach(
        self,
        name: str,
        url: str,
        *,
        tags: Mapping[str, str] | None = None,
        base_dir: str | Path | None = None,
        **options: Any,
    ) -> Federation:
        """Attach a database as ``name``; its tables become ``name.<table>``.

        The source must answer within its ``connect_timeout`` (default 5 s); its catalog
        (tables, columns, keys, row estimates, key ranges) is read once and cached.
        """
        if name in self.catalog.sources:
            raise ConfigError(f"a source named {name!r} is already attached (detach it first)")
        source = Source.from_url(name, url, tags=dict(tags or {}), base_dir=base_dir, **options)
        self.catalog.add(source)
        return self

    def shard(
        self,
        name: str,
        *,
        key: str,
        method: str = "hash",
        shards: Mapping[str, str],
        bounds: Mapping[str, Any] | None = None,
        values: Mapping[str, Any] | None = None,
        table: str | None = None,
    ) -> Federation:
        """Declare ``name`` as one logical table over several shards with the same schema.

        See :func:`fedlab.sql.shards.declare_shard` for the arguments.
        """
        declare_shard(
            self,
            name,
            key=key,
            method=method,
            shards=shards,
            bounds=bounds,
            values=values,
            table=table,
        )
        return self

    def policy(self, **rules: Any) -> Policy:
        """Set the federation's access and residency rules (see :mod:`fedlab.policy`)."""
        self._policy = make_policy(self._policy, **rules)
        return self._policy

    def _protected(self) -> set[str]:
        """Sources into which the planner may not ship join keys (data residency)."""
        fn = getattr(self._policy, "protected_sources", None)
        return set(fn(self.catalog)) if fn is not None else set()

    def transaction(self, **options: Any) -> Any:
        """``with fed.transaction() as tx: tx.execute(source, sql, params)``: two-phase commit
        across the sources that can prepare (see :mod:`fedlab.txn`)."""
        from fedlab.txn import transaction

        return transaction(self, **options)

    def in_doubt(self, **options: Any) -> pl.DataFrame:
        """This coordinator's prepared transactions still awaiting a decision."""
        from fedlab.txn import in_doubt

        return in_doubt(self, **options)

    def recover(self, **options: Any) -> Any:
        """Commit the in-doubt transactions whose decision was logged, roll back the rest."""
        from fedlab.txn import recover

        return recover(self, **options)

    def saga(self, **options: Any) -> Any:
        """A saga: steps with compensations, run in order (see :mod:`fedlab.saga`)."""
        from fedlab.saga import saga

        return saga(self, **options)

    def detach(self, name: str) -> None:
        if name not in self.catalog.sources:
            raise ConfigError(f"no source named {name!r} is attached")
        self.catalog.remove(name)
        self.cache.clear(source=name)

    def refresh(self, name: str | None = None) -> None:
        """Re-read the catalog of one source (or all)."""
        self.catalog.refresh(name)

    def sources(self) -> pl.DataFrame:
        """One row per source: name, kind, dialect, URL (password redacted), tags, TLS, tables."""
        rows = [
            {
                "name": s.name,
                "kind": s.kind,
                "dialect": s.dialect,
                "url": s.redacted_url,
                "tags": ", ".join(f"{k}={v}" for k, v in s.tags.items()),
                "tls": s.tls,
                "tables": len(self.catalog.tables.get(s.name, {})),
            }
            for s in self.catalog.sources.values()
        ]
        schema = {
            "name": pl.String,
            "kind": pl.String,
            "dialect": pl.String,
            "url": pl.String,
            "tags": pl.String,
            "tls": pl.String,
            "tables": pl.Int64,
        }
        return pl.DataFrame(rows, schema=schema)

    def tables(self) -> pl.DataFrame:
        """One row per table: source, table, columns, primary key, row estimate; sharded
        logical tables (source ``logical``) also list their shards and rule."""
        rows = [
            {
                "source": t.source,
                "table": t.name,
                "columns": ", ".join(f"{c.name} {c.declared}".strip() for c in t.columns),
                "primary_key": ", ".join(t.primary_key),
                "rows_estimate": t.row_estimate,
                "shards": None,
                "rule": None,
            }
            for tables in self.catalog.tables.values()
            for t in tables.values()
        ] + self.catalog.logical_rows()
        schema = {
            "source": pl.String,
            "table": pl.String,
            "columns": pl.String,
            "primary_key": pl.String,
            "rows_estimate": pl.Int64,
            "shards": pl.String,
            "rule": pl.String,
        }
        return pl.DataFrame(rows, schema=schema)

    def health(self) -> pl.DataFrame:
        """One row per source: reachable, round-trip latency, breaker state, last error."""
        return monitor_health(self)

    def history(self) -> pl.DataFrame:
        """One row per executed query (this session)."""
        return self.monitor.history()

    def audit(self, path: str | Path | None, *, mask_literals: bool = True) -> None:
        """Append one JSON line per query to ``path`` (None: stop auditing)."""
        self.monitor.audit_to(path, mask_literals=mask_literals, user=self.user)

    # ------------------------------------------------------------------ queries
    def bind(self, sql: str, params: Mapping[str, Any] | None = None) -> BoundQuery:
        """Parse and bind ``sql`` (names resolved, columns qualified), without planning;
        access rules (``fed.policy(allow=…, deny=…)``) are checked here."""
        bound = bind(parse_query(sql, dialect=self.dialect, params=params), self.catalog)
        check_access(bound, self.catalog, self._policy)
        return bound

    def explain(
        self,
        sql: str,
        *,
        strategy: str | None = None,
        params: Mapping[str, Any] | None = None,
        disable: Sequence[str] = (),
        tenant: str | None = None,
    ) -> Plan:
        """The plan ``sql`` would run under ``strategy``; nothing is executed.

        ``disable`` switches pushdown rules off (names in ``fedlab.sql.planner.RULES``) to
        see what a plan looks like, and costs, without them.
        """
        try:
            plan = plan_query(
                self.bind(sql, params),
                self.catalog,
                strategy or self.strategy,
                sql,
                disable,
                tenant=tenant,
                max_workers=self.max_workers,
                protected=self._protected(),
            )
        except FedlabError:
            raise
        except RecursionError:
            raise UnsupportedSQLError(
                "the query is nested too deeply (subqueries, or a very long chain of "
                "UNION / OR) for fedlab's planner; split it or simplify it"
            ) from None
        except Exception as e:  # a bug: still a FedlabError, with the cause chained
            raise PlanError(
                f"internal error while planning the query ({type(e).__name__}: {e}); "
                "please report it with the SQL"
            ) from e
        if disable:
            plan.notes.append(f"pushdown rules switched off: {', '.join(sorted(disable))}")
        check_plan(plan, self.catalog, self._policy)
        return plan

    def sql(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        strategy: str | None = None,
        timeout: float | None = None,
        disable: Sequence[str] = (),
        tenant: str | None = None,
        on_error: str = "raise",
        max_rows: int | None = None,
        max_bytes: int | None = None,
        engine: str | None = None,
        spark: Any = None,
        collect: bool = True,
        streaming: bool | str | None = None,
    ) -> FederatedResult:
        """Run one read-only query over the attached sources.

        ``disable``: pushdown rules to switch off (see explain); ``tenant``: read only that
        tenant's shards and sources; ``on_error``: ``raise``, ``partial`` or ``stale``;
        ``max_rows`` / ``max_bytes``: limits per fragment and per result.
        ``engine``: ``"polars"`` (default: :attr:`engine`) or ``"spark"`` (the same plan on
        Spark, see docs/spark.md; ``spark``: the session, default :attr:`spark` or
        ``fl.spark.session()``); with Spark, ``collect=False`` leaves the result in Spark
        (``res.spark_df``; ``res.df`` is then empty) for ``res.write_parquet(path)``.
        ``streaming``: ``"auto"``, ``True`` or ``False`` for this query (default:
        :attr:`streaming`): whether the local engine runs the residual on Polars' streaming
        engine (``res.trace.residual_engine`` says which ran; docs/streaming.md).
        """
        t0 = time.monotonic()
        engine = _check_engine(engine or self.engine)
        if engine != "spark" and (spark is not None or not collect):
            raise ConfigError("spark= and collect=False apply to engine='spark' only")
        if streaming is not None:
            check_streaming(streaming)
            if engine == "spark":
                raise ConfigError(
                    "streaming= applies to the local engine (engine='polars') only: Spark "
                    "plans its own execution"
                )
        strategy = strategy or self.strategy
        record = self.monitor.begin(sql, strategy, params)
        plan = None
        try:
            plan = self.explain(
                sql, strategy=strategy, params=params, disable=disable, tenant=tenant
            )
            planning = time.monotonic() - t0
            timeout = timeout if timeout is not None else self.timeout
            run_guards(plan, self.catalog, self._policy, t0 + timeout if timeout else None)
            if engine == "spark":
                return self._sql_spark(
                    record,
                    plan,
                    t0=t0,
                    planning=planning,
                    timeout=timeout,
                    on_error=on_error,
                    max_rows=max_rows if max_rows is not None else self.max_rows,
                    max_bytes=max_bytes if max_bytes is not None else self.max_bytes,
                    spark=spark,
                    collect=collect,
                )
            df, trace = execute(
                plan,
                self.catalog,
                fetch=self.cache.wrap(self.resilience.wrap(self.fetch)),
                max_workers=self.max_workers,
                timeout=timeout,
                t0=t0,
                progress=self.progress,
                on_error=on_error,
                max_rows=max_rows if max_rows is not None else self.max_rows,
                max_bytes=max_bytes if max_bytes is not None else self.max_bytes,
                cache=self.cache,
                streaming=self.streaming if streaming is None else streaming,
                streaming_threshold_bytes=self.streaming_threshold_bytes,
            )
        except BaseException as e:  # KeyboardInterrupt too: the history says what happened
            self.monitor.fail(record, e, plan)
            raise
        trace.planning_s = planning
        trace.total_s = time.monotonic() - t0
        self.monitor.succeed(record, plan, trace, df)
        return FederatedResult(df, plan, trace)

    def spark_session(self) -> Any:
        """The Spark session ``engine="spark"`` uses (made by ``fl.spark.session()`` on
        first use unless ``Federation(spark=...)`` gave one)."""
        if self.spark is None:
            from fedlab import spark as fs

            self.spark = fs.session()
        return self.spark

    def _sql_spark(
        self,
        record: Any,
        plan: Plan,
        *,
        t0: float,
        planning: float,
        timeout: float | None,
        on_error: str,
        max_rows: int | None,
        max_bytes: int | None,
        spark: Any,
        collect: bool,
    ) -> FederatedResult:
        """``fed.sql(..., engine="spark")``: the plan's fragments and residual on Spark
        (fedlab.spark); the history, trace and result as with the local engine."""
        from fedlab import spark as fs

        if on_error != "raise":
            raise ConfigError(
                f"on_error={on_error!r} needs the local engine (engine='polars'): Spark "
                "reads do not go through fedlab's fallbacks"
            )
        session = spark if spark is not None else self.spark_session()
        out, trace = fs.execute(  # a failure is recorded by sql()
            plan,
            self.catalog,
            spark=session,
            timeout=timeout,
            t0=t0,
            max_rows=max_rows,
            max_bytes=max_bytes,
            max_workers=self.max_workers,
            collect=collect,
        )
        trace.planning_s = planning
        trace.total_s = time.monotonic() - t0
        if collect:
            df, spark_df = out, None
        else:
            spark_df = out
            df = pl.DataFrame(schema=list(spark_df.columns))
        self.monitor.succeed(record, plan, trace, df)
        return FederatedResult(df, plan, trace, engine="spark", spark_df=spark_df)

    def table(self, name: str) -> FederatedFrame:  # noqa: F821
        """A lazy dataframe over table ``name`` (bare or ``source.table``, resolved as in SQL)."""
        from fedlab.frame import FederatedFrame

        return FederatedFrame.table(self, name)

    def compare(
        self,
        sql: str,
        strategies: Sequence[str] = ("naive", "pushdown"),
        params: Mapping[str, Any] | None = None,
        *,
        engines: Sequence[str] | None = None,
    ) -> Comparison:
        """Run ``sql`` under each strategy; check they agree (the equality rule); tabulate cost.

        ``"fdw"`` among the strategies runs the same query on the PostgreSQL hub made by
        ``fl.fdw.setup(fed, hub=...)`` (``fed.fdw_hub``; :class:`~fedlab.errors.NoFdwHubError`
        without one): its time, the rows its foreign scans moved (``EXPLAIN ANALYZE``) and
        their bytes, estimated as rows × row width (column ``bytes_basis`` says which
        strategies' bytes are measured Arrow sizes and which are estimates).
        ``cmp.explain("fdw")`` is the hub's ``EXPLAIN (VERBOSE)``.

        ``engines=("polars", "spark")`` runs each strategy on each engine (the runs are
        then named ``"<strategy> @ <engine>"``; column ``engine``).
        """
        from fedlab.testing import same_result

        hub = getattr(self, "fdw_hub", None)
        if "fdw" in strategies and hub is None:
            from fedlab.errors import NoFdwHubError

            raise NoFdwHubError(
                "strategy 'fdw' needs an FDW hub: run fl.fdw.setup(fed, hub='postgresql://…') "
                "first (it stores the hub as fed.fdw_hub)"
            )
        engines = [_check_engine(e) for e in (engines or (self.engine,))]
        runs: list[tuple[str, str, str]] = []  # (name, strategy, engine)
        for s in strategies:
            for e in ["hub"] if s == "fdw" else engines:
                runs.append((s if len(engines) == 1 or s == "fdw" else f"{s} @ {e}", s, e))
        results: dict[str, Any] = {
            name: hub.sql(sql, params)
            if s == "fdw"
            else self.sql(sql, params, strategy=s, engine=e)
            for name, s, e in runs
        }
        engine_of = {name: e for name, _, e in runs}
        first = next(iter(results.values()))
        rows = []
        for s, r in results.items():
            ok, why = same_result(r.df, first.df, ordered=r.plan.ordered)
            basis = getattr(r, "bytes_basis", "arrow")
            rows.append(
                {
                    "strategy": s,
                    "engine": engine_of[s],
                    "total_s": r.trace.total_s,
                    "bytes": None if basis == "unknown" else r.trace.bytes,
                    "rows": None if basis == "unknown" else r.trace.rows,
                    "fragments": len(r.plan.fragments),
                    "result_rows": r.df.height,
                    "same_result": ok,
                    "difference": why or None,
                    "bytes_basis": basis,
                }
            )
        schema = {"bytes": pl.Int64, "rows": pl.Int64, "difference": pl.String}
        return Comparison(sql, results, pl.DataFrame(rows, schema_overrides=schema))

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        names = ", ".join(f"{s.name}({s.kind})" for s in self.catalog.sources.values())
        return f"<Federation {len(self.catalog.sources)} source(s): {names or 'none'}>"

    def _repr_html_(self) -> str:
        items = "".join(
            f"<li><b>{html.escape(s.name)}</b> ({html.escape(s.kind)}) "
            f"{html.escape(s.redacted_url)}: {len(self.catalog.tables.get(s.name, {}))} table(s)</li>"
            for s in self.catalog.sources.values()
        )
        return f"<div><b>Federation</b><ul>{items}</ul></div>"
