"""``fedlab``: the command line. A thin face: parse arguments, call the API, print.

.. code-block:: text

    fedlab demo [--scale N] [--path P] [--strategy S] [--load-into URL ...]
    fedlab query [--config F] [--strategy S] [--format table|csv|json] [-p NAME=VALUE] SQL
    fedlab explain [--config F] [--strategy S] [-p NAME=VALUE] SQL
    fedlab tables [--config F]
    fedlab sources [--config F]
    fedlab bench ...                  (the TPC-H benchmark: ``fedlab bench --help``)

Without ``--config``, ``./fedlab.toml`` is used when present, else the embedded demo.
A :class:`~fedlab.FedlabError` prints ``error: <message>`` on stderr and exits with 2;
messages never carry a password.

>>> main(["--version"])  # doctest: +ELLIPSIS
fedlab ...
0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from fedlab.errors import ConfigError, FedlabError
from fedlab.security import redact

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 2  # a FedlabError: bad input, source down… (argparse uses 2 for usage errors too)
DEFAULT_CONFIG = "fedlab.toml"


# ---------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _param(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:  # numbers, true/false, null and JSON lists ("[1, 2]" for IN :ids); else a string
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    if isinstance(parsed, dict):
        parsed = value
    return name, parsed


def _add_config(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    # accepted before and after the command; SUPPRESS keeps a sub-command's default from
    # overwriting a value given before it
    p.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=None if top else argparse.SUPPRESS,
        help=f"a fedlab TOML file (default: ./{DEFAULT_CONFIG} if present, else the demo)",
    )


def _add_strategy(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strategy", "-s", metavar="S", help="planning strategy: auto (default), pushdown, naive…"
    )


def _add_sql(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-p",
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind :NAME (VALUE read as JSON when it parses: 3, true, [1,2]; else a string)",
    )
    p.add_argument(
        "sql", nargs="+", metavar="SQL", help="the query (several words are joined; - reads stdin)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``fedlab`` command line."""
    from fedlab import __version__

    parser = argparse.ArgumentParser(
        prog="fedlab",
        description="One SQL query over SQLite, PostgreSQL, MariaDB and DuckDB: planned, "
        "pushed down, fetched in parallel, joined locally, measured.",
    )
    parser.add_argument("--version", action="version", version=f"fedlab {__version__}")
    _add_config(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        help="build the embedded demo (if needed) and run the seed query",
        description="Build the demo's four databases (if missing), run the seed query, and "
        "show the result, the EXPLAIN tree and where the time and bytes went.",
    )
    p.add_argument("--scale", type=_positive_int, help="data size (default: what is built, else 1)")
    p.add_argument("--path", metavar="DIR", help="demo directory (default: data/demo or the cache)")
    _add_strategy(p)
    p.add_argument(
        "--load-into",
        nargs="+",
        action="extend",
        default=[],
        metavar="URL",
        help="put users on a PostgreSQL server and orders on a MariaDB server first "
        "(postgresql://… mysql://…); inventory then goes to DuckDB",
    )
    p.add_argument("--rows", type=_positive_int, default=10, help="result rows shown (default 10)")
    p.add_argument(
        "--sql", dest="query", metavar="SQL", help="run this query instead of the seed's"
    )

    p = sub.add_parser("query", help="run a query and print its result")
    _add_config(p)
    _add_strategy(p)
    p.add_argument(
        "--format", "-f", choices=("table", "csv", "json"), default="table", help="output format"
    )
    p.add_argument("--trace", action="store_true", help="also print the per-fragment trace")
    _add_sql(p)

    p = sub.add_parser("explain", help="print the plan of a query (nothing is executed)")
    _add_config(p)
    _add_strategy(p)
    _add_sql(p)

    p = sub.add_parser("tables", help="list the tables of every source")
    _add_config(p)

    p = sub.add_parser("sources", help="list the attached sources (passwords redacted)")
    _add_config(p)

    sub.add_parser(
        "bench",
        help="TPC-H benchmark against a monolith (fedlab bench --help)",
        add_help=False,
    )
    sub.add_parser(
        "serve-demo-apis",
        help="start the demo's REST services on loopback (fedlab serve-demo-apis --help)",
        add_help=False,
    )
    sub.add_parser(
        "serve",
        help="serve the catalog over HTTP, e.g. as GraphQL (fedlab serve --help)",
        add_help=False,
    )
    return parser


# ---------------------------------------------------------------------- output
def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _note(text: str) -> None:
    print(redact(text), file=sys.stderr)


def _table(df: pl.DataFrame, rows: int | None = None) -> str:
    """A frame as a text table: every column, full strings, ``rows`` rows (all if None)."""
    with pl.Config(
        tbl_rows=-1 if rows is None else rows,
        tbl_cols=-1,
        fmt_str_lengths=200,
        tbl_width_chars=1000,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        tbl_formatting="ASCII_MARKDOWN",
    ):
        return str(df if rows is None else df.head(rows))


def _trace_table(trace: Any) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "fragment": [e.fragment for e in trace.entries],
            "source": [e.source for e in trace.entries],
            "kind": [e.kind for e in trace.entries],
            "rows": [e.rows for e in trace.entries],
            "bytes": [e.bytes for e in trace.entries],
            "ms": [round(e.seconds * 1000, 1) for e in trace.entries],
        },
        schema={
            "fragment": pl.String,
            "source": pl.String,
            "kind": pl.String,
            "rows": pl.Int64,
            "bytes": pl.Int64,
            "ms": pl.Float64,
        },
    )


def _print_trace(trace: Any) -> None:
    _out(_table(_trace_table(trace)))
    _out(trace.summary())


