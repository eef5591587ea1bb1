"""REST sources: a JSON endpoint queried as a table (the seed's "API gateway" federation).

``fed.attach("orders_api", "http://127.0.0.1:8002/orders", kind="rest")`` makes the
endpoint one table (``orders_api.orders``). It is planned like any source, with DuckDB
as its dialect: the planner sends it a fragment (projection, filters, aggregates… as it
would to a DuckDB file); the reader

1. takes the fragment's top-level ``col = literal`` and ``col IN (literals)`` conjuncts
   on the endpoint's *declared* filter parameters (the semi-join's shipped key lists
   arrive in that form too) and sends them as query parameters (``?user_id=3`` and, for
   an IN list, ``?user_id=3&user_id=7``);
2. fetches every page (httpx, with timeouts), counting requests and body bytes;
3. builds a Polars frame typed by the table's schema and runs the fragment's SQL over
   it with an in-memory DuckDB, so the answer is exact whatever the service did with the
   parameters (a looser service filter is harmless: the rows are checked again).

The trace weighs the fragment by HTTP body bytes and its reader column says how many
requests were made and which parameters were sent.

Options (keyword arguments of ``fed.attach``; all optional):

=================  ==========================================================================
option             meaning
=================  ==========================================================================
kind               ``"rest"`` (implied by an ``http://`` / ``https://`` URL)
table              the table's name (default: ``_meta``'s ``name``, else the URL's last segment)
schema             declared columns, ``{"id": "BIGINT", "name": "TEXT", …}`` (default:
                   ``_meta``'s columns, else inferred from the first page)
filters            query parameters that filter a column by equality: a list of column names,
                   or ``{column: parameter}`` (default: ``_meta``'s ``filters``)
primary_key        list of key columns (default: ``_meta``'s ``primary_key``)
headers            HTTP headers sent with every request, e.g. ``{"Authorization": "Bearer …"}``;
                   their values are secrets: never shown, redacted from every message
pagination         ``auto`` (default: ``_meta``'s, else follow ``next`` links), ``page``
                   (``?page=&per_page=``), ``offset`` (``?limit=&offset=``), ``next`` (follow the
                   body's ``next`` or the ``Link: rel=next`` header) or ``none``
page_size          rows asked per page (default: ``_meta``'s, else 100)
page_param,        parameter names of the ``page`` and ``offset`` styles (defaults ``page``,
size_param,        ``per_page``, ``limit``, ``offset``)
limit_param,
offset_param
items_key          key of the row list in an object body (default: the first of ``items``,
                   ``data``, ``results``, ``rows``, ``records`` holding a list)
meta               read ``<endpoint>/_meta`` at attach: ``None`` (default: if it exists),
                   ``True`` (required) or ``False``
read_timeout       seconds a request may wait for its answer when neither the query's deadline
                   nor ``statement_timeout`` is shorter (default 30)
in_batch           values of a pushed IN list per request (default 100: more make more requests)
max_in             IN lists longer than this are not sent (the whole table is read; default 1000)
max_pages          a fetch reading more pages than this fails (default 10,000)
row_estimate       rows the planner should expect (default: ``_meta``'s ``rows``, the body's
                   ``total``, else counted from the first page)
connect_timeout,   as for every source (``connect_timeout`` bounds the TCP connect of every
statement_timeout  request; ``statement_timeout`` the whole of a fragment's requests)
=================  ==========================================================================

The ``_meta`` document (``GET <endpoint>/_meta``; what :mod:`fedlab.apis` serves)::

    {"name": "orders",
     "columns": [{"name": "id", "type": "BIGINT"}, {"name": "status", "type": "TEXT"}, …],
     "primary_key": ["id"],
     "filters": ["id", "user_id", "product_id", "status"],
     "pagination": {"style": "page", "page_param": "page", "size_param": "per_page",
                    "page_size": 100, "max_page_size": 1000},
     "items_key": "items",
     "rows": 600}

Every key is optional. A filter parameter must select *at least* the rows that SQL
equality selects (case-sensitive, pad-sensitive): the reader checks them again, so a looser
service is correct, a stricter one is not.

See docs/rest.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import queue
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

import polars as pl
import sqlglot
from sqlglot import exp

from fedlab.errors import (
    ConfigError,
    FragmentError,
    LimitExceededError,
    QueryCancelledError,
    QueryTimeoutError,
    RestHTTPError,
    SourceError,
    SourceUnavailableError,
)
from fedlab.security import redact, register_secret

__all__ = [
    "PAGINATION",
    "REST_OPTIONS",
    "TRANSIENT_HTTP",
    "RestConnection",
    "RestOptions",
    "RestState",
    "introspect_rest",
    "pushdown_params",
    "read_fragment",
    "rest_source",
    "ssl_context",
]

#: pagination styles a REST source understands
PAGINATION = ("auto", "page", "offset", "next", "none")
#: HTTP statuses that may go away on a retry (the rest are permanent)
TRANSIENT_HTTP = frozenset({408, 429, 502, 503, 504})
#: keys of an object body that may hold the list of rows, in this order
_ITEMS_KEYS = ("items", "data", "results", "rows", "records")
#: query parameters whose values are secrets (shown as ***)
_SECRET_PARAMS = ("token", "key", "secret", "password", "passwd", "pwd", "auth", "signature", "sig")


@dataclass(frozen=True)
class RestOptions:
    """What the user declared for one REST source (see the module's table of options)."""

    table: str | None = None
    schema: tuple[tuple[str, str], ...] | None = None
    filters: tuple[tuple[str, str], ...] | None = None
    primary_key: tuple[str, ...] | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    pagination: str = "auto"
    page_size: int | None = None
    page_param: str = "page"
    size_param: str = "per_page"
    limit_param: str = "limit"
    offset_param: str = "offset"
    items_key: str | None = None
    meta: bool | None = None
    read_timeout: float = 30.0
    in_batch: int = 100
    max_in: int = 1000
    max_pages: int = 10_000
    row_estimate: int | None = None

    def __repr__(self) -> str:
        shown = {
            k: getattr(self, k)
            for k in self.__dataclass_fields__
            if k != "headers" and getattr(self, k) != RestOptions.__dataclass_fields__[k].default
        }
        parts = [f"{k}={v!r}" for k, v in shown.items()]
        if self.headers:  # names only: the values are secrets
            parts.append(f"headers=[{', '.join(repr(k) for k, _ in self.headers)}: ***]")
        return f"RestOptions({', '.join(parts)})"


#: option names a REST source accepts beyond :class:`fedlab.source.SourceOptions`
REST_OPTIONS = frozenset(RestOptions.__dataclass_fields__)


class RestState:
    """A REST source's runtime state: its options, what ``_meta`` said, the resolved
    table schema and paging, and counters of requests and bytes (thread-safe)."""

    def __init__(self, options: RestOptions) -> None:
        self.options = options
        self.meta: dict[str, Any] | None = None
        self.table: str | None = options.table
        #: (column, declared type) once attached
        self.columns: list[tuple[str, str]] = []
        self.filters: dict[str, str] = dict(options.filters or ())
        self.pagination: str = options.pagination
        self.page_size: int = options.page_size or 100
        self.items_key: str | None = options.items_key
        self.page_param, self.size_param = options.page_param, options.size_param
        self.limit_param, self.offset_param = options.limit_param, options.offset_param
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def count(self, nbytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes += nbytes

    def counters(self) -> tuple[int, int]:
        """(requests, body bytes) made so far through this source."""
        with self._lock:
            return self.requests, self.bytes

    def __repr__(self) -> str:
        return (
            f"<RestState table={self.table!r} pagination={self.pagination!r} "
            f"filters={sorted(self.filters)!r} requests={self.requests}>"
        )


# ---------------------------------------------------------------------- construction
def _pairs(name: str, what: str, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str):
        raise ConfigError(f"source {name!r}: {what} must be a mapping or a list, not a string")
    else:
        try:
            items = [(v, v) for v in value]
        except TypeError:
            raise ConfigError(
                f"source {name!r}: {what} must be a mapping or a list, not {type(value).__name__}"
            ) from None
    out = []
    for k, v in items:
        if not isinstance(k, str) or not k or not isinstance(v, str) or not v:
            raise ConfigError(
                f"source {name!r}: {what} entries must be non-empty strings, got {k!r}: {v!r}"
            )
        out.append((k, v))
    return tuple(out)


def _rest_options(name: str, raw: dict[str, Any]) -> RestOptions:
    kw: dict[str, Any] = dict(raw)
    if "schema" in kw and kw["schema"] is not None:
        if not isinstance(kw["schema"], Mapping) or not kw["schema"]:
            raise ConfigError(
                f"source {name!r}: schema must be a non-empty mapping of column -> SQL type, "
                f'e.g. {{"id": "BIGINT", "name": "TEXT"}}'
            )
        kw["schema"] = _pairs(name, "schema", kw["schema"])
    if "filters" in kw and kw["filters"] is not None:
        kw["filters"] = _pairs(name, "filters", kw["filters"])
    if "headers" in kw:
        headers = _pairs(name, "headers", kw["headers"] or {})
        for _, v in headers:
            register_secret(v)
            for part in v.split():  # "Bearer abc…": the token alone too
                register_secret(part)
        kw["headers"] = headers
    if "primary_key" in kw and kw["primary_key"] is not None:
        pk = kw["primary_key"]
        kw["primary_key"] = (pk,) if isinstance(pk, str) else tuple(pk)
    style = kw.get("pagination", "auto")
    if style not in PAGINATION:
        raise ConfigError(
            f"source {name!r}: pagination={style!r} is not one of {', '.join(PAGINATION)}"
        )
    for k in ("page_size", "in_batch", "max_in", "max_pages", "row_estimate"):
        v = kw.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"source {name!r}: {k} must be a whole number >= 1, not {v!r}")
    rt = kw.get("read_timeout", 30.0)
    if isinstance(rt, bool) or not isinstance(rt, int | float) or rt <= 0:
        raise ConfigError(f"source {name!r}: read_timeout must be a number of seconds > 0")
    if "meta" in kw and kw["meta"] not in (None, True, False):
        raise ConfigError(f"source {name!r}: meta must be None (auto), True or False")
    return RestOptions(**kw)


def _secret_param(key: str) -> bool:
    low = key.lower()
    return any(s in low for s in _SECRET_PARAMS)


def _redact_endpoint(url: str) -> str:
    """The endpoint URL with its password and secret-looking query values as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{parts.username or ''}:***@{host}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if query:
        q = urlencode([(k, "***" if _secret_param(k) else v) for k, v in query], safe="*/")
    else:
        q = parts.query
    return redact(urlunsplit((parts.scheme, netloc, parts.path, q, parts.fragment)))


def rest_source(
    name: str,
    url: str,
    *,
    tags: dict[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """A :class:`~fedlab.source.Source` of kind ``rest`` for endpoint ``url``.

    ``options`` holds both the common source options (``connect_timeout``,
    ``statement_timeout``) and the REST ones (:data:`REST_OPTIONS`).
    """
    from fedlab.source import Source, SourceOptions

    opts = dict(options or {})
    common = {k: opts.pop(k) for k in list(opts) if k in SourceOptions.__dataclass_fields__}
    unknown = set(opts) - REST_OPTIONS
    if unknown:
        known = sorted(set(SourceOptions.__dataclass_fields__) | REST_OPTIONS)
        raise ConfigError(
            f"source {name!r}: unknown option(s) {sorted(unknown)} for a REST source; "
            f"known: {known}"
        )
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"source {name!r}: a REST source needs an http:// or https:// URL with a host, "
            f"got {_redact_endpoint(url)!r}"
        )
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"source {name!r}: bad port in {_redact_endpoint(url)!r}: {e}") from None
    if parts.password:
        register_secret(unquote(parts.password))
    for k, v in parse_qsl(parts.query):
        if _secret_param(k):
            register_secret(v)
    rest = _rest_options(name, opts)
    return Source(
        name,
        "rest",
        "duckdb",
        host=parts.hostname,
        port=port or (443 if parts.scheme.lower() == "https" else 80),
        user=unquote(parts.username) if parts.username else None,
        tags=dict(tags or {}),
        options=SourceOptions(**common),
        endpoint=url,
        rest=RestState(rest),
    )


# ---------------------------------------------------------------------- HTTP
def _state(source: Any) -> RestState:
    state = getattr(source, "rest", None)
    if not isinstance(state, RestState):
        raise ConfigError(f"source {source.name!r} is not a REST source")
    return state


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every REST request (httpx would build, and load the
    CA bundle into, a new one per client: ~15 ms each)."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return ssl.create_default_context()


def _client(source: Any) -> Any:
    import httpx

    state = _state(source)
    headers = {"Accept": "application/json", "User-Agent": "fedlab"}
    headers.update(dict(state.options.headers))
    return httpx.Client(
        headers=headers, follow_redirects=False, trust_env=False, verify=ssl_context()
    )


def _base(source: Any) -> str:
    """The endpoint without its query string (the query goes in every request's params)."""
    parts = urlsplit(source.endpoint)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _url_params(source: Any) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(source.endpoint).query, keep_blank_values=True)


def _shown(url: str, params: Sequence[tuple[str, str]] = ()) -> str:
    """A request's URL for messages and traces (secrets as ***)."""
    if params:
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}{urlencode(list(params))}"
    return _redact_endpoint(url)


