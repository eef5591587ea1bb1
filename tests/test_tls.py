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


# ---------------------------------------------------------------------- MariaDB
def _my_admin(url: str):
    import pymysql

    s = Source.from_url("probe", url)
    return pymysql.connect(
        host=s.host, port=s.port, user=s.user or "root", database=s.database, autocommit=True
    )


def test_mariadb_sessions_are_encrypted_with_ssl_settings(mariadb_database) -> None:
    """With ``?ssl=true`` every MariaDB connection fedlab opens is encrypted (reads go
    through pymysql: connectorx's MySQL reader takes no TLS setting), proven with the
    session's own ``Ssl_cipher`` and with a user the server admits over TLS only."""
    import uuid

    url = mariadb_database("fedlab_tls")
    admin = _my_admin(url)
    user = f"fl_tls_{uuid.uuid4().hex[:8]}"
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.have_ssl")
            if cur.fetchone()[0] != "YES":
                msg = (
                    "the MariaDB server has no TLS (have_ssl != YES): TLS cannot be proven "
                    "here (bash scripts/setup-mariadb-tls.sh switches it on)"
                )
                if _require_servers():
                    pytest.fail(msg + " (CI=true / FEDLAB_REQUIRE_SERVERS=1: TLS is required)")
                pytest.skip(msg)
            # what the session fedlab's fragment runs in says about itself
            cur.execute(
                "CREATE VIEW tls_probe AS SELECT VARIABLE_VALUE AS cipher "
                "FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'"
            )
            cur.execute(f"CREATE USER '{user}'@'127.0.0.1' REQUIRE SSL")
            db = Source.from_url("x", url).database
            cur.execute(f"GRANT SELECT, SHOW VIEW ON `{db}`.* TO '{user}'@'127.0.0.1'")
        s = Source.from_url("x", url)
        tls_url = f"mysql://{user}@{s.host}:{s.port}/{s.database}?ssl=true"
        plain_url = f"mysql://{user}@{s.host}:{s.port}/{s.database}"

        fed = fl.Federation()
        fed.attach("sales", tls_url)
        assert "ssl" in fed.sources()["tls"][0]
        cipher = fed.sql("SELECT cipher FROM tls_probe").df["cipher"].to_list()
        assert len(cipher) == 1 and cipher[0], cipher  # a cipher: the fragment was encrypted
        con = fed.catalog.sources["sales"].connect()  # catalog, health, cancel, fallback
        try:
            with con.cursor() as cur:
                cur.execute(
                    "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
                    "WHERE VARIABLE_NAME = 'Ssl_cipher'"
                )
                assert cur.fetchone()[0]
        finally:
            con.close()
        # the same user without TLS settings is refused by the server: it did need TLS
        with pytest.raises(fl.FedlabError) as ei:
            fl.Federation().attach("plain", plain_url).sql("SELECT cipher FROM tls_probe")
        assert user in str(ei.value) or "Access denied" in str(ei.value)

        # the root session without TLS settings is not encrypted (the probe can tell)
        fed2 = fl.Federation()
        fed2.attach("sales", url)
        assert fed2.sql("SELECT cipher FROM tls_probe").df["cipher"].to_list() == [""]
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        admin.close()
