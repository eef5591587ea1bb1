"""TLS: settings pass through from the URL to every connection fedlab opens.

The encryption proof needs a PostgreSQL server with ``ssl = on``; it skips with the reason
otherwise (under ``CI=true`` / ``FEDLAB_REQUIRE_SERVERS=1`` it fails instead: CI must turn
TLS on, see docs/reliability.md).
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

import fedlab as fl
from fedlab.errors import ConfigError, SourceUnavailableError
from fedlab.source import Source
from tests.conftest import _require_servers


def test_tls_settings_are_parsed_shown_and_passed_on() -> None:
    s = Source.from_url(
        "crm",
        "postgresql://bob:pw-s3cret@db.example:5432/crm?sslmode=verify-full"
        "&sslrootcert=/etc/fedlab/root.crt&sslpassword=key-s3cret",
    )
    assert s.tls_options["sslmode"] == "verify-full" and s.wants_tls
    assert s.tls == "verified (sslmode=verify-full, CA root.crt)"
    shown = s.redacted_url
    assert "sslmode=verify-full" in shown and "sslrootcert=/etc/fedlab/root.crt" in shown
    assert "s3cret" not in shown and "s3cret" not in repr(s)
    assert "sslmode=verify-full" in s.connectorx_url and "connect_timeout=" in s.connectorx_url
    m = Source.from_url(
        "sales", "mysql://root@db.example:3306/sales?ssl_ca=/ca.pem&ssl_verify_cert=1"
    )
    assert m.wants_tls and not m.connectorx_tls  # read through pymysql, which takes the CA
    assert m.tls == "verified (ssl, CA ca.pem)"
    assert m._pymysql_tls() == {"ssl_ca": "/ca.pem", "ssl_verify_cert": True}
    assert "ssl_ca" not in m.connectorx_url  # connectorx's MySQL URL has no TLS parameter
    with pytest.raises(ConfigError, match="sslmode"):
        Source.from_url("x", "postgresql://u@h/db?sslmode=always")


def test_sources_frame_shows_tls(pg_database) -> None:
    url = pg_database("fedlab_tls")
    fed = fl.Federation()
    fed.attach("plain", url)
    fed.attach("opt", url + "?sslmode=prefer")
    tls = dict(zip(fed.sources()["name"], fed.sources()["tls"], strict=True))
    assert tls == {"plain": "loopback", "opt": "optional (sslmode=prefer)"}


def _server_ssl(url: str) -> bool:
    s = Source.from_url("probe", url)
    with psycopg.connect(
        host=s.host, port=s.port, user=s.user or "postgres", dbname=s.database, sslmode="disable"
    ) as c:
        return c.execute("SHOW ssl").fetchone()[0] == "on"


def test_require_against_a_server_without_tls_fails_fast(pg_database) -> None:
    url = pg_database("fedlab_tls")
    if _server_ssl(url):
        pytest.skip("the server offers TLS: nothing to refuse")
    fed = fl.Federation()
    t = time.monotonic()
    with pytest.raises(SourceUnavailableError):
        fed.attach("crm", url + "?sslmode=require")  # psycopg refuses at attach
    src = Source.from_url("crm", url + "?sslmode=require")
    from fedlab.execute.fetch import _probe

    with pytest.raises(SourceUnavailableError, match="does not offer TLS"):
        _probe(src)  # connectorx would retry the TLS handshake for 30 s
    assert time.monotonic() - t < 3


def test_fedlab_sessions_are_encrypted_with_sslmode_require(pg_database) -> None:
    url = pg_database("fedlab_tls")
    if not _server_ssl(url):
        msg = (
            "the PostgreSQL server has ssl = off: TLS cannot be proven here "
            "(turn it on: see docs/reliability.md, 'Requiring TLS')"
        )
        if _require_servers():
            pytest.fail(msg + " (CI=true / FEDLAB_REQUIRE_SERVERS=1: TLS is required)")
        pytest.skip(msg)
    s = Source.from_url("x", url)
    admin = psycopg.connect(
        host=s.host, port=s.port, user=s.user or "postgres", dbname=s.database, autocommit=True
    )
    try:
        admin.execute("CREATE TABLE slowish (x int)")
        fed = fl.Federation()
        fed.attach("crm", url + "?sslmode=require")
        assert fed.sources()["tls"].to_list() == ["required (sslmode=require)"]
        # Source.connect() (psycopg: catalog, health, cancel, the SQLAlchemy fallback)
        con = fed.catalog.sources["crm"].connect()
        try:
            row = con.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert row.fetchone()[0] is True
        finally:
            con.close()
        # the connectorx fragment session: found by its fedlab tag while it runs
        admin.execute("DROP TABLE slowish")
        admin.execute("CREATE VIEW slowish AS SELECT 1 AS x FROM pg_sleep(1.5)")
        out: list = []
        th = threading.Thread(target=lambda: out.append(fed.sql("SELECT x FROM slowish")))
        th.start()
        seen: list = []
        for _ in range(60):
            seen = admin.execute(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid "
                "WHERE a.application_name LIKE 'fedlab-%%' AND a.datname = %s",
                (s.database,),
            ).fetchall()
            if seen:
                break
            time.sleep(0.05)
        th.join()
        assert seen and all(r[0] is True for r in seen), seen
        assert out and out[0].trace.entries[0].reader.startswith("connectorx")
    finally:
        admin.close()
