"""Everything fedlab raises on purpose.

The tree::

    FedlabError
    ├── ConfigError                 bad URL, option or config file
    ├── SourceError                 a database could not be used
    │   ├── SourceUnavailableError  it does not answer (connect timeout, refused, bad login)
    │   │   └── CircuitOpenError    its circuit breaker is open: fails fast (fedlab.resilience)
    │   └── MissingDatabaseFileError a SQLite/DuckDB file that does not exist
    ├── CatalogError                a name does not resolve
    │   ├── UnknownTableError
    │   ├── AmbiguousTableError     a bare table name that several sources have
    │   ├── UnknownColumnError
    │   ├── AmbiguousColumnError
    │   └── ShardError              a sharded table declared wrong (fed.shard)
    ├── SQLError                    the SQL text itself
    │   ├── SQLSyntaxError          with line/column of the problem
    │   ├── NotAQueryError          INSERT/UPDATE/DDL...: fedlab is read-only
    │   ├── UnsupportedSQLError     valid SQL fedlab cannot plan
    │   └── ParameterError          a missing or unusable ``:param``
    ├── PlanError                   the planner could not produce a plan
    │   └── TenantError             a tenant's query reads another tenant's source
    ├── ExecutionError              a fragment or the residual failed
    │   ├── FragmentError           names the source and the fragment
    │   │   └── RestHTTPError       a REST source answered with an HTTP error status (fedlab.rest)
    │   ├── QueryTimeoutError
    │   ├── LimitExceededError      a fragment or result over max_rows / max_bytes
    │   └── QueryCancelledError     stopped by the user (KeyboardInterrupt)
    ├── PolicyError                 a query the federation's policy forbids (fedlab.policy)
    │   ├── ResidencyError          data would leave a protected source in a forbidden form
    │   └── AccessDeniedError       a source, table or column the policy denies
    ├── SagaError                   a saga cannot be declared, run, resumed or compensated (fedlab.saga)
    │   ├── SagaFailedError         a step failed in a ``with fed.saga()`` block; applied steps were compensated
    │   └── SagaStuckError          a compensation failed: saga marked "stuck" in its log (names step, source)
    ├── FdwError                    the PostgreSQL FDW hub (fedlab.fdw) failed
    │   └── NoFdwHubError           fed.compare(..., "fdw") before fl.fdw.setup(fed, hub=...)
    └── TransactionError            a distributed transaction failed (fedlab.txn)
        ├── StatementError          a statement inside ``fed.transaction()`` failed
        ├── TwoPhaseUnsupportedError a source that cannot prepare (SQLite; max_prepared_transactions=0)
        ├── PrepareError            phase one failed on a source: every source rolled back
        ├── InDoubtError            phase two did not finish: run ``fed.recover()``
        └── InjectedCrash           a ``fail_at=`` point was reached (simulated coordinator crash)

Messages say what and where, and never carry a password: every message passes
through :func:`fedlab.security.redact` before it is raised.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousColumnError",
    "AmbiguousTableError",
    "CatalogError",
    "ConfigError",
    "ExecutionError",
    "FedlabError",
    "FragmentError",
    "MissingDatabaseFileError",
    "NotAQueryError",
    "ParameterError",
    "PlanError",
    "PolicyError",
    "QueryTimeoutError",
    "ResidencyError",
    "SQLError",
    "SQLSyntaxError",
    "SourceError",
    "SourceUnavailableError",
    "UnknownColumnError",
    "UnknownTableError",
    "UnsupportedSQLError",
]


class FedlabError(Exception):
    """Base of every error fedlab raises on purpose."""

    def __init__(self, message: str) -> None:
        from fedlab.security import redact

        super().__init__(redact(message))


class ConfigError(FedlabError):
    """A URL, an option or a config file is wrong."""


class SourceError(FedlabError):
    """A database could not be used."""


class SourceUnavailableError(SourceError):
    """The source does not answer: refused, timed out, or login failed."""


class MissingDatabaseFileError(SourceError):
    """A SQLite or DuckDB file does not exist (fedlab never creates an empty one)."""


class CatalogError(FedlabError):
    """A table or column name does not resolve."""


class UnknownTableError(CatalogError):
    """No attached source has this table."""


class AmbiguousTableError(CatalogError):
    """A bare table name exists in several sources."""


class UnknownColumnError(CatalogError):
    """A column is not in any table of its scope."""


class AmbiguousColumnError(CatalogError):
    """A bare column name exists in several tables of its scope."""


class SQLError(FedlabError):
    """Something is wrong with the SQL text."""


class SQLSyntaxError(SQLError):
    """The SQL does not parse; the message has the line and column."""


class NotAQueryError(SQLError):
    """The statement is not a read-only query."""


class UnsupportedSQLError(SQLError):
    """Valid SQL that fedlab cannot plan."""


class ParameterError(SQLError):
    """A ``:name`` parameter is missing or has an unusable value."""


class PlanError(FedlabError):
    """The planner could not produce a plan."""


class ExecutionError(FedlabError):
    """A fragment or the local residual failed."""


class FragmentError(ExecutionError):
    """A fragment failed on its source."""

    def __init__(self, message: str, *, source: str = "", sql: str = "") -> None:
        super().__init__(message)
        self.source = source
        self.sql = sql


class QueryTimeoutError(ExecutionError):
    """The query (or one fragment) passed its deadline."""


class PolicyError(FedlabError):
    """A query the federation's policy (``fed.policy(...)``) forbids; nothing was fetched."""


