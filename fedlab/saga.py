"""Sagas: a sequence of local transactions, each with a compensation, across sources.

A saga never holds a lock on two databases at once. Each step runs in its **own local
transaction** on its source and commits; if a later step fails, the steps that committed
are undone, in reverse order, by their **compensations** (also local transactions). The
result is eventual consistency: between the steps, other sessions can see the partial
state; at the end, either every step is applied or every applied step is compensated.

>>> s = fed.saga(name="transfer", log="sagas.sqlite")                  # doctest: +SKIP
>>> s.step("debit", "bank", "UPDATE accounts SET balance = balance - :amt WHERE id = :id",
...        "UPDATE accounts SET balance = balance + :amt WHERE id = :id",
...        params={"amt": 100, "id": 1})                               # doctest: +SKIP
>>> s.step("credit", "shop", "UPDATE wallets SET balance = balance + :amt WHERE id = :id",
...        "UPDATE wallets SET balance = balance - :amt WHERE id = :id",
...        params={"amt": 100, "id": 7})                               # doctest: +SKIP
>>> res = s.run()                                                      # doctest: +SKIP
>>> res.status, res.ran, res.failed, res.compensated                   # doctest: +SKIP
('done', ['debit', 'credit'], None, [])

Durability. Every step's progress (started, done, failed, compensated) is written to a
**saga log**, a SQLite file (``log=``; default ``$FEDLAB_SAGA_LOG`` or
``$XDG_STATE_HOME/fedlab/sagas.sqlite``, i.e. ``~/.local/state/fedlab/sagas.sqlite``).
A saga interrupted by a crash is listed by ``fed.saga(log=...).pending()`` and can be
finished with ``.resume(saga_id)`` or undone with ``.compensate(saga_id)`` from another
process. The log stores source *names* and SQL, never URLs or passwords.

Idempotency. Each step has a key (``key=``; default ``"<saga_id>:<step>"``). fedlab keeps
a table ``fedlab_saga_keys`` in every participant database and inserts the key **in the
same local transaction as the step's change**: both commit or neither does, so a crash can
never leave the change without its key (or the key without the change). A step whose key
is already there is skipped (it was applied before, e.g. by the run that crashed); the same
holds for compensations (kind ``compensation``), and a compensation runs only if its
step's action key is present. A key names one business operation: a second saga that uses
the same key skips the step, and compensating it undoes that one operation.

SQL in steps takes ``:name`` parameters (``params={"name": value}``) on every kind of
source; fedlab converts them to the driver's style (values are never pasted into the SQL).
An action or compensation may also be a list of SQL statements, or a Python callable
``f(conn)`` receiving the DB-API connection inside the step's transaction (callable steps
cannot be resumed from the log alone: declare the same steps again before ``resume``).

Failure injection for teaching and tests: ``fed.saga(fail_at="action:NAME")`` makes step
NAME fail *after* its SQL and its key insert ran, before the commit (so neither stays);
``"compensation:NAME"`` does the same to a compensation; ``"crash_after:NAME"`` ends the
process (``os._exit``) right after step NAME committed and was logged, as a kill would
(use it only in a script or a child process).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from fedlab.errors import (
    FedlabError,
    SagaError,
    SagaFailedError,
    SagaStuckError,
)
from fedlab.security import redact

__all__ = ["KEYS_TABLE", "Saga", "SagaResult", "SagaStep", "default_log_path", "saga"]

#: the idempotency-key table fedlab creates in every participant database
KEYS_TABLE = "fedlab_saga_keys"

#: exit status of a process ended by ``fail_at="crash_after:NAME"``
CRASH_EXIT_STATUS = 86

Action = str | Sequence[str] | Callable[[Any], Any]

_KEYS_DDL = {
    "postgresql": (
        f"CREATE TABLE IF NOT EXISTS {KEYS_TABLE} ("
        "step_key VARCHAR(255) NOT NULL, kind VARCHAR(16) NOT NULL, "
        "saga_id VARCHAR(64) NOT NULL, step VARCHAR(255) NOT NULL, "
        "applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
        "PRIMARY KEY (step_key, kind))"
    ),
    "mysql": (
        f"CREATE TABLE IF NOT EXISTS {KEYS_TABLE} ("
        "step_key VARCHAR(255) NOT NULL, kind VARCHAR(16) NOT NULL, "
        "saga_id VARCHAR(64) NOT NULL, step VARCHAR(255) NOT NULL, "
        "applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, "
        "PRIMARY KEY (step_key, kind)) ENGINE=InnoDB CHARACTER SET utf8mb4"
    ),
}
_KEYS_DDL["sqlite"] = _KEYS_DDL["postgresql"]
_KEYS_DDL["duckdb"] = _KEYS_DDL["postgresql"]

_LOG_DDL = (
    """CREATE TABLE IF NOT EXISTS sagas (
        saga_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, mode TEXT NOT NULL,
        created REAL NOT NULL, updated REAL NOT NULL, pid INTEGER, host TEXT,
        failed_step TEXT, error TEXT)""",
    """CREATE TABLE IF NOT EXISTS saga_steps (
        saga_id TEXT NOT NULL, idx INTEGER NOT NULL, step TEXT NOT NULL,
        source TEXT NOT NULL, step_key TEXT NOT NULL, status TEXT NOT NULL,
        definition TEXT, error TEXT, PRIMARY KEY (saga_id, idx))""",
    """CREATE TABLE IF NOT EXISTS saga_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, saga_id TEXT NOT NULL, idx INTEGER NOT NULL,
        step TEXT, source TEXT, phase TEXT NOT NULL, event TEXT NOT NULL, at REAL NOT NULL,
        pid INTEGER, detail TEXT)""",
)

#: saga statuses that are not final
PENDING_STATUSES = ("running", "compensating", "stuck")


def default_log_path() -> Path:
    """Where the saga log lives when ``log=`` is not given: ``$FEDLAB_SAGA_LOG``, else
    ``$XDG_STATE_HOME/fedlab/sagas.sqlite`` (by default ``~/.local/state/fedlab/``)."""
    env = os.environ.get("FEDLAB_SAGA_LOG")
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "fedlab" / "sagas.sqlite"


# ---------------------------------------------------------------------------- steps
@dataclass
class SagaStep:
    """One step: a forward action and its compensation, both on ``source``.

    Attributes:
        name: unique within the saga.
        source: the attached source's name.
        action: SQL text, a list of SQL statements, or a callable ``f(conn)``.
        compensation: the same kinds, or None (nothing to undo).
        params: ``:name`` parameters of the SQL (action and compensation).
        key: the idempotency key (None: ``"<saga_id>:<name>"``).
    """

    name: str
    source: str
    action: Action
    compensation: Action | None = None
    params: Mapping[str, Any] | None = None
    key: str | None = None

    def key_for(self, saga_id: str) -> str:
        """The idempotency key of this step in saga ``saga_id``."""
        return self.key if self.key is not None else f"{saga_id}:{self.name}"

    def definition(self) -> str | None:
        """JSON of the step for the log, or None when it cannot be stored (callables,
        parameters that are not JSON)."""
        if callable(self.action) or callable(self.compensation):
            return None
        try:
            return json.dumps(
                {
                    "action": _as_list(self.action),
                    "compensation": None
                    if self.compensation is None
                    else _as_list(self.compensation),
                    "params": dict(self.params) if self.params else None,
                    "key": self.key,
                }
            )
        except (TypeError, ValueError):
            return None


def _as_list(sql: str | Sequence[str]) -> list[str]:
    return [sql] if isinstance(sql, str) else list(sql)


# ---------------------------------------------------------------------------- result
@dataclass
class SagaResult:
    """What a saga did.

    Attributes:
        saga_id: the id in the log (for ``resume`` / ``compensate``).
        name: the saga's name.
        status: ``done`` (every step applied), ``compensated`` (a step failed and the
            applied steps were undone), ``stuck`` (a compensation failed; see ``error``),
            ``running`` (interrupted; resume or compensate it).
        ran: steps whose action is applied (or was, before a compensation), in order.
        skipped: steps not run because their key was already there (applied before).
        failed: the step that failed (None: none).
        error: the failure, naming the step and the source (None: none).
        compensated: steps whose compensation ran, in the order it ran (reverse).
        trace: one row per action / compensation attempt (see :meth:`Saga.trace`).
        log: the saga log's path.
    """

    saga_id: str
    name: str
    status: str
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: str | None = None
    error: str | None = None
    compensated: list[str] = field(default_factory=list)
    trace: pl.DataFrame = field(default_factory=pl.DataFrame, repr=False)
    log: Path | None = None

    @property
    def ok(self) -> bool:
        """Every step applied."""
        return self.status == "done"

    def __str__(self) -> str:
        parts = [f"saga {self.name!r} ({self.saga_id}): {self.status}"]
        parts.append(f"ran {self.ran}")
        if self.skipped:
            parts.append(f"skipped (key already there) {self.skipped}")
        if self.failed:
            parts.append(f"failed {self.failed!r}")
        if self.compensated:
            parts.append(f"compensated {self.compensated}")
        text = "; ".join(parts)
        return text + (f"\n  {self.error}" if self.error else "")


# ---------------------------------------------------------------------------- the log
class _Log:
    """The saga log: a SQLite file; every write is its own committed transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._con() as con:
                for ddl in _LOG_DDL:
                    con.execute(ddl)
        except (OSError, sqlite3.Error) as e:
            raise SagaError(f"saga log {str(path)!r} cannot be used: {e}") from None

    @contextmanager
    def _con(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=10)
        try:
            with con:
                yield con
        finally:
            con.close()

    def create(
        self, saga_id: str, name: str, steps: Sequence[SagaStep], *, mode: str = "declared"
    ) -> None:
        now = time.time()
        with self._con() as con:
            con.execute(
                "INSERT INTO sagas VALUES (?, ?, 'running', ?, ?, ?, ?, ?, NULL, NULL)",
                (saga_id, name, mode, now, now, os.getpid(), socket.gethostname()),
            )
            con.executemany(
                "INSERT INTO saga_steps VALUES (?, ?, ?, ?, ?, 'pending', ?, NULL)",
                [
                    (saga_id, i, s.name, s.source, s.key_for(saga_id), s.definition())
                    for i, s in enumerate(steps)
                ],
            )
            con.execute(
                "INSERT INTO saga_events (saga_id, idx, phase, event, at, pid) "
                "VALUES (?, -1, 'saga', 'created', ?, ?)",
                (saga_id, now, os.getpid()),
            )

    def add_step(self, saga_id: str, idx: int, step: SagaStep) -> None:
        with self._con() as con:
            con.execute(
                "INSERT INTO saga_steps VALUES (?, ?, ?, ?, ?, 'pending', ?, NULL)",
                (saga_id, idx, step.name, step.source, step.key_for(saga_id), step.definition()),
            )

    def event(
        self,
        saga_id: str,
        idx: int,
        step: SagaStep | None,
        phase: str,
        event: str,
        *,
        step_status: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append an event; update the step's status (and error) in the same write."""
        now = time.time()
        with self._con() as con:
            con.execute(
                "INSERT INTO saga_events (saga_id, idx, step, source, phase, event, at, pid, "
                "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    saga_id,
                    idx,
                    step.name if step else None,
                    step.source if step else None,
                    phase,
                    event,
                    now,
                    os.getpid(),
                    detail,
                ),
            )
            if step_status is not None:
                con.execute(
                    "UPDATE saga_steps SET status = ?, error = ? WHERE saga_id = ? AND idx = ?",
                    (step_status, detail if event == "failed" else None, saga_id, idx),
                )
            con.execute("UPDATE sagas SET updated = ? WHERE saga_id = ?", (now, saga_id))

    def set_status(
        self,
        saga_id: str,
        status: str,
        *,
        failed_step: str | None = None,
        error: str | None = None,
        claim: bool = False,
    ) -> None:
        now = time.time()
        with self._con() as con:
            con.execute(
                "UPDATE sagas SET status = ?, updated = ?, failed_step = COALESCE(?, failed_step),"
                " error = ? WHERE saga_id = ?",
                (status, now, failed_step, error, saga_id),
            )
            if claim:
                con.execute(
                    "UPDATE sagas SET pid = ?, host = ? WHERE saga_id = ?",
                    (os.getpid(), socket.gethostname(), saga_id),
                )
            con.execute(
                "INSERT INTO saga_events (saga_id, idx, phase, event, at, pid, detail) "
                "VALUES (?, -1, 'saga', ?, ?, ?, ?)",
                (saga_id, status, now, os.getpid(), error),
            )

    def saga(self, saga_id: str) -> dict[str, Any]:
        with self._con() as con:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM sagas WHERE saga_id = ?", (saga_id,)).fetchone()
            if row is None:
                raise SagaError(f"no saga {saga_id!r} in the saga log {str(self.path)!r}")
            steps = con.execute(
                "SELECT * FROM saga_steps WHERE saga_id = ? ORDER BY idx", (saga_id,)
            ).fetchall()
        return {**dict(row), "steps": [dict(s) for s in steps]}

    def events(self, saga_id: str | None) -> list[dict[str, Any]]:
        with self._con() as con:
            con.row_factory = sqlite3.Row
            if saga_id is None:
                rows = con.execute("SELECT * FROM saga_events ORDER BY id").fetchall()
            else:
                rows = con.execute(
                    "SELECT * FROM saga_events WHERE saga_id = ? ORDER BY id", (saga_id,)
                ).fetchall()
        return [dict(r) for r in rows]

    def pending(self) -> list[dict[str, Any]]:
        marks = ", ".join("?" for _ in PENDING_STATUSES)
        with self._con() as con:
            con.row_factory = sqlite3.Row
            rows = con.execute(
                f"SELECT s.*, (SELECT count(*) FROM saga_steps t WHERE t.saga_id = s.saga_id "
                f"AND t.status = 'done') AS steps_done, (SELECT count(*) FROM saga_steps t "
                f"WHERE t.saga_id = s.saga_id) AS steps_total FROM sagas s "
                f"WHERE s.status IN ({marks}) ORDER BY s.created",
                PENDING_STATUSES,
            ).fetchall()
        return [dict(r) for r in rows]


