"""The %federate magics through an IPython shell, and the fragment progress bars.

``ip`` is a :class:`fedlab.magic.TestingShell`: a cell's error is raised, so a broken
magic fails the test. ``plain`` is an ordinary shell, to see what a user sees when a
cell fails (short message, no traceback) while the cell still fails.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import polars as pl
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import MAGIC_NO_VAR_EXPAND_ATTR
from traitlets import TraitError
from traitlets.config import Config

import fedlab as fl
from fedlab.magic import Federate, TestingShell, placeholder_names, short_error, split_options
from fedlab.progress import FragmentBars, bars, disable, enable, wanted
from fedlab.result import FederatedResult

SEED = fl.demo.SEED_QUERY


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fl.demo.build(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_dir: Path) -> Path:
    # no pyproject.toml above a fresh tmp dir (so no [tool.fedlab] leaks in); the demo is
    # found through $FEDLAB_DEMO_DIR
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDLAB_DEMO_DIR", str(demo_dir))
    return tmp_path


@pytest.fixture
def ip(workdir: Path) -> TestingShell:
    shell = TestingShell.new()
    shell.run_cell("%federate demo")
    return shell


@pytest.fixture
def plain(workdir: Path) -> InteractiveShell:
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell(config=config)
    shell.run_cell("%load_ext fedlab")
    shell.run_cell("%federate demo")
    return shell


class FakeBar:
    made: list[FakeBar] = []
    lock = threading.Lock()

    def __init__(self, **options):
        self.options = options
        self.desc = options["desc"]
        self.closed = False
        self.updates = 0
        self.refreshes = 0
        with FakeBar.lock:
            FakeBar.made.append(self)

    def update(self, n=1):
        self.updates += n

    def refresh(self):
        self.refreshes += 1

    def close(self):
        self.closed = True


@pytest.fixture
def fake_tqdm(monkeypatch: pytest.MonkeyPatch) -> type[FakeBar]:
    import tqdm.auto

    FakeBar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    return FakeBar


def published(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record what the magic displays through the shell's publisher."""
    shown: list[dict] = []
    monkeypatch.setattr(
        shell.display_pub, "publish", lambda data, metadata=None, **kw: shown.append(data)
    )
    return shown


# ---------------------------------------------------------------------- loading, config
def test_load_ext_registers_line_and_cell_magics(workdir):
    shell = TestingShell.new()
    assert "federate" in shell.magics_manager.magics["line"]
    assert "federate" in shell.magics_manager.magics["cell"]
    assert isinstance(shell.federate, Federate)
    assert shell.federate in shell.configurables
    fed = shell.run_cell("%federate").result
    assert isinstance(fed, fl.Federation) and fed is shell.federate.federation


def test_in_ipython_is_false_in_a_plain_process():
    import subprocess
    import sys

    code = "import fedlab.progress as p; print(p.in_ipython(), p.in_notebook(), p.wanted())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_no_var_expand_is_declared():
    assert getattr(Federate.federate, MAGIC_NO_VAR_EXPAND_ATTR, False) is True


def test_config_sets_and_validates_options(ip):
    ip.run_cell("%config Federate.limit = 3")
    ip.run_cell("%config Federate.strategy = 'naive'")
    ip.run_cell("%config Federate.timeout = 30.0")
    assert (ip.federate.limit, ip.federate.strategy, ip.federate.timeout) == (3, "naive", 30.0)
    res = ip.run_cell(f"%federate {SEED}").result
    assert res.plan.strategy == "naive"
    ip.run_cell("%config Federate.strategy = 'fastest'")  # %config logs the error
    ip.run_cell("%config Federate.limit = -1")
    assert (ip.federate.limit, ip.federate.strategy) == (3, "naive")
    with pytest.raises(TraitError, match="unknown strategy 'fastest'"):
        ip.federate.strategy = "fastest"
    with pytest.raises(TraitError, match="limit"):
        ip.federate.limit = -1


def test_config_lists_the_options(ip, capsys):
    ip.run_cell("%config Federate")
    out = capsys.readouterr().out
    for option in ("strategy", "limit", "timeout", "progress", "verbose"):
        assert f"Federate.{option}" in out