class ResidencyError(PolicyError):
    """Data would leave a protected source (``fed.policy(residency=...)``) in a form its rule
    forbids: rows, keys, or groups smaller than ``k``. The message names the table, the
    source, the rule and what would be allowed.

    Attributes:
        source: the protected source.
        table: the table(s) concerned (``source.table``, comma separated).
        rule: the rule, as ``'selector': mode``.
        fragment: id of the refused fragment (``f1``…), or "".
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "",
        table: str = "",
        rule: str = "",
        fragment: str = "",
    ) -> None:
        super().__init__(message)
        self.source = source
        self.table = table
        self.rule = rule
        self.fragment = fragment


class ShardError(CatalogError):
    """A sharded logical table is declared wrongly: shards whose schemas differ, a
    missing key column, overlapping ranges, list values on two shards... (names the
    shard and the column)."""


class TenantError(PlanError):
    """A query run for one tenant (``tenant=``) would read another tenant's source."""


__all__ += ["ShardError", "TenantError"]


class AccessDeniedError(PolicyError):
    """A query reads a source, table or column that ``fed.policy(allow=..., deny=...)``
    forbids. Raised when the query is bound, before anything is planned or fetched.

    Attributes:
        source: the source read.
        table: the table read (``source.table``; a sharded logical table as
            ``logical.name``).
        column: the column read ("" when the whole table is refused).
        rule: the rule that refuses it (``deny 'crm.users.email'``, or
            ``allow list [...]`` when no allow rule covers it).
    """

    def __init__(
        self, message: str, *, source: str = "", table: str = "", column: str = "", rule: str = ""
    ) -> None:
        super().__init__(message)
        self.source = source
        self.table = table
        self.column = column
        self.rule = rule


__all__ += ["AccessDeniedError"]


class LimitExceededError(ExecutionError):
    """A fragment or the result went over ``max_rows`` / ``max_bytes``: the fetch stopped.

    Attributes:
        fragment: the fragment's id (``"result"`` for the query's result).
        source: the fragment's source ("" for the result).
        limit: ``max_rows`` or ``max_bytes``.
    """

    def __init__(
        self, message: str, *, fragment: str = "", source: str = "", limit: str = ""
    ) -> None:
        super().__init__(message)
        self.fragment = fragment
        self.source = source
        self.limit = limit


class QueryCancelledError(ExecutionError):
    """A fragment stopped because its query was cancelled (another fragment failed, the
    deadline passed, or the user interrupted): its server statement was cancelled too."""


__all__ += ["LimitExceededError", "QueryCancelledError"]