# ---------------------------------------------------------------------------- SQL helpers
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _convert(sql: str, params: Mapping[str, Any] | None, kind: str) -> tuple[str, Any]:
    """``:name`` parameters to the driver's style, outside quotes and comments."""
    if not params:
        return sql, None
    out: list[str] = []
    used: dict[str, Any] = {}
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote
                        j += 2
                        continue
                    break
                j += 1
            out.append(_escape_percent(sql[i : j + 1], kind))
            i = j + 1
            continue
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(_escape_percent(sql[i:j], kind))
            i = j
            continue
        if sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(_escape_percent(sql[i:j], kind))
            i = j
            continue
        m = _PARAM.match(sql, i) if c == ":" and (i == 0 or sql[i - 1] != ":") else None
        if m and not sql.startswith("::", i):
            name = m.group(1)
            if name not in params:
                raise SagaError(f"SQL parameter :{name} has no value (params has {sorted(params)})")
            used[name] = params[name]
            out.append(
                {"postgresql": f"%({name})s", "mysql": f"%({name})s", "duckdb": f"${name}"}.get(
                    kind, f":{name}"
                )
            )
            i = m.end()
            continue
        out.append(_escape_percent(c, kind))
        i += 1
    return "".join(out), used


def _escape_percent(text: str, kind: str) -> str:
    return text.replace("%", "%%") if kind in ("postgresql", "mysql") else text


