"""Packaging and the two commands: pyproject, constraints.txt, scripts/setup.sh, .ci/run,
the Makefile and the README promises that tie them together.

The .ci/run checks run the real script in a scratch tree whose setup.sh, ruff and pytest
are stubs that log their arguments and exit with a chosen status, so the script's
control flow (what it runs, in which order, and when it fails) is tested without
installing anything.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]

#: what DESIGN.md's data flow and public API need at run time
DESIGN_RUNTIME = {
    "polars",  # the local engine and every frame
    "pyarrow",  # connectorx -> Arrow -> Polars
    "connectorx",  # the fast reader
    "sqlglot",  # parse, bind, plan, transpile
    "duckdb",  # a source kind, and the benchmark's data generator
    "psycopg",  # PostgreSQL: catalog, ping, loads
    "pymysql",  # MariaDB: catalog, ping, loads
    "matplotlib",  # res.plot(), comparisons
    "ipython",  # the notebook face
    "jupyterlab",  # `make demo` says how to open it
}
#: what .ci/run needs
DESIGN_DEV = {"pytest", "pytest-timeout", "nbval", "ruff"}


def _requirements(specs: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, specs)}


RUNTIME = _requirements(PROJECT["dependencies"])
DEV = _requirements(PROJECT.get("optional-dependencies", {}).get("dev", []))


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for n, raw in enumerate((ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert m, f"constraints.txt line {n} is not NAME==VERSION: {raw!r}"
        name = canonicalize_name(m[1])
        assert name not in pins, f"constraints.txt pins {m[1]} twice"
        pins[name] = m[2]
    return pins


PINS = _pins()


# ---------------------------------------------------------------------- pyproject
def test_console_script_is_declared_and_importable() -> None:
    assert PROJECT["scripts"].get("fedlab") == "fedlab.cli:main"
    from fedlab import cli

    assert callable(cli.main)


def test_pyproject_declares_the_design_dependencies() -> None:
    assert not DESIGN_RUNTIME - set(RUNTIME), f"missing: {sorted(DESIGN_RUNTIME - set(RUNTIME))}"
    assert not DESIGN_DEV - set(DEV), f"missing dev: {sorted(DESIGN_DEV - set(DEV))}"
    assert PROJECT["requires-python"].startswith(">=3.11")


# ---------------------------------------------------------------------- constraints.txt
def test_constraints_pin_every_declared_dependency_within_its_range() -> None:
    assert "fedlab" not in PINS, "constraints.txt must not pin fedlab itself"
    for name, req in {**RUNTIME, **DEV}.items():
        assert name in PINS, f"{req} is in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(PINS[name], prereleases=True), (
            f"constraints.txt pins {name}=={PINS[name]}, outside pyproject's {req}"
        )
        for extra in req.extras:  # psycopg[binary] -> psycopg-binary
            for sub in md.requires(req.name) or []:
                r = Requirement(sub)
                if r.marker is not None and r.marker.evaluate({"extra": extra}):
                    assert canonicalize_name(r.name) in PINS, f"{r.name} (from {req}) not pinned"


def _closure() -> dict[str, set[str]]:
    """Every distribution fedlab[dev] pulls in, as installed here: name -> who needs it."""
    todo = [(r, "pyproject.toml") for r in [*RUNTIME.values(), *DEV.values()]]
    seen: dict[str, set[str]] = {}
    while todo:
        req, why = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            seen[name].add(why)
            continue
        seen[name] = {why}
        try:
            requires = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue  # reported by the test below
        for sub in map(Requirement, requires):
            envs = [{"extra": e} for e in [*req.extras, ""]]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append((sub, name))
    return seen


def test_constraints_pin_everything_installed_for_fedlab() -> None:
    problems = []
    for name, needed_by in sorted(_closure().items()):
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"{name} (needed by {', '.join(sorted(needed_by))}) is not installed")
            continue
        if name not in PINS:
            problems.append(f"{name}=={have} (needed by {', '.join(sorted(needed_by))}) not pinned")
        elif PINS[name] != have:
            problems.append(f"{name}: constraints.txt pins {PINS[name]}, .venv has {have}")
    assert not problems, (
        "constraints.txt is out of date (after changing dependencies run `make constraints`; "
        "after pulling run scripts/setup.sh):\n  " + "\n  ".join(problems)
    )


# ---------------------------------------------------------------------- scripts/setup.sh
SETUP = ROOT / "scripts" / "setup.sh"
CI_RUN = ROOT / ".ci" / "run"


def test_setup_script_is_strict_and_installs_with_the_constraints() -> None:
    text = SETUP.read_text(encoding="utf-8")
    assert "set -euo pipefail" in text
    assert "-c constraints.txt -e '.[dev]'" in text
    assert "--no-servers" in text
    for probe in ("pg_isready", "mysqladmin", "local_infile", "max_prepared_transactions"):
        assert probe in text, f"setup.sh does not handle {probe}"
    subprocess.run(["bash", "-n", str(SETUP)], check=True)


def test_setup_script_options() -> None:
    ok = subprocess.run(["bash", str(SETUP), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--no-servers" in ok.stdout
    bad = subprocess.run(["bash", str(SETUP), "--bogus"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown option" in bad.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shell_scripts_are_shellcheck_clean() -> None:
    res = subprocess.run(
        ["shellcheck", "-s", "bash", str(SETUP), str(CI_RUN)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------------- .ci/run
def test_ci_run_names_every_step() -> None:
    text = CI_RUN.read_text(encoding="utf-8")
    for step in (
        "scripts/setup.sh",
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/pytest",
        "--nbval-lax notebooks/",
    ):
        assert step in text, f".ci/run does not run {step}"
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(CI_RUN)], check=True)


_STUB = """#!/usr/bin/env bash
echo "{name} $* REQUIRE=${{FEDLAB_REQUIRE_SERVERS:-}}" >> "$STUB_LOG"
exit "${{{var}:-0}}"
"""


def _stub(path: Path, name: str, var: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_STUB.format(name=name, var=var), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def ci_tree(tmp_path: Path) -> Path:
    """A scratch checkout: the real .ci/run, stubbed setup.sh, ruff and pytest."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(CI_RUN, tmp_path / ".ci" / "run")
    _stub(tmp_path / "scripts" / "setup.sh", "setup", "SETUP_RC")
    _stub(tmp_path / ".venv" / "bin" / "ruff", "ruff", "RUFF_RC")
    pytest_stub = tmp_path / ".venv" / "bin" / "pytest"
    _stub(pytest_stub, "pytest", "PYTEST_RC")
    # the notebooks run gets its own status, so "suite ok, notebooks empty" can be tested
    pytest_stub.write_text(
        pytest_stub.read_text().replace(
            'exit "${PYTEST_RC:-0}"',
            'if [[ "$*" == *nbval* ]]; then exit "${NBVAL_RC:-0}"; fi\nexit "${PYTEST_RC:-0}"',
        )
    )
    return tmp_path


