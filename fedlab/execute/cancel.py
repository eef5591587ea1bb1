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
    "endpoints",
    "new_query_id",
    "own_sockets",
    "server_sessions",
    "session_tag",
    "sever",
    "socket_inodes",
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
    sever_after: float | None = None,
    keep: set[int] | None = None,
) -> int:
    """Cancel every tagged session of ``query_id`` on ``sources`` until ``alive()`` is
    false (the fragment threads have returned) or ``grace`` seconds have passed; then
    terminate the sessions still open. Returns the number of signals sent.

    Repeating the scan matters: a fragment whose statement had not reached the server at
    the first scan (still in its session setup) is caught by the next one.

    ``sever_after``: if fragment threads are still alive that many seconds after the
    cancel began (a server that does not answer cannot be asked to cancel), shut down
    this process's connections to the servers opened since the query began (inodes not
    in ``keep``, see :func:`sever`), so the blocked reads return.
    """
    prefix = f"fedlab-{query_id}-"
    servers = _servers(sources)
    if not servers:
        return 0
    timer: threading.Timer | None = None
    if sever_after is not None:
        targets = endpoints(servers)
        kept = set(keep or ())

        def last_resort() -> None:
            if alive():
                sever(targets, kept)

        timer = threading.Timer(sever_after, last_resort)
        timer.name = f"fedlab-cancel-sever-{query_id}"
        timer.daemon = True
        timer.start()
    sent = 0
    end = time.monotonic() + grace
    try:
        while True:
            for s in servers:
                sent += cancel_sessions(s, prefix)
            if not alive() or time.monotonic() >= end:
                break
            time.sleep(interval)
        if alive():
            for s in servers:
                sent += cancel_sessions(s, prefix, terminate=True)
    finally:
        if timer is not None and not alive():
            timer.cancel()
    return sent


# ---------------------------------------------------------------------- severing sockets
def endpoints(sources: Iterable[Source]) -> set[tuple[str, int]]:
    """The (ip, port) pairs the server sources' connections go to."""
    import socket

    out: set[tuple[str, int]] = set()
    for s in sources:
        if s.kind not in ("postgresql", "mysql") or not s.host or not s.port:
            continue
        try:
            infos = socket.getaddrinfo(s.host, s.port, proto=socket.IPPROTO_TCP)
        except OSError:
            continue
        for info in infos:
            out.add((str(info[4][0]), int(s.port)))
    return out


def _proc_forms(ip: str, port: int) -> set[str]:
    """How ``/proc/net/tcp*`` prints (ip, port): each 32-bit word of the address in host
    (little-endian) byte order, in hex; an IPv4 address also as IPv4-mapped IPv6."""
    import ipaddress

    def words(raw: bytes) -> str:
        return "".join(raw[i : i + 4][::-1].hex().upper() for i in range(0, len(raw), 4))

    addr = ipaddress.ip_address(ip)
    forms = {f"{words(addr.packed)}:{port:04X}"}
    if addr.version == 4:
        mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
        forms.add(f"{words(mapped.packed)}:{port:04X}")
    return forms


def own_sockets() -> dict[int, int]:
    """This process's sockets: inode -> fd (Linux ``/proc/self/fd``; empty elsewhere).
    Cheap (a directory listing): the executor takes it when a query starts, so that a
    sever never touches a connection that existed before the query."""
    import os

    out: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out[int(link[8:-1])] = int(name)
    return out


def socket_inodes(targets: set[tuple[str, int]]) -> set[int]:
    """Inodes of the TCP connections (any process) to one of ``targets`` (Linux
    ``/proc/net/tcp*``; empty elsewhere)."""
    found: set[int] = set()
    if not targets:
        return found
    forms: set[str] = set()
    for ip, port in targets:
        try:
            forms |= _proc_forms(ip, port)
        except ValueError:
            continue
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) >= 10 and parts[2] in forms and parts[9] != "0":
                        found.add(int(parts[9]))
        except OSError:
            continue
    return found


def sever(targets: set[tuple[str, int]], keep: set[int]) -> int:
    """Shut down (``shutdown(SHUT_RDWR)``) this process's TCP connections to ``targets``
    whose inode is not in ``keep``; returns how many.

    The last resort for a fragment whose server stopped answering (a network partition):
    connectorx has no cancel handle and no read timeout, and the server cannot be asked to
    cancel, so its reader thread would block until the kernel gives up on the connection
    (minutes). Shutting the socket down makes the blocked read return at once; the fd stays
    open (owned by the driver, which closes it). Linux only (``/proc``); elsewhere 0.
    """
    import os
    import socket

    mine = {i: fd for i, fd in own_sockets().items() if i not in keep}
    if not mine:
        return 0
    n = 0
    for inode in socket_inodes(targets) & set(mine):
        fd = mine[inode]
        try:  # the fd may have been closed (and reused) since it was listed
            if os.readlink(f"/proc/self/fd/{fd}") != f"socket:[{inode}]":
                continue
            s = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            s.shutdown(socket.SHUT_RDWR)
            n += 1
        except OSError:
            pass
        finally:
            s.detach()  # the fd belongs to the driver
    return n
