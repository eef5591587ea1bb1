"""Access control and data residency (seam; filled in by the residency work)."""

from __future__ import annotations

__all__ = ["Policy", "check_plan", "make_policy", "run_guards"]


class Policy:
    """No rules."""


def check_plan(plan, catalog, policy: Policy | None) -> None:
    """Raise a ResidencyError if ``plan`` takes out of a source what the policy forbids."""
    return None


def run_guards(plan, catalog, policy: Policy | None, deadline: float | None) -> None:
    """Run-time checks (e.g. minimum group sizes) before any row leaves a protected source."""
    return None


def make_policy(current: Policy | None, **rules) -> Policy:
    """A policy from ``fed.policy(...)`` arguments (seam; not implemented yet)."""
    raise NotImplementedError("policies are being built")