class _Budget:
    """The time a fragment's requests may take: the query's deadline and the source's
    ``statement_timeout`` (from the fragment's start), else ``read_timeout`` per request."""

    def __init__(self, source: Any, deadline: float | None) -> None:
        self.source = source
        ends = []
        if source.options.statement_timeout:
            ends.append(time.monotonic() + source.options.statement_timeout)
        if deadline is not None:
            ends.append(deadline)
        self.end = min(ends) if ends else None
        self.read_timeout = _state(source).options.read_timeout

    def timeout(self) -> tuple[float, bool]:
        """(seconds for the next request, whether the deadline is what bounds it)."""
        if self.end is None:
            return self.read_timeout, False
        left = self.end - time.monotonic()
        if left <= 0:
            return 0.0, True
        if left < self.read_timeout:
            return left, True
        return self.read_timeout, False


def _get(
    client: Any,
    source: Any,
    url: str,
    params: Sequence[tuple[str, str]],
    budget: _Budget,
    what: str,
) -> Any:
    """One GET with timeouts; HTTP and network failures as FedlabErrors naming the source."""
    import httpx

    state = _state(source)
    read, bounded = budget.timeout()
    shown = _shown(url, params)
    if read <= 0:
        raise QueryTimeoutError(
            f"{what} on source {source.name}: the deadline passed before GET {shown} "
            "(query timeout or the source's statement_timeout)"
        )
    connect = (
        min(source.options.connect_timeout, read) if bounded else source.options.connect_timeout
    )
    timeout = httpx.Timeout(connect=connect, read=read, write=read, pool=read)
    try:
        # no params: None, so that a next link keeps its own query string
        response = client.get(url, params=list(params) or None, timeout=timeout)
        body = response.content
    except httpx.ConnectTimeout:
        raise SourceUnavailableError(
            f"source {source.describe()} is not reachable: no connection within "
            f"{connect:g} s (connect_timeout) for GET {shown}"
        ) from None
    except httpx.ConnectError as e:
        raise SourceUnavailableError(
            f"source {source.describe()} is not reachable: {e} (GET {shown})"
        ) from None
    except httpx.TimeoutException:
        if bounded:
            raise QueryTimeoutError(
                f"{what} on source {source.name} passed its deadline waiting for GET {shown} "
                "(query timeout or the source's statement_timeout)"
            ) from None
        raise SourceUnavailableError(
            f"source {source.describe()} did not answer within {read:g} s (read_timeout) "
            f"for GET {shown}"
        ) from None
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
        raise SourceUnavailableError(
            f"source {source.describe()}: the connection was closed or reset during GET "
            f"{shown} ({type(e).__name__}: {e})"
        ) from None
    except httpx.HTTPError as e:
        raise SourceError(
            f"source {source.describe()}: GET {shown} failed: {type(e).__name__}: {e}"
        ) from None
    state.count(int(response.num_bytes_downloaded))
    if response.status_code >= 400:
        snippet = " ".join(response.text.split())[:200]
        transient = response.status_code in TRANSIENT_HTTP
        raise RestHTTPError(
            f"{what} on source {source.name} (rest): GET {shown} answered HTTP "
            f"{response.status_code} {response.reason_phrase}"
            f"{' (transient)' if transient else ''}: {snippet or '(empty body)'}",
            source=source.name,
            http_status=response.status_code,
            url=shown,
        )
    return response, len(body)


