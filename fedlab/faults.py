"""A TCP proxy that injects network faults between fedlab and a real database server
(for tests, and for notebook 08 to show failures for real).

It runs an asyncio event loop in a background thread, so a test (or a notebook) drives it
from ordinary synchronous code; every mode switch has taken effect when the call returns.

>>> from fedlab.faults import FaultProxy
>>> with FaultProxy("127.0.0.1", 5432) as proxy:          # doctest: +SKIP
...     fed.attach("crm", f"postgresql://postgres@127.0.0.1:{proxy.port}/crm")
...     proxy.refuse()          # new connections: ECONNREFUSED (the port is closed)
...     proxy.passthrough()     # the port is open again, bytes flow
...     proxy.reset()           # every open connection gets a TCP RST (one-shot)

Modes (one at a time; each call replaces the previous mode):

==========================  =====================================================================
``passthrough()``           the default: bytes flow both ways unchanged (reopens a refused port)
``delay(s, at="chunk")``    every chunk, in either direction, waits ``s`` seconds before it is
                            relayed; ``at="connect"``: a new connection waits ``s`` seconds
                            before the proxy connects to the server (a slow server greeting)
``blackhole()``             connections are accepted and nothing is answered: new ones never
                            reach the server, open ones stop relaying (a network partition).
                            Switching back to ``passthrough()`` lets the held bytes flow again
``refuse()``                the listening socket is closed: new connections are refused
                            (ECONNREFUSED); open connections are left alone
``drop_after(n)``           each connection is cut with a TCP RST once ``n`` bytes have come
                            back from the server on it (a server dying mid-result)
==========================  =====================================================================

One action that is not a mode: ``reset()`` sends a TCP RST on every open connection (both
the client and the server side) and leaves the mode as it was.

Counters (read them any time): ``accepted`` (connections accepted so far), ``open``
(connections open now), ``resets`` (connections the proxy cut with an RST).

``close()`` (or leaving the ``with`` block) closes every connection, stops the loop and
joins its thread: no thread or socket is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

__all__ = ["FaultProxy"]

_CHUNK = 65536


class _Conn:
    """One client connection and its server side."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.down = 0  # bytes relayed server -> client
        self.tasks: list[asyncio.Task[Any]] = []
        self.closed = False


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """A fault-injecting TCP proxy to ``target_host:target_port`` on ``host:port``.

    Args:
        target_host, target_port: the real server.
        host: where the proxy listens (loopback by default).
        port: the port to listen on (0: a free port, see :attr:`port`).
    """

    def __init__(
        self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self.accepted = 0
        self.resets = 0
        self._mode = "passthrough"
        self._delay = 0.0
        self._delay_at = "chunk"
        self._drop_after: int | None = None
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._flowing: asyncio.Event | None = None

    # ------------------------------------------------------------------ life cycle
    def start(self) -> FaultProxy:
        """Start the loop thread and listen; returns self (``.port`` is then set)."""
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(ready.set)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"faultproxy-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait()
        self._call(self._init())
        return self

    def close(self) -> None:
        """Close the listener and every connection, stop the loop, join the thread."""
        if self._thread is None or self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        self._thread = None
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]} "
            f"{self.mode}, {self.open} open, {self.accepted} accepted>"
        )

    # ------------------------------------------------------------------ modes
    @property
    def mode(self) -> str:
        """The current mode, e.g. ``passthrough``, ``delay 0.5s per chunk``, ``refuse``."""
        if self._mode == "delay":
            return f"delay {self._delay:g}s per {self._delay_at}"
        if self._mode == "drop_after":
            return f"drop_after {self._drop_after} bytes"
        return self._mode

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def passthrough(self) -> None:
        """Bytes flow unchanged; a refused port listens again; held bytes are released."""
        self._call(self._set("passthrough"))

    def delay(self, seconds: float, *, at: str = "chunk") -> None:
        """Delay every relayed chunk (``at="chunk"``) or every new connection (``"connect"``)."""
        if at not in ("chunk", "connect"):
            raise ValueError("at must be 'chunk' or 'connect'")
        self._call(self._set("delay", delay=seconds, at=at))

    def blackhole(self) -> None:
        """Accept connections, answer nothing (open connections stop relaying too)."""
        self._call(self._set("blackhole"))

    def refuse(self) -> None:
        """Close the listening socket: new connections are refused."""
        self._call(self._set("refuse"))

    def drop_after(self, nbytes: int) -> None:
        """Cut each connection (RST) once ``nbytes`` have come back from the server on it."""
        self._call(self._set("drop_after", drop=nbytes))

    def reset(self) -> int:
        """Send a TCP RST on every open connection now; returns how many were cut."""
        return self._call(self._reset_all())

    # ------------------------------------------------------------------ loop side
    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not running (use it as a context manager)")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _init(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _set(
        self, mode: str, *, delay: float = 0.0, at: str = "chunk", drop: int | None = None
    ) -> None:
        assert self._flowing is not None
        self._mode, self._delay, self._delay_at, self._drop_after = mode, delay, at, drop
        if mode == "refuse":
            if self._server is not None:
                self._server.close()
                self._server = None
        else:
            await self._listen()
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "drop_after":
            for conn in list(self._conns):
                if drop is not None and conn.down >= drop:
                    self._cut(conn)

    async def _reset_all(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            self._cut(conn)
        return len(conns)

    def _cut(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.resets += 1
        _rst(conn.client)
        _rst(conn.server)
        self._conns.discard(conn)
        for t in conn.tasks:
            if t is not asyncio.current_task():
                t.cancel()

    def _finish(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        for w in (conn.client, conn.server):
            if w is not None:
                w.transport.abort()
        for t in conn.tasks:
            if t is not asyncio.current_task():
                t.cancel()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        conns = list(self._conns)
        for conn in conns:
            self._finish(conn)
        tasks = [t for c in conns for t in c.tasks if t is not asyncio.current_task()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.accepted += 1
        conn = _Conn(writer)
        self._conns.add(conn)
        me = asyncio.current_task()
        if me is not None:
            conn.tasks.append(me)
        try:
            await self._flowing.wait()  # blackhole: accepted, never connected upstream
            if self._mode == "delay" and self._delay_at == "connect":
                await asyncio.sleep(self._delay)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                self._cut(conn)
                return
            conn.server = up_writer
            if conn.closed:  # reset while connecting
                _rst(up_writer)
                return
            pumps = [
                asyncio.create_task(self._pump(conn, reader, up_writer, down=False)),
                asyncio.create_task(self._pump(conn, up_reader, writer, down=True)),
            ]
            conn.tasks += pumps
            await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            self._finish(conn)

    async def _pump(
        self,
        conn: _Conn,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        *,
        down: bool,
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if self._mode == "delay" and self._delay_at == "chunk":
                    await asyncio.sleep(self._delay)
                if conn.closed:
                    return
                if down and self._mode == "drop_after" and self._drop_after is not None:
                    room = self._drop_after - conn.down
                    if len(data) >= room:
                        if room > 0:
                            dst.write(data[:room])
                            conn.down += room
                            with contextlib.suppress(ConnectionError):
                                await dst.drain()
                        self._cut(conn)
                        return
                if down:
                    conn.down += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        # one side finished: close both (database protocols do not half-close)
        self._finish(conn)