# ---------------------------------------------------------------------- commands
def _federation(config: str | None):
    from fedlab.federation import Federation

    if config:
        return Federation.from_config(config)
    if Path(DEFAULT_CONFIG).is_file():
        return Federation.from_config(DEFAULT_CONFIG)
    from fedlab import demo

    _note(f"(no --config and no ./{DEFAULT_CONFIG}: using the demo in {demo.default_dir()})")
    return demo.federation()


def _sql_text(words: Sequence[str]) -> str:
    text = sys.stdin.read() if list(words) == ["-"] else " ".join(words)
    if not text.strip():
        raise ConfigError("no SQL given")
    return text


def _cmd_demo(args: argparse.Namespace) -> int:
    from fedlab import demo

    servers: dict[str, str] = {}
    for url in args.load_into:
        scheme = url.split("://", 1)[0].lower().split("+", 1)[0] if "://" in url else ""
        kind = {"postgresql": "pg", "postgres": "pg", "mysql": "mysql", "mariadb": "mysql"}.get(
            scheme
        )
        if kind is None:
            raise ConfigError(
                f"--load-into takes postgresql://… and mysql://… (or mariadb://…) server "
                f"URLs, got {redact(url)!r}"
            )
        if kind in servers:
            raise ConfigError(f"--load-into: two {scheme} URLs given; give one of each kind")
        servers[kind] = url

    path = Path(args.path) if args.path else demo.default_dir()
    have = demo.built_scale(path)
    if have is None or (args.scale is not None and have != args.scale):
        _note(f"building the demo data in {path.resolve()} (scale {args.scale or 1})…")
    if servers:
        for kind, url in servers.items():
            what = "users -> PostgreSQL" if kind == "pg" else "orders -> MariaDB"
            _note(f"loading {what} at {redact(url)}…")
        fed = demo.load_into(servers.get("pg"), servers.get("mysql"), path=path, scale=args.scale)
    else:
        fed = demo.federation(path, scale=args.scale)
    scale = demo.built_scale(path)

    sql = args.query or demo.SEED_QUERY
    res = fed.sql(sql, strategy=args.strategy)

    _out(f"fedlab demo: {len(fed.catalog.sources)} sources, scale {scale}, in {path.resolve()}")
    _out(_table(fed.sources().select("name", "kind", "url", "tables")))
    _out()
    _out("Query:")
    _out(f"  {sql}")
    _out()
    shown = min(args.rows, res.df.height)
    _out(f"Result: {res.df.height:,} row(s)" + (f", first {shown}:" if shown else ""))
    if shown:
        _out(_table(res.df, args.rows))
    _out()
    _out("EXPLAIN:")
    _out(str(res.plan))
    _out()
    _out("Trace:")
    _print_trace(res.trace)
    return EXIT_OK


def _cmd_query(args: argparse.Namespace) -> int:
    sql = _sql_text(args.sql)
    fed = _federation(args.config)
    res = fed.sql(sql, dict(args.param) or None, strategy=args.strategy)
    if args.format == "csv":
        sys.stdout.write(res.df.write_csv())
    elif args.format == "json":
        sys.stdout.write(res.df.write_json() + "\n")
    else:
        _out(_table(res.df))
        _note(f"({res.df.height:,} row(s))")
    if args.trace:
        # on stderr with csv/json so that stdout stays machine-readable
        stream = sys.stdout if args.format == "table" else sys.stderr
        print(_table(_trace_table(res.trace)), file=stream)
        print(res.trace.summary(), file=stream)
    return EXIT_OK


def _cmd_explain(args: argparse.Namespace) -> int:
    sql = _sql_text(args.sql)
    fed = _federation(args.config)
    _out(str(fed.explain(sql, strategy=args.strategy, params=dict(args.param) or None)))
    return EXIT_OK


def _cmd_tables(args: argparse.Namespace) -> int:
    _out(_table(_federation(args.config).tables()))
    return EXIT_OK


def _cmd_sources(args: argparse.Namespace) -> int:
    _out(_table(_federation(args.config).sources()))
    return EXIT_OK


_COMMANDS = {
    "demo": _cmd_demo,
    "query": _cmd_query,
    "explain": _cmd_explain,
    "tables": _cmd_tables,
    "sources": _cmd_sources,
}


def _bench(argv: list[str]) -> int:
    try:  # imported only when asked: it pulls in the TPC-H machinery
        from fedlab import bench
    except ImportError as e:
        raise ConfigError(f"the benchmark is not available: {e}") from None
    return int(bench.main(argv) or 0)


def _serve(command: str, argv: list[str]) -> int:
    """``serve-demo-apis`` (fedlab.apis: the demo's REST services) and ``serve``
    (fedlab.gateway: the catalog over GraphQL)."""
    import importlib

    module = {"serve-demo-apis": "fedlab.apis", "serve": "fedlab.gateway"}[command]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"fedlab {command} is not available: {e}") from None
    return int(mod.main(argv) or 0)


# ---------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedlab`` command line; return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["bench"]:
            # everything after "bench" belongs to the benchmark's own parser
            return _bench(args_list[1:])
        if args_list[:1] in (["serve-demo-apis"], ["serve"]):
            # the servers parse their own arguments
            return _serve(args_list[0], args_list[1:])
        try:
            args = build_parser().parse_args(args_list)
        except SystemExit as e:  # --help, --version, usage errors: argparse has printed
            return e.code if isinstance(e.code, int) else EXIT_ERROR
        return _COMMANDS[args.command](args)
    except FedlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fedlab query … | head`: the reader has gone, not an error
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would report the broken pipe again
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured output)
        pass


if __name__ == "__main__":
    raise SystemExit(main())
