"""Retries and circuit breakers around the fetch seam (seam; filled in by the reliability work)."""

from __future__ import annotations

from typing import Any

__all__ = ["Resilience"]


class Resilience:
    """Per-source retry policy and circuit breaker; ``wrap(fetch)`` applies them."""

    def __init__(self, retry: Any = None, breaker: Any = None) -> None:
        self.retry = retry
        self.breaker = breaker

    def wrap(self, fetch):
        return fetch

    def breaker_state(self, source: str) -> str:
        return "closed"