def _ci(tree: Path, **rcs: int) -> tuple[int, list[str], str]:
    log = tree / "calls.log"
    log.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "FEDLAB_REQUIRE_SERVERS"}
    env.update({k: str(v) for k, v in rcs.items()}, STUB_LOG=str(log), CI="true")
    res = subprocess.run(
        ["bash", ".ci/run"], cwd=tree, env=env, capture_output=True, text=True, timeout=60
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return res.returncode, calls, res.stdout + res.stderr


def test_ci_run_passes_when_every_step_passes(ci_tree: Path) -> None:
    code, calls, out = _ci(ci_tree)
    assert code == 0, out
    assert calls == [
        "setup  REQUIRE=1",
        "ruff check . REQUIRE=1",
        "ruff format --check . REQUIRE=1",
        "pytest  REQUIRE=1",
    ]


@pytest.mark.parametrize("rc", [1, 2, 5])
def test_ci_run_fails_when_pytest_fails_or_collects_nothing(ci_tree: Path, rc: int) -> None:
    code, calls, out = _ci(ci_tree, PYTEST_RC=rc)
    assert code != 0, out
    assert calls[-1].startswith("pytest")


def test_ci_run_fails_on_lint_but_still_runs_the_tests(ci_tree: Path) -> None:
    code, calls, out = _ci(ci_tree, RUFF_RC=1)
    assert code != 0, out
    assert any(c.startswith("pytest") for c in calls), "the tests should still run"
    assert "FAILED" in out


def test_ci_run_stops_when_setup_fails(ci_tree: Path) -> None:
    code, calls, _ = _ci(ci_tree, SETUP_RC=3)
    assert code != 0
    assert [c.split()[0] for c in calls] == ["setup"]


def test_ci_run_runs_the_notebooks_when_there_are_some(ci_tree: Path) -> None:
    nb = ci_tree / "notebooks"
    (nb / ".ipynb_checkpoints").mkdir(parents=True)
    (nb / ".ipynb_checkpoints" / "old-checkpoint.ipynb").write_text("{}")
    code, calls, out = _ci(ci_tree)
    assert code == 0 and not any("nbval" in c for c in calls), "checkpoints are not notebooks"
    (nb / "01_tour.ipynb").write_text("{}")
    code, calls, out = _ci(ci_tree)
    assert code == 0, out
    assert calls[-1] == "pytest --nbval-lax notebooks/ REQUIRE=1"
    code, _, out = _ci(ci_tree, NBVAL_RC=5)
    assert code != 0, "a notebooks run that collects nothing must fail"


# ---------------------------------------------------------------------- Makefile
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("demo", ["bash scripts/setup.sh --no-servers", ".venv/bin/fedlab demo", "jupyter lab"]),
        ("test", ["bash .ci/run"]),
        ("lint", [".venv/bin/ruff check .", ".venv/bin/ruff format --check ."]),
        ("bench", ["bash scripts/setup.sh", ".venv/bin/fedlab bench --sf 0.1"]),
    ],
)
def test_make_targets(target: str, expected: list[str]) -> None:
    res = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, check=True
    )
    for piece in expected:
        assert piece in res.stdout, f"`make {target}` does not run {piece!r}:\n{res.stdout}"


