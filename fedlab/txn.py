"""Distributed transactions: two-phase commit across sources, with a durable coordinator log.

>>> with fed.transaction() as tx:                                  # doctest: +SKIP
...     tx.execute("crm", "UPDATE accounts SET balance = balance - :n WHERE id = 1", {"n": 100})
...     tx.execute("sales", "UPDATE orders SET status = 'paid' WHERE id = 7")
>>> tx.outcome, tx.trace                                           # doctest: +SKIP

How it runs (see ``docs/transactions.md``):

* Each source used in the block gets its own write connection, opened lazily on its first
  statement: PostgreSQL ``BEGIN``; MariaDB ``XA START 'gid','source'`` (it must come first
  on that connection, before the statements); SQLite ``BEGIN IMMEDIATE``; DuckDB ``BEGIN``.
* At the end of the block, **phase one**: the transaction's participants are logged, then
  each prepares (PostgreSQL ``PREPARE TRANSACTION``, MariaDB ``XA END`` + ``XA PREPARE``).
  An exception in the block or a failed prepare rolls every source back.
* The optional single **last resource** (a source that cannot prepare: SQLite, DuckDB) is
  committed after every other source prepared and before the decision is logged.
* The **decision** is written to the coordinator log (a SQLite file in WAL mode,
  ``synchronous=FULL``: fsync'd) before **phase two** (``COMMIT PREPARED`` / ``XA COMMIT``).
* A transaction that touched one source only is committed in one phase (no PREPARE; the
  trace says so), unless ``one_phase=False``.

Global transaction ids are ``fedlab:<coordinator>:<uuid hex>``; PostgreSQL participants
prepare as ``<gid>:<source>`` (gids are unique per server), MariaDB ones as the XA xid
``('<gid>', '<source>')``. ``in_doubt`` / ``recover`` only look at ids with this
coordinator's prefix, since ``pg_prepared_xacts`` and ``XA RECOVER`` list the whole server.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl

from fedlab.errors import (
    ConfigError,
    FedlabError,
    InDoubtError,
    InjectedCrash,
    ParameterError,
    PrepareError,
    StatementError,
    TransactionError,
    TwoPhaseUnsupportedError,
)
from fedlab.security import redact

__all__ = [
    "FAIL_POINTS",
    "CoordinatorLog",
    "Transaction",
    "check_can_prepare",
    "default_coordinator",
    "default_log_path",
    "in_doubt",
    "pg_max_prepared_transactions",
    "recover",
    "transaction",
]

#: the ``fail_at=`` points (``<source>``: a source name)
FAIL_POINTS = (
    "before_prepare",
    "after_prepare:<source>",
    "after_decision",
    "during_commit:<source>",
)
#: kinds that can prepare (take part in two-phase commit)
PREPARABLE = ("postgresql", "mysql")

_COORDINATOR = re.compile(r"^[A-Za-z0-9_.\-]{1,24}$")
_GID = re.compile(r"^fedlab:[A-Za-z0-9_.\-]{1,24}:[0-9a-f]{32}$")
_ACTIVE: set[str] = set()  # gids of this process's transactions between begin and end
_ACTIVE_LOCK = threading.Lock()


# ---------------------------------------------------------------------- ids and defaults
def default_coordinator() -> str:
    """``$FEDLAB_COORDINATOR``, else this host's name (letters, digits, ``_.-``, at most 24
    characters). It must stay the same across restarts: ``recover()`` finds its own
    transactions by it."""
    env = os.environ.get("FEDLAB_COORDINATOR")
    if env:
        return _check_coordinator(env)
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname() or "local")[:24]
    return host or "local"


def default_log_path() -> Path:
    """``$FEDLAB_TXN_LOG``, else ``$XDG_STATE_HOME/fedlab/coordinator.sqlite`` (by default
    ``~/.local/state/fedlab/coordinator.sqlite``): a per-user directory that survives
    reboots, unlike a temporary one (a coordinator log must outlive a crash)."""
    env = os.environ.get("FEDLAB_TXN_LOG")
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fedlab" / "coordinator.sqlite"


def _check_coordinator(name: str) -> str:
    if not isinstance(name, str) or not _COORDINATOR.match(name):
        raise ConfigError(
            f"coordinator id {name!r}: use 1 to 24 letters, digits, '_', '.' or '-' "
            "(it is part of every global transaction id, and MariaDB xids are 64 bytes at most)"
        )
    return name


def _prefix(coordinator: str) -> str:
    return f"fedlab:{coordinator}:"


def _pg_xid(gid: str, source: str) -> str:
    return f"{gid}:{source}"


def _now() -> float:
    return time.time()


# ---------------------------------------------------------------------- coordinator log
class CoordinatorLog:
    """The coordinator's durable log: a SQLite file (WAL, ``synchronous=FULL``).

    Table ``txn``: one row per transaction (gid, coordinator, state, decision, last
    resource, times); table ``participant``: one row per source of each transaction (its
    xid, role and when it prepared). The participants are written before phase one and the
    decision before phase two, each in its own fsync'd commit.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_log_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(
                """
                CREATE TABLE IF NOT EXISTS txn (
                    gid TEXT PRIMARY KEY, coordinator TEXT NOT NULL, state TEXT NOT NULL,
                    decision TEXT, last_resource TEXT, started_at REAL NOT NULL,
                    decided_at REAL, finished_at REAL);
                CREATE TABLE IF NOT EXISTS participant (
                    gid TEXT NOT NULL, source TEXT NOT NULL, kind TEXT NOT NULL,
                    xid TEXT NOT NULL, role TEXT NOT NULL, prepared_at REAL,
                    PRIMARY KEY (gid, source));
                """
            )

    def _connect(self) -> _Closing:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")  # in WAL mode: fsync the WAL at every commit
        return _Closing(con)

    def _write(self, *statements: tuple[str, Sequence[Any]]) -> None:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    con.execute(sql, args)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def begin(
        self,
        gid: str,
        coordinator: str,
        participants: Sequence[tuple[str, str, str, str]],
        last_resource: str | None,
    ) -> None:
        """Record a transaction and its participants ``(source, kind, xid, role)``."""
        self._write(
            (
                "INSERT INTO txn (gid, coordinator, state, last_resource, started_at) "
                "VALUES (?, ?, 'preparing', ?, ?)",
                (gid, coordinator, last_resource, _now()),
            ),
            *(
                (
                    "INSERT INTO participant (gid, source, kind, xid, role) VALUES (?, ?, ?, ?, ?)",
                    p_,
                )
                for p_ in ((gid, *p) for p in participants)
            ),
        )

    def prepared(self, gid: str, source: str) -> None:
        """Note that ``source`` prepared."""
        self._write(
            (
                "UPDATE participant SET prepared_at = ? WHERE gid = ? AND source = ?",
                (_now(), gid, source),
            )
        )

    def state(self, gid: str, state: str) -> None:
        """Set the transaction's state (``preparing``, ``last_resource``, ``in_doubt``…)."""
        self._write(("UPDATE txn SET state = ? WHERE gid = ?", (state, gid)))

    def decide(self, gid: str, decision: str) -> None:
        """Log the decision (``commit`` or ``abort``): durable when this returns."""
        if decision not in ("commit", "abort"):
            raise ValueError(decision)
        self._write(
            (
                "UPDATE txn SET decision = ?, decided_at = ?, state = 'decided' WHERE gid = ?",
                (decision, _now(), gid),
            )
        )

    def finish(self, gid: str, state: str) -> None:
        """The transaction is over on every source (``committed``, ``rolled_back``…)."""
        self._write(
            ("UPDATE txn SET state = ?, finished_at = ? WHERE gid = ?", (state, _now(), gid))
        )

    def entry(self, gid: str) -> dict[str, Any] | None:
        """The ``txn`` row of ``gid`` as a dict (None: not in this log)."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM txn WHERE gid = ?", (gid,)).fetchone()
            return dict(row) if row is not None else None

    def participants(self, gid: str) -> list[dict[str, Any]]:
        """The participant rows of ``gid``."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            rows = con.execute(
                "SELECT * FROM participant WHERE gid = ? ORDER BY rowid", (gid,)
            ).fetchall()
            return [dict(r) for r in rows]

    def transactions(self, coordinator: str | None = None) -> pl.DataFrame:
        """The ``txn`` table (optionally one coordinator's rows), oldest first."""
        with self._connect() as con:
            sql = "SELECT * FROM txn" + (" WHERE coordinator = ?" if coordinator else "")
            cur = con.execute(sql + " ORDER BY started_at", (coordinator,) if coordinator else ())
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        schema = {
            "gid": pl.String,
            "coordinator": pl.String,
            "state": pl.String,
            "decision": pl.String,
            "last_resource": pl.String,
            "started_at": pl.Float64,
            "decided_at": pl.Float64,
            "finished_at": pl.Float64,
        }
        return pl.DataFrame([dict(zip(cols, r, strict=True)) for r in rows], schema=schema)


