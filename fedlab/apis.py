"""The demo's REST services and the seed's API gateway (section 6, "API Gateway Federation").

One small JSON service per demo database, each a real HTTP server on loopback
(starlette + uvicorn) over its own SQLite file, as in the seed's diagram::

    users     GET /users          ?page=&per_page=  (or ?limit=&offset=)  ?id= ?country=
              GET /users/_meta    columns, primary key, filters, pagination, rows
              GET /users/{id}
    orders    GET /orders         ?user_id= ?product_id= ?status= ?id=  (repeat = IN)
              GET /orders/_meta
              GET /orders/{id}
              GET /users/{id}/orders
    products  GET /products       ?id= ?category=
              GET /products/_meta
              GET /products/{id}
    gateway   GET /api/users/{id}/orders   the seed's gateway: GET /users/{id} on the user
                                           service, GET /orders?user_id={id} (every page)
                                           on the order service, combined

A list answers ``{"items": [...], "page": 1, "per_page": 100, "total": 600, "next": url}``
(``next`` is null on the last page). Filters are exact (SQLite ``=``: case- and
pad-sensitive); an unknown parameter is a 400 that lists the known ones.

From a notebook or a test::

    import fedlab as fl
    with fl.apis.serve_demo_apis() as apis:          # free ports on 127.0.0.1
        fed = apis.federation()                     # users_api, orders_api, products_api
        fed.sql("SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id "
                "WHERE u.id = 35")
        cmp = fl.apis.compare_gateway(fed, user_id=35, gateway=apis.urls["gateway"])
        cmp.table; cmp.plot()

From a shell: ``fedlab serve-demo-apis [--port-base 8001] [--host 127.0.0.1]
[--demo-dir DIR]`` (users on the base port, orders +1, products +2, gateway +3).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import polars as pl

from fedlab.errors import ConfigError, FedlabError, SourceUnavailableError
from fedlab.security import redact, register_secret

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fedlab.federation import Federation

__all__ = [
    "GATEWAY_SQL",
    "SERVICES",
    "DemoAPIs",
    "GatewayComparison",
    "GatewayResult",
    "TableService",
    "compare_gateway",
    "gateway_app",
    "gateway_user_orders",
    "main",
    "serve_demo_apis",
    "table_app",
]

#: the demo's services: name -> (database file, table, filter columns)
SERVICES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "users": ("users.db", "users", ("id", "country")),
    "orders": ("orders.db", "orders", ("id", "user_id", "product_id", "status")),
    "products": ("products.db", "products", ("id", "category")),
}

#: the seed's gateway question as one federated SQL query over the REST sources
#: (``{users}`` / ``{orders}``: the sources' names)
GATEWAY_SQL = (
    "SELECT u.id AS user_id, u.name, o.id AS order_id, o.product_id, o.quantity, o.total, "
    "o.status FROM {users}.users u JOIN {orders}.orders o ON o.user_id = u.id "
    "WHERE u.id = :user_id"
)
#: the same columns, for the hand-written flow's combined answer
_USER_COLUMNS = {"id": "user_id", "name": "name"}
_ORDER_COLUMNS = {"id": "order_id", "product_id": "product_id", "quantity": "quantity"}
_ORDER_COLUMNS |= {"total": "total", "status": "status"}


# ---------------------------------------------------------------------- one table service
@dataclass
class TableService:
    """One table of one SQLite file served as a JSON collection.

    Attributes:
        name: the collection's path segment (``/orders``).
        db: the SQLite file (opened read-only per request).
        table: the table in it.
        filters: columns that may be filtered by ``?col=value`` (repeated: IN).
        page_size: rows per page when ``per_page`` / ``limit`` is not given.
        max_page_size: the largest page a client may ask for.
        delay: seconds every request waits first (a slower, farther service).
        token: when set, every request must carry ``Authorization: Bearer <token>``
            (else HTTP 401).
    """

    name: str
    db: Path
    table: str
    filters: tuple[str, ...] = ()
    page_size: int = 100
    max_page_size: int = 1000
    delay: float = 0.0
    token: str | None = field(default=None, repr=False)
    columns: list[tuple[str, str]] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    #: every request: path, query, status, body bytes, ms (newest last)
    log: collections.deque = field(default_factory=lambda: collections.deque(maxlen=10_000))
    #: the next ``fail[0]`` requests answer HTTP ``fail[1]`` (fault injection)
    fail: list[int] = field(default_factory=lambda: [0, 503])
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.db = Path(self.db)
        if not self.db.is_file():
            raise ConfigError(f"service {self.name!r}: database file {str(self.db)!r} not found")
        con = self._connect()
        try:
            info = con.execute(f"PRAGMA table_info({_q(self.table)})").fetchall()
        finally:
            con.close()
        if not info:
            raise ConfigError(f"service {self.name!r}: no table {self.table!r} in {self.db}")
        self.columns = [(r[1], (r[2] or "TEXT").upper()) for r in info]
        self.primary_key = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
        names = {n for n, _ in self.columns}
        bad = [f for f in self.filters if f not in names]
        if bad:
            raise ConfigError(f"service {self.name!r}: filter columns {bad} not in {self.table}")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, check_same_thread=False)

    def meta(self) -> dict[str, Any]:
        """The ``_meta`` document (see :mod:`fedlab.rest`)."""
        con = self._connect()
        try:
            rows = con.execute(f"SELECT COUNT(*) FROM {_q(self.table)}").fetchone()[0]
        finally:
            con.close()
        return {
            "service": f"fedlab demo {self.name}",
            "version": "1",
            "name": self.table,
            "columns": [{"name": n, "type": t} for n, t in self.columns],
            "primary_key": self.primary_key,
            "filters": list(self.filters),
            "pagination": {
                "style": "page",
                "page_param": "page",
                "size_param": "per_page",
                "limit_param": "limit",
                "offset_param": "offset",
                "page_size": self.page_size,
                "max_page_size": self.max_page_size,
            },
            "items_key": "items",
            "rows": rows,
        }

    # ------------------------------------------------------------------ queries
    def _value(self, column: str, text: str) -> Any:
        declared = dict(self.columns)[column]
        if "INT" in declared:
            return int(text)
        if declared.startswith("BOOL"):
            low = text.lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError(f"not a boolean: {text!r}")
            return 1 if low in ("true", "1") else 0
        return text

    def _row(self, names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
        types = dict(self.columns)
        out = {}
        for n, v in zip(names, values, strict=True):
            t = types.get(n, "")
            if v is not None and t.startswith("BOOL"):
                v = bool(v)
            elif v is not None and any(k in t for k in ("DEC", "NUM", "REAL", "FLOA", "DOUB")):
                v = float(v)
            out[n] = v
        return out

    def select(
        self, where: Mapping[str, Sequence[Any]], limit: int | None, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """(rows of one page, total rows matching ``where``) in primary-key order."""
        conds, args = [], []
        for col, values in where.items():
            conds.append(f"{_q(col)} IN ({', '.join('?' for _ in values)})")
            args.extend(values)
        clause = f" WHERE {' AND '.join(conds)}" if conds else ""
        order = ", ".join(_q(c) for c in self.primary_key) or "rowid"
        names = [n for n, _ in self.columns]
        cols = ", ".join(_q(n) for n in names)
        con = self._connect()
        try:
            total = con.execute(f"SELECT COUNT(*) FROM {_q(self.table)}{clause}", args).fetchone()[
                0
            ]
            page = con.execute(
                f"SELECT {cols} FROM {_q(self.table)}{clause} ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, -1 if limit is None else limit, offset],
            ).fetchall()
        finally:
            con.close()
        return [self._row(names, r) for r in page], total

    def record(self, path: str, query: str, status: int, nbytes: int, ms: float) -> None:
        with self._lock:
            self.log.append(
                {"path": path, "query": query, "status": status, "bytes": nbytes, "ms": ms}
            )

    def take_failure(self) -> int | None:
        with self._lock:
            if self.fail[0] > 0:
                self.fail[0] -= 1
                return self.fail[1]
        return None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_response(body: Any, status: int = 200) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


def _logged(service: TableService, handler: Callable) -> Callable:
    """Count and time every request, inject failures, add the service's delay."""

    async def endpoint(request: Any) -> Any:
        t0 = time.perf_counter()
        if service.delay:
            await asyncio.sleep(service.delay)
        status = service.take_failure()
        if service.token and request.headers.get("authorization") != f"Bearer {service.token}":
            response = _json_response({"detail": "missing or wrong bearer token"}, 401)
        elif status is not None:
            response = _json_response({"detail": f"injected failure ({status})"}, status)
        else:
            try:
                response = handler(request)
            except _BadRequest as e:
                response = _json_response({"detail": str(e)}, 400)
        service.record(
            request.url.path,
            request.url.query,
            response.status_code,
            len(response.body),
            (time.perf_counter() - t0) * 1000,
        )
        return response

    return endpoint