def test_defaults_from_nearest_pyproject(workdir, monkeypatch):
    (workdir / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.fedlab]\nlimit = 4\nstrategy = "naive"\n'
        'verbose = true\nsomething_else = "ignored"\n'
    )
    sub = workdir / "notebooks" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    shell = TestingShell.new()
    assert (shell.federate.limit, shell.federate.strategy, shell.federate.verbose) == (
        4,
        "naive",
        True,
    )
    # an explicit traitlets setting wins over pyproject.toml
    config = Config()
    config.Federate.limit = 9
    assert TestingShell.new(config=config).federate.limit == 9


def test_bad_pyproject_value_is_a_clear_error(workdir):
    (workdir / "pyproject.toml").write_text('[tool.fedlab]\nstrategy = "fastest"\n')
    with pytest.raises(fl.ConfigError, match=r"\[tool.fedlab\] strategy"):
        Federate(shell=None)


def test_loading_again_keeps_the_federation(ip):
    from fedlab.magic import load_ipython_extension

    fed = ip.federate.federation
    load_ipython_extension(ip)
    assert ip.federate.federation is fed
    assert sum(isinstance(c, Federate) for c in ip.configurables) == 1


def test_unload_extension(workdir):
    from fedlab.magic import unload_ipython_extension

    shell = TestingShell.new()
    unload_ipython_extension(shell)
    assert not any(isinstance(c, Federate) for c in shell.configurables)
    assert FederatedResult not in shell.display_formatter.formatters["text/html"].type_printers


# ---------------------------------------------------------------------- sub-commands
def test_demo_attaches_four_sources_once(workdir, capsys):
    shell = TestingShell.new()
    shell.run_cell("%federate demo")
    assert "attached crm (sqlite): users" in capsys.readouterr().out
    assert sorted(shell.federate.federation.catalog.sources) == [
        "catalog",
        "crm",
        "sales",
        "stock",
    ]
    shell.run_cell("%federate demo")
    assert "the demo is attached" in capsys.readouterr().out


def test_sources_and_tables(ip):
    sources = ip.run_cell("%federate sources").result
    assert isinstance(sources, pl.DataFrame)
    assert sorted(sources["name"]) == ["catalog", "crm", "sales", "stock"]
    tables = ip.run_cell("%federate -o tabs tables").result
    assert sorted(tables["table"]) == ["inventory", "orders", "products", "users"]
    assert ip.user_ns["tabs"] is tables


def test_attach_detach_with_env_interpolation(ip, demo_dir, monkeypatch, capsys):
    monkeypatch.setenv("DEMO_FILES", str(demo_dir))
    ip.run_cell("%federate attach users2 sqlite:///${DEMO_FILES}/users.db")
    assert "users2 (sqlite): users" in capsys.readouterr().out
    res = ip.run_cell("%federate SELECT count(*) AS n FROM users2.users").result
    assert (
        res.df["n"][0]
        == ip.run_cell("%federate SELECT count(*) AS n FROM crm.users").result.df["n"][0]
    )
    ip.run_cell("%federate detach users2")
    assert "users2" not in ip.federate.federation.catalog.sources


def test_attach_errors(ip, workdir):
    with pytest.raises(UsageError, match="attach NAME URL"):
        ip.run_cell("%federate attach only_a_name")
    with pytest.raises(fl.MissingDatabaseFileError) as info:
        ip.run_cell(f"%federate attach ghost sqlite:///{workdir}/nope.db")
    assert info.value._render_traceback_()[0].startswith("MissingDatabaseFileError:")
    with pytest.raises(fl.ConfigError, match="already attached"):
        ip.run_cell(f"%federate attach crm sqlite:///{workdir}/nope.db")


def test_use_adopts_a_federation(ip, demo_dir):
    ip.user_ns["mine"] = fl.demo.federation(demo_dir, strategy="naive")
    ip.run_cell("%federate use mine")
    assert ip.federate.federation is ip.user_ns["mine"]
    assert ip.run_cell(f"%federate {SEED}").result.plan.strategy == "naive"
    ip.user_ns["not_fed"] = 3
    with pytest.raises(UsageError, match=r"not a fedlab\.Federation"):
        ip.run_cell("%federate use not_fed")


