"""Distributed transactions: two-phase commit across sources (seam; being built)."""

from __future__ import annotations

from typing import Any

__all__ = ["in_doubt", "recover", "transaction"]


def transaction(fed: Any, **options: Any) -> Any:
    """A two-phase-commit transaction over ``fed``'s sources (context manager)."""
    raise NotImplementedError("two-phase commit is being built")


def in_doubt(fed: Any, **options: Any) -> Any:
    """This coordinator's prepared transactions that await a decision."""
    raise NotImplementedError("two-phase commit is being built")


def recover(fed: Any, **options: Any) -> Any:
    """Finish this coordinator's in-doubt transactions from its log."""
    raise NotImplementedError("two-phase commit is being built")