class _DuckResult:
    """DuckDB's ``con.cursor()`` is a second connection with its own transaction, so
    statements run on the connection itself; this wraps it like a cursor whose
    ``close()`` leaves the connection open."""

    def __init__(self, con: Any) -> None:
        self._con = con

    def fetchone(self) -> Any:
        return self._con.fetchone()

    def close(self) -> None:
        pass


def _execute(con: Any, kind: str, sql: str, params: Any = None) -> Any:
    """Run one statement in the connection's transaction; return a cursor."""
    if kind == "duckdb":
        con.execute(sql) if params is None else con.execute(sql, params)
        return _DuckResult(con)
    cur = con.cursor()
    if params is None:
        cur.execute(sql)
    else:
        cur.execute(sql, params)
    return cur


def _begin(con: Any, kind: str) -> None:
    if kind == "postgresql":
        con.autocommit = False  # psycopg opens the transaction at the first statement
    elif kind == "mysql":
        con.begin()
    elif kind == "sqlite":
        con.execute("BEGIN IMMEDIATE")
    else:
        con.execute("BEGIN TRANSACTION")


def _commit(con: Any, kind: str) -> None:
    if kind in ("postgresql", "mysql"):
        con.commit()
    else:
        con.execute("COMMIT")


def _rollback(con: Any, kind: str) -> None:
    try:
        if kind in ("postgresql", "mysql"):
            con.rollback()
        else:
            con.execute("ROLLBACK")
    except Exception:  # the connection may be gone: the server rolls back on its own
        pass