def test_explain_subcommand_and_option(ip):
    fed = ip.federate.federation
    ran = fed.history().height
    for cell in (
        f"%federate explain {SEED}",
        f"%federate --explain {SEED}",
        f"%federate explain --strategy naive {SEED}",
        f"%%federate explain\n{SEED}",
        f"%%federate --explain --strategy naive\n{SEED}",
    ):
        plan = ip.run_cell(cell).result
        assert isinstance(plan, fl.Plan), cell
        assert plan.strategy == ("naive" if "naive" in cell else "auto")
        assert sorted(plan.sources) == ["crm", "sales"]
    assert fed.history().height == ran  # nothing executed


# ---------------------------------------------------------------------- queries
def test_line_query_returns_the_federated_result(ip, demo_dir):
    res = ip.run_cell(f"%federate {SEED}").result
    assert isinstance(res, fl.FederatedResult)
    expected = fl.demo.federation(demo_dir).sql(SEED)
    fl.testing.assert_same_result(res.df, expected.df)


def test_cell_query_with_out_and_strategy(ip):
    res = ip.run_cell(
        "%%federate -o res --strategy naive\n"
        "SELECT u.country, count(*) AS n\n"
        "FROM users u JOIN orders o ON u.id = o.user_id\n"
        "GROUP BY u.country"
    ).result
    assert ip.user_ns["res"] is res
    assert res.plan.strategy == "naive"
    assert res.df.columns == ["country", "n"]
    ip.run_cell("%federate --out=res2 SELECT 1 AS x")
    ip.run_cell("%federate -ores3 SELECT 2 AS x")
    assert (ip.user_ns["res2"].df["x"][0], ip.user_ns["res3"].df["x"][0]) == (1, 2)


def test_compare_stores_the_comparison(ip):
    cmp = ip.run_cell(f"%federate --compare naive,pushdown -o cmp {SEED}").result
    assert isinstance(cmp, fl.Comparison) and ip.user_ns["cmp"] is cmp
    assert cmp.table["strategy"].to_list() == ["naive", "pushdown"]
    assert cmp.table["same_result"].all()
    every = ip.run_cell(f"%%federate --compare all\n{SEED}").result
    assert every.table.height == len(fl.sql.planner.STRATEGIES)


def test_plot_shows_a_figure(ip, monkeypatch):
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    shown = published(ip, monkeypatch)
    res = ip.run_cell(f"%federate --plot {SEED}").result
    assert isinstance(res, fl.FederatedResult)
    assert len(shown) == 1 and "image/png" in shown[0]
    ip.run_cell(f"%federate --plot --compare naive,pushdown {SEED}")
    assert len(shown) == 2 and "image/png" in shown[1]
    assert set(plt.get_fignums()) <= before  # the magic's figures are closed once shown


def _rows_shown(shell, result, mime="text/plain") -> str:
    data, _ = shell.display_formatter.format(result)
    return data[mime]


def test_limit_controls_rows_displayed_not_rows_kept(ip):
    ip.run_cell("%config Federate.limit = 4")
    res = ip.run_cell("%federate SELECT id FROM users ORDER BY id").result
    assert res.df.height == 100  # all rows kept
    text = _rows_shown(ip, res)
    assert "│ 1  " in text and "│ 100 " in text and "│ 50 " not in text
    short = ip.run_cell("%federate --limit 2 SELECT id FROM users ORDER BY id").result
    assert short.df.height == 100
    assert _rows_shown(ip, short).count("│ …") == 1
    everything = ip.run_cell("%federate --limit 0 SELECT id FROM users ORDER BY id").result
    assert "│ 50 " in _rows_shown(ip, everything)
    assert "50" in _rows_shown(ip, everything, "text/html")
    with pytest.raises(UsageError):
        ip.run_cell("%federate --limit -3 SELECT 1")


