"""Sources: one database each, addressed by a SQLAlchemy-style URL.

A :class:`Source` knows how to open a read-only connection to its database with a
connect timeout, and how to describe itself without ever showing a password.

>>> s = Source.from_url("crm", "postgresql://bob:s3cret@127.0.0.1:5432/crm")
>>> s.kind, s.dialect, s.redacted_url
('postgresql', 'postgres', 'postgresql://bob:***@127.0.0.1:5432/crm')
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from fedlab.errors import (
    ConfigError,
    MissingDatabaseFileError,
    SourceUnavailableError,
)
from fedlab.security import redact, register_secret

__all__ = ["KINDS", "TLS_OPTIONS", "Source", "SourceOptions"]

#: URL scheme -> (kind, sqlglot dialect)
KINDS: dict[str, tuple[str, str]] = {
    "sqlite": ("sqlite", "sqlite"),
    "postgresql": ("postgresql", "postgres"),
    "postgres": ("postgresql", "postgres"),
    "mysql": ("mysql", "mysql"),
    "mariadb": ("mysql", "mysql"),
    "duckdb": ("duckdb", "duckdb"),
    # a JSON endpoint as a table (fedlab.rest): planned as DuckDB, run locally over its rows
    "http": ("rest", "duckdb"),
    "https": ("rest", "duckdb"),
}

#: TLS settings read from a URL's query string, per kind (passed to every connection)
TLS_OPTIONS: dict[str, tuple[str, ...]] = {
    "postgresql": ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword"),
    "mysql": (
        "ssl",
        "ssl_ca",
        "ssl_cert",
        "ssl_key",
        "ssl_verify_cert",
        "ssl_verify_identity",
        "ssl_disabled",
    ),
}
#: TLS settings that are secrets (never shown)
_TLS_SECRETS = ("sslpassword",)
#: PostgreSQL ``sslmode`` values that refuse a connection without TLS
PG_TLS_REQUIRED = ("require", "verify-ca", "verify-full")

_TRUE = ("1", "true", "yes", "on", "required")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SourceOptions:
    """Per-source settings.

    Attributes:
        connect_timeout: seconds to wait for a connection before the source counts as down.
        statement_timeout: seconds a fragment may run on the server (None: no limit).
        read_only: open sessions read-only (always on for queries; kept for transactions).
    """

    connect_timeout: float = 5.0
    statement_timeout: float | None = None
    read_only: bool = True


@dataclass
class Source:
    """One attached database."""

    name: str
    kind: str
    dialect: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    database: str | None = None
    path: Path | None = None
    tags: dict[str, str] = field(default_factory=dict)
    options: SourceOptions = field(default_factory=SourceOptions)
    #: TLS settings from the URL's query (``sslmode``, ``sslrootcert``; ``ssl_ca``…)
    tls_options: dict[str, str] = field(default_factory=dict)
    _password: str | None = field(default=None, repr=False)
    #: REST sources (``kind="rest"``): the endpoint URL (may hold secrets: never print it)
    endpoint: str | None = field(default=None, repr=False)
    #: REST sources: options, resolved schema and counters (:class:`fedlab.rest.RestState`)
    rest: Any = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_url(
        cls,
        name: str,
        url: str,
        *,
        tags: dict[str, str] | None = None,
        base_dir: str | Path | None = None,
        **options: Any,
    ) -> Source:
        """Parse ``url`` into a Source; relative file paths resolve from ``base_dir`` (cwd).

        ``kind="rest"`` (implied by ``http://`` / ``https://``) makes a JSON endpoint a
        table, with the options of :mod:`fedlab.rest` (``schema``, ``filters``,
        ``headers``, ``pagination``…).
        """
        if not _NAME.match(name or ""):
            raise ConfigError(
                f"source name {name!r} is not a valid identifier "
                "(letters, digits and _, not starting with a digit)"
            )
        if not isinstance(url, str) or "://" not in url:
            raise ConfigError(
                f"source {name!r}: {redact(str(url))!r} is not a database URL "
                "(expected sqlite:///path, postgresql://…, mysql://…, mariadb://…, "
                "duckdb:///path, or http(s)://… with kind='rest')"
            )
        scheme = url.split("://", 1)[0].lower().split("+", 1)[0]
        wanted = options.pop("kind", None)
        if wanted is not None and wanted != KINDS.get(scheme, (None,))[0]:
            if wanted == "rest":
                raise ConfigError(
                    f"source {name!r}: kind='rest' needs an http:// or https:// URL, "
                    f"got a {scheme}:// URL"
                )
            raise ConfigError(
                f"source {name!r}: kind={wanted!r} does not match the URL scheme {scheme!r} "
                f"(kinds: {', '.join(sorted({k for k, _ in KINDS.values()}))})"
            )
        if scheme not in KINDS:
            raise ConfigError(
                f"source {name!r}: unsupported URL scheme {scheme!r} "
                f"(supported: {', '.join(sorted(KINDS))})"
            )
        kind, dialect = KINDS[scheme]
        if kind == "rest":
            from fedlab.rest import rest_source

            return rest_source(name, url, tags=tags, options=options)
        known = {f for f in SourceOptions.__dataclass_fields__}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(
                f"source {name!r}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        opts = SourceOptions(**options)
        tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if kind in ("sqlite", "duckdb"):
            raw = url.split("://", 1)[1]
            if not raw.startswith("/"):
                raise ConfigError(f"source {name!r}: expected {scheme}:///path, got {url!r}")
            raw = raw[1:].split("?", 1)[0]  # sqlite:///rel -> "rel", sqlite:////abs -> "/abs"
            if raw in ("", ":memory:"):
                raise ConfigError(
                    f"source {name!r}: an in-memory {kind} database cannot be shared; give a file path"
                )
            path = Path(unquote(raw))
            if not path.is_absolute():
                path = Path(base_dir or Path.cwd()) / path
            path = path.resolve()
            if not path.is_file():
                raise MissingDatabaseFileError(
                    f"source {name!r}: the {kind} file {str(path)!r} does not exist "
                    "(fedlab never creates an empty database in its place)"
                )
            return cls(name, kind, dialect, path=path, tags=tags, options=opts)
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError as e:
            raise ConfigError(f"source {name!r}: bad port in {redact(url)!r}: {e}") from None
        password = unquote(parts.password) if parts.password else None
        if password:
            register_secret(password)
        query = dict(parse_qsl(parts.query))
        if "password" in query:
            password = query["password"]
            register_secret(password)
        database = parts.path.lstrip("/") or None
        tls_options = {k: query[k] for k in TLS_OPTIONS.get(kind, ()) if k in query}
        for k in _TLS_SECRETS:
            if tls_options.get(k):
                register_secret(tls_options[k])
        mode = tls_options.get("sslmode")
        if mode is not None and mode not in (
            "disable",
            "allow",
            "prefer",
            *PG_TLS_REQUIRED,
        ):
            raise ConfigError(
                f"source {name!r}: sslmode={mode!r} is not one of disable, allow, prefer, "
                "require, verify-ca, verify-full"
            )
        return cls(
            name,
            kind,
            dialect,
            host=parts.hostname or "127.0.0.1",
            port=port or (5432 if kind == "postgresql" else 3306),
            user=unquote(parts.username) if parts.username else None,
            database=database,
            tags=tags,
            options=opts,
            tls_options=tls_options,
            _password=password,
        )

    # ------------------------------------------------------------------ descriptions
    @property
    def redacted_url(self) -> str:
        """The URL with the password replaced by ``***``."""
        return self._url(redacted=True)

    def _url(self, *, redacted: bool, extra: dict[str, str] | None = None) -> str:
        if self.kind == "rest":
            from fedlab.rest import _redact_endpoint

            return _redact_endpoint(self.endpoint or "") if redacted else self.endpoint or ""
        if self.path is not None:  # SQLAlchemy style: sqlite:////abs/path
            return f"{self.kind}:///{self.path}"
        auth = self.user or ""
        if self._password:
            auth += ":***" if redacted else f":{self._password}"
        if auth:
            auth += "@"
        query = {
            k: ("***" if redacted and k in _TLS_SECRETS else v)
            for k, v in {**self.tls_options, **(extra or {})}.items()
        }
        tail = f"?{urlencode(query, safe='/')}" if query else ""
        return f"{self.kind}://{auth}{self.host}:{self.port}/{self.database or ''}{tail}"

    @property
    def connectorx_url(self) -> str:
        """The URL connectorx reads (holds the password: never print it).

        PostgreSQL: the TLS settings and ``connect_timeout`` go in the query string.
        MariaDB: connectorx's MySQL reader takes no TLS parameter, so a source with TLS
        settings is read through pymysql instead (see :attr:`connectorx_tls`).
        """
        if self.kind == "postgresql":
            extra = {"connect_timeout": str(max(1, round(self.options.connect_timeout)))}
            return self._url(redacted=False, extra=extra)
        if self.kind == "mysql":
            saved, self.tls_options = self.tls_options, {}
            try:
                ms = str(max(1, int(self.options.connect_timeout * 1000)))
                # prefer_socket=false: stay on TCP after the handshake (the MySQL driver would
                # switch to the Unix socket on 127.0.0.1): the same path as a remote server,
                # so network faults and timeouts apply; no read-speed difference measured
                # (600k lineitem rows: 0.18 s both ways)
                extra = {"tcp_connect_timeout_ms": ms, "prefer_socket": "false"}
                return self._url(redacted=False, extra=extra)
            finally:
                self.tls_options = saved
        return self._url(redacted=False)

    @property
    def connectorx_tls(self) -> bool:
        """Whether connectorx can honour this source's TLS settings (False: MariaDB with
        TLS settings, read through pymysql)."""
        return not (self.kind == "mysql" and self.wants_tls)

    @property
    def wants_tls(self) -> bool:
        """The URL asks for an encrypted connection."""
        t = self.tls_options
        if self.kind == "postgresql":
            return t.get("sslmode") in PG_TLS_REQUIRED
        if self.kind == "mysql":
            if str(t.get("ssl_disabled", "")).lower() in _TRUE:
                return False
            return (
                bool(t.get("ssl_ca") or t.get("ssl_cert")) or str(t.get("ssl", "")).lower() in _TRUE
            )
        return False

    def describe(self) -> str:
        """``name (url)`` for messages."""
        return f"{self.name} ({self.redacted_url})"

    def __repr__(self) -> str:
        return f"Source(name={self.name!r}, url={self.redacted_url!r}, tags={self.tags!r})"

    @property
    def tls(self) -> str:
        """What protects the connection, e.g. ``required (sslmode=require)``,
        ``verified (sslmode=verify-full, CA root.crt)``, ``local file``, ``loopback`` or
        ``none``. File paths are shown by name only; secrets never."""
        if self.path is not None:
            return "local file"
        if self.kind == "rest" and (self.endpoint or "").lower().startswith("https://"):
            return "verified (https)"
        t = self.tls_options
        ca = t.get("sslrootcert") or t.get("ssl_ca")
        ca_text = f", CA {Path(ca).name}" if ca else ""
        if self.kind == "postgresql" and "sslmode" in t:
            mode = t["sslmode"]
            what = {
                "disable": "off",
                "allow": "optional",
                "prefer": "optional",
                "require": "required",
                "verify-ca": "verified",
                "verify-full": "verified",
            }[mode]
            return f"{what} (sslmode={mode}{ca_text})"
        if self.kind == "mysql" and t:
            if not self.wants_tls:
                return "off (ssl_disabled)"
            verify = (
                str(t.get("ssl_verify_cert", "")).lower() in _TRUE
                or str(t.get("ssl_verify_identity", "")).lower() in _TRUE
            )
            return f"{'verified' if verify else 'required'} (ssl{ca_text})"
        if self.host in ("127.0.0.1", "localhost", "::1"):
            return "loopback"
        return "none"

    # ------------------------------------------------------------------ sessions
    def session_setup(
        self, *, statement_timeout: float | None = -1.0, tag: str | None = None
    ) -> list[str]:
        """Statements that make a fragment session read-only, bounded, exact and tagged.

        ``statement_timeout``: seconds (default: the source's option; None: no limit);
        ``tag``: PostgreSQL ``application_name`` of the session (see
        :mod:`fedlab.execute.cancel`; MariaDB sessions are tagged in the SQL text).
        """
        limit = self.options.statement_timeout if statement_timeout == -1.0 else statement_timeout
        if self.kind == "postgresql":
            stmts = []
            if tag is not None:
                stmts.append(f"SET application_name = '{tag.replace(chr(39), '')}'")
            stmts.append("SET default_transaction_read_only = on")
            if limit:
                stmts.append(f"SET statement_timeout = {max(int(limit * 1000), 1)}")
            return stmts
        if self.kind == "mysql":
            # div_precision_increment: MariaDB keeps only 4 extra digits after a decimal
            # division (AVG included); PostgreSQL keeps ~16. 30 is the maximum.
            stmts = [
                "SET SESSION TRANSACTION READ ONLY",
                "SET SESSION div_precision_increment = 30",
                "SET NAMES utf8mb4",
            ]
            if limit:
                stmts.append(f"SET SESSION max_statement_time = {max(limit, 0.001):.3f}")
            return stmts
        return []

    def connect(self, *, read_only: bool = True, application_name: str | None = None) -> Any:
        """Open a DB-API connection (read-only by default) with the URL's TLS settings;
        raise SourceUnavailableError fast."""
        timeout = self.options.connect_timeout
        if self.kind == "rest":  # HTTP has no session: a GET proves the service answers
            from fedlab.rest import RestConnection

            return RestConnection(self)
        try:
            if self.kind == "sqlite":
                mode = "ro" if read_only else "rw"
                con = sqlite3.connect(
                    f"file:{self.path}?mode={mode}",
                    uri=True,
                    timeout=timeout,
                    check_same_thread=False,
                )
                return con
            if self.kind == "duckdb":
                import duckdb

                return duckdb.connect(str(self.path), read_only=read_only)
            if self.kind == "postgresql":
                import psycopg

                con = psycopg.connect(
                    host=self.host,
                    port=self.port,
                    user=self.user or "postgres",
                    password=self._password,
                    dbname=self.database or "postgres",
                    connect_timeout=max(1, int(timeout)),
                    autocommit=True,
                    application_name=application_name or f"fedlab:{self.name}",
                    **self.tls_options,
                )
                if read_only:
                    for stmt in self.session_setup():
                        con.execute(stmt)
                return con
            if self.kind == "mysql":
                import pymysql

                con = pymysql.connect(
                    host=self.host,
                    port=self.port,
                    user=self.user or "root",
                    password=self._password or "",
                    database=self.database,
                    connect_timeout=timeout,
                    charset="utf8mb4",
                    autocommit=True,
                    **self._pymysql_tls(),
                )
                if read_only:
                    with con.cursor() as cur:
                        for stmt in self.session_setup():
                            cur.execute(stmt)
                return con
        except Exception as e:  # driver errors differ per kind; all mean "not usable"
            raise SourceUnavailableError(
                f"source {self.describe()} is not reachable: {type(e).__name__}: {e}"
            ) from None
        raise ConfigError(f"source {self.name!r}: unknown kind {self.kind!r}")

    def _pymysql_tls(self) -> dict[str, Any]:
        t = self.tls_options
        if not t:
            return {}
        if not self.wants_tls:
            return {"ssl_disabled": True}
        kw: dict[str, Any] = {}
        for k in ("ssl_ca", "ssl_cert", "ssl_key"):
            if t.get(k):
                kw[k] = t[k]
        for k in ("ssl_verify_cert", "ssl_verify_identity"):
            if k in t:
                kw[k] = str(t[k]).lower() in _TRUE
        if not kw.get("ssl_ca") and not kw.get("ssl_cert"):
            kw["ssl"] = {"check_hostname": False}  # encrypt, no CA: like sslmode=require
        return kw

    def ping(self) -> float:
        """Connect and run ``SELECT 1``; return the round trip in seconds."""
        import time

        t0 = time.perf_counter()
        con = self.connect()
        try:
            cur = con.cursor()
            cur.execute("SELECT 1")
            cur.fetchall()
        except Exception as e:
            raise SourceUnavailableError(
                f"source {self.describe()} does not answer: {type(e).__name__}: {e}"
            ) from None
        finally:
            con.close()
        return time.perf_counter() - t0