def _keys_table_exists(con: Any, kind: str) -> bool:
    try:
        cur = _execute(con, kind, f"SELECT 1 FROM {KEYS_TABLE} WHERE 1 = 0")
        cur.close()
        return True
    except Exception:
        _rollback(con, kind)
        return False


#: advisory lock id that serialises the keys table's creation on PostgreSQL
_KEYS_LOCK = 0x6665646C  # "fedl"


def _ensure_keys_table(con: Any, kind: str) -> None:
    """Create ``fedlab_saga_keys`` if missing. On PostgreSQL two sessions running
    ``CREATE TABLE IF NOT EXISTS`` at once can both pass the check and one fails on
    ``pg_type``'s unique index; a transaction-scoped advisory lock serialises them."""
    if kind != "postgresql":
        _execute(con, kind, _KEYS_DDL[kind]).close()
        return
    autocommit = con.autocommit
    con.autocommit = False
    try:
        _execute(con, kind, f"SELECT pg_advisory_xact_lock({_KEYS_LOCK})").close()
        _execute(con, kind, _KEYS_DDL[kind]).close()
        con.commit()
    except BaseException:
        _rollback(con, kind)
        raise
    finally:
        con.autocommit = autocommit


def _placeholders(kind: str, count: int) -> str:
    mark = {"postgresql": "%s", "mysql": "%s", "duckdb": "?", "sqlite": "?"}[kind]
    return ", ".join([mark] * count)


def _has_key(con: Any, kind: str, key: str, what: str) -> bool:
    cur = _execute(
        con,
        kind,
        f"SELECT 1 FROM {KEYS_TABLE} WHERE step_key = {_placeholders(kind, 1)} "
        f"AND kind = {_placeholders(kind, 1)}",
        (key, what),
    )
    found = cur.fetchone() is not None
    cur.close()
    return found


def _claim_key(con: Any, kind: str, key: str, what: str, saga_id: str, step: str) -> bool:
    """Insert the key inside the open transaction; False when it was already there."""
    values = (key, what, saga_id, step)
    cols = f"{KEYS_TABLE} (step_key, kind, saga_id, step) VALUES ({_placeholders(kind, 4)})"
    if kind == "duckdb":
        if _has_key(con, kind, key, what):
            return False
        _execute(con, kind, f"INSERT INTO {cols}", values).close()
        return True
    sql = {
        "postgresql": f"INSERT INTO {cols} ON CONFLICT DO NOTHING",
        "mysql": f"INSERT IGNORE INTO {cols}",
        "sqlite": f"INSERT OR IGNORE INTO {cols}",
    }[kind]
    cur = _execute(con, kind, sql, values)
    claimed = cur.rowcount == 1
    cur.close()
    return claimed


class _InjectedFault(Exception):
    """Raised by ``fail_at`` inside a step's transaction."""


def _describe(e: BaseException) -> str:
    if isinstance(e, FedlabError):
        return f"{type(e).__name__}: {e}"
    return redact(f"{type(e).__name__}: {e}".strip())


