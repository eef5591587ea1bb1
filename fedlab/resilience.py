"""Retries and circuit breakers around the fetch seam.

:class:`Resilience` wraps the fetch seam (:data:`fedlab.execute.fetch.Fetcher`), so the
planner and the executor never know it is there. A :class:`~fedlab.Federation` makes one
from its ``retry=`` and ``breaker=`` arguments and fetches through
``cache.wrap(resilience.wrap(fetch))``: a cache hit never touches a breaker.

Each attempt of a fetch goes through the source's breaker; the retry loop is outside it:

* **Retries** (:class:`RetryPolicy`, run by tenacity): exponential backoff with jitter, for
  transient errors only (:func:`is_transient`: connection refused / reset, server gone
  away, deadlock, serialization failure, a source that does not answer). Syntax,
  permission, unknown-table, policy and timeout errors are never retried, and no retry
  starts if its backoff would end past the query's deadline. ``FetchResult.retries`` (and
  so the trace) says how many attempts beyond the first a fragment needed.
* **Circuit breaker** (:class:`CircuitBreaker`, one per source): *closed* lets everything
  through and counts consecutive failures (:func:`counts_as_failure`: the transient ones,
  plus a connection pool that gave up); at ``threshold`` it *opens*: every fetch on that
  source fails at once with :class:`~fedlab.errors.CircuitOpenError` (a
  :class:`~fedlab.errors.SourceUnavailableError`) naming the source, the failures and
  when it will be tried again. After ``reset_timeout`` seconds it is *half-open*: one
  fetch (the probe) goes through, the others still fail fast; the probe's success closes
  the breaker, its transient failure opens it again for another ``reset_timeout``.

Both are opt-in, like the fragment cache: ``Federation()`` neither retries nor has
breakers (a dead source fails once, within its ``connect_timeout``, and fixing it takes
effect at once). ``retry=True`` means ``RetryPolicy()`` (3 attempts; 0.1 s, 0.2 s… capped
at 2 s, plus up to 0.1 s of jitter), ``breaker=True`` means ``BreakerPolicy()`` (5
failures, 30 s); per source, :meth:`Resilience.configure` overrides the federation's
policy.

>>> import fedlab as fl
>>> from fedlab.resilience import BreakerPolicy, RetryPolicy
>>> fed = fl.Federation(retry=RetryPolicy(attempts=4, initial=0.05, max=1.0),
...                     breaker=BreakerPolicy(threshold=3, reset_timeout=10))
>>> fed.resilience.configure("crm", retry=False)      # crm: fail on the first error
>>> fed.resilience.policies("crm")
(None, BreakerPolicy(threshold=3, reset_timeout=10))
>>> fed.resilience.breaker_state("crm")
'closed'

State for notebooks and plots: :meth:`Resilience.breakers` (one row per source: state,
failures, when it opened) and :meth:`Resilience.events` (every retry, open, half-open,
close and fast failure, timestamped) are Polars frames; ``fed.health()`` shows each
source's breaker state.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
import tenacity

from fedlab.errors import (
    CatalogError,
    CircuitOpenError,
    ConfigError,
    MissingDatabaseFileError,
    PlanError,
    PolicyError,
    QueryTimeoutError,
    SourceUnavailableError,
    SQLError,
)
from fedlab.execute.fetch import Fetcher, FetchResult
from fedlab.source import Source
from fedlab.sql.plan import Fragment

__all__ = [
    "BreakerPolicy",
    "CircuitBreaker",
    "Resilience",
    "RetryPolicy",
    "counts_as_failure",
    "is_transient",
]


# ---------------------------------------------------------------------- policies
@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a fragment is retried after a transient error.

    Attributes:
        attempts: attempts in all, the first included (1: never retry).
        initial: the first backoff, in seconds; each next one doubles...
        max: ...up to this many seconds.
        jitter: up to this many random seconds added to each backoff (so that fragments
            that failed together do not retry together).

    The waits are tenacity's ``wait_exponential(multiplier=initial, max=max) +
    wait_random(0, jitter)``: ``min(initial * 2**(n-1), max) + uniform(0, jitter)``
    seconds before attempt ``n + 1``.
    """

    attempts: int = 3
    initial: float = 0.1
    max: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if int(self.attempts) != self.attempts or self.attempts < 1:
            raise ConfigError(
                f"RetryPolicy: attempts must be an integer >= 1, not {self.attempts!r}"
            )
        if self.initial < 0 or self.max < 0 or self.jitter < 0:
            raise ConfigError("RetryPolicy: initial, max and jitter must be >= 0 seconds")