class _BadRequest(Exception):
    pass


def _page_args(service: TableService, params: Any) -> tuple[int, int, str]:
    """(limit, offset, style) from ``page``/``per_page`` or ``limit``/``offset``."""

    def number(key: str, lo: int) -> int | None:
        if key not in params:
            return None
        try:
            v = int(params[key])
        except ValueError:
            raise _BadRequest(f"{key} must be a whole number, got {params[key]!r}") from None
        if v < lo:
            raise _BadRequest(f"{key} must be >= {lo}, got {v}")
        return v

    if "limit" in params or "offset" in params:
        limit = number("limit", 1) or service.page_size
        offset = number("offset", 0) or 0
        style = "offset"
    else:
        limit = number("per_page", 1) or service.page_size
        page = number("page", 1) or 1
        offset = (page - 1) * min(limit, service.max_page_size)
        style = "page"
    if limit > service.max_page_size:
        raise _BadRequest(f"at most {service.max_page_size} rows per page, asked {limit}")
    return limit, offset, style


_PAGING = ("page", "per_page", "limit", "offset")


def _list(service: TableService, request: Any, fixed: Mapping[str, Any] | None = None) -> Any:
    params = request.query_params
    unknown = sorted(set(params.keys()) - set(service.filters) - set(_PAGING))
    if unknown:
        raise _BadRequest(
            f"unknown parameter(s) {unknown}; filters: {list(service.filters)}, "
            f"paging: page/per_page or limit/offset"
        )
    where: dict[str, list[Any]] = {}
    for col in service.filters:
        values = params.getlist(col)
        if values:
            try:
                where[col] = [service._value(col, v) for v in values]
            except ValueError as e:
                raise _BadRequest(f"bad value for {col}: {e}") from None
    for col, v in (fixed or {}).items():
        where[col] = [v]
    limit, offset, style = _page_args(service, params)
    rows, total = service.select(where, limit, offset)
    more = offset + len(rows) < total
    nxt = None
    if more:
        keep = [(k, v) for k, v in params.multi_items() if k not in _PAGING]
        if style == "offset":
            keep += [("limit", str(limit)), ("offset", str(offset + len(rows)))]
        else:
            keep += [("page", str(offset // limit + 2)), ("per_page", str(limit))]
        nxt = str(request.url.replace(query=urlencode(keep)))
    body: dict[str, Any] = {"items": rows, "total": total, "next": nxt}
    if style == "offset":
        body |= {"limit": limit, "offset": offset}
    else:
        body |= {"page": offset // limit + 1, "per_page": limit}
    return _json_response(body)


def _item(service: TableService, request: Any) -> Any:
    key = service.primary_key[0] if len(service.primary_key) == 1 else None
    if key is None:
        raise _BadRequest(f"{service.name} has no single-column key")
    try:
        value = service._value(key, request.path_params["key"])
    except ValueError as e:
        raise _BadRequest(f"bad {key}: {e}") from None
    rows, _ = service.select({key: [value]}, 1, 0)
    if not rows:
        return _json_response({"detail": f"{service.table} {value} not found"}, 404)
    return _json_response(rows[0])


def table_routes(service: TableService) -> list[Any]:
    """The starlette routes of one collection: list, ``_meta`` and one item."""
    from starlette.routing import Route

    base = f"/{service.name}"
    return [
        Route(base, _logged(service, lambda r: _list(service, r))),
        Route(f"{base}/_meta", _logged(service, lambda r: _json_response(service.meta()))),
        Route(f"{base}/{{key}}", _logged(service, lambda r: _item(service, r))),
    ]


def table_app(service: TableService, extra: Sequence[Any] = ()) -> Any:
    """A starlette app serving one :class:`TableService` (plus ``extra`` routes)."""
    from starlette.applications import Starlette

    return Starlette(routes=[*table_routes(service), *extra])


def _user_orders_route(orders: TableService) -> Any:
    """``GET /users/{id}/orders`` on the order service: one user's orders."""
    from starlette.routing import Route

    def handler(request: Any) -> Any:
        try:
            uid = int(request.path_params["uid"])
        except ValueError:
            raise _BadRequest("user id must be a whole number") from None
        return _list(orders, request, fixed={"user_id": uid})

    return Route("/users/{uid}/orders", _logged(orders, handler))


# ---------------------------------------------------------------------- the gateway
@dataclass
class GatewayResult:
    """What the hand-written gateway flow got, and what it cost.

    Attributes:
        user: the user (None: the user service answered 404).
        orders: the user's orders (every page).
        calls: HTTP requests made (pages included).
        bytes: response body bytes received.
        latency_s: wall time of the whole flow.
        requests: ``(url, status, bytes, seconds)`` per request, in order.
    """

    user: dict[str, Any] | None
    orders: list[dict[str, Any]]
    calls: int
    bytes: int
    latency_s: float
    requests: list[tuple[str, int, int, float]] = field(default_factory=list)

    @property
    def df(self) -> pl.DataFrame:
        """The combined answer as rows (one per order), columns as :data:`GATEWAY_SQL`."""
        schema = {
            "user_id": pl.Int64,
            "name": pl.String,
            "order_id": pl.Int64,
            "product_id": pl.Int64,
            "quantity": pl.Int64,
            "total": pl.Float64,
            "status": pl.String,
        }
        if self.user is None:
            return pl.DataFrame(schema=schema)
        rows = []
        for o in self.orders:
            row = {new: self.user.get(old) for old, new in _USER_COLUMNS.items()}
            row |= {new: o.get(old) for old, new in _ORDER_COLUMNS.items()}
            rows.append(row)
        return pl.DataFrame(rows, schema=schema, orient="row")

    def to_json(self) -> dict[str, Any]:
        """The gateway's unified response (step 4 of the seed)."""
        return {"user": self.user, "orders": self.orders}


def _headers_of(source: Any) -> dict[str, str]:
    state = getattr(source, "rest", None)
    return dict(state.options.headers) if state is not None else {}


def gateway_user_orders(
    users: str,
    orders: str,
    user_id: int,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    page_size: int | None = None,
) -> GatewayResult:
    """The seed's gateway logic, by hand, from the client:

    1. call the user API: ``GET {users}/{user_id}``;
    2. call the order API: ``GET {orders}?user_id={user_id}`` (and its next pages);
    3. combine; 4. return the unified response.

    ``users`` / ``orders``: the collections' URLs (``http://127.0.0.1:8001/users``…).
    A user the user API does not know (404) ends the flow with no orders, as a gateway
    answering 404 would. Counts calls, body bytes and wall time.
    """
    import httpx

    from fedlab.rest import quote_path, ssl_context

    log: list[tuple[str, int, int, float]] = []
    t0 = time.perf_counter()

    def get(client: httpx.Client, url: str, params: Any = None) -> Any:
        t = time.perf_counter()
        try:
            r = client.get(url, params=params)
            r.read()
        except httpx.HTTPError as e:
            raise SourceUnavailableError(
                f"gateway: GET {redact(url)} failed: {type(e).__name__}: {e}"
            ) from None
        log.append(
            (
                redact(str(r.url)),
                r.status_code,
                int(r.num_bytes_downloaded),
                time.perf_counter() - t,
            )
        )
        if r.status_code >= 400 and r.status_code != 404:
            raise SourceUnavailableError(
                f"gateway: GET {redact(str(r.url))} answered HTTP {r.status_code}"
            )
        return r

    user: dict[str, Any] | None = None
    got: list[dict[str, Any]] = []
    with httpx.Client(
        headers=dict(headers or {}), timeout=timeout, trust_env=False, verify=ssl_context()
    ) as client:
        r = get(client, f"{users.rstrip('/')}/{quote_path(user_id)}")
        if r.status_code != 404:
            user = r.json()
            params: Any = {"user_id": str(user_id)}
            if page_size:
                params["per_page"] = str(page_size)
            url: str | None = orders
            while url is not None:
                r = get(client, url, params)
                body = r.json()
                items = body.get("items", []) if isinstance(body, dict) else body
                got.extend(items)
                nxt = body.get("next") if isinstance(body, dict) else None
                url, params = (str(r.url.join(nxt)), None) if nxt else (None, None)
    return GatewayResult(
        user,
        got,
        calls=len(log),
        bytes=sum(b for _, _, b, _ in log),
        latency_s=time.perf_counter() - t0,
        requests=log,
    )


def gateway_app(users: str, orders: str, headers: Mapping[str, str] | None = None) -> Any:
    """The seed's API gateway as a service: ``GET /api/users/{id}/orders`` calls the user
    API, then the order API (every page), and answers ``{"user", "orders", "gateway"}``
    where ``gateway`` says what it cost (calls, bytes, ms). ``users`` / ``orders``: the
    collections' URLs; ``headers`` go with every call (a token, say)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Route

    from fedlab.rest import ssl_context

    async def user_orders(request: Any) -> Any:
        t0 = time.perf_counter()
        uid = request.path_params["uid"]
        calls, nbytes = 0, 0
        async with httpx.AsyncClient(
            timeout=10.0, trust_env=False, headers=dict(headers or {}), verify=ssl_context()
        ) as client:
            r = await client.get(f"{users.rstrip('/')}/{uid}")
            calls, nbytes = calls + 1, nbytes + int(r.num_bytes_downloaded)
            if r.status_code != 200:
                return _json_response(
                    {"detail": f"user {uid}: the user API answered {r.status_code}"},
                    r.status_code if r.status_code < 500 else 502,
                )
            user = r.json()
            got: list[Any] = []
            url: str | None = orders
            params: Any = {"user_id": uid}
            while url is not None:
                r = await client.get(url, params=params)
                calls, nbytes = calls + 1, nbytes + int(r.num_bytes_downloaded)
                if r.status_code != 200:
                    return _json_response(
                        {"detail": f"the order API answered {r.status_code}"}, 502
                    )
                body = r.json()
                got.extend(body["items"])
                url = str(r.url.join(body["next"])) if body.get("next") else None
                params = None
        stats = {"calls": calls, "bytes": nbytes, "ms": (time.perf_counter() - t0) * 1000}
        return _json_response({"user": user, "orders": got, "gateway": stats})

    return Starlette(routes=[Route("/api/users/{uid}/orders", user_orders)])


# ---------------------------------------------------------------------- running them
class DemoAPIs:
    """The demo's services running on loopback (see :func:`serve_demo_apis`).

    Attributes:
        urls: what to attach or call: ``users`` / ``orders`` / ``products``: the
            collections (``http://127.0.0.1:PORT/orders``), ``gateway``: the gateway's
            root (``http://127.0.0.1:PORT``).
        services: the :class:`TableService` of each collection (its ``log``, ``fail``).
    """

    def __init__(
        self,
        services: dict[str, TableService],
        apps: dict[str, Any],
        host: str,
        ports: Mapping[str, int],
    ) -> None:
        self.services = services
        self.host = host
        self._apps = apps
        self._want = dict(ports)
        self._servers: list[Any] = []
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.ports: dict[str, int] = {}
        self.urls: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> DemoAPIs:
        import uvicorn

        try:
            for name in self._apps:
                # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only
                # for such sockets; with proto 0, Nagle + delayed ACK cost ~40 ms per
                # request on a kept-alive connection
                sock = socket.socket(
                    socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                )
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.host, self._want.get(name, 0)))
                except OSError as e:
                    sock.close()
                    raise ConfigError(
                        f"service {name}: cannot listen on {self.host}:{self._want.get(name, 0)}: "
                        f"{e}"
                    ) from None
                sock.listen(128)
                sock.setblocking(False)
                self._sockets.append(sock)
                self.ports[name] = sock.getsockname()[1]
        except BaseException:
            self._close_sockets()
            raise
        host = f"[{self.host}]" if ":" in self.host else self.host
        for name, port in self.ports.items():
            root = f"http://{host}:{port}"
            self.urls[name] = root if name == "gateway" else f"{root}/{name}"
        if (
            "gateway" in self._apps
            and callable(self._apps["gateway"])
            and not hasattr(self._apps["gateway"], "routes")
        ):
            self._apps["gateway"] = self._apps["gateway"](self.urls)
        for name, sock in zip(self._apps, self._sockets, strict=True):
            config = uvicorn.Config(
                self._apps[name],
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=2,
            )
            self._servers.append((uvicorn.Server(config), sock))

        async def serve_all() -> None:
            await asyncio.gather(*(srv.serve(sockets=[s]) for srv, s in self._servers))

        def run() -> None:
            try:
                asyncio.run(serve_all())
            except BaseException as e:  # reported by start()
                self._error = e

        self._thread = threading.Thread(
            target=run, name=f"fedlab-demo-apis-{min(self.ports.values())}", daemon=True
        )
        self._thread.start()
        end = time.monotonic() + timeout
        while not all(srv.started for srv, _ in self._servers):
            if self._error is not None or not self._thread.is_alive():
                self.close()
                raise SourceUnavailableError(f"the demo services did not start: {self._error}")
            if time.monotonic() > end:
                self.close()
                raise SourceUnavailableError(f"the demo services did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        """Stop every server and wait for its thread (sockets closed, nothing left)."""
        for srv, _ in self._servers:
            srv.should_exit = True
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        self._close_sockets()

    def _close_sockets(self) -> None:
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()
        self._sockets = []

    def __enter__(self) -> DemoAPIs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ using them
    def attach(
        self,
        fed: Federation,
        names: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Federation:
        """Attach the collections to ``fed`` as REST sources (``users_api``,
        ``orders_api``, ``products_api`` by default); ``options`` go to every attach."""
        names = dict(names or {s: f"{s}_api" for s in self.services})
        for service, source in names.items():
            fed.attach(source, self.urls[service], kind="rest", **options)
        return fed

    def federation(self, **options: Any) -> Federation:
        """A new :class:`~fedlab.Federation` with the three collections attached."""
        from fedlab.federation import Federation

        return self.attach(Federation(), **options)

    def requests(self, service: str) -> list[dict[str, Any]]:
        """Every request the service answered (path, query, status, bytes, ms)."""
        return list(self.services[service].log)

    def reset_log(self) -> None:
        for s in self.services.values():
            with s._lock:
                s.log.clear()

    def fail(self, service: str, times: int = 1, status: int = 503) -> None:
        """Make the next ``times`` requests to ``service`` answer HTTP ``status``."""
        with self.services[service]._lock:
            self.services[service].fail[:] = [times, status]

    def stats(self) -> pl.DataFrame:
        """One row per service: requests, body bytes sent, mean ms."""
        rows = []
        for name, s in self.services.items():
            log = list(s.log)
            rows.append(
                {
                    "service": name,
                    "url": self.urls.get(name),
                    "requests": len(log),
                    "bytes": sum(r["bytes"] for r in log),
                    "mean_ms": sum(r["ms"] for r in log) / len(log) if log else None,
                }
            )
        return pl.DataFrame(
            rows,
            schema={
                "service": pl.String,
                "url": pl.String,
                "requests": pl.Int64,
                "bytes": pl.Int64,
                "mean_ms": pl.Float64,
            },
        )

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        urls = ", ".join(f"{k}={v}" for k, v in self.urls.items())
        return f"<DemoAPIs {state}: {urls}>"


def serve_demo_apis(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    demo_dir: str | Path | None = None,
    scale: int | None = None,
    page_size: int = 100,
    max_page_size: int = 1000,
    delay: float = 0.0,
    gateway: bool = True,
    services: Sequence[str] = tuple(SERVICES),
    token: str | None = None,
) -> DemoAPIs:
    """Start the demo's services (and the gateway) on ``host``; return them running.

    ``port``: 0 (default) picks free ports; otherwise users on ``port``, orders on
    ``port + 1``, products on ``port + 2``, the gateway on ``port + 3``. The demo's SQLite
    files are built first when missing (``demo_dir``: :func:`fedlab.demo.default_dir`).
    ``delay``: seconds each data request waits (a farther service); ``token``: require
    ``Authorization: Bearer <token>`` on every data request (the gateway sends it). Use as
    a context manager, or call ``close()``.
    """
    from fedlab import demo

    unknown = [s for s in services if s not in SERVICES]
    if unknown:
        raise ConfigError(f"unknown demo service(s) {unknown}; known: {list(SERVICES)}")
    d = demo._ensure(demo_dir, scale)
    tables: dict[str, TableService] = {}
    apps: dict[str, Any] = {}
    for name in services:
        file, table, filters = SERVICES[name]
        tables[name] = TableService(
            name,
            d / file,
            table,
            filters,
            page_size=page_size,
            max_page_size=max_page_size,
            delay=delay,
            token=token,
        )
    if token:
        register_secret(token)
    for name, svc in tables.items():
        extra = [_user_orders_route(svc)] if name == "orders" else []
        apps[name] = table_app(svc, extra)
    if gateway and "users" in tables and "orders" in tables:
        auth = {"Authorization": f"Bearer {token}"} if token else None
        apps["gateway"] = lambda urls: gateway_app(urls["users"], urls["orders"], auth)
    order = ["users", "orders", "products", "gateway"]
    ports = {n: (port + order.index(n) if port else 0) for n in apps}
    return DemoAPIs(tables, apps, host, ports).start()


# ---------------------------------------------------------------------- the comparison
@dataclass
class GatewayComparison:
    """The seed's gateway flow next to federated SQL over the same REST services.

    Attributes:
        user_id: the user asked about.
        table: one row per approach: ``approach``, ``calls`` (HTTP requests), ``bytes``
            (response bodies), ``latency_ms``, ``rows`` (of the answer), ``same_result``
            (equal to the hand-written flow's answer by the equality rule).
        answers: the answer of each approach (Polars frames).
        results: the :class:`~fedlab.FederatedResult` of each SQL strategy.
    """

    user_id: int
    table: pl.DataFrame
    answers: dict[str, pl.DataFrame]
    results: dict[str, Any]
    sql: str

    def plot(self, *, figsize: tuple[float, float] = (11, 3.2)) -> Figure:
        """Three bar charts: calls made, bytes moved, latency."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        fig, axes = plt.subplots(1, 3, figsize=figsize)
        names = self.table["approach"].to_list()
        colors = ["#c0765a" if n.startswith("gateway") else "#336791" for n in names]
        for ax, (col, title) in zip(
            axes,
            [("calls", "HTTP calls"), ("bytes", "bytes moved"), ("latency_ms", "latency (ms)")],
            strict=True,
        ):
            values = [0 if v is None else v for v in self.table[col].to_list()]
            ax.barh(names, values, color=colors)
            ax.set_title(title)
            ax.invert_yaxis()
            for i, v in enumerate(values):
                ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
            ax.margins(x=0.25)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            if col == "bytes":
                ax.xaxis.set_major_formatter(
                    FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v >= 1000 else f"{v:g}")
                )
        for ax in axes[1:]:
            ax.set_yticklabels([])
        fig.suptitle(f"GET /api/users/{self.user_id}/orders: the gateway vs one SQL query")
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return f"<GatewayComparison user {self.user_id}>\n{self.table}"

    def _repr_html_(self) -> str:
        return (
            f"<div><b>GET /api/users/{self.user_id}/orders</b>: the seed's gateway vs "
            f"fedlab SQL{self.table._repr_html_()}</div>"
        )


def compare_gateway(
    fed: Federation,
    user_id: int,
    *,
    users: str = "users_api",
    orders: str = "orders_api",
    strategies: Sequence[str] = ("naive", "auto"),
    gateway: str | None = None,
    repeat: int = 1,
) -> GatewayComparison:
    """Answer the seed's ``GET /api/users/{user_id}/orders`` three ways and compare them.

    * ``gateway (by hand)``: :func:`gateway_user_orders` from here, over the REST sources
      ``users`` and ``orders`` of ``fed`` (their URLs and headers);
    * ``gateway service`` (when ``gateway`` is the URL of :func:`gateway_app`): one call to
      it; its own calls, bytes and time are added from what it reports;
    * ``fedlab SQL (<strategy>)``: :data:`GATEWAY_SQL` over the same sources, once per
      strategy (``naive`` reads every page of both tables; ``auto`` sends the user's
      id as a query parameter).

    Every answer is checked against the hand-written flow's by the equality rule.
    ``repeat``: run each approach that many times and report the median latency (the
    first run of a session pays for imports and connections).
    """
    import httpx

    from fedlab.rest import ssl_context
    from fedlab.testing import same_result

    srcs = {}
    for role, name in (("users", users), ("orders", orders)):
        src = fed.catalog.sources.get(name)
        if src is None or src.kind != "rest":
            raise ConfigError(
                f"compare_gateway: {role}={name!r} must name an attached REST source "
                f"(attached: {', '.join(sorted(fed.catalog.sources)) or 'none'})"
            )
        srcs[role] = src
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"compare_gateway: repeat must be a whole number >= 1, not {repeat!r}")
    headers = _headers_of(srcs["users"]) | _headers_of(srcs["orders"])
    sql = GATEWAY_SQL.format(users=users, orders=orders)

    def by_hand() -> tuple[pl.DataFrame, int, int, float, Any]:
        got = gateway_user_orders(
            srcs["users"].endpoint, srcs["orders"].endpoint, user_id, headers=headers
        )
        return got.df, got.calls, got.bytes, got.latency_s, got

    def service() -> tuple[pl.DataFrame, int, int, float, Any]:
        t0 = time.perf_counter()
        with httpx.Client(timeout=10.0, trust_env=False, verify=ssl_context()) as client:
            r = client.get(f"{str(gateway).rstrip('/')}/api/users/{user_id}/orders")
        elapsed = time.perf_counter() - t0
        body = r.json() if r.status_code == 200 else {}
        behind = body.get("gateway", {})
        got = GatewayResult(
            body.get("user"),
            body.get("orders", []),
            calls=1 + int(behind.get("calls", 0)),
            bytes=int(r.num_bytes_downloaded) + int(behind.get("bytes", 0)),
            latency_s=elapsed,
        )
        return got.df, got.calls, got.bytes, elapsed, got

    def federated(strategy: str) -> Callable[[], tuple[pl.DataFrame, int, int, float, Any]]:
        def run() -> tuple[pl.DataFrame, int, int, float, Any]:
            before = [s.rest.counters() for s in srcs.values()]
            res = fed.sql(sql, {"user_id": user_id}, strategy=strategy)
            after = [s.rest.counters() for s in srcs.values()]
            calls = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
            return res.df, calls, int(res.trace.bytes), res.trace.total_s, res

        return run

    approaches: dict[str, Callable[[], tuple[pl.DataFrame, int, int, float, Any]]] = {
        "gateway (by hand)": by_hand
    }
    if gateway is not None:
        approaches["gateway service"] = service
    for strategy in strategies:
        approaches[f"fedlab SQL ({strategy})"] = federated(strategy)
    rows: list[dict[str, Any]] = []
    answers: dict[str, pl.DataFrame] = {}
    results: dict[str, Any] = {}
    for name, run in approaches.items():
        runs = [run() for _ in range(repeat)]
        df, calls, nbytes, _, extra = runs[-1]
        latencies = sorted(r[3] for r in runs)
        answers[name] = df
        if name.startswith("fedlab SQL"):
            results[name[len("fedlab SQL (") : -1]] = extra
        rows.append(
            {
                "approach": name,
                "calls": calls,
                "bytes": nbytes,
                "latency_ms": latencies[len(latencies) // 2] * 1000,
                "rows": df.height,
            }
        )
    reference = answers["gateway (by hand)"]
    for row in rows:
        ok, why = same_result(answers[row["approach"]], reference)
        row["same_result"] = ok
        row["difference"] = why or None
    table = pl.DataFrame(
        rows,
        schema={
            "approach": pl.String,
            "calls": pl.Int64,
            "bytes": pl.Int64,
            "latency_ms": pl.Float64,
            "rows": pl.Int64,
            "same_result": pl.Boolean,
            "difference": pl.String,
        },
    )
    return GatewayComparison(user_id, table, answers, results, sql)


# ---------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``fedlab serve-demo-apis``: run the demo's services until Ctrl-C."""
    p = argparse.ArgumentParser(
        prog="fedlab serve-demo-apis",
        description="Serve the demo databases as JSON services on loopback: users on the "
        "base port, orders on +1, products on +2, the seed's gateway on +3.",
    )
    p.add_argument("--port-base", type=int, default=8001, help="first port (default 8001)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--demo-dir", default=None, help="the demo's directory (built when missing)")
    p.add_argument("--scale", type=int, default=None, help="demo scale (default: as built, else 1)")
    p.add_argument("--page-size", type=int, default=100, help="rows per page by default (100)")
    p.add_argument(
        "--delay-ms", type=float, default=0.0, help="milliseconds each data request waits"
    )
    try:
        args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if not 0 < args.port_base <= 65535 - 3:
        print(
            f"error: --port-base must be between 1 and 65532, got {args.port_base}", file=sys.stderr
        )
        return 2
    try:
        apis = serve_demo_apis(
            host=args.host,
            port=args.port_base,
            demo_dir=args.demo_dir,
            scale=args.scale,
            page_size=args.page_size,
            max_page_size=max(1000, args.page_size),
            delay=args.delay_ms / 1000,
        )
    except FedlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with apis:
        print("fedlab demo services (Ctrl-C stops them):")
        for name, url in apis.urls.items():
            hint = f"{url}/api/users/35/orders" if name == "gateway" else f"{url}  ({url}/_meta)"
            print(f"  {name:<9} {hint}")
        print("\nattach them:")
        print("  import fedlab as fl\n  fed = fl.Federation()")
        for name, url in apis.urls.items():
            if name != "gateway":
                print(f'  fed.attach("{name}_api", "{url}", kind="rest")')
        sys.stdout.flush()
        try:
            while apis._thread is not None and apis._thread.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0
