"""Horizontal federation: sharded logical tables (seam; filled in by the sharding work)."""

from __future__ import annotations

from sqlglot import exp

__all__ = ["expand_shards"]


def expand_shards(
    tree: exp.Query,
    catalog,
    *,
    naive: bool,
    tenant: str | None,
    notes: list[str],
) -> exp.Query:
    """Replace every sharded logical table of ``tree`` by its (pruned) shard reads."""
    return tree


def declare_shard(fed, name: str, **spec) -> None:
    """Register a sharded logical table on ``fed`` (seam; not implemented yet)."""
    raise NotImplementedError("sharding is being built")