# ---------------------------------------------------------------------------- the saga
class Saga:
    """A saga over ``fed``'s sources (made by ``fed.saga(...)``).

    Args:
        fed: the federation whose attached sources the steps name.
        log: the saga log (a SQLite file; created if missing). None: :func:`default_log_path`.
        name: a label for the saga (shown in ``pending()`` and the trace).
        compensation_retries: extra attempts of a failing compensation before the saga is
            marked ``stuck``.
        retry_delay: seconds between those attempts (doubled each time).
        fail_at: failure injection: ``"action:NAME"``, ``"compensation:NAME"`` or
            ``"crash_after:NAME"`` (see the module's documentation).

    Use it in one of two ways:

    * declare steps with :meth:`step`, then :meth:`run` them: the result tells what ran,
      what failed and what was compensated (a failure is not raised: check ``.ok``; a
      failed compensation raises :class:`~fedlab.errors.SagaStuckError`);
    * ``with fed.saga() as s: s.step(...)``: each step runs as soon as it is declared, so
      Python code can sit between steps; a failing step compensates the applied ones and
      raises :class:`~fedlab.errors.SagaFailedError`; an exception of your own in the block
      compensates them too (and propagates). The outcome is in ``s.result``.

    The same object also reads and repairs the log: :meth:`pending`, :meth:`resume`,
    :meth:`compensate`, :meth:`trace`.
    """

    def __init__(
        self,
        fed: Any,
        *,
        log: str | Path | None = None,
        name: str = "saga",
        compensation_retries: int = 2,
        retry_delay: float = 0.05,
        fail_at: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise SagaError(f"saga name must be a non-empty string, got {name!r}")
        if not isinstance(compensation_retries, int) or compensation_retries < 0:
            raise SagaError(
                f"compensation_retries must be a whole number >= 0, got {compensation_retries!r}"
            )
        if fail_at is not None:
            point, _, target = str(fail_at).partition(":")
            if point not in ("action", "compensation", "crash_after") or not target:
                raise SagaError(
                    f"fail_at={fail_at!r}: expected 'action:STEP', 'compensation:STEP' or "
                    "'crash_after:STEP'"
                )
        self.fed = fed
        self.name = name
        self.log_path = Path(log).expanduser().resolve() if log else default_log_path()
        self._log = _Log(self.log_path)
        self.compensation_retries = compensation_retries
        self.retry_delay = retry_delay
        self.fail_at = fail_at
        self.steps: list[SagaStep] = []
        self.saga_id: str | None = None
        self.result: SagaResult | None = None
        self._eager = False
        self._ready: set[str] = set()  # sources whose keys table exists
        self._ran: list[str] = []
        self._skipped: list[str] = []

    def __repr__(self) -> str:
        return (
            f"Saga(name={self.name!r}, steps={[s.name for s in self.steps]}, "
            f"saga_id={self.saga_id!r}, log={str(self.log_path)!r})"
        )

    # ------------------------------------------------------------------ declaring
    def step(
        self,
        name: str,
        source: str,
        action: Action,
        compensation: Action | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> Saga:
        """Add a step: ``action`` on ``source``, undone by ``compensation``.

        ``action`` / ``compensation``: SQL (``:name`` parameters from ``params``), a list of
        SQL statements, or a callable ``f(conn)`` (the connection is inside the step's
        transaction: do not commit). ``key``: the idempotency key (default
        ``"<saga_id>:<name>"``). Inside ``with``, the step runs at once.
        """
        if self.result is not None:
            raise SagaError(f"saga {self.name!r} has already run; make a new one with fed.saga()")
        if not isinstance(name, str) or not name:
            raise SagaError(f"step name must be a non-empty string, got {name!r}")
        if any(s.name == name for s in self.steps):
            raise SagaError(f"saga {self.name!r} already has a step named {name!r}")
        self._source(source)
        for what, a in (("action", action), ("compensation", compensation)):
            if a is None and what == "compensation":
                continue
            if not (callable(a) or isinstance(a, str) or _is_str_list(a)):
                raise SagaError(
                    f"step {name!r}: {what} must be SQL text, a list of SQL statements or a "
                    f"callable f(conn), got {type(a).__name__}"
                )
        if params is not None and not isinstance(params, Mapping):
            raise SagaError(f"step {name!r}: params must be a mapping of :name -> value")
        if key is not None and (not isinstance(key, str) or not key or len(key) > 255):
            raise SagaError(f"step {name!r}: key must be a non-empty string of <= 255 chars")
        st = SagaStep(name, source, action, compensation, params, key)
        self.steps.append(st)
        if self._eager:
            assert self.saga_id is not None
            idx = len(self.steps) - 1
            self._log.add_step(self.saga_id, idx, st)
            try:
                self._forward(idx)
            except _StepFailed as f:
                res = self._fail_and_compensate(f.idx, f.error, ambiguous=f.ambiguous)
                raise SagaFailedError(
                    f"saga {self.name!r} ({self.saga_id}) failed: {res.error}; "
                    f"compensated {res.compensated}",
                    saga_id=self.saga_id,
                    step=f.step.name,
                    source=f.step.source,
                    result=res,
                ) from None
        return self

    def _source(self, name: str) -> Any:
        sources = getattr(getattr(self.fed, "catalog", None), "sources", {})
        if name not in sources:
            raise SagaError(
                f"no source named {name!r} is attached "
                f"(attached: {', '.join(sorted(sources)) or 'none'})"
            )
        src = sources[name]
        if src.kind not in _KEYS_DDL:
            raise SagaError(f"source {name!r}: sagas do not support {src.kind} sources")
        return src

    # ------------------------------------------------------------------ running
    def run(self) -> SagaResult:
        """Run the declared steps in order; on a failure compensate the applied ones in
        reverse. Returns the :class:`SagaResult`; raises ``SagaStuckError`` when a
        compensation fails."""
        if self.result is not None or self.saga_id is not None:
            raise SagaError(f"saga {self.name!r} has already run; make a new one with fed.saga()")
        if not self.steps:
            raise SagaError(f"saga {self.name!r} has no steps (add some with .step(...))")
        self.saga_id = uuid.uuid4().hex[:16]
        self._log.create(self.saga_id, self.name, self.steps)
        return self._run_from(0)

    def __enter__(self) -> Saga:
        if self.result is not None or self.saga_id is not None or self.steps:
            raise SagaError("use a fresh fed.saga() as a context manager (no steps declared)")
        self.saga_id = uuid.uuid4().hex[:16]
        self._log.create(self.saga_id, self.name, [], mode="block")
        self._eager = True
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._eager = False
        if self.result is not None:  # a step failed and was handled in step()
            return
        assert self.saga_id is not None
        if exc is None:
            self._log.set_status(self.saga_id, "done")
            self.result = self._result("done")
            return
        error = f"the code in the saga's block raised {_describe(exc)}"
        self._compensate_applied(len(self.steps) - 1, error=error, failed=None)

    def _run_from(self, start: int) -> SagaResult:
        assert self.saga_id is not None
        for idx in range(start, len(self.steps)):
            try:
                self._forward(idx)
            except _StepFailed as f:
                return self._fail_and_compensate(f.idx, f.error, ambiguous=f.ambiguous)
        self._log.set_status(self.saga_id, "done")
        self.result = self._result("done")
        return self.result

    def _forward(self, idx: int) -> None:
        """Run step ``idx``'s action in one local transaction with its key; log it."""
        assert self.saga_id is not None
        st = self.steps[idx]
        key = st.key_for(self.saga_id)
        self._log.event(self.saga_id, idx, st, "action", "started", step_status="started")
        outcome = "failed"
        ambiguous = False
        try:
            src = self._source(st.source)
            con = self._open(src)
            try:
                _begin(con, src.kind)
                try:
                    if not _claim_key(con, src.kind, key, "action", self.saga_id, st.name):
                        outcome = "skipped"
                        _rollback(con, src.kind)
                    else:
                        self._apply(con, src.kind, st.action, st.params)
                        if self.fail_at == f"action:{st.name}":
                            raise _InjectedFault(
                                f"injected failure (fail_at={self.fail_at!r}) after the "
                                "action and its key, before the commit"
                            )
                        ambiguous = True
                        _commit(con, src.kind)
                        outcome = "done"
                except BaseException:
                    _rollback(con, src.kind)
                    raise
            finally:
                con.close()
        except Exception as e:
            error = (
                f"step {st.name!r} on source {st.source!r} failed"
                f"{' at commit (outcome unknown)' if ambiguous else ''}: {_describe(e)}"
            )
            self._log.event(
                self.saga_id, idx, st, "action", "failed", step_status="failed", detail=error
            )
            raise _StepFailed(idx, st, error, ambiguous) from None
        if outcome == "skipped":
            self._skipped.append(st.name)
            detail = f"key {key!r} already in {KEYS_TABLE}: applied before, not run again"
        else:
            detail = None
        self._ran.append(st.name)
        self._log.event(self.saga_id, idx, st, "action", outcome, step_status="done", detail=detail)
        if self.fail_at == f"crash_after:{st.name}":
            os._exit(CRASH_EXIT_STATUS)

    def _apply(self, con: Any, kind: str, what: Action, params: Mapping[str, Any] | None) -> None:
        if callable(what):
            what(con)
            return
        for sql in _as_list(what):
            sql, args = _convert(sql, params, kind)
            _execute(con, kind, sql, args).close()

    def _open(self, src: Any) -> Any:
        con = src.connect(read_only=False, application_name=f"fedlab-saga:{self.name}")
        try:
            if src.kind == "sqlite":
                con.isolation_level = None  # fedlab issues BEGIN / COMMIT itself
            if src.name not in self._ready:
                _ensure_keys_table(con, src.kind)
                self._ready.add(src.name)
        except Exception:
            con.close()
            raise
        return con

    # ------------------------------------------------------------------ compensating
    def _fail_and_compensate(self, idx: int, error: str, *, ambiguous: bool) -> SagaResult:
        """Step ``idx`` failed: compensate the steps before it (and it, when its commit's
        outcome is unknown) in reverse."""
        last = idx if ambiguous else idx - 1
        return self._compensate_applied(last, error=error, failed=self.steps[idx].name)

    def _compensate_applied(self, last: int, *, error: str, failed: str | None) -> SagaResult:
        assert self.saga_id is not None
        self._log.set_status(self.saga_id, "compensating", failed_step=failed, error=error)
        compensated: list[str] = []
        for i in range(last, -1, -1):
            status = self._log.saga(self.saga_id)["steps"][i]["status"]
            if status in ("pending", "compensated"):
                continue
            try:
                if self._backward(i):
                    compensated.append(self.steps[i].name)
            except _StepFailed as f:
                res = self._result("stuck", failed=failed, error=error, compensated=compensated)
                stuck = (
                    f"saga {self.name!r} ({self.saga_id}) is stuck: {f.error}. "
                    f"It was compensating because {error}. Fix the cause, then run "
                    f"fed.saga(log={str(self.log_path)!r}).compensate({self.saga_id!r})"
                )
                res.error = stuck
                self._log.set_status(self.saga_id, "stuck", error=stuck)
                self.result = res
                raise SagaStuckError(
                    stuck,
                    saga_id=self.saga_id,
                    step=f.step.name,
                    source=f.step.source,
                    result=res,
                ) from None
        self._log.set_status(self.saga_id, "compensated", error=error)
        self.result = self._result(
            "compensated", failed=failed, error=error, compensated=compensated
        )
        return self.result

    def _backward(self, idx: int) -> bool:
        """Compensate step ``idx`` in one local transaction with its key. True when the
        compensation ran (False: nothing was applied, or it ran before)."""
        assert self.saga_id is not None
        st = self.steps[idx]
        key = st.key_for(self.saga_id)
        self._log.event(
            self.saga_id, idx, st, "compensation", "started", step_status="compensating"
        )
        if st.compensation is None:
            self._log.event(
                self.saga_id,
                idx,
                st,
                "compensation",
                "no_compensation",
                step_status="compensated",
                detail="the step declares no compensation",
            )
            return False
        delay = self.retry_delay
        for attempt in range(self.compensation_retries + 1):
            outcome = "failed"
            try:
                src = self._source(st.source)
                con = self._open(src)
                try:
                    _begin(con, src.kind)
                    try:
                        if not _has_key(con, src.kind, key, "action"):
                            outcome = "not_applied"
                        elif not _claim_key(
                            con, src.kind, key, "compensation", self.saga_id, st.name
                        ):
                            outcome = "skipped"
                        else:
                            self._apply(con, src.kind, st.compensation, st.params)
                            if self.fail_at == f"compensation:{st.name}":
                                raise _InjectedFault(
                                    f"injected failure (fail_at={self.fail_at!r}) after the "
                                    "compensation and its key, before the commit"
                                )
                            _commit(con, src.kind)
                            outcome = "compensated"
                        if outcome != "compensated":
                            _rollback(con, src.kind)
                    except BaseException:
                        _rollback(con, src.kind)
                        raise
                finally:
                    con.close()
            except Exception as e:
                error = (
                    f"the compensation of step {st.name!r} on source {st.source!r} failed "
                    f"(attempt {attempt + 1} of {self.compensation_retries + 1}): {_describe(e)}"
                )
                last = attempt == self.compensation_retries
                self._log.event(
                    self.saga_id,
                    idx,
                    st,
                    "compensation",
                    "failed",
                    step_status="stuck" if last else "compensating",
                    detail=error,
                )
                if last:
                    raise _StepFailed(idx, st, error, False) from None
                time.sleep(delay)
                delay *= 2
                self._log.event(self.saga_id, idx, st, "compensation", "started")
                continue
            details = {
                "not_applied": f"key {key!r} not in {KEYS_TABLE}: the action never committed",
                "skipped": f"compensation key {key!r} already in {KEYS_TABLE}: ran before",
            }
            self._log.event(
                self.saga_id,
                idx,
                st,
                "compensation",
                outcome,
                step_status="compensated",
                detail=details.get(outcome),
            )
            return outcome == "compensated"
        return False  # pragma: no cover (the loop returns or raises)

    # ------------------------------------------------------------------ recovery
    def _load(self, saga_id: str) -> dict[str, Any]:
        """Read saga ``saga_id`` from the log and bind this object to it."""
        if self.saga_id is not None and self.saga_id != saga_id:
            raise SagaError(
                f"this saga object is bound to saga {self.saga_id!r}; use a fresh fed.saga()"
            )
        info = self._log.saga(saga_id)
        logged = info["steps"]
        if self.steps:
            want = [(s["step"], s["source"]) for s in logged]
            have = [(s.name, s.source) for s in self.steps]
            if want != have:
                raise SagaError(
                    f"saga {saga_id!r}: the declared steps {have} differ from the logged ones "
                    f"{want}"
                )
        else:
            for s in logged:
                if s["definition"] is None:
                    raise SagaError(
                        f"saga {saga_id!r}: step {s['step']!r} is a Python callable (or has "
                        "parameters that are not JSON) and cannot be rebuilt from the log; "
                        "declare the same steps with .step(...) before resume/compensate"
                    )
                d = json.loads(s["definition"])
                self._source(s["source"])
                self.steps.append(
                    SagaStep(
                        s["step"],
                        s["source"],
                        d["action"],
                        d["compensation"],
                        d["params"],
                        d["key"],
                    )
                )
        self.saga_id = saga_id
        self.name = info["name"]
        self._ran = [s["step"] for s in logged if s["status"] == "done"]
        return info

    def _check_not_running(self, info: dict[str, Any]) -> None:
        if info["status"] not in ("running", "compensating"):
            return
        pid, host = info["pid"], info["host"]
        if pid != os.getpid() and host == socket.gethostname() and _alive(pid):
            raise SagaError(
                f"saga {info['saga_id']!r} is still {info['status']} in process {pid}; "
                "wait for it (or end it) before taking it over"
            )

    def resume(self, saga_id: str) -> SagaResult:
        """Finish an interrupted saga: run its steps that are not done (a step that was
        interrupted is run again; its key makes that safe). A failure compensates as
        :meth:`run` does."""
        info = self._load(saga_id)
        if info["status"] == "done":
            self.result = self._result("done")
            return self.result
        if info["mode"] == "block":
            raise SagaError(
                f"saga {saga_id!r} ran as a `with fed.saga()` block: its later steps were "
                f"Python code that cannot be replayed; use .compensate({saga_id!r})"
            )
        if info["status"] != "running":
            raise SagaError(
                f"saga {saga_id!r} is {info['status']}, not running: it cannot be resumed "
                f"(use .compensate({saga_id!r}) to finish undoing it)"
            )
        self._check_not_running(info)
        self._log.set_status(saga_id, "running", claim=True)
        first = next(
            (i for i, s in enumerate(info["steps"]) if s["status"] != "done"), len(self.steps)
        )
        return self._run_from(first)

    def compensate(self, saga_id: str) -> SagaResult:
        """Undo an unfinished (or stuck) saga: compensate, in reverse, every step that may
        have been applied; a step whose action key is not in its database is left alone."""
        info = self._load(saga_id)
        if info["status"] in ("compensated", "done"):
            if info["status"] == "compensated":
                self.result = self._result("compensated", error=info["error"])
                return self.result
            raise SagaError(
                f"saga {saga_id!r} is done: every step is applied and it is not compensated "
                "(a finished saga is undone by a new saga, not by compensate)"
            )
        self._check_not_running(info)
        self._log.set_status(saga_id, info["status"], error=info["error"], claim=True)
        error = info["error"] or "compensate() was called on an unfinished saga"
        return self._compensate_applied(
            len(self.steps) - 1, error=error, failed=info["failed_step"]
        )

    # ------------------------------------------------------------------ reading the log
    def pending(self) -> pl.DataFrame:
        """Unfinished sagas in the log (running, compensating or stuck), oldest first:
        saga_id, name, status, steps_done, steps_total, failed_step, error, pid, host,
        alive (the process still runs: True/False on this host, null elsewhere), created,
        updated."""
        rows = []
        here = socket.gethostname()
        for r in self._log.pending():
            rows.append(
                {
                    "saga_id": r["saga_id"],
                    "name": r["name"],
                    "status": r["status"],
                    "steps_done": r["steps_done"],
                    "steps_total": r["steps_total"],
                    "failed_step": r["failed_step"],
                    "error": r["error"],
                    "pid": r["pid"],
                    "host": r["host"],
                    "alive": _alive(r["pid"]) if r["host"] == here else None,
                    "created": _ts(r["created"]),
                    "updated": _ts(r["updated"]),
                }
            )
        schema = {
            "saga_id": pl.Utf8,
            "name": pl.Utf8,
            "status": pl.Utf8,
            "steps_done": pl.Int64,
            "steps_total": pl.Int64,
            "failed_step": pl.Utf8,
            "error": pl.Utf8,
            "pid": pl.Int64,
            "host": pl.Utf8,
            "alive": pl.Boolean,
            "created": pl.Datetime("us", "UTC"),
            "updated": pl.Datetime("us", "UTC"),
        }
        return pl.DataFrame(rows, schema=schema)

    def prune_keys(
        self, older_than: float | dt.timedelta, *, sources: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Delete idempotency keys older than ``older_than`` (seconds or a timedelta, by
        each database's own clock) from ``fedlab_saga_keys`` on ``sources`` (default: every
        attached source that has the table), except the keys of sagas this log still lists
        as unfinished (running, compensating, stuck): those are needed to resume or
        compensate safely. A retry after its key was pruned would apply the step again, so
        keep keys longer than any retry may come. Returns one row per source: source,
        deleted."""
        seconds = older_than.total_seconds() if isinstance(older_than, dt.timedelta) else older_than
        if not isinstance(seconds, (int, float)) or seconds < 0:
            raise SagaError(f"older_than must be >= 0 seconds or a timedelta, got {older_than!r}")
        keep = [r["saga_id"] for r in self._log.pending()]
        names = list(sources) if sources is not None else list(self.fed.catalog.sources)
        rows = []
        for name in names:
            src = self._source(name) if sources is not None else self.fed.catalog.sources[name]
            if src.kind not in _KEYS_DDL:
                continue
            con = src.connect(read_only=False, application_name=f"fedlab-saga:{self.name}")
            try:
                if src.kind == "sqlite":
                    con.isolation_level = None
                if not _keys_table_exists(con, src.kind):
                    continue
                cutoff = {
                    "postgresql": f"CURRENT_TIMESTAMP - make_interval(secs => {float(seconds)})",
                    "mysql": f"NOW() - INTERVAL {float(seconds)} SECOND",
                    "sqlite": f"datetime('now', '-{float(seconds)} seconds')",
                    "duckdb": f"CAST(now() AS TIMESTAMP) - to_microseconds({int(seconds * 1e6)})",
                }[src.kind]
                sql = f"DELETE FROM {KEYS_TABLE} WHERE applied_at <= {cutoff}"
                if keep:
                    sql += f" AND saga_id NOT IN ({_placeholders(src.kind, len(keep))})"
                _begin(con, src.kind)
                cur = _execute(con, src.kind, sql, tuple(keep) if keep else None)
                deleted = cur.fetchone()[0] if src.kind == "duckdb" else cur.rowcount
                cur.close()
                _commit(con, src.kind)
            finally:
                con.close()
            rows.append({"source": name, "deleted": int(deleted)})
        return pl.DataFrame(rows, schema={"source": pl.Utf8, "deleted": pl.Int64})

    def trace(self, saga_id: str | None = None) -> pl.DataFrame:
        """One row per action / compensation attempt of saga ``saga_id`` (default: this
        saga), in the order they started: saga_id, step, source, phase (``action`` or
        ``compensation``), start, end (UTC datetimes; end is null when the process died
        mid-step), start_s, end_s (seconds since the saga's first event), ok, outcome
        (done, skipped, failed, compensated, not_applied, no_compensation, interrupted),
        pid, detail. For a timeline plot: one bar per row from start_s to end_s."""
        sid = saga_id or self.saga_id
        if sid is None:
            raise SagaError("no saga to trace: pass a saga_id or run the saga first")
        return _trace(self._log.events(sid))

    def _result(
        self,
        status: str,
        *,
        failed: str | None = None,
        error: str | None = None,
        compensated: list[str] | None = None,
    ) -> SagaResult:
        assert self.saga_id is not None
        return SagaResult(
            saga_id=self.saga_id,
            name=self.name,
            status=status,
            ran=list(self._ran),
            skipped=list(self._skipped),
            failed=failed,
            error=error,
            compensated=compensated or [],
            trace=_trace(self._log.events(self.saga_id)),
            log=self.log_path,
        )


class _StepFailed(Exception):
    def __init__(self, idx: int, step: SagaStep, error: str, ambiguous: bool) -> None:
        super().__init__(error)
        self.idx = idx
        self.step = step
        self.error = error
        self.ambiguous = ambiguous


def _is_str_list(a: Any) -> bool:
    return (
        isinstance(a, Sequence)
        and not isinstance(a, str)
        and len(a) > 0
        and all(isinstance(x, str) for x in a)
    )


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _ts(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


_ENDS = ("done", "skipped", "failed", "compensated", "not_applied", "no_compensation")


def _trace(events: list[dict[str, Any]]) -> pl.DataFrame:
    rows: list[dict[str, Any]] = []
    open_: dict[tuple[int, str], dict[str, Any]] = {}
    t0 = events[0]["at"] if events else 0.0
    for ev in events:
        if ev["phase"] == "saga":
            continue
        k = (ev["idx"], ev["phase"])
        if ev["event"] == "started":
            if k in open_:  # started again without an end: the process died
                rows.append(open_.pop(k))
            row = {
                "saga_id": ev["saga_id"],
                "step": ev["step"],
                "source": ev["source"],
                "phase": ev["phase"],
                "start": _ts(ev["at"]),
                "end": None,
                "start_s": ev["at"] - t0,
                "end_s": None,
                "ok": False,
                "outcome": "interrupted",
                "pid": ev["pid"],
                "detail": None,
            }
            open_[k] = row
            continue
        if ev["event"] in _ENDS and k in open_:
            row = open_.pop(k)
            row.update(
                end=_ts(ev["at"]),
                end_s=ev["at"] - t0,
                ok=ev["event"] != "failed",
                outcome=ev["event"],
                detail=ev["detail"],
            )
            rows.append(row)
    rows.extend(open_.values())
    rows.sort(key=lambda r: r["start_s"])
    schema = {
        "saga_id": pl.Utf8,
        "step": pl.Utf8,
        "source": pl.Utf8,
        "phase": pl.Utf8,
        "start": pl.Datetime("us", "UTC"),
        "end": pl.Datetime("us", "UTC"),
        "start_s": pl.Float64,
        "end_s": pl.Float64,
        "ok": pl.Boolean,
        "outcome": pl.Utf8,
        "pid": pl.Int64,
        "detail": pl.Utf8,
    }
    return pl.DataFrame(rows, schema=schema)


def saga(fed: Any, **options: Any) -> Saga:
    """A saga over ``fed``'s sources: ``fed.saga(log=..., name=...)`` (see :class:`Saga`)."""
    return Saga(fed, **options)