# ---------------------------------------------------------------------- README and docs
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_has_the_two_commands() -> None:
    section = README.split("## The two commands", 1)
    assert len(section) == 2, "README needs a section '## The two commands'"
    body = section[1].split("\n## ", 1)[0]
    for command in ("make demo", "make test", ".ci/run", "jupyter lab"):
        assert command in body, f"'The two commands' does not mention {command!r}"


def test_readme_links_to_the_docs() -> None:
    for doc in ("docs/architecture.md", "docs/sql.md", "docs/benchmarks.md"):
        assert f"({doc})" in README, f"README does not link {doc}"
    for doc in ("docs/architecture.md", "docs/index.md", "docs/sql.md"):
        assert (ROOT / doc).is_file(), f"{doc} is missing"


def test_readme_cli_commands_exist() -> None:
    from fedlab.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    used = set(re.findall(r"^\$ fedlab ([a-z]+)", README, flags=re.MULTILINE))
    assert {"demo", "query", "explain", "tables"} <= used
    assert used <= set(sub.choices) | {"bench"}, f"README shows unknown commands: {used}"


def test_readme_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first Python block of the README runs as written, on the demo."""
    pytest.importorskip("matplotlib").use("Agg")
    block = re.search(r"```python\n(.*?)```", README, flags=re.DOTALL)
    assert block, "README has no ```python block"
    monkeypatch.setenv("FEDLAB_DEMO_DIR", str(tmp_path / "demo"))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(block[1], "README.md", "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_architecture_doc_names_files_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"\b((?:fedlab|tests|scripts)/[\w/]+\.(?:py|sh|sql|json))\b", text))
    assert len(paths) >= 10, "docs/architecture.md should say which file does what"
    missing = sorted(p for p in paths if not (ROOT / p).is_file())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


@pytest.mark.parametrize(
    "name", ["demo", "testing", "load", "apis", "fdw", "gateway", "spark", "viz", "rest"]
)
def test_submodules_are_namespaces_of_the_package(name: str) -> None:
    """``fl.spark.session()``, ``fl.fdw.setup()``…: the names the docs and notebooks use,
    imported on first use (pyspark and the web stack stay unimported until then)."""
    import importlib

    import fedlab as fl

    assert getattr(fl, name) is importlib.import_module(f"fedlab.{name}")
    with pytest.raises(AttributeError, match="no attribute 'sparks'"):
        fl.sparks  # noqa: B018