def test_timeout_option_reaches_the_engine(ip, monkeypatch):
    seen = {}
    fed = ip.federate.federation
    real = fed.sql

    def spy(sql, params=None, *, strategy=None, timeout=None, tenant=None, engine=None):
        seen["timeout"] = timeout
        seen["engine"] = engine
        # the engine is recorded, not used: the Spark engine has its own tests
        return real(sql, params, strategy=strategy, timeout=timeout, tenant=tenant)

    monkeypatch.setattr(fed, "sql", spy)
    ip.run_cell("%federate --timeout 12.5 SELECT 1 AS x")
    assert seen["timeout"] == 12.5 and seen["engine"] is None
    ip.run_cell("%config Federate.timeout = 7.0")
    ip.run_cell("%federate SELECT 1 AS x")
    assert seen["timeout"] == 7.0
    ip.run_cell("%federate --engine spark SELECT 1 AS x")
    assert seen["engine"] == "spark"


# ---------------------------------------------------------------------- parameters
def test_parameters_come_from_the_namespace(ip):
    ip.run_cell("country = 'US'\nids = [1, 2, 3]\nlimit_total = 100.5")
    res = ip.run_cell(
        "%%federate\n"
        "SELECT id, country FROM users\n"
        "WHERE country = :country AND id IN (:ids) AND ':country' <> 'x'"
    ).result
    assert set(res.df["country"]) <= {"US"} and set(res.df["id"]) <= {1, 2, 3}
    line = ip.run_cell("%federate SELECT :limit_total AS t, :country AS c").result
    assert line.df.row(0) == (100.5, "US")


def test_parameters_from_a_function_scope(ip):
    ip.run_cell(
        "def lookup():\n"
        "    wanted = 3\n"
        "    return get_ipython().run_line_magic('federate', 'SELECT id FROM users WHERE id = :wanted')\n"
        "found = lookup()"
    )
    assert ip.user_ns["found"].df["id"].to_list() == [3]


def test_missing_variable_is_a_clear_error(ip):
    with pytest.raises(fl.ParameterError, match=r"no Python variable for :nowhere") as info:
        ip.run_cell("%federate SELECT * FROM users WHERE country = :nowhere")
    shown = "\n".join(info.value._render_traceback_())
    assert "line 1 | SELECT * FROM users WHERE country = :nowhere" in shown
    assert "^^^^^^^^" in shown


def test_placeholders_are_found_by_the_parser_not_by_regex():
    sql = "SELECT ':a', b::int, $$:c$$ FROM t WHERE d = :d -- :e\n AND f = :f"
    assert placeholder_names(sql) == ["d", "f"]
    assert placeholder_names("SELECT FROM WHERE :x (") == []  # syntax errors: reported later


def test_ipython_never_expands_variables(ip):
    ip.run_cell("country = 'US'\nname = 'Jane'")
    res = ip.run_cell("%federate SELECT '{country}' AS a, '$name' AS b, '$country$' AS c").result
    assert res.df.row(0) == ("{country}", "$name", "$country$")
    res = ip.run_cell("%%federate\nSELECT '{country}' AS a, '$name' AS b").result
    assert res.df.row(0) == ("{country}", "$name")
    with pytest.raises(UsageError, match="Python name"):  # the -o value is not expanded either
        ip.run_cell("%federate -o {name} SELECT 1")


# ---------------------------------------------------------------------- errors
def test_error_is_short_and_the_cell_fails(plain, capsys):
    result = plain.run_cell("%federate SELECT * FROM userz")
    assert isinstance(result.error_in_exec, fl.UnknownTableError)
    assert not result.success
    out = capsys.readouterr()
    shown = out.out + out.err
    assert "UnknownTableError: unknown table 'userz'" in shown
    assert "line 1 | SELECT * FROM userz" in shown
    assert "               ^^^^^" in shown
    assert "Traceback" not in shown and "magic.py" not in shown


def test_syntax_error_points_at_its_line_in_the_cell(plain, capsys):
    result = plain.run_cell("%%federate\nSELECT id\nFROM users\nWHERE id = = 3")
    assert isinstance(result.error_in_exec, fl.SQLSyntaxError)
    shown = capsys.readouterr().out
    assert "line 3 | WHERE id = = 3" in shown  # lines of the SQL (the cell's body)
    assert "|            ^" in shown