def _json(response: Any, source: Any, url: str, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        ctype = response.headers.get("content-type", "?")
        raise FragmentError(
            f"{what} on source {source.name} (rest): GET {url} did not return JSON "
            f"(content-type {ctype}): {response.text[:120]!r}",
            source=source.name,
        ) from None


def _rows_of(body: Any, source: Any, url: str, what: str) -> tuple[list[dict], Any, bool]:
    """(rows, the body's ``next`` link, whether the body has a ``next`` key at all)."""
    state = _state(source)
    if isinstance(body, list):
        rows, nxt, has_next = body, None, False
    elif isinstance(body, dict):
        key = state.items_key
        if key is None:
            key = next((k for k in _ITEMS_KEYS if isinstance(body.get(k), list)), None)
        if key is None or not isinstance(body.get(key), list):
            raise FragmentError(
                f"{what} on source {source.name} (rest): GET {url} returned a JSON object "
                f"without a list of rows (looked for {key or ', '.join(_ITEMS_KEYS)}; keys: "
                f"{', '.join(list(body)[:8])}); set items_key=",
                source=source.name,
            )
        rows = body[key]
        links = body.get("links") if isinstance(body.get("links"), dict) else {}
        has_next = "next" in body or "next" in links
        nxt = body.get("next") or links.get("next")
    else:
        raise FragmentError(
            f"{what} on source {source.name} (rest): GET {url} returned JSON that is neither "
            f"a list of rows nor an object holding one ({type(body).__name__})",
            source=source.name,
        )
    bad = next((r for r in rows if not isinstance(r, dict)), None)
    if bad is not None:
        raise FragmentError(
            f"{what} on source {source.name} (rest): GET {url}: rows must be JSON objects, "
            f"got {type(bad).__name__} {str(bad)[:60]!r}",
            source=source.name,
        )
    return rows, nxt, has_next


def _link_next(response: Any) -> str | None:
    link = response.links.get("next") if hasattr(response, "links") else None
    return link.get("url") if link else None


@dataclass
class _Fetched:
    rows: list[dict] = field(default_factory=list)
    requests: int = 0
    nbytes: int = 0


def _fetch_all(
    client: Any,
    source: Any,
    params: list[tuple[str, str]],
    budget: _Budget,
    what: str,
    cancelled: threading.Event | None = None,
    max_bytes: int | None = None,
) -> _Fetched:
    """Every page of the endpoint for ``params``; stops with a
    :class:`~fedlab.errors.LimitExceededError` once more than ``max_bytes`` arrived."""
    state = _state(source)
    base = _base(source)
    fixed = _url_params(source) + list(params)
    out = _Fetched()
    style = state.pagination
    size = state.page_size
    max_pages = state.options.max_pages

    def get(url: str, p: Sequence[tuple[str, str]]) -> tuple[list[dict], Any, bool, Any]:
        if cancelled is not None and cancelled.is_set():
            raise QueryCancelledError(f"{what} on {source.name}: query cancelled")
        if out.requests >= max_pages:
            raise FragmentError(
                f"{what} on source {source.name} (rest): more than max_pages={max_pages} "
                "pages; raise max_pages or filter more",
                source=source.name,
            )
        response, _ = _get(client, source, url, p, budget, what)
        out.requests += 1
        out.nbytes += int(response.num_bytes_downloaded)
        if max_bytes is not None and out.nbytes > max_bytes:
            raise LimitExceededError(
                f"{what} on source {source.name} returned more than max_bytes={max_bytes:,} "
                f"bytes (the read stopped at {out.nbytes:,} bytes, {out.requests} request(s)); "
                "add a filter on a declared parameter, or raise the limit "
                "(fed.sql(..., max_bytes=…) or Federation(max_bytes=…))",
                fragment=what.removeprefix("fragment "),
                source=source.name,
                limit="max_bytes",
            )
        rows, nxt, has_next = _rows_of(_json(response, source, url, what), source, url, what)
        out.rows.extend(rows)
        return rows, nxt, has_next, response

    if style == "page":
        page = 1
        while True:
            p = [*fixed, (state.page_param, str(page)), (state.size_param, str(size))]
            rows, nxt, has_next, _ = get(base, p)
            if len(rows) < size or (has_next and not nxt):
                break
            page += 1
    elif style == "offset":
        offset = 0
        while True:
            p = [*fixed, (state.limit_param, str(size)), (state.offset_param, str(offset))]
            rows, nxt, has_next, _ = get(base, p)
            if len(rows) < size or (has_next and not nxt):
                break
            offset += len(rows)
    elif style == "none":
        get(base, fixed)
    else:  # next / auto: follow the body's next link, or the Link header
        p = list(fixed)
        if style == "next" and state.options.page_size:
            p.append((state.size_param, str(size)))
        url: str | None = base
        seen: set[str] = set()
        while url is not None:
            rows, nxt, _, response = get(url, p)
            nxt = nxt or _link_next(response)
            if not nxt:
                break
            url = urljoin(str(response.url), str(nxt))
            p = []  # the next link carries its own query
            if url in seen:
                raise FragmentError(
                    f"{what} on source {source.name} (rest): the next link repeats "
                    f"({_shown(url)}); the endpoint's pagination is broken",
                    source=source.name,
                )
            seen.add(url)
    return out


# ---------------------------------------------------------------------- schema
def _infer_type(values: Iterable[Any]) -> str:
    """The SQL type of a JSON column: BIGINT, DOUBLE, BOOLEAN, DATE, TIMESTAMP or TEXT."""
    seen: set[str] = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            seen.add("BOOLEAN")
        elif isinstance(v, int):
            seen.add("BIGINT")
        elif isinstance(v, float):
            seen.add("DOUBLE")
        elif isinstance(v, str):
            seen.add(_text_type(v))
        else:
            seen.add("JSON")
    if not seen:
        return "TEXT"
    if len(seen) == 1:
        return seen.pop()
    if seen <= {"BIGINT", "DOUBLE"}:
        return "DOUBLE"
    if seen <= {"DATE", "TIMESTAMP"}:
        return "TIMESTAMP"
    return "TEXT"


def _text_type(v: str) -> str:
    if len(v) == 10 and v[4:5] == "-" and v[7:8] == "-":
        try:
            dt.date.fromisoformat(v)
            return "DATE"
        except ValueError:
            return "TEXT"
    if 19 <= len(v) <= 32 and v[4:5] == "-" and v[10:11] in ("T", " "):
        try:
            dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            return "TIMESTAMP"
        except ValueError:
            return "TEXT"
    return "TEXT"


def _meta_url(source: Any) -> str:
    base = _base(source).rstrip("/")
    return f"{base}/_meta"


def _read_meta(client: Any, source: Any, budget: _Budget) -> dict[str, Any] | None:
    state = _state(source)
    if state.options.meta is False:
        return None
    try:
        response, _ = _get(client, source, _meta_url(source), _url_params(source), budget, "attach")
    except RestHTTPError as e:
        if state.options.meta is None and e.http_status in (404, 405):
            return None
        raise
    body = _json(response, source, _shown(_meta_url(source)), "attach")
    if not isinstance(body, dict):
        raise SourceError(
            f"source {source.describe()}: {_shown(_meta_url(source))} is not a JSON object"
        )
    return body


def _apply_meta(source: Any, meta: dict[str, Any]) -> None:
    state = _state(source)
    opts = state.options
    state.meta = meta
    where = f"source {source.name!r}: {_shown(_meta_url(source))}"
    if state.table is None and isinstance(meta.get("name"), str):
        state.table = meta["name"]
    if opts.filters is None and meta.get("filters") is not None:
        filters = meta["filters"]
        try:
            state.filters = dict(_pairs(source.name, "_meta filters", filters))
        except ConfigError as e:
            raise SourceError(f"{where}: bad filters: {e}") from None
    pg = meta.get("pagination")
    if isinstance(pg, dict):
        if opts.pagination == "auto":
            style = pg.get("style", "auto")
            if style not in PAGINATION:
                raise SourceError(f"{where}: unknown pagination style {style!r}")
            state.pagination = style
        for attr in ("page_param", "size_param", "limit_param", "offset_param"):
            if isinstance(pg.get(attr), str) and getattr(opts, attr) == getattr(RestOptions, attr):
                setattr(state, attr, pg[attr])
        if opts.page_size is None:
            # the largest page the service allows: the fewest requests
            size = pg.get("max_page_size") or pg.get("page_size")
            if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                state.page_size = size
    if opts.items_key is None and isinstance(meta.get("items_key"), str):
        state.items_key = meta["items_key"]


def _table_name(source: Any) -> str:
    state = _state(source)
    if state.table:
        return state.table
    path = [p for p in urlsplit(source.endpoint).path.split("/") if p]
    return unquote(path[-1]) if path else source.name


def introspect_rest(source: Any) -> list[Any]:
    """The one table of a REST source: name, columns, key, row estimate.

    Reads ``_meta`` (unless ``meta=False``), else the first page (to infer the schema when
    none is declared, and to count rows).
    """
    from fedlab.catalog import ColumnInfo, TableInfo, _to_type

    state = _state(source)
    opts = state.options
    budget = _Budget(source, None)
    with _client(source) as client:
        meta = _read_meta(client, source, budget)
        if opts.meta and meta is None:  # pragma: no cover - _read_meta raised
            raise SourceError(f"source {source.describe()}: no _meta")
        if meta is not None:
            _apply_meta(source, meta)
        columns: list[tuple[str, str]] = []
        if opts.schema:
            columns = list(opts.schema)
        elif meta is not None and isinstance(meta.get("columns"), list):
            for c in meta["columns"]:
                if isinstance(c, dict) and isinstance(c.get("name"), str):
                    columns.append((c["name"], str(c.get("type") or "TEXT")))
                elif isinstance(c, str):
                    columns.append((c, "TEXT"))
        estimate = opts.row_estimate
        if estimate is None and meta is not None and isinstance(meta.get("rows"), int):
            estimate = meta["rows"]
        if not columns or estimate is None:
            rows, more, total = _first_page(client, source, budget)
            if not columns:
                if not rows:
                    raise SourceError(
                        f"source {source.describe()}: the endpoint returned no rows, so its "
                        "schema cannot be inferred; declare it (schema={...}) or serve _meta"
                    )
                names = list(dict.fromkeys(k for r in rows for k in r))
                columns = [(n, _infer_type(r.get(n) for r in rows)) for n in names]
            if estimate is None:
                estimate = total if total is not None else len(rows) * (10 if more else 1)
    table = _table_name(source)
    state.table = table
    state.columns = columns
    unknown = [c for c in state.filters if c not in {n for n, _ in columns}]
    if unknown:
        raise ConfigError(
            f"source {source.name!r}: filter column(s) {unknown} are not columns of "
            f"{table} ({', '.join(n for n, _ in columns)})"
        )
    pk = list(opts.primary_key or (meta or {}).get("primary_key") or [])
    infos = [ColumnInfo(n, t, _to_type(t, "duckdb")) for n, t in columns]
    return [TableInfo(source.name, table, infos, pk, estimate)]


def _first_page(client: Any, source: Any, budget: _Budget) -> tuple[list[dict], bool, int | None]:
    """(rows of the first page, whether more pages follow, the body's total if any)."""
    state = _state(source)
    params = _url_params(source)
    if state.pagination == "page":
        params += [(state.page_param, "1"), (state.size_param, str(state.page_size))]
    elif state.pagination == "offset":
        params += [(state.limit_param, str(state.page_size)), (state.offset_param, "0")]
    response, _ = _get(client, source, _base(source), params, budget, "attach")
    url = _shown(_base(source), params)
    body = _json(response, source, url, "attach")
    rows, nxt, _ = _rows_of(body, source, url, "attach")
    total = body.get("total") if isinstance(body, dict) else None
    more = bool(nxt or _link_next(response)) or (
        state.pagination in ("page", "offset") and len(rows) >= state.page_size
    )
    return rows, more, total if isinstance(total, int) else None


# ---------------------------------------------------------------------- pushdown
def _literal_value(e: exp.Expression, family: str) -> str | None:
    """The query-parameter text of a literal of the column's type family (None: not sent)."""
    if isinstance(e, exp.Paren):
        e = e.this
    neg = False
    if isinstance(e, exp.Neg):
        neg, e = True, e.this
    if family == "integer" and isinstance(e, exp.Literal) and not e.is_string:
        text = e.this
        if text.lstrip("-").isdigit():
            return f"-{text}" if neg else text
        return None
    if family == "text" and isinstance(e, exp.Literal) and e.is_string and not neg:
        return e.this
    if family == "boolean" and isinstance(e, exp.Boolean) and not neg:
        return "true" if e.this else "false"
    return None


@functools.lru_cache(maxsize=512)
def _sql_type(declared: str) -> exp.DataType:
    """A declared type as fedlab sees it (cached: shared objects, never modify them)."""
    from fedlab.catalog import _to_type

    return _to_type(declared, "duckdb")


def _family(declared: str) -> str:
    t = _sql_type(declared)
    if t.this in exp.DataType.INTEGER_TYPES:
        return "integer"
    if t.this in exp.DataType.TEXT_TYPES:
        return "text"
    if t.this == exp.DataType.Type.BOOLEAN:
        return "boolean"
    return "other"


def pushdown_params(
    sql: str,
    table: str,
    columns: Sequence[tuple[str, str]],
    filters: Mapping[str, str],
    *,
    max_in: int = 1000,
) -> tuple[dict[str, list[str]], list[str]]:
    """The query parameters a fragment's SQL allows: ``{param: [values]}`` and notes.

    Only conjuncts of the WHERE of the one SELECT that reads the table (read once, no
    join) qualify: ``col = literal`` and ``col IN (literal, …)`` on a declared filter
    column, the literal of the column's type (integer, text, boolean). Two conjuncts on
    one column keep the values in both.

    >>> pushdown_params('SELECT "o"."id" FROM "orders" AS "o" WHERE "o"."user_id" IN (3, 7) '
    ...                 'AND "o"."total" > 10 AND "o"."status" = \\'paid\\'', "orders",
    ...                 [("id", "BIGINT"), ("user_id", "BIGINT"), ("status", "TEXT"),
    ...                  ("total", "DOUBLE")], {"user_id": "user_id", "status": "status"})
    ({'user_id': ['3', '7'], 'status': ['paid']}, [])
    """
    from fedlab.sql.pushdown import conjuncts

    notes: list[str] = []
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError:
        return {}, ["fragment SQL not parsed: nothing sent"]
    tables = list(tree.find_all(exp.Table))
    if len(tables) != 1:
        return {}, ["table read more than once: no filter sent"] if len(tables) > 1 else []
    t = tables[0]
    if t.name != table:
        return {}, []
    select = t.parent_select
    if (
        select is None
        or not isinstance(t.parent, exp.From)
        or select.args.get("from_", select.args.get("from")) is not t.parent
        or select.args.get("joins")
    ):
        return {}, []
    alias = t.alias_or_name
    types = {n: _family(d) for n, d in columns}
    found: dict[str, set[str] | None] = {}
    order: dict[str, list[str]] = {}
    for c in conjuncts(select.args.get("where")):
        col: exp.Expression | None = None
        values: list[exp.Expression] = []
        if isinstance(c, exp.EQ):
            if isinstance(c.this, exp.Column):
                col, values = c.this, [c.expression]
            elif isinstance(c.expression, exp.Column):
                col, values = c.expression, [c.this]
        elif isinstance(c, exp.In) and not c.args.get("query") and isinstance(c.this, exp.Column):
            col, values = c.this, list(c.expressions)
        if col is None or (col.table and col.table != alias) or col.name not in filters:
            continue
        family = types.get(col.name, "other")
        texts = [_literal_value(v, family) for v in values]
        if not texts or any(v is None for v in texts):
            continue
        if len(texts) > max_in:
            notes.append(f"{col.name}: {len(texts):,} values > max_in={max_in}: not sent")
            continue
        param = filters[col.name]
        have = found.get(param)
        new = set(texts)
        found[param] = new if have is None else have & new
        order[param] = [v for v in dict.fromkeys([*order.get(param, []), *texts])]
    out = {p: [v for v in order[p] if v in vals] for p, vals in found.items() if vals is not None}
    return out, notes


# ---------------------------------------------------------------------- the reader
def _frame(rows: list[dict], columns: Sequence[tuple[str, str]]) -> pl.DataFrame:
    """Rows (JSON objects) as a frame typed by the declared columns."""
    from fedlab.execute.fetch import coerce, polars_dtype

    series = []
    for name, declared in columns:
        values = [r.get(name) for r in rows]
        want = polars_dtype(_sql_type(declared)) or pl.String()
        try:
            s = pl.Series(name, values, strict=False)
        except Exception:
            s = pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.String)
        if s.dtype == pl.Null:
            s = s.cast(want)
        elif s.dtype == pl.Object or isinstance(s.dtype, pl.List | pl.Struct):
            s = pl.Series(name, [None if v is None else str(v) for v in values], dtype=pl.String)
        series.append(s)
    df = pl.DataFrame(series) if series else pl.DataFrame()
    typed = [(n, _sql_type(d)) for n, d in columns]
    df = coerce(df, typed)
    casts = []
    for n, t in typed:
        want = polars_dtype(t) or pl.String()
        if df.schema[n] != want:
            casts.append(pl.col(n).cast(want, strict=False))
    return df.with_columns(casts) if casts else df