class _Closing:
    """A sqlite3 connection as a context manager that closes it (sqlite3's own only
    ends a transaction)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self._con = con

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_con":
            object.__setattr__(self, name, value)
        else:
            setattr(self._con, name, value)

    def __enter__(self) -> sqlite3.Connection:
        return self._con

    def __exit__(self, *exc: object) -> None:
        self._con.close()


# ---------------------------------------------------------------------- PostgreSQL check
def pg_max_prepared_transactions(con: Any) -> int:
    """``SHOW max_prepared_transactions`` on a psycopg connection."""
    row = con.execute("SHOW max_prepared_transactions").fetchone()
    return int(row[0])


def check_can_prepare(source: Any, con: Any) -> None:
    """Raise :class:`TwoPhaseUnsupportedError` when ``source`` cannot prepare a transaction:
    SQLite / DuckDB, or PostgreSQL whose ``max_prepared_transactions`` is 0."""
    if source.kind == "postgresql":
        n = pg_max_prepared_transactions(con)
        if n <= 0:
            raise TwoPhaseUnsupportedError(
                f"source {source.describe()}: PostgreSQL has max_prepared_transactions = {n}, "
                "so it cannot PREPARE TRANSACTION (two-phase commit). Set it on the server, "
                "then restart PostgreSQL: ALTER SYSTEM SET max_prepared_transactions = 20; "
                "and e.g. pg_ctlcluster --skip-systemctl-redirect 15 main restart "
                "(scripts/setup.sh does both)",
                source=source.name,
            )
    elif source.kind not in PREPARABLE:
        raise TwoPhaseUnsupportedError(
            f"source {source.describe()}: {source.kind} cannot prepare a transaction (no "
            "PREPARE TRANSACTION / XA), so it cannot join a two-phase commit with other "
            "sources. Keep it out of the transaction, or make it the single last resource "
            f"(tx.execute({source.name!r}, sql, last_resource=True) or "
            f"fed.transaction(last_resource={source.name!r})): committed after every other "
            "source prepared; see docs/transactions.md for the risk that remains",
            source=source.name,
        )


# ---------------------------------------------------------------------- parameters
_NAMED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _bind(kind: str, sql: str, params: Any) -> tuple[str, Any]:
    """SQL and arguments for the driver of ``kind``.

    ``params``: None; a mapping for ``:name`` placeholders (rewritten into the driver's
    named style, values bound by the driver, never pasted); or a sequence, passed as is
    (the driver's positional style: ``%s`` for PostgreSQL / MariaDB, ``?`` for SQLite /
    DuckDB).
    """
    if params is None:
        return sql, None
    if not isinstance(params, Mapping):
        if isinstance(params, (str, bytes)) or not isinstance(params, Sequence):
            raise ParameterError("params must be a mapping (for :name) or a sequence")
        return sql, tuple(params)
    if kind == "sqlite":
        out_sql, names = sql, _placeholders(kind, sql, None)
    else:
        style = "$" if kind == "duckdb" else "%"
        out_sql, names = _rewrite(kind, sql, style)
    missing = sorted(set(names) - set(params))
    if missing:
        raise ParameterError(f"missing parameter(s) {missing} (given: {sorted(params)})")
    return out_sql, {k: params[k] for k in names}


def _placeholders(kind: str, sql: str, style: str | None) -> list[str]:
    return _rewrite(kind, sql, style)[1]


def _rewrite(kind: str, sql: str, style: str | None) -> tuple[str, list[str]]:
    """Find ``:name`` placeholders outside strings, quoted names and comments; with
    ``style`` ``%`` rewrite them as ``%(name)s`` (and every other ``%`` as ``%%``), with
    ``$`` as ``$name``."""
    out: list[str] = []
    names: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"', "`"):
            j = i + 1
            while j < n:
                if kind == "mysql" and c == "'" and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            chunk = sql[i : j + 1]
            out.append(chunk.replace("%", "%%") if style == "%" else chunk)
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            chunk = sql[i:j]
            out.append(chunk.replace("%", "%%") if style == "%" else chunk)
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            chunk = sql[i:j]
            out.append(chunk.replace("%", "%%") if style == "%" else chunk)
            i = j
        elif sql.startswith("::", i):
            out.append("::")
            i += 2
        elif c == ":" and (m := _NAMED.match(sql, i + 1)):
            name = m.group(0)
            names.append(name)
            if style == "%":
                out.append(f"%({name})s")
            elif style == "$":
                out.append(f"${name}")
            else:
                out.append(f":{name}")
            i = m.end()
        elif c == "%" and style == "%":
            out.append("%%")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out), list(dict.fromkeys(names))


# ---------------------------------------------------------------------- the transaction
@dataclass
class _Participant:
    source: Any
    con: Any
    role: str = "2pc"  # "2pc" | "last_resource" (decided at the end: "one_phase")
    state: str = "active"  # active | prepared | committed | rolled_back | lost
    xid: str = ""
    max_prepared: int | None = None
    statements: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.source.name)

    @property
    def kind(self) -> str:
        return str(self.source.kind)


class Transaction:
    """One distributed transaction (made by ``fed.transaction(...)``; use it in ``with``).

    Args:
        fed: the federation whose sources the statements run on.
        log: the coordinator log's file (default: :func:`default_log_path`).
        coordinator: this coordinator's id (default: :func:`default_coordinator`).
        fail_at: a failure point (:data:`FAIL_POINTS`) at which the coordinator "crashes".
        fail_mode: ``"raise"`` (:class:`~fedlab.errors.InjectedCrash`, connections dropped
            as a crash would), ``"exit"`` (``os._exit(1)``: the process dies there), or a
            callable ``f(point)`` called at the point, after which the transaction goes on
            (to cause a real fault there: cut a connection, stop a server).
        timeout: seconds each statement (and each lock wait) may take on a source (default:
            the source's ``statement_timeout``; None: no limit).
        last_resource: the one source that cannot prepare allowed to join (committed after
            every other source prepared, before the decision is logged).
        one_phase: commit a single-source transaction without PREPARE (default True).

    Attributes:
        gid: the global transaction id.
        outcome: ``"active"``, then ``"committed"``, ``"rolled back"``, ``"crashed"`` or
            ``"in doubt"``.
    """

    def __init__(
        self,
        fed: Any,
        *,
        log: str | Path | None = None,
        coordinator: str | None = None,
        fail_at: str | None = None,
        fail_mode: str | Callable[[str], Any] = "raise",
        timeout: float | None = -1.0,
        last_resource: str | None = None,
        one_phase: bool = True,
    ) -> None:
        self.fed = fed
        self.coordinator = (
            _check_coordinator(coordinator) if coordinator is not None else default_coordinator()
        )
        self._log_path = log
        self._log: CoordinatorLog | None = None
        self.gid = f"{_prefix(self.coordinator)}{uuid.uuid4().hex}"
        self.fail_at = self._check_fail_at(fail_at)
        if not callable(fail_mode) and fail_mode not in ("raise", "exit"):
            raise ConfigError(f"fail_mode={fail_mode!r}: use 'raise', 'exit' or a callable")
        self.fail_mode = fail_mode
        self.timeout = timeout
        if last_resource is not None:
            self._source(last_resource)
        self.last_resource = last_resource
        self.one_phase = one_phase
        self.outcome = "active"
        self._parts: dict[str, _Participant] = {}
        self._trace: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()
        self._started = _now()
        self._entered = False

    # -------------------------------------------------------------- public
    def __enter__(self) -> Transaction:
        if self._entered:
            raise TransactionError("a transaction can be used in one `with` block only")
        self._entered = True
        self._t0 = time.perf_counter()
        self._started = _now()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.outcome != "active":
            return
        if exc_type is not None:
            self._rollback_all(f"exception in the block: {exc_type.__name__}")
            self.outcome = "rolled back"
            return  # the exception propagates
        self._commit()

    @property
    def log(self) -> CoordinatorLog:
        """The coordinator log (opened on first use)."""
        if self._log is None:
            self._log = CoordinatorLog(self._log_path)
        return self._log

    @property
    def participants(self) -> list[str]:
        """The sources this transaction wrote or read, in order of first use."""
        return list(self._parts)

    @property
    def trace(self) -> pl.DataFrame:
        """One row per step: ``source`` (``coordinator`` for log writes), ``phase``
        (connect, execute, prepare, log, commit, rollback, crash), ``start`` / ``end``
        (seconds since the block began), ``ok``, ``detail``."""
        return pl.DataFrame(
            self._trace,
            schema={
                "source": pl.String,
                "phase": pl.String,
                "start": pl.Float64,
                "end": pl.Float64,
                "ok": pl.Boolean,
                "detail": pl.String,
            },
        )

    def execute(
        self, source: str, sql: str, params: Any = None, *, last_resource: bool = False
    ) -> int:
        """Run one statement on ``source`` inside the transaction; return its row count.

        ``params``: a mapping for ``:name`` placeholders, or a sequence in the driver's
        positional style; always bound by the driver. ``last_resource=True`` makes
        ``source`` (SQLite, DuckDB) the transaction's single last resource.
        """
        cur, _ = self._run(source, sql, params, last_resource=last_resource, fetch=False)
        return int(cur)

    def query(self, source: str, sql: str, params: Any = None) -> pl.DataFrame:
        """Run a query on ``source`` inside the transaction (e.g. ``SELECT … FOR UPDATE``)
        and return its rows as a Polars frame."""
        rows, cols = self._run(source, sql, params, last_resource=False, fetch=True)
        data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
        return pl.DataFrame(data, strict=False)

    # -------------------------------------------------------------- helpers
    def _check_fail_at(self, fail_at: str | None) -> str | None:
        if fail_at is None:
            return None
        point, _, src = str(fail_at).partition(":")
        if point in ("before_prepare", "after_decision") and not src:
            return fail_at
        if point in ("after_prepare", "during_commit") and src:
            self._source(src)
            return fail_at
        raise ConfigError(f"fail_at={fail_at!r}: use one of {', '.join(FAIL_POINTS)}")

    def _source(self, name: str) -> Any:
        sources = self.fed.catalog.sources
        if name not in sources:
            raise ConfigError(
                f"no source named {name!r} is attached (attached: {', '.join(sources) or 'none'})"
            )
        return sources[name]

    def _mark(self, source: str, phase: str, t0: float, ok: bool = True, detail: str = "") -> None:
        self._trace.append(
            {
                "source": source,
                "phase": phase,
                "start": t0 - self._t0,
                "end": time.perf_counter() - self._t0,
                "ok": ok,
                "detail": redact(detail),
            }
        )

    def _limit(self, source: Any) -> float | None:
        if self.timeout == -1.0:
            return source.options.statement_timeout
        return self.timeout

    def _join(self, name: str, last_resource: bool) -> _Participant:
        part = self._parts.get(name)
        if last_resource:
            if self.last_resource not in (None, name):
                raise TransactionError(
                    f"source {name!r} cannot be the last resource: {self.last_resource!r} "
                    "already is (one last resource at most)",
                    gid=self.gid,
                    source=name,
                )
            self.last_resource = name
        if part is not None:
            return part
        src = self._source(name)
        others = [p for p in self._parts.values()]
        if others:  # two sources or more: every one but the last resource must prepare
            for s in [src, *(p.source for p in others)]:
                if s.kind not in PREPARABLE and s.name != self.last_resource:
                    check_can_prepare(s, None)
        t0 = time.perf_counter()
        try:
            con = src.connect(read_only=False, application_name=f"fedlab-tx:{self.gid[-12:]}")
        except FedlabError as e:
            self._mark(name, "connect", t0, False, str(e))
            raise
        part = _Participant(src, con, role="last_resource" if name == self.last_resource else "2pc")
        try:
            self._begin(part)
        except Exception as e:
            _close(con)
            self._mark(name, "connect", t0, False, f"{type(e).__name__}: {e}")
            raise StatementError(
                f"source {src.describe()}: could not begin the transaction: "
                f"{type(e).__name__}: {e}",
                gid=self.gid,
                source=name,
            ) from None
        self._parts[name] = part
        self._mark(name, "connect", t0, True, part.extra.get("begin", ""))
        if len(self._parts) > 1:
            self._check_two_phase()
        return part

    def _begin(self, part: _Participant) -> None:
        kind, con, limit = part.kind, part.con, self._limit(part.source)
        if kind == "postgresql":
            part.xid = _pg_xid(self.gid, part.name)
            part.max_prepared = pg_max_prepared_transactions(con)
            if limit:
                ms = max(int(limit * 1000), 1)
                con.execute(f"SET statement_timeout = {ms}")
                con.execute(f"SET lock_timeout = {ms}")
            con.execute("BEGIN")
            part.extra["begin"] = "BEGIN"
        elif kind == "mysql":
            part.xid = f"{self.gid}/{part.name}"
            with con.cursor() as cur:
                if limit:
                    cur.execute(f"SET SESSION max_statement_time = {max(limit, 0.001):.3f}")
                    cur.execute(f"SET SESSION innodb_lock_wait_timeout = {max(1, round(limit))}")
                cur.execute("XA START %s, %s", (self.gid, part.name))
            part.extra["begin"] = "XA START"
        elif kind == "sqlite":
            con.isolation_level = None
            con.execute("BEGIN IMMEDIATE")
            part.extra["begin"] = "BEGIN IMMEDIATE"
        else:
            con.execute("BEGIN TRANSACTION")
            part.extra["begin"] = "BEGIN"

    def _check_two_phase(self) -> None:
        """Raise before any more work if the participants cannot all take part in 2PC."""
        for p in self._parts.values():
            if p.name == self.last_resource:
                continue
            if p.kind == "postgresql":
                if (p.max_prepared or 0) <= 0:
                    check_can_prepare(p.source, p.con)
            elif p.kind not in PREPARABLE:
                check_can_prepare(p.source, None)

    def _run(
        self, name: str, sql: str, params: Any, *, last_resource: bool, fetch: bool
    ) -> tuple[Any, list[str]]:
        if self.outcome != "active":
            raise TransactionError(
                f"the transaction is over ({self.outcome}): no more statements", gid=self.gid
            )
        part = self._join(name, last_resource)
        text, args = _bind(part.kind, sql, params)
        t0 = time.perf_counter()
        short = " ".join(sql.split())[:80]
        try:
            if part.kind == "duckdb":
                cur = part.con.execute(text, args) if args is not None else part.con.execute(text)
            else:
                cur = part.con.cursor()
                if args is None:
                    cur.execute(text)
                else:
                    cur.execute(text, args)
            if fetch:
                cols = [d[0] for d in (cur.description or [])]
                rows = cur.fetchall() if cur.description else []
                result: tuple[Any, list[str]] = (rows, cols)
            else:
                result = (cur.rowcount if cur.rowcount is not None else -1, [])
        except Exception as e:
            self._mark(name, "execute", t0, False, f"{short}: {type(e).__name__}: {e}")
            raise StatementError(
                f"source {part.source.describe()}: statement failed in transaction "
                f"{self.gid}: {type(e).__name__}: {e} (SQL: {short})",
                gid=self.gid,
                source=name,
            ) from None
        part.statements += 1
        self._mark(name, "execute", t0, True, short)
        return result

    # -------------------------------------------------------------- the protocol
    def _commit(self) -> None:
        parts = list(self._parts.values())
        if not parts:
            self.outcome = "committed"
            return
        if len(parts) == 1 and self.one_phase:
            self._commit_one_phase(parts[0])
            return
        try:
            self._check_two_phase()
        except TwoPhaseUnsupportedError:
            self._rollback_all("a source cannot prepare")
            self.outcome = "rolled back"
            raise
        lr = [p for p in parts if p.name == self.last_resource]
        two = [p for p in parts if p.name != self.last_resource]
        with _ACTIVE_LOCK:
            _ACTIVE.add(self.gid)
        try:
            self._two_phase(two, lr[0] if lr else None)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self.gid)

    def _commit_one_phase(self, p: _Participant) -> None:
        if self.fail_at == "before_prepare":
            self._crash("before_prepare")
        t0 = time.perf_counter()
        try:
            _one_phase_commit(p)
        except Exception as e:
            self._mark(p.name, "commit", t0, False, f"{type(e).__name__}: {e}")
            self._rollback_all("one-phase commit failed")
            self.outcome = "rolled back"
            raise PrepareError(
                f"source {p.source.describe()}: commit failed, transaction rolled back: "
                f"{type(e).__name__}: {e}",
                gid=self.gid,
                source=p.name,
            ) from None
        p.state = "committed"
        self._mark(p.name, "commit", t0, True, "one-phase commit (single source: 2PC skipped)")
        _close(p.con)
        self.outcome = "committed"

    def _two_phase(self, two: list[_Participant], lr: _Participant | None) -> None:
        log = self.log
        t0 = time.perf_counter()
        log.begin(
            self.gid,
            self.coordinator,
            [
                (p.name, p.kind, p.xid or p.name, "last_resource" if p is lr else "2pc")
                for p in [*two, *([lr] if lr else [])]
            ],
            lr.name if lr else None,
        )
        self._mark("coordinator", "log", t0, True, "participants logged (state preparing)")
        if self.fail_at == "before_prepare":
            self._crash("before_prepare")
        # phase one
        for p in two:
            t0 = time.perf_counter()
            try:
                _prepare(p, self.gid)
            except Exception as e:
                self._mark(p.name, "prepare", t0, False, f"{type(e).__name__}: {e}")
                self._abort(f"prepare failed on {p.name}")
                raise PrepareError(
                    f"source {p.source.describe()}: prepare failed, every source rolled back "
                    f"(transaction {self.gid}): {type(e).__name__}: {e}",
                    gid=self.gid,
                    source=p.name,
                ) from None
            p.state = "prepared"
            self._mark(p.name, "prepare", t0, True, _prepare_sql(p))
            t0 = time.perf_counter()
            log.prepared(self.gid, p.name)
            self._mark("coordinator", "log", t0, True, f"prepared: {p.name}")
            if self.fail_at == f"after_prepare:{p.name}":
                self._crash(self.fail_at)
        if lr is not None:
            t0 = time.perf_counter()
            log.state(self.gid, "last_resource")
            self._mark("coordinator", "log", t0, True, "last resource committing")
            t0 = time.perf_counter()
            try:
                _one_phase_commit(lr)
            except Exception as e:
                self._mark(lr.name, "commit", t0, False, f"{type(e).__name__}: {e}")
                self._abort(f"last resource {lr.name} failed to commit")
                raise PrepareError(
                    f"source {lr.source.describe()}: the last resource failed to commit, every "
                    f"source rolled back (transaction {self.gid}): {type(e).__name__}: {e}",
                    gid=self.gid,
                    source=lr.name,
                ) from None
            lr.state = "committed"
            self._mark(lr.name, "commit", t0, True, "last resource (one-phase commit)")
            _close(lr.con)
        # the decision, durable before phase two
        t0 = time.perf_counter()
        log.decide(self.gid, "commit")
        self._mark("coordinator", "log", t0, True, "decision: commit (fsync'd)")
        if self.fail_at == "after_decision":
            self._crash("after_decision")
        # phase two
        failed: list[str] = []
        for p in two:
            if self.fail_at == f"during_commit:{p.name}":
                self._crash(self.fail_at)
            t0 = time.perf_counter()
            try:
                _commit_prepared(p, self.gid)
            except Exception as e:
                # the prepared transaction outlives its session: finish it on a new one
                self._mark(p.name, "commit", t0, False, f"{type(e).__name__}: {e}")
                _close(p.con)
                t0 = time.perf_counter()
                try:
                    detail = _commit_prepared_again(p)
                except Exception as e2:
                    failed.append(f"{p.name}: {type(e2).__name__}: {e2}")
                    self._mark(
                        p.name, "commit", t0, False, f"new session: {type(e2).__name__}: {e2}"
                    )
                    p.state = "lost"
                    continue
                p.state = "committed"
                self._mark(p.name, "commit", t0, True, detail)
                continue
            p.state = "committed"
            self._mark(p.name, "commit", t0, True, _commit_sql(p))
            _close(p.con)
        if failed:
            log.state(self.gid, "in_doubt")
            self.outcome = "in doubt"
            raise InDoubtError(
                f"transaction {self.gid}: commit decided and logged, but phase two failed on "
                f"{'; '.join(failed)}; run fed.recover() to finish it",
                gid=self.gid,
            )
        t0 = time.perf_counter()
        log.finish(self.gid, "committed")
        self._mark("coordinator", "log", t0, True, "finished: committed")
        self.outcome = "committed"

    def _abort(self, why: str) -> None:
        self._rollback_all(why)
        t0 = time.perf_counter()
        try:
            self.log.decide(self.gid, "abort")
            self.log.finish(self.gid, "rolled_back")
            self._mark("coordinator", "log", t0, True, "decision: abort")
        except Exception as e:  # the log lost: presumed abort anyway
            self._mark("coordinator", "log", t0, False, f"{type(e).__name__}: {e}")
        self.outcome = "rolled back"

    def _rollback_all(self, why: str) -> None:
        for p in self._parts.values():
            if p.state in ("committed", "rolled_back"):
                continue
            t0 = time.perf_counter()
            try:
                _rollback(p, self.gid)
                p.state = "rolled_back"
                self._mark(p.name, "rollback", t0, True, why)
            except Exception as e:
                # a prepared one that could not be rolled back stays in doubt: no commit
                # decision is logged, so fed.recover() rolls it back
                self._mark(p.name, "rollback", t0, False, f"{why}; {type(e).__name__}: {e}")
            finally:
                _close(p.con)

    def _crash(self, point: str) -> None:
        t0 = time.perf_counter()
        if callable(self.fail_mode):  # a real fault caused by the caller; then carry on
            self.fail_mode(point)
            self._mark("coordinator", "fault", t0, True, f"fail_at={point}: fail_mode called")
            return
        if self.fail_mode == "exit":
            os._exit(1)
        for p in self._parts.values():  # a dead process's sessions end: unprepared work is lost
            _close(p.con)
        self._mark("coordinator", "crash", t0, False, f"fail_at={point}")
        self.outcome = "crashed"
        raise InjectedCrash(
            f"transaction {self.gid}: simulated coordinator crash at {point} "
            "(fed.in_doubt() shows what it left; fed.recover() finishes it)",
            gid=self.gid,
        )


# ---------------------------------------------------------------------- per-kind steps
def _close(con: Any) -> None:
    with contextlib.suppress(Exception):
        con.close()


def _cursor_do(con: Any, sql: str, args: Any = None) -> None:
    with con.cursor() as cur:
        cur.execute(sql, args)


def _pg_literal(text: str) -> Any:
    from psycopg import sql

    return sql.Literal(text)


def _pg_do(con: Any, template: str, xid: str) -> None:
    from psycopg import sql

    con.execute(sql.SQL(template).format(_pg_literal(xid)))


def _prepare_sql(p: _Participant) -> str:
    return "PREPARE TRANSACTION" if p.kind == "postgresql" else "XA END + XA PREPARE"


def _commit_sql(p: _Participant) -> str:
    return "COMMIT PREPARED" if p.kind == "postgresql" else "XA COMMIT"


def _prepare(p: _Participant, gid: str) -> None:
    if p.kind == "postgresql":
        _pg_do(p.con, "PREPARE TRANSACTION {}", p.xid)
    else:
        _cursor_do(p.con, "XA END %s, %s", (gid, p.name))
        p.extra["ended"] = True
        _cursor_do(p.con, "XA PREPARE %s, %s", (gid, p.name))


def _commit_prepared(p: _Participant, gid: str) -> None:
    if p.kind == "postgresql":
        _pg_do(p.con, "COMMIT PREPARED {}", p.xid)
    else:
        _cursor_do(p.con, "XA COMMIT %s, %s", (gid, p.name))


#: phase-two attempts on a new session after the first one failed (0.1 s, 0.2 s, 0.4 s apart)
PHASE_TWO_ATTEMPTS = 3

_GONE = ("does not exist", "xaer_nota", "unknown xid")


def _commit_prepared_again(p: _Participant) -> str:
    """Commit ``p``'s prepared transaction from a new session (a few attempts with
    backoff); return the trace's detail. A transaction the server no longer lists was
    committed by the first attempt (its reply was lost): the decision is commit and only
    ``recover()`` with that decision finishes this gid."""
    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(PHASE_TWO_ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=0.1, max=1.0),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                _resolve({"_src": p.source, "kind": p.kind, "xid": p.xid}, "commit")
    except Exception as e:
        if any(w in str(e).lower() for w in _GONE):
            return f"{_commit_sql(p)} on a new session: already committed"
        raise
    return f"{_commit_sql(p)} on a new session"


def _one_phase_commit(p: _Participant) -> None:
    if p.kind == "postgresql":
        p.con.execute("COMMIT")
    elif p.kind == "mysql":
        gid = p.xid.rsplit("/", 1)[0]
        _cursor_do(p.con, "XA END %s, %s", (gid, p.name))
        p.extra["ended"] = True
        _cursor_do(p.con, "XA COMMIT %s, %s ONE PHASE", (gid, p.name))
    elif p.kind == "sqlite":
        p.con.execute("COMMIT")
    else:
        p.con.execute("COMMIT")


def _rollback(p: _Participant, gid: str) -> None:
    if p.kind == "postgresql":
        if p.state == "prepared":
            _pg_do(p.con, "ROLLBACK PREPARED {}", p.xid)
        else:
            p.con.execute("ROLLBACK")
    elif p.kind == "mysql":
        if p.state != "prepared" and not p.extra.get("ended"):
            # it may be ended already, or rolled back by the server (deadlock, timeout)
            with contextlib.suppress(Exception):
                _cursor_do(p.con, "XA END %s, %s", (gid, p.name))
        _cursor_do(p.con, "XA ROLLBACK %s, %s", (gid, p.name))
    else:
        p.con.execute("ROLLBACK")


# ---------------------------------------------------------------------- recovery
def _server_key(src: Any) -> tuple[Any, ...]:
    if src.kind == "postgresql":
        return ("postgresql", src.host, src.port, src.database or "postgres")
    return ("mysql", src.host, src.port)


def _list_prepared(fed: Any, coordinator: str) -> list[dict[str, Any]]:
    """This coordinator's prepared transactions on every attached PostgreSQL / MariaDB
    source: dicts with gid, source, kind, xid, prepared_at (datetime or None)."""
    prefix = _prefix(coordinator)
    out: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    sources = list(fed.catalog.sources.values())
    for src in sources:
        if src.kind not in PREPARABLE:
            continue
        key = _server_key(src)
        if key in seen:
            continue
        seen.add(key)
        con = src.connect(read_only=True)
        try:
            if src.kind == "postgresql":
                rows = con.execute(
                    "SELECT gid, prepared FROM pg_prepared_xacts "
                    "WHERE database = current_database() AND left(gid, %s) = %s ORDER BY prepared",
                    (len(prefix), prefix),
                ).fetchall()
                for xid, prepared in rows:
                    gid, _, name = str(xid).rpartition(":")
                    if not _GID.match(gid):
                        continue
                    out.append(
                        {
                            "gid": gid,
                            "source": name,
                            "kind": "postgresql",
                            "xid": xid,
                            "prepared_at": prepared,
                            "_src": src,
                        }
                    )
            else:
                same = [s for s in sources if s.kind == "mysql" and _server_key(s) == key]
                with con.cursor() as cur:
                    cur.execute("XA RECOVER")
                    rows = cur.fetchall()
                for _fmt, glen, blen, data in rows:
                    raw = data if isinstance(data, bytes) else str(data).encode()
                    gid = raw[:glen].decode(errors="replace")
                    bqual = raw[glen : glen + blen].decode(errors="replace")
                    if not gid.startswith(prefix) or not _GID.match(gid):
                        continue
                    owner = next((s for s in same if s.name == bqual), same[0])
                    out.append(
                        {
                            "gid": gid,
                            "source": bqual,
                            "kind": "mysql",
                            "xid": f"{gid}/{bqual}",
                            "prepared_at": None,
                            "_src": owner,
                        }
                    )
        finally:
            _close(con)
    return out


def _decisions(log: CoordinatorLog, gids: set[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for gid in gids:
        entry = log.entry(gid)
        if entry is not None:
            entry["_parts"] = {p["source"]: p for p in log.participants(gid)}
            out[gid] = entry
    return out


def in_doubt(
    fed: Any, *, log: str | Path | None = None, coordinator: str | None = None
) -> pl.DataFrame:
    """This coordinator's prepared transactions awaiting a decision, on every attached
    PostgreSQL / MariaDB source: a frame with ``gid``, ``source``, ``kind``,
    ``prepared_at`` (UTC; MariaDB: when the log saw it prepare) and ``decision`` (from the
    log: ``commit``, ``abort``, or null: none logged, which means abort)."""
    coord = _check_coordinator(coordinator) if coordinator is not None else default_coordinator()
    found = _list_prepared(fed, coord)
    decisions = _decisions(CoordinatorLog(log), {f["gid"] for f in found})
    rows = []
    for f in found:
        entry = decisions.get(f["gid"])
        at = f["prepared_at"]
        if at is None and entry is not None:
            ts = entry["_parts"].get(f["source"], {}).get("prepared_at")
            at = datetime.fromtimestamp(ts, UTC) if ts else None
        if at is not None:
            at = at.astimezone(UTC).replace(tzinfo=None)
        rows.append(
            {
                "gid": f["gid"],
                "source": f["source"],
                "kind": f["kind"],
                "prepared_at": at,
                "decision": entry["decision"] if entry else None,
            }
        )
    schema = {
        "gid": pl.String,
        "source": pl.String,
        "kind": pl.String,
        "prepared_at": pl.Datetime("us"),
        "decision": pl.String,
    }
    return pl.DataFrame(rows, schema=schema).with_columns(
        pl.col("prepared_at").dt.replace_time_zone("UTC")
    )


def recover(
    fed: Any,
    *,
    log: str | Path | None = None,
    coordinator: str | None = None,
    unknown: str = "skip",
) -> pl.DataFrame:
    """Finish this coordinator's in-doubt transactions from its log: ``COMMIT PREPARED`` /
    ``XA COMMIT`` those whose decision was logged as commit, roll back the others (presumed
    abort). Transactions still running in this process are left alone.

    ``unknown``: what to do with a prepared transaction of this coordinator that is not in
    the log at all (the log is written before any prepare, so this means the wrong log
    file): ``"skip"`` (default) or ``"rollback"``.

    Returns a frame: ``gid``, ``source``, ``decision``, ``action`` (commit, rollback,
    skipped), ``ok``, ``error``.
    """
    if unknown not in ("skip", "rollback"):
        raise ConfigError(f"unknown={unknown!r}: use 'skip' or 'rollback'")
    coord = _check_coordinator(coordinator) if coordinator is not None else default_coordinator()
    clog = CoordinatorLog(log)
    with _ACTIVE_LOCK:
        active = set(_ACTIVE)
    found = [f for f in _list_prepared(fed, coord) if f["gid"] not in active]
    decisions = _decisions(clog, {f["gid"] for f in found})
    rows: list[dict[str, Any]] = []
    for f in found:
        entry = decisions.get(f["gid"])
        decision = entry["decision"] if entry else None
        if entry is None and unknown == "skip":
            action = "skipped"
        else:
            action = "commit" if decision == "commit" else "rollback"
        error = ""
        ok = True
        if action == "skipped":
            ok = False
            error = f"not in the coordinator log {clog.path} (wrong log file?)"
        else:
            try:
                _resolve(f, action)
            except Exception as e:
                ok = False
                error = redact(f"{type(e).__name__}: {e}")
        rows.append(
            {
                "gid": f["gid"],
                "source": f["source"],
                "decision": decision,
                "action": action,
                "ok": ok,
                "error": error,
            }
        )
    # close the log entries whose participants are all resolved
    for gid, entry in decisions.items():
        mine = [r for r in rows if r["gid"] == gid]
        if mine and all(r["ok"] for r in mine):
            clog.finish(
                gid, "recovered_commit" if entry["decision"] == "commit" else "recovered_rollback"
            )
    return pl.DataFrame(
        rows,
        schema={
            "gid": pl.String,
            "source": pl.String,
            "decision": pl.String,
            "action": pl.String,
            "ok": pl.Boolean,
            "error": pl.String,
        },
    )


def _resolve(found: dict[str, Any], action: str) -> None:
    src = found["_src"]
    con = src.connect(read_only=False)
    try:
        if found["kind"] == "postgresql":
            verb = "COMMIT PREPARED {}" if action == "commit" else "ROLLBACK PREPARED {}"
            _pg_do(con, verb, found["xid"])
        else:
            gid, _, bqual = found["xid"].rpartition("/")
            verb = "XA COMMIT %s, %s" if action == "commit" else "XA ROLLBACK %s, %s"
            _cursor_do(con, verb, (gid, bqual))
    finally:
        _close(con)


# ---------------------------------------------------------------------- seams
def transaction(fed: Any, **options: Any) -> Transaction:
    """A two-phase-commit transaction over ``fed``'s sources (a context manager); see
    :class:`Transaction` for the options."""
    known = {
        "log",
        "coordinator",
        "fail_at",
        "fail_mode",
        "timeout",
        "last_resource",
        "one_phase",
    }
    bad = sorted(set(options) - known)
    if bad:
        raise ConfigError(f"fed.transaction(): unknown option(s) {bad}; known: {sorted(known)}")
    return Transaction(fed, **options)