def test_verbose_shows_the_traceback(plain, capsys):
    result = plain.run_cell("%federate --verbose SELECT nme FROM users")
    assert isinstance(result.error_in_exec, fl.UnknownColumnError)
    assert "Traceback" in capsys.readouterr().out
    plain.run_cell("%config Federate.verbose = True")
    plain.run_cell("%federate SELECT nme FROM users")
    assert "Traceback" in capsys.readouterr().out


def test_short_error_locations():
    assert short_error(fl.UnknownColumnError("unknown column 'nme' (line 1, column 10)"), "x") == (
        "UnknownColumnError: unknown column 'nme' (line 1, column 10)"
    )
    text = short_error(
        fl.UnknownColumnError("unknown column 'nme' (line 2, column 6): not in crm.users"),
        "SELECT id,\n  a, nme FROM users",
    )
    assert text.splitlines()[1:] == ["  line 2 |   a, nme FROM users", "         |      ^^^"]
    assert short_error(fl.ConfigError("no position here"), "SELECT 1") == (
        "ConfigError: no position here"
    )
    long = "SELECT " + ", ".join(f"c{i}" for i in range(60)) + ", zzz FROM t"
    text = short_error(fl.UnknownColumnError("unknown column 'zzz'"), long)
    pointer = text.splitlines()[1:]
    assert len(pointer[0]) < 120
    assert pointer[0][pointer[1].index("^") : pointer[1].index("^") + 3] == "zzz"


def test_usage_errors(ip):
    for cell in (
        "%federate --bogus SELECT 1",
        "%federate --compare naive,pushdown --strategy naive SELECT 1",
        "%federate --explain --plot SELECT 1",
        "%federate --explain",
        "%%federate SELECT 1\n",
        "%%federate\n   \n",
        "%%federate sources\nSELECT 1",
        "%federate --strategy",
    ):
        with pytest.raises(UsageError):
            ip.run_cell(cell)


def test_split_options_keeps_the_sql_verbatim():
    table = {"-o": True, "--out": True, "--plot": False, "--limit": True}
    assert split_options("--plot -- -o x", table) == (["--plot"], "-o x")
    assert split_options("--limit=3 SELECT -1", table) == (["--limit=3"], "SELECT -1")
    assert split_options("SELECT \"a  b\", 'c  d'", table) == ([], "SELECT \"a  b\", 'c  d'")
    with pytest.raises(UsageError, match="needs a value"):
        split_options("--out", table)


# ---------------------------------------------------------------------- progress
def slow_fetch(fed, seconds):
    inner = fed.fetch

    def fetch(fragment, source, deadline):
        time.sleep(seconds)
        return inner(fragment, source, deadline)

    fed.fetch = fetch


def test_magic_draws_one_bar_per_slow_fragment_and_removes_them(ip, fake_tqdm):
    slow_fetch(ip.federate.federation, 0.5)
    res = ip.run_cell(f"%federate {SEED}").result
    assert len(fake_tqdm.made) == len(res.plan.fragments) == 2
    assert all(b.closed and b.updates == 1 for b in fake_tqdm.made)
    assert all(b.options["leave"] is False for b in fake_tqdm.made)
    assert sorted(b.desc for b in fake_tqdm.made) == ["f1 @ crm", "f2 @ sales"]
    assert ip.federate.federation.progress is None  # unhooked after the query


def test_quick_fragments_draw_no_bar_slow_ones_do():
    from fedlab.sql.plan import Fragment

    FakeBar.made = []
    quick, slow = (Fragment(f, "crm", "sqlite", "SELECT 1", []) for f in ("f1", "f2"))
    with FragmentBars(tqdm=FakeBar, delay=0.15, interval=0.05) as hook:
        hook("start", quick, None)
        hook("end", quick, None)
        hook("start", slow, None)
        time.sleep(0.4)
        assert hook.open_bars == ["f2 @ crm"]
        assert FakeBar.made[0].refreshes >= 1  # its clock ticks
        hook("end", slow, None)
    assert [b.desc for b in FakeBar.made] == ["f2 @ crm"] and FakeBar.made[0].closed
    assert (hook.started, hook.finished, hook.drawn) == (2, 2, 1)