@functools.lru_cache(maxsize=512)
def _decimal_type(declared: str) -> str | None:
    """``DECIMAL(p, s)`` for a column declared as a decimal of stated precision (p <= 38),
    else None.

    fedlab computes decimals as float64, so the fetched rows hold floats; the fragment's
    SQL still sees the declared decimal, so DuckDB computes over it as PostgreSQL computes
    over a NUMERIC (``CAST(994.5 AS INTEGER)`` is 995, not the float cast's 994).

    >>> _decimal_type("DECIMAL(10, 2)"), _decimal_type("numeric(5)"), _decimal_type("DECIMAL")
    ('DECIMAL(10, 2)', 'DECIMAL(5, 0)', None)
    """
    if "(" not in declared:
        return None  # no stated precision (PostgreSQL's NUMERIC is unbounded)
    try:
        t = exp.DataType.build(declared, dialect="duckdb")
        p, *rest = (int(e.name) for e in t.expressions)
    except Exception:
        return None
    s = rest[0] if rest else 0
    ok = t.this == exp.DataType.Type.DECIMAL and 1 <= p <= 38 and 0 <= s <= p
    return f"DECIMAL({p}, {s})" if ok else None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


#: idle in-memory DuckDB connections (opening one costs ~10 ms; each fetch borrows one)
_DUCKDB_IDLE: queue.SimpleQueue = queue.SimpleQueue()
_DUCKDB_KEEP = 4