@dataclass(frozen=True)
class BreakerPolicy:
    """When a source's circuit breaker opens, and for how long.

    Attributes:
        threshold: consecutive failures (see :func:`counts_as_failure`) that open it.
        reset_timeout: seconds it stays open before one probe is let through.
    """

    threshold: int = 5
    reset_timeout: float = 30.0

    def __post_init__(self) -> None:
        if int(self.threshold) != self.threshold or self.threshold < 1:
            raise ConfigError(
                f"BreakerPolicy: threshold must be an integer >= 1, not {self.threshold!r}"
            )
        if self.reset_timeout < 0:
            raise ConfigError("BreakerPolicy: reset_timeout must be >= 0 seconds")


# ---------------------------------------------------------------------- classification
#: driver texts of transient failures (matched on the error text, never on the SQL)
_TRANSIENT = re.compile(
    r"connection refused|connection reset|reset by peer|broken pipe|connection aborted"
    r"|server has gone away|lost connection to|server closed the connection"
    r"|server disconnected|connection (?:was |is )?closed|unexpected eof"
    r"|terminating connection due to administrator command|the database system is"
    r" (?:starting up|shutting down|in recovery mode)"
    r"|is not reachable|did not answer within|does not answer"
    r"|deadlock detected|deadlock found|could not serialize access|serialization failure"
    r"|\b40P01\b|\b40001\b|\((?:1213|2006|2013)[,)]|\berror (?:1213|2006|2013)\b",
    re.IGNORECASE,
)
#: never transient, whatever else the text says (a login, TLS or missing database)
_PERMANENT = re.compile(
    r"password|authentication|access denied|permission denied|\btls\b|\bssl"
    r"|database .* does not exist|unknown database",
    re.IGNORECASE,
)
#: a connection pool that already retried for its own timeout (connectorx: ~30 s)
_POOL_GAVE_UP = re.compile(r"timed out waiting for connection", re.IGNORECASE)
#: PostgreSQL SQLSTATEs: deadlock, serialization, admin/crash shutdown, cannot connect now
_PG_TRANSIENT_STATES = {"40P01", "40001", "57P01", "57P02", "57P03"}
#: MariaDB / MySQL error numbers: deadlock, server gone away, lost connection, can't connect
_MY_TRANSIENT_CODES = {1213, 2002, 2003, 2006, 2013}
#: HTTP statuses of a REST source that may go away (timeout, too many requests, bad
#: gateway, unavailable, gateway timeout); every other 4xx / 5xx is permanent
_HTTP_TRANSIENT = frozenset({408, 429, 502, 503, 504})
#: fedlab errors that are never transient
_NEVER = (
    QueryTimeoutError,
    CircuitOpenError,
    SQLError,
    CatalogError,
    PlanError,
    PolicyError,
    ConfigError,
    MissingDatabaseFileError,
)