def test_progress_can_be_switched_off(ip, fake_tqdm):
    slow_fetch(ip.federate.federation, 0.4)
    ip.run_cell(f"%federate --no-progress {SEED}")
    ip.run_cell("%config Federate.progress = False")
    ip.run_cell(f"%federate {SEED}")
    assert fake_tqdm.made == []


def test_bars_close_on_error_and_chain_the_previous_callback(demo_dir, fake_tqdm):
    fed = fl.demo.federation(demo_dir)
    events = []
    fed.progress = lambda event, frag, entry: events.append((event, frag.id))

    def broken(fragment, source, deadline):
        raise fl.SourceUnavailableError(f"{fragment.source} is down")

    fed.fetch = broken
    with bars(fed, when=True) as hook, pytest.raises(fl.SourceUnavailableError):
        fed.sql(SEED)
    assert hook.failed >= 1 and hook.open_bars == []
    assert all(b.closed for b in fake_tqdm.made)
    assert ("start", "f1") in events or ("start", "f2") in events
    assert fed.progress is not hook and callable(fed.progress)  # restored


def test_bars_are_thread_safe():
    from fedlab.sql.plan import Fragment

    FakeBar.made = []
    hook = FragmentBars(tqdm=FakeBar, delay=0)
    frags = [Fragment(f"f{i}", f"s{i % 4}", "sqlite", "SELECT 1", []) for i in range(400)]

    def work(chunk):
        for f in chunk:
            hook("start", f, None)
            hook("end", f, None)

    threads = [threading.Thread(target=work, args=(frags[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (hook.started, hook.finished, hook.open_bars) == (400, 400, [])
    assert len(FakeBar.made) == 400 and all(b.closed for b in FakeBar.made)


def test_bars_only_when_asked_or_in_ipython(demo_dir, monkeypatch):
    import fedlab.progress

    assert wanted(True) and not wanted(False)
    monkeypatch.setattr(fedlab.progress, "in_ipython", lambda: True)
    assert wanted("auto") is True
    monkeypatch.setattr(fedlab.progress, "in_ipython", lambda: False)  # a plain script
    assert wanted("auto") is False
    fed = fl.demo.federation(demo_dir)
    assert enable(fed) is None and fed.progress is None  # "auto" outside IPython: nothing
    hook = enable(fed, when=True, tqdm=FakeBar)
    assert isinstance(hook, FragmentBars) and fed.progress is hook
    assert enable(fed, when=True) is hook  # not stacked twice
    disable(fed)
    assert fed.progress is None


def test_tenant_option_routes_to_that_tenants_sources(ip, workdir):
    import sqlite3

    for tenant in ("a", "b"):
        con = sqlite3.connect(workdir / f"t_{tenant}.db")
        con.execute(f"CREATE TABLE notes_{tenant} (id INTEGER PRIMARY KEY, body TEXT)")
        con.execute(f"INSERT INTO notes_{tenant} VALUES (1, 'from {tenant}')")
        con.commit()
        con.close()
    fed = fl.Federation()
    for tenant in ("a", "b"):
        fed.attach(
            f"t_{tenant}", f"sqlite:///{workdir / f't_{tenant}.db'}", tags={"tenant": tenant}
        )
    ip.user_ns["tenants"] = fed
    ip.run_cell("%federate use tenants")
    res = ip.run_cell("%federate --tenant a SELECT body FROM notes_a").result
    assert res.df["body"].to_list() == ["from a"]
    plan = ip.run_cell("%federate --explain --tenant a SELECT body FROM notes_a").result
    assert plan.fragments[0].source == "t_a"
    with pytest.raises(fl.errors.TenantError, match="belongs to tenant 'b'"):
        ip.run_cell("%federate --tenant a SELECT body FROM notes_b").raise_error()
