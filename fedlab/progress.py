"""Progress bars for running fragments: one bar per fragment while it runs, gone when it ends.

The executor reports every fragment through ``Federation.progress`` (``progress(event,
fragment, entry)`` with event ``"start"``, ``"end"`` or ``"error"``, called from its worker
threads). :class:`FragmentBars` is such a callback: it opens a ``tqdm.auto`` bar for a
fragment that has been running a moment (a widget in a notebook, text in a terminal) and
closes it, without leaving a trace (``leave=False``), when the fragment ends or fails.

Bars are on when asked (``when=True``) or, with ``when="auto"``, only inside IPython or a
notebook: a plain script never draws them by default.

>>> import fedlab as fl
>>> fed = fl.Federation()
>>> with bars(fed, when=False) as b:     # not asked: nothing hooked
...     b is None and fed.progress is None
True
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fedlab.federation import Federation
    from fedlab.result import TraceEntry
    from fedlab.sql.plan import Fragment

__all__ = ["FragmentBars", "bars", "disable", "enable", "in_ipython", "in_notebook", "wanted"]

When = bool | Literal["auto"]


def in_ipython() -> bool:
    """True inside an IPython shell or a Jupyter kernel (IPython is never imported here)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        return ipython.get_ipython() is not None
    except Exception:  # pragma: no cover - a broken IPython is not our business
        return False


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, Notebook, VS Code...)."""
    if not in_ipython():
        return False
    shell = sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


def wanted(when: When = "auto") -> bool:
    """Whether bars should be drawn: ``True``/``False`` as given; ``"auto"``: in IPython only."""
    if when == "auto":
        return in_ipython()
    return bool(when)


class FragmentBars:
    """A ``Federation.progress`` callback drawing one ``tqdm`` bar per running fragment.

    A fragment gets its bar once it has run for ``delay`` seconds (quick fragments draw
    nothing, so a notebook of fast queries is not littered with bars); while it runs, its
    elapsed time ticks; when it ends or fails the bar is closed and, with ``leave=False``,
    removed.

    Thread-safe: the executor calls it from several worker threads at once, and one
    ticker thread (alive only while fragments run) opens delayed bars and refreshes the
    clocks. A display problem never reaches the query.

    Args:
        delay: seconds a fragment runs before its bar appears (0: at once).
        interval: seconds between clock refreshes.
        then: another progress callback to call after this one (the one it replaced).
        tqdm: the bar class (default ``tqdm.auto.tqdm``); tests pass a fake.
        **options: extra keyword arguments for every bar.

    >>> class Fake:
    ...     def __init__(self, **kw): self.desc = kw["desc"]
    ...     def update(self, n=1): pass
    ...     def refresh(self): pass
    ...     def close(self): pass
    >>> from fedlab.sql.plan import Fragment
    >>> frag = Fragment("f1", "crm", "sqlite", "SELECT 1", [])
    >>> b = FragmentBars(tqdm=Fake, delay=0)
    >>> b("start", frag, None); b.open_bars
    ['f1 @ crm']
    >>> b("end", frag, None); b.open_bars, b.started, b.finished
    ([], 1, 1)
    """

    def __init__(
        self,
        *,
        delay: float = 0.25,
        interval: float = 0.5,
        then: Callable[..., Any] | None = None,
        tqdm: Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        if tqdm is None:
            from tqdm.auto import tqdm
        self._tqdm = tqdm
        self._options = options
        self.delay = delay
        self.interval = interval
        self.then = then
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        #: running fragments: key -> [fragment, monotonic start, bar or None]
        self._running: dict[int, list[Any]] = {}
        self._ticking = False
        self._closed = False
        self.started = 0
        self.finished = 0
        self.failed = 0
        self.drawn = 0

    @property
    def open_bars(self) -> list[str]:
        """Descriptions of the bars now shown."""
        with self._lock:
            return [getattr(r[2], "desc", "") for r in self._running.values() if r[2] is not None]

    def __call__(self, event: str, fragment: Fragment, entry: TraceEntry | None) -> None:
        # the fragment object lives until its fetch returns: its id is a unique key even
        # when two queries of one federation run at once
        key = id(fragment)
        bar = None
        with self._lock:
            if not self._closed:
                if event == "start":
                    self.started += 1
                    self._running[key] = [fragment, time.monotonic(), None]
                    if self.delay <= 0:
                        self._running[key][2] = self._open(fragment)
                    self._start_ticker()
                elif event in ("end", "error"):
                    if event == "end":
                        self.finished += 1
                    else:
                        self.failed += 1
                    run = self._running.pop(key, None)
                    if not self._running:
                        self._wake.notify_all()  # the ticker has nothing left to do
                    bar = run[2] if run else None
                    if bar is not None:
                        with contextlib.suppress(Exception):
                            if event == "end":
                                bar.update(1)
                            bar.close()
        if self.then is not None:
            with contextlib.suppress(Exception):
                self.then(event, fragment, entry)

    def _open(self, fragment: Fragment) -> Any:
        options = {
            "desc": f"{fragment.id} @ {fragment.source}",
            "total": 1,
            "leave": False,
            "unit": "fragment",
            "bar_format": "{desc}: {bar} {elapsed}",
            **self._options,
        }
        try:
            bar = self._tqdm(**options)
        except Exception:
            return None
        self.drawn += 1
        return bar

    def _start_ticker(self) -> None:  # with the lock held
        if not self._ticking:
            self._ticking = True
            threading.Thread(target=self._tick, name="fedlab-progress", daemon=True).start()

    def _tick(self) -> None:
        with self._lock:
            try:
                self._tick_locked()
            finally:
                self._ticking = False  # under the lock: a new start sees it and restarts

    def _tick_locked(self) -> None:
        while self._running and not self._closed:
            now = time.monotonic()
            for run in self._running.values():
                with contextlib.suppress(Exception):
                    if run[2] is None and now - run[1] >= self.delay:
                        run[2] = self._open(run[0])
                    elif run[2] is not None:
                        run[2].refresh()
            waiting = [r[1] + self.delay - now for r in self._running.values() if r[2] is None]
            self._wake.wait(max(0.01, min([self.interval, *waiting])))

    def close(self) -> None:
        """Close every bar still open (a query that failed or timed out leaves some)."""
        with self._lock:
            self._closed = True
            bars = [r[2] for r in self._running.values() if r[2] is not None]
            self._running = {}
            self._wake.notify_all()
        for bar in bars:
            with contextlib.suppress(Exception):
                bar.close()

    def __enter__(self) -> FragmentBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def bars(fed: Federation, when: When = "auto", **options: Any) -> Iterator[FragmentBars | None]:
    """Show fragment bars for the queries ``fed`` runs inside the block.

    Yields the :class:`FragmentBars` (or None when bars are not wanted); the previous
    ``fed.progress`` callback keeps being called, and is restored afterwards.
    """
    if not wanted(when):
        yield None
        return
    previous = fed.progress
    hook = FragmentBars(then=previous, **options)
    fed.progress = hook
    try:
        yield hook
    finally:
        if fed.progress is hook:
            fed.progress = previous
        hook.close()


def enable(fed: Federation, when: When = "auto", **options: Any) -> FragmentBars | None:
    """Show fragment bars for every query ``fed`` runs from now on (undo with :func:`disable`).

    With ``when="auto"`` this does nothing outside IPython, so a script can call it freely.
    """
    if not wanted(when) or isinstance(fed.progress, FragmentBars):
        return fed.progress if isinstance(fed.progress, FragmentBars) else None
    fed.progress = FragmentBars(then=fed.progress, **options)
    return fed.progress


def disable(fed: Federation) -> None:
    """Remove the bars :func:`enable` installed (the callback they wrapped stays)."""
    hook = fed.progress
    if isinstance(hook, FragmentBars):
        fed.progress = hook.then
        hook.close()
