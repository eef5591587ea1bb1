"""fedlab: one SQL query over many databases, planned, pushed down, fetched in parallel
into Polars, and measured.

>>> import fedlab as fl
>>> fed = fl.Federation()  # doctest: +SKIP
"""

from __future__ import annotations

from fedlab.errors import (
    AccessDeniedError,
    AmbiguousColumnError,
    AmbiguousTableError,
    CatalogError,
    CircuitOpenError,
    ConfigError,
    ExecutionError,
    FdwError,
    FedlabError,
    FragmentError,
    InDoubtError,
    LimitExceededError,
    MissingDatabaseFileError,
    NoFdwHubError,
    NotAQueryError,
    ParameterError,
    PlanError,
    PolicyError,
    PrepareError,
    QueryCancelledError,
    QueryTimeoutError,
    ResidencyError,
    RestHTTPError,
    SagaError,
    SagaFailedError,
    SagaStuckError,
    ShardError,
    SourceError,
    SourceUnavailableError,
    SQLError,
    SQLSyntaxError,
    TenantError,
    TransactionError,
    TwoPhaseUnsupportedError,
    UnknownColumnError,
    UnknownTableError,
    UnsupportedSQLError,
)
from fedlab.federation import Federation
from fedlab.frame import (
    Expr,
    FederatedFrame,
    FrameError,
    GroupBy,
    UnsupportedFrameError,
    UnsupportedMethodError,
    col,
    lit,
)
from fedlab.frame import len_ as len
from fedlab.resilience import BreakerPolicy, RetryPolicy
from fedlab.result import Comparison, FederatedResult, Trace, TraceEntry
from fedlab.sql.plan import Fragment, Plan


def __getattr__(name: str):
    # submodules used as namespaces (fl.demo.federation(), fl.testing.assert_same_result)
    if name in ("demo", "testing", "load", "apis", "fdw", "gateway", "spark", "viz", "rest"):
        import importlib

        return importlib.import_module(f"fedlab.{name}")
    if name == "explore":  # ipywidgets is imported only when the explorer is used
        from fedlab.widgets import explore

        return explore
    raise AttributeError(f"module 'fedlab' has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    """``%load_ext fedlab``: the ``%federate`` / ``%%federate`` magics (see fedlab.magic)."""
    from fedlab.magic import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext fedlab``."""
    from fedlab import magic

    if hasattr(magic, "unload_ipython_extension"):
        magic.unload_ipython_extension(ipython)


__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "AmbiguousColumnError",
    "AmbiguousTableError",
    "BreakerPolicy",
    "CatalogError",
    "CircuitOpenError",
    "Comparison",
    "ConfigError",
    "ExecutionError",
    "Expr",
    "FdwError",
    "FederatedFrame",
    "FederatedResult",
    "Federation",
    "FedlabError",
    "Fragment",
    "FragmentError",
    "FrameError",
    "GroupBy",
    "InDoubtError",
    "LimitExceededError",
    "MissingDatabaseFileError",
    "NoFdwHubError",
    "NotAQueryError",
    "ParameterError",
    "Plan",
    "PlanError",
    "PolicyError",
    "PrepareError",
    "QueryCancelledError",
    "QueryTimeoutError",
    "ResidencyError",
    "RestHTTPError",
    "RetryPolicy",
    "SQLError",
    "SQLSyntaxError",
    "SagaError",
    "SagaFailedError",
    "SagaStuckError",
    "ShardError",
    "SourceError",
    "SourceUnavailableError",
    "TenantError",
    "Trace",
    "TraceEntry",
    "TransactionError",
    "TwoPhaseUnsupportedError",
    "UnknownColumnError",
    "UnknownTableError",
    "UnsupportedFrameError",
    "UnsupportedMethodError",
    "UnsupportedSQLError",
    "__version__",
    "col",
    "demo",
    "len",
    "lit",
    "testing",
]
