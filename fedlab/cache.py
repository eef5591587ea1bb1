"""Opt-in fragment cache (seam; filled in by the caching work)."""

from __future__ import annotations

__all__ = ["FragmentCache"]


class FragmentCache:
    """Off by default: ``wrap(fetch)`` returns ``fetch`` unchanged."""

    def wrap(self, fetch):
        return fetch