@contextlib.contextmanager
def _duckdb() -> Iterator[Any]:
    import duckdb

    try:
        con = _DUCKDB_IDLE.get_nowait()
    except queue.Empty:
        con = duckdb.connect(config={"threads": 1})
    try:
        yield con
    except BaseException:
        con.close()  # after an interrupt or an error: never reused
        raise
    if _DUCKDB_IDLE.qsize() < _DUCKDB_KEEP:
        _DUCKDB_IDLE.put(con)
    else:
        con.close()


def _run_local(
    fragment: Any, source: Any, table: str, df: pl.DataFrame, budget: _Budget, max_rows: Any
) -> Any:
    """The fragment's SQL over the fetched rows, in DuckDB (interrupted at the deadline)."""
    from fedlab.execute.fetch import limit_sql

    left, _ = budget.timeout()
    if budget.end is not None and left <= 0:
        raise QueryTimeoutError(
            f"fragment {fragment.id} on source {source.name} passed its deadline after its "
            "HTTP requests"
        )
    with _duckdb() as con:
        timer = None
        if budget.end is not None:
            timer = threading.Timer(left, con.interrupt)
            timer.daemon = True
            timer.start()
        decimals = {
            n: d for n, d in ((n, _decimal_type(t)) for n, t in _state(source).columns) if d
        }
        raw = f"__fedlab_rest_{table}" if decimals else table
        con.register(raw, df.to_arrow())
        try:
            if decimals:  # the declared decimals, as a view named like the table
                casts = ", ".join(f"CAST({_q(n)} AS {d}) AS {_q(n)}" for n, d in decimals.items())
                con.execute(
                    f"CREATE OR REPLACE TEMP VIEW {_q(table)} AS "
                    f"SELECT * REPLACE ({casts}) FROM {_q(raw)}"
                )
            return con.execute(limit_sql(fragment.sql, max_rows)).to_arrow_table()
        except Exception:
            if timer is not None and not timer.is_alive():
                raise QueryTimeoutError(
                    f"fragment {fragment.id} on source {source.name} passed its deadline "
                    "while DuckDB ran it over the fetched rows"
                ) from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if decimals:
                with contextlib.suppress(Exception):  # an interrupted connection is dropped
                    con.execute(f"DROP VIEW IF EXISTS {_q(table)}")
            con.unregister(raw)


