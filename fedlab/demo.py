"""The embedded demo: the seed's four databases (Users, Orders, Products, Inventory).

Four SQLite files, generated deterministically (a seeded generator) and attached as four
sources through a ``fedlab.toml`` written next to them:

=========  ===============  ==========  ============================================
source     file             table       primary key
=========  ===============  ==========  ============================================
crm        users.db         users       id
sales      orders.db        orders      id
catalog    products.db      products    id
stock      inventory.db     inventory   product_id, warehouse
=========  ===============  ==========  ============================================

The data is small (about 850 rows at ``scale=1``; every table but inventory grows
linearly with ``scale``) and full of the traps a federated engine must survive:
mixed-case and trailing-space strings (status ``'paid'``, ``'PAID'``, ``'paid '``;
country ``'US'``, ``'us'``, ``'US '``), NULL join keys (``orders.user_id``), orphans on
both sides of every join, non-ASCII names (Zoë, José, 李雷), LIKE metacharacters
(``'50% off lamp'``, ``'a_b widget'``, a backslash).

>>> f = frames()
>>> sorted(f), f["users"].columns[:4]
(['inventory', 'orders', 'products', 'users'], ['id', 'name', 'email', 'country'])
>>> fed = federation()                   # doctest: +SKIP
>>> fed.sql(SEED_QUERY).df               # doctest: +SKIP

:func:`load_into` copies some tables to real servers so that the demo spans engines:
users on PostgreSQL, orders on MariaDB, inventory in a DuckDB file, products in SQLite.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import polars as pl

from fedlab.catalog import introspect
from fedlab.errors import ConfigError, MissingDatabaseFileError
from fedlab.federation import Federation
from fedlab.load import create_database, write_tables
from fedlab.source import Source

__all__ = [
    "CONFIG_NAME",
    "LAYOUT",
    "PRIMARY_KEYS",
    "SEED",
    "SEED_QUERY",
    "build",
    "built_scale",
    "default_dir",
    "federation",
    "frames",
    "load_into",
]

#: The query of the seed document: US users and what their orders cost.
SEED_QUERY = (
    "SELECT u.name, o.total FROM users u JOIN orders o ON u.id = o.user_id WHERE u.country = 'US'"
)

#: Seed of the generator: the same ``scale`` always gives the same data.
SEED = 68242665

#: Bumped whenever the generator changes, so that old builds are rebuilt. Stored in each
#: file's SQLite ``application_id`` (the scale goes in ``user_version``): no extra table
#: shows up in the catalog.
_FORMAT = 0x46454401  # "FED" + format 1

CONFIG_NAME = "fedlab.toml"


@dataclass(frozen=True)
class _Part:
    source: str
    table: str
    file: str
    function: str


#: Where each table lives: one source per database, as in the seed's diagram.
LAYOUT: tuple[_Part, ...] = (
    _Part("crm", "users", "users.db", "customers"),
    _Part("sales", "orders", "orders.db", "orders"),
    _Part("catalog", "products", "products.db", "catalog"),
    _Part("stock", "inventory", "inventory.db", "inventory"),
)

PRIMARY_KEYS: dict[str, list[str]] = {
    "users": ["id"],
    "orders": ["id"],
    "products": ["id"],
    "inventory": ["product_id", "warehouse"],
}

# ---------------------------------------------------------------------- the data
# The first rows of each table take these values in order, so every trap is present at
# any scale; the rest is drawn from the seeded generator.
_TRAP_NAMES = [
    "John",
    "Jane",
    "Zoë",
    "José",
    "李雷",
    "Łukasz",
    "anna",
    "Anna",
    "ANNA",
    "Bob ",
    "O'Brien",
    "Ñandú",
    "Ana_Maria",
    "Ünal 100%",
]
_FIRST = ["Maria", "Chen", "Aiko", "Omar", "Fatima", "Liam", "Noah", "Emma", "Sofía", "Björn"]
_LAST = ["Smith", "García", "Müller", "Wang", "Kowalski", "Dubois", "Sato", "Silva", "Ivanov"]
_TRAP_COUNTRIES: list[str | None] = ["US", "us", "US ", "UK", "DE", None, "FR", "JP", "BR"]
_COUNTRIES: list[str | None] = ["US", "UK", "DE", "FR", "JP", "BR", "us", "US ", None]
_COUNTRY_WEIGHTS = [40, 12, 10, 8, 6, 6, 4, 4, 4]
_TRAP_STATUSES = ["paid", "PAID", "Paid", "paid ", "shipped", "cancelled", "pending", "refunded"]
_STATUSES = ["paid", "shipped", "pending", "cancelled", "refunded", "PAID", "paid ", "Paid"]
_STATUS_WEIGHTS = [40, 20, 10, 8, 4, 6, 6, 6]
_TRAP_TITLES = [
    "50% off lamp",
    "a_b widget",
    "Widget",
    "widget",
    "gadget ",
    "Ünïcode mug",
    "C:\\temp folder",
    "plain box",
]
_ADJECTIVES = ["red", "Blue", "small", "LARGE", "smart", "eco", "vintage", "Deluxe"]
_NOUNS = ["lamp", "widget", "mug", "chair", "notebook", "kettle", "backpack", "clock"]
_CATEGORIES: list[str | None] = ["books", "Books", "toys", "garden", "kitchen", None]
_WAREHOUSES = ["north", "South", "east ", "WEST"]  # distinct even case- and pad-insensitively
_REGIONS = ["EU", "US", "APAC", "eu"]


def _money(cents: int) -> Decimal:
    return Decimal(cents) / 100


def frames(scale: int = 1, *, seed: int = SEED) -> dict[str, pl.DataFrame]:
    """The four demo tables as Polars frames (deterministic for a given ``scale``).

    >>> f = frames()
    >>> f["orders"].filter(pl.col("user_id").is_null()).height > 0
    True
    >>> frames()["orders"].equals(f["orders"])
    True
    """
    scale = _check_scale(scale)
    rng = random.Random(seed * 1000 + scale)
    n_users, n_products, n_orders = 100 * scale, 40 * scale, 600 * scale

    users = _users(rng, n_users)
    products = _products(rng, n_products)
    orders = _orders(rng, n_orders, n_users, products)
    inventory = _inventory(rng, n_products)
    return {"users": users, "orders": orders, "products": products, "inventory": inventory}


def _pick(rng: random.Random, i: int, traps: list[Any], values: list[Any], weights: list[int]):
    return traps[i] if i < len(traps) else rng.choices(values, weights)[0]


def _users(rng: random.Random, n: int) -> pl.DataFrame:
    names, emails = [], []
    for i in range(n):
        if i < len(_TRAP_NAMES):
            name = _TRAP_NAMES[i]
        else:
            name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        names.append(name)
        local = "".join(c for c in name.lower() if c.isascii() and c.isalnum()) or "user"
        # mixed-case domains and underscores: LIKE and case traps in a natural place
        domain = ("Example.COM", "example.com", "mail_box.org")[i % 3]
        emails.append(f"{local}{i + 1}@{domain}")
    return pl.DataFrame(
        {
            "id": range(1, n + 1),
            "name": names,
            "email": emails,
            "country": [
                _pick(rng, i, _TRAP_COUNTRIES, _COUNTRIES, _COUNTRY_WEIGHTS) for i in range(n)
            ],
            "balance": [
                None if i % 13 == 5 else _money(rng.randrange(-5_000, 250_000)) for i in range(n)
            ],
            "signup_date": [
                dt.date(2021, 1, 1) + dt.timedelta(days=rng.randrange(0, 1200)) for _ in range(n)
            ],
            "active": [rng.random() < 0.8 for _ in range(n)],
        },
        schema={
            "id": pl.Int64,
            "name": pl.String,
            "email": pl.String,
            "country": pl.String,
            "balance": pl.Decimal(10, 2),
            "signup_date": pl.Date,
            "active": pl.Boolean,
        },
    )


def _products(rng: random.Random, n: int) -> pl.DataFrame:
    titles = [
        _TRAP_TITLES[i]
        if i < len(_TRAP_TITLES)
        else f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {i + 1}"
        for i in range(n)
    ]
    return pl.DataFrame(
        {
            "id": range(1, n + 1),
            "title": titles,
            "category": [_CATEGORIES[i % len(_CATEGORIES)] for i in range(n)],
            "price": [_money(rng.randrange(199, 20_000)) for _ in range(n)],
            "weight": [None if i % 7 == 3 else round(rng.uniform(0.1, 25.0), 3) for i in range(n)],
        },
        schema={
            "id": pl.Int64,
            "title": pl.String,
            "category": pl.String,
            "price": pl.Decimal(10, 2),
            "weight": pl.Float64,
        },
    )


def _orders(rng: random.Random, n: int, n_users: int, products: pl.DataFrame) -> pl.DataFrame:
    prices = dict(zip(products["id"].to_list(), products["price"].to_list(), strict=True))
    n_products = products.height
    # some users never ordered and some products were never bought: orphans the other way
    buyers = [u for u in range(1, n_users + 1) if u % 10 != 7]
    bought = [p for p in range(1, n_products + 1) if p % 11 != 5]
    start = dt.datetime(2024, 1, 1, 0, 0, 0)
    rows = []
    for i in range(n):
        r = rng.random()
        if i == 0 or (i > 2 and r < 0.05):
            user_id = None  # a NULL join key
        elif i == 1 or (i > 2 and r < 0.08):
            user_id = n_users + 1 + rng.randrange(50)  # an orphan: no such user
        else:
            user_id = rng.choice(buyers)
        product_id = (
            n_products + 1 + rng.randrange(3)  # an orphan: a product no longer listed
            if i == 2 or rng.random() < 0.03
            else rng.choice(bought)
        )
        quantity = rng.randrange(1, 10)
        price = prices.get(product_id) or _money(rng.randrange(199, 5_000))
        # now and then a discount, so that total is not always price * quantity
        total = price * quantity * (Decimal("0.90") if rng.random() < 0.15 else 1)
        ordered_at = start + dt.timedelta(seconds=rng.randrange(0, 86_400 * 540))
        rows.append(
            (
                i + 1,
                user_id,
                product_id,
                quantity,
                total.quantize(Decimal("0.01")),
                _pick(rng, i, _TRAP_STATUSES, _STATUSES, _STATUS_WEIGHTS),
                ordered_at,
                ordered_at.date(),
            )
        )
    return pl.DataFrame(
        rows,
        schema={
            "id": pl.Int64,
            "user_id": pl.Int64,
            "product_id": pl.Int64,
            "quantity": pl.Int64,
            "total": pl.Decimal(10, 2),
            "status": pl.String,
            "ordered_at": pl.Datetime("us"),
            "order_date": pl.Date,
        },
        orient="row",
    )


def _inventory(rng: random.Random, n_products: int) -> pl.DataFrame:
    rows = []
    # products n+1 and n+2 were delisted but are still on a shelf: orphans
    for p in range(1, n_products + 3):
        if p % 9 == 0:
            continue  # never stocked: products without inventory
        for j, warehouse in enumerate(_WAREHOUSES):
            if (p + j) % 4 == 3:
                continue
            stock = None if (p * (j + 1)) % 17 == 4 else rng.randrange(0, 500)
            rows.append((p, warehouse, _REGIONS[(p + j) % len(_REGIONS)], stock))
    return pl.DataFrame(
        rows,
        schema={
            "product_id": pl.Int64,
            "warehouse": pl.String,
            "region": pl.String,
            "stock": pl.Int64,
        },
        orient="row",
    )


# ---------------------------------------------------------------------- files
def _check_scale(scale: Any) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"demo scale must be a whole number of at least 1, got {scale!r}")
    return scale


def default_dir() -> Path:
    """Where the demo lives when no path is given.

    In order: ``$FEDLAB_DEMO_DIR``; ``./data/demo`` if it exists; ``data/demo`` of the
    checkout fedlab runs from (a source tree with ``pyproject.toml``); else the user's cache
    (``$XDG_CACHE_HOME/fedlab/demo``, by default ``~/.cache/fedlab/demo``).
    """
    env = os.environ.get("FEDLAB_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    local = Path("data") / "demo"
    if local.is_dir():
        return local
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
        return checkout / "data" / "demo"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fedlab" / "demo"


def _dir(path: str | Path | None) -> Path:
    return (Path(path).expanduser() if path is not None else default_dir()).resolve()


def _file_marks(file: Path) -> tuple[int, int] | None:
    if not file.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return app, version


def built_scale(path: str | Path | None = None) -> int | None:
    """The scale of a complete demo build in ``path``, or None when it is missing,
    incomplete or made by another version of the generator."""
    d = _dir(path)
    if not (d / CONFIG_NAME).is_file():
        return None
    marks = {_file_marks(d / part.file) for part in LAYOUT}
    if len(marks) != 1:
        return None
    mark = marks.pop()
    if mark is None or mark[0] != _FORMAT or mark[1] < 1:
        return None
    return mark[1]


def _config_text() -> str:
    lines = [
        "# The fedlab demo: the seed's four databases, one SQLite file each.",
        "# Generated by fedlab.demo.build() (`fedlab demo`); the .db files are not in git.",
        "# Relative paths resolve from this file's directory.",
        "",
        "[fedlab]",
        'strategy = "auto"',
    ]
    for part in LAYOUT:
        lines += [
            "",
            f"[sources.{part.source}]",
            f'url = "sqlite:///{part.file}"',
            f'tags = {{ function = "{part.function}" }}',
        ]
    return "\n".join(lines) + "\n"


def _write_sqlite(file: Path, table: str, df: pl.DataFrame, scale: int) -> None:
    # build next to the target and rename: a reader never sees a half-written file, and
    # the marks that make a build "complete" are the last thing written
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        write_tables(f"sqlite:///{tmp}", {table: df}, primary_keys={table: PRIMARY_KEYS[table]})
        con = sqlite3.connect(tmp)
        try:
            con.execute(f"PRAGMA application_id = {_FORMAT}")
            con.execute(f"PRAGMA user_version = {scale}")
            con.commit()
        finally:
            con.close()
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


def _build(d: Path, scale: int, force: bool) -> Path:
    if not force and built_scale(d) == scale:
        return d
    d.mkdir(parents=True, exist_ok=True)
    data = frames(scale)
    for part in LAYOUT:
        _write_sqlite(d / part.file, part.table, data[part.table], scale)
    config = d / CONFIG_NAME
    text = _config_text()
    if not config.is_file() or config.read_text(encoding="utf-8") != text:
        config.write_text(text, encoding="utf-8")
    return d


def build(path: str | Path | None = None, scale: int = 1, force: bool = False) -> Path:
    """Write the four SQLite files and ``fedlab.toml`` into ``path``; return the directory.

    Idempotent: nothing is written when a complete build of the same ``scale`` (and
    generator version) is already there, unless ``force``. ``path`` defaults to
    :func:`default_dir` (``data/demo`` in a checkout).
    """
    return _build(_dir(path), _check_scale(scale), force)


def _ensure(path: str | Path | None, scale: int | None) -> Path:
    """The demo directory, built when missing (or when a different ``scale`` is asked)."""
    if scale is not None:
        _check_scale(scale)
    d = _dir(path)
    have = built_scale(d)
    if have is None or (scale is not None and have != scale):
        _build(d, scale or 1, force=True)
    return d


def federation(
    path: str | Path | None = None,
    build: bool = True,
    *,
    scale: int | None = None,
    **kwargs: Any,
) -> Federation:
    """The demo's four SQLite sources attached as crm, sales, catalog and stock.

    Builds the data first when it is missing (unless ``build=False``). ``scale`` (default:
    whatever is built, else 1) rebuilds when it differs. Other keyword arguments go to
    :class:`~fedlab.Federation` (``strategy``, ``timeout``…).
    """
    if build:
        d = _ensure(path, scale)
    else:
        d = _dir(path)
        have = built_scale(d)
        if have is None:
            raise MissingDatabaseFileError(
                f"the demo data in {str(d)!r} is missing or incomplete; build it with "
                "`fedlab demo` or fedlab.demo.build()"
            )
        if scale is not None and have != scale:
            raise ConfigError(
                f"the demo data in {str(d)!r} has scale {have}, not {scale}; "
                "rebuild it with fedlab.demo.build(scale=...)"
            )
    return Federation.from_config(d / CONFIG_NAME, **kwargs)


# ---------------------------------------------------------------------- real servers
#: Databases that are a server's own: a URL naming one of them means "this server".
_SYSTEM_DATABASES = {
    "postgresql": {"", "postgres", "template0", "template1"},
    "mysql": {"", "mysql", "information_schema", "performance_schema", "sys"},
}


def _server_database(url: str, kind: str, default_name: str) -> str:
    """The URL of the database to load into: the one ``url`` names, created if missing, or
    ``default_name`` on that server when ``url`` names none (or a system database)."""
    src = Source.from_url("target", url)
    if src.kind != kind:
        want = "postgresql://…" if kind == "postgresql" else "mysql://… (or mariadb://…)"
        raise ConfigError(f"expected a {want} URL, got {src.redacted_url}")
    name = src.database or ""
    if name in _SYSTEM_DATABASES[kind]:
        name = default_name
    admin = urlsplit(url)._replace(path="/postgres" if kind == "postgresql" else "/").geturl()
    return create_database(admin, name)


def _check_target(name: str, url: str, tables: set[str]) -> None:
    """Refuse to overwrite a database that holds anything but the demo's tables."""
    src = Source.from_url(name, url)
    other = sorted({t.name for t in introspect(src)} - tables)
    if other:
        raise ConfigError(
            f"{src.redacted_url} already holds other tables ({', '.join(other[:5])}); "
            "load the demo into an empty database or one it was loaded into before"
        )


