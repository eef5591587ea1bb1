"""``%federate`` and ``%%federate``: fedlab in IPython and Jupyter.

.. code-block:: text

    %load_ext fedlab
    %federate demo                               attach the embedded demo (4 SQLite sources)
    %federate attach NAME URL                    attach a database (${ENV} in the URL is read)
    %federate detach NAME
    %federate use VAR                            adopt a Federation from the namespace
    %federate sources | tables                   polars frames
    %federate explain SQL                        the plan, nothing executed
    %federate explore SQL                        the explorer widget (fl.explore)
    %federate [options] SQL                      run a query; returns the FederatedResult
    %%federate [options]                         the same with the SQL in the cell
    fed = %federate                              the magic's Federation

    options: -o/--out NAME   --strategy S   --engine polars|spark   --explain
             --compare S1,S2 (or all)   --engines E1,E2   --plot   --limit N
             --timeout SECONDS   --tenant T   --no-progress   -v/--verbose

The magic is a thin face: it splits the options from the SQL, binds ``:name``
placeholders from the user namespace (as typed literals, through ``params=``), calls the
:class:`~fedlab.Federation` API and returns what it returns, so results show with their
rich display. It is declared ``@no_var_expand``: IPython never pastes ``{var}`` or
``$var`` into the SQL.

Settings are traitlets (``%config Federate.limit = 20``); defaults may also come from
``[tool.fedlab]`` in the nearest ``pyproject.toml`` above the working directory. An
explicit traitlets setting (``%config``, ``ipython_config.py``) wins.

A :class:`~fedlab.FedlabError` shows as a short message (what, and where in the SQL) and
the cell fails, so "Run all" and nbval stop there; ``--verbose`` (or
``%config Federate.verbose = True``) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import io
import itertools
import re
import tomllib
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    magics_class,
    needs_local_scope,
    no_var_expand,
)
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, Int, TraitError, Unicode, validate

from fedlab.errors import ConfigError, FedlabError, ParameterError
from fedlab.federation import Federation
from fedlab.progress import bars
from fedlab.result import FederatedResult
from fedlab.sql.planner import STRATEGIES

__all__ = [
    "Federate",
    "TestingShell",
    "find_pyproject",
    "load_ipython_extension",
    "placeholder_names",
    "pyproject_settings",
    "short_error",
    "unload_ipython_extension",
]

#: words that start a sub-command instead of a query (no SQL statement starts with them)
SUBCOMMANDS = ("demo", "attach", "detach", "use", "sources", "tables", "explain", "explore")

_LINE_COL = re.compile(r"line (\d+), column (\d+)")
_QUOTED = re.compile(r"'([^']+)'")
_PARAM = re.compile(r":([A-Za-z_]\w*)")
_TOKEN = re.compile(r"\S+")


# ---------------------------------------------------------------------- settings
def find_pyproject(start: str | Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` in ``start`` (default: the working directory) or above."""
    here = Path(start if start is not None else Path.cwd()).resolve()
    for d in (here, *here.parents):
        candidate = d / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def pyproject_settings(start: str | Path | None = None) -> dict[str, Any]:
    """The ``[tool.fedlab]`` table of the nearest ``pyproject.toml`` (empty when none).

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "pyproject.toml").write_text('[tool.fedlab]\\nlimit = 5\\n')
    >>> (d / "sub").mkdir()
    >>> pyproject_settings(d / "sub")
    {'limit': 5}
    """
    path = find_pyproject(start)
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    table = data.get("tool", {}).get("fedlab", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.fedlab] must be a table")
    return dict(table)


