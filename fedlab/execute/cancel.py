"""Cancellation that stops work on the servers, not only in fedlab.

connectorx has no cancel handle, so every fragment's server session is *tagged* and
cancelled from a separate short connection:

* PostgreSQL: ``SET application_name = 'fedlab-<query id>-<fragment id>'`` runs first in
  every session of the fragment (``pre_execution_query``); cancelling calls
  ``pg_cancel_backend(pid)`` for the sessions whose ``application_name`` carries the
  query's prefix (``pg_terminate_backend`` for any still there after a grace period).
* MariaDB / MySQL: the SQL sent starts with the comment ``/* fedlab-<qid>-<fid> */``, which
  ``information_schema.processlist.info`` shows; cancelling runs ``KILL QUERY <id>``
  (``KILL CONNECTION`` after the grace period).
* SQLite and DuckDB run inside this process: their readers watch the fragment's cancel
  event (the SQLite progress handler; ``DuckDBPyConnection.interrupt()`` from a watcher).

The tag is added when the SQL is sent (:func:`tag_sql`), never to ``Fragment.sql``, which
stays the fragment cache's key. The executor publishes each running fragment's
:class:`FetchContext` through :data:`CURRENT` (a context variable read by the fetch seam in
the worker thread).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fedlab.source import Source

__all__ = [
    "CURRENT",
    "FetchContext",
    "cancel_query",
    "cancel_sessions",
    "new_query_id",
    "server_sessions",
    "session_tag",
    "tag_sql",
]


def new_query_id() -> str:
    """A short random id naming one query's sessions on the servers."""
    return uuid.uuid4().hex[:12]


def session_tag(query_id: str, fragment_id: str) -> str:
    """``fedlab-<query id>-<fragment id>``: the name of a fragment's server sessions."""
    return f"fedlab-{query_id}-{fragment_id}"


def tag_sql(sql: str, kind: str, tag: str | None) -> str:
    """The SQL to send: for MariaDB/MySQL the tag as a leading comment (it shows in the
    process list); other kinds are tagged through the session (``application_name``)."""
    if tag is None or kind != "mysql":
        return sql
    return f"/* {tag} */ {sql}"


@dataclass
class FetchContext:
    """What the executor tells the fetch seam about the fragment it is reading.

    Attributes:
        tag: the fragment's session tag (:func:`session_tag`).
        cancelled: set when the query is cancelled (deadline, another fragment failed,
            KeyboardInterrupt): in-process readers stop when they see it.
        max_rows: stop reading this fragment after ``max_rows + 1`` rows and fail.
        max_bytes: fail a fragment whose rows weigh more (checked after the read).
    """

    tag: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    max_rows: int | None = None
    max_bytes: int | None = None


#: the fragment being read in this thread (set by the executor, read by the fetch seam)
CURRENT: contextvars.ContextVar[FetchContext | None] = contextvars.ContextVar(
    "fedlab_fetch_context", default=None
)


def _like(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def server_sessions(source: Source, prefix: str) -> list[int]:
    """Ids (PostgreSQL pids, MariaDB connection ids) of the sessions whose tag starts with
    ``prefix`` (``fedlab-<qid>-`` for a whole query), other than the looking session."""
    con = source.connect(read_only=False)
    try:
        if source.kind == "postgresql":
            rows = con.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s "
                "AND pid <> pg_backend_pid()",
                (_like(prefix),),
            ).fetchall()
        elif source.kind == "mysql":
            with con.cursor() as cur:
                cur.execute(
                    "SELECT id FROM information_schema.processlist WHERE info LIKE %s "
                    "AND id <> CONNECTION_ID()",
                    ("%/* " + _like(prefix),),
                )
                rows = cur.fetchall()
        else:
            return []
        return [int(r[0]) for r in rows]
    finally:
        con.close()


def cancel_sessions(source: Source, prefix: str, *, terminate: bool = False) -> int:
    """Cancel the running statements of the sessions tagged ``prefix…`` on ``source``
    (``terminate=True``: close those sessions). Returns how many were signalled.

    Best effort, quick and quiet: a source that does not answer within its connect
    timeout is skipped (the statement timeout set on each session still bounds the work).
    """
    if source.kind not in ("postgresql", "mysql"):
        return 0
    try:
        con = source.connect(read_only=False)
    except Exception:
        return 0
    n = 0
    try:
        if source.kind == "postgresql":
            fn = "pg_terminate_backend" if terminate else "pg_cancel_backend"
            rows = con.execute(
                f"SELECT {fn}(pid) FROM pg_stat_activity WHERE application_name LIKE %s "
                "AND pid <> pg_backend_pid()" + ("" if terminate else " AND state = 'active'"),
                (_like(prefix),),
            ).fetchall()
            n = len(rows)
        else:
            with con.cursor() as cur:
                cur.execute(
                    "SELECT id FROM information_schema.processlist WHERE info LIKE %s "
                    "AND id <> CONNECTION_ID()",
                    ("%/* " + _like(prefix),),
                )
                for (pid,) in cur.fetchall():
                    with contextlib.suppress(Exception):  # it may have finished meanwhile
                        cur.execute(f"KILL {'CONNECTION' if terminate else 'QUERY'} {int(pid)}")
                        n += 1
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            con.close()
    return n


def _servers(sources: Iterable[Source]) -> list[Source]:
    """One source per server (host, port, kind): a scan covers every database on it."""
    seen: dict[tuple, Source] = {}
    for s in sources:
        if s.kind in ("postgresql", "mysql"):
            seen.setdefault((s.kind, s.host, s.port), s)
    return list(seen.values())


def cancel_query(
    query_id: str,
    sources: Iterable[Source],
    alive: Callable[[], bool],
    *,
    grace: float = 1.0,
    interval: float = 0.2,
) -> int:
    """Cancel every tagged session of ``query_id`` on ``sources`` until ``alive()`` is
    false (the fragment threads have returned) or ``grace`` seconds have passed; then
    terminate the sessions still open. Returns the number of signals sent.

    Repeating the scan matters: a fragment whose statement had not reached the server at
    the first scan (still in its session setup) is caught by the next one.
    """
    prefix = f"fedlab-{query_id}-"
    servers = _servers(sources)
    if not servers:
        return 0
    sent = 0
    end = time.monotonic() + grace
    while True:
        for s in servers:
            sent += cancel_sessions(s, prefix)
        if not alive() or time.monotonic() >= end:
            break
        time.sleep(interval)
    if alive():
        for s in servers:
            sent += cancel_sessions(s, prefix, terminate=True)
    return sent