def read_fragment(fragment: Any, source: Any, deadline: float | None = None) -> Any:
    """The fetch seam's reader for REST sources (see the module's docstring)."""
    from fedlab.execute.cancel import CURRENT, FetchContext
    from fedlab.execute.fetch import FetchResult

    ctx = CURRENT.get() or FetchContext()
    state = _state(source)
    table = state.table or _table_name(source)
    what = f"fragment {fragment.id}"
    params, notes = pushdown_params(
        fragment.sql, table, state.columns, state.filters, max_in=state.options.max_in
    )
    # the longest value list is sent in batches (one run of pages per batch)
    batched = max(params, key=lambda p: len(params[p]), default=None)
    batch = state.options.in_batch
    runs: list[list[tuple[str, str]]] = []
    fixed = [(p, v) for p, vs in params.items() if p != batched for v in vs]
    if batched is None:
        runs = [fixed]
    else:
        vals = params[batched]
        runs = [
            fixed + [(batched, v) for v in vals[i : i + batch]] for i in range(0, len(vals), batch)
        ]
    budget = _Budget(source, deadline)
    fetched = _Fetched()
    with _client(source) as client:
        for run in runs:
            left = None if ctx.max_bytes is None else ctx.max_bytes - fetched.nbytes
            got = _fetch_all(client, source, run, budget, what, ctx.cancelled, left)
            fetched.rows.extend(got.rows)
            fetched.requests += got.requests
            fetched.nbytes += got.nbytes
    df = _frame(fetched.rows, state.columns)
    result = _run_local(fragment, source, table, df, budget, ctx.max_rows)
    sent = ", ".join(
        f"{p}={vs[0]}" if len(vs) == 1 else f"{p} ({len(vs)} values)" for p, vs in params.items()
    )
    reader = f"rest ({fetched.requests} request{'s' if fetched.requests != 1 else ''}"
    reader += f"; sent {sent})" if sent else "; no filter sent)"
    if notes:
        reader += f" [{'; '.join(notes)}]"
    return FetchResult(pl.from_arrow(result), fetched.nbytes, reader)