# ---------------------------------------------------------------------- parameters
def placeholder_names(sql: str, dialect: str = "postgres") -> list[str]:
    """Names of the ``:name`` placeholders of ``sql``, in order, found by the SQL parser
    (so ``':x'`` in a string literal and ``a::int`` casts are not placeholders).

    Text that does not parse has none: running it reports the syntax error.

    >>> placeholder_names("SELECT ':no', a::int FROM t WHERE c = :c AND d IN (:ids, :c)")
    ['c', 'ids']
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError, TokenError

    try:
        trees = sqlglot.parse(sql, read=dialect)
    except (ParseError, TokenError):
        return []
    names: dict[str, None] = {}
    for tree in trees:
        if tree is None:
            continue
        for p in tree.find_all(exp.Placeholder):
            if p.name:
                names[p.name] = None
    return sorted(names, key=lambda n: _first_offset(sql, n))


def _first_offset(sql: str, name: str) -> int:
    m = re.search(rf":{re.escape(name)}\b", sql)
    return m.start() if m else len(sql)


# ---------------------------------------------------------------------- short errors
def _tokens(sql: str, dialect: str) -> list[Any]:
    from sqlglot.dialects import Dialect

    try:
        return list(Dialect.get_or_raise(dialect).tokenize(sql))
    except Exception:  # a half-tokenized text still has positions for its first part
        return []


def _locate(message: str, sql: str, dialect: str = "postgres") -> tuple[int, int] | None:
    """Offsets (first, last) in ``sql`` of what ``message`` complains about, if it can tell."""
    from sqlglot.tokens import TokenType

    tokens = _tokens(sql, dialect)
    m = _LINE_COL.search(message)
    if m:
        line, col = int(m.group(1)), int(m.group(2))
        on_line = [t for t in tokens if t.line == line]
        for t in on_line:  # sqlglot reports the column where the token ends
            if t.col == col:
                return t.start, t.end
        for t in on_line:  # other messages: a column inside the token
            if t.col - (t.end - t.start) <= col <= t.col:
                return t.start, t.end
        lines = sql.split("\n")
        if 1 <= line <= len(lines) and 1 <= col <= len(lines[line - 1]):
            offset = sum(len(s) + 1 for s in lines[: line - 1]) + col - 1
            return offset, offset
        return None  # not this text's position (the message is about other SQL)
    for name in _PARAM.findall(message):
        for a, b in itertools.pairwise(tokens):
            if a.token_type == TokenType.COLON and b.text == name and b.start == a.end + 1:
                return a.start, b.end
    identifiers = (TokenType.VAR, TokenType.IDENTIFIER)
    for quoted in _QUOTED.findall(message):
        name = quoted.split(".")[-1].strip('"').lower()
        for t in tokens:
            if t.token_type in identifiers and t.text.lower() == name:
                return t.start, t.end
    return None


def _pointer(sql: str, first: int, last: int) -> list[str]:
    """The SQL line holding ``first``, and carets under ``first..last``."""
    line_start = sql.rfind("\n", 0, first) + 1
    line_end = sql.find("\n", first)
    line_end = len(sql) if line_end < 0 else line_end
    text = sql[line_start:line_end].rstrip()
    col = first - line_start
    width = max(1, min(last, line_end - 1) - first + 1)
    if len(text) > 100:  # a long line: a window around the problem
        lo = max(0, col - 40)
        text = ("…" if lo else "") + text[lo : lo + 90] + ("…" if lo + 90 < len(text) else "")
        col = col - lo + (1 if lo else 0)
    lineno = sql.count("\n", 0, first) + 1
    head = f"  line {lineno} | "
    return [head + text, " " * (len(head) - 2) + "| " + " " * col + "^" * width]


def short_error(error: BaseException, sql: str | None = None, dialect: str = "postgres") -> str:
    """What went wrong and where: the error's type and message, then the SQL line with a
    caret under the culprit when the message names it (a line/column, a table, a column,
    a ``:param``).

    >>> from fedlab.errors import UnknownTableError
    >>> print(short_error(UnknownTableError("unknown table 'userz'"), "SELECT * FROM userz"))
    UnknownTableError: unknown table 'userz'
      line 1 | SELECT * FROM userz
             |               ^^^^^
    """
    message = str(error)
    lines = [f"{type(error).__name__}: {message}"]
    if sql:
        where = _locate(message, sql, dialect)
        if where is not None:
            lines += _pointer(sql, *where)
    return "\n".join(lines)


def _shorten(error: BaseException, text: str) -> None:
    """Make IPython show ``text`` instead of the traceback (the exception is still raised,
    so the cell fails; ``%config Federate.verbose = True`` restores tracebacks)."""
    lines = [
        *text.split("\n"),
        "(add --verbose, or %config Federate.verbose = True, for the full traceback)",
    ]
    error._render_traceback_ = lambda: lines  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- argument splitting
def _option_table(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """Option string -> whether it takes a value."""
    table: dict[str, bool] = {}
    for action in parser._actions:
        for opt in action.option_strings:
            table[opt] = action.nargs != 0
    return table


def split_options(text: str, options: Mapping[str, bool]) -> tuple[list[str], str]:
    """Split leading options (and their values) from the rest of ``text``, which is kept
    verbatim: SQL is never shell-split, so its quotes and spaces survive.

    >>> split_options("-o res --plot SELECT 'a  b' AS x", {"-o": True, "--plot": False})
    (['-o', 'res', '--plot'], "SELECT 'a  b' AS x")
    """
    found: list[str] = []
    pos = 0
    while True:
        m = _TOKEN.search(text, pos)
        if m is None:
            return found, ""
        tok = m.group()
        if tok == "--":  # explicit end of options
            return found, text[m.end() :].strip()
        if not tok.startswith("-") or re.match(r"-[\d.]", tok):
            return found, text[m.start() :].strip()
        name = tok.split("=", 1)[0]
        if name not in options and len(tok) > 2 and tok[:2] in options and tok[1] != "-":
            name = tok[:2]  # -oNAME
            found.append(tok)
            pos = m.end()
            continue
        if name not in options:
            known = ", ".join(sorted(o for o in options if o.startswith("--")))
            raise UsageError(f"unknown option {name!r} (options: {known})")
        found.append(tok)
        pos = m.end()
        if options[name] and "=" not in tok:
            value = _TOKEN.search(text, pos)
            if value is None:
                raise UsageError(f"option {name} needs a value")
            found.append(value.group())
            pos = value.end()


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


# ---------------------------------------------------------------------- the magics
@magics_class
class Federate(Magics):
    """The ``%federate`` / ``%%federate`` magics; settings via ``%config Federate.<name>``."""

    strategy = Unicode(
        None,
        allow_none=True,
        help="Strategy of the magic's queries (naive, pushdown, auto); None: the federation's default.",
    ).tag(config=True)
    limit = Int(
        10, help="Rows shown when a result displays (all rows are kept); 0 shows every row."
    ).tag(config=True)
    timeout = Float(
        None, allow_none=True, help="Whole-query deadline in seconds; None: the federation's."
    ).tag(config=True)
    progress = Bool(True, help="One progress bar per running fragment.").tag(config=True)
    verbose = Bool(False, help="Full Python tracebacks instead of short error messages.").tag(
        config=True
    )

    def __init__(self, shell: InteractiveShell | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._apply_pyproject()
        self._federation: Federation | None = None
        #: display limits of individual results (``--limit N``), by id, dropped with them
        self._limits: dict[int, int] = {}
        if shell is not None:
            self._register_formatters(shell)

    @validate("strategy")
    def _check_strategy(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is not None and value not in STRATEGIES:
            raise TraitError(f"unknown strategy {value!r}; choose one of {', '.join(STRATEGIES)}")
        return value

    @validate("limit")
    def _check_limit(self, proposal: Any) -> Any:
        if proposal["value"] < 0:
            raise TraitError(f"limit must be 0 (all rows) or more, got {proposal['value']}")
        return proposal["value"]

    def _apply_pyproject(self) -> None:
        settings = pyproject_settings()
        explicit = self.config.Federate if "Federate" in self.config else {}
        for key, value in settings.items():
            if key in explicit or not self.has_trait(key) or not self.trait_metadata(key, "config"):
                continue  # other [tool.fedlab] keys belong to other parts of fedlab
            try:
                setattr(self, key, value)
            except TraitError as e:
                raise ConfigError(f"[tool.fedlab] {key} in {find_pyproject()}: {e}") from None

    def _register_formatters(self, shell: InteractiveShell) -> None:
        # a result shows `limit` rows (or its own --limit); its repr is FederatedResult's own
        formatters = shell.display_formatter.formatters
        formatters["text/html"].for_type(FederatedResult, self._html)
        formatters["text/plain"].for_type(FederatedResult, self._pretty)

    def _rows_shown(self, result: FederatedResult) -> int:
        limit = self._limits.get(id(result), self.limit)
        return -1 if limit == 0 else limit

    def _html(self, result: FederatedResult) -> str:
        with pl.Config(tbl_rows=self._rows_shown(result)):
            return result._repr_html_()

    def _pretty(self, result: FederatedResult, p: Any, cycle: bool) -> None:
        with pl.Config(tbl_rows=self._rows_shown(result)):
            p.text(repr(result))

    # ------------------------------------------------------------------ state
    @property
    def federation(self) -> Federation:
        """The shell's Federation (created empty on first use)."""
        if self._federation is None:
            self._federation = Federation()
        return self._federation

    @federation.setter
    def federation(self, fed: Federation) -> None:
        self._federation = fed

    # ------------------------------------------------------------------ entry point
    @no_var_expand
    @needs_local_scope
    @magic_arguments()
    @argument(
        "command",
        nargs="*",
        help="demo | attach NAME URL | detach NAME | use VAR | sources | tables | "
        "explain SQL | explore SQL | SQL (in a cell: the SQL is the cell)",
    )
    @argument("-o", "--out", metavar="NAME", help="store the result (or Comparison) as NAME")
    @argument("--strategy", metavar="S", help=f"planning strategy: {', '.join(STRATEGIES)}")
    @argument("--engine", metavar="E", choices=("polars", "spark"), help="where the plan runs")
    @argument(
        "--engines",
        metavar="E1,E2",
        help="with --compare: run each strategy on each engine (e.g. polars,spark)",
    )
    @argument("--explain", action="store_true", help="show the plan only; nothing runs")
    @argument(
        "--compare",
        metavar="S1,S2",
        help="run under each strategy (comma-separated, or 'all'); returns a Comparison",
    )
    @argument("--plot", action="store_true", help="also draw the trace (or the comparison)")
    @argument("--limit", metavar="N", type=_non_negative, help="rows displayed (0: all)")
    @argument("--timeout", metavar="SECONDS", type=_seconds, help="whole-query deadline")
    @argument("--tenant", metavar="T", help="read only tenant T's shards and sources")
    @argument("--no-progress", action="store_true", help="no progress bars")
    @argument("-v", "--verbose", action="store_true", help="full traceback on errors")
    @line_cell_magic
    def federate(self, line: str = "", cell: str | None = None, local_ns: Any = None) -> Any:
        """Query many databases as one: ``%federate SQL`` or a ``%%federate`` cell.

        ``:name`` in the SQL is bound from the Python variable ``name``. Sub-commands:
        ``demo``, ``attach NAME URL``, ``detach NAME``, ``use VAR``, ``sources``,
        ``tables``, ``explain SQL``, ``explore SQL``. Without arguments: the magic's
        Federation (``fed = %federate``).
        """
        parser = self.federate.parser
        table = _option_table(parser)
        tokens, rest = split_options(line, table)
        command = None
        m = re.match(r"(\S+)\s*(.*)", rest, re.S)
        if m and m.group(1).lower() in SUBCOMMANDS:
            command, rest = m.group(1).lower(), m.group(2)
            more, rest = split_options(rest, table)
            tokens += more
        args = parser.parse_args(tokens)
        verbose = args.verbose or self.verbose
        if cell is not None:
            if rest.strip() or command not in (None, "explain", "explore"):
                raise UsageError(
                    "the %%federate line takes options (and `explain` or `explore`) only; "
                    "the SQL goes in the cell"
                )
            if not cell.strip():
                raise UsageError("empty %%federate cell: write the SQL below the %%federate line")
        # a cell is kept as written, so that line numbers in errors are the cell's own
        sql = cell if cell is not None else rest.strip()
        try:
            value = self._run(command, sql, args, local_ns)
        except FedlabError as e:
            if not verbose:
                query = sql if command in (None, "explain", "explore") else None
                _shorten(e, short_error(e, query, self.federation.dialect))
            raise
        if args.out:
            self.shell.user_ns[args.out] = value
        return value

    # ------------------------------------------------------------------ dispatch
    def _run(self, command: str | None, sql: str, args: argparse.Namespace, local_ns: Any) -> Any:
        if args.out is not None and not args.out.isidentifier():
            raise UsageError(f"-o/--out needs a Python name, got {args.out!r}")
        if command in ("demo", "attach", "detach", "use", "sources", "tables"):
            return self._subcommand(command, sql.split())
        if not sql.strip():
            if command in ("explain", "explore") or args.explain or args.compare or args.plot:
                raise UsageError("no SQL given")
            return self.federation
        explain = command == "explain" or args.explain
        if args.compare and (explain or args.strategy):
            raise UsageError("--compare runs several strategies: drop --explain / --strategy")
        if explain and args.plot:
            raise UsageError("--plot draws a trace; --explain runs nothing")
        fed = self.federation
        params = self._params(sql, local_ns)
        strategy = args.strategy or self.strategy
        if explain:
            return fed.explain(sql, strategy=strategy, params=params, tenant=args.tenant)
        if command == "explore":
            from fedlab.widgets import explore

            return explore(fed, sql, params=params, strategy=strategy)
        timeout = args.timeout if args.timeout is not None else self.timeout
        with bars(fed, when=self.progress and not args.no_progress):
            if args.compare:
                strategies = [s.strip() for s in args.compare.split(",") if s.strip()]
                if strategies == ["all"]:
                    strategies = list(STRATEGIES)
                engines = [e.strip() for e in (args.engines or "").split(",") if e.strip()]
                result: Any = fed.compare(
                    sql, strategies=strategies, params=params, engines=engines or None
                )
            else:
                if args.engines:
                    raise UsageError("--engines goes with --compare (one run: --engine E)")
                result = fed.sql(
                    sql,
                    params,
                    strategy=strategy,
                    timeout=timeout,
                    tenant=args.tenant,
                    engine=args.engine,
                )
        if args.limit is not None and isinstance(result, FederatedResult):
            key = id(result)
            self._limits[key] = args.limit
            weakref.finalize(result, self._limits.pop, key, None)
        if args.plot:
            self._show_plot(result)
        return result

    def _subcommand(self, command: str, words: list[str]) -> Any:
        usage = {
            "demo": ([], "%federate demo"),
            "attach": (["NAME", "URL"], "%federate attach NAME URL"),
            "detach": (["NAME"], "%federate detach NAME"),
            "use": (["VAR"], "%federate use VAR"),
            "sources": ([], "%federate sources"),
            "tables": ([], "%federate tables"),
        }
        want, text = usage[command]
        if len(words) != len(want):
            raise UsageError(f"usage: {text}")
        if command == "demo":
            return self._demo()
        if command == "attach":
            from fedlab.config import interpolate

            name, url = words
            url = interpolate(url, where=f"%federate attach {name}: ")
            self.federation.attach(name, url)
            print(self._describe(name))
            return None
        if command == "detach":
            self.federation.detach(words[0])
            return None
        if command == "use":
            fed = self.shell.user_ns.get(words[0])
            if not isinstance(fed, Federation):
                raise UsageError(f"{words[0]!r} is not a fedlab.Federation in this namespace")
            self.federation = fed
            return None
        if command == "sources":
            return self.federation.sources()
        return self.federation.tables()

    def _demo(self) -> None:
        from fedlab import demo
        from fedlab.config import load_config

        fed = self.federation
        cfg = load_config(demo.build() / demo.CONFIG_NAME)
        attached = fed.catalog.sources
        todo = [s for s in cfg.sources if s.name not in attached]
        if not todo:
            print("the demo is attached: " + ", ".join(s.name for s in cfg.sources))
            return
        for s in todo:
            fed.attach(s.name, s.url, tags=s.tags, base_dir=cfg.path.parent, **s.options)
        print("attached " + "; ".join(self._describe(s.name) for s in todo))

    def _describe(self, name: str) -> str:
        src = self.federation.catalog.sources[name]
        tables = sorted(self.federation.catalog.tables.get(name, {}))
        return f"{name} ({src.kind}): {', '.join(tables) or 'no tables'}"

    def _params(self, sql: str, local_ns: Any) -> dict[str, Any] | None:
        names = placeholder_names(sql, self.federation.dialect)
        if not names:
            return None
        scopes = [ns for ns in (local_ns, self.shell.user_ns) if ns is not None]
        params: dict[str, Any] = {}
        missing = []
        for name in names:
            for ns in scopes:
                if name in ns:
                    params[name] = ns[name]
                    break
            else:
                missing.append(name)
        if missing:
            raise ParameterError(
                f"no Python variable for {', '.join(':' + n for n in missing)}: "
                f"set {missing[0]} = ... in the notebook first (each :name in the SQL is "
                "bound from the variable of that name)"
            )
        return params

    def _show_plot(self, result: Any) -> None:
        import matplotlib.pyplot as plt

        fig = result.plot()
        try:  # through this shell's own publisher (IPython.display needs the global one)
            data, metadata = self.shell.display_formatter.format(fig)
            if "image/png" not in data:  # no inline backend (a terminal, a test shell)
                buf = io.BytesIO()
                fig.savefig(buf, format="png", bbox_inches="tight")
                data["image/png"] = buf.getvalue()
            self.shell.display_pub.publish(data=data, metadata=metadata)
        finally:
            plt.close(fig)  # shown once: the inline backend would draw it again


