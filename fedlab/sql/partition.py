"""Partitioned reads of large fragments (seam; filled in by the partitioning work)."""

from __future__ import annotations

__all__ = ["assign_partitions"]


def assign_partitions(plan, catalog, *, max_workers: int = 8) -> None:
    """Mark large single-table fragments for concurrent range reads (``Fragment.partition``)."""
    return None
