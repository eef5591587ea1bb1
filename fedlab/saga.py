"""Sagas: steps with compensations across sources (seam; being built)."""

from __future__ import annotations

from typing import Any

__all__ = ["saga"]


def saga(fed: Any, **options: Any) -> Any:
    """A saga over ``fed``'s sources."""
    raise NotImplementedError("sagas are being built")
