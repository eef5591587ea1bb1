"""Data for the monolith-oracle suite: four small tables full of semantic traps.

Deterministic (a seeded generator), small (a few hundred rows), and nasty: mixed-case and
trailing-space strings, NULL join keys, orphans, non-ASCII names, LIKE metacharacters,
integers that divide unevenly, NULLs where ORDER BY puts them first or last.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import polars as pl

PRIMARY_KEYS = {
    "users": ["id"],
    "orders": ["id"],
    "products": ["id"],
    "inventory": ["product_id", "warehouse"],
}

NAMES = [
    "John",
    "Jane",
    "Zoë",
    "José",
    "Łukasz",
    "李雷",
    "anna",
    "Anna",
    "ANNA",
    "Bob ",
    "Ñandú",
    "O'Brien",
]
COUNTRIES = ["US", "US", "us", "UK", "DE", "FR", None, "JP", "US "]
STATUSES = ["paid", "PAID", "Paid", "paid ", "shipped", "cancelled", "pending"]
CATEGORIES = ["books", "Books", "toys", "garden", None]
TITLES = ["50% off lamp", "a_b widget", "Widget", "widget", "gadget ", "Ünïcode mug", "plain box"]
WAREHOUSES = ["north", "South", "east ", "WEST"]
REGIONS = ["EU", "US", "APAC", "eu"]


def frames(seed: int = 7) -> dict[str, pl.DataFrame]:
    rng = random.Random(seed)
    n_users, n_products, n_orders = 60, 30, 400
    users = pl.DataFrame(
        {
            "id": list(range(1, n_users + 1)),
            "name": [
                NAMES[i % len(NAMES)] + ("" if i < len(NAMES) else str(i)) for i in range(n_users)
            ],
            "email": [
                f"User{i}@Example.com" if i % 3 else f"user{i}@example.com" for i in range(n_users)
            ],
            "country": [COUNTRIES[rng.randrange(len(COUNTRIES))] for _ in range(n_users)],
            "balance": [
                None if i % 11 == 0 else Decimal(rng.randrange(-5000, 100000)) / 100
                for i in range(n_users)
            ],
            "signup_date": [
                dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(0, 1500))
                for _ in range(n_users)
            ],
            "active": [i % 4 != 0 for i in range(n_users)],
        },
        schema_overrides={"balance": pl.Decimal(10, 2)},
    )
    products = pl.DataFrame(
        {
            "id": list(range(1, n_products + 1)),
            "title": [
                TITLES[i % len(TITLES)] + (f" {i}" if i >= len(TITLES) else "")
                for i in range(n_products)
            ],
            "category": [CATEGORIES[i % len(CATEGORIES)] for i in range(n_products)],
            "price": [Decimal(rng.randrange(100, 20000)) / 100 for _ in range(n_products)],
            "weight": [
                None if i % 7 == 0 else round(rng.uniform(0.1, 30.0), 3) for i in range(n_products)
            ],
        },
        schema_overrides={"price": pl.Decimal(10, 2)},
    )
    user_ids = []
    for _i in range(n_orders):
        r = rng.random()
        user_ids.append(None if r < 0.06 else 999 if r < 0.09 else rng.randrange(1, n_users + 1))
    base = dt.datetime(2021, 1, 1, 8, 0, 0)
    orders = pl.DataFrame(
        {
            "id": list(range(1, n_orders + 1)),
            "user_id": user_ids,
            "product_id": [
                rng.randrange(1, n_products + 3) for _ in range(n_orders)
            ],  # some orphans
            "quantity": [rng.randrange(1, 10) for _ in range(n_orders)],
            "total": [Decimal(rng.randrange(100, 50000)) / 100 for _ in range(n_orders)],
            "status": [STATUSES[rng.randrange(len(STATUSES))] for _ in range(n_orders)],
            "ordered_at": [
                base + dt.timedelta(minutes=rng.randrange(0, 60 * 24 * 700))
                for _ in range(n_orders)
            ],
        },
        schema_overrides={"total": pl.Decimal(10, 2), "ordered_at": pl.Datetime("us")},
    ).with_columns(order_date=pl.col("ordered_at").dt.date())
    inv_rows = [
        (
            p,
            w,
            REGIONS[(p + j) % len(REGIONS)],
            None if (p * j) % 13 == 5 else rng.randrange(0, 500),
        )
        for p in range(1, n_products + 1)
        for j, w in enumerate(WAREHOUSES)
        if (p + j) % 4 != 3
    ]
    inventory = pl.DataFrame(
        inv_rows, schema=["product_id", "warehouse", "region", "stock"], orient="row"
    ).with_columns(pl.col("product_id").cast(pl.Int64), pl.col("stock").cast(pl.Int64))
    return {"users": users, "orders": orders, "products": products, "inventory": inventory}