# ---------------------------------------------------------------------- ping / health
class RestConnection:
    """What ``Source.connect()`` returns for a REST source: a GET of ``_meta`` (or of one
    small page) proved the service answers; ``cursor().execute(...)`` answers the health
    probe's ``SELECT 1`` and version query from that response (no SQL is sent)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.version: str | None = None
        self._row: tuple[Any, ...] = (1,)
        self._probe()

    def _probe(self) -> None:
        source = self.source
        state = _state(source)
        budget = _Budget(source, None)
        budget.read_timeout = min(
            state.options.read_timeout, max(source.options.connect_timeout, 0.1)
        )
        with _client(source) as client:
            if state.meta is not None or state.options.meta:
                url, params = _meta_url(source), _url_params(source)
            else:
                url, params = _base(source), _url_params(source)
                if state.pagination == "page":
                    params += [(state.page_param, "1"), (state.size_param, "1")]
                elif state.pagination == "offset":
                    params += [(state.limit_param, "1"), (state.offset_param, "0")]
            try:
                response, _ = _get(client, source, url, params, budget, "ping")
            except RestHTTPError as e:
                raise SourceUnavailableError(
                    f"source {source.describe()} does not answer: HTTP {e.http_status}"
                ) from None
        meta = state.meta or {}
        server = response.headers.get("server")
        name = meta.get("service") or meta.get("name")
        version = meta.get("version")
        self.version = " ".join(str(x) for x in (name, version) if x) or server or "HTTP"
        if server and self.version != server:
            self.version += f" ({server})"

    def cursor(self) -> RestConnection:
        return self

    def execute(self, sql: str, params: Any = None) -> RestConnection:
        """Answer the health probe (``SELECT 1``, ``SELECT version()``); any other SQL is
        refused: a REST service runs no SQL (fedlab runs a fragment over its rows), so no
        check that needs the source to compute something (a residency rule's group-size
        count, say) can be answered here."""
        text = " ".join(sql.lower().split())
        if text == "select 1":
            self._row = (1,)
        elif text == "select version()":
            self._row = (self.version,)
        else:
            raise SourceError(
                f"source {self.source.name!r} is a REST service: it runs no SQL (fedlab runs "
                "each fragment over the rows it fetches), so it cannot answer "
                f"{' '.join(sql.split())[:80]!r}"
            )
        return self

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [self._row]

    def fetchone(self) -> tuple[Any, ...]:
        return self._row

    def close(self) -> None:
        pass

    def __enter__(self) -> RestConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quote_path(value: Any) -> str:
    """A value as one URL path segment (``/users/{id}``)."""
    return quote(str(value), safe="")