def _text(exc: BaseException) -> str:
    """The error's own words: the first part of the message, never the SQL it quotes."""
    text = str(exc).split("\n  SQL:", 1)[0]
    return text.split("\nSQL:", 1)[0]


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may go away if the same fetch is tried again (so it is retried).

    A REST source's HTTP status decides alone: 408, 429, 502, 503, 504 are transient,
    other 4xx / 5xx are not (:class:`~fedlab.errors.RestHTTPError`).

    Yes: connection refused / reset / aborted, server gone away or lost (MariaDB 2006,
    2013), deadlock (PostgreSQL 40P01, MariaDB 1213), serialization failure (40001), and a
    :class:`~fedlab.errors.SourceUnavailableError` (the source does not answer) unless it
    is about a login, TLS or a missing database. No: everything else, in particular
    syntax, permission, unknown-table, policy and limit errors, timeouts, cancellation,
    and :class:`~fedlab.errors.CircuitOpenError` (failing fast is the point).

    >>> from fedlab.errors import FragmentError, SQLSyntaxError
    >>> is_transient(ConnectionRefusedError(111, "Connection refused"))
    True
    >>> is_transient(FragmentError("fragment f1 on source s (postgresql) failed: "
    ...     "error communicating with the server: Connection reset by peer (os error 104)"))
    True
    >>> is_transient(FragmentError("fragment f1 on source s (mysql) failed: "
    ...     "ERROR 42000 (1064): You have an error in your SQL syntax\\n"
    ...     "  SQL: SELECT 'connection refused' FROM t"))
    False
    >>> is_transient(SQLSyntaxError("bad"))
    False
    """
    if not isinstance(exc, Exception) or isinstance(exc, _NEVER):
        return False
    status = getattr(exc, "http_status", None)  # a REST source's answer (fedlab.rest)
    if isinstance(status, int) and status > 0:
        return status in _HTTP_TRANSIENT
    text = _text(exc)
    if _PERMANENT.search(text) or _POOL_GAVE_UP.search(text):
        return False
    if isinstance(exc, SourceUnavailableError):
        return True
    if isinstance(exc, ConnectionError | TimeoutError):  # refused, reset, aborted, broken pipe
        return True
    sqlstate = getattr(exc, "sqlstate", None)  # psycopg
    if isinstance(sqlstate, str) and (sqlstate in _PG_TRANSIENT_STATES or sqlstate[:2] == "08"):
        return True
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MY_TRANSIENT_CODES:  # pymysql
        return True
    return bool(_TRANSIENT.search(text))


def counts_as_failure(exc: BaseException) -> bool:
    """Whether ``exc`` counts toward opening the source's circuit breaker: a transient
    error (:func:`is_transient`), or a connection pool that gave up waiting for a
    connection (connectorx's "timed out waiting for connection", after ~30 s of its own
    retries: counted, never retried). Query timeouts and cancellations do not count (a
    slow query is not a dead source), nor do errors the source answered with."""
    if is_transient(exc):
        return True
    return (
        isinstance(exc, Exception)
        and not isinstance(exc, _NEVER)
        and bool(_POOL_GAVE_UP.search(_text(exc)))
        and not _PERMANENT.search(_text(exc))
    )


def _short(exc: BaseException, limit: int = 200) -> str:
    text = _text(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    line = f"{type(exc).__name__}: {line}"
    return line if len(line) <= limit else line[: limit - 1] + "…"


# ---------------------------------------------------------------------- breaker
Event = Callable[[str, str, str], None]


class CircuitBreaker:
    """One source's circuit breaker: closed → open → half-open → closed (thread-safe).

    Use :meth:`allow` before an attempt (it raises :class:`~fedlab.errors.CircuitOpenError`
    while open, and returns the state the attempt was admitted in), then exactly one of
    :meth:`record_success` or :meth:`record_failure` with that state.

    Args:
        source: the source's name (for messages).
        policy: threshold and reset timeout.
        clock: monotonic seconds (injectable for tests; default ``time.monotonic``).
        on_event: called as ``on_event(source, event, detail)`` on ``open``, ``half-open``,
            ``close`` and ``reject`` (outside the lock; must be quick).
    """

    def __init__(
        self,
        source: str,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_event: Event | None = None,
    ) -> None:
        self.source = source
        self.policy = policy
        self._clock = clock
        self._on_event = on_event
        self._lock = threading.Lock()
        self._state = "closed"
        self._failures = 0
        self._opened_at: float | None = None  # clock()
        self._opened_wall: datetime | None = None
        self._probing = False
        self._last_error = ""

    # ------------------------------------------------------------------ reading
    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (an open breaker whose reset timeout has
        passed reads ``half-open``: the next fetch is the probe)."""
        with self._lock:
            return self._state_now()

    def _state_now(self) -> str:
        if self._state == "open" and self._retry_in() <= 0:
            return "half-open"
        return self._state

    def _retry_in(self) -> float:
        if self._opened_at is None:
            return 0.0
        return self._opened_at + self.policy.reset_timeout - self._clock()

    def snapshot(self) -> dict[str, Any]:
        """State, failures, when it opened (wall clock), seconds until a probe, last error."""
        with self._lock:
            state = self._state_now()
            return {
                "source": self.source,
                "state": state,
                "failures": self._failures,
                "threshold": self.policy.threshold,
                "reset_timeout_s": float(self.policy.reset_timeout),
                "opened_at": self._opened_wall if self._state != "closed" else None,
                "retry_in_s": max(self._retry_in(), 0.0) if state == "open" else None,
                "last_error": self._last_error or None,
            }

    # ------------------------------------------------------------------ transitions
    def allow(self) -> str:
        """Admit one attempt (returns ``closed`` or ``half-open``: the probe) or raise
        :class:`~fedlab.errors.CircuitOpenError`."""
        events: list[tuple[str, str]] = []
        try:
            with self._lock:
                if self._state == "closed":
                    return "closed"
                if self._state == "open" and self._retry_in() <= 0:
                    self._state = "half-open"
                    self._probing = False
                    events.append(("half-open", "reset timeout passed: one probe goes through"))
                if self._state == "half-open" and not self._probing:
                    self._probing = True
                    return "half-open"
                error = self._open_error()
                events.append(("reject", _short(error)))
            raise error
        finally:
            for event, detail in events:
                self._emit(event, detail)

    def _open_error(self) -> CircuitOpenError:
        retry_in = max(self._retry_in(), 0.0)
        if self._state == "half-open":
            when = "a probe is in flight; the others fail fast until it succeeds"
        else:
            at = datetime.now().timestamp() + retry_in
            when = (
                f"one probe will be let through in {retry_in:.1f} s "
                f"(at {datetime.fromtimestamp(at):%H:%M:%S})"
            )
        return CircuitOpenError(
            f"source {self.source!r} is failing fast: its circuit breaker opened after "
            f"{self._failures} consecutive failure(s) (threshold {self.policy.threshold}; "
            f"last: {self._last_error}); {when}. "
            f"fed.resilience.reset({self.source!r}) closes it now.",
            source=self.source,
            failures=self._failures,
            retry_in=retry_in,
            last_error=self._last_error,
        )

    def record_success(self, admitted: str) -> None:
        """The attempt succeeded: the failure count restarts; a probe closes the breaker."""
        closed = False
        with self._lock:
            self._failures = 0
            if self._state != "closed" and admitted == "half-open":
                self._state = "closed"
                self._opened_at = self._opened_wall = None
                self._probing = False
                closed = True
        if closed:
            self._emit("close", "probe succeeded")

    def record_failure(self, exc: BaseException, admitted: str) -> None:
        """The attempt failed with ``exc``: counted if :func:`counts_as_failure`."""
        opened = None
        with self._lock:
            if admitted == "half-open":
                self._probing = False
            if not counts_as_failure(exc):
                return  # neutral: the source answered (or we gave up on it in time)
            self._failures += 1
            self._last_error = _short(exc)
            if admitted == "half-open" or (
                self._state == "closed" and self._failures >= self.policy.threshold
            ):
                self._state = "open"
                self._opened_at = self._clock()
                self._opened_wall = datetime.now()
                opened = (
                    f"{self._failures} consecutive failure(s); last: {self._last_error}; "
                    f"open for {self.policy.reset_timeout:g} s"
                )
        if opened is not None:
            self._emit("open", opened)

    def reset(self) -> None:
        """Close the breaker now (a person knows the source is back)."""
        with self._lock:
            was = self._state
            self._state, self._failures, self._probing = "closed", 0, False
            self._opened_at = self._opened_wall = None
        if was != "closed":
            self._emit("close", "reset by hand")

    def _emit(self, event: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(self.source, event, detail)

    def __repr__(self) -> str:
        s = self.snapshot()
        return f"<CircuitBreaker {self.source}: {s['state']}, {s['failures']} failure(s)>"


# ---------------------------------------------------------------------- the wrapper
_UNSET: Any = object()

_EVENTS_SCHEMA = {
    "at": pl.Datetime("us"),
    "source": pl.String,
    "event": pl.String,
    "detail": pl.String,
}
_BREAKERS_SCHEMA = {
    "source": pl.String,
    "state": pl.String,
    "failures": pl.Int64,
    "threshold": pl.Int64,
    "reset_timeout_s": pl.Float64,
    "opened_at": pl.Datetime("us"),
    "retry_in_s": pl.Float64,
    "last_error": pl.String,
}


def _retry_policy(value: Any, what: str) -> RetryPolicy | None:
    if value is True:
        return RetryPolicy()
    if value is None or value is False:
        return None
    if isinstance(value, RetryPolicy):
        return value
    raise ConfigError(f"{what}: expected a RetryPolicy, None or False, not {value!r}")


def _breaker_policy(value: Any, what: str) -> BreakerPolicy | None:
    if value is True:
        return BreakerPolicy()
    if value is None or value is False:
        return None
    if isinstance(value, BreakerPolicy):
        return value
    raise ConfigError(f"{what}: expected a BreakerPolicy, None or False, not {value!r}")


def _fetch_context() -> Any:
    """The executor's per-fragment context (cancel event), when that module exists."""
    try:
        from fedlab.execute.cancel import CURRENT
    except ImportError:  # pragma: no cover - older trees without cancellation
        return None
    return CURRENT.get()


class Resilience:
    """Per-source retry policy and circuit breaker; ``wrap(fetch)`` applies them.

    Args:
        retry: every source's :class:`RetryPolicy` (True: ``RetryPolicy()``; None or
            False: no retries, the default).
        breaker: every source's :class:`BreakerPolicy` (True: ``BreakerPolicy()``; None or
            False: no breakers, the default).
        clock: monotonic clock of the breakers (tests inject a fake one). Read on every
            call, so ``fed.resilience.clock = fake`` works after construction too.
        sleep: how a backoff waits (default: ``time.sleep``, cut short when the query is
            cancelled).
    """

    def __init__(
        self,
        retry: RetryPolicy | bool | None = None,
        breaker: BreakerPolicy | bool | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.retry: RetryPolicy | None = _retry_policy(retry, "retry")
        self.breaker: BreakerPolicy | None = _breaker_policy(breaker, "breaker")
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._retry_for: dict[str, RetryPolicy | None] = {}
        self._breaker_for: dict[str, BreakerPolicy | None] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=10_000)

    def __repr__(self) -> str:
        return f"<Resilience retry={self.retry} breaker={self.breaker}>"

    # ------------------------------------------------------------------ configuration
    def configure(self, source: str, *, retry: Any = _UNSET, breaker: Any = _UNSET) -> None:
        """Override the federation's policies for one source.

        ``retry=RetryPolicy(...)`` / ``breaker=BreakerPolicy(...)`` (or ``True``: the
        default policy): this source's own; ``False``: none for this source; ``None``: back
        to the federation's policy. A new breaker policy replaces the source's breaker
        (closed, no failures).
        """
        with self._lock:
            if retry is not _UNSET:
                if retry is None:
                    self._retry_for.pop(source, None)
                elif retry is False:
                    self._retry_for[source] = None
                else:
                    self._retry_for[source] = _retry_policy(retry, f"retry for {source!r}")
            if breaker is not _UNSET:
                if breaker is None:
                    self._breaker_for.pop(source, None)
                elif breaker is False:
                    self._breaker_for[source] = None
                else:
                    self._breaker_for[source] = _breaker_policy(breaker, f"breaker for {source!r}")
                self._breakers.pop(source, None)

    def policies(self, source: str) -> tuple[RetryPolicy | None, BreakerPolicy | None]:
        """The (retry, breaker) policies that apply to ``source`` (None: off)."""
        with self._lock:
            return (
                self._retry_for.get(source, self.retry),
                self._breaker_for.get(source, self.breaker),
            )

    def breaker_for(self, source: str) -> CircuitBreaker | None:
        """The source's breaker (made on first use), or None when breakers are off for it."""
        _, policy = self.policies(source)
        if policy is None:
            return None
        with self._lock:
            b = self._breakers.get(source)
            if b is None or b.policy != policy:
                b = CircuitBreaker(
                    source, policy, clock=lambda: self.clock(), on_event=self._record
                )
                self._breakers[source] = b
            return b

    # ------------------------------------------------------------------ state
    def breaker_state(self, source: str) -> str:
        """``closed``, ``open``, ``half-open``, or ``off`` (no breaker for this source)."""
        b = self.breaker_for(source)
        return "off" if b is None else b.state

    def reset(self, source: str | None = None) -> None:
        """Close one source's breaker (or every breaker) now."""
        with self._lock:
            targets = list(self._breakers.values())
        for b in targets:
            if source is None or b.source == source:
                b.reset()

    def breakers(self) -> pl.DataFrame:
        """One row per source that has a breaker: source, state, failures, threshold,
        reset_timeout_s, opened_at (wall clock, null when closed), retry_in_s (while
        open), last_error."""
        with self._lock:
            targets = sorted(self._breakers.values(), key=lambda b: b.source)
        return pl.DataFrame([b.snapshot() for b in targets], schema=_BREAKERS_SCHEMA)

    def events(self) -> pl.DataFrame:
        """Every retry, open, half-open, close and fast failure (``reject``), oldest
        first: at (wall clock), source, event, detail. Keeps the last 10,000."""
        with self._lock:
            rows = list(self._events)
        return pl.DataFrame(rows, schema=_EVENTS_SCHEMA)

    def _record(self, source: str, event: str, detail: str) -> None:
        with self._lock:
            self._events.append(
                {"at": datetime.now(), "source": source, "event": event, "detail": detail}
            )

    # ------------------------------------------------------------------ the seam
    def _wait(self, seconds: float) -> None:
        if self.sleep is not None:
            self.sleep(seconds)
            return
        ctx = _fetch_context()
        cancelled = getattr(ctx, "cancelled", None)
        if cancelled is not None:
            cancelled.wait(seconds)  # returns early when the query is cancelled
        else:
            time.sleep(seconds)

    def wrap(self, fetch: Fetcher) -> Fetcher:
        """``fetch`` with the per-source retry policy and circuit breaker applied."""

        def resilient_fetch(
            fragment: Fragment, source: Source, deadline: float | None = None
        ) -> FetchResult:
            retry, _ = self.policies(source.name)
            breaker = self.breaker_for(source.name)
            tries = 0
            admitted: list[str] = []
            last = [0.0]  # how long the last failed attempt took

            def attempt() -> FetchResult:
                nonlocal tries
                state = breaker.allow() if breaker is not None else None
                tries += 1
                admitted.append(state or "")
                started = time.monotonic()
                try:
                    res = fetch(fragment, source, deadline)
                except BaseException as e:
                    last[0] = time.monotonic() - started
                    if breaker is not None and state is not None:
                        breaker.record_failure(e, state)
                    raise
                if breaker is not None and state is not None:
                    breaker.record_success(state)
                return res

            if retry is None or retry.attempts <= 1:
                res = attempt()
            else:
                try:
                    res = self._retrying(retry, source.name, deadline, last)(attempt)
                except Exception as e:
                    if tries > 1:
                        e.retries = tries - 1  # type: ignore[attr-defined]
                        e.add_note(
                            f"fedlab: {tries} attempts on source {source.name!r} failed ({retry})"
                        )
                    raise
            return dataclasses.replace(
                res,
                retries=res.retries + tries - 1,
                breaker=admitted[-1] if breaker is not None else None,
            )

        resilient_fetch.__wrapped__ = fetch  # type: ignore[attr-defined]
        return resilient_fetch

    def _retrying(
        self, policy: RetryPolicy, source: str, deadline: float | None, last: list[float]
    ) -> tenacity.Retrying:
        def stop(rs: tenacity.RetryCallState) -> bool:
            if rs.attempt_number >= policy.attempts:
                return True
            ctx = _fetch_context()
            if ctx is not None and ctx.cancelled.is_set():
                return True
            # never retry past the deadline: the backoff, and another attempt as long as
            # the one that just failed (a connect timeout takes that long again), must fit
            return (
                deadline is not None and time.monotonic() + rs.upcoming_sleep + last[0] >= deadline
            )

        def before_sleep(rs: tenacity.RetryCallState) -> None:
            exc = rs.outcome.exception() if rs.outcome is not None else None
            self._record(
                source,
                "retry",
                f"attempt {rs.attempt_number} failed ({_short(exc) if exc else '?'}); "
                f"attempt {rs.attempt_number + 1} in {rs.upcoming_sleep:.3f} s",
            )

        return tenacity.Retrying(
            stop=stop,
            wait=tenacity.wait_exponential(multiplier=policy.initial, max=policy.max)
            + tenacity.wait_random(0, policy.jitter),
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
            sleep=self._wait,
        )
