"""The fault proxy lives in :mod:`fedlab.faults` (notebooks use it too)."""

from fedlab.faults import FaultProxy

__all__ = ["FaultProxy"]
