"""Shared fixtures: real PostgreSQL and MariaDB servers, uniquely named databases.

Server tests skip with a clear reason when a server is not reachable, except under
``CI=true`` or ``FEDLAB_REQUIRE_SERVERS=1``, where a missing server is a failure.
Benchmarks (``-m bench``) and exhaustive matrices (``-m slow``) are not run by default.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

PG_SERVER = os.environ.get("FEDLAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MY_SERVER = os.environ.get("FEDLAB_TEST_MYSQL", "mysql://root@127.0.0.1:3306/")


def _require_servers() -> bool:
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("FEDLAB_REQUIRE_SERVERS") == "1"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = config.getoption("-m") or ""
    for mark in ("bench", "slow"):
        if mark in markexpr:
            continue
        skip = pytest.mark.skip(reason=f"{mark} test: run with -m {mark}")
        for item in items:
            if mark in item.keywords:
                item.add_marker(skip)


def _server(url: str, what: str) -> str:
    from fedlab.source import Source

    try:
        Source.from_url("probe", url, connect_timeout=3).ping()
    except Exception as e:
        msg = f"{what} server not reachable at {Source.from_url('probe', url).redacted_url}: {e}"
        if _require_servers():
            pytest.fail(msg + " (CI=true / FEDLAB_REQUIRE_SERVERS=1: servers are required)")
        pytest.skip(msg)
    return url


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    return _server(PG_SERVER, "PostgreSQL")


@pytest.fixture(scope="session")
def mariadb_server_url() -> str:
    return _server(MY_SERVER, "MariaDB")


def unique_name(prefix: str = "fedlab_t") -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def _factory(server_url: str) -> Iterator[Callable[[str], str]]:
    from fedlab.load import create_database, drop_database

    made: list[str] = []

    def make(prefix: str = "fedlab_t") -> str:
        name = unique_name(prefix)
        made.append(name)
        return create_database(server_url, name)

    yield make
    for name in made:
        drop_database(server_url, name)


@pytest.fixture(scope="session")
def pg_database(pg_server_url: str) -> Iterator[Callable[[str], str]]:
    """Factory: ``pg_database()`` creates a unique PostgreSQL database, returns its URL;
    all are dropped at the end of the session."""
    yield from _factory(pg_server_url)


@pytest.fixture(scope="session")
def mariadb_database(mariadb_server_url: str) -> Iterator[Callable[[str], str]]:
    """Factory like ``pg_database`` for MariaDB."""
    yield from _factory(mariadb_server_url)