def load_into(
    pg_url: str | None = None,
    mysql_url: str | None = None,
    *,
    duckdb: bool = True,
    path: str | Path | None = None,
    scale: int | None = None,
    database: str = "fedlab_demo",
    **kwargs: Any,
) -> Federation:
    """Spread the demo over several engines and return it attached.

    - ``users`` (source crm) goes to the PostgreSQL database of ``pg_url``,
    - ``orders`` (source sales) to the MariaDB/MySQL database of ``mysql_url``,
    - ``inventory`` (source stock) to ``inventory.duckdb`` next to the SQLite files
      (with ``duckdb=True``),
    - ``products`` (source catalog) stays in SQLite, as does any table whose server is
      not given.

    So the seed query joins PostgreSQL with MariaDB. A URL that names a database loads
    into it (created if missing); a server URL (no database, or ``/postgres``) loads into
    ``database``. Only the demo's own tables are (re)created: a database holding any other
    table is refused. Returns a :class:`~fedlab.Federation`; ``kwargs`` go to it.
    """
    d = _ensure(path, scale)
    data = frames(built_scale(d) or 1)
    parts = {p.source: p for p in LAYOUT}
    urls = {p.source: f"sqlite:///{d / p.file}" for p in LAYOUT}
    targets: list[tuple[str, str | None, str]] = [
        ("crm", pg_url, "postgresql"),
        ("sales", mysql_url, "mysql"),
    ]
    for source, server_url, kind in targets:
        if server_url is None:
            continue
        part = parts[source]
        url = _server_database(server_url, kind, database)
        _check_target(source, url, {part.table})
        write_tables(url, {part.table: data[part.table]}, primary_keys=PRIMARY_KEYS)
        urls[source] = url
    if duckdb:
        part = parts["stock"]
        file = d / "inventory.duckdb"
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            write_tables(
                f"duckdb:///{tmp}", {part.table: data[part.table]}, primary_keys=PRIMARY_KEYS
            )
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
        urls["stock"] = f"duckdb:///{file}"
    fed = Federation(**kwargs)
    for source, url in urls.items():
        fed.attach(source, url, tags={"function": parts[source].function})
    return fed