class CircuitOpenError(SourceUnavailableError):
    """The source's circuit breaker is open (:mod:`fedlab.resilience`): after repeated
    transient failures fedlab fails fast instead of waiting on the source again. The
    message names the source, the failures and when a probe will be let through.

    Attributes:
        source: the source's name.
        failures: consecutive transient failures that opened the breaker.
        retry_in: seconds until the breaker half-opens and lets one probe through.
        last_error: the failure that opened it (already redacted).
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "",
        failures: int = 0,
        retry_in: float = 0.0,
        last_error: str = "",
    ) -> None:
        super().__init__(message)
        self.source = source
        self.failures = failures
        self.retry_in = retry_in
        self.last_error = last_error


__all__ += ["CircuitOpenError"]


class RestHTTPError(FragmentError):
    """A REST source (:mod:`fedlab.rest`) answered a request with an HTTP error status.

    The message names the source, the fragment, the status and the URL (tokens
    redacted). 408, 429, 502, 503 and 504 are transient (retried when retries are on,
    counted by the circuit breaker); other statuses (400, 401, 403, 404, 500…) are not.

    Attributes:
        http_status: the HTTP status code.
        url: the URL requested (redacted).
    """

    def __init__(
        self, message: str, *, source: str = "", sql: str = "", http_status: int = 0, url: str = ""
    ) -> None:
        super().__init__(message, source=source, sql=sql)
        self.http_status = http_status
        self.url = url


__all__ += ["RestHTTPError"]


class TransactionError(FedlabError):
    """A distributed transaction (``fed.transaction()``, :mod:`fedlab.txn`) failed.

    Attributes:
        gid: the global transaction id (``fedlab:<coordinator>:<uuid>``), or "".
        source: the source concerned, or "".
    """

    def __init__(self, message: str, *, gid: str = "", source: str = "") -> None:
        super().__init__(message)
        self.gid = gid
        self.source = source


class StatementError(TransactionError):
    """A statement run by ``tx.execute`` / ``tx.query`` failed on its source; leaving the
    ``with`` block with it rolls back every source."""


class TwoPhaseUnsupportedError(TransactionError):
    """A source cannot take part in two-phase commit: SQLite / DuckDB (no PREPARE; allowed
    only as the single ``last_resource``) or PostgreSQL with ``max_prepared_transactions =
    0`` (the message says how to set it). Nothing was committed."""


class PrepareError(TransactionError):
    """Phase one (PREPARE TRANSACTION / XA PREPARE, or the last resource's commit) failed on
    a source: every source was rolled back."""


class InDoubtError(TransactionError):
    """The decision was logged but phase two did not finish on every source: the
    transaction is in doubt there until ``fed.recover()`` finishes it."""


class InjectedCrash(TransactionError):
    """``fed.transaction(fail_at=...)`` reached its failure point: the coordinator
    "crashed" there, leaving the sources as a real crash would (see ``fed.in_doubt()``)."""


__all__ += [
    "InDoubtError",
    "InjectedCrash",
    "PrepareError",
    "StatementError",
    "TransactionError",
    "TwoPhaseUnsupportedError",
]


class SagaError(FedlabError):
    """A saga (``fed.saga()``, :mod:`fedlab.saga`) cannot be declared, run, resumed or
    compensated: an unknown source, a duplicate step name, an unknown saga id, a saga that
    another live process still runs, an unusable saga log."""


class SagaFailedError(SagaError):
    """A step failed inside a ``with fed.saga() as s:`` block: the steps applied before it
    were compensated in reverse (``result.compensated``).

    Attributes:
        saga_id: the saga's id in its log.
        step: the step that failed.
        source: the step's source.
        result: the :class:`fedlab.saga.SagaResult`.
    """

    def __init__(
        self,
        message: str,
        *,
        saga_id: str = "",
        step: str = "",
        source: str = "",
        result: object = None,
    ) -> None:
        super().__init__(message)
        self.saga_id = saga_id
        self.step = step
        self.source = source
        self.result = result


class SagaStuckError(SagaError):
    """A compensation failed (after its retries): the saga is marked ``stuck`` in its log,
    some steps are still applied. The message names the step and the source; fix the
    cause and run ``fed.saga(log=...).compensate(saga_id)`` again.

    Attributes:
        saga_id: the saga's id in its log.
        step: the step whose compensation failed.
        source: that step's source.
        result: the :class:`fedlab.saga.SagaResult` (status ``stuck``).
    """

    def __init__(
        self,
        message: str,
        *,
        saga_id: str = "",
        step: str = "",
        source: str = "",
        result: object = None,
    ) -> None:
        super().__init__(message)
        self.saga_id = saga_id
        self.step = step
        self.source = source
        self.result = result


__all__ += ["SagaError", "SagaFailedError", "SagaStuckError"]


class FdwError(FedlabError):
    """The PostgreSQL FDW hub (:mod:`fedlab.fdw`) cannot be set up, queried or torn down: a
    hub that is not PostgreSQL, a missing wrapper extension, a schema of the same name that
    fedlab did not make, a table not on the hub, or ``fed.compare(..., "fdw")`` before
    ``fl.fdw.setup(fed, hub=...)``. Passwords never appear in the message."""


class NoFdwHubError(FdwError):
    """``fed.compare(..., strategies=(..., "fdw"))`` without a hub: run
    ``fl.fdw.setup(fed, hub="postgresql://…")`` first (it sets ``fed.fdw_hub``)."""


__all__ += ["FdwError", "NoFdwHubError"]