# ---------------------------------------------------------------------- loading, testing
def _magics_of(ipython: InteractiveShell) -> Federate | None:
    found = ipython.magics_manager.registry.get("Federate")
    return found if isinstance(found, Federate) else None


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext fedlab``: register the magics and make ``%config Federate`` work."""
    magics = Federate(shell=ipython)
    previous = _magics_of(ipython)
    if previous is not None:  # %reload_ext keeps the attached sources
        magics.federation = previous._federation  # type: ignore[assignment]
    ipython.register_magics(magics)
    ipython.configurables = [c for c in ipython.configurables if not isinstance(c, Federate)]
    ipython.configurables.append(magics)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    magics = _magics_of(ipython)
    if magics is None:
        return
    ipython.configurables = [c for c in ipython.configurables if c is not magics]
    for mime in ("text/html", "text/plain"):
        formatter = ipython.display_formatter.formatters[mime]
        if formatter.type_printers.get(FederatedResult) is not None:
            formatter.pop(FederatedResult, None)


class TestingShell(InteractiveShell):
    """An IPython shell whose ``run_cell`` raises the cell's error, so tests of magics
    fail loudly (as jupysql's). ``TestingShell.new()`` has fedlab loaded and no history file.

    >>> ip = TestingShell.new()
    >>> type(ip.run_cell("fed = %federate").result), ip.user_ns["fed"]
    (<class 'NoneType'>, <Federation 0 source(s): none>)
    """

    __test__ = False  # not a pytest test class

    @classmethod
    def new(cls, **kwargs: Any) -> TestingShell:
        from traitlets.config import Config

        config = kwargs.pop("config", None) or Config()
        config.HistoryManager.hist_file = ":memory:"
        shell = cls(config=config, **kwargs)
        shell.extension_manager.load_extension("fedlab")
        return shell

    def run_cell(self, *args: Any, **kwargs: Any) -> Any:
        result = super().run_cell(*args, **kwargs)
        result.raise_error()
        return result

    @property
    def federate(self) -> Federate:
        """The registered :class:`Federate` magics (settings and state)."""
        magics = _magics_of(self)
        if magics is None:
            raise UsageError("fedlab is not loaded: %load_ext fedlab")
        return magics
